"""The incident: aggregates of a target's calls and of the tokens related to it (offline).

Memory holds aggregates only, plus the first ``MAX_LISTED`` calls for the listing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ...audit.fields import PROOF_FAILURE_REASONS
from ..query import Record
from .seen import MAX_BINDINGS, KeySeen, Seen, TokenSeen, bounded_slot, token_key
from .target import Target
from .values import text_of, texts_of

MAX_LISTED = 10_000  # calls listed one by one (all are counted)
MAX_DENIALS_PER_REASON = 1_000
MAX_RELATED = 1_000
MAX_KEYS = 1_000  # distinct key thumbprints listed (calls with others are counted)
_CALL_FIELDS = (
    "ts", "request_id", "client_ip", "method", "path", "route", "status", "decision", "reason", "user_agent",
    "scopes", "required_scopes", "missing_scopes", "jti", "token_fingerprint", "suspicious", "binding",
    "key_thumbprint", "rule", "detail", "trace_id", "span_id",
)
_LIST_FIELDS = frozenset({"scopes", "required_scopes", "missing_scopes", "suspicious"})


@dataclass
class Incident:
    """Everything ``gateway incident`` reports about its target."""

    target: Target
    calls: int = 0
    allowed: int = 0
    denied: int = 0
    first: Record | None = None
    last: Record | None = None
    by_route_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    ips: dict[str, Seen] = field(default_factory=dict)
    user_agents: dict[str, Seen] = field(default_factory=dict)
    denials: dict[str, list[Record]] = field(default_factory=dict)
    denial_counts: Counter[str] = field(default_factory=Counter)
    escalations: list[Record] = field(default_factory=list)
    escalation_count: int = 0
    listed: list[Record] = field(default_factory=list)
    timeline: dict[str, Counter[str]] = field(default_factory=dict)  # minute -> decision -> calls
    suspicious: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, TokenSeen] = field(default_factory=dict)
    related: dict[str, TokenSeen] = field(default_factory=dict)
    related_dropped: int = 0
    actions: list[Record] = field(default_factory=list)
    bindings: Counter[str] = field(default_factory=Counter)  # calls by binding (none | dpop | mtls)
    keys: dict[str, KeySeen] = field(default_factory=dict)
    keys_dropped: int = 0  # calls whose key was not listed (past MAX_KEYS)
    proof_failures: Counter[str] = field(default_factory=Counter)  # by reason

    # -- collecting --

    def add(self, record: Record) -> None:
        """One record of the target's own activity."""
        if record.get("mode") == "incident" or "action" in record:
            self.actions.append(_action(record))
            return
        call = _call(record)  # every value of the type the report expects, whatever the record held
        ts = call["ts"]
        allowed = call["decision"] == "allow"
        self._count(call, allowed)
        self.ips.setdefault(call["client_ip"] or "(unknown)", Seen(ts, ts)).add(ts, allowed)
        self.user_agents.setdefault(call["user_agent"] or "(none)", Seen(ts, ts)).add(ts, allowed)
        if not allowed:
            self._add_denial(call)
        if len(self.listed) < MAX_LISTED:
            self.listed.append(call)
        self.timeline.setdefault(ts[:16], Counter())["allow" if allowed else "deny"] += 1  # by minute
        for reason in call["suspicious"]:
            self.suspicious[reason] += 1
        self._add_binding(call, allowed)
        key = token_key(record)
        if key is not None:
            self.tokens.setdefault(key, TokenSeen(ts, ts)).add(ts, allowed)
            self.tokens[key].note(record)

    def _count(self, call: Record, allowed: bool) -> None:
        """The call counts, first and last use, and calls by route and status."""
        ts = call["ts"]
        self.calls += 1
        if allowed:
            self.allowed += 1
        else:
            self.denied += 1
        if self.first is None or ts < self.first["ts"]:
            self.first = call
        if self.last is None or ts >= self.last["ts"]:
            self.last = call
        status = call["status"]
        self.by_route_status[(call["route"] or "(no route)", status if isinstance(status, int) else 0)] += 1

    def _add_denial(self, call: Record) -> None:
        """A refused call: by reason, and among the escalation attempts when scopes were missing."""
        reason = call["reason"] or "(none)"
        self.denial_counts[reason] += 1
        listed = self.denials.setdefault(reason, [])
        if len(listed) < MAX_DENIALS_PER_REASON:
            listed.append(call)
        if reason == "insufficient_scope":
            self.escalation_count += 1
            if len(self.escalations) < MAX_LISTED:
                self.escalations.append(call)

    def _add_binding(self, call: Record, allowed: bool) -> None:
        """How the call's token was bound, the key it presented, and whether its proof failed."""
        failed = call["reason"] in PROOF_FAILURE_REASONS
        if failed:
            self.proof_failures[call["reason"]] += 1
        if call["binding"] is not None and (call["binding"] in self.bindings or len(self.bindings) < MAX_BINDINGS):
            self.bindings[call["binding"]] += 1
        thumbprint = call["key_thumbprint"]
        if not thumbprint:
            return
        seen = bounded_slot(self.keys, thumbprint, MAX_KEYS, lambda: KeySeen(call["ts"], call["ts"]))
        if seen is None:
            self.keys_dropped += 1
            return
        seen.add(call["ts"], allowed)
        if call["binding"] and len(seen.bindings) < MAX_BINDINGS:
            seen.bindings.add(call["binding"])
        seen.proof_failures += int(failed)

    def add_related(self, record: Record) -> None:
        """A record of another token of the same family or subject."""
        if record.get("mode") == "incident" or "action" in record:
            return
        key = token_key(record)
        if key is None or key in self.tokens:
            return
        ts = text_of(record.get("ts")) or ""
        seen = bounded_slot(self.related, key, MAX_RELATED, lambda: TokenSeen(ts, ts))
        if seen is None:
            self.related_dropped += 1
            return
        seen.add(ts, record.get("decision") == "allow")
        seen.note(record)

    # -- facts derived --

    @property
    def proof_failure_count(self) -> int:
        return sum(self.proof_failures.values())

    @property
    def key_count(self) -> str:
        """How many keys were presented: ``12``, or ``1000+`` when some were left out."""
        return f"{len(self.keys)}{'+' if self.keys_dropped else ''}"

    @property
    def families(self) -> list[str]:
        return sorted({t.family for t in self.tokens.values() if t.family})

    @property
    def subjects(self) -> list[str]:
        return sorted({t.sub for t in self.tokens.values() if t.sub})

    @property
    def issuers(self) -> list[str]:
        return sorted({t.iss for t in self.tokens.values() if t.iss})

    def overlaps(self, other: TokenSeen) -> bool:
        """Whether ``other`` was used while the target was in use (between its first and last use)."""
        if self.first is None or self.last is None:
            return False
        return bool(other.first <= self.last["ts"] and other.last >= self.first["ts"])

    def route_totals(self) -> list[tuple[str, int, dict[int, int]]]:
        """(route, calls, {status: calls}) by descending calls."""
        routes: dict[str, dict[int, int]] = {}
        for (route, status), count in self.by_route_status.items():
            routes.setdefault(route, {})[status] = count
        return sorted(((r, sum(s.values()), dict(sorted(s.items()))) for r, s in routes.items()),
                      key=lambda item: (-item[1], item[0]))

    def statuses(self) -> list[int]:
        """The response statuses seen, in order."""
        return sorted({status for _, status in self.by_route_status})


def _call(record: Record) -> Record:
    """The fields of a call the report shows, each of one type whatever the record held: texts
    (or None), lists of texts, ``ts`` a text ("" when missing), ``status`` an int or a text."""
    call: Record = {k: texts_of(record.get(k)) if k in _LIST_FIELDS else text_of(record.get(k))
                    for k in _CALL_FIELDS}
    call["ts"] = call["ts"] or ""
    status = record.get("status")
    if type(status) is int:
        call["status"] = status
    return call


def _action(record: Record) -> Record:
    """A responder's action record with texts where the report shows them (``revoked`` kept)."""
    action = {k: text_of(record.get(k)) for k in ("ts", "action", "operator", "reason")}
    action["revoked"] = record.get("revoked")
    return action
