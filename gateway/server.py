"""The aiohttp applications (proxy, admin) and their lifecycle.

Follow one request: ``ProxyHandler.__call__`` builds the facts, ``Decider.decide``
(decision.py) applies the policy, ``proxy.forward`` streams it to the upstream (or
``websocket.serve_websocket`` proxies an upgrade), and ``Gateway.record`` (runtime.py) writes
the audit record and the metrics: for a WebSocket or a server-sent event stream, when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial

import orjson
from aiohttp import web
from multidict import CIMultiDict

from . import metrics, tracing
from .audit.record import Exchange
from .binding import forwarded_authority, presented_certificate, request_scheme
from .config import Address, ConfigError, GatewayConfig, tls_settings
from .decision import Decision, RequestFacts
from .proxy import (
    BodyTooLarge,
    ForwardContext,
    StreamAborted,
    UnsafeIdentity,
    Upstream,
    UpstreamFailure,
    client_address,
    forward,
    forwarded_for,
    is_trusted,
    strip_rule,
)
from .proxy import upstream_headers as build_upstream_headers
from .reasons import Reason
from .reload import Reloader
from .responses import allowed_headers, denial_response
from .runtime import Gateway, Pipeline, request_id
from .tokens.certificates import server_ssl_context
from .traffic import ProtocolTokenError, asks_websocket
from .websocket import HandshakeError, WebSocketSettings, serve_stream, serve_websocket

log = logging.getLogger("gateway.server")


def new_exchange(request: web.BaseRequest, config: GatewayConfig, mode: str) -> tuple[Exchange, str]:
    """The exchange record of a request, and its direct peer address."""
    peer = request.remote or ""
    headers = request.headers
    exchange = Exchange(
        started=time.time(), started_mono=time.monotonic(),
        request_id=request_id(headers.get("X-Request-Id")),
        client_ip=client_address(peer, forwarded_for(headers), config.trusted_proxies),
        method=request.method, host=headers.get("Host", ""), raw_path=request.raw_path,
        user_agent=headers.get("User-Agent", ""), mode=mode,
    )
    return exchange, peer


def facts_of(request: web.BaseRequest, config: GatewayConfig, client_ip: str | None = None) -> RequestFacts:
    """The request as the decision sees it; what the client used and presented, believed from
    a trusted proxy only (``X-Forwarded-Proto``/``-Host``, the forwarded client certificate).
    ``client_ip``: the exchange's (after ``trusted_proxies``), else worked out here."""
    headers = request.headers
    peer = request.remote or ""
    trusted = is_trusted(peer, config.trusted_proxies)
    websocket = "Upgrade" in headers and asks_websocket(headers)
    return RequestFacts(
        method=request.method, raw_target=request.raw_path, host=headers.get("Host", ""),
        authorization=tuple(headers.getall("Authorization", ())), version=request.version,
        dpop=tuple(headers.getall("DPoP", ())), scheme=request_scheme(request, trusted),
        authority=forwarded_authority(headers, trusted),
        client_certificate=presented_certificate(request, config, trusted),
        client_ip=client_address(peer, forwarded_for(headers), config.trusted_proxies) if client_ip is None
        else client_ip,
        websocket=websocket, protocols=tuple(headers.getall("Sec-WebSocket-Protocol", ())) if websocket else (),
        headers=headers,
    )


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
        exchange, peer = new_exchange(request, config, "proxy")
        decision = await pipeline.decider.decide(facts_of(request, config, exchange.client_ip))
        if decision.allowed:
            decision, response = await self._forward(request, pipeline, decision, exchange, peer)
        else:
            response = denial_response(decision, config.realm, exchange.request_id)
        exchange.status = response.status
        if exchange.bytes_out == 0 and isinstance(response, web.Response) and response.body is not None:
            exchange.bytes_out = response.content_length or 0
        gateway.record(exchange, decision)
        return response

    async def _forward(
        self, request: web.BaseRequest, pipeline: Pipeline, decision: Decision, exchange: Exchange, peer: str
    ) -> tuple[Decision, web.StreamResponse]:
        assert decision.route is not None and decision.target is not None
        config = pipeline.config
        limit = decision.route.max_body_size if decision.route.max_body_size is not None else config.max_body_size
        if request.content_length is not None and request.content_length > limit:
            return self._deny(decision, Reason.BODY_TOO_LARGE, exchange, config)
        upstream = pipeline.upstreams[decision.route.upstream]
        context = ForwardContext(
            client_ip=exchange.client_ip, peer=peer, peer_trusted=is_trusted(peer, config.trusted_proxies),
            scheme="https" if request.secure else "http", host=exchange.host, request_id=exchange.request_id,
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


# --- admin ---------------------------------------------------------------------------------


GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def admin_app(gateway: Gateway) -> web.Application:
    """/metrics, /healthz and /readyz; kept off the public port."""
    app = web.Application()

    async def metrics_view(_: web.Request) -> web.Response:
        body, content_type = metrics.render_latest()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, dumps=lambda o: orjson.dumps(o).decode())

    async def readyz(_: web.Request) -> web.Response:
        # a dead or stuck audit writer means requests would go unrecorded: out of rotation
        checks = {**gateway.readiness(), "audit_writer": gateway.audit.healthy()}
        ready = all(checks.values())
        return web.Response(
            status=200 if ready else 503, body=orjson.dumps({"ready": ready, **checks}),
            content_type="application/json",
        )

    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app[GATEWAY_KEY] = gateway
    return app


# --- lifecycle -----------------------------------------------------------------------------

_LAST_RESORT = 1.0  # seconds aiohttp still gives a request after the grace period, before cancelling it

AdminHook = Callable[[web.Application, Gateway], None]
ADMIN_HOOKS: list[AdminHook] = []  # other modules (revocation intake) add admin routes here


class Server:
    """Runs the gateway's listeners until asked to stop, then drains."""

    def __init__(self, gateway: Gateway, reuse_port: bool = False) -> None:
        self.gateway = gateway
        self.reuse_port = reuse_port
        self.runners: list[web.BaseRunner] = []
        self.ports: dict[str, int] = {}  # listener name -> bound port (useful with port 0)
        self.stopped = asyncio.Event()
        self._admin: web.BaseRunner | None = None
        self._proxy: ProxyHandler | None = None

    async def start(self) -> None:
        gateway = self.gateway
        tls = proxy_ssl_context(gateway.config)  # before anything starts: a bad file stops nothing half-way
        await gateway.start()
        config = gateway.config
        self._proxy = ProxyHandler(gateway)
        proxy = web.Server(tracing.server_handler(self._proxy, gateway, "proxy"), access_log=None,
                           handler_cancellation=False)
        # stop() waits up to the grace period itself; aiohttp's own wait is only the last resort
        proxy_runner = web.ServerRunner(proxy, shutdown_timeout=_LAST_RESORT, handle_signals=False)
        await self._listen("proxy", proxy_runner, config.listen, tls)
        admin = admin_app(gateway)
        for hook in ADMIN_HOOKS:
            hook(admin, gateway)
        await self._listen("admin", web.AppRunner(admin, access_log=None, shutdown_timeout=1.0), config.admin_listen)
        for extra in EXTRA_LISTENERS:
            await extra(self)
        log.info(
            "gateway listening",
            extra={"listen": str(config.listen), "admin": str(config.admin_listen), "ports": dict(self.ports)},
        )

    async def _listen(
        self, name: str, runner: web.BaseRunner, address: Address, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        await runner.setup()
        site = web.TCPSite(runner, address.host, address.port, reuse_port=self.reuse_port or None,
                           ssl_context=ssl_context)
        await site.start()
        self.runners.append(runner)
        self.ports[name] = runner.addresses[0][1]
        if name == "admin":
            self._admin = runner

    async def listen(self, name: str, runner: web.BaseRunner, address: Address) -> None:
        """Start another listener (the forward-auth decision port) with the same lifecycle."""
        await self._listen(name, runner, address)

    async def stop(self) -> None:
        """Fail readiness at once, stop accepting, let in-flight requests finish, then close.

        WebSockets and event streams would never finish by themselves: once the other requests
        are done (or the grace period is over), they are closed with 1001 (going away), counted
        as closes with reason ``shutting_down``. The admin port answers until the public ones
        are done: /readyz says 503 meanwhile.
        """
        self.gateway.draining = True
        public = [runner for runner in self.runners if runner is not self._admin]
        for runner in public:
            for site in runner.sites:
                await site.stop()  # closes the listening socket: new connections are refused
        # aiohttp's shutdown stops reading from busy connections, which would stall a request
        # whose body is still streaming in: let the proxied requests finish first
        await self._proxied_requests_done(self.gateway.config.shutdown_grace)
        await self._close_long_connections()
        for result in await asyncio.gather(*(runner.cleanup() for runner in public), return_exceptions=True):
            if isinstance(result, Exception):
                log.error("listener did not close cleanly", extra={"error": repr(result)})
        if self._admin is not None:
            await self._admin.cleanup()
        await self.gateway.stop()
        self.stopped.set()

    async def _proxied_requests_done(self, grace: float) -> None:
        proxy = self._proxy
        if proxy is None:
            return
        deadline = time.monotonic() + grace
        live = self.gateway.live
        # long connections count as in flight too, but never end by themselves: only the others are waited for
        while proxy.in_flight > len(live) and time.monotonic() < deadline:  # noqa: ASYNC110 - plain counters
            await asyncio.sleep(0.05)
        if proxy.in_flight > len(live):
            log.warning("requests still running after the grace period are cut",
                        extra={"requests": proxy.in_flight - len(live)})

    async def _close_long_connections(self) -> None:
        live = self.gateway.live
        if not len(live):
            return
        closed = live.cut_all()
        log.info("long connections closed for shutdown", extra={"connections": closed})
        timeout = self.gateway.config.long_connections.close_timeout + 1.0  # each close handshake is bounded
        if not await live.wait_closed(timeout):
            log.warning("long connections still open after their close", extra={"connections": len(live)})


def proxy_ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The proxy listener's TLS (``tls:``); None for plain HTTP. The loader checked the files already:
    one that went missing since is still a configuration error, not a traceback."""
    if config.tls is None:
        return None
    try:
        return server_ssl_context(tls_settings(config.tls))
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None


ExtraListener = Callable[[Server], Awaitable[None]]
EXTRA_LISTENERS: list[ExtraListener] = []


def settle_heap() -> None:
    """Once started: what is alive now (modules, configuration, keys) stays for good.

    ``gc.freeze`` keeps it out of every later collection, and the young generation is
    collected after 10,000 net allocations instead of 700: a request's objects die with it,
    and the default thresholds cost about 20 us of CPU per request (bench/, BENCHMARKS.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def serve(
    gateway: Gateway, reuse_port: bool = False, *, stop: asyncio.Event | None = None, watch: bool = True,
    declared: GatewayConfig | None = None,
) -> None:
    """Run until SIGTERM or SIGINT (or ``stop`` is set), then drain and return (exit status 0).

    With a configuration file, SIGHUP reloads it, and so does a change of the file while
    ``watch_config`` is on (``watch=False`` leaves watching to a supervising parent).
    ``declared`` is the file as first loaded when ``gateway.config`` differs from it.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    handled = [signal.SIGTERM, signal.SIGINT]
    for sig in handled:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP])  # held until there is something to reload
    # the watcher's baseline is the file as loaded, not as it may be once start-up is over
    reloader = Reloader(gateway, declared) if gateway.config_path else None
    server = Server(gateway, reuse_port)
    await server.start()
    settle_heap()
    if reloader is not None:
        handled.append(signal.SIGHUP)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
        if watch:
            reloader.start_watching()
    # a worker process starts with these blocked, so that none is lost before its handlers are in place
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    try:
        await stop.wait()
    finally:
        if reloader is not None:
            await reloader.close()
    log.info("shutting down", extra={"grace_seconds": gateway.config.shutdown_grace})
    await server.stop()


# the decision port registers its hook in EXTRA_LISTENERS (it opens only when decision_listen is set)
from . import forward_auth as _forward_auth  # noqa: E402, F401

# the revocation intake endpoints (RFC 7009, RFC 8935 SET push) register in ADMIN_HOOKS
from .revocation import intake as _revocation_intake  # noqa: E402

ADMIN_HOOKS.append(_revocation_intake.register)
