"""Revocation entries and the in-memory list every replica checks on every request.

The per-request check is a handful of dict lookups on this local copy; how the copy is
kept current (in-memory only, or fed from Redis) lives in the store modules.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..reasons import Reason
from ..tokens.token import FINGERPRINT_PREFIX, ValidatedToken, sha256_hex, short_fingerprint


class Kind(str, Enum):
    """What an entry matches. A ``token`` entry holds a jti or a token fingerprint, as its ``match`` says."""

    TOKEN = "token"
    FAMILY = "family"
    SUBJECT = "subject"
    CLIENT = "client"

    @property
    def reason(self) -> Reason:
        """The decision reason of a token an entry of this kind revokes."""
        return _REASON_OF_KIND[self]


class Match(str, Enum):
    """What the value of a ``token`` entry is: a ``jti`` claim or a token fingerprint (two namespaces).

    A token entry without one is a schema-1 entry: its value matched a jti or a fingerprint, of
    any issuer. Such entries are still read (and enforced as they were) until they expire.
    """

    JTI = "jti"
    FINGERPRINT = "fingerprint"


_REASON_OF_KIND = {
    Kind.TOKEN: Reason.REVOKED_TOKEN,
    Kind.FAMILY: Reason.REVOKED_FAMILY,
    Kind.SUBJECT: Reason.REVOKED_SUBJECT,
    Kind.CLIENT: Reason.REVOKED_CLIENT,
}

SCHEMA_VERSION = 2  # of the entry JSON and the Redis layout (docs/revocation.md)
ANY_ISSUER = "*"
_NEVER = -math.inf  # the expiry check() reads for a key that is not in a table
_NO_CUTOFF = (_NEVER, _NEVER)  # (not_before, expires_at) of a subject or client that is not in a table
# schema 1 ignored the issuer of these kinds: its entries keep matching every issuer until they expire
_SCHEMA1_ANY_ISSUER = frozenset({Kind.TOKEN, Kind.FAMILY, Kind.CLIENT})


@dataclass(frozen=True, slots=True)
class Entry:
    """One revocation.

    ``value`` is the jti / fingerprint (as ``match`` says), family id, subject or client id, and
    it matches tokens of ``issuer`` only (``*``: of every issuer). Subject and client entries
    revoke tokens issued (``iat``) before ``not_before``; token and family entries revoke
    unconditionally. ``expires_at`` is when every token it can match has expired.

    Every number is finite: a NaN compares false with everything, so one NaN would silently
    undo the revocation it merges with, and an infinite expiry cannot be stored in Redis.
    """

    kind: Kind
    value: str
    expires_at: float
    issuer: str = ANY_ISSUER
    not_before: float | None = None
    reason: str = ""
    created_at: float = 0.0
    match: Match | None = None

    def __post_init__(self) -> None:
        for name, number in (("expires_at", self.expires_at), ("not_before", self.not_before),
                             ("created_at", self.created_at)):
            if number is not None and not is_finite(number):
                raise ValueError(f"{name} must be a finite number, not {number!r:.40}")
        if not isinstance(self.value, str) or not self.value:
            raise ValueError("an entry's value must be a non-empty string")
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("an entry's issuer must be a non-empty string ('*' for every issuer)")
        if self.match is not None and self.kind is not Kind.TOKEN:
            raise ValueError("only token entries have a match (jti or fingerprint)")

    @property
    def namespace(self) -> str:
        """Where the value lives: jti, fingerprint, family, subject, client, or token (schema 1)."""
        return self.match.value if self.match is not None else self.kind.value

    def key(self) -> tuple[str, str, str]:
        """Identity within the list (namespace, issuer, value); the same key written twice merges."""
        value = self.value.lower() if self.match is Match.FINGERPRINT else self.value
        return (self.namespace, self.issuer, value)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": SCHEMA_VERSION, "kind": self.kind.value, "value": self.value, "expires_at": self.expires_at,
            "issuer": self.issuer, "not_before": self.not_before, "reason": self.reason,
            "created_at": self.created_at,
        }
        if self.match is not None:
            data["match"] = self.match.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """An entry of schema 2, or of schema 1 (no ``v``) with the meaning it had then; ValueError otherwise."""
        version = data.get("v", 1)
        if isinstance(version, bool) or str(version) not in ("1", "2"):
            raise ValueError(f"schema version {version!r} is not understood")
        kind = Kind(data["kind"])
        issuer = str(data.get("issuer") or ANY_ISSUER)
        match = None
        if str(version) == "1":
            issuer = ANY_ISSUER if kind in _SCHEMA1_ANY_ISSUER else issuer
        elif data.get("match") is not None:
            match = Match(data["match"])
        return cls(
            kind=kind, value=str(data["value"]), expires_at=float(data["expires_at"]), issuer=issuer,
            not_before=float(data["not_before"]) if data.get("not_before") is not None else None,
            reason=str(data.get("reason") or ""), created_at=float(data.get("created_at") or 0.0), match=match,
        )


def is_finite(number: object) -> bool:
    """A real number a float can hold: not a bool, NaN, an infinity, or an int beyond float range
    (Python's JSON parser, which PyJWT uses, reads NaN, Infinity and integers of any size)."""
    if isinstance(number, bool) or not isinstance(number, int | float):
        return False
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


Pair = tuple[str, str]  # (issuer, value): the key of every issuer-scoped table


class RevocationList:
    """The local copy of the list; lookups are O(1) whatever its size.

    Every table but the schema-1 one is keyed by (issuer, value), and a token is looked up
    under its own issuer and under ``*``: an entry never matches another issuer's tokens.
    """

    def __init__(self, family_claim: str = "sid") -> None:
        self.family_claim = family_claim
        self._jtis: dict[Pair, float] = {}
        self._fingerprints: dict[Pair, float] = {}  # (issuer, the fingerprint's first 32 hex digits)
        self._legacy: dict[str, float] = {}  # schema-1 token entries: a jti or a fingerprint, any issuer
        self._families: dict[Pair, float] = {}
        self._subjects: dict[Pair, tuple[float, float]] = {}  # (issuer, sub) -> (not_before, expires_at)
        self._clients: dict[Pair, tuple[float, float]] = {}

    def _tables(self) -> list[dict[Any, Any]]:
        return [self._jtis, self._fingerprints, self._legacy, self._families, self._subjects, self._clients]

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables())

    def _slot(self, entry: Entry) -> tuple[dict[Any, Any], Any]:
        """The table an entry goes in, and its key there."""
        if entry.kind is Kind.FAMILY:
            return self._families, (entry.issuer, entry.value)
        if entry.kind is not Kind.TOKEN:
            return (self._subjects if entry.kind is Kind.SUBJECT else self._clients), (entry.issuer, entry.value)
        if entry.match is Match.JTI:
            return self._jtis, (entry.issuer, entry.value)
        if entry.match is Match.FINGERPRINT:
            return self._fingerprints, (entry.issuer, entry.value.lower()[:FINGERPRINT_PREFIX])
        return self._legacy, entry.value

    def add(self, entry: Entry) -> None:
        """Merge ``entry`` in: the later expiry and the later cut-off win, so nothing is ever weakened."""
        table, name = self._slot(entry)
        if entry.kind is Kind.TOKEN or entry.kind is Kind.FAMILY:
            table[name] = max(entry.expires_at, table.get(name, _NEVER))
            return
        cutoff = entry.not_before if entry.not_before is not None else entry.created_at or time.time()
        old = table.get(name)
        if old is not None:
            cutoff, expires = max(cutoff, old[0]), max(entry.expires_at, old[1])
        else:
            expires = entry.expires_at
        table[name] = (cutoff, expires)

    def covers(self, entry: Entry) -> bool:
        """Whether ``entry`` is here already, as strong (an expiry and a cut-off no earlier): adding it
        would change nothing. An entry without ``not_before`` and ``created_at`` has its cut-off
        where it is added; for it, the expiry is compared only."""
        table, name = self._slot(entry)
        held = table.get(name)
        if held is None:
            return False
        if not isinstance(held, tuple):
            return bool(held >= entry.expires_at)
        cutoff = entry.not_before if entry.not_before is not None else entry.created_at or None
        return bool(held[1] >= entry.expires_at and (cutoff is None or held[0] >= cutoff))

    def tables(self) -> dict[str, dict[Any, Any]]:
        """Every table by name (the bulk load fills them directly; a snapshot is written from them)."""
        return {"jti": self._jtis, "fingerprint": self._fingerprints, "legacy": self._legacy,
                "family": self._families, "subject": self._subjects, "client": self._clients}

    def replace(self, entries: list[Entry]) -> None:
        """Swap in a complete new copy (after a resync) in one step."""
        fresh = RevocationList(self.family_claim)
        for entry in entries:
            fresh.add(entry)
        self._jtis, self._fingerprints, self._legacy = fresh._jtis, fresh._fingerprints, fresh._legacy
        self._families, self._subjects, self._clients = fresh._families, fresh._subjects, fresh._clients

    def _revoked_as_presented(self, token: ValidatedToken, now: float) -> bool:
        """A fingerprint entry over the exact JWT string: what gateways before schema 2 wrote."""
        assert token.presented_hash is not None
        short = short_fingerprint(token.presented_hash)
        fingerprints = self._fingerprints
        own, anyone = fingerprints.get((token.issuer, short), _NEVER), fingerprints.get((ANY_ISSUER, short), _NEVER)
        return own > now or anyone > now

    def _revoked_jti_hash(self, token: ValidatedToken, now: float) -> bool:
        """A fingerprint entry equal to the SHA-256 of the token's jti: a jti revoked for an issuer
        that introspects is kept that way (``EntryFactory.jti``), since there the "jti" an
        integrator has is often the opaque token itself, which must never be stored."""
        assert token.jti is not None
        short = short_fingerprint(token.jti_hash or sha256_hex(token.jti))
        fingerprints = self._fingerprints
        own, anyone = fingerprints.get((token.issuer, short), _NEVER), fingerprints.get((ANY_ISSUER, short), _NEVER)
        return own > now or anyone > now

    def fingerprint_revoked(self, issuer: str, fingerprint: str, now: float | None = None) -> bool:
        """Whether a token of ``issuer`` with this fingerprint is revoked, before anything else is
        known about it: checked before an opaque token is introspected, so that a revoked token
        costs no call to the authorization server and is refused as ``revoked_token``."""
        fingerprints, legacy = self._fingerprints, self._legacy
        if not (fingerprints or legacy):
            return False
        now = time.time() if now is None else now
        short = short_fingerprint(fingerprint)
        return (
            fingerprints.get((issuer, short), _NEVER) > now
            or fingerprints.get((ANY_ISSUER, short), _NEVER) > now
            or legacy.get(fingerprint, _NEVER) > now
            or legacy.get(short, _NEVER) > now
        )

    def check(self, token: ValidatedToken, now: float | None = None) -> Reason | None:
        """The revocation reason matching this token, or None."""
        jtis, fingerprints, legacy = self._jtis, self._fingerprints, self._legacy
        families, subjects, clients = self._families, self._subjects, self._clients
        if not (jtis or fingerprints or legacy or families or subjects or clients):
            return None  # nothing revoked: the common case costs six truth tests
        now = time.time() if now is None else now
        issuer = token.issuer
        # a missing key reads as _NEVER (expired before any time): one dict lookup and one comparison each
        if jtis and token.jti is not None:
            jti = token.jti
            if jtis.get((issuer, jti), _NEVER) > now or jtis.get((ANY_ISSUER, jti), _NEVER) > now:
                return Reason.REVOKED_TOKEN
        if fingerprints:
            short = short_fingerprint(token.fingerprint)
            if fingerprints.get((issuer, short), _NEVER) > now or fingerprints.get((ANY_ISSUER, short), _NEVER) > now:
                return Reason.REVOKED_TOKEN
            if token.presented_hash is not None and self._revoked_as_presented(token, now):
                return Reason.REVOKED_TOKEN
            if token.jti is not None and self._revoked_jti_hash(token, now):
                return Reason.REVOKED_TOKEN
        if legacy and self._legacy_match(token, now):
            return Reason.REVOKED_TOKEN
        if families:
            family = token.claims.get(self.family_claim)
            if isinstance(family, str) and (
                families.get((issuer, family), _NEVER) > now or families.get((ANY_ISSUER, family), _NEVER) > now
            ):
                return Reason.REVOKED_FAMILY
        if not (subjects or clients):
            return None
        issued = token.issued_at if token.issued_at is not None else 0.0
        if subjects and (sub := token.subject) is not None and _cut_off(subjects, issuer, sub, issued, now):
            return Reason.REVOKED_SUBJECT
        if clients and (client := token.client_id) is not None and _cut_off(clients, issuer, client, issued, now):
            return Reason.REVOKED_CLIENT
        return None

    def _legacy_match(self, token: ValidatedToken, now: float) -> bool:
        """Schema 1: the value was a jti or a fingerprint (or its audit prefix), of any issuer."""
        legacy, fingerprint = self._legacy, token.fingerprint
        return (
            legacy.get(fingerprint, _NEVER) > now
            or legacy.get(short_fingerprint(fingerprint), _NEVER) > now
            or (token.jti is not None and legacy.get(token.jti, _NEVER) > now)
        )

    def matcher_for(self, *entries: Entry) -> Callable[[ValidatedToken], bool]:
        """A predicate telling whether a cached token falls under any of ``entries`` (to evict it).

        The entries go into one probe list, so a burst of revocations costs one lookup per token.
        """
        probe = RevocationList(self.family_claim)
        for entry in entries:
            probe.add(entry)
        return lambda token: probe.check(token, now=0.0) is not None

    async def sweep_gradually(self, now: float | None = None, chunk: int = 20_000) -> int:
        """``sweep`` in chunks, yielding to the event loop in between: a list of a million
        entries would otherwise stall every request for tens of milliseconds."""
        now = time.time() if now is None else now
        dropped = 0
        for table in self._tables():
            keys = list(table)  # a C-level copy; entries re-added meanwhile are read afresh below
            for start in range(0, len(keys), chunk):
                for key in keys[start : start + chunk]:
                    value = table.get(key)
                    expires = value[1] if isinstance(value, tuple) else value
                    if expires is not None and expires <= now:
                        del table[key]
                        dropped += 1
                await asyncio.sleep(0)
        return dropped

    def sweep(self, now: float | None = None) -> int:
        """Drop expired entries; returns how many went."""
        now = time.time() if now is None else now
        dropped = 0
        for table in self._tables():
            dead = [k for k, value in table.items() if (value[1] if isinstance(value, tuple) else value) <= now]
            for k in dead:
                del table[k]
            dropped += len(dead)
        return dropped


def _cut_off(table: dict[Pair, tuple[float, float]], issuer: str, value: str, issued: float, now: float) -> bool:
    """Whether a live cut-off entry for ``value`` (of ``issuer`` or of every issuer) postdates ``issued``."""
    cutoff, expires = table.get((issuer, value), _NO_CUTOFF)
    if expires > now and issued < cutoff:
        return True
    cutoff, expires = table.get((ANY_ISSUER, value), _NO_CUTOFF)
    return expires > now and issued < cutoff
