"""Signed JWT access tokens (RFC 9068), verified locally against the issuer's JWKS.

The algorithm comes from the issuer's allow-list and must agree with the key; the
token header only selects among allowed algorithms, so ``none`` and HS256 signed with
an RSA public key (algorithm confusion) can never verify.
"""

from __future__ import annotations

from typing import Any

import jwt

from ..config import IssuerConfig
from ..reasons import Reason
from .jwks import IssuerKeys
from .token import TokenError, ValidatedToken, token_from_claims

_ERRORS: list[tuple[type[Exception], Reason]] = [
    (jwt.ExpiredSignatureError, Reason.TOKEN_EXPIRED),
    (jwt.ImmatureSignatureError, Reason.TOKEN_NOT_YET_VALID),
    (jwt.InvalidAudienceError, Reason.WRONG_AUDIENCE),
    (jwt.InvalidIssuerError, Reason.UNKNOWN_ISSUER),
    (jwt.InvalidAlgorithmError, Reason.DISALLOWED_ALGORITHM),
    (jwt.InvalidSignatureError, Reason.BAD_SIGNATURE),
]
_AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})


def _reason_for(exc: jwt.PyJWTError) -> Reason:
    for kind, reason in _ERRORS:
        if isinstance(exc, kind):
            return reason
    return Reason.INVALID_TOKEN


class JwtValidator:
    """Verifies JWTs of one issuer with that issuer's keys only."""

    def __init__(self, config: IssuerConfig, keys: IssuerKeys) -> None:
        self.config = config
        self.keys = keys
        self._algorithms = frozenset(config.algorithms)
        self._options: Any = {"require": ["exp", "iss", "aud"], "verify_aud": True}

    def check_header(self, header: dict[str, Any]) -> str:
        """The algorithm to verify with, refusing anything off the allow-list."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenError(Reason.DISALLOWED_ALGORITHM, f"algorithm {alg!r} is not allowed")
        if self.config.require_typ is not None:
            typ = str(header.get("typ", "")).lower()
            wanted = self.config.require_typ.lower()
            if typ != wanted and not (wanted in _AT_JWT_TYPES and typ in _AT_JWT_TYPES):
                raise TokenError(Reason.WRONG_TOKEN_TYPE, f"typ {typ!r} is not {self.config.require_typ}")
        return alg

    async def validate(self, raw: str, header: dict[str, Any], fp: str) -> ValidatedToken:
        alg = self.check_header(header)
        kid = header.get("kid")
        keys = await self.keys.keys_for(kid if isinstance(kid, str) else None)
        failure: TokenError | None = None
        for key in keys:
            if key.algorithm_name != alg and not _same_family(key.algorithm_name, alg):
                # a key of another type must not hide a bad signature from a key of the right type
                failure = failure or TokenError(Reason.DISALLOWED_ALGORITHM, "the key does not match the algorithm")
                continue
            try:
                claims = jwt.decode(
                    raw, key=key.key, algorithms=[alg], audience=self.config.audiences,
                    issuer=self.config.issuer, leeway=self.config.leeway, options=self._options,
                )
            except jwt.PyJWTError as exc:
                failure = TokenError(_reason_for(exc), str(exc))
                if failure.reason is Reason.BAD_SIGNATURE:
                    continue
                raise failure from None
            _check_numeric_dates(claims)
            return token_from_claims(claims, self.config.issuer, fp, "jwt")
        raise failure or TokenError(Reason.UNKNOWN_KEY, "no key matched")


def _check_numeric_dates(claims: dict[str, Any]) -> None:
    """``exp``, ``nbf`` and ``iat`` must be JSON numbers (RFC 7519 NumericDate); PyJWT takes ``"123"`` too."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TokenError(Reason.INVALID_TOKEN, f"the {name} claim is not a number")


def _same_family(key_alg: str, token_alg: str) -> bool:
    """A JWK without ``alg`` gets PyJWT's default for its type (RS256, ES256...); RSA keys also do RS384/PS256."""
    return key_alg[:2] in ("RS", "PS") and token_alg[:2] in ("RS", "PS")
