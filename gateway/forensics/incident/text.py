"""``gateway incident``'s plain-text report, values escaped for the terminal (offline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..query import visible
from .model import Incident
from .seen import TokenSeen
from .wording import counts_text, reason_text, revoked_text, scopes_text


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
    lines += _summary_lines(incident)
    sections: tuple[Callable[[Incident], list[str]], ...] = (
        _routes_text, _ips_text, _agents_text, _keys_text, _denials_text, _escalations_text, _tokens_text, _calls_text,
    )
    for section in sections:
        lines += ["", *section(incident)]
    lines.extend(_actions_text(incident))
    return lines


def _summary_lines(incident: Incident) -> list[str]:
    first, last = incident.first or {}, incident.last or {}
    lines = [
        f"  subjects: {', '.join(incident.subjects) or '-'}   families: {', '.join(incident.families) or '-'}"
        f"   issuers: {', '.join(incident.issuers) or '-'}",
        f"  first use: {first.get('ts')} from {first.get('client_ip')} ({first.get('method')} {first.get('path')})",
        f"  last use:  {last.get('ts')} from {last.get('client_ip')} ({last.get('method')} {last.get('path')})",
        f"  calls: {incident.calls} ({incident.allowed} allowed, {incident.denied} denied)"
        f" from {len(incident.ips)} client IP{'' if len(incident.ips) == 1 else 's'}",
    ]
    if incident.suspicious:
        lines.append(f"  flagged by live detection: {counts_text(incident.suspicious)}")
    return lines + _binding_summary(incident)


def _routes_text(incident: Incident) -> list[str]:
    statuses = incident.statuses()
    return ["Calls by route and status", *_table(
        ["ROUTE", "CALLS", *[str(s) for s in statuses]],
        [[route, total, *[by.get(s, "") for s in statuses]] for route, total, by in incident.route_totals()],
    )]


def _ips_text(incident: Incident) -> list[str]:
    return ["Client IPs", *_table(
        ["IP", "FIRST SEEN", "LAST SEEN", "CALLS", "ALLOWED", "DENIED"],
        [[ip, s.first, s.last, s.calls, s.allowed, s.denied]
         for ip, s in sorted(incident.ips.items(), key=lambda item: item[1].first)],
    )]


def _agents_text(incident: Incident) -> list[str]:
    return ["User agents", *_table(
        ["USER AGENT", "CALLS", "FIRST SEEN", "LAST SEEN"],
        [[ua, s.calls, s.first, s.last] for ua, s in sorted(incident.user_agents.items(), key=lambda i: -i[1].calls)],
    )]


def _denials_text(incident: Incident) -> list[str]:
    lines = [f"Denials by reason ({incident.denied})"]
    if not incident.denial_counts:
        lines.append("  none")
    for reason, count in incident.denial_counts.most_common():
        lines.append(f"  {reason}: {count}")
        listed = incident.denials.get(reason, [])
        lines += _table(["TIME", "CLIENT IP", "METHOD", "PATH", "STATUS"],
                        [[c["ts"], c["client_ip"], c["method"], c["path"], c["status"]] for c in listed], "    ")
        if count > len(listed):
            lines.append(f"    ... {count - len(listed)} more not listed")
    return lines


def _escalations_text(incident: Incident) -> list[str]:
    return _listing(
        f"Scope-escalation attempts ({incident.escalation_count})",
        ["TIME", "CLIENT IP", "METHOD", "PATH", "ASKED FOR", "MISSING", "HELD"],
        [[c["ts"], c["client_ip"], c["method"], c["path"], scopes_text(c["required_scopes"]),
          scopes_text(c["missing_scopes"]), scopes_text(c["scopes"])] for c in incident.escalations],
        f"    ... {incident.escalation_count - len(incident.escalations)} more not listed"
        if incident.escalation_count > len(incident.escalations) else None,
    )


def _listing(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], more: str | None) -> list[str]:
    """A section: its title, then its table ("none" when empty) and how much was left out of it."""
    if not rows:
        return [title, "  none"]
    return [title, *_table(headers, rows), *([more] if more else [])]


def _calls_text(incident: Incident) -> list[str]:
    lines = [f"Calls ({incident.calls})", *_table(
        ["TIME", "CLIENT IP", "METHOD", "PATH", "ROUTE", "STATUS", "DECISION", "REASON", "BINDING"],
        [[c["ts"], c["client_ip"], c["method"], c["path"], c["route"], c["status"], c["decision"], reason_text(c),
          c["binding"]] for c in sorted(incident.listed, key=lambda c: c["ts"])],
    )]
    if incident.calls > len(incident.listed):
        lines.append(f"  ... {incident.calls - len(incident.listed)} more calls not listed here:"
                     f" use gateway audit for all of them")
    return lines


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
    return _listing(
        f"Keys presented ({incident.key_count}): DPoP key jkt or client certificate x5t#S256",
        ["KEY THUMBPRINT", "BINDING", "FIRST SEEN", "LAST SEEN", "CALLS", "ALLOWED", "PROOF FAILURES"],
        [[key, " ".join(sorted(k.bindings)), k.first, k.last, k.calls, k.allowed, k.proof_failures]
         for key, k in sorted(incident.keys.items(), key=lambda item: item[1].first)],
        f"  ... {incident.keys_dropped} more calls with keys not listed" if incident.keys_dropped else None,
    )


def _tokens_text(incident: Incident) -> list[str]:
    lines: list[str] = []
    if not incident.target.is_token:
        lines.append(f"{incident.target.tokens_title} ({len(incident.tokens)})")
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
