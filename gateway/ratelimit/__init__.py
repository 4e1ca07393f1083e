"""Rate limits keyed by identity: GCRA in one Redis Lua script, or in process memory.

A limit says "``count`` requests per ``period`` for each value of ``key``" with a ``burst``
(the bucket's capacity, by default ``count``). It is enforced with GCRA, the generic cell rate
algorithm: each counter is one number, the *theoretical arrival time* (TAT) of the next request
had the caller kept exactly to the rate. A request is admitted when ``TAT - burst * T <= now``
(``T = period / count``, the emission interval) and then moves the TAT on by ``T``. Why GCRA:

- one key per limit and caller holding one integer: O(1) memory and O(1) work per request,
  where a sliding-window log keeps (and trims) a sorted set entry per request in the window;
- exact burst semantics: after idling, at most ``burst`` requests pass at once, and over any
  interval of length ``L`` at most ``burst + L / T`` pass; the count never drifts with window
  edges as fixed windows do (twice the count around a boundary);
- every limit of a request is read, decided and written by a single Lua script in one round
  trip, atomically: if any limit refuses, none is charged (a caller refused by its per-subject
  limit does not also burn its per-client or daily quota);
- the clock is Redis's (``TIME`` inside the script), so replicas with skewed clocks agree.

Without Redis, ``LocalLimiter`` runs the same arithmetic in this process: each process (each
worker, each replica) then enforces the limits on its own traffic only. Redis failures and the
lean RESP connection are told in redis_limiter.py and resp.py.

The modules, one job each: rates, keys (what a limit counts by), limits (and overrides, route
plans), verdict (the answer), headers (its HTTP fields), local_limiter, resp and redis_limiter
(the counters), limiter (which counters), config (the ``rate_limiting`` section) and hook (the
decision path's two calls).

The answer (``Verdict``) carries what the IETF draft-ietf-httpapi-ratelimit-headers fields need:
``RateLimit-Policy: "name";q=<count>;w=<period>`` and ``RateLimit: "name";r=<remaining>;t=<seconds
until the bucket is full again>`` (for a refusing limit ``r=0`` and ``t`` = the ``Retry-After``).
"""

from __future__ import annotations

from .config import (
    RateLimitConfig,
    RateLimitingConfig,
    compile_limits,
    compile_overrides,
    route_plan,
)
from .headers import ratelimit_headers, sf_string
from .hook import RateLimits, refusal_detail
from .keys import Hit, KeyKind, KeySpec, bind, ip_key
from .limiter import Limiter, build_limiter
from .limits import Limit, Override, select_limits
from .local_limiter import LocalLimiter
from .rates import Rate, parse_rate
from .redis_limiter import GCRA_SCRIPT, GCRA_SHA, RedisLimiter
from .resp import RespAddress, RespError, encode_command, parse_reply
from .verdict import ALLOWED, LimitState, Verdict, combine

__all__ = [
    "ALLOWED", "GCRA_SCRIPT", "GCRA_SHA", "Hit", "KeyKind", "KeySpec", "Limit", "LimitState", "Limiter",
    "LocalLimiter", "Override", "Rate", "RateLimitConfig", "RateLimitingConfig", "RateLimits", "RedisLimiter",
    "RespAddress", "RespError", "Verdict", "bind", "build_limiter", "combine", "compile_limits",
    "compile_overrides", "encode_command", "ip_key", "parse_rate", "parse_reply", "ratelimit_headers",
    "refusal_detail", "route_plan", "select_limits", "sf_string",
]
