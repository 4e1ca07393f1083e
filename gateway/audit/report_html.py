"""The incident report as one self-contained HTML file: inline CSS, an inline SVG timeline,
no scripts and no external resources, so it opens offline and can be attached to a ticket.

Every value from the audit trail (paths, user agents...) is attacker-influenced and is
escaped. Counts carry ids / data attributes so that tools (and the tests) can read them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from .incident import Incident, TokenSeen
from .record import rfc3339

_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)  # minutes
_MAX_BARS = 240
_COLOURS = {"allow": "#2e7d32", "deny": "#c62828"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#1b1b1b;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.target{color:#444;margin-top:0}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1.2em}dl.summary dt{font-weight:600}
dl.summary dd{margin:0}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.deny td{background:#fff5f5}tr.flag td{background:#fff8e1}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.warn{color:#b71c1c;font-weight:600}.muted{color:#777}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:-.1em}
svg text{font:11px system-ui,sans-serif;fill:#444}
footer{margin-top:3em;color:#777;font-size:12px}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _scopes(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) and value else "-"


def _table(headers: Sequence[str], rows: Iterable[str], table_id: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: Any, number: bool = False, mono: bool = False) -> str:
    cls = ' class="n"' if number else (' class="mono"' if mono else "")
    return f"<td{cls}>{_e(value)}</td>"


def timeline_svg(timeline: dict[str, Counter[str]], width: int = 1100, height: int = 240) -> str:
    """Calls per minute (or per wider bucket over a long span), stacked by decision."""
    if not timeline:
        return '<p class="muted">no calls</p>'
    minutes = {datetime.fromisoformat(m + ":00+00:00"): c for m, c in timeline.items() if len(m) == 16}
    if not minutes:
        return '<p class="muted">no calls with a usable time</p>'
    start, end = min(minutes), max(minutes)
    span = int((end - start).total_seconds() // 60) + 1
    bucket = next((b for b in _BUCKETS if span / b <= _MAX_BARS), _BUCKETS[-1])
    count = span // bucket + 1
    bars: list[Counter[str]] = [Counter() for _ in range(count)]
    for moment, counts in minutes.items():
        bars[int((moment - start).total_seconds() // 60) // bucket].update(counts)
    peak = max(sum(b.values()) for b in bars) or 1
    left, right, top, bottom = 44, 10, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    bar_w = plot_w / count
    parts = [
        f'<svg id="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="calls per {bucket} minute(s) by decision" '
        f'data-bucket-minutes="{bucket}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for index, counts in enumerate(bars):
        total = sum(counts.values())
        if not total:
            continue
        x = left + index * bar_w
        moment = start + timedelta(minutes=index * bucket)
        label = f"{moment:%Y-%m-%d %H:%M} UTC: {counts['allow']} allowed, {counts['deny']} denied"
        parts.append(f'<g data-minute="{moment:%Y-%m-%dT%H:%M}" data-allow="{counts["allow"]}" '
                     f'data-deny="{counts["deny"]}"><title>{_e(label)}</title>')
        y = float(top + plot_h)
        for decision in ("allow", "deny"):
            if counts[decision]:
                h = plot_h * counts[decision] / peak
                y -= h
                parts.append(f'<rect x="{x + 0.5:.2f}" y="{y:.2f}" width="{max(bar_w - 1, 1):.2f}" height="{h:.2f}" '
                             f'fill="{_COLOURS[decision]}"/>')
        parts.append("</g>")
    for fraction in (0.0, 0.5, 1.0):
        index = round((count - 1) * fraction)
        moment = start + timedelta(minutes=index * bucket)
        x = left + index * bar_w + bar_w / 2
        anchor = "start" if fraction == 0.0 else ("end" if fraction == 1.0 else "middle")
        parts.append(f'<text x="{x:.2f}" y="{height - 14}" text-anchor="{anchor}">{moment:%Y-%m-%d %H:%M}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 1}" text-anchor="end">'
                 f'calls per {bucket} minute{"s" if bucket > 1 else ""} (UTC)</text></svg>')
    return "".join(parts)


def _token_rows(incident: Incident, tokens: Sequence[TokenSeen], mark: bool) -> list[str]:
    rows = []
    for t in tokens:
        during = "yes" if mark and incident.overlaps(t) else ""
        rows.append(
            "<tr>" + (_td(during) if mark else "") + _td(t.jti, mono=True) + _td(t.fingerprint, mono=True)
            + _td(t.sid, mono=True) + _td(t.sub) + _td(t.client_id) + _td(t.first) + _td(t.last)
            + _td(t.calls, True) + _td(t.denied, True)
            + _td(" ".join(sorted(t.ips)) + (" ..." if t.more_ips else ""), mono=True) + "</tr>"
        )
    return rows


_TOKEN_HEADERS = ["jti", "fingerprint", "sid", "sub", "client", "first seen", "last seen", "calls", "denied",
                  "client IPs"]


def render_html(incident: Incident, generated: float | None = None) -> str:
    """The whole report document."""
    out: list[str] = [
        *_head(incident),
        *_summary(incident),
        *_timeline(incident),
        *_routes(incident),
        *_client_ips(incident),
        *_user_agents(incident),
        *_denials(incident),
        *_escalations(incident),
        *_tokens(incident),
        *_calls(incident),
        *_actions(incident),
        _footer(generated),
    ]
    return "\n".join(out)


def _head(incident: Incident) -> list[str]:
    described = _e(incident.target.describe())
    return [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>Incident report: {described}</title><style>{_CSS}</style></head><body>",
        "<h1>Incident report</h1>",
        f'<p class="target">{described}</p>',
    ]


def _summary(incident: Incident) -> list[str]:
    first, last = incident.first or {}, incident.last or {}
    out = [] if incident.calls else ['<p class="warn">No audit records of it were found in the input.</p>']
    out += [
        '<dl class="summary">',
        f'<dt>Subjects</dt><dd id="subjects">{_e(", ".join(incident.subjects) or "-")}</dd>',
        f'<dt>Families (sid)</dt><dd id="families" class="mono">{_e(", ".join(incident.families) or "-")}</dd>',
        f'<dt>Issuers</dt><dd>{_e(", ".join(incident.issuers) or "-")}</dd>',
        f'<dt>First use</dt><dd id="first-use">{_e(first.get("ts"))} from {_e(first.get("client_ip"))}</dd>',
        f'<dt>Last use</dt><dd id="last-use">{_e(last.get("ts"))} from {_e(last.get("client_ip"))}</dd>',
        f'<dt>Calls</dt><dd><span id="calls-total">{incident.calls}</span> (<span id="calls-allowed">'
        f'{incident.allowed}</span> allowed, <span id="calls-denied">{incident.denied}</span> denied)</dd>',
        f'<dt>Client IPs</dt><dd id="ip-count">{len(incident.ips)}</dd>',
        f'<dt>Scope-escalation attempts</dt><dd id="escalation-count">{incident.escalation_count}</dd>',
    ]
    if incident.suspicious:
        flagged = ", ".join(f"{r} \u00d7{n}" for r, n in incident.suspicious.most_common())
        out.append(f'<dt>Live detection</dt><dd class="warn" id="suspicious">{_e(flagged)}</dd>')
    out.append("</dl>")
    return out


def _timeline(incident: Incident) -> list[str]:
    return ["<h2>Timeline</h2>", '<p class="legend">calls by decision:'
            f'<span style="background:{_COLOURS["allow"]}"></span>allowed'
            f'<span style="background:{_COLOURS["deny"]}"></span>denied</p>', timeline_svg(incident.timeline)]


def _routes(incident: Incident) -> list[str]:
    statuses = incident.statuses()
    return ["<h2>Calls by route and status</h2>", _table(
        ["route", "calls", *[str(s) for s in statuses]],
        (f'<tr data-route="{_e(route)}">' + _td(route) + f'<td class="n calls">{total}</td>'
         + "".join(_td(by.get(s, ""), True) for s in statuses) + "</tr>"
         for route, total, by in incident.route_totals()),
        "routes",
    )]


def _client_ips(incident: Incident) -> list[str]:
    return ["<h2>Client IPs</h2>", _table(
        ["client IP", "first seen", "last seen", "calls", "allowed", "denied"],
        (f'<tr data-ip="{_e(ip)}">' + _td(ip, mono=True) + _td(s.first) + _td(s.last)
         + f'<td class="n calls">{s.calls}</td>' + _td(s.allowed, True) + _td(s.denied, True) + "</tr>"
         for ip, s in sorted(incident.ips.items(), key=lambda item: item[1].first)),
        "ips",
    )]


def _user_agents(incident: Incident) -> list[str]:
    return ["<h2>User agents</h2>", _table(
        ["user agent", "calls", "first seen", "last seen"],
        ("<tr>" + _td(ua, mono=True) + _td(s.calls, True) + _td(s.first) + _td(s.last) + "</tr>"
         for ua, s in sorted(incident.user_agents.items(), key=lambda item: -item[1].calls)),
        "user-agents",
    )]


def _denials(incident: Incident) -> list[str]:
    out = [f"<h2>Denials by reason ({incident.denied})</h2>"]
    if not incident.denial_counts:
        out.append("<p>none</p>")
    for reason, count in incident.denial_counts.most_common():
        listed = incident.denials.get(reason, [])
        out.append(f'<h3 data-reason="{_e(reason)}">{_e(reason)}: <span class="count">{count}</span></h3>')
        out.append(_table(
            ["time", "client IP", "method", "path", "status"],
            ("<tr>" + _td(c["ts"]) + _td(c["client_ip"], mono=True) + _td(c["method"]) + _td(c["path"], mono=True)
             + _td(c["status"], True) + "</tr>" for c in listed),
        ))
        if count > len(listed):
            out.append(f'<p class="muted">{count - len(listed)} more not listed</p>')
    return out


def _escalations(incident: Incident) -> list[str]:
    out = [f"<h2>Scope-escalation attempts ({incident.escalation_count})</h2>"]
    if not incident.escalations:
        out.append("<p>none</p>")
        return out
    out.append(_table(
        ["time", "client IP", "method", "path", "scopes asked for", "missing", "scopes held"],
        ('<tr class="escalation">' + _td(c["ts"]) + _td(c["client_ip"], mono=True) + _td(c["method"])
         + _td(c["path"], mono=True) + _td(_scopes(c["required_scopes"])) + f'<td class="missing">'
         f'{_e(_scopes(c["missing_scopes"]))}</td>' + _td(_scopes(c["scopes"])) + "</tr>"
         for c in incident.escalations),
        "escalations",
    ))
    return out


def _tokens(incident: Incident) -> list[str]:
    """The tokens of a subject or family, then the other tokens of the same family or subject."""
    target = incident.target
    out = []
    if not target.is_token:
        kind = "subject" if target.kind == "sub" else "family"
        out.append(f"<h2>Tokens of this {kind} ({len(incident.tokens)})</h2>")
        out.append(_table(_TOKEN_HEADERS, _token_rows(incident, list(incident.tokens.values()), False), "tokens"))
    if target.kind != "sub":
        title = "Other tokens of the same subject" if target.kind == "family" else \
            "Other tokens of the same family or subject"
        out.append(f"<h2>{title} ({len(incident.related) + incident.related_dropped})</h2>")
        if incident.related:
            out.append(_table(["used during", *_TOKEN_HEADERS], _token_rows(
                incident, sorted(incident.related.values(), key=lambda t: t.first), True), "related"))
        else:
            out.append("<p>none</p>")
    return out


def _calls(incident: Incident) -> list[str]:
    out = [f"<h2>Calls ({incident.calls})</h2>", _table(
        ["time", "client IP", "method", "path", "route", "status", "decision", "reason", "user agent"],
        (f'<tr class="{"flag" if c.get("suspicious") else c["decision"]}">' + _td(c["ts"])
         + _td(c["client_ip"], mono=True) + _td(c["method"]) + _td(c["path"], mono=True) + _td(c["route"])
         + _td(c["status"], True) + _td(c["decision"])
         + _td(c["reason"] + (f" (suspicious: {_scopes(c['suspicious'])})" if c.get("suspicious") else ""))
         + _td(c["user_agent"]) + "</tr>"
         for c in sorted(incident.listed, key=lambda c: c["ts"] or "")),
        "calls",
    )]
    if incident.calls > len(incident.listed):
        out.append(f'<p class="muted">{incident.calls - len(incident.listed)} more calls not listed:'
                   " use <code>gateway audit</code> for all of them</p>")
    return out


def _actions(incident: Incident) -> list[str]:
    if not incident.actions:
        return []
    return ["<h2>Responder actions already recorded</h2>", _table(
        ["time", "action", "operator", "revoked", "reason"],
        ("<tr>" + _td(a.get("ts")) + _td(a.get("action")) + _td(a.get("operator"))
         + _td(", ".join(f"{r.get('kind')} {r.get('value')}" for r in a.get("revoked") or []), mono=True)
         + _td(a.get("reason")) + "</tr>" for a in incident.actions),
        "actions",
    )]


def _footer(generated: float | None) -> str:
    when = rfc3339(generated) if generated is not None else rfc3339(datetime.now(UTC).timestamp())
    return (f"<footer>Generated {when} by <code>gateway incident</code> from the audit trail."
            " Tokens appear only as jti or SHA-256 fingerprint prefix.</footer></body></html>\n")
