"""OpenTelemetry traces (docs/tracing.md): the switch, and the few hooks the rest of the gateway calls.

Tracing is off unless ``tracing.enabled`` is set, and then it costs nothing: OpenTelemetry's
tracing SDK and exporters are not even imported (``sdk.py`` is, by ``start`` only; redis-py 8
loads the metrics SDK by itself when installed), the listeners serve their handlers
unwrapped, and a request meets no more than an ``ACTIVE is None`` test at the places where
a span would start (the upstream call, the audit record) and a shared do-nothing context
manager around calls that leave the process anyway (introspection, JWKS, Redis).

One tracing setup per process, like OpenTelemetry's own providers: the first gateway that
starts with tracing on owns it until it stops (a worker process runs one gateway).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    from aiohttp import web

    from ..config import TracingConfig
    from ..runtime import Gateway
    from .sdk import RequestTracing

log = logging.getLogger("gateway.tracing")

ACTIVE: RequestTracing | None = None
"""The running tracing setup; None when tracing is off (the only thing the hot path reads)."""

_OWNER: object | None = None

TRACE_ID = re.compile(r"[0-9a-f]{32}")  # W3C trace-id: 16 bytes, lowercase hex, never all zeros
SPAN_ID = re.compile(r"[0-9a-f]{16}")
TRACE_URL_FIELDS = ("{trace_id}", "{span_id}")


class Call(Protocol):
    """What a client call site sees of its span: the headers that carry it, and the outcome."""

    @property
    def headers(self) -> Mapping[str, str]: ...  # traceparent/tracestate for the outgoing request

    def status(self, code: int) -> None: ...


class _NoCall:
    """The call of a process without tracing: no headers, nothing recorded, one shared instance."""

    headers: Mapping[str, str] = MappingProxyType({})

    def __enter__(self) -> _NoCall:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def status(self, code: int) -> None:
        return None


NO_CALL = _NoCall()


def http_call(method: str, url: str, *, issuer: str = "") -> AbstractContextManager[Call]:
    """A client span around an HTTP call of the gateway's own (introspection, JWKS, discovery).

    ``issuer`` is the authorization server called. Put ``call.headers`` on the request and report
    ``call.status(resp.status)``; an exception leaving the block marks the span failed with the
    exception's type only (messages may quote URLs or answers).
    """
    active = ACTIVE
    return NO_CALL if active is None else active.http_call(method, url, issuer)


def redis_call(operation: str, client: Any) -> AbstractContextManager[Call]:
    """A client span around one Redis round trip (``SET``, ``GET``...) made with ``client``."""
    active = ACTIVE
    return NO_CALL if active is None else active.redis_call(operation, client)


Handler = Callable[["web.BaseRequest"], Awaitable["web.StreamResponse"]]


def server_handler(handler: Handler, gateway: Gateway, mode: str) -> Handler:
    """``handler`` as a listener serves it: itself when tracing is off, else inside a server span."""
    active = ACTIVE
    return handler if active is None else active.server_handler(handler, gateway, mode)


def start(config: TracingConfig, owner: object) -> bool:
    """Set tracing up for this process when ``config`` turns it on; True when ``owner`` now owns it.

    Raises ``ConfigError`` for settings (or ``OTEL_*`` variables) that cannot work.
    """
    global ACTIVE, _OWNER
    if not config.enabled or ACTIVE is not None:
        if config.enabled:
            log.warning("tracing is already set up in this process by another gateway: this one shares it")
        return False
    from . import sdk

    tracing = sdk.RequestTracing.from_config(config)
    if tracing is None:  # OTEL_SDK_DISABLED=true
        return False
    ACTIVE, _OWNER = tracing, owner
    from .. import logs

    logs.CONTEXT_FIELDS = tracing.log_fields
    return True


async def stop(owner: object) -> None:
    """End tracing when ``owner`` set it up: spans still queued are sent (bounded wait)."""
    global ACTIVE, _OWNER
    tracing = ACTIVE
    if tracing is None or _OWNER is not owner:
        return
    from .. import logs

    ACTIVE, _OWNER = None, None
    logs.CONTEXT_FIELDS = None
    await tracing.aclose()


# --- configuration values ------------------------------------------------------------------

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an RFC 9110 token


def check_trace_url_template(value: Any) -> str:
    """``https://tempo.example/trace/{trace_id}``: an absolute http(s) URL naming ``{trace_id}``."""
    text = str(value)
    if not re.match(r"^https?://[^/\s?#{}]+", text):
        raise ValueError(f"{text!r} is not an absolute http(s) URL")
    if "{trace_id}" not in text:
        raise ValueError("the template must contain {trace_id}")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("the template must not contain spaces or control characters")
    return text


def check_export_headers(value: Any) -> dict[str, str]:
    """Headers sent with every export (an API key): names are header tokens, values single lines."""
    if not isinstance(value, dict):
        raise ValueError("headers is a mapping of header names to values")
    headers: dict[str, str] = {}
    for name, item in value.items():
        if not _HEADER_NAME.match(str(name)):
            raise ValueError(f"{name!r} is not a valid header name")
        text = str(item)
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"the value of {name} must be one line")
        headers[str(name).lower()] = text  # gRPC metadata keys must be lowercase
    return headers


# --- the audit trail's links ---------------------------------------------------------------


def trace_link(template: str | None, trace_id: Any, span_id: Any = None) -> str | None:
    """The trace viewer's URL for an audit record's ids, or None.

    The template is the operator's (checked when loaded); the ids come from the audit trail and
    are hostile until proven otherwise: only a well-formed W3C trace-id (and span-id) is put in,
    and URL-escaped even so. A record without one gets no link.
    """
    if template is None or not isinstance(trace_id, str) or not TRACE_ID.fullmatch(trace_id):
        return None
    if trace_id == "0" * 32:
        return None
    span = span_id if isinstance(span_id, str) and SPAN_ID.fullmatch(span_id) else ""
    if "{span_id}" in template and not span:
        return None
    return template.replace("{trace_id}", quote(trace_id, safe="")).replace("{span_id}", quote(span, safe=""))
