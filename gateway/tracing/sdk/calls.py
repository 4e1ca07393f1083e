"""CLIENT spans for the calls that leave the gateway: the upstream, introspection, JWKS and
discovery fetches, Redis round trips. Per call, once tracing is on.

Whatever ``traceparent``/``tracestate`` a client sent is replaced on the way upstream, so a
client cannot graft its requests onto another trace or pick the sampling. Exceptions mark a
span failed with their type only: their messages may quote URLs or answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.semconv.attributes import db_attributes, server_attributes, url_attributes
from opentelemetry.trace import Span, SpanKind
from yarl import URL

from .spans import PROPAGATOR, SETTER, CallSpan, Spans, fail, method_attributes

if TYPE_CHECKING:
    from ...proxy import Upstream

AnyResponse = TypeVar("AnyResponse", bound=web.StreamResponse)  # a streamed answer, or a WebSocket's
_TRACE_HEADERS = ("traceparent", "tracestate")


def _target_attributes(url: URL) -> dict[str, Any]:
    """server.address, url.full (without credentials, query or fragment) and server.port of ``url``."""
    attributes: dict[str, Any] = {
        server_attributes.SERVER_ADDRESS: url.raw_host or "",
        url_attributes.URL_FULL: str(url.with_user(None).with_query(None).with_fragment(None)),
    }
    if url.port is not None:
        attributes[server_attributes.SERVER_PORT] = url.port
    return attributes


class CallSpans(Spans):
    """The outgoing calls' part of the setup."""

    async def upstream_call(
        self, call: Awaitable[AnyResponse], headers: CIMultiDict[str], method: str, upstream: Upstream,
    ) -> AnyResponse:
        """Await ``call`` (proxy.forward, not started yet) in a CLIENT span, its traceparent in ``headers``.

        Whatever ``traceparent``/``tracestate`` the client sent is replaced: a trusted caller's
        trace lives on in the span's own context, anyone else's never reaches the upstream.
        """
        name, attributes = method_attributes(method)
        attributes.update(_target_attributes(upstream.base))
        attributes["tokengate.upstream"] = upstream.name
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:
            for header in _TRACE_HEADERS:
                headers.popall(header, None)
            PROPAGATOR.inject(headers, setter=SETTER)
            try:
                response = await call
            except BaseException as exc:
                reason = getattr(exc, "reason", None)  # UpstreamFailure and StreamAborted carry a Reason
                fail(span, str(getattr(reason, "value", None) or type(exc).__name__))
                raise
            CallSpan(span, {}, 500).status(response.status)  # an upstream's 4xx is the client's business
            return response

    @contextmanager
    def http_call(self, method: str, url: str, issuer: str = "") -> Iterator[CallSpan]:
        """A CLIENT span around one HTTP call of the gateway's own (``tracing.http_call``)."""
        name, attributes = method_attributes(method)
        attributes.update(_target_attributes(URL(url)))
        if issuer:
            attributes["tokengate.issuer"] = issuer
        with self._client_span(name, attributes) as span:
            headers: dict[str, str] = {}
            PROPAGATOR.inject(headers, setter=SETTER)
            yield CallSpan(span, headers, 400)

    @contextmanager
    def redis_call(self, operation: str, client: Any) -> Iterator[CallSpan]:
        """A CLIENT span around one Redis round trip (``tracing.redis_call``)."""
        attributes: dict[str, Any] = {db_attributes.DB_SYSTEM_NAME: "redis",
                                      db_attributes.DB_OPERATION_NAME: operation}
        attributes.update(_redis_server(client))
        with self._client_span(operation, attributes) as span:
            yield CallSpan(span, {}, 1000)

    @contextmanager
    def _client_span(self, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                fail(span, type(exc).__name__)
                raise


def _redis_server(client: Any) -> dict[str, Any]:
    """server.address/port and db.namespace of a redis-py client, as far as it tells (Cluster: none)."""
    pool = getattr(client, "connection_pool", None)
    kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", None) or {}
    attributes: dict[str, Any] = {}
    if isinstance(kwargs.get("host"), str):
        attributes[server_attributes.SERVER_ADDRESS] = kwargs["host"]
        if isinstance(kwargs.get("port"), int):
            attributes[server_attributes.SERVER_PORT] = kwargs["port"]
    elif isinstance(kwargs.get("path"), str):
        attributes[server_attributes.SERVER_ADDRESS] = kwargs["path"]
    if isinstance(kwargs.get("db"), int):
        attributes[db_attributes.DB_NAMESPACE] = str(kwargs["db"])
    return attributes
