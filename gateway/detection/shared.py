"""Detection state shared by the replicas through Redis: observations written and views read in batches.

Runs in the background (one task per replica, every SHARED_FLUSH_INTERVAL); the request path only
appends to ``pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..background import cancel_and_wait
from .state import MAX_IPS_KEPT, Observation

if TYPE_CHECKING:
    from ..config import DetectionConfig

log = logging.getLogger("gateway.detection")

SHARED_FLUSH_INTERVAL = 0.1
SHARED_MAX_PENDING = 50_000
_FAMILY_REPLIES = 7  # replies to the commands _queue_family sends for every family
_SET_REPLIES = 4  # replies to the commands _queue_times sends for one sorted set

# (family, first network, ips -> last seen, scope denial times, now, token -> proof failure times)
Merge = Callable[[str, "str | None", dict[str, float], list[float], float, dict[str, list[float]]], None]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedState:
    """Per-family detection state shared by the replicas through Redis, updated in batches.

    Keys (all expiring): ``<prefix>detect:<family>:first`` (network of first use),
    ``...:ips`` (sorted set ip -> last seen), ``...:scope`` (sorted set of scope
    denials) and ``...:proof:<token fingerprint>`` (sorted set of one token's proof
    failures). ``<prefix>`` is the revocation key prefix with ``revoked:`` replaced.
    ``merge`` hands what the replicas saw together back to the detector.
    """

    def __init__(self, settings: DetectionConfig, window: float, idle: float, merge: Merge,
                 redis_url: str, key_prefix: str) -> None:
        self.settings = settings
        self.window = window
        self.idle = idle
        self.merge = merge
        self.redis_url = redis_url
        base = key_prefix[: -len("revoked:")] if key_prefix.endswith("revoked:") else key_prefix.rstrip(":") + "-"
        self.prefix = f"{base}detect:"
        self.pending: list[Observation] = []
        self.dropped = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self.flushed = asyncio.Event()  # set after each successful flush (tests wait on it)

    def push(self, observation: Observation) -> None:
        """Queue one use for the next flush (dropped, and counted, beyond SHARED_MAX_PENDING)."""
        if len(self.pending) >= SHARED_MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(observation)

    async def start(self) -> None:
        """Connect to Redis and start flushing."""
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="detection-shared-state")

    async def stop(self) -> None:
        """Stop flushing, write what is pending one last time and disconnect."""
        await cancel_and_wait(self._task)
        with contextlib.suppress(Exception):
            await self.flush()
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SHARED_FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception as exc:
                self.errors += 1
                if self.errors in (1, 10) or self.errors % 1000 == 0:
                    log.warning("detection shared state: redis error (state stays per replica meanwhile)",
                                extra={"error": str(exc), "errors": self.errors})

    async def flush(self) -> None:
        """Write the pending observations and merge back what every replica saw of their families."""
        if not self.pending or self._client is None:
            return
        batch, self.pending = self.pending, []
        by_family: dict[str, list[Observation]] = {}
        for observation in batch:
            by_family.setdefault(observation.family, []).append(observation)
        pipe = self._client.pipeline(transaction=False)
        now = max(o.when for o in batch)
        # per family: whether its scope denials were queued, and the tokens whose proof failures were
        order = [(family, *self._queue_family(pipe, family, observations, now))
                 for family, observations in by_family.items()]
        results = await pipe.execute()
        index = 0
        for family, has_scope, proving in order:
            first_network, remote_ips = results[index + 1], results[index + 6]
            index += _FAMILY_REPLIES
            remote_denials: list[Any] = []
            if has_scope:
                remote_denials = results[index + 3]
                index += _SET_REPLIES
            proof_failures: dict[str, list[float]] = {}
            for token in proving:
                proof_failures[token] = [float(score) for _, score in results[index + 3]]
                index += _SET_REPLIES
            self.merge(
                family, None if first_network is None else _text(first_network),
                {_text(ip): float(score) for ip, score in remote_ips},
                [float(score) for _, score in remote_denials], now, proof_failures,
            )
        self.flushed.set()

    def _queue_family(
        self, pipe: Any, family: str, observations: list[Observation], now: float,
    ) -> tuple[bool, list[str]]:
        """Queue one family's commands; whether its scope denials were, and its proving tokens."""
        base = self.prefix + family
        ttl_window, ttl_idle = max(int(self.window) + 1, 1), int(self.idle) + 1
        first = min(observations, key=lambda o: o.when)
        pipe.set(f"{base}:first", first.network, nx=True, ex=ttl_idle)
        pipe.get(f"{base}:first")
        pipe.expire(f"{base}:first", ttl_idle)
        ips: dict[str, float] = {}
        for o in observations:
            ips[o.ip] = max(o.when, ips.get(o.ip, 0.0))
        self._queue_times(pipe, f"{base}:ips", ips, now, ttl_window, MAX_IPS_KEPT)
        burst = self.settings.insufficient_scope_burst or 0
        denials = {o.scope_denial_id: o.when for o in observations if o.scope_denial_id}
        has_scope = bool(denials and burst)
        if has_scope:
            self._queue_times(pipe, f"{base}:scope", denials, now, ttl_window, burst)
        return has_scope, self._queue_proof_failures(pipe, base, observations, now, ttl_window)

    def _queue_times(self, pipe: Any, key: str, members: dict[str, float], now: float, ttl: int,
                     keep: int) -> None:
        """Add to the sorted set ``key``, drop what left the window, read its last ``keep`` back."""
        pipe.zadd(key, members)
        pipe.zremrangebyscore(key, "-inf", now - self.window)
        pipe.expire(key, ttl)
        pipe.zrange(key, -keep, -1, withscores=True)

    def _queue_proof_failures(
        self, pipe: Any, base: str, observations: list[Observation], now: float, ttl: int,
    ) -> list[str]:
        """Queue the family's proof failures per token (four commands each); the tokens, in order."""
        limit = self.settings.proof_failures_per_token
        by_token: dict[str, dict[str, float]] = {}
        for o in observations:
            if o.proof_failure is not None:
                token, failure_id = o.proof_failure
                by_token.setdefault(token, {})[failure_id] = o.when
        if not limit or not by_token:
            return []
        for token, failures in by_token.items():
            self._queue_times(pipe, f"{base}:proof:{token}", failures, now, ttl, limit)
        return list(by_token)
