"""WebSocket and server-sent events through the real gateway proxy, and live connections that die
with their token.

The upstream is a real aiohttp WebSocket echo and SSE server (tests/traffic_servers.py); the
gateway runs in this process (``make_gateway``) or as ``gateway serve`` processes; tokens are
signed by the in-test issuer; revocations reach two gateway processes through a real
redis-server's notification stream.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from gateway import runtime
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.revocation import Revoker
from gateway.revocation.entries import Entry, Kind
from gateway.runtime import build_pipeline
from gateway.ws_upgrade import encode_protocol_token
from tests.helpers import GatewayFactory, RunningGateway, base_config, bearer, metric, raw_request
from tests.traffic_servers import GatewayProcess, LiveUpstream, read_event, sample, scrape, start_gateway_process

PREFIX = "base64url.bearer."
LIVE_ROUTES: list[dict[str, Any]] = [
    {"name": "live", "path": "/live", "upstream": "live", "scopes": ["live"], "websocket": True,
     "websocket_token_protocol_prefix": PREFIX},
    {"name": "live-query", "path": "/live-query", "upstream": "live", "scopes": ["live"], "websocket": True,
     "allow_query_token": True},
    {"name": "refuse", "path": "/refuse", "upstream": "live", "scopes": ["live"], "websocket": True},
    {"name": "events", "path": "/events", "upstream": "live", "scopes": ["live"]},
    {"name": "slow", "path": "/slow", "upstream": "live", "scopes": ["live"]},
    {"name": "plain", "path_prefix": "/plain", "upstream": "live", "scopes": ["live"]},
]


@pytest.fixture
async def live_upstream() -> AsyncIterator[LiveUpstream]:
    server = LiveUpstream()
    await server.start()
    yield server
    await server.stop()


def live_config(upstream_url: str) -> dict[str, Any]:
    return {"upstreams": {"live": {"url": upstream_url, "timeout": "5s"}}, "routes": LIVE_ROUTES}


@pytest.fixture
async def gw(make_gateway: GatewayFactory, live_upstream: LiveUpstream) -> RunningGateway:
    return await make_gateway(**live_config(live_upstream.url))


@pytest.fixture
async def processes() -> AsyncIterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.kill()


def mint(issuer: DemoIssuer, sub: str = "alice", ttl: float = 300, **claims: Any) -> str:
    return issuer.mint(sub=sub, scope="live", ttl=ttl, **claims)


async def opened(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    sock: aiohttp.ClientWebSocketResponse = await http.ws_connect(url, **kwargs)
    hello = await sock.receive(timeout=5)
    assert (hello.type, hello.data) == (WSMsgType.TEXT, "hello")
    return sock


async def refused(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(url, **kwargs)
    return error.value.status


async def until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def records_of(gw: RunningGateway, route: str) -> list[dict[str, Any]]:
    return [r for r in await gw.audit_records() if r["route"] == route]


# --- proxied both ways -----------------------------------------------------------------------------


async def test_a_websocket_is_decided_then_proxied_and_audited_when_it_closes(
    gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    token = mint(issuer)
    before = metric("gateway_long_connection_closes_total", route="live", kind="websocket", reason="client")
    sock = await opened(http, f"{gw.url}/live", headers={**bearer(token), "X-Request-Id": "ws-1"},
                        protocols=("chat.v2",))
    assert sock.protocol == "chat.v2" and sock._response.headers["X-Request-Id"] == "ws-1"  # the 101 (aiohttp keeps it)
    assert metric("gateway_long_connections", route="live", kind="websocket") == 1
    await sock.send_str("héllo")
    assert (await sock.receive(timeout=5)).data == "echo:héllo"
    await sock.send_bytes(b"\x01\x02\x03")
    assert (await sock.receive(timeout=5)).data == b"\x03\x02\x01"
    await asyncio.sleep(0.3)
    await sock.close(code=1000, message=b"done")
    await until(lambda: live_upstream.closes)
    assert live_upstream.closes == [(1000, "done")]
    seen = live_upstream.handshakes[0]
    assert seen["X-Auth-Subject"] == "alice" and seen["Sec-WebSocket-Protocol"] == "chat.v2"

    await until(lambda: metric("gateway_long_connections", route="live", kind="websocket") == 0)
    assert metric("gateway_long_connection_closes_total", route="live", kind="websocket", reason="client") == before + 1
    (record,) = await records_of(gw, "live")
    assert (record["status"], record["decision"], record["reason"], record["sub"]) == (101, "allow", "allowed", "alice")
    assert record["connection"] == {
        "kind": "websocket", "closed_by": "client", "reason": "client", "messages_in": 2, "messages_out": 3,
        "close_code": 1000, "upstream_close_code": 1000,
    }
    assert (record["bytes_in"], record["bytes_out"]) == (len("héllo".encode()) + 3, 5 + len("echo:héllo".encode()) + 3)
    assert record["duration_ms"] >= 300


async def test_an_upgrade_is_refused_like_any_request_before_the_upstream_is_asked(
    gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    assert await refused(http, f"{gw.url}/live") == 401
    assert await refused(http, f"{gw.url}/live", headers=bearer(issuer.mint(scope="other"))) == 403
    assert await refused(http, f"{gw.url}/live", headers=bearer(mint(issuer, exp=int(time.time()) - 60))) == 401
    revoked = mint(issuer, sub="mallory")
    await gw.gateway.revocation.revoke(Entry(Kind.SUBJECT, "mallory", time.time() + 600, issuer.issuer,
                                             not_before=time.time() + 1))
    assert await refused(http, f"{gw.url}/live", headers=bearer(revoked)) == 401
    assert live_upstream.handshakes == []
    assert [r["reason"] for r in await records_of(gw, "live")] == [
        "missing_token", "insufficient_scope", "token_expired", "revoked_subject"]


async def test_a_route_without_websocket_refuses_upgrades(
    gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    assert await refused(http, f"{gw.url}/plain/x", headers=bearer(mint(issuer))) == 400
    assert await refused(http, f"{gw.url}/plain/x") == 400  # refused before any token is looked at
    # a lone Upgrade header (no "Connection: upgrade") asks for nothing: dropped as hop-by-hop
    response = await raw_request(gw.url, "/plain/x", headers={"Upgrade": "websocket", **bearer(mint(issuer))})
    assert response.status == 200
    assert live_upstream.handshakes == [] and "Upgrade" not in live_upstream.plain[0]
    reasons = [r["reason"] for r in await records_of(gw, "plain")]
    assert reasons == ["websocket_not_allowed", "websocket_not_allowed", "allowed"]


async def test_upstream_refusals_and_malformed_handshakes_are_http_answers(
    gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    assert await refused(http, f"{gw.url}/refuse", headers=bearer(mint(issuer))) == 502
    response = await raw_request(gw.url, "/live", headers={  # no Sec-WebSocket-Key
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13", **bearer(mint(issuer))})
    assert response.status == 400 and b"bad_websocket_handshake" in response.body
    assert len(live_upstream.handshakes) == 1  # only /refuse got as far as the upstream
    assert [r["reason"] for r in await gw.audit_records() if r["route"] in ("refuse", "live")] == [
        "upstream_unavailable", "bad_websocket_handshake"]


# --- the token in Sec-WebSocket-Protocol ----------------------------------------------------------


async def test_the_token_may_come_as_a_subprotocol_and_never_goes_further(
    gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = mint(issuer, sub="browser-user")
    carrying = encode_protocol_token(token, PREFIX)
    sock = await opened(http, f"{gw.url}/live", protocols=("chat.v2", carrying))
    assert sock.protocol == "chat.v2"  # the upstream's choice; the token value is never echoed back
    await sock.send_str("hi")
    assert (await sock.receive(timeout=5)).data == "echo:hi"
    await sock.close()
    # an offer the upstream takes none of: answered without a protocol (aiohttp warns, naming the offer)
    other = await opened(http, f"{gw.url}/live", protocols=("chat.v9", carrying))
    assert other.protocol is None
    await other.close()
    seen = live_upstream.handshakes[0]
    assert seen["Sec-WebSocket-Protocol"] == "chat.v2" and seen["X-Auth-Subject"] == "browser-user"
    assert "Authorization" not in seen
    assert not any(token in value or carrying in value for value in seen.values())
    await until(lambda: metric("gateway_long_connections", route="live", kind="websocket") == 0)
    assert [(r["status"], r["sub"]) for r in await records_of(gw, "live")] == [(101, "browser-user")] * 2
    assert any("chat.v9" in r.getMessage() for r in caplog.records)  # the warning was there, without the token
    # the raw value (it holds the token) is in no audit record and no log line
    audit_text = gw.audit_path.read_text()
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (token, carrying, carrying[len(PREFIX):]):
        assert secret not in audit_text and secret not in logged


@pytest.mark.parametrize("case", ["with-authorization", "two-tokens", "not-base64url", "not-a-token",
                                  "with-query-token"])
async def test_an_ambiguous_or_malformed_protocol_token_is_refused(
    case: str, gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    token = mint(issuer)
    carrying = encode_protocol_token(token, PREFIX)
    offers: dict[str, dict[str, Any]] = {
        "with-authorization": {"protocols": ("chat.v2", carrying), "headers": bearer(token)},
        "two-tokens": {"protocols": ("chat.v2", carrying, encode_protocol_token(mint(issuer, sub="b"), PREFIX))},
        "not-base64url": {"protocols": ("chat.v2", PREFIX + "YW+j")},
        "not-a-token": {"protocols": ("chat.v2", PREFIX + "YSBi")},  # "a b"
        "with-query-token": {"protocols": ("chat.v2", carrying)},
    }
    kwargs = offers[case]
    url = f"{gw.url}/live" + (f"?access_token={token}" if case == "with-query-token" else "")
    assert await refused(http, url, **kwargs) == 400
    assert live_upstream.handshakes == []
    assert [r["reason"] for r in await records_of(gw, "live")] == ["malformed_authorization"]


async def test_a_query_token_is_refused_unless_the_route_opts_in(
    gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    token = mint(issuer)
    assert await refused(http, f"{gw.url}/live?access_token={token}") == 400
    sock = await opened(http, f"{gw.url}/live-query?access_token={token}")
    await sock.close()
    reasons = [(r["route"], r["reason"]) for r in await gw.audit_records()]
    assert reasons == [("live", "token_not_in_header"), ("live-query", "allowed")]


# --- live connections die with their token ---------------------------------------------------------


async def test_a_socket_is_closed_when_its_token_expires(
    gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    token = mint(issuer, ttl=2)
    expires_at = int(time.time()) + 2
    sock = await opened(http, f"{gw.url}/live", headers=bearer(token))
    closing = await sock.receive(timeout=5)
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4401, "token expired")
    assert expires_at - 0.05 <= time.time() < expires_at + 0.6
    await until(lambda: live_upstream.closes)
    assert live_upstream.closes == [(1001, "token expired")]
    await until(lambda: metric("gateway_long_connections", route="live", kind="websocket") == 0)
    (record,) = await records_of(gw, "live")
    assert record["connection"]["reason"] == "token_expired" and record["connection"]["closed_by"] == "gateway"
    assert record["connection"]["close_code"] == 4401 and record["reason"] == "allowed"


async def test_revocation_and_expiry_close_live_sockets_on_both_gateway_processes(
    issuer: DemoIssuer, upstream: EchoUpstream, live_upstream: LiveUpstream, tmp_path: Path, redis_proc: Any,
    processes: list[GatewayProcess], http: aiohttp.ClientSession,
) -> None:
    redis_url, prefix = f"redis://{redis_proc.host}:{redis_proc.port}/0", f"t{uuid.uuid4().hex[:8]}:revoked:"
    config = {**base_config(issuer, upstream, tmp_path / "unused.jsonl"), **live_config(live_upstream.url),
              "revocation": {"redis_url": redis_url, "key_prefix": prefix}}
    for name in ("a", "b"):
        processes.append(await start_gateway_process(config, tmp_path, name))
    doomed, spared, short = mint(issuer, sid="fam-1"), mint(issuer, sid="fam-2"), mint(issuer, sub="bob", ttl=3)
    short_exp = int(time.time()) + 3
    socks = {(p.url, kind): await opened(http, f"{p.url}/live", headers=bearer(tok))
             for p in processes for kind, tok in (("doomed", doomed), ("spared", spared), ("short", short))}

    async with Revoker(redis_url, key_prefix=prefix) as revoker:  # the authorization server's side
        await revoker.revoke_family("fam-1", issuer=issuer.issuer, reason="refresh token reuse")
    revoked_at = time.monotonic()
    for process in processes:
        closing = await socks[(process.url, "doomed")].receive(timeout=2)
        assert (closing.data, closing.extra) == (4401, "token revoked")
    assert time.monotonic() - revoked_at < 1.0  # the notification path, not the 5 s recheck
    for process in processes:  # expired tokens close at exp, everywhere
        closing = await socks[(process.url, "short")].receive(timeout=5)
        assert (closing.data, closing.extra) == (4401, "token expired")
        assert short_exp - 0.05 <= time.time() < short_exp + 0.6
    for process in processes:
        sock = socks[(process.url, "spared")]
        await sock.send_str("still here")
        assert (await sock.receive(timeout=5)).data == "echo:still here"
        await sock.close()
        text = await scrape(process.admin_url)
        assert sample(text, "gateway_long_connection_closes_total", route="live", reason="revoked_family") == 1
        assert sample(text, "gateway_long_connection_closes_total", route="live", reason="token_expired") == 1

    await asyncio.sleep(0.3)
    for process in processes:
        reasons = sorted(r["connection"]["reason"] for r in process.audit() if "connection" in r)
        assert reasons == ["client", "revoked_family", "token_expired"]


async def test_an_event_stream_flows_as_it_comes_and_ends_with_its_token(
    gw: RunningGateway, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with http.get(f"{gw.url}/events", headers=bearer(mint(issuer, sub="ivan"))) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(read_event(response), 5)
        assert first.startswith(b"id: 0\ndata: event 0\n\n")
        assert time.monotonic() - started < 1.0  # the upstream's stream lasts 20 s
        assert metric("gateway_long_connections", route="events", kind="stream") == 1
        await asyncio.sleep(0.3)
        cut_at = time.monotonic()
        await gw.gateway.revocation.revoke(Entry(Kind.SUBJECT, "ivan", time.time() + 600, issuer.issuer,
                                                 not_before=time.time() + 1))
        rest = await asyncio.wait_for(response.content.read(), 5)  # ends cleanly, no payload error
        assert time.monotonic() - cut_at < 0.5
    assert rest.endswith(b"\n\n")  # cut between two events
    await asyncio.wait_for(live_upstream.events_ended.wait(), 5)  # the upstream's answer was closed too
    await until(lambda: metric("gateway_long_connections", route="events", kind="stream") == 0)
    (record,) = await records_of(gw, "events")
    assert record["status"] == 200 and record["bytes_out"] == len(first) + len(rest)
    assert record["connection"] == {"kind": "stream", "closed_by": "gateway", "reason": "revoked_subject",
                                    "messages_in": 0, "messages_out": record["connection"]["messages_out"]}


# --- graceful shutdown --------------------------------------------------------------------------------


async def test_sigterm_closes_open_sockets_with_going_away_after_the_drain(
    issuer: DemoIssuer, upstream: EchoUpstream, live_upstream: LiveUpstream, tmp_path: Path,
    processes: list[GatewayProcess], http: aiohttp.ClientSession,
) -> None:
    config = {**base_config(issuer, upstream, tmp_path / "unused.jsonl"), **live_config(live_upstream.url),
              "shutdown_grace": "10s"}
    process = await start_gateway_process(config, tmp_path, "gw")
    processes.append(process)
    token = mint(issuer)
    sock = await opened(http, f"{process.url}/live", headers=bearer(token))
    events = await http.get(f"{process.url}/events", headers=bearer(token))
    await read_event(events)
    slow = asyncio.create_task(http.get(f"{process.url}/slow", headers=bearer(token)))
    await until(lambda: any(h.get("X-Auth-Subject") == "alice" for h in live_upstream.plain[1:]))

    signalled = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    closing = await sock.receive(timeout=8)
    closed_at = time.monotonic()
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 1001, "the gateway is shutting down")
    slow_response = await slow
    assert slow_response.status == 200  # the in-flight request was drained first
    assert 0.5 < closed_at - signalled < 5.0  # after the drain, long before shutdown_grace (10 s)
    rest = await asyncio.wait_for(events.content.read(), 5)
    assert rest.endswith(b"\n\n")
    events.close()
    assert await process.wait_exit(10) == 0
    connections = {r["route"]: r["connection"] for r in process.audit() if "connection" in r}
    assert connections["live"]["reason"] == connections["events"]["reason"] == "shutting_down"
    assert connections["live"]["close_code"] == 1001
    (line,) = [r for r in process.logs() if r.get("msg") == "long connections closed for shutdown"]
    assert line["connections"] == 2


async def test_upgrades_count_against_the_routes_rate_limits(
    make_gateway: GatewayFactory, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    routes = [{**route, "rate_limits": [{"key": "subject", "rate": "1/m"}]} if route["name"] == "live" else route
              for route in LIVE_ROUTES]
    gw = await make_gateway(upstreams={"live": {"url": live_upstream.url}}, routes=routes)
    token = mint(issuer)
    sock = await opened(http, f"{gw.url}/live", headers=bearer(token))
    assert sock._response.headers["RateLimit"].startswith('"subject";r=0;')  # the 101 (aiohttp keeps it there)
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(f"{gw.url}/live", headers=bearer(token))
    assert error.value.status == 429 and error.value.headers is not None and "Retry-After" in error.value.headers
    await sock.close()
    assert len(live_upstream.handshakes) == 1


async def test_a_reload_closes_what_the_old_configuration_opened_with_service_restart(
    make_gateway: GatewayFactory, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(**live_config(live_upstream.url), shutdown_grace="1s")
    token = mint(issuer)
    sock = await opened(http, f"{gw.url}/live", headers=bearer(token))
    events = await http.get(f"{gw.url}/events", headers=bearer(token))
    await read_event(events)
    gateway = gw.gateway
    # what a reload does (reload.py): a new pipeline in service, the old one retired
    gateway.swap(await build_pipeline(gateway.config, gateway.revocation, gateway.proofs, gateway.limiter))
    fresh = await opened(http, f"{gw.url}/live", headers=bearer(token))  # served by the new pipeline
    closing = await sock.receive(timeout=8)  # not "upstream failed" when the old pools close
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 1012, "the configuration changed")
    assert (await asyncio.wait_for(events.content.read(), 5)).endswith(b"\n\n")
    events.close()
    await fresh.send_str("still here")
    assert (await fresh.receive(timeout=5)).data == "echo:still here"
    await fresh.close()
    assert metric("gateway_long_connection_closes_total", route="live", kind="websocket",
                  reason="config_reloaded") >= 1
    await until(lambda: metric("gateway_long_connections", route="live", kind="websocket") == 0)
    reasons = sorted(r["connection"]["reason"] for r in await gw.audit_records() if "connection" in r)
    assert reasons == ["client", "config_reloaded", "config_reloaded"]


async def test_a_revocation_that_came_without_a_notification_still_closes_the_socket(
    make_gateway: GatewayFactory, issuer: DemoIssuer, live_upstream: LiveUpstream, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "LIVE_RECHECK_INTERVAL", 0.2)
    gw = await make_gateway(**live_config(live_upstream.url))
    sock = await opened(http, f"{gw.url}/live", headers=bearer(mint(issuer, sid="fam-9")))
    # what a resync does after an outage: entries into the local copy, no listener told
    gw.gateway.revocation.list.add(Entry(Kind.FAMILY, "fam-9", time.time() + 600, issuer.issuer))
    closing = await sock.receive(timeout=3)
    assert (closing.data, closing.extra) == (4401, "token revoked")
