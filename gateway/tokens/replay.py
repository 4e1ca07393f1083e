"""The DPoP ``jti`` replay cache: one proof, one use, across every replica and worker.

With Redis, a proof's first use is one ``SET <prefix><key> 1 NX PX <ttl>``: the replica
whose SET creates the key accepts the proof, every later SET (same process or another
one sharing the Redis) finds the key and refuses it as a replay. One round trip per request.

Without Redis, ``MemoryReplayCache`` keeps the keys of one process: bounded and expiring.
When it is full of live proofs it refuses new ones (UNAVAILABLE) rather than forget a live
one, because forgetting would let that proof be replayed.

Redis errors fail closed: by default a SET that errors or times out answers UNAVAILABLE
(the request gets a 503), because accepting a proof no replica can remember is exactly
the replay the cache exists to stop. ``max_outage`` (seconds, default 0) relaxes this for
short outages, as ``revocation.max_staleness`` does for the revocation list: for that long
after the first failed SET, proofs are checked against this process's own copy (every key is
also recorded locally while Redis is up), so a replay within one process is still refused
but a replay on another replica is not; past the bound everything is refused until Redis answers.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, Final, Protocol

from .. import tracing

log = logging.getLogger("gateway.dpop")

DEFAULT_PREFIX: Final = "gateway:dpop:jti:"
DEFAULT_MAX_ENTRIES: Final = 100_000  # roughly 30 MB; 100k proofs per replay window per process
DEFAULT_TIMEOUT: Final = 1.0  # seconds a request waits for Redis before the proof is refused (503)


class Seen(Enum):
    """What the cache says about a proof key."""

    FIRST = "first"  # never seen within its window: the proof may be accepted
    REPLAYED = "replayed"  # already used: refuse (invalid_dpop_proof)
    UNAVAILABLE = "unavailable"  # cannot tell (Redis down past the bound, cache full): refuse with 503


class ReplayCache(Protocol):
    """Either cache: ``first_use`` records ``key`` for ``ttl`` seconds and says whether it was new."""

    async def first_use(self, key: str, ttl: float) -> Seen: ...

    async def aclose(self) -> None: ...


class MemoryReplayCache:
    """Keys of one process, each forgotten when its window ends; at most ``max_entries`` live ones."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (expires, key): the next to expire first

    def __len__(self) -> int:
        return len(self._expiry)

    async def first_use(self, key: str, ttl: float) -> Seen:
        return self.add(key, ttl)

    def add(self, key: str, ttl: float) -> Seen:
        """Record ``key`` for ``ttl`` seconds unless it is already recorded (synchronous core)."""
        now = self._clock()
        self._expire(now)
        if key in self._expiry:
            return Seen.REPLAYED
        if len(self._expiry) >= self.max_entries:
            return Seen.UNAVAILABLE  # every entry is still live: dropping one would re-open a replay
        expires = now + ttl
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return Seen.FIRST

    def _expire(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            if expiry.get(key) == expires:
                del expiry[key]

    async def aclose(self) -> None:
        self._expiry.clear()
        self._heap.clear()


class RedisReplayCache:
    """Keys shared by every replica through one Redis: ``SET NX PX`` per proof, fail closed on errors.

    ``client`` is a redis.asyncio client (plain, Sentinel master or Cluster: anything with
    ``set(name, value, nx=, px=)``), e.g. from ``gateway.revocation.redis_store.connect``.
    """

    def __init__(
        self,
        client: Any,  # redis.asyncio.Redis | RedisCluster: redis-py's command types are not awaitable-typed
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        max_outage: float = 0.0,
        local: MemoryReplayCache | None = None,
        owns_client: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.max_outage = max_outage
        self.local = local if local is not None else MemoryReplayCache(clock=clock)
        self._owns_client = owns_client
        self._clock = clock
        self._failing_since: float | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisReplayCache:
        """A cache with its own client for ``redis://`` / ``rediss://`` URLs (closed by ``aclose``)."""
        from redis.asyncio import Redis

        name = f"tokengate-dpop-{socket.gethostname()}-{os.getpid()}".replace(" ", "_")[:100]
        client = Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0, client_name=name)
        return cls(client, owns_client=True, **kwargs)

    @property
    def up(self) -> bool:
        """False from the first failed SET until one succeeds again."""
        return self._failing_since is None

    async def first_use(self, key: str, ttl: float) -> Seen:
        local = self.local.add(key, ttl)
        if local is Seen.REPLAYED:
            return Seen.REPLAYED  # replayed against this very process: no need to ask Redis
        try:
            with tracing.redis_call("SET", self.client):  # a client span while tracing
                async with asyncio.timeout(self.timeout):
                    created = await self.client.set(self.prefix + key, b"1", nx=True,
                                                    px=max(1, math.ceil(ttl * 1000)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis errors, OSError, timeouts: all mean "cannot tell"
            return self._outage(exc, local)
        self._recovered()
        return Seen.FIRST if created else Seen.REPLAYED

    def _outage(self, exc: BaseException, local: Seen) -> Seen:
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("DPoP replay cache unreachable", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
        within_bound = now - self._failing_since < self.max_outage
        return Seen.FIRST if within_bound and local is Seen.FIRST else Seen.UNAVAILABLE

    def _recovered(self) -> None:
        if self._failing_since is not None:
            self._failing_since = None
            log.info("DPoP replay cache reachable again")

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
