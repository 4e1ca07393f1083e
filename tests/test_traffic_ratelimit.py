"""Rate limits on the one decision path, through real gateways.

Two ``gateway serve`` processes share one limit over one real redis-server; a redis-server of
the test's own is killed while the gateway limits; the ip limit is shown to refuse a flood of
bad tokens before any signature is checked; the proxy, the decision port and the middleware all
answer 429 the same way. Tokens are signed by the in-test issuer with real keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from gateway.cli import main
from gateway.config import ConfigError, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.middleware import setup_tokengate
from gateway.reasons import Reason
from tests.helpers import AUDIENCE, GatewayFactory, base_config, bearer, metric
from tests.traffic_servers import GatewayProcess, OwnRedis, sample, scrape, start_gateway_process

SUBJECT_LIMIT = {"key": "subject", "rate": "5/m"}


def routes_with(issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
                **limits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The base routes, with ``rate_limits`` on the routes named (``list_orders=[...]``)."""
    routes: list[dict[str, Any]] = base_config(issuer, upstream, tmp_path / "unused.jsonl")["routes"]
    for route in routes:
        key = route["name"].replace("-", "_")
        if key in limits:
            route["rate_limits"] = limits[key]
    return routes


async def get(http: aiohttp.ClientSession, url: str, token: str | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    async with http.get(url, headers={**(bearer(token) if token else {}), **(headers or {})}) as response:
        body = await response.json(content_type=None) if response.content_length != 0 else {}
        return response.status, CIMultiDict(response.headers), body


def token_validations() -> float:
    return sum(s.value for family in REGISTRY.collect() for s in family.samples
               if s.name == "gateway_token_validations_total")



@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def processes() -> AsyncIterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.kill()


# --- shared across replicas ------------------------------------------------------------------


async def test_two_gateway_processes_share_one_limit_over_redis(
    issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path, redis_url: str, processes: list[GatewayProcess],
    http: aiohttp.ClientSession,
) -> None:
    config = base_config(issuer, upstream, tmp_path / "unused.jsonl")
    config["routes"] = routes_with(issuer, upstream, tmp_path, list_orders=[SUBJECT_LIMIT])
    config["rate_limiting"] = {"redis_url": redis_url, "key_prefix": f"t{uuid.uuid4().hex[:8]}:rl:"}
    for name in ("a", "b"):
        processes.append(await start_gateway_process(config, tmp_path, name))
    alice, bob = issuer.mint(sub="alice"), issuer.mint(sub="bob")

    answers = [await get(http, f"{processes[n % 2].url}/orders", alice) for n in range(12)]
    assert [status for status, _, _ in answers] == [200] * 5 + [429] * 7
    # one budget, whichever replica counted: the remaining quota falls across both
    remaining = [h["RateLimit"].removeprefix('"subject";').split(";") for _, h, _ in answers[:5]]
    assert [r for r, _ in remaining] == ["r=4", "r=3", "r=2", "r=1", "r=0"]
    # t: until the bucket is full again, one emission interval (12 s) more per request admitted
    assert all(12 * n - 2 <= int(t[2:]) <= 12 * n for n, (_, t) in enumerate(remaining, 1))
    _, headers, body = answers[5]
    assert headers["RateLimit-Policy"] == '"subject";q=5;w=60'
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 12 and headers["RateLimit"] == f'"subject";r=0;t={retry_after}'
    assert body == {"error": "too_many_requests", "reason": "rate_limited", "request_id": headers["X-Request-Id"],
                    "error_description": "a rate limit of this API was exceeded"}
    assert "alice" not in str(headers)  # no partition key: the identity is never echoed
    for process in processes:  # another caller has a budget of its own, on both replicas
        assert (await get(http, f"{process.url}/orders", bob))[0] == 200

    await asyncio.sleep(0.3)  # the audit writers flush every 20 ms
    refused = [r for p in processes for r in p.audit() if r["reason"] == "rate_limited"]
    assert len(refused) == 7
    assert {(r["status"], r["decision"], r["sub"], r["detail"]) for r in refused} == {
        (429, "deny", "alice", "exceeded subject")}
    counted = [sample(await scrape(p.admin_url), "gateway_rate_limited_total", route="list-orders", limit="subject")
               for p in processes]
    assert sum(counted) == 7 and all(counted)


# --- Redis unavailable -------------------------------------------------------------------------


async def test_redis_killed_during_limiting_applies_each_limits_policy(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path, own_redis: OwnRedis,
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    routes = routes_with(issuer, upstream, tmp_path, list_orders=[{"key": "subject", "rate": "3/m"}],
                         order_status=[{"key": "subject", "rate": "3/m", "on_redis_error": "deny"}])
    gw = await make_gateway(routes=routes, rate_limiting={"redis_url": own_redis.url, "timeout": "100ms",
                                                          "retry_interval": "1s"})
    token = issuer.mint(scope="orders:read")
    assert [(await get(http, f"{gw.url}/orders", token))[0] for _ in range(4)] == [200, 200, 200, 429]

    own_redis.kill()
    caplog.set_level(logging.INFO, logger="gateway.ratelimit")
    before = metric("gateway_rate_limit_unavailable_total", route="list-orders", outcome="allowed")
    started = time.monotonic()
    status, headers, _ = await get(http, f"{gw.url}/orders", token)  # on_redis_error: allow (the default)
    assert status == 200 and time.monotonic() - started < 1.0
    assert headers["RateLimit-Policy"] == '"subject";q=3;w=60' and "RateLimit" not in headers  # no counter known
    status, headers, body = await get(http, f"{gw.url}/orders/7/status", token)  # on_redis_error: deny
    assert (status, body["reason"]) == (503, "rate_limit_unavailable")
    assert headers["Retry-After"] == "1"  # when Redis is asked again (retry_interval), not the usual 5
    for _ in range(20):  # Redis is known down: nobody waits for it meanwhile
        assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert time.monotonic() - started < 2.0
    assert metric("gateway_rate_limit_unavailable_total", route="list-orders", outcome="allowed") >= before + 21
    assert metric("gateway_rate_limit_unavailable_total", route="order-status", outcome="denied") >= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1

    own_redis.start()  # back, empty: enforced again from fresh shared counters after retry_interval
    await asyncio.sleep(1.1)
    assert [(await get(http, f"{gw.url}/orders", token))[0] for _ in range(4)] == [200, 200, 200, 429]
    records = await gw.audit_records()
    assert [r["reason"] for r in records if r["route"] == "order-status"] == ["rate_limit_unavailable"]


async def test_a_route_without_limits_never_waits_for_redis(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # a frozen Redis: accepts, never answers

    frozen = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = frozen.sockets[0].getsockname()[1]
    try:
        routes = routes_with(issuer, upstream, tmp_path, list_orders=[SUBJECT_LIMIT])
        gw = await make_gateway(routes=routes, rate_limiting={"redis_url": f"redis://127.0.0.1:{port}/0",
                                                              "timeout": "300ms"})
        token = issuer.mint(scope="orders:read")
        started = time.monotonic()
        status, headers, _ = await get(http, f"{gw.url}/orders/1/status", token)  # no limits on this route
        assert status == 200 and time.monotonic() - started < 0.25 and "RateLimit-Policy" not in headers
        started = time.monotonic()
        assert (await get(http, f"{gw.url}/orders", token))[0] == 200  # limited: waited for Redis, then let pass
        assert 0.25 <= time.monotonic() - started < 1.5
    finally:
        for writer in held:
            writer.transport.abort()
        frozen.close()


# --- the order of the checks ---------------------------------------------------------------------


async def test_the_ip_limit_refuses_a_flood_before_any_signature_is_checked(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    routes = routes_with(issuer, upstream, tmp_path, list_orders=[{"key": "ip", "rate": "3/m"}])
    gw = await make_gateway(routes=routes)
    good = issuer.mint(scope="orders:read")
    header, payload, _ = good.split(".")
    forged = [f"{header}.{payload}.{jwt.utils.base64url_encode(uuid.uuid4().bytes * 8).decode()}" for _ in range(6)]
    before = token_validations()
    statuses = [(await get(http, f"{gw.url}/orders", tok))[0] for tok in forged]
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert token_validations() == before + 3  # the refused three cost no signature check
    assert (await get(http, f"{gw.url}/orders", good))[0] == 429  # the address's budget is spent
    assert (await get(http, f"{gw.url}/orders/1/status", good))[0] == 200  # on this route only
    reasons = [r["reason"] for r in await gw.audit_records() if r["route"] == "list-orders"]
    assert reasons == ["bad_signature"] * 3 + ["rate_limited"] * 4


async def test_identity_limits_charge_authorised_requests_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    routes = routes_with(issuer, upstream, tmp_path, list_orders=[{"key": "subject", "rate": "2/m"}])
    gw = await make_gateway(routes=routes)
    for _ in range(3):  # refused for a missing scope: the subject's budget is untouched
        assert (await get(http, f"{gw.url}/orders", issuer.mint(scope="profile")))[0] == 403
    assert (await get(http, f"{gw.url}/orders", issuer.mint(scope="orders:read", exp=1)))[0] == 401
    statuses = [(await get(http, f"{gw.url}/orders", issuer.mint(scope="orders:read")))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]  # three tokens of one subject: one budget
    assert (await get(http, f"{gw.url}/orders", issuer.mint(sub="carol", scope="orders:read")))[0] == 200


async def test_headers_on_allowed_responses_are_configurable(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    routes = routes_with(issuer, upstream, tmp_path, list_orders=[{"key": "subject", "rate": "1/m"}])
    gw = await make_gateway(routes=routes, rate_limiting={"headers": False})
    token = issuer.mint(scope="orders:read")
    status, headers, _ = await get(http, f"{gw.url}/orders", token)
    assert status == 200 and "RateLimit" not in headers and "RateLimit-Policy" not in headers
    status, headers, _ = await get(http, f"{gw.url}/orders", token)
    assert status == 429 and headers["RateLimit"].startswith('"subject";r=0;t=') and "Retry-After" in headers


async def test_overrides_and_default_limits(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(rate_limiting={
        "default_limits": [{"key": "subject", "rate": "2/m", "name": "per-user"}],
        "overrides": [{"clients": ["partner"], "limits": ["per-user"], "rate": "6/m"},
                      {"scopes": ["orders:admin"], "exempt": True}],
    })
    user = issuer.mint(scope="orders:read")
    # one budget for every route: the default limits are shared
    statuses = [(await get(http, f"{gw.url}/orders", user))[0], (await get(http, f"{gw.url}/orders/1/status", user))[0],
                (await get(http, f"{gw.url}/orders", user))[0]]
    assert statuses == [200, 200, 429]
    partner = issuer.mint(sub="p", scope="orders:read", client_id="partner")
    assert [(await get(http, f"{gw.url}/orders", partner))[0] for _ in range(7)] == [200] * 6 + [429]
    status, headers, _ = await get(http, f"{gw.url}/orders", issuer.mint(sub="p", scope="orders:read",
                                                                         client_id="partner"))
    assert status == 429 and headers["RateLimit-Policy"] == '"per-user";q=6;w=60'  # the partner's own quota
    admin = issuer.mint(sub="ops", scope="orders:read orders:admin")
    answers = [await get(http, f"{gw.url}/orders", admin) for _ in range(5)]
    assert all(status == 200 and "RateLimit" not in headers for status, headers, _ in answers)  # exempt


async def test_a_public_route_counts_callers_by_address(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    routes = routes_with(issuer, upstream, tmp_path, health=[{"key": "subject", "rate": "2/m"}])
    gw = await make_gateway(routes=routes, trusted_proxies=["127.0.0.1/32"])
    statuses = [(await get(http, f"{gw.url}/public/health", headers={"X-Forwarded-For": "198.51.100.7"}))[0]
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    # another address (after trusted_proxies) has its own budget; a token changes nothing on a public route
    assert (await get(http, f"{gw.url}/public/health", issuer.mint(), {"X-Forwarded-For": "198.51.100.8"}))[0] == 200


# --- every mode ----------------------------------------------------------------------------------


async def test_the_decision_port_and_the_middleware_enforce_the_same_limits(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    routes = routes_with(issuer, upstream, tmp_path, list_orders=[{"key": "subject", "rate": "2/m"}])
    gw = await make_gateway(routes=routes, decision_listen="127.0.0.1:0", decision_sources=["envoy"])
    token = issuer.mint(scope="orders:read")
    check = f"http://127.0.0.1:{gw.port('decision')}/orders"
    answers = [await get(http, check, token) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]
    assert answers[0][1]["RateLimit"] == '"subject";r=1;t=30'  # for the ingress to pass on
    assert answers[2][2]["reason"] == "rate_limited" and "Retry-After" in answers[2][1]

    data = base_config(issuer, upstream, tmp_path / "middleware.jsonl")
    data["routes"] = routes
    app = web.Application()

    async def orders(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/orders", orders)
    setup_tokengate(app, parse_config(yaml.safe_dump(data)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/orders"
        answers = [await get(http, url, token) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 429]
        assert answers[1][1]["RateLimit"].startswith('"subject";r=0;')
        assert answers[2][2]["reason"] == Reason.RATE_LIMITED.value
    finally:
        await runner.cleanup()


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "expected"), [
    ({"rate_limiting": {"overrides": [{"clients": ["x"], "routes": ["nope"], "exempt": True}]}},
     "rate_limiting.overrides[0].routes: unknown route 'nope'"),
    ({"rate_limiting": {"overrides": [{"clients": ["x"], "limits": ["per-user"], "exempt": True}]}},
     "rate_limiting.overrides[0].limits: no limit is named 'per-user'"),
    ({"rate_limiting": {"redis_url": "http://127.0.0.1:6379"}}, "rate_limiting.redis_url: "),
    ({"rate_limiting": {"on_redis_error": "fail_open"}}, "rate_limiting.on_redis_error: "),
    ({"route": {"rate_limits": [{"key": "user", "rate": "1/s"}]}}, "routes[0].rate_limits[0].key: "),
    ({"route": {"rate_limits": [{"key": "ip", "rate": "lots"}]}}, "routes[0].rate_limits[0].rate: "),
    ({"route": {"websocket_token_protocol_prefix": "base64url.bearer."}},
     "routes[0]: websocket_token_protocol_prefix needs websocket: true"),
    ({"route": {"websocket": True, "websocket_token_protocol_prefix": "bad prefix"}},
     "routes[0].websocket_token_protocol_prefix: "),
    ({"long_connections": {"close_code": 1000}}, "long_connections.close_code: "),
])
def test_configuration_mistakes_name_the_key(
    change: dict[str, Any], expected: str, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path
) -> None:
    data = base_config(issuer, upstream, tmp_path / "a.jsonl")
    data["routes"][0].update(change.pop("route", {}))
    data.update(change)
    with pytest.raises(ConfigError) as error:
        parse_config(yaml.safe_dump(data, sort_keys=False), "gw.yaml")
    assert any(expected in problem for problem in error.value.problems), error.value.problems


def test_check_config_accepts_the_issue_contract(tmp_path: Path) -> None:
    contract = tmp_path / "gateway.yaml"
    contract.write_text(f"""\
issuers:
  - issuer: https://as.example
    audiences: [{AUDIENCE}]
upstreams:
  api:
    url: http://127.0.0.1:9000
rate_limiting:
  redis_url: redis://127.0.0.1:6379/0
  on_redis_error: allow
routes:
  - name: search
    path: /search
    upstream: api
    scopes: [search]
    rate_limits:
      - {{key: subject, rate: 100/m, burst: 20}}
      - {{key: ip, rate: 1000/m}}
  - name: live
    path: /live
    upstream: api
    websocket: true
    websocket_token_protocol_prefix: base64url.bearer.
""")
    result = CliRunner().invoke(main, ["check-config", str(contract)])
    assert result.exit_code == 0, result.output
