"""The audit record: one JSON line per request, allowed or denied.

Identity comes from the validated token; the token itself never appears, only its
SHA-256 fingerprint prefix (``token_fingerprint``), which is enough to search by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..decision import Decision
from ..policy import required_scopes
from ..tokens.token import short_fingerprint

_SECOND: tuple[int, str] = (0, "1970-01-01T00:00:00")  # the last whole second formatted, reused within it


def rfc3339(timestamp: float) -> str:
    """``2026-01-31T12:00:00.123Z``, as ``datetime.fromtimestamp(timestamp, UTC)`` rounds it.

    One call per request: the date-time of the current second is formatted once.
    """
    global _SECOND
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)  # half-even on the same double, as datetime does
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    second = int(whole)
    cached = _SECOND
    if cached[0] != second:
        cached = _SECOND = (second, datetime.fromtimestamp(second, UTC).replace(tzinfo=None).isoformat())
    return f"{cached[1]}.{micros // 1000:03d}Z"


@dataclass(slots=True)
class Exchange:
    """What happened to one request on the wire, filled in as it goes through the gateway."""

    started: float  # wall clock, for ts
    started_mono: float
    request_id: str
    client_ip: str
    method: str
    host: str
    raw_path: str
    user_agent: str
    mode: str = "proxy"
    status: int = 0
    upstream_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0


def audit_record(
    exchange: Exchange, decision: Decision, duration_ms: float, family_claim: str = "sid",
    suspicious: list[str] | None = None,
) -> dict[str, Any]:
    """The audit record of one finished request."""
    token, route = decision.token, decision.route
    claims = token.claims if token is not None else {}
    family = claims.get(family_claim)
    record: dict[str, Any] = {
        "type": "audit",
        "ts": rfc3339(exchange.started),
        "request_id": exchange.request_id,
        "mode": exchange.mode,
        "client_ip": exchange.client_ip,
        "method": exchange.method,
        "host": exchange.host,
        # a refused raw target is logged without its query, which may hold an access_token
        "path": decision.target.path if decision.target is not None else exchange.raw_path.partition("?")[0][:512],
        "route": route.name if route is not None else None,
        "upstream": route.upstream if route is not None and exchange.mode == "proxy" else None,
        "status": exchange.status,
        "decision": decision.reason.decision,
        "reason": decision.reason.value,
        "sub": token.subject if token else None,
        "client_id": token.client_id if token else None,
        "iss": token.issuer if token else None,
        "jti": token.jti if token else None,
        "sid": family if isinstance(family, str) else None,
        "token_fingerprint": short_fingerprint(decision.token_fingerprint) if decision.token_fingerprint else None,
        "scopes": sorted(token.scopes) if token else [],
        "required_scopes": required_scopes(route) if route is not None else [],
        "missing_scopes": sorted(decision.missing_scopes),
        "user_agent": exchange.user_agent[:512],
        "duration_ms": round(duration_ms, 3),
        "upstream_ms": round(exchange.upstream_ms, 3) if exchange.upstream_ms is not None else None,
        "bytes_in": exchange.bytes_in,
        "bytes_out": exchange.bytes_out,
    }
    if suspicious:
        record["suspicious"] = suspicious
    return record
