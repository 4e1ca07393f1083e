"""The audit record: one JSON line per request, allowed or denied.

Identity comes from the validated token; the token itself never appears, only its
SHA-256 fingerprint prefix (``token_fingerprint``), which is enough to search by.

Every text that enters a record is made serialisable and bounded here, where it is
recorded, so the writer never meets a value it cannot write: bytes that are not UTF-8
(aiohttp hands header bytes over as lone surrogates) are written as ``\\xNN``, other lone
surrogates (a JSON ``\\ud800`` in a claim) as ``\\uNNNN``, and a text longer than its
field's limit (``LIMITS``) is cut. The names of the fields so altered are listed in
``escaped`` and ``truncated``, present only when not empty: such a value is not the one
received, and must not be used as if it were (``gateway incident --revoke`` does not
revoke by it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..decision import Decision
from ..policy import required_scopes
from ..reasons import Reason
from ..routing import Route
from ..tokens.token import ValidatedToken, short_fingerprint
from .fields import rfc3339

# the longest text (in characters, after escaping) each field keeps; docs/incident-response.md lists them
LIMITS: dict[str, int] = {
    "request_id": 128, "client_ip": 64, "method": 32, "host": 256, "path": 2048, "route": 256, "upstream": 256,
    "sub": 256, "client_id": 256, "iss": 512, "jti": 256, "family": 256, "sid": 256, "user_agent": 512,
    "binding": 16, "key_thumbprint": 128, "rule": 256, "detail": 256,
}
SCOPE_LIMIT = 256  # characters of one scope in scopes, required_scopes, missing_scopes
SCOPES_LIMIT = 100  # scopes listed per field; more are left out and the field is named in truncated
_SURROGATE = re.compile("[\ud800-\udfff]")

def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF is how surrogateescape carries one byte that was not UTF-8
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape_invalid(text: str) -> str:
    """``text`` with every lone surrogate written out (``\\xff`` for a byte that was not UTF-8)."""
    return _SURROGATE.sub(_escape_surrogate, text)


class _Altered:
    """Collects the names of the fields whose text had to be escaped or cut."""

    __slots__ = ("escaped", "truncated")

    def __init__(self) -> None:
        self.escaped: list[str] = []
        self.truncated: list[str] = []

    def text(self, name: str, value: str | None, limit: int | None = None) -> str | None:
        """``value`` made serialisable and cut to the field's limit; None stays None."""
        if value is None:
            return None
        if type(value) is not str:  # a claim of another type: recorded as text, never as an object
            value = str(value)
        limit = LIMITS[name] if limit is None else limit
        if len(value) <= limit and value.isascii():  # the common case: nothing to do
            return value
        if _SURROGATE.search(value):
            value = escape_invalid(value)
            self.escaped.append(name)
        if len(value) > limit:
            value = value[:limit]
            self.truncated.append(name)
        return value

    def texts(self, name: str, values: list[str]) -> list[str]:
        """A list of scopes, each made serialisable and bounded, at most ``SCOPES_LIMIT`` of them."""
        if len(values) <= SCOPES_LIMIT and all(len(v) <= SCOPE_LIMIT and v.isascii() for v in values):
            return values
        items = _Altered()
        out = [items.text(name, v, SCOPE_LIMIT) or "" for v in values[:SCOPES_LIMIT]]
        if items.escaped:
            self.escaped.append(name)
        if items.truncated or len(values) > SCOPES_LIMIT:
            self.truncated.append(name)
        return out


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
    # a WebSocket or long stream (gateway/websocket/): how it ended; the record is written when it closes
    connection: dict[str, Any] | None = None
    trace_id: str | None = None  # the request's trace and server span, while tracing is on (tracing/)
    span_id: str | None = None


def _token_fields(token: ValidatedToken, family_claim: str) -> tuple[Any, ...] | None:
    """sub, client_id, iss, jti, family, sid and scopes of the record, as ``audit_record`` writes them,
    when none had to be escaped or cut (else None: the record is then made field by field, so that
    ``escaped`` and ``truncated`` list the names in their order). Kept on the token: a hot token's
    record costs no claim lookups, sorting or text checks."""
    memo = token.audit_memo
    if memo is not None and memo[0] == family_claim:
        return memo[1]
    text = (altered := _Altered()).text
    family = token.claims.get(family_claim)
    family_text = text("family", family) if isinstance(family, str) else None
    fields: tuple[Any, ...] | None = (
        text("sub", token.subject), text("client_id", token.client_id), text("iss", token.issuer),
        text("jti", token.jti), family_text, text("sid", family) if isinstance(family, str) else None,
        altered.texts("scopes", sorted(token.scopes)),
    )
    if altered.escaped or altered.truncated:
        fields = None
    object.__setattr__(token, "audit_memo", (family_claim, fields))  # a cache on a frozen value
    return fields


def _route_fields(route: Route) -> tuple[str | None, str | None, list[str]]:
    """The route's name, upstream and required scopes as recorded (worked out once per compiled route)."""
    found = _ROUTES.get(id(route))
    if found is not None and found[0] is route:
        return found[1]
    altered = _Altered()
    fields = (altered.text("route", route.name), altered.text("upstream", route.upstream),
              altered.texts("required_scopes", required_scopes(route)))
    if altered.escaped or altered.truncated:  # never kept: the record names them in order each time
        return None, None, []
    if len(_ROUTES) >= 4096:
        _ROUTES.clear()
    _ROUTES[id(route)] = (route, fields)
    return fields


_ROUTES: dict[int, tuple[Route, tuple[str | None, str | None, list[str]]]] = {}  # by id, the route kept (bounded)


def audit_record(
    exchange: Exchange, decision: Decision, duration_ms: float, family_claim: str = "sid",
    suspicious: list[str] | None = None,
) -> dict[str, Any]:
    """The audit record of one finished request; every text in it is serialisable and bounded."""
    token, route = decision.token, decision.route
    if route is not None:
        token_fields = _token_fields(token, family_claim) if token is not None else (
            None, None, None, None, None, None, [])  # a public route (or a refusal before a token was valid)
        if token_fields is not None:
            route_fields = _route_fields(route)
            if route_fields[0] is not None:
                return _fast_record(exchange, decision, duration_ms, token_fields, route_fields, suspicious)
    return _record(exchange, decision, duration_ms, family_claim, suspicious)


def _fast_record(
    exchange: Exchange, decision: Decision, duration_ms: float, token_fields: tuple[Any, ...],
    route_fields: tuple[str | None, str | None, list[str]], suspicious: list[str] | None,
) -> dict[str, Any]:
    """``_record`` for a request on a route, its fields and the token's (if any) worked out already (and clean)."""
    text = (altered := _Altered()).text
    sub, client_id, iss, jti, family, sid, scopes = token_fields
    fp = decision.token_fingerprint
    # the exchange's texts (always str): _Altered.text's common case checked here, the call only
    # when one has to be escaped or cut (in field order, so escaped/truncated list them as before)
    request_id, client_ip, method, host = exchange.request_id, exchange.client_ip, exchange.method, exchange.host
    path = decision.target.path if decision.target is not None else exchange.raw_path.partition("?")[0]
    user_agent = exchange.user_agent
    outcome, reason = _REASON_FIELDS[decision.reason]
    binding, key_thumbprint = decision.binding, decision.key_thumbprint
    record: dict[str, Any] = {
        "type": "audit",
        "ts": rfc3339(exchange.started),
        "request_id": request_id if len(request_id) <= _REQUEST_ID_LIMIT and request_id.isascii()
        else text("request_id", request_id),
        "mode": exchange.mode,
        "client_ip": client_ip if len(client_ip) <= _CLIENT_IP_LIMIT and client_ip.isascii()
        else text("client_ip", client_ip),
        "method": method if len(method) <= _METHOD_LIMIT and method.isascii() else text("method", method),
        "host": host if len(host) <= _HOST_LIMIT and host.isascii() else text("host", host),
        "path": path if len(path) <= _PATH_LIMIT and path.isascii() else text("path", path),
        "route": route_fields[0],
        "upstream": route_fields[1] if exchange.mode == "proxy" else None,
        "status": exchange.status,
        "decision": outcome,
        "reason": reason,
        "sub": sub,
        "client_id": client_id,
        "iss": iss,
        "jti": jti,
        "family": family,
        "sid": sid,
        "token_fingerprint": short_fingerprint(fp) if fp else None,
        "binding": (binding if len(binding) <= _BINDING_LIMIT and binding.isascii() else text("binding", binding))
        if fp else None,
        "key_thumbprint": text("key_thumbprint", key_thumbprint) if fp and key_thumbprint is not None else None,
        "scopes": scopes,
        "required_scopes": route_fields[2],
        "missing_scopes": altered.texts("missing_scopes", sorted(decision.missing_scopes))
        if decision.missing_scopes else [],
        "user_agent": user_agent if len(user_agent) <= _USER_AGENT_LIMIT and user_agent.isascii()
        else text("user_agent", user_agent),
        "duration_ms": round(duration_ms, 3),
        "upstream_ms": round(exchange.upstream_ms, 3) if exchange.upstream_ms is not None else None,
        "bytes_in": exchange.bytes_in,
        "bytes_out": exchange.bytes_out,
    }
    return _finish(record, exchange, decision, altered, suspicious)


_REQUEST_ID_LIMIT, _CLIENT_IP_LIMIT, _METHOD_LIMIT = LIMITS["request_id"], LIMITS["client_ip"], LIMITS["method"]
_HOST_LIMIT, _PATH_LIMIT, _USER_AGENT_LIMIT = LIMITS["host"], LIMITS["path"], LIMITS["user_agent"]
_BINDING_LIMIT = LIMITS["binding"]
# a reason's "decision" and "reason" fields, as the record spells them (no enum and property lookups per record)
_REASON_FIELDS: dict[Reason, tuple[str, str]] = {r: (r.decision, r.value) for r in Reason}


def _record(
    exchange: Exchange, decision: Decision, duration_ms: float, family_claim: str,
    suspicious: list[str] | None,
) -> dict[str, Any]:
    token, route = decision.token, decision.route
    claims = token.claims if token is not None else {}
    family = claims.get(family_claim)
    text = (altered := _Altered()).text
    record: dict[str, Any] = {
        "type": "audit",
        "ts": rfc3339(exchange.started),
        "request_id": text("request_id", exchange.request_id),
        "mode": exchange.mode,
        "client_ip": text("client_ip", exchange.client_ip),
        "method": text("method", exchange.method),
        "host": text("host", exchange.host),
        # a refused raw target is logged without its query, which may hold an access_token
        "path": text("path", decision.target.path if decision.target is not None
                     else exchange.raw_path.partition("?")[0]),
        "route": text("route", route.name) if route is not None else None,
        "upstream": text("upstream", route.upstream) if route is not None and exchange.mode == "proxy" else None,
        "status": exchange.status,
        "decision": decision.reason.decision,
        "reason": decision.reason.value,
        "sub": text("sub", token.subject) if token else None,
        "client_id": text("client_id", token.client_id) if token else None,
        "iss": text("iss", token.issuer) if token else None,
        "jti": text("jti", token.jti) if token else None,
        # the refresh-token family / session, read from revocation.family_claim whatever its name;
        # "sid" repeats it for readers of older records and goes in a later release (CHANGELOG)
        "family": text("family", family) if isinstance(family, str) else None,
        "sid": text("sid", family) if isinstance(family, str) else None,
        "token_fingerprint": short_fingerprint(decision.token_fingerprint) if decision.token_fingerprint else None,
        # how the token was bound on this request (none | dpop | mtls), for requests that carried one
        "binding": text("binding", decision.binding) if decision.token_fingerprint else None,
        "key_thumbprint": text("key_thumbprint", decision.key_thumbprint) if decision.token_fingerprint else None,
        "scopes": altered.texts("scopes", sorted(token.scopes)) if token else [],
        "required_scopes": altered.texts("required_scopes", required_scopes(route)) if route is not None else [],
        "missing_scopes": altered.texts("missing_scopes", sorted(decision.missing_scopes)),
        "user_agent": text("user_agent", exchange.user_agent),
        "duration_ms": round(duration_ms, 3),
        "upstream_ms": round(exchange.upstream_ms, 3) if exchange.upstream_ms is not None else None,
        "bytes_in": exchange.bytes_in,
        "bytes_out": exchange.bytes_out,
    }
    return _finish(record, exchange, decision, altered, suspicious)


def _finish(
    record: dict[str, Any], exchange: Exchange, decision: Decision, altered: _Altered, suspicious: list[str] | None,
) -> dict[str, Any]:
    """The fields a record carries only when they have a value, then what had to be escaped or cut."""
    text = altered.text
    if decision.failed_rule is not None:
        record["rule"] = text("rule", decision.failed_rule)
    if decision.detail:  # a fixed sentence of the gateway's: which proof check failed, the rule's cause...
        record["detail"] = text("detail", decision.detail)
    if exchange.connection is not None:
        record["connection"] = exchange.connection
    if exchange.trace_id is not None:  # W3C hex ids the gateway made itself: nothing to escape
        record["trace_id"] = exchange.trace_id
        record["span_id"] = exchange.span_id
    if suspicious:
        record["suspicious"] = suspicious
    if altered.escaped:
        record["escaped"] = altered.escaped
    if altered.truncated:
        record["truncated"] = altered.truncated
    return record

