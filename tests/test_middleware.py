"""The aiohttp middleware in a small application under pytest-aiohttp, with a real DemoIssuer;
and the one-decision-path check: proxy, decision endpoint and middleware decide alike."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import GatewayConfig, parse_config
from gateway.decision import Decider, Decision, RequestFacts
from gateway.demo import DemoIssuer
from gateway.middleware import TOKEN_KEY, TOKENGATE_KEY, setup_tokengate, token_of, tokengate_middleware
from gateway.revocation.entries import Entry, Kind
from gateway.runtime import Gateway
from tests.helpers import GatewayFactory, UpstreamAddress, base_config, bearer, metric, raw_request

UNUSED_UPSTREAM = UpstreamAddress("http://127.0.0.1:9")  # middleware mode never proxies


def middleware_config(issuer: DemoIssuer, audit_path: Path, **overrides: Any) -> GatewayConfig:
    data = base_config(issuer, UNUSED_UPSTREAM, audit_path)
    data.update(overrides)
    return parse_config(yaml.safe_dump(data), "middleware-test.yaml")


def orders_app(config: GatewayConfig | str, seen: list[dict[str, Any]]) -> web.Application:
    """A small service: its routes overlap the policy's, plus a catch-all the policy never allows."""

    async def list_orders(request: web.Request) -> web.Response:
        token = request[TOKEN_KEY]
        seen.append({"path": request.path, "sub": token.subject, "header": request.headers.get("X-Auth-Subject")})
        return web.json_response({"sub": token.subject, "scopes": sorted(token.scopes),
                                  "x_auth_subject": request.headers.get("X-Auth-Subject"),
                                  "x_auth_scopes": request.headers.get("X-Auth-Scopes")})

    async def create_order(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"path": request.path, "bytes": len(body)})
        return web.json_response({"created": len(body)}, status=201)

    async def health(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "token": token_of(request)})
        return web.json_response({"token": token_of(request) is not None,
                                  "x_auth_subject": request.headers.get("X-Auth-Subject")})

    async def order_status(request: web.Request) -> web.Response:
        seen.append({"path": request.path})
        if request.match_info["id"] == "missing":
            raise web.HTTPNotFound()
        if request.match_info["id"] == "boom":
            raise RuntimeError("handler failure")
        return web.json_response({"id": request.match_info["id"]})

    async def anything(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "catch_all": True})
        return web.json_response({"catch_all": request.path})

    app = web.Application()
    app.router.add_get("/orders", list_orders)
    app.router.add_post("/orders", create_order)
    app.router.add_get("/public/health", health)
    app.router.add_get("/orders/{id}/status", order_status)
    app.router.add_route("*", "/{tail:.*}", anything)
    setup_tokengate(app, config)
    return app


@pytest.fixture
async def service(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path) -> SimpleNamespace:
    seen: list[dict[str, Any]] = []
    audit_path = tmp_path / "middleware-audit.jsonl"
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        orders_app(middleware_config(issuer, audit_path), seen)
    )
    gateway = client.app[TOKENGATE_KEY]

    async def records() -> list[dict[str, Any]]:
        await gateway.audit.flush()
        return [json.loads(line) for line in audit_path.read_text().splitlines()] if audit_path.exists() else []

    url = f"http://{client.host}:{client.port}"
    return SimpleNamespace(client=client, gateway=gateway, seen=seen, records=records, url=url)


async def test_no_token_is_401_and_the_handler_never_runs(service: SimpleNamespace) -> None:
    resp = await service.client.get("/orders")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["reason"] == "missing_token" and body["request_id"] == resp.headers["X-Request-Id"]
    assert service.seen == []
    [record] = await service.records()
    assert (record["mode"], record["status"], record["reason"], record["route"], record["upstream"]) == (
        "middleware", 401, "missing_token", "list-orders", None)


async def test_missing_scope_is_403(service: SimpleNamespace, issuer: DemoIssuer) -> None:
    resp = await service.client.get("/orders", headers=bearer(issuer.mint(scope="profile")))
    assert resp.status == 403
    challenge = resp.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="orders:read"' in challenge
    assert (await resp.json())["reason"] == "insufficient_scope"
    assert service.seen == []


async def test_good_token_reaches_the_handler_with_the_validated_token(
    service: SimpleNamespace, issuer: DemoIssuer
) -> None:
    before = metric("gateway_requests_total", route="list-orders", method="GET", status="200",
                    decision="allow", reason="allowed")
    token = issuer.mint(sub="alice", scope="orders:read profile")
    resp = await service.client.get("/orders", headers={**bearer(token), "X-Auth-Subject": "mallory"})
    assert resp.status == 200
    assert await resp.json() == {"sub": "alice", "scopes": ["orders:read", "profile"],
                                 "x_auth_subject": "alice", "x_auth_scopes": "orders:read profile"}
    [record] = await service.records()
    assert (record["mode"], record["status"], record["reason"], record["sub"]) == (
        "middleware", 200, "allowed", "alice")
    assert token not in json.dumps(record)  # only the fingerprint prefix is written
    assert metric("gateway_requests_total", route="list-orders", method="GET", status="200",
                  decision="allow", reason="allowed") == before + 1


async def test_request_body_and_status_pass_through(service: SimpleNamespace, issuer: DemoIssuer) -> None:
    resp = await service.client.post("/orders", data=b"x" * 1000, headers=bearer(issuer.mint(scope="orders:write")))
    assert resp.status == 201
    assert await resp.json() == {"created": 1000}
    [record] = await service.records()
    assert (record["route"], record["status"]) == ("create-order", 201)


async def test_public_route_has_no_token_and_no_client_identity(service: SimpleNamespace) -> None:
    resp = await service.client.get("/public/health", headers={"X-Auth-Subject": "mallory"})
    assert resp.status == 200
    assert await resp.json() == {"token": False, "x_auth_subject": None}
    assert (await service.records())[-1]["reason"] == "public_route"


async def test_routes_outside_the_policy_are_404_even_with_a_handler(
    service: SimpleNamespace, issuer: DemoIssuer
) -> None:
    resp = await service.client.get("/internal/debug", headers=bearer(issuer.mint(scope="orders:read")))
    assert resp.status == 404
    assert (await resp.json())["reason"] == "no_route"
    resp = await service.client.patch("/orders", headers=bearer(issuer.mint(scope="orders:write")))
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert service.seen == []


async def test_path_tricks(service: SimpleNamespace, issuer: DemoIssuer) -> None:
    reader = bearer(issuer.mint(scope="orders:read"))
    # decided on the normalised path, like the proxy: /orders needs a token
    for target in ("/public/health/../../orders", "/public/health/%2e%2e/%2e%2e/orders"):
        resp = await raw_request(service.url, target)
        assert resp.status == 401, target
        assert (await service.records())[-1]["path"] == "/orders"
    # allowed for /orders, but aiohttp would route the raw path elsewhere (here: the catch-all): refused
    resp = await raw_request(service.url, "/public/health/../../orders", headers=reader)
    assert resp.status == 400
    assert (await service.records())[-1]["reason"] == "bad_path"
    # an equivalent spelling aiohttp routes to the same handler is fine
    resp = await raw_request(service.url, "/ord%65rs", headers=reader)
    assert resp.status == 200
    assert [s["path"] for s in service.seen] == ["/orders"]


async def test_revocation_applies_at_once(service: SimpleNamespace, issuer: DemoIssuer) -> None:
    token = issuer.mint(scope="orders:read")
    assert (await service.client.get("/orders", headers=bearer(token))).status == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    await service.gateway.revocation.revoke(Entry(Kind.TOKEN, jti, time.time() + 600))
    resp = await service.client.get("/orders", headers=bearer(token))
    assert resp.status == 401
    assert (await resp.json())["reason"] == "revoked_token"


async def test_handler_errors_are_recorded(service: SimpleNamespace, issuer: DemoIssuer) -> None:
    reader = bearer(issuer.mint(scope="orders:read"))
    assert (await service.client.get("/orders/missing/status", headers=reader)).status == 404
    assert (await service.client.get("/orders/boom/status", headers=reader)).status == 500
    records = await service.records()
    assert [(r["route"], r["status"], r["reason"]) for r in records] == [
        ("order-status", 404, "allowed"), ("order-status", 500, "allowed")]


async def test_opaque_tokens_are_introspected(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path) -> None:
    data = base_config(issuer, UNUSED_UPSTREAM, tmp_path / "audit.jsonl")
    data["issuers"][0]["introspection"] = {"endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway",
                                           "client_secret": "gateway-secret", "token_prefix": "demo_"}
    client = await aiohttp_client(orders_app(parse_config(yaml.safe_dump(data)), []))
    resp = await client.get("/orders", headers=bearer(issuer.mint_opaque(sub="dave", scope="orders:read")))
    assert resp.status == 200
    assert (await resp.json())["sub"] == "dave"
    resp = await client.get("/orders", headers=bearer("demo_not-a-known-token"))
    assert resp.status == 401
    assert issuer.calls["introspect"] == 2


async def test_lifecycle_from_a_yaml_file(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path) -> None:
    """setup_tokengate(app, path) loads the file; cleanup_ctx starts the Gateway and, at shutdown, flushes the audit."""
    audit_path = tmp_path / "audit.jsonl"
    data = base_config(issuer, UNUSED_UPSTREAM, audit_path)
    data["audit"]["flush_interval"] = "1h"  # only the shutdown flush can write the record
    config_path = tmp_path / "policy.yaml"
    config_path.write_text(yaml.safe_dump(data))
    app = orders_app(str(config_path), [])
    gateway = app[TOKENGATE_KEY]
    assert gateway.pipeline is None and gateway.config_path == str(config_path)
    client = await aiohttp_client(app)
    assert gateway.pipeline is not None
    assert (await client.get("/orders")).status == 401
    assert not audit_path.exists() or audit_path.read_text() == ""
    await client.close()
    [record] = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert record["reason"] == "missing_token"


async def test_not_started_fails_closed(issuer: DemoIssuer, tmp_path: Path, aiohttp_client: Any) -> None:
    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/public/health", health)
    app[TOKENGATE_KEY] = Gateway(middleware_config(issuer, tmp_path / "a.jsonl"))
    app.middlewares.append(tokengate_middleware)  # without setup_tokengate's cleanup_ctx: never started
    client = await aiohttp_client(app)
    resp = await client.get("/public/health")
    assert resp.status == 503


# --- one decision path -------------------------------------------------------------------


CASES: list[tuple[str, str, str, str | None]] = [
    # (name, method, raw target, token scope or a literal Authorization value after "=")
    ("no token", "GET", "/orders", None),
    ("wrong scope", "GET", "/orders", "profile"),
    ("good", "GET", "/orders?limit=2", "orders:read"),
    ("any_scopes", "GET", "/orders/7/status", "orders:admin"),
    ("write needs write", "DELETE", "/orders/7", "orders:read"),
    ("not a bearer", "GET", "/orders", "=Basic YWxpY2U6cHc="),
    ("malformed bearer", "GET", "/orders", "=Bearer two tokens"),
    ("garbage token", "GET", "/orders", "=Bearer abc.def.ghi"),
    ("token in query", "GET", "/orders?access_token=abc", None),
    ("no route", "GET", "/nowhere", "orders:read"),
    ("method not allowed", "PATCH", "/orders", "orders:write"),
    ("public", "GET", "/public/health", None),
    ("dot segments", "GET", "/public/health/../../orders", None),
    ("encoded dots", "GET", "/public/files/%2e%2e/%2e%2e/orders", "profile"),
    ("encoded slash", "GET", "/public/files/a%2Fb", None),
]


async def test_proxy_decision_endpoint_and_middleware_decide_alike(
    make_gateway: GatewayFactory, issuer: DemoIssuer, aiohttp_client: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decided: list[RequestFacts] = []
    original = Decider.decide

    async def recording_decide(self: Decider, facts: RequestFacts) -> Decision:
        decided.append(facts)
        return await original(self, facts)

    monkeypatch.setattr(Decider, "decide", recording_decide)

    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["nginx"], trusted_proxies=["127.0.0.1/32"])
    audit_path = tmp_path / "middleware-audit.jsonl"
    client = await aiohttp_client(orders_app(middleware_config(issuer, audit_path), []))
    middleware_gateway = client.app[TOKENGATE_KEY]
    proxy_url, decision_url = gw.url, f"http://127.0.0.1:{gw.port('decision')}"
    middleware_url = f"http://{client.host}:{client.port}"

    async def middleware_records() -> list[dict[str, Any]]:
        await middleware_gateway.audit.flush()
        return [json.loads(line) for line in audit_path.read_text().splitlines()]

    for name, method, target, auth in CASES:
        headers: dict[str, str] = {}
        if auth is not None:
            headers["Authorization"] = auth[1:] if auth.startswith("=") else f"Bearer {issuer.mint(scope=auth)}"
        outcomes = {}
        before = len(decided)
        proxied = await raw_request(proxy_url, target, method=method, headers=headers)
        outcomes["proxy"] = (proxied.status, (await gw.audit_records())[-1]["reason"])
        checked = await raw_request(decision_url, "/verify", headers={
            **headers, "X-Original-URI": target, "X-Original-Method": method, "X-Forwarded-Host": "127.0.0.1"})
        outcomes["decision"] = (checked.status, (await gw.audit_records())[-1]["reason"])
        direct = await raw_request(middleware_url, target, method=method, headers=headers)
        outcomes["middleware"] = (direct.status, (await middleware_records())[-1]["reason"])

        assert len(decided) - before == 3, f"{name}: every mode calls Decider.decide once"
        assert len({(f.method, f.raw_target, f.authorization) for f in decided[before:]}) == 1, name
        assert len(set(outcomes.values())) == 1, f"{name}: {outcomes}"
