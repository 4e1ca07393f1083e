"""Denials turned into responses in one place: RFC 6750 challenges and small JSON bodies."""

from __future__ import annotations

import orjson
from aiohttp import web

from .decision import Decision
from .reasons import Reason

_NOT_ABOUT_TOKENS = frozenset({Reason.BAD_PATH, Reason.BAD_HOST})


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(decision: Decision, realm: str) -> str | None:
    """The ``WWW-Authenticate`` value for a denial, or None when no challenge applies."""
    reason = decision.reason
    if reason.status not in (400, 401, 403) or reason in _NOT_ABOUT_TOKENS:
        return None
    params = [f"realm={_quote(realm)}"]
    if reason.error:  # RFC 6750 3.1: no error code when the request carried no token
        params.append(f"error={_quote(reason.error)}")
        params.append(f"error_description={_quote(reason.message)}")
    if reason is Reason.INSUFFICIENT_SCOPE and decision.route is not None:
        params.append(f"scope={_quote(' '.join(sorted(decision.missing_scopes)))}")
    return "Bearer " + ", ".join(params)


def denial_headers(decision: Decision, realm: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    value = challenge(decision, realm)
    if value is not None:
        headers["WWW-Authenticate"] = value
    if decision.reason is Reason.METHOD_NOT_ALLOWED:
        headers["Allow"] = ", ".join(sorted(decision.allowed_methods))
    if decision.reason.status == 503:
        headers["Retry-After"] = "5"
    return headers


def denial_body(reason: Reason, request_id: str) -> bytes:
    body: dict[str, str] = {"error": reason.error or reason.value, "reason": reason.value, "request_id": request_id}
    if reason.message:
        body["error_description"] = reason.message
    return orjson.dumps(body)


def denial_response(decision: Decision, realm: str, request_id: str) -> web.Response:
    """The response a client sees for a denied request; never internals."""
    headers = denial_headers(decision, realm)
    headers["X-Request-Id"] = request_id
    return web.Response(
        status=decision.reason.status, body=denial_body(decision.reason, request_id), headers=headers
    )
