"""The gateway's listeners and their lifecycle: which ports open, start, drain and stop.

Runs at start-up and shutdown; each listener's handler (proxy_handler.py, admin.py,
forward_auth.py) runs per request. ``listeners`` is the one place that says what opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from . import tracing
from .admin import admin_app
from .config import Address, ConfigError, GatewayConfig, tls_settings
from .forward_auth import decision_listening, decision_runner
from .proxy_handler import ProxyHandler
from .reload import Reloader
from .runtime import Gateway
from .tokens.certificates import server_ssl_context

log = logging.getLogger("gateway.server")

_LAST_RESORT = 1.0  # seconds aiohttp still gives a request after the grace period, before cancelling it


@dataclass(frozen=True, slots=True)
class Listener:
    """One port the gateway opens: its name (a key of ``Server.ports``), runner, address and TLS."""

    name: str
    runner: web.BaseRunner
    address: Address
    tls: ssl.SSLContext | None = None
    opened: Callable[[], None] | None = None  # called once it listens (to log it, say)


def listeners(gateway: Gateway, proxy: ProxyHandler, tls: ssl.SSLContext | None) -> list[Listener]:
    """Every port the configuration asks for, in the order they open: the proxy (``listen``), the
    admin port (``admin_listen``: admin.py), and the forward-auth decision port when
    ``decision_listen`` is set (forward_auth.py)."""
    config = gateway.config
    handler = web.Server(tracing.server_handler(proxy, gateway, "proxy"), access_log=None,
                         handler_cancellation=False)
    # stop() waits up to the grace period itself; aiohttp's own wait is only the last resort
    opened = [
        Listener("proxy", web.ServerRunner(handler, shutdown_timeout=_LAST_RESORT, handle_signals=False),
                 config.listen, tls),
        Listener("admin", web.AppRunner(admin_app(gateway), access_log=None, shutdown_timeout=1.0),
                 config.admin_listen),
    ]
    if config.decision_listen is not None:
        opened.append(Listener("decision", decision_runner(gateway), config.decision_listen,
                               opened=partial(decision_listening, config)))
    return opened


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
        for listener in listeners(gateway, self._proxy, tls):
            await self._listen(listener)
        log.info(
            "gateway listening",
            extra={"listen": str(config.listen), "admin": str(config.admin_listen), "ports": dict(self.ports)},
        )

    async def _listen(self, listener: Listener) -> None:
        runner, address = listener.runner, listener.address
        await runner.setup()
        site = web.TCPSite(runner, address.host, address.port, reuse_port=self.reuse_port or None,
                           ssl_context=listener.tls)
        await site.start()
        self.runners.append(runner)
        self.ports[listener.name] = runner.addresses[0][1]
        if listener.name == "admin":
            self._admin = runner
        if listener.opened is not None:
            listener.opened()

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
