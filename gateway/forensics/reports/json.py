"""``gateway incident --format json``: the incident report as one JSON document, for tools (offline).

The same facts as the text report (``forensics.incident.render_text``), with the same limits on what
is listed; counts say how much was left out. Values are the audit trail's, as JSON strings:
nothing is escaped for a terminal here, since a JSON reader never obeys them. A raw token
never appears: ``--token`` is a fingerprint by the time it reaches the ``Target``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..incident import Incident, Seen, TokenSeen

FORMAT_VERSION = 1  # bumped when a field changes meaning or goes away (new fields do not bump it)


def render_json(incident: Incident) -> str:
    """The incident as an indented JSON document (one trailing newline)."""
    return orjson.dumps(incident_document(incident), option=orjson.OPT_INDENT_2).decode() + "\n"


def incident_document(incident: Incident) -> dict[str, Any]:
    target = incident.target
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "target": {"kind": target.kind, "value": target.value, "from_token": target.from_token},
        "found": incident.calls > 0,
        "summary": _summary(incident),
        "routes": [{"route": route, "calls": calls, "statuses": {str(s): n for s, n in statuses.items()}}
                   for route, calls, statuses in incident.route_totals()],
        "client_ips": [{"ip": ip, **_seen(seen)} for ip, seen in sorted(incident.ips.items(),
                                                                        key=lambda item: item[1].first)],
        "user_agents": [{"user_agent": agent, **_seen(seen)}
                        for agent, seen in sorted(incident.user_agents.items(), key=lambda item: -item[1].calls)],
        "keys": [{"thumbprint": key, "bindings": sorted(seen.bindings), "proof_failures": seen.proof_failures,
                  **_seen(seen)} for key, seen in sorted(incident.keys.items(), key=lambda item: item[1].first)],
        "keys_not_listed": incident.keys_dropped,
        "denials": [{"reason": reason, "count": count, "calls": incident.denials.get(reason, [])}
                    for reason, count in incident.denial_counts.most_common()],
        "escalations": {"count": incident.escalation_count, "calls": incident.escalations},
        "related_tokens": [{**_token(token), "used_while_target_in_use": incident.overlaps(token)}
                           for token in sorted(incident.related.values(), key=lambda t: t.first)],
        "related_tokens_not_listed": incident.related_dropped,
        "calls": sorted(incident.listed, key=lambda call: call["ts"]),
        "calls_not_listed": incident.calls - len(incident.listed),
        "actions": incident.actions,
    }
    if not target.is_token:  # a subject, family or key: the tokens it covers
        document["tokens_title"] = target.tokens_title
        document["tokens"] = [_token(token) for token in incident.tokens.values()]
    return document


def _summary(incident: Incident) -> dict[str, Any]:
    return {
        "calls": incident.calls, "allowed": incident.allowed, "denied": incident.denied,
        "first_use": incident.first, "last_use": incident.last,
        "subjects": incident.subjects, "families": incident.families, "issuers": incident.issuers,
        "client_ip_count": len(incident.ips),
        "suspicious": dict(incident.suspicious.most_common()),
        "bindings": dict(incident.bindings.most_common()),
        "keys_presented": len(incident.keys),  # listed; calls with keys past the list: keys_not_listed
        "proof_failures": dict(incident.proof_failures.most_common()),
    }


def _seen(seen: Seen) -> dict[str, Any]:
    return {"first_seen": seen.first, "last_seen": seen.last, "calls": seen.calls, "allowed": seen.allowed,
            "denied": seen.denied}


def _token(token: TokenSeen) -> dict[str, Any]:
    return {"jti": token.jti, "fingerprint": token.fingerprint, "family": token.family,
            "sid": token.family, "sub": token.sub,  # "sid": the older name of "family", kept for a release
            "client_id": token.client_id, "iss": token.iss, "ips": sorted(token.ips), "more_ips": token.more_ips,
            "bindings": sorted(token.bindings), "proof_failures": token.proof_failures, **_seen(token)}
