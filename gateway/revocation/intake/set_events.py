"""RFC 8417 security events to revocation entries (per request, after the SET is verified).

session-revoked -> the session's family (sid), or the subject when no session is named;
token-revoked -> the token (jti), or every token of the subject; credential-change and account
events -> every token of the subject issued before the event. A SET speaks for its own issuer only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..entries import ANY_ISSUER, Entry, is_finite
from ..entry_factory import MAX_LIFETIME, EntryFactory

log = logging.getLogger("gateway.revocation.intake")

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
SESSION_EVENTS = frozenset({CAEP + "session-revoked", RISC + "sessions-revoked"})
TOKEN_EVENTS = frozenset({OAUTH + "token-revoked", RISC + "tokens-revoked"})
CREDENTIAL_EVENTS = frozenset({
    CAEP + "credential-change", RISC + "account-credential-change-required", RISC + "credential-compromise",
    RISC + "account-disabled", RISC + "account-purged",
})
HANDLED_EVENTS = SESSION_EVENTS | TOKEN_EVENTS | CREDENTIAL_EVENTS


class SetError(Exception):
    """A SET refused with an RFC 8935 section 2.3 error code."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err = err
        self.description = description


def entries_from_set(claims: dict[str, Any], factory: EntryFactory, now: float | None = None) -> list[Entry]:
    """Revocations for the events of one verified SET; SetError when a handled event cannot be applied.

    session-revoked -> the session's family (sid), or the subject when no session is named;
    token-revoked   -> the token (jti), or every token of the subject;
    credential-change and account events -> every token of the subject issued before the event.
    Other event types are accepted and ignored.
    """
    now = time.time() if now is None else now
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer or issuer == ANY_ISSUER:
        raise SetError("invalid_issuer", "the SET has no usable iss: its entries must belong to its issuer")
    entries: list[Entry] = []
    for event_type, event in claims["events"].items():
        if event_type not in HANDLED_EVENTS:
            log.info("security event ignored", extra={"event_type": str(event_type)[:200]})
            continue
        event = event if isinstance(event, dict) else {}
        if event_type == CAEP + "credential-change" and event.get("change_type") == "create":
            continue  # a credential added: nothing to revoke
        when = _event_time(event, claims, now)
        reason = f"set {event_type.rsplit('/', 1)[-1]} jti={str(claims.get('jti'))[:64]}"
        ident = _identify(event.get("subject") or claims.get("sub_id") or _plain_sub(claims), issuer,
                          session_event=event_type in SESSION_EVENTS)
        if event_type in SESSION_EVENTS and ident.session is not None:
            entries.append(factory.family(ident.session, issuer=issuer, reason=reason, now=now))
        elif event_type in TOKEN_EVENTS and ident.jti is not None:
            entries.append(factory.jti(ident.jti, issuer=issuer, reason=reason, now=now))
        elif ident.sub is not None:
            entries.append(factory.subject(ident.sub, issuer=issuer, before=when, reason=reason, now=now))
        else:
            raise SetError("invalid_request", f"{event_type}: {ident.problem or 'no usable subject identifier'}")
    return entries


class _Ident:
    def __init__(self) -> None:
        self.session: str | None = None
        self.sub: str | None = None
        self.jti: str | None = None
        self.problem: str | None = None


def _plain_sub(claims: dict[str, Any]) -> dict[str, Any] | None:
    sub = claims.get("sub")
    return {"format": "iss_sub", "iss": claims["iss"], "sub": sub} if isinstance(sub, str) else None


def _identify(subject: Any, issuer: str, session_event: bool) -> _Ident:
    """Session id, ``sub`` and jti named by an RFC 9493 / SSF subject identifier.

    A SET speaks for its own issuer only: an identifier naming another ``iss`` is refused
    (SetError), so that one issuer cannot revoke the users or tokens of another.
    """
    ident = _Ident()
    if not isinstance(subject, dict):
        return ident
    fmt = str(subject.get("format") or subject.get("subject_type") or "").replace("-", "_")
    if fmt == "complex":
        session, user = subject.get("session"), subject.get("user")
        if isinstance(session, dict):
            ident.session = _identify(session, issuer, True).session
        if isinstance(user, dict):
            ident.sub = _identify(user, issuer, False).sub
    elif fmt == "iss_sub":
        _same_issuer(subject, issuer)
        sub = subject.get("sub")
        if isinstance(sub, str) and sub:
            ident.sub = sub
    elif fmt == "opaque":
        value = subject.get("id")
        if isinstance(value, str) and value:
            if session_event:
                ident.session = value
            else:
                ident.sub = value
    elif fmt == "jwt_id":
        _same_issuer(subject, issuer)
        jti = subject.get("jti")
        if isinstance(jti, str) and jti:
            ident.jti = jti
    else:
        ident.problem = f"subject identifier format {fmt or '(none)'!r} is not supported"
    return ident


def _same_issuer(subject: dict[str, Any], issuer: str) -> None:
    """The ``iss`` of an ``iss_sub`` / ``jwt_id`` identifier, when given, must be the SET's issuer."""
    named = subject.get("iss")
    if named is not None and named != issuer:
        raise SetError("invalid_issuer", f"the subject belongs to issuer {str(named)[:200]!r}, not to the SET's "
                                         "issuer: a SET may only revoke its own issuer's subjects and tokens")


def _event_time(event: dict[str, Any], claims: dict[str, Any], now: float) -> float:
    """event_timestamp (seconds; milliseconds tolerated), else the SET's iat, never after now.

    A time that is not a finite number in range (NaN, Infinity, 1e308, negative: the JSON
    parser of signed tokens accepts NaN and Infinity) is refused, never guessed at."""
    for name, value in (("event_timestamp", event.get("event_timestamp")), ("iat", claims.get("iat"))):
        if value is None:
            continue
        if not is_finite(value):
            raise SetError("invalid_request", f"{name} must be a finite number of seconds, not {value!r:.40}")
        seconds = value / 1000 if value > 1e11 else float(value)
        if not 0 < seconds <= now + MAX_LIFETIME:
            raise SetError("invalid_request", f"{name} {value!r:.40} is out of range")
        return min(seconds, now)
    return now
