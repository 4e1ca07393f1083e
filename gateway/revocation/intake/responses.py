"""The JSON answers of the admin revocation endpoints (per request): errors with their challenges."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from ...reasons import Reason

log = logging.getLogger("gateway.revocation.intake")


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer that no cache keeps."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def unauthorized(error: str = "invalid_token") -> web.Response:
    """401 with the admin port's Bearer challenge (no error code when no credential was given)."""
    challenge = f'Bearer realm="tokengate-admin", error="{error}"' if error else 'Bearer realm="tokengate-admin"'
    return json_response(401, {"error": error or "unauthorized", "error_description": "admin credentials required"},
                         {"WWW-Authenticate": challenge})


def unavailable(exc: Exception) -> web.Response:
    """503: the revocation could not be written (the store is away)."""
    log.warning("revocation write failed", extra={"error": str(exc)[:300]})
    return json_response(503, {"error": "temporarily_unavailable",
                               "error_description": "the revocation store is unavailable"}, {"Retry-After": "5"})


def unavailable_reason(reason: Reason) -> web.Response:
    """503 when a dependency the check needs is down (JWKS, introspection, a stale revocation list)."""
    return json_response(503, {"error": "temporarily_unavailable", "error_description": reason.message},
                         {"Retry-After": "5"})


def refused(reason: Reason) -> web.Response:
    """An admin token refused for ``reason``: 401, or 503 when the reason is a dependency being down."""
    return unavailable_reason(reason) if reason.status == 503 else unauthorized()


def forbidden(scope: str, description: str) -> web.Response:
    """403: the credential is valid but may not do this."""
    return json_response(403, {"error": "insufficient_scope", "error_description": description},
                         {"WWW-Authenticate": f'Bearer realm="tokengate-admin", error="insufficient_scope", '
                                             f'scope="{scope}"'})
