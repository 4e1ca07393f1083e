"""What an incident keeps of each client IP, user agent, token and key it sees (offline)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ...audit.fields import PROOF_FAILURE_REASONS
from ..query import Record
from .values import text_of, texts_of

MAX_IPS_PER_TOKEN = 50
MAX_BINDINGS = 8  # distinct binding values kept per token or key (a record may hold anything there)
T = TypeVar("T")


@dataclass
class Seen:
    """First/last seen and counts of something (an IP, a user agent)."""

    first: str
    last: str
    calls: int = 0
    allowed: int = 0
    denied: int = 0

    def add(self, ts: str, allowed: bool) -> None:
        """Count one call at ``ts``."""
        if ts and (not self.first or ts < self.first):
            self.first = ts
        if ts > self.last:
            self.last = ts
        self.calls += 1
        if allowed:
            self.allowed += 1
        else:
            self.denied += 1


@dataclass
class TokenSeen(Seen):
    """One token: how it is known, and where it was used from."""

    jti: str | None = None
    fingerprint: str | None = None
    family: str | None = None
    sub: str | None = None
    client_id: str | None = None
    iss: str | None = None
    ips: set[str] = field(default_factory=set)
    more_ips: bool = False
    bindings: set[str] = field(default_factory=set)  # none | dpop | mtls, as the calls were bound
    proof_failures: int = 0

    def note(self, record: Record) -> None:
        """Learn the token's identity, address, binding and proof failures from one of its records."""
        # a value the gateway had to escape or cut is not the token's: never revoke by it
        altered = set(texts_of(record.get("escaped"))) | set(texts_of(record.get("truncated")))
        family_key = "family" if "family" in record else "sid"  # records older than "family" hold "sid"
        for name, key in (("jti", "jti"), ("fingerprint", "token_fingerprint"), ("family", family_key),
                          ("sub", "sub"), ("client_id", "client_id"), ("iss", "iss")):
            if getattr(self, name) is None and isinstance(record.get(key), str) and key not in altered:
                setattr(self, name, record[key])
        ip = record.get("client_ip")
        if isinstance(ip, str) and ip not in self.ips:
            if len(self.ips) < MAX_IPS_PER_TOKEN:
                self.ips.add(ip)
            else:
                self.more_ips = True
        binding = text_of(record.get("binding"))
        if binding and len(self.bindings) < MAX_BINDINGS:
            self.bindings.add(binding)
        if text_of(record.get("reason")) in PROOF_FAILURE_REASONS:  # a reason of another type is no failure
            self.proof_failures += 1


@dataclass
class KeySeen(Seen):
    """One key presented with the target's calls: how it was bound, and the proofs that failed."""

    bindings: set[str] = field(default_factory=set)
    proof_failures: int = 0


def token_key(record: Record) -> str | None:
    """How a token is told apart from others: its jti, else its fingerprint."""
    jti, fp = record.get("jti"), record.get("token_fingerprint")
    if isinstance(jti, str) and jti:
        return f"jti:{jti}"
    if isinstance(fp, str) and fp:
        return f"fp:{fp}"
    return None


def bounded_slot(table: dict[str, T], key: str, limit: int, make: Callable[[], T]) -> T | None:
    """``table[key]``, made when missing while the table holds fewer than ``limit`` entries;
    None when it is full (the caller counts what was left out)."""
    seen = table.get(key)
    if seen is None:
        if len(table) >= limit:
            return None
        seen = table[key] = make()
    return seen
