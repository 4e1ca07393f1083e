"""Revocation entries and the in-memory list every replica checks on every request.

The per-request check is a handful of dict lookups on this local copy; how the copy is
kept current (in-memory only, or fed from Redis) lives in the store modules.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from ..reasons import Reason
from ..tokens.token import FINGERPRINT_PREFIX, ValidatedToken


class Kind(str, Enum):
    """What an entry matches. ``token`` holds a jti or a token fingerprint."""

    TOKEN = "token"
    FAMILY = "family"
    SUBJECT = "subject"
    CLIENT = "client"


REASON_OF_KIND = {
    Kind.TOKEN: Reason.REVOKED_TOKEN,
    Kind.FAMILY: Reason.REVOKED_FAMILY,
    Kind.SUBJECT: Reason.REVOKED_SUBJECT,
    Kind.CLIENT: Reason.REVOKED_CLIENT,
}

ANY_ISSUER = "*"
_NEVER = -math.inf  # the expiry check() reads for a key that is not in a table
_NO_CUTOFF = (_NEVER, _NEVER)  # (not_before, expires_at) of a subject or client that is not in a table


@dataclass(frozen=True, slots=True)
class Entry:
    """One revocation.

    ``value`` is the jti / fingerprint, family id, subject or client id. Subject and client
    entries revoke tokens issued (``iat``) before ``not_before``; token and family entries
    revoke unconditionally. ``expires_at`` is when every token it can match has expired.
    """

    kind: Kind
    value: str
    expires_at: float
    issuer: str = ANY_ISSUER
    not_before: float | None = None
    reason: str = ""
    created_at: float = 0.0

    def key(self) -> tuple[str, str]:
        """Identity within the list; the same key written twice keeps the later entry."""
        if self.kind is Kind.SUBJECT:
            return (self.kind.value, f"{self.issuer}|{self.value}")
        return (self.kind.value, self.value)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(
            kind=Kind(data["kind"]), value=str(data["value"]), expires_at=float(data["expires_at"]),
            issuer=str(data.get("issuer") or ANY_ISSUER),
            not_before=float(data["not_before"]) if data.get("not_before") is not None else None,
            reason=str(data.get("reason") or ""), created_at=float(data.get("created_at") or 0.0),
        )


class RevocationList:
    """The local copy of the list; lookups are O(1) whatever its size."""

    def __init__(self, family_claim: str = "sid") -> None:
        self.family_claim = family_claim
        self._tokens: dict[str, float] = {}
        self._families: dict[str, float] = {}
        self._subjects: dict[str, tuple[float, float]] = {}  # "issuer|sub" -> (not_before, expires_at)
        self._clients: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._tokens) + len(self._families) + len(self._subjects) + len(self._clients)

    def add(self, entry: Entry) -> None:
        if entry.kind is Kind.TOKEN:
            self._tokens[entry.value] = max(entry.expires_at, self._tokens.get(entry.value, 0.0))
        elif entry.kind is Kind.FAMILY:
            self._families[entry.value] = max(entry.expires_at, self._families.get(entry.value, 0.0))
        else:
            table = self._subjects if entry.kind is Kind.SUBJECT else self._clients
            name = entry.key()[1]
            cutoff = entry.not_before if entry.not_before is not None else entry.created_at or time.time()
            old = table.get(name)
            if old is not None:
                cutoff, expires = max(cutoff, old[0]), max(entry.expires_at, old[1])
            else:
                expires = entry.expires_at
            table[name] = (cutoff, expires)

    def replace(self, entries: list[Entry]) -> None:
        """Swap in a complete new copy (after a resync) in one step."""
        fresh = RevocationList(self.family_claim)
        for entry in entries:
            fresh.add(entry)
        self._tokens, self._families = fresh._tokens, fresh._families
        self._subjects, self._clients = fresh._subjects, fresh._clients

    def check(self, token: ValidatedToken, now: float | None = None) -> Reason | None:
        """The revocation reason matching this token, or None."""
        tokens, families, subjects, clients = self._tokens, self._families, self._subjects, self._clients
        if not (tokens or families or subjects or clients):
            return None  # nothing revoked: the common case costs four truth tests
        now = time.time() if now is None else now
        # a missing key reads as _NEVER (expired before any time): one dict lookup and one comparison each
        if tokens:
            fingerprint = token.fingerprint
            if (
                tokens.get(fingerprint, _NEVER) > now
                or tokens.get(fingerprint[:FINGERPRINT_PREFIX], _NEVER) > now
                or (token.jti is not None and tokens.get(token.jti, _NEVER) > now)
            ):
                return Reason.REVOKED_TOKEN
        if families:
            family = token.claims.get(self.family_claim)
            if isinstance(family, str) and families.get(family, _NEVER) > now:
                return Reason.REVOKED_FAMILY
        if not (subjects or clients):
            return None
        issued = token.issued_at if token.issued_at is not None else 0.0
        if subjects and token.subject is not None:  # the "issuer|sub" keys are only built when there are some
            for name in (f"{token.issuer}|{token.subject}", f"{ANY_ISSUER}|{token.subject}"):
                cutoff, expires = subjects.get(name, _NO_CUTOFF)
                if expires > now and issued < cutoff:
                    return Reason.REVOKED_SUBJECT
        if clients and token.client_id is not None:
            cutoff, expires = clients.get(token.client_id, _NO_CUTOFF)
            if expires > now and issued < cutoff:
                return Reason.REVOKED_CLIENT
        return None

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
        tables: list[dict[str, Any]] = [self._tokens, self._families, self._subjects, self._clients]
        for table in tables:
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
        for table in (self._tokens, self._families):
            dead = [k for k, exp in table.items() if exp <= now]
            for k in dead:
                del table[k]
            dropped += len(dead)
        for pairs in (self._subjects, self._clients):
            dead = [k for k, (_, exp) in pairs.items() if exp <= now]
            for k in dead:
                del pairs[k]
            dropped += len(dead)
        return dropped

