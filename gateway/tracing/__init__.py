"""OpenTelemetry traces (docs/tracing.md): the switch, and the few hooks the rest of the gateway calls.

Tracing is off unless ``tracing.enabled`` is set, and then it costs nothing: OpenTelemetry's
tracing SDK and exporters are not even imported (``sdk`` is, by ``start`` only; redis-py 8
loads the metrics SDK by itself when installed), the listeners serve their handlers
unwrapped, and a request meets no more than an ``ACTIVE is None`` test at the places where
a span would start (the upstream call, the audit record) and a shared do-nothing context
manager around calls that leave the process anyway (introspection, JWKS, Redis).

One tracing setup per process, like OpenTelemetry's own providers: the first gateway that
starts with tracing on owns it until it stops (a worker process runs one gateway).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from ..config import TracingConfig
    from ..runtime import Gateway
    from .sdk import RequestTracing

# the audit reports' trace links, re-exported: they import from here
from .values import trace_link as trace_link

log = logging.getLogger("gateway.tracing")

ACTIVE: RequestTracing | None = None
"""The running tracing setup; None when tracing is off (the only thing the hot path reads)."""

_OWNER: object | None = None



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
