"""The proxy listener's aiohttp handler: decide, then forward or deny; runs per request.

Follow one request: ``ProxyHandler.__call__`` builds the facts (facts.py), ``Decider.decide``
(decision.py) applies the policy, ``proxy.forward`` streams it to the upstream (or
``websocket.serve_websocket`` proxies an upgrade), and ``Gateway.record`` (runtime.py) writes
the audit record and the metrics: for a WebSocket or a server-sent event stream, when it closes.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from aiohttp import web
from multidict import CIMultiDict

from . import metrics, tracing
from .audit.record import Exchange
from .binding import request_scheme
from .config import GatewayConfig
from .decision import Decision
from .facts import exchange_and_facts
from .proxy import (
    BodyTooLarge,
    ForwardContext,
    StreamAborted,
    UnsafeIdentity,
    Upstream,
    UpstreamFailure,
    forward,
    strip_rule,
)
from .proxy import upstream_headers as build_upstream_headers
from .reasons import Reason
from .responses import allowed_headers, denial_response
from .runtime import Gateway, Pipeline
from .websocket import HandshakeError, WebSocketSettings, serve_stream, serve_websocket
from .ws_upgrade import ProtocolTokenError, asks_websocket


class ProxyHandler:
    """The public port: decide, then forward or deny."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.in_flight = 0  # requests between head and the end of the response body (Server.stop waits)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        # one pipeline for the whole request, even when a reload swaps in another meanwhile
        pipeline = self.gateway.pipeline
        assert pipeline is not None
        pipeline.in_flight += 1
        self.in_flight += 1
        try:
            response = await self._handle(request, pipeline)
        finally:
            pipeline.in_flight -= 1
            self.in_flight -= 1
            if not self.in_flight:
                metrics.idle()  # with several workers, a scrape of any of them counts an idle one in full
        if self.gateway.draining:
            response.force_close()  # no further request on a connection of a gateway going away
        return response

    async def _handle(self, request: web.BaseRequest, pipeline: Pipeline) -> web.StreamResponse:
        gateway = self.gateway
        config = pipeline.config
        exchange, facts, peer, peer_trusted = exchange_and_facts(request, config, "proxy")
        decision = await pipeline.decider.decide(facts)
        if decision.allowed:
            decision, response = await self._forward(request, pipeline, decision, exchange, peer, peer_trusted)
        else:
            response = denial_response(decision, config.realm, exchange.request_id)
        exchange.status = response.status
        if exchange.bytes_out == 0 and isinstance(response, web.Response) and response.body is not None:
            exchange.bytes_out = response.content_length or 0
        gateway.record(exchange, decision)
        return response

    async def _forward(
        self, request: web.BaseRequest, pipeline: Pipeline, decision: Decision, exchange: Exchange, peer: str,
        peer_trusted: bool,
    ) -> tuple[Decision, web.StreamResponse]:
        assert decision.route is not None and decision.target is not None
        config = pipeline.config
        limit = decision.route.max_body_size if decision.route.max_body_size is not None else config.max_body_size
        if request.content_length is not None and request.content_length > limit:
            return self._deny(decision, Reason.BODY_TOO_LARGE, exchange, config)
        upstream = pipeline.upstreams[decision.route.upstream]
        context = ForwardContext(
            client_ip=exchange.client_ip, peer=peer, peer_trusted=peer_trusted,
            scheme=request_scheme(request, peer_trusted), host=exchange.host, request_id=exchange.request_id,
        )
        try:
            headers = build_upstream_headers(request.headers, context, upstream, decision.token,
                                             config.identity_headers, strip_rule(decision.route.config, config),
                                             decision.claim_headers)
        except UnsafeIdentity:  # never for a token built from claims: they are refused when validated
            return self._deny(replace(decision, token=None), Reason.INVALID_CLAIM, exchange, config)
        route = decision.route.config
        if route is not None and route.websocket:
            if asks_websocket(request.headers):  # the decision refused it on other routes
                return await self._websocket(request, pipeline, decision, exchange, upstream, headers)
            if route.websocket_token_protocol_prefix:  # meaningless without an upgrade, and may hold a token
                headers.popall("Sec-WebSocket-Protocol", None)
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # the policy passed: now ask for the body (a denied request is answered without reading it)
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        live = partial(serve_stream, registry=self.gateway.live, route=decision.route.name, token=decision.token,
                       exchange=exchange, group=pipeline)
        call = forward(request, decision.target.forward, upstream, headers, exchange, limit, allowed_headers(decision),
                       live)
        if tracing.ACTIVE is not None:  # a client span: its traceparent goes into ``headers`` before they are sent
            call = tracing.ACTIVE.upstream_call(call, headers, request.method, upstream)
        try:
            return decision, await call
        except UpstreamFailure as failure:
            return self._deny(decision, failure.reason, exchange, config)
        except StreamAborted as aborted:
            return replace(decision, reason=aborted.reason), aborted.response
        except (BodyTooLarge, ConnectionError, OSError) as exc:
            if exchange.bytes_in > limit or isinstance(exc, BodyTooLarge):
                return self._deny(decision, Reason.BODY_TOO_LARGE, exchange, config)
            return self._deny(decision, Reason.UPSTREAM_UNAVAILABLE, exchange, config)

    async def _websocket(
        self, request: web.BaseRequest, pipeline: Pipeline, decision: Decision, exchange: Exchange,
        upstream: Upstream, headers: CIMultiDict[str],
    ) -> tuple[Decision, web.StreamResponse]:
        """An authorised upgrade: the upstream's handshake first, then frames both ways until one side
        closes or the token dies (revoked, expired) or the gateway shuts down."""
        assert decision.route is not None and decision.target is not None and decision.route.config is not None
        assert upstream.session is not None
        config = pipeline.config
        settings = WebSocketSettings(config.long_connections.max_message_size, config.long_connections.close_timeout,
                                     config.long_connections.compress)
        call = serve_websocket(
            request, upstream.session, upstream.url(decision.target.forward), headers=headers,
            registry=self.gateway.live, route=decision.route.name, token=decision.token, exchange=exchange,
            prefix=decision.route.config.websocket_token_protocol_prefix, settings=settings,
            response_headers=[*allowed_headers(decision), ("X-Request-Id", exchange.request_id)], group=pipeline,
        )
        if tracing.ACTIVE is not None:  # the handshake carries the client span's traceparent, as forward does
            call = tracing.ACTIVE.upstream_call(call, headers, request.method, upstream)
        try:
            response = await call
        except (HandshakeError, ProtocolTokenError):
            return self._deny(decision, Reason.BAD_WEBSOCKET_HANDSHAKE, exchange, config)
        except UpstreamFailure as failure:
            return self._deny(decision, failure.reason, exchange, config)
        return decision, response

    @staticmethod
    def _deny(
        decision: Decision, reason: Reason, exchange: Exchange, config: GatewayConfig
    ) -> tuple[Decision, web.StreamResponse]:
        decision = replace(decision, reason=reason)
        return decision, denial_response(decision, config.realm, exchange.request_id)
