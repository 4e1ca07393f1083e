"""GCRA counters in Redis, shared by every worker and replica: one script call per check, per request.

Every limit of a request is read, decided and written by a single Lua script in one round trip,
atomically: if any limit refuses, none is charged. The clock is Redis's (``TIME`` inside the
script), so replicas with skewed clocks agree. With a ``redis://`` or ``unix://`` URL the limiter
speaks RESP itself (resp.py); other URLs (``rediss://``, options) use redis-py's client.

Redis failures never hold a request long: each call is bounded by ``timeout`` (50 ms by
default), and after a failure Redis is left alone for ``retry_interval`` while every limit's
``on_redis_error`` policy (``allow`` by default, or ``deny``) answers instead; each such
request is counted (``gateway_rate_limit_unavailable_total``) and a warning is logged at most
once every ``LOG_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from .keys import Hit, unique_hits
from .limits import Limit
from .resp import RespAddress, RespConnection, RespError, bulk
from .verdict import ALLOWED, Answer, Verdict, count_refusals, verdict_of

log = logging.getLogger("gateway.ratelimit")  # the package's logger: one name for operators to filter on

LOG_INTERVAL = 10.0  # seconds between two "Redis unavailable" warnings

# KEYS: one counter per limit. ARGV: interval_us, burst for each limit, in KEYS order.
# Returns {all_allowed, then for each limit: allowed, remaining, reset_after_us, retry_after_us}.
# Every number stays below 2^53 (µs since 1970 ~ 1.8e15; tolerances are capped), so Lua's doubles
# are exact, and the TAT is written with %.0f (tostring would print it in exponent form).
GCRA_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local out = {1}
local tats = {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '') or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local diff = now - (new_tat - interval * burst)
  local base = 1 + (i - 1) * 4
  if diff < 0 then
    out[1] = 0
    out[base + 1] = 0
    out[base + 2] = 0
    out[base + 3] = tat - now
    out[base + 4] = -diff
  else
    out[base + 1] = 1
    out[base + 2] = math.floor(diff / interval)
    out[base + 3] = new_tat - now
    out[base + 4] = 0
  end
  tats[i] = new_tat
end
if out[1] == 1 then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000))
  end
end
return out
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()  # noqa: S324 - the name Redis gives the script

def connect(redis_url: str, timeout: float) -> Any:
    """A redis.asyncio client whose every wait is bounded by ``timeout`` and which never retries
    on the request path (a retry would only spend the same budget again)."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        client_name="tokengate-ratelimit", health_check_interval=0,
    )


class RedisLimiter:
    """GCRA counters in Redis, shared by every replica and worker: one EVALSHA per check."""

    def __init__(
        self, redis_url: str | None = None, *, client: Any = None, key_prefix: str = "gateway:ratelimit:",
        timeout: float = 0.05, retry_interval: float = 1.0,
    ) -> None:
        if client is None and redis_url is None:
            raise ValueError("RedisLimiter needs a redis_url or a client")
        self.key_prefix = key_prefix
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._address = RespAddress.of(redis_url) if client is None and redis_url is not None else None
        self._resp: RespConnection | None = None
        self._connecting = asyncio.Lock()
        if self._address is None:
            self._client = client if client is not None else connect(str(redis_url), timeout)
        self._owns_client = client is None
        self._down_until = 0.0
        self._failing = False
        self._last_log = -math.inf
        self._suppressed = 0

    async def check(self, route: str, hits: Sequence[Hit]) -> Verdict:
        """Decide and, when every limit admits, charge the request, in one script call."""
        if not hits:
            return ALLOWED
        hits = unique_hits(hits)
        limits = [h.limit for h in hits]
        if time.monotonic() < self._down_until:
            return self._unavailable(route, limits, None)
        keys = [h.redis_key(self.key_prefix) for h in hits]
        try:
            if self._address is not None:  # bounded by the connection's own watchdog
                reply = await self._run_resp(keys, limits)
            else:
                async with asyncio.timeout(self.timeout):
                    reply = await self._run(keys, [n for limit in limits for n in (limit.interval_us, limit.burst)])
            answers = _answers(reply, len(hits))
        except Exception as exc:  # redis errors, OSError, TimeoutError, a reply of the wrong shape
            self._down_until = time.monotonic() + self.retry_interval
            if isinstance(exc, TimeoutError) and self._resp is not None:
                self._resp.close()  # a connection that stalls may be half dead: the next check reconnects
            return self._unavailable(route, limits, exc)
        if self._failing:
            self._failing = False
            log.info("rate limiting: Redis answers again; limits are enforced from the shared counters")
        verdict = verdict_of(limits, answers)
        if not verdict.allowed:
            count_refusals(route, verdict)
        return verdict

    async def _run(self, keys: list[str], args: list[int]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await self._client.evalsha(GCRA_SHA, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis: EVAL sends the body and caches it again
            return await self._client.eval(GCRA_SCRIPT, len(keys), *keys, *args)

    async def _run_resp(self, keys: list[str], limits: Sequence[Limit]) -> Any:
        connection = await self._connection()
        # EVALSHA sha numkeys key... (interval burst)...: the limits' arguments are encoded once, in Limit
        tail = b"".join([bulk(len(keys)), *map(bulk, keys), *(limit.resp_args for limit in limits)])
        size = b"*%d\r\n" % (3 + 3 * len(keys))
        reply = await connection.call(size + _EVALSHA + tail)
        if isinstance(reply, RespError) and str(reply).startswith("NOSCRIPT"):
            # a restarted or flushed Redis: EVAL sends the body and caches it again
            reply = await connection.call(size + _EVAL + tail)
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def _connection(self) -> RespConnection:
        resp = self._resp
        if resp is not None and not resp.lost:
            return resp
        async with self._connecting:  # one connection for every waiting request
            if self._resp is None or self._resp.lost:
                assert self._address is not None
                self._resp = await self._address.open(self.timeout)
            return self._resp

    def _unavailable(self, route: str, limits: Sequence[Limit], exc: Exception | None) -> Verdict:
        """Each limit's ``on_redis_error`` decides: the request is refused if any says deny."""
        from .. import metrics  # not at import: see verdict.count_refusals

        allowed = all(limit.on_redis_error == "allow" for limit in limits)
        metrics.RATE_LIMIT_UNAVAILABLE.labels(route, "allowed" if allowed else "denied").inc()
        self._log_outage(exc)
        verdict = Verdict(allowed, 0.0 if allowed else self.retry_interval, (), tuple(limits), degraded=True)
        if not allowed:
            count_refusals(route, verdict)
        return verdict

    def _log_outage(self, exc: Exception | None) -> None:
        self._failing = True
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL:
            self._suppressed += 1
            return
        cause = type(exc).__name__ if exc is not None else "still unavailable"
        log.warning(
            "rate limiting: Redis unavailable (%s); limits with on_redis_error: allow let requests through, "
            "limits with on_redis_error: deny refuse them (%d more such requests since the last warning)",
            cause, self._suppressed, extra={"error": cause, "suppressed": self._suppressed},
        )
        self._last_log, self._suppressed = now, 0

    async def close(self) -> None:
        """Close the connection (and the redis-py client this limiter made)."""
        if self._resp is not None:
            self._resp.close()
        if self._address is None and self._owns_client:
            await self._client.aclose()


_EVALSHA = bulk(b"EVALSHA") + bulk(GCRA_SHA)
_EVAL = bulk(b"EVAL") + bulk(GCRA_SCRIPT)


def _answers(reply: Any, count: int) -> list[Answer]:
    if not isinstance(reply, list) or len(reply) != 1 + 4 * count:
        raise ValueError("unexpected reply from the rate limit script")
    values = [int(v) for v in reply]
    return [(values[1 + 4 * i] == 1, values[2 + 4 * i], values[3 + 4 * i], values[4 + 4 * i]) for i in range(count)]
