"""The request's own span: SERVER on the proxy and decision ports (INTERNAL inside an application's
span in middleware mode), and the audit record's link to it. Per request, once tracing is on.

W3C trace context is continued only from a caller the gateway trusts (``trusted_proxies`` or
``trust_incoming``); anyone else's ``traceparent`` starts a new trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv.attributes import (
    client_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import SpanKind

from ...addresses import client_address, forwarded_for, is_trusted
from .spans import GETTER, PROPAGATOR, REQUEST, ServedRequest, Spans, fail, method_attributes

if TYPE_CHECKING:
    from ...audit.record import Exchange
    from ...runtime import Gateway
    from .. import Handler


def _host_port(host: str) -> tuple[str, int | None]:
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or not port.isdigit():
        return host, None
    return name, int(port)


class RequestSpans(Spans):
    """The listeners' part of the setup: each request served inside its span."""

    def server_handler(self, handler: Handler, gateway: Gateway, mode: str) -> Handler:
        """``handler`` serving each request inside the request's span."""
        async def traced(request: web.BaseRequest) -> web.StreamResponse:
            return await self.serve(request, gateway, mode, handler(request))

        return traced

    def _parent(self, request: web.BaseRequest, gateway: Gateway, mode: str) -> tuple[otel_context.Context, SpanKind]:
        """What the request's span continues: a trusted caller's trace, else nothing (a new trace).

        In middleware mode a span of the application's own (its server instrumentation) comes
        first, and ours is an INTERNAL span inside it.
        """
        if mode == "middleware" and trace.get_current_span().get_span_context().is_valid:
            return otel_context.get_current(), SpanKind.INTERNAL
        trusted = self.config.trust_incoming or is_trusted(request.remote or "", gateway.config.trusted_proxies)
        if not trusted:
            return otel_context.Context(), SpanKind.SERVER
        return PROPAGATOR.extract(request.headers, otel_context.Context(), GETTER), SpanKind.SERVER

    def _server_attributes(self, request: web.BaseRequest, gateway: Gateway) -> tuple[str, dict[str, Any]]:
        name, attributes = method_attributes(request.method)
        headers = request.headers
        peer = request.remote or ""
        host, port = _host_port(headers.get("Host", ""))
        attributes.update({
            url_attributes.URL_PATH: request.raw_path.partition("?")[0],  # never the query: it may hold a token
            url_attributes.URL_SCHEME: "https" if request.secure else "http",
            server_attributes.SERVER_ADDRESS: host,
            client_attributes.CLIENT_ADDRESS: client_address(peer, forwarded_for(headers),
                                                             gateway.config.trusted_proxies),
            network_attributes.NETWORK_PEER_ADDRESS: peer,
            network_attributes.NETWORK_PROTOCOL_VERSION: f"{request.version.major}.{request.version.minor}",
        })
        if port is not None:
            attributes[server_attributes.SERVER_PORT] = port
        agent = headers.get("User-Agent")
        if agent:
            attributes[user_agent_attributes.USER_AGENT_ORIGINAL] = agent
        return name, attributes

    async def serve(
        self, request: web.BaseRequest, gateway: Gateway, mode: str, answer: Awaitable[web.StreamResponse]
    ) -> web.StreamResponse:
        """Await ``answer`` (the request's handling) inside the request's server span."""
        parent, kind = self._parent(request, gateway, mode)
        name, attributes = self._server_attributes(request, gateway)
        attributes["tokengate.mode"] = mode
        span = self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        state = REQUEST.set(ServedRequest(span, name, mode))
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                response = await answer
            span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, response.status)
            if response.status >= 500:  # a server span fails on 5xx only: a 4xx is the client's
                fail(span, str(response.status))
            return response
        except web.HTTPException as exc:  # an application's answer in middleware mode, raised
            span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, exc.status)
            if exc.status >= 500:
                fail(span, str(exc.status))
            raise
        except BaseException as exc:
            fail(span, "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__)
            raise
        finally:
            REQUEST.reset(state)
            span.end()

    def note(self, exchange: Exchange) -> None:
        """Give the audit record its request's trace: the server span's ids (or the current span's)."""
        current = REQUEST.get()
        context = (current.span if current is not None else trace.get_current_span()).get_span_context()
        if context.is_valid:
            exchange.trace_id = trace.format_trace_id(context.trace_id)
            exchange.span_id = trace.format_span_id(context.span_id)
