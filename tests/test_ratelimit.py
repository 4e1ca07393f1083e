"""Rate limits keyed by identity (gateway/ratelimit/) against a real redis-server.

Shared counters are exercised by two limiter instances with their own Redis connections (as two
replicas would have); outages are real: a redis-server process of the test's own is killed, a
port nobody listens on is used, and a TCP server that accepts and never answers stands in for a
frozen Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from gateway.ratelimit import (
    GCRA_SHA,
    Hit,
    KeyKind,
    KeySpec,
    Limit,
    LimitState,
    LocalLimiter,
    Override,
    RateLimitConfig,
    RateLimitingConfig,
    RedisLimiter,
    RespAddress,
    RespError,
    Verdict,
    bind,
    build_limiter,
    combine,
    compile_limits,
    compile_overrides,
    encode_command,
    ip_key,
    parse_rate,
    parse_reply,
    ratelimit_headers,
    route_plan,
    select_limits,
    sf_string,
)
from gateway.reasons import Reason
from gateway.tokens.token import ValidatedToken
from tests.helpers import free_port, metric

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def token(
    subject: str | None = "alice", client: str | None = "app", scopes: str = "search", **claims: Any
) -> ValidatedToken:
    return ValidatedToken(
        issuer="https://as.example", subject=subject, client_id=client, scopes=frozenset(scopes.split()),
        expires_at=time.time() + 300, fingerprint=uuid.uuid4().hex * 2, claims=claims,
    )


def limit(name: str = "subject", key: str = "subject", rate: str = "10/s", burst: int | None = None,
          on_redis_error: str = "allow", scope: str = "search") -> Limit:
    parsed = parse_rate(rate)
    return Limit(name, KeySpec.parse(key), parsed, burst or parsed.count, on_redis_error, scope)  # type: ignore[arg-type]



@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:rl:"


@pytest.fixture
async def limiters(redis_url: str, prefix: str) -> AsyncIterator[list[RedisLimiter]]:
    """Two limiters with their own connections: two replicas sharing one Redis."""
    made = [RedisLimiter(redis_url, key_prefix=prefix, timeout=1.0) for _ in range(2)]
    yield made
    for limiter in made:
        await limiter.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class OwnRedis:
    """A redis-server process of this test's own, to kill and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), __import__("socket").create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: a frozen Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.transport.abort()
    server.close()


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "count", "period"), [
    ("10/s", 10, 1), ("1000/m", 1000, 60), ("5000/h", 5000, 3600), ("100000/d", 100000, 86400),
    ("100/10s", 100, 10), ("30/15m", 30, 900), (" 7 / minute ", 7, 60), ("1/D", 1, 86400),
])
def test_rates_parse_with_every_unit(text: str, count: int, period: int) -> None:
    rate = parse_rate(text)
    assert (rate.count, rate.period) == (count, period)
    assert rate.interval_us == round(period * 1_000_000 / count)


@pytest.mark.parametrize("text", [
    "0/s", "-1/s", "10", "10/", "/s", "10/x", "10/0s", "1e3/s", "10.5/s", "10/s/s", "10 per second", "",
    "99999999999/s", "10/367d", "2000000/s", "10/s\n", "10/s\x00", "\uff11\uff10/s", "10/\uff53", None, 10, ["10/s"],
])
def test_malformed_or_absurd_rates_are_refused(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_limit_keys_parse_and_refuse_unknown_kinds() -> None:
    assert KeySpec.parse("subject") == KeySpec(KeyKind.SUBJECT)
    assert KeySpec.parse("claim:tenant_id") == KeySpec(KeyKind.CLAIM, "tenant_id")
    assert str(KeySpec.parse("claim:org/tenant")) == "claim:org/tenant"
    assert not KeySpec.parse("ip").needs_token and KeySpec.parse("token").needs_token
    for bad in ("claim", "claim:", "claim:a b", "claim:" + "x" * 200, "user", "Subject", "", "ip ", None, 3):
        with pytest.raises(ValueError):
            KeySpec.parse(bad)


# --- keys ---------------------------------------------------------------------------------------


def test_each_key_counts_by_its_identity_and_falls_back_when_missing() -> None:
    tok = token(tenant="acme", level=3, groups=["b", "a"])
    ip = "203.0.113.7"
    assert KeySpec.parse("subject").value(tok, ip) == "sub:alice"
    assert KeySpec.parse("client").value(tok, ip) == "client:app"
    assert KeySpec.parse("token").value(tok, ip) == "fp:" + tok.fingerprint
    assert KeySpec.parse("issuer").value(tok, ip) == "iss:https://as.example"
    assert KeySpec.parse("ip").value(tok, ip) == "ip:203.0.113.7"
    assert KeySpec.parse("claim:tenant").value(tok, ip) == "claim:acme"
    assert KeySpec.parse("claim:level").value(tok, ip) == "claim-json:3"
    assert KeySpec.parse("claim:groups").value(tok, ip) == 'claim-json:["b","a"]'
    # missing values: never unlimited, never one shared "unknown" counter
    no_sub = token(subject=None)
    assert KeySpec.parse("subject").value(no_sub, ip) == "client:app"
    bare = token(subject=None, client=None)
    assert KeySpec.parse("subject").value(bare, ip) == "fp:" + bare.fingerprint
    assert KeySpec.parse("client").value(bare, ip) == "fp:" + bare.fingerprint
    assert KeySpec.parse("claim:tenant").value(bare, ip) == "fp:" + bare.fingerprint
    assert KeySpec.parse("claim:tenant").value(token(tenant=""), ip).startswith("fp:")
    assert KeySpec.parse("claim:tenant").value(token(tenant=None), ip).startswith("fp:")
    # no token (a public route): every key counts by the client address
    for key in ("subject", "client", "token", "issuer", "claim:tenant"):
        assert KeySpec.parse(key).value(None, ip) == "ip:203.0.113.7"


def test_identities_from_different_sources_never_share_a_counter() -> None:
    # a subject named like a client, or a claim holding a fingerprint, is another caller
    tok = token(subject="app", client="app", tenant="app")
    values = {KeySpec.parse(k).value(tok, "app") for k in ("subject", "client", "claim:tenant", "ip")}
    assert len(values) == 4


def test_ipv6_callers_count_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("2001:db8:1:2::1", 128) == "2001:db8:1:2::1/128"
    assert ip_key("::ffff:198.51.100.4") == "198.51.100.4"
    assert ip_key("fe80::1%eth0") == "fe80::/64"
    assert ip_key("not an address") == "not an address"
    assert ip_key("") == "unknown"


def test_redis_keys_hold_no_identity_in_clear_and_stay_short() -> None:
    huge = "x" * 100_000
    hits = bind([limit(key="claim:blob"), limit(name="sub", key="subject")], token(subject="alice", blob=huge), "::1")
    keys = [h.redis_key("gw:") for h in hits]
    assert all("alice" not in k and len(k) < 80 for k in keys)
    assert keys[0].startswith("gw:search:subject:")
    assert Hit(hits[1].limit, "sub:bob").redis_key("gw:") != keys[1]


# --- overrides ----------------------------------------------------------------------------------


def test_a_partner_client_gets_its_override_and_others_keep_the_limit() -> None:
    base = [limit(name="per-subject", rate="100/m", burst=20), limit(name="per-ip", key="ip", rate="1000/m")]
    overrides = compile_overrides([
        RateLimitingConfig.model_validate({"overrides": [{"clients": ["partner"], "limits": ["per-subject"],
                                                           "rate": "1000/m", "burst": 200}]}).overrides[0],
    ])
    partner = select_limits(base, overrides, "search", token(client="partner"))
    assert [(lim.name, lim.rate.count, lim.burst) for lim in partner] == [
        ("per-subject", 1000, 200), ("per-ip", 1000, 1000),
    ]
    assert select_limits(base, overrides, "search", token(client="someone")) == base
    assert select_limits(base, overrides, "search", None) == base


def test_overrides_match_by_scope_route_issuer_and_the_first_match_wins() -> None:
    base = [limit(rate="10/s")]
    premium = Override(scopes=frozenset({"premium"}), rate=parse_rate("100/s"))
    only_other_route = Override(scopes=frozenset({"premium"}), routes=frozenset({"other"}), exempt=True)
    other_issuer = Override(scopes=frozenset({"premium"}), issuers=frozenset({"https://else"}), exempt=True)
    chosen = select_limits(base, [only_other_route, other_issuer, premium], "search", token(scopes="search premium"))
    assert [(lim.rate.count, lim.burst) for lim in chosen] == [(100, 100)]  # a new rate brings its default burst
    assert select_limits(base, [only_other_route], "other", token(scopes="premium")) == []  # exempt there
    exempt_then_more = [Override(clients=frozenset({"app"}), exempt=True), premium]
    assert select_limits(base, exempt_then_more, "search", token(scopes="premium")) == []
    burst_only = Override(clients=frozenset({"app"}), burst=50)
    assert [(lim.rate.count, lim.burst) for lim in select_limits(base, [burst_only], "search", token())] == [(10, 50)]


# --- configuration ------------------------------------------------------------------------------


def test_the_configuration_shape_compiles_into_route_plans() -> None:
    config = RateLimitingConfig.model_validate({
        "redis_url": "redis://127.0.0.1:6379/0", "on_redis_error": "deny", "timeout": "50ms",
        "default_limits": [{"key": "ip", "rate": "1000/m"}],
        "overrides": [{"scopes": ["partner"], "rate": "10000/m"}],
    })
    assert config.timeout == pytest.approx(0.05)
    route_limits = [RateLimitConfig.model_validate(x) for x in (
        {"key": "subject", "rate": "100/m", "burst": 20},
        {"key": "subject", "rate": "10000/d", "on_redis_error": "allow"},
        {"key": "claim:tenant", "rate": "5/s", "name": "tenant"},
    )]
    plan = route_plan(config, "search", route_limits)
    assert [(lim.name, lim.scope, lim.on_redis_error) for lim in plan.before_auth] == [("ip", "*", "deny")]
    assert [(lim.name, lim.burst, lim.on_redis_error) for lim in plan.after_auth] == [
        ("subject", 20, "deny"), ("subject-2", 10000, "allow"), ("tenant", 5, "deny"),
    ]
    assert plan and not route_plan(RateLimitingConfig(), "plain")
    assert isinstance(build_limiter(RateLimitingConfig()), LocalLimiter)


@pytest.mark.parametrize(("section", "data"), [
    ("limit", {"key": "user", "rate": "10/s"}),
    ("limit", {"key": "subject", "rate": "ten per second"}),
    ("limit", {"key": "subject", "rate": "10/s", "burst": 0}),
    ("limit", {"key": "subject", "rate": "10/s", "name": '"quoted"'}),
    ("limit", {"key": "subject", "rate": "10/s", "name": "a b"}),
    ("limit", {"key": "subject", "rate": "10/s", "on_redis_error": "maybe"}),
    ("limit", {"key": "subject", "rate": "10/s", "window": "1m"}),
    ("limit", {"key": "subject", "rate": "1/d", "burst": 1000}),  # a bucket spanning 1000 days
    ("section", {"on_redis_error": "fail_open"}),
    ("section", {"timeout": "forever"}),
    ("section", {"timeout": "0ms"}),
    ("section", {"overrides": [{"rate": "10/s"}]}),  # for whom?
    ("section", {"overrides": [{"clients": ["a"]}]}),  # to do what?
    ("section", {"overrides": [{"clients": ["a"], "rate": "10/s", "exempt": True}]}),
    ("section", {"unknown_key": 1}),
])
def test_configuration_mistakes_are_refused(section: str, data: dict[str, Any]) -> None:
    model = RateLimitConfig if section == "limit" else RateLimitingConfig
    with pytest.raises(ValidationError):
        model.model_validate(data)


def test_repeated_keys_get_distinct_policy_names() -> None:
    entries = [RateLimitConfig(key="ip", rate="10/s"), RateLimitConfig(key="ip", rate="100/m"),
               RateLimitConfig(key="ip", rate="1000/h")]
    assert [lim.name for lim in compile_limits(entries, "r")] == ["ip", "ip-2", "ip-3"]


# --- headers ------------------------------------------------------------------------------------


def test_ratelimit_headers_follow_the_draft_syntax() -> None:
    sub, ip = limit(name="subject", rate="100/m", burst=20), limit(name="ip", key="ip", rate="1000/h")
    allowed = Verdict(True, 0.0, (LimitState(sub, True, 19, 0.6, 0.0), LimitState(ip, True, 998, 7.2, 0.0)), (sub, ip))
    assert ratelimit_headers(allowed) == [
        ("RateLimit-Policy", '"subject";q=100;w=60, "ip";q=1000;w=3600'),
        ("RateLimit", '"subject";r=19;t=1, "ip";r=998;t=8'),
    ]
    states = (LimitState(sub, False, 0, 12.0, 0.25), LimitState(ip, True, 999, 3.6, 0.0))
    refused = Verdict(False, 0.25, states, (sub, ip))
    assert refused.headers() == [
        ("RateLimit-Policy", '"subject";q=100;w=60, "ip";q=1000;w=3600'),
        ("RateLimit", '"subject";r=0;t=1, "ip";r=999;t=4'),
        ("Retry-After", "1"),
    ]
    assert refused.reason is Reason.RATE_LIMITED and refused.denied_by == (sub,)
    # Redis unavailable: the policies are known, the counters are not
    degraded = Verdict(False, 1.0, (), (sub,), degraded=True)
    assert degraded.headers() == [("RateLimit-Policy", '"subject";q=100;w=60'), ("Retry-After", "1")]
    assert degraded.reason is Reason.RATE_LIMIT_UNAVAILABLE
    assert Verdict(True).headers() == []
    both = combine(Verdict(True, 0.0, (LimitState(ip, True, 998, 7.2, 0.0),), (ip,)), refused, Verdict(True))
    assert both.headers() == [
        ("RateLimit-Policy", '"ip";q=1000;w=3600, "subject";q=100;w=60, "ip";q=1000;w=3600'),
        ("RateLimit", '"ip";r=998;t=8, "subject";r=0;t=1, "ip";r=999;t=4'),
        ("Retry-After", "1"),
    ]
    assert combine(Verdict(True), allowed) is allowed and combine() is combine(Verdict(True))
    assert sf_string('a"b\\c\r\n\u00e9') == '"a\\"b\\\\c???"'


# --- the local limiter ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1_000_000)


async def test_local_limiter_admits_the_burst_then_exactly_the_rate() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    hits = bind([limit(rate="10/s", burst=5)], token(), "127.0.0.1")
    results = [await limiter.check("search", hits) for _ in range(7)]
    assert [v.allowed for v in results] == [True] * 5 + [False] * 2
    assert [v.states[0].remaining for v in results[:5]] == [4, 3, 2, 1, 0]
    assert results[5].retry_after == pytest.approx(0.1)
    clock.advance(0.099)
    assert not (await limiter.check("search", hits)).allowed
    clock.advance(0.001)
    assert (await limiter.check("search", hits)).allowed
    clock.advance(1.0)  # ten more intervals, but the bucket holds five
    assert sum([(await limiter.check("search", hits)).allowed for _ in range(8)]) == 5


async def test_local_limiter_charges_nothing_when_one_limit_refuses() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    per_ip, per_sub = limit(name="ip", key="ip", rate="10/m"), limit(name="sub", rate="2/m")
    alice = bind([per_ip, per_sub], token(subject="alice"), "10.0.0.1")
    assert [(await limiter.check("search", alice)).allowed for _ in range(4)] == [True, True, False, False]
    refused = await limiter.check("search", alice)
    assert {s.limit.name: (s.allowed, s.remaining) for s in refused.states} == {"ip": (True, 8), "sub": (False, 0)}
    bob = bind([per_ip, per_sub], token(subject="bob"), "10.0.0.1")
    assert (await limiter.check("search", bob)).states[0].remaining == 7  # alice's refusals cost the ip nothing


async def test_local_limiter_memory_is_bounded() -> None:
    limiter = LocalLimiter(max_keys=100)
    for n in range(1000):
        await limiter.check("search", bind([limit(key="ip")], None, f"10.0.{n // 256}.{n % 256}"))
    assert len(limiter) == 100


async def test_the_same_limit_listed_twice_is_charged_once() -> None:
    limiter = LocalLimiter()
    lim = limit(rate="2/m")
    hits = bind([lim, lim], token(), "127.0.0.1")
    assert [(await limiter.check("search", hits)).allowed for _ in range(3)] == [True, True, False]


# --- Redis: shared counters ---------------------------------------------------------------------


async def test_two_replicas_sharing_redis_admit_exactly_the_limit(limiters: list[RedisLimiter]) -> None:
    hits = bind([limit(rate="25/m")], token(), "127.0.0.1")
    verdicts = await asyncio.gather(*(limiters[n % 2].check("search", hits) for n in range(120)))
    assert sum(v.allowed for v in verdicts) == 25
    assert not any(v.degraded for v in verdicts)
    assert all(0 < v.retry_after <= 2.4 + 0.01 for v in verdicts if not v.allowed)


async def test_redis_burst_then_one_per_interval(limiters: list[RedisLimiter]) -> None:
    a, b = limiters
    hits = bind([limit(rate="4/s", burst=3)], token(), "127.0.0.1")
    first = [await (a if n % 2 else b).check("search", hits) for n in range(5)]
    assert [v.allowed for v in first] == [True, True, True, False, False]
    assert [v.states[0].remaining for v in first[:3]] == [2, 1, 0]
    wait = first[-1].retry_after
    assert 0.2 < wait <= 0.25
    await asyncio.sleep(wait + 0.02)
    assert (await a.check("search", hits)).allowed
    assert not (await b.check("search", hits)).allowed


async def test_redis_charges_nothing_when_one_limit_refuses(limiters: list[RedisLimiter]) -> None:
    a, b = limiters
    per_ip, per_sub = limit(name="ip", key="ip", rate="10/m"), limit(name="sub", rate="2/m")
    alice = bind([per_ip, per_sub], token(subject="alice"), "10.0.0.1")
    assert [(await a.check("search", alice)).allowed for _ in range(5)] == [True, True, False, False, False]
    bob = await b.check("search", bind([per_ip, per_sub], token(subject="bob"), "10.0.0.1"))
    assert bob.allowed
    assert {s.limit.name: s.remaining for s in bob.states} == {"ip": 7, "sub": 1}


async def test_redis_counters_expire_and_hold_no_identity(
    limiters: list[RedisLimiter], redis: Redis, prefix: str
) -> None:
    await limiters[0].check("search", bind([limit(rate="10/m", burst=3)], token(subject="alice"), "10.0.0.1"))
    keys = [k async for k in redis.scan_iter(match=prefix + "*")]
    assert len(keys) == 1 and b"alice" not in keys[0]
    ttl = await redis.pttl(keys[0])
    assert 5_900 <= ttl <= 6_000  # one request: the bucket is full again one interval (6 s) later
    assert b"alice" not in (await redis.get(keys[0]) or b"")


async def test_a_flushed_script_cache_is_reloaded_with_eval(limiters: list[RedisLimiter], redis: Redis) -> None:
    hits = bind([limit(rate="3/m")], token(), "127.0.0.1")
    assert (await limiters[0].check("search", hits)).allowed
    await redis.script_flush()
    assert await redis.script_exists(GCRA_SHA) == [False]
    verdict = await limiters[0].check("search", hits)
    assert verdict.allowed and not verdict.degraded and verdict.states[0].remaining == 1
    assert await redis.script_exists(GCRA_SHA) == [True]


async def test_refusals_are_counted_by_route_and_limit(limiters: list[RedisLimiter]) -> None:
    hits = bind([limit(name="counted", rate="1/m")], token(), "127.0.0.1")
    before = metric("gateway_rate_limited_total", route="metered", limit="counted")
    for _ in range(3):
        await limiters[0].check("metered", hits)
    assert metric("gateway_rate_limited_total", route="metered", limit="counted") == before + 2


async def test_overload_of_100_per_second_admits_100_plus_minus_5_each_second(limiters: list[RedisLimiter]) -> None:
    hits = bind([limit(rate="100/s")], token(), "127.0.0.1")
    admitted: list[float] = []
    degraded = 0
    stop_at = time.monotonic() + 3.2

    async def hammer(limiter: RedisLimiter) -> None:
        nonlocal degraded
        while time.monotonic() < stop_at:
            verdict = await limiter.check("search", hits)
            degraded += verdict.degraded
            if verdict.allowed:
                admitted.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(hammer(limiters[n % 2]) for n in range(16)))
    assert degraded == 0
    # the first 1.2 s spend the full bucket (100) on top of the rate; then two whole seconds are measured
    window = started + 1.2
    per_second = [sum(window + k <= t < window + k + 1 for t in admitted) for k in range(2)]
    assert all(95 <= n <= 105 for n in per_second), per_second
    assert sum(t < window for t in admitted) >= 150  # the burst did pass at first


# --- Redis unavailable --------------------------------------------------------------------------


async def test_redis_killed_mid_traffic_applies_each_limits_policy_quickly(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisLimiter(own_redis.url, key_prefix="k:", timeout=0.05, retry_interval=0.3)
    open_limit, closed_limit = limit(name="open", rate="1/m"), limit(name="closed", rate="1/m", on_redis_error="deny")
    try:
        assert (await limiter.check("search", bind([open_limit], token(), "::1"))).allowed
        own_redis.kill()
        caplog.set_level(logging.INFO, logger="gateway.ratelimit")
        before = metric("gateway_rate_limit_unavailable_total", route="search", outcome="allowed")
        started = time.monotonic()
        fail_open = await limiter.check("search", bind([open_limit], token(), "::1"))
        assert time.monotonic() - started < 0.3
        assert fail_open.allowed and fail_open.degraded and fail_open.reason is None
        fail_closed = await limiter.check("search", bind([open_limit, closed_limit], token(), "::1"))
        assert not fail_closed.allowed and fail_closed.reason is Reason.RATE_LIMIT_UNAVAILABLE
        assert fail_closed.denied_by == (closed_limit,)
        assert ("Retry-After", "1") in fail_closed.headers()
        # while Redis is known down, nobody waits for it
        started = time.monotonic()
        for _ in range(50):
            await limiter.check("search", bind([open_limit], token(), "::1"))
        assert time.monotonic() - started < 0.2
        assert metric("gateway_rate_limit_unavailable_total", route="search", outcome="allowed") >= before + 51
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()
        # back: enforced again from the shared counters
        own_redis.start()
        await asyncio.sleep(0.35)
        hits = bind([open_limit], token(subject="carol"), "::1")
        assert (await limiter.check("search", hits)).allowed
        refused = await limiter.check("search", hits)
        assert not refused.allowed and not refused.degraded
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        await limiter.close()


@pytest.mark.parametrize("frozen", [False, True], ids=["refused", "silent"])
async def test_unreachable_or_silent_redis_never_holds_a_request_past_the_timeout(
    frozen: bool, silent_port: int
) -> None:
    port = silent_port if frozen else free_port()
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", timeout=0.05, retry_interval=0.01)
    try:
        for policy in ("allow", "deny"):
            started = time.monotonic()
            verdict = await limiter.check("search", bind([limit(on_redis_error=policy)], token(), "::1"))
            assert time.monotonic() - started < 0.25
            assert verdict.degraded and verdict.allowed is (policy == "allow")
            await asyncio.sleep(0.02)
    finally:
        await limiter.close()


async def test_no_limits_cost_no_round_trip(silent_port: int) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{silent_port}/0", timeout=5.0)
    try:
        started = time.monotonic()
        verdict = await limiter.check("search", [])
        assert verdict.allowed and not verdict.degraded and time.monotonic() - started < 0.05
    finally:
        await limiter.close()


# --- the lean RESP connection ---------------------------------------------------------------------


def test_plain_urls_take_the_lean_connection_and_others_redis_py() -> None:
    assert RespAddress.of("redis://127.0.0.1:6380/2") == RespAddress("127.0.0.1", 6380, None, 2)
    assert RespAddress.of("redis://user:pw@cache:1/0") == RespAddress("cache", 1, None, 0, "user", "pw")
    assert RespAddress.of("unix:///run/redis.sock?db=3") == RespAddress(path="/run/redis.sock", db=3)
    for url in ("rediss://cache:6380/0", "redis://cache/0?socket_timeout=3", "rediss://cache/0?ssl_cert_reqs=none"):
        assert RespAddress.of(url) is None


def test_replies_parse_whole_or_wait_for_more_bytes() -> None:
    reply = b"*5\r\n:1\r\n:0\r\n:-7\r\n$3\r\nab\n\r\n$-1\r\n+OK\r\n-NOSCRIPT gone\r\n"
    value, end = parse_reply(bytearray(reply))
    assert value == [1, 0, -7, b"ab\n", None] and reply[end:] == b"+OK\r\n-NOSCRIPT gone\r\n"
    error, _ = parse_reply(bytearray(b"-NOSCRIPT gone\r\n"))
    assert isinstance(error, RespError) and str(error) == "NOSCRIPT gone"
    for cut in range(1, len(reply) - 27):  # any prefix of the array is incomplete, never a wrong value
        with pytest.raises(Exception) as incomplete:
            parse_reply(bytearray(reply[:cut]))
        assert type(incomplete.value).__name__ == "_Incomplete"
    for garbage in (b"?what\r\n", b":12x\r\n", b"*x\r\n"):
        with pytest.raises(ValueError):
            parse_reply(bytearray(garbage))
    assert encode_command(b"EVALSHA", "k", 3) == b"*3\r\n$7\r\nEVALSHA\r\n$1\r\nk\r\n$1\r\n3\r\n"


async def test_replies_split_anywhere_resolve_their_calls_in_order() -> None:
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while b"".join(received).count(b"PING") < 3:
            received.append(await reader.read(65536))
        for byte in b":1\r\n*2\r\n:2\r\n$2\r\nhi\r\n-ERR no\r\n":  # one byte per write
            writer.write(bytes([byte]))
            await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        address = RespAddress("127.0.0.1", server.sockets[0].getsockname()[1])
        connection = await address.open(timeout=2.0)
        calls = [connection.call(encode_command(b"PING", n)) for n in range(3)]
        assert await asyncio.gather(*calls[:2]) == [1, [2, b"hi"]]
        assert isinstance(await calls[2], RespError)
        await asyncio.sleep(0.3)  # the server closed: the connection knows
        assert connection.lost
        with pytest.raises(ConnectionError):
            connection.call(encode_command(b"PING"))
    finally:
        server.close()
    assert len(received) == 1  # queued in one turn of the event loop: sent in one write


async def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b":1\r\n:2\r\n")  # two replies to one command
        await writer.drain()
        await asyncio.sleep(1)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        connection = await RespAddress("127.0.0.1", server.sockets[0].getsockname()[1]).open(timeout=2.0)
        first = connection.call(encode_command(b"PING"))
        assert await first == 1
        await asyncio.sleep(0.1)
        assert connection.lost
    finally:
        server.close()


@pytest.fixture
def password_redis(tmp_path: Any) -> Iterator[tuple[int, str]]:
    """A redis-server with a password, also listening on a unix socket."""
    port, socket_path = free_port(), str(tmp_path / "redis.sock")
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "s3cret-pw", "--unixsocket", socket_path, "--unixsocketperm", "700"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not __import__("os").path.exists(socket_path):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    yield port, socket_path
    process.kill()
    process.wait()


async def test_the_lean_connection_authenticates_and_selects_its_database(password_redis: tuple[int, str]) -> None:
    port, socket_path = password_redis
    hits = bind([limit(rate="2/m")], token(), "127.0.0.1")
    for url in (f"redis://:s3cret-pw@127.0.0.1:{port}/3", f"unix://:s3cret-pw@{socket_path}?db=3"):
        limiter = RedisLimiter(url, key_prefix=f"{uuid.uuid4().hex}:", timeout=1.0)
        try:
            verdicts = [await limiter.check("search", hits) for _ in range(3)]
            assert [v.allowed for v in verdicts] == [True, True, False] and not any(v.degraded for v in verdicts)
        finally:
            await limiter.close()
    db3 = Redis.from_url(f"redis://:s3cret-pw@127.0.0.1:{port}/3")
    db0 = Redis.from_url(f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    try:
        assert len(await db3.keys("*")) == 2 and await db0.keys("*") == []
    finally:
        await db3.aclose()
        await db0.aclose()
    wrong = RedisLimiter(f"redis://:wrong@127.0.0.1:{port}/0", timeout=1.0)
    try:
        verdict = await wrong.check("search", hits)
        assert verdict.degraded and verdict.allowed  # refused credentials: Redis is unavailable, the policy answers
    finally:
        await wrong.close()


async def test_a_redis_py_client_still_works(redis_url: str, prefix: str, redis: Redis) -> None:
    client = Redis.from_url(redis_url)
    limiter = RedisLimiter(client=client, key_prefix=prefix, timeout=1.0)
    hits = bind([limit(rate="2/m")], token(), "127.0.0.1")
    try:
        assert [(await limiter.check("search", hits)).allowed for _ in range(3)] == [True, True, False]
        await redis.script_flush()
        other = bind([limit(rate="2/m")], token(subject="zed"), "127.0.0.1")
        assert (await limiter.check("search", other)).allowed
    finally:
        await limiter.close()
        await client.aclose()
