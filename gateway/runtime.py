"""One running gateway: the parts built from a configuration and the outcome of each request.

``Pipeline`` holds everything derived from one configuration file (routes, token
validation, upstream pools) and is swapped whole on a reload. ``Gateway`` owns what
outlives a reload (revocation list, audit writer) and records every request's outcome:
one audit record and the metrics, whatever the mode (proxy, decision endpoint, middleware).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from . import metrics, tracing
from .audit.record import Exchange, audit_record
from .audit.writer import AuditWriter
from .binding import ProofServices
from .claim_headers import ClaimHeaderPolicy
from .config import HTTP_METHODS, GatewayConfig
from .decision import Decider, Decision
from .detection import Detector, detection_enabled
from .proxy import Upstreams
from .ratelimit import Limiter, RateLimits, build_limiter
from .revocation.entries import Entry, Kind
from .revocation.store import RevocationStore
from .revocation.store_factory import build_store
from .routing import RouteTable
from .tokens.cache import ExpiringCache
from .tokens.validator import TokenValidator
from .traced_decision import TracedDecider
from .websocket import LiveConnections

log = logging.getLogger("gateway")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_METHODS = frozenset(HTTP_METHODS)
METRICS_FOLD_INTERVAL = 1.0  # seconds between folds of the pending metrics (metrics.fold)
RETIRE_MIN_DELAY = 2.0  # seconds a replaced pipeline stays open even when no proxied request uses it
# seconds between two checks of every live connection against the revocation list: closes what a
# notification did not (a replica that resynced after losing Redis gets entries without one)
LIVE_RECHECK_INTERVAL = 5.0


# request ids: 96 random bits as 24 hex digits, like os.urandom(12).hex() but without a system
# call per request. A private generator seeded from os.urandom (again in a forked child), so
# every worker draws its own sequence; an id only correlates records and is never a secret
# (a client may send its own), so a non-cryptographic generator does.
_ids = random.Random()  # noqa: S311 - ids are not secrets (above)
os.register_at_fork(after_in_child=_ids.seed)


def request_id(incoming: str | None) -> str:
    """Propagate a well-formed X-Request-Id, otherwise make one."""
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return _ids.getrandbits(96).to_bytes(12, "big").hex()


@dataclass
class Pipeline:
    """Everything built from one configuration; replaced as a unit on reload."""

    config: GatewayConfig
    routes: RouteTable
    validator: TokenValidator
    decider: Decider
    upstreams: Upstreams
    session: aiohttp.ClientSession
    in_flight: int = 0  # proxied requests still using this pipeline (it may have been replaced)

    async def stop(self) -> None:
        await self.validator.stop()
        await self.upstreams.stop()
        await self.session.close()


async def build_pipeline(
    config: GatewayConfig, revocation: RevocationStore, proofs: ProofServices | None = None,
    limiter: Limiter | None = None,
) -> Pipeline:
    """Build and start the parts of one configuration (JWKS loads, introspection clients).

    ``proofs`` (the DPoP replay cache and nonces) and ``limiter`` (the rate limit counters)
    outlive pipelines; None: in memory, for this one.
    """
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    routes = RouteTable(config.routes)
    validator = TokenValidator(config, session)
    validator.revoked = revocation.list.fingerprint_revoked  # no introspection call for a token known revoked
    _add_introspectors(config, validator, session)
    upstreams = Upstreams(config)
    limits = RateLimits(config.rate_limiting, config.routes, limiter or build_limiter(config.rate_limiting))
    decider_type = Decider if tracing.ACTIVE is None else TracedDecider  # in a span while tracing
    decider = decider_type(routes, validator, revocation, config.issuers, proofs, limits,
                           claim_headers=ClaimHeaderPolicy.from_config(config))
    pipeline = Pipeline(config, routes, validator, decider, upstreams, session)
    await upstreams.start()
    await validator.start()
    return pipeline


def _add_introspectors(config: GatewayConfig, validator: TokenValidator, session: aiohttp.ClientSession) -> None:
    issuers = [i for i in config.issuers if i.introspection is not None]
    if not issuers:
        return
    from .tokens.introspection import Introspector  # only loaded when an issuer introspects

    for issuer in issuers:
        validator.add_introspector(Introspector(issuer, session, validator.keys.get(issuer.issuer)))


class Gateway:
    """A gateway instance: pipeline, revocation list, audit writer and outcome recording."""

    def __init__(self, config: GatewayConfig, config_path: str | None = None) -> None:
        self.config_path = config_path
        self.initial_config = config
        self.revocation = build_store(config.revocation)
        self.proofs = ProofServices.from_config(config)  # like the revocation list: kept across reloads
        self.audit = AuditWriter(config.audit)
        # like the revocation list: kept across reloads (rate_limiting and long_connections are restart only)
        self.limiter = build_limiter(config.rate_limiting)
        self.live = LiveConnections(
            close_code=config.long_connections.close_code, family_claim=config.revocation.family_claim,
        )
        self.pipeline: Pipeline | None = None
        self.detector: Detector | None = None
        self.draining = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._pending_purges: list[Entry] = []
        self._purger: asyncio.Task[None] | None = None
        self._folder: asyncio.Task[None] | None = None
        self._rechecker: asyncio.Task[None] | None = None
        self.revocation.on_revoke(self._drop_cached)
        self.revocation.on_revoke(self.live.revoked)  # every replica hears every revocation: its sockets close
        if detection_enabled(config):
            self.detector = Detector(config, self.revocation)

    @property
    def config(self) -> GatewayConfig:
        return self.pipeline.config if self.pipeline is not None else self.initial_config

    async def start(self) -> None:
        tracing.start(self.initial_config.tracing, self)  # first: the first JWKS fetches are traced too
        await self.audit.start()
        await self.revocation.start()
        self.pipeline = await build_pipeline(self.initial_config, self.revocation, self.proofs, self.limiter)
        if self.detector is not None:
            await self.detector.start()
        self._folder = asyncio.create_task(self._fold_metrics(), name="metrics-fold")
        self._rechecker = asyncio.create_task(self._recheck_live(), name="live-recheck")

    async def stop(self) -> None:
        tasks = [*self._retiring, *(t for t in (self._purger, self._folder, self._rechecker) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        metrics.fold()  # what the last requests counted is in the shared files before the process goes
        if self.detector is not None:
            await self.detector.stop()
        if self.pipeline is not None:
            await self.pipeline.stop()
        await self.revocation.stop()
        await self.proofs.aclose()
        await self.limiter.close()
        await self.audit.stop()
        await tracing.stop(self)

    @staticmethod
    async def _fold_metrics() -> None:
        while True:
            await asyncio.sleep(METRICS_FOLD_INTERVAL)
            metrics.fold()

    async def _recheck_live(self) -> None:
        while True:
            await asyncio.sleep(LIVE_RECHECK_INTERVAL)
            if len(self.live):
                self.live.recheck(self.revocation.list.check)

    def swap(self, pipeline: Pipeline) -> None:
        """Put ``pipeline`` in service at once; the replaced one closes when its requests are done."""
        old, self.pipeline = self.pipeline, pipeline
        if old is not None:
            task = asyncio.create_task(self._retire(old, pipeline.config.shutdown_grace), name="retire-pipeline")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, pipeline: Pipeline, grace: float) -> None:
        # requests of other modes (decision endpoint) do not count themselves: give them a moment
        deadline = time.monotonic() + max(grace, RETIRE_MIN_DELAY)
        live = self.live
        try:
            await asyncio.sleep(RETIRE_MIN_DELAY)
            # a plain counter keeps the request path cheap; polling it here is precise enough. Its
            # WebSockets and streams count too but never end by themselves: not waited for
            while pipeline.in_flight > live.count(pipeline) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            # decided under the old configuration, proxied through its pools: closed (1012, the client
            # may reconnect at once and is decided under the new one)
            if live.cut_group(pipeline):
                await live.wait_group_closed(pipeline, pipeline.config.long_connections.close_timeout + 1.0)
        finally:
            await pipeline.stop()

    def readiness(self) -> dict[str, bool]:
        """What /readyz reports; ready when every value is true."""
        pipeline = self.pipeline
        return {
            "accepting": not self.draining,
            "jwks_loaded": pipeline is not None and pipeline.validator.ready,
            # opaque tokens cannot pass while introspection fails (after its grace period)
            "introspection_ok": pipeline is not None and pipeline.validator.introspection_ready,
            "revocation_synced": self.revocation.ready,
        }

    def _token_caches(self) -> list[ExpiringCache[Any]]:
        if self.pipeline is None:
            return []
        validator = self.pipeline.validator
        return [validator.cache, *(i.cache for i in validator.introspectors.values())]

    def _drop_cached(self, entry: Entry) -> None:
        """Evict cached tokens a revocation matches (the per-request check denies them regardless)."""
        if entry.kind is Kind.TOKEN and len(entry.value) == 64:  # a full fingerprint is the cache key
            for cache in self._token_caches():
                cache.discard(entry.value)
            return
        self._pending_purges.append(entry)
        if self._purger is None or self._purger.done():
            try:
                self._purger = asyncio.get_running_loop().create_task(self._purge_caches(), name="cache-purge")
            except RuntimeError:  # no event loop (a synchronous caller): nothing is being served either
                self._pending_purges.clear()

    async def _purge_caches(self) -> None:
        # one pass over the cache serves every revocation that arrived meanwhile. The introspection
        # caches keep their answers: the family, subject or client of an opaque token is known only
        # from its answer, and with it the request is refused as revoked_family (or _subject,
        # _client) at no cost; without it the authorization server is asked again, and says inactive
        while self._pending_purges:
            entries, self._pending_purges = self._pending_purges, []
            revoked = self.revocation.list.matcher_for(*entries)
            for cache in self._token_caches()[:1]:  # the verified-token cache
                await cache.discard_where(revoked)

    def record(self, exchange: Exchange, decision: Decision) -> None:
        """Write the audit record and count the metrics of one finished request."""
        duration = time.monotonic() - exchange.started_mono
        if tracing.ACTIVE is not None:
            tracing.ACTIVE.note(exchange)  # the record carries its request's trace_id and span_id
        suspicious = self.detector.observe(exchange, decision) if self.detector is not None else None
        self.audit.write(
            audit_record(exchange, decision, duration * 1000, self.revocation.list.family_claim, suspicious)
        )
        route = decision.route.name if decision.route is not None else ""
        method = exchange.method if exchange.method in _METHODS else "OTHER"
        # a WebSocket's lifetime is no request latency
        latency = duration if exchange.connection is None else None
        metrics.count_request(route, method, exchange.status, decision.reason, latency)
        if exchange.upstream_ms is not None and decision.route is not None:
            metrics.observe(metrics.UPSTREAM_DURATION, decision.route.upstream, exchange.upstream_ms / 1000)
