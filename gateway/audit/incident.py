"""``gateway incident``: the whole story of one token (or subject, family, or key) from the audit trail.

The input is streamed once to collect the token's own calls; when the token belongs to a
family or a subject, a second streamed pass collects the other tokens of that family or
subject (standard input is spooled to a temporary file for it). Memory holds aggregates
only, plus the first ``MAX_LISTED`` calls for the listing.

A key target (``--key-thumbprint``: a DPoP key's jkt or a client certificate's x5t#S256) is
the story of every token used with that key, proven or merely presented. The report shows how
each call was bound (none / dpop / mtls), the keys presented and the proof failures: a
sender-constrained token refused for want of its key's proof is how a stolen one shows up.

``--revoke`` turns the incident into revocation entries (the token by jti, else by
fingerprint; its families; for a subject, every token issued to it so far; for a key, every
token used with it and their families), writes them
into the shared revocation list with a ``Revoker`` (as ``gateway revoke`` does), and records
who did it in the audit trail.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..forensics.envelope import Envelope
from ..forensics.scan import ScanPlan, ScanStats
from ..forensics.scan import collect as scan_related
from .fields import PROOF_FAILURE_REASONS
from .query import Query, Record, Warn, _stderr, family_of, visible

MAX_LISTED = 10_000  # calls listed one by one (all are counted)
MAX_DENIALS_PER_REASON = 1_000
MAX_RELATED = 1_000
MAX_IPS_PER_TOKEN = 50
MAX_KEYS = 1_000  # distinct key thumbprints listed (calls with others are counted)
MAX_BINDINGS = 8  # distinct binding values kept per token or key (a record may hold anything there)
_CALL_FIELDS = (
    "ts", "request_id", "client_ip", "method", "path", "route", "status", "decision", "reason", "user_agent",
    "scopes", "required_scopes", "missing_scopes", "jti", "token_fingerprint", "suspicious", "binding",
    "key_thumbprint", "rule", "detail", "trace_id", "span_id",
)
_KINDS = {"jti": "token jti", "fingerprint": "token fingerprint", "sub": "subject", "family": "token family",
          "key": "key thumbprint", "trace": "trace"}


# --- what is investigated --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the incident is about. ``value`` never holds a raw token: --token becomes a fingerprint."""

    kind: str  # jti | fingerprint | sub | family | key | trace
    value: str
    from_token: bool = False

    @classmethod
    def from_options(
        cls, jti: str | None = None, fingerprint: str | None = None, token: str | None = None,
        sub: str | None = None, family: str | None = None, key_thumbprint: str | None = None,
        trace_id: str | None = None,
    ) -> Target:
        given = [(k, v) for k, v in (("jti", jti), ("fingerprint", fingerprint), ("token", token), ("sub", sub),
                                     ("family", family), ("key", key_thumbprint), ("trace", trace_id)) if v]
        if len(given) != 1:
            raise ValueError("give exactly one of --jti, --fingerprint, --token, --sub, --family, --key-thumbprint,"
                             " --trace-id")
        kind, value = given[0]
        if kind == "token":
            return cls("fingerprint", Query.build(token=value).fingerprint or "", from_token=True)
        if kind == "fingerprint":
            return cls("fingerprint", Query(fingerprint=value).fingerprint or "")
        if kind == "key":
            return cls("key", Query(key_thumbprint=value).key_thumbprint or "")
        if kind == "trace":
            return cls("trace", Query(trace_id=value).trace_id or "")
        return cls(kind, value)

    def query(self) -> Query:
        if self.kind == "jti":
            return Query(jti=self.value)
        if self.kind == "fingerprint":
            return Query(fingerprint=self.value)
        if self.kind == "sub":
            return Query(sub=self.value)
        if self.kind == "key":
            return Query(key_thumbprint=self.value)
        if self.kind == "trace":
            return Query(trace_id=self.value)
        return Query(family=self.value)

    def describe(self) -> str:
        if self.from_token:
            return f"the token given with --token (fingerprint {self.value}; the token itself is not shown)"
        return f"{_KINDS[self.kind]} {self.value}"

    @property
    def is_token(self) -> bool:
        return self.kind in ("jti", "fingerprint")


# --- aggregates ------------------------------------------------------------------------------


@dataclass
class Seen:
    """First/last seen and counts of something (an IP, a user agent)."""

    first: str
    last: str
    calls: int = 0
    allowed: int = 0
    denied: int = 0

    def add(self, ts: str, allowed: bool) -> None:
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
        # a value the gateway had to escape or cut is not the token's: never revoke by it
        altered = set(_texts(record.get("escaped"))) | set(_texts(record.get("truncated")))
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
        binding = _text(record.get("binding"))
        if binding and len(self.bindings) < MAX_BINDINGS:
            self.bindings.add(binding)
        if _text(record.get("reason")) in PROOF_FAILURE_REASONS:  # a reason of another type is no failure
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
        self.ips.setdefault(call["client_ip"] or "(unknown)", Seen(ts, ts)).add(ts, allowed)
        self.user_agents.setdefault(call["user_agent"] or "(none)", Seen(ts, ts)).add(ts, allowed)
        if not allowed:
            reason = call["reason"] or "(none)"
            self.denial_counts[reason] += 1
            listed = self.denials.setdefault(reason, [])
            if len(listed) < MAX_DENIALS_PER_REASON:
                listed.append(call)
            if reason == "insufficient_scope":
                self.escalation_count += 1
                if len(self.escalations) < MAX_LISTED:
                    self.escalations.append(call)
        if len(self.listed) < MAX_LISTED:
            self.listed.append(call)
        minute = ts[:16]
        self.timeline.setdefault(minute, Counter())["allow" if allowed else "deny"] += 1
        for reason in call["suspicious"]:
            self.suspicious[reason] += 1
        self._add_binding(call, allowed)
        key = token_key(record)
        if key is not None:
            self.tokens.setdefault(key, TokenSeen(ts, ts)).add(ts, allowed)
            self.tokens[key].note(record)

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
        seen = self.keys.get(thumbprint)
        if seen is None:
            if len(self.keys) >= MAX_KEYS:
                self.keys_dropped += 1
                return
            seen = self.keys[thumbprint] = KeySeen(call["ts"], call["ts"])
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
        seen = self.related.get(key)
        if seen is None:
            if len(self.related) >= MAX_RELATED:
                self.related_dropped += 1
                return
            ts = _text(record.get("ts")) or ""
            seen = self.related[key] = TokenSeen(ts, ts)
        seen.add(_text(record.get("ts")) or "", record.get("decision") == "allow")
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
        return sorted({status for _, status in self.by_route_status})


_LIST_FIELDS = frozenset({"scopes", "required_scopes", "missing_scopes", "suspicious"})


def _call(record: Record) -> Record:
    """The fields of a call the report shows, each of one type whatever the record held: texts
    (or None), lists of texts, ``ts`` a text ("" when missing), ``status`` an int or a text."""
    call: Record = {k: _texts(record.get(k)) if k in _LIST_FIELDS else _text(record.get(k)) for k in _CALL_FIELDS}
    call["ts"] = call["ts"] or ""
    status = record.get("status")
    if type(status) is int:
        call["status"] = status
    return call


def _action(record: Record) -> Record:
    """A responder's action record with texts where the report shows them (``revoked`` kept)."""
    action = {k: _text(record.get(k)) for k in ("ts", "action", "operator", "reason")}
    action["revoked"] = record.get("revoked")
    return action


def _text(value: Any) -> str | None:
    """A record value as text: a string as it is, None as None, anything else as its JSON."""
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def _texts(value: Any) -> list[str]:
    """A record value as a list of texts: a list item by item, one text alone, nothing for None."""
    if value is None:
        return []
    if isinstance(value, list):
        return [t for t in map(_text, value) if t is not None]
    return [_text(value) or ""]


def scopes_text(value: list[str]) -> str:
    """Scopes for a report: space-separated, ``-`` for none."""
    return " ".join(value) if value else "-"


def revoked_text(action: Record) -> str:
    """What a responder's action revoked, as one line, whatever shape ``revoked`` has."""
    revoked = action.get("revoked")
    if not isinstance(revoked, list):
        return _text(revoked) or ""
    return ", ".join(f"{_text(r.get('kind')) or ''} {_text(r.get('value')) or ''}" if isinstance(r, dict)
                     else _text(r) or "" for r in revoked)


# --- collecting ------------------------------------------------------------------------------


def collect(
    names: Sequence[str], target: Target, warn: Warn = _stderr, *, workers: int | None = None,
    envelope: Envelope | None = None, stats: ScanStats | None = None,
) -> Incident:
    """Build the incident in one scan of the inputs (files, directories, globs, ``-``): the
    target's records, and the records of its families and subjects (``forensics.scan.collect``)."""
    incident = Incident(target)
    plan = ScanPlan.for_query(target.query(), envelope=envelope, expand=_EXPANSIONS.get(target.kind, _RELATED))
    found = scan_related(list(names) or ["-"], plan, workers=workers, warn=warn, stats=stats)
    for record in found.records:
        incident.add(record)
    _add_related(incident, found.related)
    return incident


# which fields of the target's records lead to related records: a subject's tokens are its
# records already; a family's own tokens too, so only its subjects' other tokens are related
_RELATED = ("family", "sid", "sub")  # "sid": records written before "family" existed
_EXPANSIONS = {"sub": (), "family": ("sub",)}


def _add_related(incident: Incident, records: Iterable[Record]) -> None:
    """The engine relates by every value it found; keep the records of the families and subjects
    the report shows (an escaped or cut value is not the token's and relates nothing)."""
    families, subs = set(incident.families), set(incident.subjects)
    if incident.target.kind == "family":
        families = set()
    for record in records:
        if family_of(record) in families or record.get("sub") in subs:
            incident.add_related(record)


# --- plain-text report -----------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> list[str]:
    texts = [[visible("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        for i, value in enumerate(row):
            widths[i] = min(max(widths[i], len(value)), 60)
    out = [indent + "  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in texts:
        cells = [(v if len(v) <= widths[i] else v[: widths[i] - 1] + "…").ljust(widths[i]) for i, v in enumerate(row)]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def render_text(incident: Incident) -> str:
    """The incident as the plain-text report ``gateway incident`` prints.

    Values from the audit trail are shown with their control characters escaped (``visible``):
    a line built here holds no control character of its own, so escaping whole lines leaves
    the layout alone and keeps any escape sequence in a value from reaching the terminal."""
    return "\n".join(map(visible, _report_lines(incident))) + "\n"


def _report_lines(incident: Incident) -> list[str]:
    lines: list[str] = [f"Incident report for {incident.target.describe()}"]
    if not incident.calls:
        lines.append("No audit records of it were found in the input.")
        lines.extend(_actions_text(incident))
        return lines
    first, last = incident.first or {}, incident.last or {}
    lines += [
        f"  subjects: {', '.join(incident.subjects) or '-'}   families: {', '.join(incident.families) or '-'}"
        f"   issuers: {', '.join(incident.issuers) or '-'}",
        f"  first use: {first.get('ts')} from {first.get('client_ip')} ({first.get('method')} {first.get('path')})",
        f"  last use:  {last.get('ts')} from {last.get('client_ip')} ({last.get('method')} {last.get('path')})",
        f"  calls: {incident.calls} ({incident.allowed} allowed, {incident.denied} denied)"
        f" from {len(incident.ips)} client IP{'' if len(incident.ips) == 1 else 's'}",
    ]
    if incident.suspicious:
        lines.append(f"  flagged by live detection: {counts_text(incident.suspicious)}")
    lines += _binding_summary(incident)

    statuses = incident.statuses()
    lines += ["", "Calls by route and status"]
    lines += _table(
        ["ROUTE", "CALLS", *[str(s) for s in statuses]],
        [[route, total, *[by.get(s, "") for s in statuses]] for route, total, by in incident.route_totals()],
    )

    lines += ["", "Client IPs"]
    lines += _table(
        ["IP", "FIRST SEEN", "LAST SEEN", "CALLS", "ALLOWED", "DENIED"],
        [[ip, s.first, s.last, s.calls, s.allowed, s.denied]
         for ip, s in sorted(incident.ips.items(), key=lambda item: item[1].first)],
    )

    lines += ["", "User agents"]
    lines += _table(
        ["USER AGENT", "CALLS", "FIRST SEEN", "LAST SEEN"],
        [[ua, s.calls, s.first, s.last] for ua, s in sorted(incident.user_agents.items(), key=lambda i: -i[1].calls)],
    )

    lines += ["", *_keys_text(incident)]

    lines += ["", f"Denials by reason ({incident.denied})"]
    if not incident.denial_counts:
        lines.append("  none")
    for reason, count in incident.denial_counts.most_common():
        lines.append(f"  {reason}: {count}")
        listed = incident.denials.get(reason, [])
        lines += _table(["TIME", "CLIENT IP", "METHOD", "PATH", "STATUS"],
                        [[c["ts"], c["client_ip"], c["method"], c["path"], c["status"]] for c in listed], "    ")
        if count > len(listed):
            lines.append(f"    ... {count - len(listed)} more not listed")

    lines += ["", f"Scope-escalation attempts ({incident.escalation_count})"]
    if not incident.escalations:
        lines.append("  none")
    else:
        lines += _table(
            ["TIME", "CLIENT IP", "METHOD", "PATH", "ASKED FOR", "MISSING", "HELD"],
            [[c["ts"], c["client_ip"], c["method"], c["path"], scopes_text(c["required_scopes"]),
              scopes_text(c["missing_scopes"]), scopes_text(c["scopes"])] for c in incident.escalations],
        )
        if incident.escalation_count > len(incident.escalations):
            lines.append(f"    ... {incident.escalation_count - len(incident.escalations)} more not listed")

    lines += ["", *_tokens_text(incident)]

    lines += ["", f"Calls ({incident.calls})"]
    lines += _table(
        ["TIME", "CLIENT IP", "METHOD", "PATH", "ROUTE", "STATUS", "DECISION", "REASON", "BINDING"],
        [[c["ts"], c["client_ip"], c["method"], c["path"], c["route"], c["status"], c["decision"], reason_text(c),
          c["binding"]] for c in sorted(incident.listed, key=lambda c: c["ts"])],
    )
    if incident.calls > len(incident.listed):
        lines.append(f"  ... {incident.calls - len(incident.listed)} more calls not listed here:"
                     f" use gateway audit for all of them")
    lines.extend(_actions_text(incident))
    return lines


def reason_text(call: Record) -> str:
    """A call's reason, with the claims rule that refused it, the refusal's detail and live detection's flags."""
    text = call["reason"] or ""
    if call["rule"]:
        text += f" (rule {call['rule']})"
    if call["detail"]:
        text += f": {call['detail']}"
    if call["suspicious"]:
        text += f" (suspicious: {scopes_text(call['suspicious'])})"
    return text


def tokens_title(target: Target) -> str:
    """The heading over the tokens of a subject, family or key target."""
    what = {"sub": "of this subject", "family": "of this family", "key": "used with this key",
            "trace": "seen in this trace"}[target.kind]
    return f"Tokens {what}"


def counts_text(counts: Counter[str]) -> str:
    """``dpop x5, none x2``: a counter as one line, most common first."""
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())


def _binding_summary(incident: Incident) -> list[str]:
    lines = []
    if incident.bindings:
        lines.append(f"  bindings: {counts_text(incident.bindings)}"
                     f"   keys presented: {incident.key_count}")
    if incident.proof_failures:
        lines.append(f"  proof failures: {incident.proof_failure_count} ({counts_text(incident.proof_failures)}):"
                     " calls that did not prove the key the token is bound to, as a stolen token replayed"
                     " without its key does")
    return lines


def _keys_text(incident: Incident) -> list[str]:
    lines = [f"Keys presented ({incident.key_count}): DPoP key jkt or client certificate x5t#S256"]
    if not incident.keys:
        return [*lines, "  none"]
    lines += _table(
        ["KEY THUMBPRINT", "BINDING", "FIRST SEEN", "LAST SEEN", "CALLS", "ALLOWED", "PROOF FAILURES"],
        [[key, " ".join(sorted(k.bindings)), k.first, k.last, k.calls, k.allowed, k.proof_failures]
         for key, k in sorted(incident.keys.items(), key=lambda item: item[1].first)],
    )
    if incident.keys_dropped:
        lines.append(f"  ... {incident.keys_dropped} more calls with keys not listed")
    return lines


def _tokens_text(incident: Incident) -> list[str]:
    lines: list[str] = []
    if not incident.target.is_token:
        lines.append(f"{tokens_title(incident.target)} ({len(incident.tokens)})")
        lines += _token_rows(incident, list(incident.tokens.values()))
        if incident.target.kind == "sub":
            return lines
        lines.append("")
    title = "Other tokens of the same subject" if incident.target.kind == "family" else \
        "Other tokens of the same family or subject"
    lines.append(f"{title} ({len(incident.related) + incident.related_dropped});"
                 " * = used while the investigated token was in use")
    if not incident.related:
        lines.append("  none")
    lines += _token_rows(incident, sorted(incident.related.values(), key=lambda t: t.first), mark=True)
    if incident.related_dropped:
        lines.append(f"  ... {incident.related_dropped} more not listed")
    return lines


def _token_rows(incident: Incident, tokens: list[TokenSeen], mark: bool = False) -> list[str]:
    if not tokens:
        return []
    return _table(
        ["", "JTI", "FINGERPRINT", "FAMILY", "SUB", "CLIENT", "FIRST SEEN", "LAST SEEN", "CALLS", "DENIED", "IPS",
         "BINDING", "PROOF FAILURES"],
        [["*" if mark and incident.overlaps(t) else "", t.jti, t.fingerprint, t.family, t.sub, t.client_id, t.first,
          t.last, t.calls, t.denied, " ".join(sorted(t.ips)) + (" ..." if t.more_ips else ""),
          " ".join(sorted(t.bindings)), t.proof_failures] for t in tokens],
    )


def _actions_text(incident: Incident) -> list[str]:
    if not incident.actions:
        return []
    lines = ["", "Responder actions already recorded"]
    for action in incident.actions:
        lines.append(f"  {action['ts']} {action['action']} by {action['operator']}:"
                     f" {revoked_text(action)} ({action['reason']})")
    return lines
