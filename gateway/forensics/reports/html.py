"""The incident report as one self-contained HTML file: inline CSS, an inline SVG timeline,
no scripts and no external resources, so it opens offline and can be attached to a ticket (offline).

Every value from the audit trail (paths, user agents, even reasons and decisions) is
attacker-influenced. The page is rendered by Jinja2 with autoescaping on for every
expression (``templates/report.html.j2``); the template puts values only in element
text and in double-quoted attributes, never in a URL, a script or a style, and classes
are chosen from fixed words, never copied from a record; the one URL, a call's trace link, is
the operator's ``trace_url_template`` filled with a trace id proven to be 32 hex digits
(``tracing.trace_link``), URL-escaped and then attribute-escaped. Characters a reader cannot see
(control characters, bidi overrides) are shown escaped (``query.visible``). A Content
Security Policy forbids scripts and remote loads should anything slip through. Counts
carry ids / data attributes so that tools (and the tests) can read them.

This module turns an ``Incident`` into plain values (texts and numbers) for the template.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from ...audit.fields import rfc3339
from ...tracing import trace_link
from ..incident import Incident, TokenSeen
from ..incident.wording import reason_text, revoked_text, scopes_text
from ..query import visible

_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)  # minutes
_MAX_BARS = 240
COLOURS = {"allow": "#2e7d32", "deny": "#c62828"}


def _shown(value: Any) -> Any:
    """Jinja's ``finalize``: every ``{{ }}`` value passes here before it is escaped."""
    if value is None:
        return ""
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible(value)
    return value


_ENV = Environment(
    loader=PackageLoader("gateway.forensics.reports", "templates"), autoescape=True, undefined=StrictUndefined,
    finalize=_shown, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)


# --- the timeline ----------------------------------------------------------------------------


@dataclass
class Bar:
    minute: str
    allow: int
    deny: int
    label: str
    rects: list[tuple[str, str, str, str, str]]  # x, y, width, height, colour


@dataclass
class Timeline:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    bucket: int
    peak: int
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[str, str, str]] = field(default_factory=list)  # x, anchor, text


def _minutes(timeline: dict[str, Counter[str]]) -> dict[datetime, Counter[str]]:
    """The usable minutes of the timeline (an audit ``ts`` that is not a time is left out)."""
    out: dict[datetime, Counter[str]] = {}
    for minute, counts in timeline.items():
        try:
            moment = datetime.fromisoformat(minute + ":00+00:00") if len(minute) == 16 else None
        except ValueError:
            moment = None
        if moment is not None:
            out.setdefault(moment, Counter()).update(counts)
    return out


def timeline_of(timeline: dict[str, Counter[str]], width: int = 1100, height: int = 240) -> Timeline | None:
    """Calls per minute (or per wider bucket over a long span), stacked by decision."""
    minutes = _minutes(timeline)
    if not minutes:
        return None
    start, end = min(minutes), max(minutes)
    span = int((end - start).total_seconds() // 60) + 1
    bucket = next((b for b in _BUCKETS if span / b <= _MAX_BARS), math.ceil(span / _MAX_BARS))
    count = span // bucket + 1
    sums: list[Counter[str]] = [Counter() for _ in range(count)]
    for moment, counts in minutes.items():
        sums[int((moment - start).total_seconds() // 60) // bucket].update(counts)
    peak = max(sum(b.values()) for b in sums) or 1
    left, right, top, bottom = 44, 10, 12, 34
    chart = Timeline(width, height, left, top, width - left - right, height - top - bottom, bucket, peak)
    bar_w = chart.plot_w / count
    for index, counts in enumerate(sums):
        if sum(counts.values()):
            chart.bars.append(_bar(chart, start + timedelta(minutes=index * bucket), left + index * bar_w, bar_w,
                                   counts))
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        index = round((count - 1) * fraction)
        moment = start + timedelta(minutes=index * bucket)
        chart.ticks.append((f"{left + index * bar_w + bar_w / 2:.2f}", anchor, f"{moment:%Y-%m-%d %H:%M}"))
    return chart


def _bar(chart: Timeline, moment: datetime, x: float, bar_w: float, counts: Counter[str]) -> Bar:
    rects = []
    y = float(chart.top + chart.plot_h)
    for decision in ("allow", "deny"):
        if counts[decision]:
            h = chart.plot_h * counts[decision] / chart.peak
            y -= h
            rects.append((f"{x + 0.5:.2f}", f"{y:.2f}", f"{max(bar_w - 1, 1):.2f}", f"{h:.2f}", COLOURS[decision]))
    label = f"{moment:%Y-%m-%d %H:%M} UTC: {counts['allow']} allowed, {counts['deny']} denied"
    return Bar(f"{moment:%Y-%m-%dT%H:%M}", counts["allow"], counts["deny"], label, rects)


# --- rows ------------------------------------------------------------------------------------


def row_class(call: dict[str, Any]) -> str:
    """A call's row class: one of four fixed words, whatever the record says."""
    if call.get("suspicious"):
        return "flag"
    decision = call.get("decision")
    return decision if decision in ("allow", "deny") else "other"


def _token_row(incident: Incident, token: TokenSeen, mark: bool) -> dict[str, Any]:
    return {
        "during": "yes" if mark and incident.overlaps(token) else "", "jti": token.jti,
        "fingerprint": token.fingerprint, "family": token.family, "sub": token.sub, "client_id": token.client_id,
        "first": token.first, "last": token.last, "calls": token.calls, "denied": token.denied,
        "ips": " ".join(sorted(token.ips)) + (" ..." if token.more_ips else ""),
        "binding": " ".join(sorted(token.bindings)), "proof_failures": token.proof_failures,
    }


def _calls(incident: Incident, trace_url_template: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for call in sorted(incident.listed, key=lambda c: c["ts"]):
        rows.append({**call, "row_class": row_class(call), "reason_text": reason_text(call),
                     "key_short": _short(call["key_thumbprint"]), "trace_short": _short(call["trace_id"]),
                     # only a well-formed trace id becomes a link (the record may say anything)
                     "trace_url": trace_link(trace_url_template, call["trace_id"], call["span_id"])})
    return rows


def _escalations(incident: Incident) -> Iterable[dict[str, Any]]:
    for call in incident.escalations:
        yield {**call, "asked": scopes_text(call["required_scopes"]), "missing": scopes_text(call["missing_scopes"]),
               "held": scopes_text(call["scopes"])}


def _token_sections(incident: Incident) -> list[dict[str, Any]]:
    """The tokens of a subject or family, then the other tokens of the same family or subject."""
    target, sections = incident.target, []
    if not target.is_token:
        sections.append({"title": f"{target.tokens_title} ({len(incident.tokens)})", "id": "tokens", "mark": False,
                         "rows": [_token_row(incident, t, False) for t in incident.tokens.values()]})
    if target.kind != "sub":
        title = "Other tokens of the same subject" if target.kind == "family" else \
            "Other tokens of the same family or subject"
        related = sorted(incident.related.values(), key=lambda t: t.first)
        sections.append({"title": f"{title} ({len(incident.related) + incident.related_dropped})", "id": "related",
                         "mark": True, "rows": [_token_row(incident, t, True) for t in related]})
    return sections


def _short(thumbprint: str | None) -> str | None:
    """A key thumbprint's first characters: enough to find it in the keys table, narrow enough for a column."""
    return thumbprint if thumbprint is None or len(thumbprint) <= 13 else thumbprint[:12] + "\u2026"


def _keys(incident: Incident) -> list[dict[str, Any]]:
    """The keys presented, first seen first, as texts and numbers for the template."""
    return [{"key": key, "binding": " ".join(sorted(k.bindings)), "first": k.first, "last": k.last, "calls": k.calls,
             "allowed": k.allowed, "proof_failures": k.proof_failures}
            for key, k in sorted(incident.keys.items(), key=lambda item: item[1].first)]


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} \u00d7{n}" for name, n in counts.most_common())


def _summary(incident: Incident) -> dict[str, Any]:
    first, last = incident.first or {}, incident.last or {}
    flagged = _counts(incident.suspicious)
    return {
        "subjects": ", ".join(incident.subjects) or "-", "families": ", ".join(incident.families) or "-",
        "issuers": ", ".join(incident.issuers) or "-",
        "first_use": f"{first.get('ts') or ''} from {first.get('client_ip') or ''}",
        "last_use": f"{last.get('ts') or ''} from {last.get('client_ip') or ''}",
        "flagged": flagged,
        "bindings": _counts(incident.bindings) or "-",
        "proof_failures": _counts(incident.proof_failures),
    }


def render_html(incident: Incident, generated: float | None = None, trace_url_template: str | None = None) -> str:
    """The whole report document; with ``trace_url_template``, each call links its trace."""
    statuses = incident.statuses()
    calls = _calls(incident, trace_url_template)
    when = generated if generated is not None else datetime.now(UTC).timestamp()
    return _ENV.get_template("report.html.j2").render(
        incident=incident,
        target=incident.target.describe(),
        summary=_summary(incident),
        colours=COLOURS,
        timeline=timeline_of(incident.timeline) if incident.timeline else None,
        statuses=statuses,
        routes=[(route, total, [by.get(s, "") for s in statuses]) for route, total, by in incident.route_totals()],
        ips=sorted(incident.ips.items(), key=lambda item: item[1].first),
        user_agents=sorted(incident.user_agents.items(), key=lambda item: -item[1].calls),
        denials=[(reason, count, incident.denials.get(reason, []))
                 for reason, count in incident.denial_counts.most_common()],
        escalations=list(_escalations(incident)),
        token_sections=_token_sections(incident),
        keys=_keys(incident),
        calls=calls,
        trace_column=any(c["trace_id"] for c in calls),
        actions=[{**a, "revoked_text": revoked_text(a)} for a in incident.actions],
        generated=rfc3339(when),
    )
