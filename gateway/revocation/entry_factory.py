"""Building revocation entries: the expiry (TTL) rule and the issuer rule of the Redis contract.

Used offline (``gateway revoke``, the Python API) and by the admin endpoints. Every number a
caller gives (``ttl``, ``before``, ``expires_at``) is checked here: finite, ``ttl`` in
(0, 10 years], times between 1970 and 10 years from now (ValueError otherwise).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..tokens.jws import jwt_parts
from ..tokens.token import as_number, fingerprint, sha256_hex
from .entries import ANY_ISSUER, Entry, Kind, Match, is_finite

EXPIRY_MARGIN = 60.0  # seconds added to every expiry: validation leeway and clock skew between hosts
MAX_REASON = 200
MAX_LIFETIME = 10 * 365 * 86400.0  # the longest ttl, and how far ahead a time may lie: 10 years
_FINGERPRINT = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")


def as_timestamp(value: float | int | str | datetime | None, name: str = "time",
                 now: float | None = None) -> float | None:
    """Epoch seconds from a number, an ISO-8601 string or an aware datetime: finite, from 1970 to
    ``MAX_LIFETIME`` ahead of now. ValueError otherwise (``"nan"``, ``"inf"``, ``1e308``, a year 10000)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}: a datetime needs a time zone")
        seconds = value.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not is_finite(value):
            raise ValueError(f"{name} must be a finite number, not {value!r:.40}")
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_time(name, value.strip())
    else:
        raise ValueError(f"{name}: {value!r} is not a time")
    # a NaN fails every comparison: "not low <= seconds <= high" refuses it along with the infinities
    if not 0.0 <= seconds <= (time.time() if now is None else now) + MAX_LIFETIME:
        raise ValueError(f"{name} must be a finite time from 1970 to 10 years from now, not {value!r:.40}")
    return seconds


def _parse_time(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: {text[:64]!r} is neither epoch seconds nor an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name}: {text[:64]!r} has no time zone (add Z or +00:00)")
    return parsed.timestamp()


def as_seconds(value: float | int | None, name: str = "ttl") -> float | None:
    """A lifetime in seconds: a finite number in (0, MAX_LIFETIME]; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, not {value!r:.40}")
    if not 0 < value <= MAX_LIFETIME:  # also refuses NaN
        raise ValueError(f"{name} must be a finite number of seconds in (0, {MAX_LIFETIME:.0f}], not {value!r:.40}")
    return float(value)


def _nonempty(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


# targets whose entries always name an issuer: without one, the issuer must be clear from the configuration
ISSUER_SCOPED = frozenset({"jti", "token", "fingerprint", "family"})


class IssuerNeeded(ValueError):
    """A jti, token or family revocation that does not say which issuer's tokens it is for."""

    def __init__(self, issuers: Sequence[str]) -> None:
        if issuers:
            text = (f"several issuers are configured ({', '.join(issuers)}): say which issuer's tokens this "
                    "revokes, or '*' for the tokens of every issuer")
        else:
            text = "say which issuer's tokens this revokes, or '*' for the tokens of every issuer"
        super().__init__(text)
        self.issuers = tuple(issuers)


@dataclass(frozen=True)
class EntryFactory:
    """Builds entries with the expiry rule and the issuer rule of the contract.

    Expiry: an entry lives until every token it can match has expired: for a token or a
    family, now plus the issuer's maximum token lifetime (or the token's own ``exp`` when
    known); for a subject or a client cut-off T, T plus that lifetime. ``EXPIRY_MARGIN`` is
    added to all.

    Issuer: the one given (``*`` = every issuer; with ``issuers`` configured, one of them);
    else ``default_issuer``; else, for a jti, token, fingerprint or family, the only issuer
    configured (IssuerNeeded when there are several or none); a subject or client entry
    without an issuer covers every issuer, as it always has.
    """

    default_ttl: float = 86400.0
    lifetimes: Mapping[str, float] | None = None
    issuers: tuple[str, ...] = ()
    default_issuer: str | None = None
    # issuers whose tokens may be opaque (they have an introspection section): see ``jti``
    introspected: frozenset[str] = frozenset()
    # which issuers an entry may name when templated issuers are configured: the exact ones and the
    # concrete tenant issuers (never a template as written); None: ``issuers`` exactly
    accepts: Callable[[str], bool] | None = None

    def configured(self, issuer: str) -> bool:
        return self.accepts(issuer) if self.accepts is not None else issuer in self.issuers

    def lifetime(self, issuer: str | None) -> float:
        """The issuer's max token lifetime; without an issuer, the longest of any."""
        lifetimes = self.lifetimes or {}
        if issuer is not None and issuer != ANY_ISSUER and issuer in lifetimes:
            return lifetimes[issuer]
        return max([self.default_ttl, *lifetimes.values()])

    def issuer_for(self, target: str, given: str | None) -> str:
        """The issuer an entry for ``target`` is scoped to (see the class docstring)."""
        if given is not None:
            if not isinstance(given, str) or not given:
                raise ValueError("issuer must be a non-empty string ('*' for every issuer)")
            if self.issuers and given != ANY_ISSUER and not self.configured(given):
                raise ValueError(f"issuer {given[:200]!r} is not configured (configured: {', '.join(self.issuers)};"
                                 " '*' for every issuer)")
            return given
        if self.default_issuer is not None:
            return self.default_issuer
        if target not in ISSUER_SCOPED:
            return ANY_ISSUER
        if len(self.issuers) == 1 and self.configured(self.issuers[0]):  # not a template: name the tenant
            return self.issuers[0]
        raise IssuerNeeded(self.issuers)

    def _expiry(self, base: float, issuer: str, ttl: float | None) -> float:
        return base + (self.lifetime(issuer) if ttl is None else ttl) + EXPIRY_MARGIN

    def _cutoff(self, before: float | str | datetime | None, issuer: str, ttl: float | None,
                now: float) -> tuple[float, float]:
        """The cut-off (default now) and the expiry: the cut-off plus the lifetime, never before now."""
        given = as_timestamp(before, "before", now)
        cutoff = now if given is None else given
        lifetime = self.lifetime(issuer) if ttl is None else ttl
        return cutoff, max(cutoff + lifetime, now) + EXPIRY_MARGIN

    @staticmethod
    def _reason(reason: str) -> str:
        return (reason or "")[:MAX_REASON]

    def _token_entry(self, target: str, match: Match, value: str, issuer: str | None, ttl: float | None,
                     expires_at: float | None, reason: str, now: float | None) -> Entry:
        now = time.time() if now is None else now
        scope = self.issuer_for(target, issuer)
        ttl = as_seconds(ttl)
        exp = as_timestamp(expires_at, "expires_at", now)
        expiry = exp + EXPIRY_MARGIN if exp is not None else self._expiry(now, scope, ttl)
        return Entry(Kind.TOKEN, value, expiry, scope, None, self._reason(reason), now, match)

    def jti(self, jti: str, *, issuer: str | None = None, ttl: float | None = None, expires_at: float | None = None,
            reason: str = "", now: float | None = None) -> Entry:
        """A token by its ``jti`` claim, for ``issuer``'s tokens only (a jti is unique per issuer at best).

        For an issuer that introspects (and for ``*`` when one does), the entry holds the
        SHA-256 of the value, as a fingerprint: it matches a token whose jti has that hash
        (``RevocationList.check``) and an opaque token that *is* the value. An opaque token has
        no jti the gateway sees (oidc-provider's introspection answer names none, since the
        token's value is its jti), so what an integrator sends as "jti" is often the token
        itself: stored as it is, it would never match and would put a live token in Redis.
        """
        value = _nonempty("jti", jti)
        scope = self.issuer_for("jti", issuer)
        if scope in self.introspected or (scope == ANY_ISSUER and self.introspected):
            return self._token_entry("jti", Match.FINGERPRINT, sha256_hex(value), scope, ttl, expires_at, reason, now)
        return self._token_entry("jti", Match.JTI, value, scope, ttl, expires_at, reason, now)

    def fingerprint(self, fingerprint: str, *, issuer: str | None = None, ttl: float | None = None,
                    expires_at: float | None = None, reason: str = "", now: float | None = None) -> Entry:
        """A token by its fingerprint (never matched against a jti, whatever the jti looks like)."""
        value = _nonempty("fingerprint", fingerprint).strip().lower()
        if not _FINGERPRINT.match(value):
            raise ValueError("a fingerprint is the SHA-256 hex of the token (64 hex digits, or the 32-digit prefix)")
        return self._token_entry("fingerprint", Match.FINGERPRINT, value, issuer, ttl, expires_at, reason, now)

    def token(self, raw_token: str, *, issuer: str | None = None, ttl: float | None = None,
              expires_at: float | None = None, reason: str = "", now: float | None = None) -> Entry:
        """Revoke one raw token by its fingerprint, hashed here: the raw token goes nowhere."""
        raw_token = _nonempty("token", raw_token)
        now = time.time() if now is None else now
        scope = self.issuer_for("token", issuer)
        ttl = as_seconds(ttl)
        exp = expires_at if expires_at is not None else _unverified_exp(raw_token, now)
        if exp is not None:  # a JWT's own exp, capped by the issuer's max lifetime
            exp = min(exp, now + (self.lifetime(scope) if ttl is None else ttl), now + MAX_LIFETIME)
        return self._token_entry("token", Match.FINGERPRINT, fingerprint(raw_token), scope, ttl, exp, reason, now)

    def family(self, family: str, *, issuer: str | None = None, ttl: float | None = None, reason: str = "",
               now: float | None = None) -> Entry:
        now = time.time() if now is None else now
        scope = self.issuer_for("family", issuer)
        expiry = self._expiry(now, scope, as_seconds(ttl))
        return Entry(Kind.FAMILY, _nonempty("family", family), expiry, scope, None, self._reason(reason), now)

    def subject(self, sub: str, *, issuer: str | None = None, before: float | str | datetime | None = None,
                ttl: float | None = None, reason: str = "", now: float | None = None) -> Entry:
        return self._cutoff_entry(Kind.SUBJECT, "subject", sub, issuer, before, ttl, reason, now)

    def client(self, client_id: str, *, issuer: str | None = None, before: float | str | datetime | None = None,
               ttl: float | None = None, reason: str = "", now: float | None = None) -> Entry:
        return self._cutoff_entry(Kind.CLIENT, "client_id", client_id, issuer, before, ttl, reason, now)

    def _cutoff_entry(self, kind: Kind, name: str, value: str, issuer: str | None,
                      before: float | str | datetime | None, ttl: float | None, reason: str,
                      now: float | None) -> Entry:
        now = time.time() if now is None else now
        scope = self.issuer_for(kind.value, issuer)
        cutoff, expiry = self._cutoff(before, scope, as_seconds(ttl), now)
        return Entry(kind, _nonempty(name, value), expiry, scope, cutoff, self._reason(reason), now)

    def build(self, target: str, value: str, *, issuer: str | None = None,
              before: float | str | datetime | None = None, ttl: float | None = None, reason: str = "") -> Entry:
        """One entry from a target name as the CLI and the admin JSON endpoint spell it."""
        if target in ("subject", "client"):
            method = self.subject if target == "subject" else self.client
            return method(value, issuer=issuer, before=before, ttl=ttl, reason=reason)
        if before is not None:
            raise ValueError("before applies to subject and client revocations only")
        if target == "jti":
            return self.jti(value, issuer=issuer, ttl=ttl, reason=reason)
        if target == "token":
            return self.token(value, issuer=issuer, ttl=ttl, reason=reason)
        if target == "fingerprint":
            return self.fingerprint(value, issuer=issuer, ttl=ttl, reason=reason)
        if target == "family":
            return self.family(value, issuer=issuer, ttl=ttl, reason=reason)
        raise ValueError(f"unknown revocation target {target!r}; one of {', '.join(TARGETS)}")


TARGETS = ("jti", "token", "fingerprint", "family", "subject", "client")


def _unverified_exp(raw_token: str, now: float) -> float | None:
    """``exp`` of a JWT-shaped token, unverified (used only to shorten an entry's life); None when absent
    or out of range (the issuer's lifetime applies then)."""
    parts = jwt_parts(raw_token)
    exp = as_number(parts[1].get("exp")) if parts is not None else None
    return exp if exp is not None and 0 <= exp <= now + MAX_LIFETIME else None
