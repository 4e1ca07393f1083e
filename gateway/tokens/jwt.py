"""Signed JWT access tokens (RFC 9068), verified locally against the issuer's JWKS.

The algorithm comes from the issuer's allow-list and must agree with the key (exactly the
``alg`` its JWK declares, if it declares one); the token header only selects among allowed
algorithms, so ``none`` and HS256 signed with an RSA public key (algorithm confusion) can
never verify.

Claims a token must carry: ``exp``, ``iss`` and ``aud`` always; with ``require_typ: at+jwt``
also the rest of RFC 9068 section 2.2 (``sub``, ``client_id``, ``iat``, ``jti``); and the
issuer's ``required_claims``. A missing one is refused with ``missing_claim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import jwt

from ..config import IssuerConfig
from ..reasons import Reason
from .jwks import IssuerKeys
from .token import (
    RFC9068_CLAIMS,
    TokenError,
    ValidatedToken,
    cache_key,
    check_required_claims,
    token_from_claims,
)

_ERRORS: list[tuple[type[Exception], Reason]] = [
    (jwt.ExpiredSignatureError, Reason.TOKEN_EXPIRED),
    (jwt.ImmatureSignatureError, Reason.TOKEN_NOT_YET_VALID),
    (jwt.InvalidAudienceError, Reason.WRONG_AUDIENCE),
    (jwt.InvalidIssuerError, Reason.UNKNOWN_ISSUER),
    (jwt.InvalidAlgorithmError, Reason.DISALLOWED_ALGORITHM),
    (jwt.InvalidSignatureError, Reason.BAD_SIGNATURE),
    (jwt.MissingRequiredClaimError, Reason.MISSING_CLAIM),
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
        self._access_token_claims = ("exp", "iss", "aud")
        self._required_claims = required_claims(config)

    def algorithm(self, header: dict[str, Any]) -> str:
        """The algorithm to verify with, refusing anything off the issuer's allow-list."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenError(Reason.DISALLOWED_ALGORITHM, f"algorithm {alg!r} is not allowed")
        return alg

    def check_header(self, header: dict[str, Any]) -> str:
        """The algorithm of an access token's header, whose ``typ`` must also be the one required."""
        alg = self.algorithm(header)
        if self.config.require_typ is not None:
            typ = str(header.get("typ", "")).lower()
            wanted = self.config.require_typ.lower()
            if typ != wanted and not (wanted in _AT_JWT_TYPES and typ in _AT_JWT_TYPES):
                raise TokenError(Reason.WRONG_TOKEN_TYPE, f"typ {typ!r} is not {self.config.require_typ}")
        return alg

    async def verify(self, raw: str, header: dict[str, Any], *, audience: list[str] | None,
                     require: Sequence[str]) -> dict[str, Any]:
        """The claims of a JWS signed by this issuer, with a key of its JWKS and an allowed algorithm.

        Also checks ``iss``, the time claims (as NumericDates, with the issuer's leeway), the
        ``require``d claims and, unless ``audience`` is None, ``aud``. Any failure is a TokenError.
        Used for access tokens (``validate``) and for Security Event Tokens (revocation intake).
        """
        alg = self.algorithm(header)
        kid = header.get("kid")
        keys = await self.keys.keys_for(kid if isinstance(kid, str) else None)
        options: Any = {"require": list(require), "verify_aud": audience is not None}
        failure: TokenError | None = None
        for key in keys:
            if not key.verifies(alg):
                # a key of another type must not hide a bad signature from a key of the right type
                failure = failure or TokenError(Reason.DISALLOWED_ALGORITHM, "the key does not match the algorithm")
                continue
            try:
                claims: dict[str, Any] = jwt.decode(
                    raw, key=key.key, algorithms=[alg], audience=audience, issuer=self.config.issuer,
                    leeway=self.config.leeway, options=options,
                )
            except jwt.PyJWTError as exc:
                failure = TokenError(_reason_for(exc), str(exc))
                if failure.reason is Reason.BAD_SIGNATURE:
                    continue
                raise failure from None
            _check_numeric_dates(claims)
            return claims
        raise failure or TokenError(Reason.UNKNOWN_KEY, "no key matched")

    async def validate(self, raw: str, header: dict[str, Any], fp: str) -> ValidatedToken:
        self.check_header(header)
        claims = await self.verify(raw, header, audience=self.config.audiences, require=self._access_token_claims)
        check_required_claims(claims, self._required_claims)
        token = token_from_claims(claims, self.config.issuer, fp, "jwt")
        exact = cache_key(raw)
        return token if exact == fp else replace(token, presented_hash=exact)


def required_claims(config: IssuerConfig) -> tuple[str, ...]:
    """The claims an access token of this issuer must carry, beyond what PyJWT already requires."""
    names = list(config.required_claims)
    if config.require_typ is not None and config.require_typ.lower() in _AT_JWT_TYPES:
        names = [*RFC9068_CLAIMS, *names]
    return tuple(dict.fromkeys(names))  # in order, once each


def _check_numeric_dates(claims: dict[str, Any]) -> None:
    """``exp``, ``nbf`` and ``iat`` must be JSON numbers (RFC 7519 NumericDate); PyJWT takes ``"123"`` too."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TokenError(Reason.INVALID_TOKEN, f"the {name} claim is not a number")

