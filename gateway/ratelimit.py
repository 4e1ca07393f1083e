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

With a ``redis://`` or ``unix://`` URL the limiter speaks RESP itself on one pipelined connection
(``RespConnection``: the checks of one event-loop turn go out in one write); other URLs
(``rediss://``, options) use redis-py's client, which costs about 100 us of CPU more per check.

Without Redis, ``LocalLimiter`` runs the same arithmetic in this process: each process (each
worker, each replica) then enforces the limits on its own traffic only.

Redis failures never hold a request long: each call is bounded by ``timeout`` (50 ms by
default), and after a failure Redis is left alone for ``retry_interval`` while every limit's
``on_redis_error`` policy (``allow`` by default, or ``deny``) answers instead; each such
request is counted (``gateway_rate_limit_unavailable_total``) and a warning is logged at most
once every ``LOG_INTERVAL`` seconds.

The answer (``Verdict``) carries what the IETF draft-ietf-httpapi-ratelimit-headers fields need:
``RateLimit-Policy: "name";q=<count>;w=<period>`` and ``RateLimit: "name";r=<remaining>;t=<seconds
until the bucket is full again>`` (for a refusing limit ``r=0`` and ``t`` = the ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import metrics
from .reasons import Reason
from .tokens.token import ValidatedToken

log = logging.getLogger("gateway.ratelimit")

OnRedisError = Literal["allow", "deny"]
LOG_INTERVAL = 10.0  # seconds between two "Redis unavailable" warnings
_US = 1_000_000
_MAX_COUNT = 1_000_000_000
_MAX_PERIOD = 366 * 86400  # a year: longer windows are quotas for a billing system, not a gateway
_MAX_TOLERANCE_US = 366 * 86400 * _US  # burst * T: keeps every number exact in a double (Lua's only number)
_UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}
_RATE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*/[ \t]*([0-9]{0,8})[ \t]*([a-z]{1,7})[ \t]*")
# a policy name goes into a structured-field string and a metric label: keep it plain
POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:\-/$]{1,128}$")


# --- rates and keys ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds."""

    count: int
    period: int

    @property
    def interval_us(self) -> int:
        """T, the emission interval, in whole microseconds (at least 1)."""
        return max(1, round(self.period * _US / self.count))

    def __str__(self) -> str:
        return f"{self.count}/{self.period}s"


def parse_rate(text: Any) -> Rate:
    """``10/s``, ``1000/m``, ``5000/h``, ``100000/d``, also ``100/10s`` or ``30/15m``."""
    if not isinstance(text, str):
        raise ValueError("a rate is a string like 10/s, 1000/m, 5000/h or 100000/d")
    match = _RATE.fullmatch(text.lower())
    if match is None or match.group(3) not in _UNITS:
        raise ValueError(f"{text[:40]!r} is not a rate like 10/s, 1000/m, 5000/h or 100000/d")
    count, multiplier = int(match.group(1)), int(match.group(2) or "1")
    period = multiplier * _UNITS[match.group(3)]
    if not 1 <= count <= _MAX_COUNT:
        raise ValueError(f"the count of a rate must be between 1 and {_MAX_COUNT}")
    if not 1 <= period <= _MAX_PERIOD:
        raise ValueError("the window of a rate must be between 1 second and 366 days")
    if count > period * _US:
        raise ValueError("a rate above one request per microsecond cannot be enforced")
    return Rate(count, period)


class KeyKind(str, Enum):
    SUBJECT = "subject"
    CLIENT = "client"
    TOKEN = "token"
    ISSUER = "issuer"
    IP = "ip"
    CLAIM = "claim"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a limit counts by: ``subject | client | token | issuer | ip | claim:<name>``.

    When the value is missing the counter falls back, so that a request is never left
    unlimited and unrelated callers never share one "unknown" counter:

    - ``subject``: the token's client, else the token itself (client-credentials tokens often
      have no ``sub``: their caller is the client);
    - ``client`` and ``claim:<name>``: the token itself (its fingerprint);
    - any identity key on a request without a token (a public route): the client address.

    A claim that is not a string counts by its canonical JSON text.
    """

    kind: KeyKind
    claim: str | None = None

    @classmethod
    def parse(cls, text: Any) -> KeySpec:
        if not isinstance(text, str):
            raise ValueError("a limit key is one of subject, client, token, issuer, ip, claim:<name>")
        if text.startswith("claim:"):
            name = text[len("claim:"):]
            if not _CLAIM_NAME.match(name):
                raise ValueError(f"{text[:80]!r}: a claim name is 1-128 letters, digits or _ . : - / $")
            return cls(KeyKind.CLAIM, name)
        try:
            kind = KeyKind(text)
        except ValueError:
            raise ValueError(
                f"{text[:40]!r} is not a limit key: subject, client, token, issuer, ip or claim:<name>"
            ) from None
        if kind is KeyKind.CLAIM:
            raise ValueError("claim needs a name: claim:<name>")
        return cls(kind)

    def __str__(self) -> str:
        return f"claim:{self.claim}" if self.kind is KeyKind.CLAIM else self.kind.value

    @property
    def needs_token(self) -> bool:
        """Whether the value comes from the token (else from the connection: evaluable before validation)."""
        return self.kind is not KeyKind.IP

    def value(self, token: ValidatedToken | None, client_ip: str, ipv6_prefix: int = 64) -> str:
        """The counter's identity for this request, tagged with where it came from (never empty)."""
        kind = self.kind
        if kind is KeyKind.IP or token is None:
            return "ip:" + ip_key(client_ip, ipv6_prefix)
        if kind is KeyKind.SUBJECT:
            if token.subject:
                return "sub:" + token.subject
            if token.client_id:
                return "client:" + token.client_id
        elif kind is KeyKind.CLIENT:
            if token.client_id:
                return "client:" + token.client_id
        elif kind is KeyKind.ISSUER:
            return "iss:" + token.issuer
        elif kind is KeyKind.CLAIM:
            claim = token.claims.get(self.claim or "")
            if isinstance(claim, str) and claim:
                return "claim:" + claim
            if claim is not None and claim != "" and not isinstance(claim, str):
                return "claim-json:" + orjson.dumps(claim, option=orjson.OPT_SORT_KEYS).decode()
        return "fp:" + token.fingerprint


def ip_key(client_ip: str, ipv6_prefix: int = 64) -> str:
    """The address an ``ip`` limit counts by: IPv4 as is (also when IPv4-mapped), IPv6 by its
    /``ipv6_prefix`` network, since one IPv6 subscriber usually holds a whole /64 to rotate through."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


# --- limits and overrides ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """One enforced limit. ``scope`` namespaces its counters: the route name, or ``*`` for the
    default limits every route shares (a caller's default budget is one budget, whatever route)."""

    name: str
    key: KeySpec
    rate: Rate
    burst: int
    on_redis_error: OnRedisError = "allow"
    scope: str = "*"
    # the header texts of this limit, made once: "name" as an sf-string, and its RateLimit-Policy item
    quoted: str = field(init=False, repr=False, compare=False)
    policy: str = field(init=False, repr=False, compare=False)
    resp_args: bytes = field(init=False, repr=False, compare=False)  # interval and burst as RESP bulk strings

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if self.burst * self.rate.interval_us > _MAX_TOLERANCE_US:
            raise ValueError("burst / rate spans more than 366 days")
        quoted = sf_string(self.name)
        object.__setattr__(self, "quoted", quoted)
        object.__setattr__(self, "policy", f"{quoted};q={self.rate.count};w={self.rate.period}")
        object.__setattr__(self, "resp_args", _bulk(self.interval_us) + _bulk(self.burst))

    @property
    def interval_us(self) -> int:
        return self.rate.interval_us


@dataclass(frozen=True, slots=True)
class Override:
    """Another rate (or none: ``exempt``) for the callers it matches: a partner client gets more.

    It matches a token whose client is one of ``clients`` or that carries one of ``scopes``
    (either), optionally only for ``issuers``, only on ``routes`` and only for the limits named
    in ``limits`` (None: every route / every limit). The first matching override of the list
    wins, so more specific ones go first.
    """

    clients: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    issuers: frozenset[str] | None = None
    routes: frozenset[str] | None = None
    limits: frozenset[str] | None = None
    rate: Rate | None = None
    burst: int | None = None
    exempt: bool = False

    def matches(self, route: str, limit: Limit, token: ValidatedToken | None) -> bool:
        if token is None:
            return False
        if self.routes is not None and route not in self.routes:
            return False
        if self.limits is not None and limit.name not in self.limits:
            return False
        if self.issuers is not None and token.issuer not in self.issuers:
            return False
        return (token.client_id is not None and token.client_id in self.clients) or not self.scopes.isdisjoint(
            token.scopes
        )

    def apply(self, limit: Limit) -> Limit | None:
        """The limit as this override changes it; None when the caller is exempt."""
        if self.exempt:
            return None
        rate = self.rate or limit.rate
        # a new rate without a burst gets that rate's default burst (its count)
        burst = self.burst or (rate.count if self.rate is not None else limit.burst)
        # a burst alone may not fit every limit's rate: capped where the counters stay exact
        burst = min(burst, _MAX_TOLERANCE_US // rate.interval_us)
        return replace(limit, rate=rate, burst=burst)


def select_limits(
    limits: Sequence[Limit], overrides: Sequence[Override], route: str, token: ValidatedToken | None
) -> list[Limit]:
    """The limits that apply to this caller on ``route``: each replaced by its first matching
    override, dropped when that override exempts the caller."""
    if not overrides or token is None:
        return list(limits)
    selected = []
    for limit in limits:
        override = next((o for o in overrides if o.matches(route, limit, token)), None)
        changed = limit if override is None else override.apply(limit)
        if changed is not None:
            selected.append(changed)
    return selected


@dataclass(frozen=True, slots=True)
class Hit:
    """A limit bound to this request's counter (``value`` as ``KeySpec.value`` gives it)."""

    limit: Limit
    value: str

    def redis_key(self, prefix: str) -> str:
        # hashed: a claim value may be long or odd, and identities never sit in Redis in clear
        digest = hashlib.sha256(self.value.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{prefix}{self.limit.scope}:{self.limit.name}:{digest}"


def bind(
    limits: Iterable[Limit], token: ValidatedToken | None, client_ip: str, ipv6_prefix: int = 64
) -> list[Hit]:
    """Each limit with this request's counter."""
    return [Hit(limit, limit.key.value(token, client_ip, ipv6_prefix)) for limit in limits]


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A route's limits split by when they can be evaluated.

    ``before_auth`` (``ip`` limits) need no token: checked before the token is validated, so that a
    flood of bad tokens is refused before it costs signature checks. ``after_auth`` need the
    validated token (and its overrides). A route with both costs two round trips; with one kind, one;
    with none, none.
    """

    route: str
    before_auth: tuple[Limit, ...] = ()
    after_auth: tuple[Limit, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.before_auth or self.after_auth)


# --- the answer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit's state after the request: what the ``RateLimit`` header reports for it."""

    limit: Limit
    allowed: bool  # this limit alone would admit the request
    remaining: int  # requests that would pass now, after this one if it was admitted
    reset_after: float  # seconds until the bucket is full again
    retry_after: float  # seconds until this limit admits one request (0 when it does now)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for all limits of a request. ``degraded``: Redis could not be asked, and the
    limits' ``on_redis_error`` policies answered (``states`` is then empty)."""

    allowed: bool
    retry_after: float = 0.0
    states: tuple[LimitState, ...] = ()
    limits: tuple[Limit, ...] = ()
    degraded: bool = False

    @property
    def denied_by(self) -> tuple[Limit, ...]:
        """The limits that refused (with ``degraded``: those whose policy is ``deny``)."""
        if self.degraded:
            return () if self.allowed else tuple(lim for lim in self.limits if lim.on_redis_error == "deny")
        return tuple(state.limit for state in self.states if not state.allowed)

    @property
    def reason(self) -> Reason | None:
        """The decision reason of a refusal (None when allowed)."""
        if self.allowed:
            return None
        return Reason.RATE_LIMIT_UNAVAILABLE if self.degraded else Reason.RATE_LIMITED

    @property
    def retry_after_seconds(self) -> int:
        """``Retry-After`` (delay-seconds, rounded up, at least 1 on a refusal)."""
        return max(1, math.ceil(self.retry_after)) if not self.allowed else math.ceil(self.retry_after)

    def headers(self, *, retry_after: bool = True) -> list[tuple[str, str]]:
        """``RateLimit-Policy`` and ``RateLimit`` (and ``Retry-After`` on a refusal)."""
        return ratelimit_headers(self, retry_after=retry_after)


ALLOWED = Verdict(allowed=True)


def combine(*verdicts: Verdict) -> Verdict:
    """One verdict for the headers of a request checked in two steps (``before_auth`` limits, then
    ``after_auth``): refused if either refused, the longer wait, every limit's state."""
    present = [v for v in verdicts if v.limits or v.states]
    if len(present) <= 1:
        return present[0] if present else ALLOWED
    return Verdict(
        allowed=all(v.allowed for v in present), retry_after=max(v.retry_after for v in present),
        states=tuple(s for v in present for s in v.states), limits=tuple(lim for v in present for lim in v.limits),
        degraded=any(v.degraded for v in present),
    )


def sf_string(value: str) -> str:
    """An RFC 8941 sf-string (printable ASCII; backslash and quote escaped); others replaced by ``?``."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ratelimit_headers(verdict: Verdict, *, retry_after: bool = True) -> list[tuple[str, str]]:
    """The draft-ietf-httpapi-ratelimit-headers fields for a verdict (empty when no limit applied).

    ``RateLimit-Policy`` lists each limit's quota (``q``, the count) and window (``w``, seconds);
    ``RateLimit`` its remaining quota (``r``) and ``t``: for a refusing limit the seconds until
    it admits again (equal to ``Retry-After``, as the draft asks), else the seconds until its
    bucket is full. No ``pk`` is sent: a partition key would echo an identity or its hash.
    """
    limits = verdict.limits or tuple(state.limit for state in verdict.states)
    if not limits:
        return []
    headers = [("RateLimit-Policy", ", ".join([lim.policy for lim in limits]))]
    if verdict.states:
        headers.append(("RateLimit", ", ".join([
            f"{s.limit.quoted};r={s.remaining};t={math.ceil(s.reset_after if s.allowed else s.retry_after)}"
            for s in verdict.states
        ])))
    if retry_after and not verdict.allowed:
        headers.append(("Retry-After", str(verdict.retry_after_seconds)))
    return headers


# --- GCRA ----------------------------------------------------------------------------------


def gcra(tat_us: int | None, now_us: int, interval_us: int, burst: int) -> tuple[bool, int, int, int, int]:
    """One limit's decision: (allowed, new TAT, remaining, reset_after µs, retry_after µs).

    The same arithmetic as the Lua script; the new TAT is only stored when every limit admits.
    """
    tat = now_us if tat_us is None or tat_us < now_us else tat_us
    new_tat = tat + interval_us
    allow_at = new_tat - interval_us * burst
    diff = now_us - allow_at
    if diff < 0:
        return False, tat, 0, tat - now_us, -diff
    return True, new_tat, diff // interval_us, new_tat - now_us, 0


def _states(
    limits: Sequence[Limit], answers: Sequence[tuple[bool, int, int, int]], all_allowed: bool
) -> tuple[LimitState, ...]:
    """``answers``: (allowed, remaining, reset_after µs, retry_after µs) per limit. When the
    request was refused, limits that would have admitted it were not charged: their remaining
    is one more and their bucket one interval fuller than the charged numbers say."""
    states = []
    for limit, (allowed, remaining, reset_us, retry_us) in zip(limits, answers, strict=True):
        if allowed and not all_allowed:
            remaining, reset_us = min(limit.burst, remaining + 1), max(0, reset_us - limit.interval_us)
        states.append(LimitState(limit, allowed, remaining, reset_us / _US, retry_us / _US))
    return tuple(states)


def _verdict(limits: Sequence[Limit], answers: Sequence[tuple[bool, int, int, int]]) -> Verdict:
    all_allowed = all(answer[0] for answer in answers)
    retry_us = 0 if all_allowed else max(answer[3] for answer in answers)
    return Verdict(all_allowed, retry_us / _US, _states(limits, answers, all_allowed), tuple(limits))


def _count_refusals(route: str, verdict: Verdict) -> None:
    for limit in verdict.denied_by:
        metrics.RATE_LIMITED.labels(route, limit.name).inc()


def _unique(hits: Sequence[Hit]) -> list[Hit]:
    """One hit per counter: the same limit listed twice would otherwise be charged twice."""
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for hit in hits:
        ident = (hit.limit.scope, hit.limit.name, hit.value)
        if ident not in seen:
            seen.add(ident)
            unique.append(hit)
    return unique


class LocalLimiter:
    """GCRA in this process's memory: limits hold per process (per worker, per replica).

    At most ``max_keys`` counters are kept; beyond that the least recently used is forgotten
    (its caller starts with a full bucket again), so a flood of distinct callers cannot grow
    memory without bound. A counter whose TAT has passed holds nothing and is dropped first.
    """

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], int] | None = None) -> None:
        self.max_keys = max_keys
        self._clock = clock or (lambda: time.monotonic_ns() // 1000)
        self._tats: OrderedDict[tuple[str, str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    async def check(self, route: str, hits: Sequence[Hit]) -> Verdict:
        return self.check_now(route, hits)

    def check_now(self, route: str, hits: Sequence[Hit]) -> Verdict:
        """The decision, synchronously (nothing here waits)."""
        if not hits:
            return ALLOWED
        hits = _unique(hits)
        now = self._clock()
        tats = self._tats
        idents = [(h.limit.scope, h.limit.name, h.value) for h in hits]
        decided = [
            gcra(tats.get(ident), now, h.limit.interval_us, h.limit.burst)
            for h, ident in zip(hits, idents, strict=True)
        ]
        verdict = _verdict([h.limit for h in hits], [(a, r, reset, retry) for a, _, r, reset, retry in decided])
        if verdict.allowed:
            for ident, answer in zip(idents, decided, strict=True):
                tats[ident] = answer[1]
                tats.move_to_end(ident)
            self._evict()
        else:
            _count_refusals(route, verdict)
        return verdict

    def _evict(self) -> None:
        # least recently charged first: with every write moved to the end, the front holds the
        # counters idle the longest, which are also the first whose TAT has passed (holding nothing)
        tats = self._tats
        while len(tats) > self.max_keys:
            tats.popitem(last=False)

    async def close(self) -> None:
        return None


# --- Redis ---------------------------------------------------------------------------------

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


# --- a lean RESP connection ------------------------------------------------------------------
#
# redis-py's asyncio client costs about 100 us of CPU per command here (a pool lock, timeouts,
# its parser): more than the rest of a request's decision. The limiter only ever sends EVALSHA
# (EVAL once after a script flush, AUTH and SELECT when connecting), so it speaks RESP itself on
# one pipelined connection per process: each command is written at once and the replies, which
# Redis sends in order, resolve the waiting calls in order. redis:// and unix:// URLs take this
# path; rediss:// and URLs with options go through redis-py.


class RespError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def _line(buffer: bytearray, pos: int) -> tuple[bytes, int]:
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    return bytes(buffer[pos:end]), end + 2


def parse_reply(buffer: bytearray, pos: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``buffer`` at ``pos``: (value, the position after it); _Incomplete
    when the buffer holds only part of it. Integers are ints, bulk strings bytes, errors RespError."""
    line, pos = _line(buffer, pos)
    kind, body = line[:1], line[1:]
    if kind == b":":
        return int(body), pos
    if kind == b"*":
        count = int(body)
        items: list[Any] = []
        for _ in range(max(count, 0)):
            end = buffer.find(b"\r\n", pos)
            if end > pos and buffer[pos] == 0x3A:  # ":": an integer, the script's every item, read here
                items.append(int(buffer[pos + 1:end]))
                pos = end + 2
            else:
                item, pos = parse_reply(buffer, pos)
                items.append(item)
        return (items if count >= 0 else None), pos
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _Incomplete
        return bytes(buffer[pos:pos + size]), pos + size + 2
    if kind == b"+":
        return body.decode("utf-8", "replace"), pos
    if kind == b"-":
        return RespError(body.decode("utf-8", "replace")), pos
    raise ValueError(f"not a RESP reply: {line[:40]!r}")


def _bulk(part: bytes | str | int) -> bytes:
    data = part if isinstance(part, bytes) else str(part).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(*parts: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespConnection(asyncio.Protocol):
    """One pipelined connection: ``call`` queues a command and returns the future of its reply.

    The commands queued in one turn of the event loop go out in one write, and the replies of
    one read resolve their calls in order: under load, requests share round trips and system
    calls. A reply later than ``timeout`` fails every waiting call with TimeoutError and closes
    the connection (one timer per connection, not one per call).
    """

    def __init__(self, timeout: float = 0.05) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (call, when it was queued)
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            while pos < len(buffer):
                reply, pos = parse_reply(buffer, pos)
                if not self._waiting:
                    raise ValueError("a reply nobody asked for")
                waiter, _ = self._waiting.popleft()
                if not waiter.done():  # a call whose request was cancelled leaves its future cancelled
                    waiter.set_result(reply)
        except _Incomplete:
            pass
        except ValueError as exc:  # the stream cannot be trusted any more
            self._fail(ConnectionError(f"Redis protocol error: {exc}"))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("Redis closed the connection"))

    def _fail(self, error: Exception) -> None:
        self.lost = True
        self._outgoing.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.abort()
        while self._waiting:
            waiter, _ = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def call(self, command: bytes) -> asyncio.Future[Any]:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectionError("the Redis connection is closed")
        loop = self._loop
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((waiter, loop.time()))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(command)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._watch)
        return waiter

    def _flush(self) -> None:
        if self._outgoing and not self.lost and self.transport is not None:
            self.transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _watch(self) -> None:
        self._watchdog = None
        if self.lost or not self._waiting:
            return
        left = self._waiting[0][1] + self.timeout - self._loop.time()
        if left <= 0:
            self._fail(TimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = self._loop.call_later(left, self._watch)

    def close(self) -> None:
        self._fail(ConnectionError("the Redis connection was closed"))


@dataclass(frozen=True, slots=True)
class RespAddress:
    """Where the lean connection goes: a TCP host and port or a unix socket, with AUTH and SELECT."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def of(cls, redis_url: str) -> RespAddress | None:
        """The address of a plain redis:// or unix:// URL; None for what redis-py should handle."""
        from redis import connection

        parse_url = cast(Callable[[str], dict[str, Any]], connection.parse_url)  # redis-py leaves it unannotated
        options = dict(parse_url(redis_url))
        unix = options.pop("connection_class", None)
        if unix is not None and unix is not connection.UnixDomainSocketConnection:
            return None  # rediss://
        if set(options) - {"host", "port", "db", "username", "password", "path"}:
            return None  # socket options, TLS settings...: redis-py knows them
        return cls(
            host=options.get("host") or "127.0.0.1", port=int(options.get("port") or 6379),
            path=options.get("path"), db=int(options.get("db") or 0),
            username=options.get("username"), password=options.get("password"),
        )

    async def open(self, timeout: float = 0.05) -> RespConnection:
        """A connection ready for commands (AUTH and SELECT done); every wait bounded by ``timeout``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if self.path is not None:
                _, connection = await loop.create_unix_connection(lambda: RespConnection(timeout), self.path)
            else:
                _, connection = await loop.create_connection(lambda: RespConnection(timeout), self.host, self.port)
        setup = []
        if self.password is not None:
            credentials = (self.username, self.password) if self.username else (self.password,)
            setup.append(connection.call(encode_command(b"AUTH", *credentials)))
        if self.db:
            setup.append(connection.call(encode_command(b"SELECT", self.db)))
        for reply in await asyncio.gather(*setup):
            if isinstance(reply, RespError):
                connection.close()
                raise reply
        return connection


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
        if not hits:
            return ALLOWED
        hits = _unique(hits)
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
        verdict = _verdict(limits, answers)
        if not verdict.allowed:
            _count_refusals(route, verdict)
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
        tail = b"".join([_bulk(len(keys)), *map(_bulk, keys), *(limit.resp_args for limit in limits)])
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
        allowed = all(limit.on_redis_error == "allow" for limit in limits)
        metrics.RATE_LIMIT_UNAVAILABLE.labels(route, "allowed" if allowed else "denied").inc()
        self._log_outage(exc)
        verdict = Verdict(allowed, 0.0 if allowed else self.retry_interval, (), tuple(limits), degraded=True)
        if not allowed:
            _count_refusals(route, verdict)
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
        if self._resp is not None:
            self._resp.close()
        if self._address is None and self._owns_client:
            await self._client.aclose()


_EVALSHA = _bulk(b"EVALSHA") + _bulk(GCRA_SHA)
_EVAL = _bulk(b"EVAL") + _bulk(GCRA_SCRIPT)


def _answers(reply: Any, count: int) -> list[tuple[bool, int, int, int]]:
    if not isinstance(reply, list) or len(reply) != 1 + 4 * count:
        raise ValueError("unexpected reply from the rate limit script")
    values = [int(v) for v in reply]
    return [(values[1 + 4 * i] == 1, values[2 + 4 * i], values[3 + 4 * i], values[4 + 4 * i]) for i in range(count)]


Limiter = LocalLimiter | RedisLimiter


# --- configuration -------------------------------------------------------------------------

_TIMEOUT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def _seconds(value: Any) -> float:
    """``50ms``, ``0.2s`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like 50ms or 1s is expected")
    if isinstance(value, int | float):
        return float(value)
    match = _TIMEOUT.match(str(value))
    if match is None:
        raise ValueError(f"{str(value)[:40]!r} is not a duration like 50ms or 1s")
    return float(match.group(1)) * (0.001 if match.group(2) == "ms" else 1.0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Model):
    """One entry of ``routes[].rate_limits`` or ``rate_limiting.default_limits``."""

    key: str
    rate: str
    burst: int | None = Field(default=None, ge=1, le=_MAX_COUNT)
    name: str | None = None  # the policy name in the headers and the metric; default: the key
    on_redis_error: OnRedisError | None = None  # default: rate_limiting.on_redis_error

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        KeySpec.parse(value)
        return value

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not POLICY_NAME.match(value):
            raise ValueError("a limit name is 1-64 letters, digits or _ . : - (it is sent in RateLimit headers)")
        return value

    @model_validator(mode="after")
    def _tolerance(self) -> RateLimitConfig:
        rate = parse_rate(self.rate)
        if (self.burst or rate.count) * rate.interval_us > _MAX_TOLERANCE_US:
            raise ValueError("burst / rate spans more than 366 days")
        return self


class RateLimitOverrideConfig(_Model):
    """One entry of ``rate_limiting.overrides``."""

    clients: list[str] = []
    scopes: list[str] = []
    issuers: list[str] | None = None
    routes: list[str] | None = None
    limits: list[str] | None = None
    rate: str | None = None
    burst: int | None = Field(default=None, ge=1, le=_MAX_COUNT)
    exempt: bool = False

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @model_validator(mode="after")
    def _meaningful(self) -> RateLimitOverrideConfig:
        if not (self.clients or self.scopes):
            raise ValueError("an override names the clients or scopes it is for")
        if self.exempt == (self.rate is not None or self.burst is not None):
            raise ValueError("an override sets rate and/or burst, or exempt: true (not both)")
        return self


class RateLimitingConfig(_Model):
    """The top-level ``rate_limiting`` section."""

    redis_url: str | None = None  # omitted: counters per process
    on_redis_error: OnRedisError = "allow"
    timeout: float = 0.05  # per Redis call; "50ms"
    retry_interval: float = 1.0  # Redis left alone this long after a failure
    key_prefix: str = "gateway:ratelimit:"
    headers: bool = True  # RateLimit-Policy / RateLimit on allowed responses too
    ipv6_prefix: int = Field(default=64, ge=32, le=128)
    local_max_keys: int = Field(default=100_000, ge=1)
    default_limits: list[RateLimitConfig] = []
    overrides: list[RateLimitOverrideConfig] = []

    @field_validator("timeout", "retry_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = _seconds(value)
        if not 0.001 <= seconds <= 60:
            raise ValueError("must be between 1ms and 60s")
        return seconds


def compile_limits(
    entries: Sequence[RateLimitConfig], scope: str, default_policy: OnRedisError = "allow"
) -> tuple[Limit, ...]:
    """Config entries as limits; a missing name is the key (then ``key-2``, ``key-3`` for repeats)."""
    limits: list[Limit] = []
    names: set[str] = set()
    for entry in entries:
        rate = parse_rate(entry.rate)
        base = entry.name or str(KeySpec.parse(entry.key))
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.add(name)
        limits.append(Limit(
            name=name, key=KeySpec.parse(entry.key), rate=rate, burst=entry.burst or rate.count,
            on_redis_error=entry.on_redis_error or default_policy, scope=scope,
        ))
    return tuple(limits)


def compile_overrides(entries: Sequence[RateLimitOverrideConfig]) -> tuple[Override, ...]:
    def optional(values: list[str] | None) -> frozenset[str] | None:
        return frozenset(values) if values is not None else None

    return tuple(
        Override(
            clients=frozenset(e.clients), scopes=frozenset(e.scopes), issuers=optional(e.issuers),
            routes=optional(e.routes), limits=optional(e.limits), rate=parse_rate(e.rate) if e.rate else None,
            burst=e.burst, exempt=e.exempt,
        )
        for e in entries
    )


def route_plan(
    config: RateLimitingConfig, route: str, route_limits: Sequence[RateLimitConfig] = ()
) -> RoutePlan:
    """The limits of ``route``: the shared defaults (scope ``*``) and its own (scope: its name)."""
    limits = (
        *compile_limits(config.default_limits, "*", config.on_redis_error),
        *compile_limits(route_limits, route, config.on_redis_error),
    )
    return RoutePlan(
        route,
        before_auth=tuple(lim for lim in limits if not lim.key.needs_token),
        after_auth=tuple(lim for lim in limits if lim.key.needs_token),
    )


def build_limiter(config: RateLimitingConfig) -> Limiter:
    """Redis counters when ``redis_url`` is set, else this process's."""
    if config.redis_url is None:
        return LocalLimiter(config.local_max_keys)
    return RedisLimiter(
        config.redis_url, key_prefix=config.key_prefix, timeout=config.timeout, retry_interval=config.retry_interval,
    )
