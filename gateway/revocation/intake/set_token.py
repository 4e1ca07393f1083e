"""RFC 8935 SET push: checking a Security Event Token before its events are applied (per request).

A SET must be signed by a configured issuer, with a key from that issuer's JWKS and an
algorithm from its allow-list (``JwtValidator.verify``, as for access tokens); ``aud``, when
present, must be one of the issuer's audiences; a subject identifier naming an ``iss`` must
name the SET's own issuer (set_events.py), and every entry it makes belongs to that issuer.
"""

from __future__ import annotations

from typing import Any

from ...reasons import Reason
from ...tokens.jws import jwt_parts
from ...tokens.jwt import JwtValidator
from ...tokens.token import TokenError
from ...tokens.validator import TokenValidator
from .auth import Caller
from .set_events import SetError

SECEVENT_TYPES = frozenset({"secevent+jwt", "application/secevent+jwt"})


class Unavailable(Exception):
    """The SET cannot be checked now (the issuer's keys are unavailable): 503, the transmitter retries."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.message)
        self.reason = reason


async def verify_set(raw: str, caller: Caller, validator: TokenValidator | None) -> dict[str, Any]:
    """The claims of a SET signed by a configured issuer, or SetError (Unavailable when the keys are).

    An issuer's admin token may deliver that issuer's SETs only (access_denied, before any
    signature work, for another issuer's)."""
    header, issuer = _unverified(raw, caller)
    verifier = validator.jwt.get(issuer) if validator is not None else None
    if verifier is None:
        raise SetError("invalid_issuer", "the SET issuer is not a configured JWT issuer")
    try:
        claims = await verifier.verify(raw, header, audience=None, require=("iss", "iat", "jti"))
    except TokenError as exc:
        raise _set_error(exc) from None
    _check_audience(claims, verifier)
    if not isinstance(claims.get("events"), dict) or not claims["events"]:
        raise SetError("invalid_request", "the SET has no events claim")
    return claims


def _unverified(raw: str, caller: Caller) -> tuple[dict[str, Any], str]:
    """The SET's header and claimed issuer, refused early when malformed or not the caller's to deliver."""
    parts = jwt_parts(raw)
    if parts is None:
        raise SetError("invalid_request", "the body is not a compact JWS")
    header, unverified = parts
    typ = header.get("typ")
    if typ is not None and str(typ).lower() not in SECEVENT_TYPES:
        raise SetError("invalid_request", f"typ {typ!r} is not secevent+jwt")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise SetError("invalid_issuer", "the SET has no iss: a SET must name the issuer it speaks for")
    if not caller.may_act_for(issuer):
        raise SetError("access_denied", f"an admin token of {caller.issuer} may deliver that issuer's SETs "
                                        f"only, not those of {issuer[:200]!r}")
    return header, issuer


def _check_audience(claims: dict[str, Any], verifier: JwtValidator) -> None:
    """``aud``, when present, must name one of the issuer's audiences."""
    audience = claims.get("aud")
    if audience is None:
        return
    wanted = set(verifier.config.audiences)
    given = {audience} if isinstance(audience, str) else set(audience) if isinstance(audience, list) else set()
    if not wanted & given:
        raise SetError("invalid_audience", "the SET is not addressed to this gateway")


def _set_error(exc: TokenError) -> Exception:
    """The RFC 8935 error for a SET the issuer's validator refused; Unavailable when its keys are."""
    if exc.reason.status == 503:
        return Unavailable(exc.reason)
    if exc.reason is Reason.BAD_SIGNATURE:
        return SetError("invalid_key", "the SET signature does not verify with the issuer's keys")
    if exc.reason in (Reason.DISALLOWED_ALGORITHM, Reason.UNKNOWN_KEY):
        return SetError("invalid_key", exc.detail or exc.reason.value)
    return SetError("invalid_request", f"invalid SET: {exc.detail or exc.reason.value}")
