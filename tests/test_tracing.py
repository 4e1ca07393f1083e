"""OpenTelemetry traces, checked at a real OTLP receiver (tests/otlp_receiver.py).

Real gateway, issuer, upstream and redis-server; the spans are decoded from what the SDK's own
exporters sent over HTTP/protobuf or gRPC with the official opentelemetry-proto messages.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import tracing
from gateway.config import ConfigError, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.logs import JsonFormatter
from gateway.middleware import setup_tokengate
from gateway.tokens.dpop import ProofRequest, confirmation, sign_proof
from gateway.tokens.token import fingerprint
from tests.helpers import AUDIENCE, MINIMAL_CONFIG, GatewayFactory, RunningGateway, bearer
from tests.otlp_receiver import GrpcReceiver, HttpReceiver, Span

REPO = Path(__file__).resolve().parent.parent
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def quick_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches every 50 ms (the standard OTEL_BSP_SCHEDULE_DELAY), so the tests wait little."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    for name in ("OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    server = HttpReceiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    server = GrpcReceiver()
    server.start()
    yield server
    server.stop()


def traced(receiver: HttpReceiver | GrpcReceiver, **settings: Any) -> dict[str, Any]:
    return {"enabled": True, "endpoint": receiver.url, **settings}


def one(spans: list[Span], name: str, trace_id: str | None = None) -> Span:
    found = [s for s in spans if s.name == name and (trace_id is None or s.trace_id == trace_id)]
    assert len(found) == 1, [(s.name, s.trace_id) for s in spans]
    return found[0]


def of_trace(trace_id: str, *names: str) -> Any:
    def found(spans: list[Span]) -> bool:
        have = {s.name for s in spans if s.trace_id == trace_id}
        return all(name in have for name in names)

    return found


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
        return resp.status, (json.loads(body) if resp.content_type == "application/json" else {})


def traceparent(value: str) -> tuple[str, str, bool]:
    """(trace-id, parent-id, sampled) of a W3C traceparent the gateway sent (other flag bits may be set)."""
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00" and len(flags) == 2
    return trace_id, parent_id, bool(int(flags, 16) & 1)


async def last_record(gw: RunningGateway) -> dict[str, Any]:
    records = await gw.audit_records()
    assert records
    return records[-1]


# --- the request's spans -----------------------------------------------------------------------


async def test_an_allowed_request_gives_server_decision_and_upstream_spans(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(tracing=traced(receiver, service_name="edge-gateway", headers={"X-Api-Key": "k-123"}))
    token = issuer.mint(sub="alice")
    status, echoed = await get(http, gw.url + "/orders", {**bearer(token), "User-Agent": "trace-test/1"})
    assert status == 200
    record = await last_record(gw)
    trace_id, span_id = record["trace_id"], record["span_id"]
    spans = await receiver.wait_for(of_trace(trace_id, "GET /orders", "tokengate.decision", "GET"))

    server = one(spans, "GET /orders", trace_id)
    assert (server.kind, server.span_id, server.parent_span_id, server.status) == ("server", span_id, "", "unset")
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.route"] == "/orders"
    assert server.attributes["url.path"] == "/orders"
    assert server.attributes["url.scheme"] == "http"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["client.address"] == "127.0.0.1"
    assert server.attributes["server.port"] == gw.port("proxy")
    assert server.attributes["user_agent.original"] == "trace-test/1"
    assert server.attributes["tokengate.route"] == "list-orders"
    assert server.resource["service.name"] == "edge-gateway"

    decision = one(spans, "tokengate.decision", trace_id)
    assert (decision.kind, decision.parent_span_id) == ("internal", span_id)
    assert decision.attributes["tokengate.decision"] == "allow"
    assert decision.attributes["tokengate.reason"] == "allowed"
    assert decision.attributes["tokengate.route"] == "list-orders"
    assert decision.attributes["tokengate.issuer"] == issuer.issuer
    assert decision.attributes["tokengate.required_scopes"] == ["orders:read"]
    assert decision.attributes["tokengate.token.fingerprint"] == record["token_fingerprint"]
    assert decision.attributes["tokengate.token.fingerprint"] == fingerprint(token)[:32]
    assert "enduser.id" not in decision.attributes  # the subject only with include_subject

    upstream = one(spans, "GET", trace_id)
    assert (upstream.kind, upstream.parent_span_id) == ("client", span_id)
    assert upstream.attributes["http.response.status_code"] == 200
    assert upstream.attributes["tokengate.upstream"] == "orders"
    assert upstream.attributes["server.address"] == "127.0.0.1"
    # the upstream continues the trace from the client span
    assert traceparent(echoed["headers"]["traceparent"]) == (trace_id, upstream.span_id, True)
    assert "tracestate" not in echoed["headers"]

    # the exporter's own request: protobuf, with the configured header
    assert receiver.content_types[0] == "application/x-protobuf"
    assert receiver.headers[0]["x-api-key"] == "k-123"
    # no token and no claim value anywhere in what left for the collector
    for body in receiver.raw:
        assert token.encode() not in body
        assert token.split(".")[1].encode() not in body
        assert b"alice" not in body


async def test_the_subject_is_on_the_decision_span_only_when_allowed_by_configuration(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(tracing=traced(receiver, include_subject=True))
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint(sub="alice"))))[0] == 200
    trace_id = (await last_record(gw))["trace_id"]
    spans = await receiver.wait_for(of_trace(trace_id, "tokengate.decision"))
    assert one(spans, "tokengate.decision", trace_id).attributes["enduser.id"] == "alice"


async def test_a_denied_request_is_traced_without_an_upstream_call(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(tracing=traced(receiver))
    token = issuer.mint(scope="orders:read")
    async with http.post(gw.url + "/orders", headers=bearer(token)) as resp:
        assert resp.status == 403
    record = await last_record(gw)
    trace_id = record["trace_id"]
    spans = await receiver.wait_for(of_trace(trace_id, "POST /orders", "tokengate.decision"))
    server = one(spans, "POST /orders", trace_id)
    assert server.attributes["http.response.status_code"] == 403
    assert server.status == "unset"  # a 4xx is the client's, not a failure of the gateway
    decision = one(spans, "tokengate.decision", trace_id)
    assert decision.attributes["tokengate.decision"] == "deny"
    assert decision.attributes["tokengate.reason"] == "insufficient_scope"
    assert decision.attributes["tokengate.missing_scopes"] == ["orders:write"]
    assert [s for s in spans if s.trace_id == trace_id and s.kind == "client"] == []


async def test_an_upstream_that_is_down_marks_the_client_span_failed(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    from tests.helpers import free_port

    gw = await make_gateway(tracing=traced(receiver),
                            upstreams={"orders": {"url": f"http://127.0.0.1:{free_port()}", "timeout": "2s"}})
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint())))[0] == 502
    trace_id = (await last_record(gw))["trace_id"]
    spans = await receiver.wait_for(of_trace(trace_id, "GET /orders", "GET"))
    client = one(spans, "GET", trace_id)
    assert client.status == "error"
    assert client.attributes["error.type"] == "upstream_unavailable"
    server = one(spans, "GET /orders", trace_id)
    assert (server.status, server.attributes["error.type"]) == ("error", "502")


# --- W3C trace context ---------------------------------------------------------------------------


async def test_an_untrusted_callers_traceparent_starts_a_new_trace_and_never_reaches_the_upstream(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(tracing=traced(receiver))
    headers = {**bearer(issuer.mint()), "traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "evil=1"}
    status, echoed = await get(http, gw.url + "/orders", headers)
    assert status == 200
    record = await last_record(gw)
    assert record["trace_id"] != TRACE
    spans = await receiver.wait_for(of_trace(record["trace_id"], "GET /orders", "GET"))
    assert one(spans, "GET /orders", record["trace_id"]).parent_span_id == ""
    upstream = one(spans, "GET", record["trace_id"])
    assert traceparent(echoed["headers"]["traceparent"]) == (record["trace_id"], upstream.span_id, True)
    assert "tracestate" not in echoed["headers"]
    assert all(s.trace_id != TRACE for s in receiver.spans())


@pytest.mark.parametrize("trust", ["trusted_proxies", "trust_incoming"])
async def test_a_trusted_callers_trace_is_continued_with_its_state(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    trust: str,
) -> None:
    overrides: dict[str, Any] = {"trusted_proxies": ["127.0.0.1/32"]} if trust == "trusted_proxies" else {}
    gw = await make_gateway(tracing=traced(receiver, trust_incoming=trust == "trust_incoming"), **overrides)
    headers = {**bearer(issuer.mint()), "traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=abc"}
    status, echoed = await get(http, gw.url + "/orders", headers)
    assert status == 200
    record = await last_record(gw)
    assert record["trace_id"] == TRACE
    spans = await receiver.wait_for(of_trace(TRACE, "GET /orders", "GET"))
    server = one(spans, "GET /orders", TRACE)
    assert (server.parent_span_id, server.span_id) == (PARENT, record["span_id"])
    upstream = one(spans, "GET", TRACE)
    assert traceparent(echoed["headers"]["traceparent"]) == (TRACE, upstream.span_id, True)
    assert echoed["headers"]["tracestate"] == "vendor=abc"


async def test_a_trusted_callers_unsampled_trace_exports_nothing_but_still_propagates(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(tracing=traced(receiver), trusted_proxies=["127.0.0.1/32"])
    headers = {**bearer(issuer.mint()), "traceparent": f"00-{TRACE}-{PARENT}-00"}
    status, echoed = await get(http, gw.url + "/orders", headers)
    assert status == 200
    sent = traceparent(echoed["headers"]["traceparent"])
    assert (sent[0], sent[2]) == (TRACE, False)
    assert (await last_record(gw))["trace_id"] == TRACE  # the trail still names the caller's trace
    # a sampled request afterwards arrives; the unsampled one never does
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint())))[0] == 200
    sampled = (await last_record(gw))["trace_id"]
    await receiver.wait_for(of_trace(sampled, "GET /orders"))
    assert all(s.trace_id != TRACE for s in receiver.spans())


@pytest.mark.parametrize("sent", [
    f"00-{TRACE}-{PARENT}-01, 00-{'1' * 32}-{PARENT}-01",  # two in one line
    f"00-{'0' * 32}-{PARENT}-01",  # an invalid (all-zero) trace id
    f"zz-{TRACE}-{PARENT}-01",
    "00-" + "a" * 5000,
])
async def test_a_malformed_traceparent_from_a_trusted_caller_starts_a_new_trace(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    sent: str,
) -> None:
    gw = await make_gateway(tracing=traced(receiver), trusted_proxies=["127.0.0.1/32"])
    status, echoed = await get(http, gw.url + "/orders", {**bearer(issuer.mint()), "traceparent": sent})
    assert status == 200
    record = await last_record(gw)
    assert record["trace_id"] not in (TRACE, "1" * 32, "0" * 32)
    assert traceparent(echoed["headers"]["traceparent"])[0] == record["trace_id"]


async def test_two_traceparent_lines_from_a_trusted_caller_are_none(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer,
) -> None:
    from tests.helpers import raw_request

    gw = await make_gateway(tracing=traced(receiver), trusted_proxies=["127.0.0.1/32"])
    response = await raw_request(gw.url, "/orders", headers=bearer(issuer.mint()), extra_lines=[
        f"traceparent: 00-{TRACE}-{PARENT}-01", f"traceparent: 00-{'1' * 32}-{PARENT}-01"])
    assert response.status == 200
    assert (await last_record(gw))["trace_id"] not in (TRACE, "1" * 32)


async def test_a_websocket_handshake_carries_the_gateways_trace_not_the_clients(
    receiver: HttpReceiver, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
) -> None:
    seen: list[dict[str, str]] = []

    async def socket(request: web.Request) -> web.WebSocketResponse:
        seen.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        route = {"name": "ws", "path": "/ws", "methods": ["GET"], "upstream": "ws", "auth": "none", "websocket": True}
        gw = await make_gateway(tracing=traced(receiver), routes=[route],
                                upstreams={"ws": {"url": f"http://127.0.0.1:{runner.addresses[0][1]}"}})
        async with http.ws_connect(gw.url + "/ws", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}) as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str()) == "hello"
        await gw.stop()
        record = await last_record(gw)
        assert record["trace_id"] != TRACE
        assert traceparent(seen[0]["traceparent"])[0] == record["trace_id"]
    finally:
        await runner.cleanup()


# --- calls the gateway makes ---------------------------------------------------------------------


async def test_introspection_and_its_shared_cache_are_client_spans_under_the_decision(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    redis_proc: Any,
) -> None:
    redis_url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    entry = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s", "validation": "introspection",
             "introspection": {"endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway",
                               "client_secret": "gateway-secret", "timeout": "2s", "shared_cache": True,
                               "redis_url": redis_url}}
    gw = await make_gateway(tracing=traced(receiver), issuers=[entry])
    token = issuer.mint_opaque(scope="orders:read")
    assert (await get(http, gw.url + "/orders", bearer(token)))[0] == 200
    trace_id = (await last_record(gw))["trace_id"]
    spans = await receiver.wait_for(of_trace(trace_id, "tokengate.decision", "POST", "GET", "SET"))
    decision = one(spans, "tokengate.decision", trace_id)
    introspection = one(spans, "POST", trace_id)
    assert (introspection.kind, introspection.parent_span_id) == ("client", decision.span_id)
    assert introspection.attributes["url.full"] == f"{issuer.issuer}/introspect"
    assert introspection.attributes["http.response.status_code"] == 200
    assert introspection.attributes["tokengate.issuer"] == issuer.issuer
    redis_spans = [s for s in spans if s.trace_id == trace_id and s.attributes.get("db.system.name") == "redis"]
    assert sorted(s.name for s in redis_spans) == ["GET", "SET"]
    for span in redis_spans:
        assert (span.kind, span.parent_span_id) == ("client", decision.span_id)
        assert span.attributes["server.port"] == redis_proc.port
        assert span.attributes["db.operation.name"] == span.name
    for body in receiver.raw:
        assert token.encode() not in body


async def test_jwks_fetches_are_client_spans(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer,
) -> None:
    await make_gateway(tracing=traced(receiver))  # the keys are loaded at start
    spans = await receiver.wait_for(lambda spans: any(s.attributes.get("url.full", "").endswith("/jwks")
                                                      for s in spans))
    fetch = next(s for s in spans if s.attributes.get("url.full", "").endswith("/jwks"))
    assert (fetch.kind, fetch.name, fetch.attributes["http.response.status_code"]) == ("client", "GET", 200)


async def test_the_dpop_replay_check_is_a_redis_span(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    redis_proc: Any,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    route = {"name": "dpop-orders", "path": "/dpop/orders", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"], "sender_constraint": "dpop"}
    gw = await make_gateway(tracing=traced(receiver), routes=[route],
                            dpop={"redis_url": f"redis://{redis_proc.host}:{redis_proc.port}/0",
                                  "key_prefix": f"t{uuid.uuid4().hex[:8]}:dpop:"})
    token = issuer.mint(cnf=confirmation(key))
    url = gw.url + "/dpop/orders"
    proof = sign_proof(key, ProofRequest(method="GET", url=url, access_token=token))
    assert (await get(http, url, {"Authorization": f"DPoP {token}", "DPoP": proof}))[0] == 200
    trace_id = (await last_record(gw))["trace_id"]
    spans = await receiver.wait_for(of_trace(trace_id, "tokengate.decision", "SET"))
    decision = one(spans, "tokengate.decision", trace_id)
    assert decision.attributes["tokengate.binding"] == "dpop"
    assert decision.attributes["tokengate.token.scheme"] == "dpop"
    replay = one(spans, "SET", trace_id)
    assert (replay.parent_span_id, replay.attributes["db.system.name"]) == (decision.span_id, "redis")
    for body in receiver.raw:
        assert proof.encode() not in body


# --- gRPC ---------------------------------------------------------------------------------------


async def test_spans_reach_an_otlp_grpc_receiver(
    grpc_receiver: GrpcReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(tracing=traced(grpc_receiver, protocol="grpc", headers={"X-Api-Key": "k-grpc"}))
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint())))[0] == 200
    record = await last_record(gw)
    spans = await grpc_receiver.wait_for(of_trace(record["trace_id"], "GET /orders", "tokengate.decision", "GET"))
    server = one(spans, "GET /orders", record["trace_id"])
    assert server.span_id == record["span_id"]
    assert one(spans, "tokengate.decision", record["trace_id"]).parent_span_id == server.span_id
    assert grpc_receiver.headers[0]["x-api-key"] == "k-grpc"


async def test_the_protocol_and_endpoint_come_from_the_standard_variables(
    grpc_receiver: GrpcReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    gw = await make_gateway(tracing={"enabled": True})
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint())))[0] == 200
    record = await last_record(gw)
    spans = await grpc_receiver.wait_for(of_trace(record["trace_id"], "GET /orders"))
    assert one(spans, "GET /orders", record["trace_id"]).resource["service.name"] == "from-env"


# --- other modes ---------------------------------------------------------------------------------


async def test_the_decision_endpoint_continues_the_ingress_trace(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(tracing=traced(receiver), decision_listen="127.0.0.1:0", decision_sources=["nginx"],
                            trusted_proxies=["127.0.0.1/32"])
    headers = {**bearer(issuer.mint()), "X-Original-URI": "/orders", "X-Original-Method": "GET",
               "traceparent": f"00-{TRACE}-{PARENT}-01"}
    async with http.get(f"http://127.0.0.1:{gw.port('decision')}/auth", headers=headers) as resp:
        assert resp.status == 200
    record = await last_record(gw)
    assert (record["mode"], record["trace_id"]) == ("decision", TRACE)
    spans = await receiver.wait_for(of_trace(TRACE, "GET", "tokengate.decision"))
    server = one(spans, "GET", TRACE)  # the check request keeps its own name: it is not the routed request
    assert (server.kind, server.parent_span_id, server.attributes["tokengate.mode"]) == ("server", PARENT, "decision")
    assert server.attributes["tokengate.route"] == "list-orders"
    assert one(spans, "tokengate.decision", TRACE).parent_span_id == server.span_id


async def test_middleware_mode_traces_the_policy_and_the_handler(
    issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path, receiver: HttpReceiver,
    http: aiohttp.ClientSession,
) -> None:
    from opentelemetry import trace as otel_trace

    from tests.helpers import base_config

    data = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    data["tracing"] = traced(receiver)
    handler_spans: list[str] = []

    async def orders(_: web.Request) -> web.Response:
        context = otel_trace.get_current_span().get_span_context()
        handler_spans.append(otel_trace.format_span_id(context.span_id))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/orders", orders)
    gateway = setup_tokengate(app, parse_config(yaml.safe_dump(data), "mw.yaml"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        assert (await get(http, f"http://127.0.0.1:{port}/orders", bearer(issuer.mint())))[0] == 200
        await gateway.audit.flush()
        record = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
        spans = await receiver.wait_for(of_trace(record["trace_id"], "GET /orders", "tokengate.decision"))
        server = one(spans, "GET /orders", record["trace_id"])
        assert (server.kind, server.span_id, server.attributes["tokengate.mode"]) == (
            "server", record["span_id"], "middleware")
        assert handler_spans == [server.span_id]  # the application's own spans would be children of it
    finally:
        await runner.cleanup()


# --- logs and the audit trail ------------------------------------------------------------------


async def test_a_log_line_written_during_a_request_carries_its_trace(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
) -> None:
    entry = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s", "validation": "introspection",
             "introspection": {"endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway",
                               "client_secret": "gateway-secret", "timeout": "2s"}}
    gw = await make_gateway(tracing=traced(receiver), issuers=[entry])
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.introspection")
    logger.addHandler(handler)
    try:
        issuer.introspection_mode = "error"  # the warning is written while the request is served
        assert (await get(http, gw.url + "/orders", bearer(issuer.mint_opaque())))[0] == 503
    finally:
        logger.removeHandler(handler)
        issuer.introspection_mode = "ok"
    record = await last_record(gw)
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert logged and all(entry["trace_id"] == record["trace_id"] for entry in logged)
    spans = await receiver.wait_for(of_trace(record["trace_id"], "tokengate.decision", "POST"))
    # the line was written within the introspection call or the decision: it names one of their spans
    inner = {s.span_id for s in spans if s.trace_id == record["trace_id"]}
    assert all(entry["span_id"] in inner for entry in logged)
    introspection = one(spans, "POST", record["trace_id"])
    assert (introspection.status, introspection.attributes["http.response.status_code"]) == ("error", 500)
    decision = one(spans, "tokengate.decision", record["trace_id"])
    assert (decision.status, decision.attributes["error.type"]) == ("error", "introspection_unavailable")


# --- off ------------------------------------------------------------------------------------------

OFF = """
import asyncio, sys, yaml
from gateway.config import parse_config
from gateway.demo import EchoUpstream
from gateway.runtime import Gateway
from gateway.proxy_handler import ProxyHandler
from gateway.server import Server
import aiohttp

async def main():
    upstream = EchoUpstream()
    await upstream.start()
    config = parse_config(yaml.safe_dump({
        "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "audit": {"sink": "none"},
        "upstreams": {"u": {"url": upstream.url}},
        "routes": [{"name": "r", "path": "/r", "upstream": "u", "auth": "none"}],
    }))
    server = Server(Gateway(config))
    await server.start()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{server.ports['proxy']}/r",
                            headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) as r:
            body = await r.json()
    handler = server.runners[0].server.request_handler
    await server.stop()
    await upstream.stop()
    # redis-py 8 loads OpenTelemetry's metrics SDK by itself when it is installed: not ours to judge
    ours = ("gateway.tracing.sdk", "opentelemetry.sdk.trace", "opentelemetry.exporter", "grpc",
            "opentelemetry.trace.propagation.tracecontext")
    loaded = sorted(m for m in sys.modules if m.startswith(ours))
    print(loaded, type(handler).__name__, body["headers"].get("traceparent"))

asyncio.run(main())
"""


def test_off_by_default_no_tracing_code_is_loaded_and_handlers_are_not_wrapped() -> None:
    result = subprocess.run([sys.executable, "-c", OFF], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # no tracing module, the proxy's own handler serves, and an opaque traceparent passes as it is
    assert result.stdout.split() == ["[]", "ProxyHandler", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]


async def test_without_tracing_records_carry_no_trace_fields(gw: RunningGateway, issuer: DemoIssuer,
                                                            http: aiohttp.ClientSession) -> None:
    assert tracing.ACTIVE is None
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint())))[0] == 200
    record = await last_record(gw)
    assert "trace_id" not in record and "span_id" not in record


async def test_otel_sdk_disabled_turns_tracing_off(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    gw = await make_gateway(tracing=traced(receiver))
    assert tracing.ACTIVE is None
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint())))[0] == 200
    assert "trace_id" not in await last_record(gw)


async def test_stopping_the_gateway_sends_what_is_queued_and_ends_tracing(
    receiver: HttpReceiver, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # nothing goes out on its own during the test
    gw = await make_gateway(tracing=traced(receiver))
    assert (await get(http, gw.url + "/orders", bearer(issuer.mint())))[0] == 200
    trace_id = (await last_record(gw))["trace_id"]
    await gw.stop()
    assert tracing.ACTIVE is None
    assert any(s.trace_id == trace_id and s.name == "GET /orders" for s in receiver.spans())


# --- configuration -------------------------------------------------------------------------------


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(MINIMAL_CONFIG + text, "gw.yaml")
    return str(raised.value)


def test_tracing_settings_are_checked_where_they_are_written() -> None:
    assert "gw.yaml:13: tracing.unknown: unknown key" in problem("tracing:\n  enabled: true\n  unknown: 1\n")
    assert "tracing.protocol" in problem("tracing:\n  protocol: http/json\n")
    assert "tracing.sample_ratio" in problem("tracing:\n  sample_ratio: 1.5\n")
    assert "not a valid header name" in problem("tracing:\n  headers:\n    'a b': x\n")
    assert "must be one line" in problem('tracing:\n  headers:\n    x-key: "a\\r\\nInjected: 1"\n')
    assert "is not an absolute http(s) URL" in problem("tracing:\n  trace_url_template: 'javascript:alert(1)'\n")
    assert "must contain {trace_id}" in problem("tracing:\n  trace_url_template: https://tempo.example/\n")
    assert "is not an absolute http(s) URL" in problem("tracing:\n  endpoint: collector:4318\n")
    config = parse_config(MINIMAL_CONFIG + "tracing:\n  trace_url_template: https://t.example/trace/{trace_id}\n")
    assert config.tracing.enabled is False  # a link template alone turns nothing on


def test_an_unknown_protocol_in_the_environment_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.tracing.sdk import export_settings

    config = parse_config(MINIMAL_CONFIG + "tracing:\n  enabled: true\n").tracing
    with pytest.raises(ConfigError, match="http/json"):
        export_settings(config, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert export_settings(config, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}).protocol == "grpc"
    endpoint = parse_config(MINIMAL_CONFIG + "tracing:\n  endpoint: http://c:4318/\n").tracing
    assert export_settings(endpoint, {}).endpoint == "http://c:4318/v1/traces"
    custom = parse_config(MINIMAL_CONFIG + "tracing:\n  endpoint: http://c:4318/otlp/v1/traces\n").tracing
    assert export_settings(custom, {}).endpoint == "http://c:4318/otlp/v1/traces"


async def test_a_reload_does_not_change_tracing(
    receiver: HttpReceiver, make_gateway: GatewayFactory,
) -> None:
    from gateway.reload import restart_needed

    gw = await make_gateway(tracing=traced(receiver))
    changed = gw.gateway.config.model_copy(update={"tracing": gw.gateway.config.tracing.model_copy(
        update={"sample_ratio": 0.5})})
    assert restart_needed(gw.gateway.config, changed) == ["tracing"]
