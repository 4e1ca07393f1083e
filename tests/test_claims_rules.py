"""Claims rules (CEL) and step-up (RFC 9470) per route, through the proxy, the decision port and the middleware.

Tokens are minted by the demo issuer with the claims a rule reads (``tenant``, ``acr``,
``auth_time``); the rules are compiled by the real CEL engine when the configuration loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, load_config, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.reload import Reloader
from gateway.runtime import Gateway
from gateway.server import Server
from tests.helpers import MINIMAL_CONFIG, GatewayFactory, base_config, bearer, metric, raw_request
from tests.test_middleware import middleware_config, orders_app
from tests.test_sender_constraint import capture

TENANT_ROUTE = {
    "name": "tenant-orders", "path": "/tenants/{tenant}/orders", "methods": ["GET"], "upstream": "orders",
    "scopes": ["orders:read"],
    "rules": [{"name": "same-tenant", "expression": "claims.tenant == path.tenant"},
              {"name": "read-only", "expression": "request.method in ['GET', 'HEAD']"}],
}
PAYOUTS_ROUTE = {"name": "payouts", "path": "/payouts", "methods": ["GET"], "upstream": "orders",
                 "acr_values": ["urn:example:mfa"], "max_age": "5m"}
BOTH_ROUTE = {"name": "tenant-payouts", "path": "/tenants/{tenant}/payouts", "methods": ["GET"], "upstream": "orders",
              "scopes": ["payouts:read"], "acr_values": ["urn:example:mfa"],
              "rules": [{"name": "same-tenant", "expression": "claims.tenant == path.tenant"}]}


def routes(issuer: DemoIssuer) -> list[dict[str, Any]]:
    return [*base_config(issuer, EchoUpstream(), Path("unused"))["routes"], TENANT_ROUTE, PAYOUTS_ROUTE, BOTH_ROUTE]


def reason(payload: bytes | str) -> str:
    value: str = json.loads(payload)["reason"]
    return value


async def test_a_tenant_rule_allows_its_tenant_and_refuses_the_others(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(routes=routes(issuer))
    seen = capture(gw)
    token = issuer.mint(tenant="acme")
    assert (await raw_request(gw.url, "/tenants/acme/orders", headers=bearer(token))).status == 200
    assert (await raw_request(gw.url, "/tenants/ac%6De/orders", headers=bearer(token))).status == 200  # "acme"
    before = metric("gateway_rule_denials_total", route="tenant-orders", rule="same-tenant")
    refused = await raw_request(gw.url, "/tenants/globex/orders", headers=bearer(token))
    assert refused.status == 403
    parsed = json.loads(refused.body)
    assert (parsed["error"], parsed["reason"]) == ("access_denied", "rule_failed")
    assert b"same-tenant" not in refused.body and b"acme" not in refused.body and b"globex" not in refused.body
    assert "WWW-Authenticate" not in refused.headers
    assert (seen[-1].failed_rule, seen[-1].detail) == ("same-tenant", "false")
    assert metric("gateway_rule_denials_total", route="tenant-orders", rule="same-tenant") == before + 1
    assert [r["path"] for r in upstream.requests] == ["/tenants/acme/orders", "/tenants/acme/orders"]


async def test_a_rule_that_errors_at_run_time_denies(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(routes=routes(issuer))
    seen = capture(gw)
    for token in (issuer.mint(), issuer.mint(tenant=42), issuer.mint(tenant={"id": "acme"})):  # no / odd claim
        response = await raw_request(gw.url, "/tenants/acme/orders", headers=bearer(token))
        assert (response.status, reason(response.body)) == (403, "rule_failed")
        assert seen[-1].failed_rule == "same-tenant"
    assert seen[0].detail == "error"
    deep: Any = "acme"
    for _ in range(40):  # claims nested deeper than the engine is handed: refused, not a crash
        deep = {"a": deep}
    response = await raw_request(gw.url, "/tenants/acme/orders", headers=bearer(issuer.mint(tenant="acme", x=deep)))
    assert (response.status, seen[-1].detail) == (403, "unsafe_input")
    assert upstream.requests == []


async def test_scopes_are_checked_before_rules_and_rules_before_step_up(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(routes=routes(issuer))
    no_scope = await raw_request(gw.url, "/tenants/acme/payouts", headers=bearer(issuer.mint(tenant="globex")))
    assert reason(no_scope.body) == "insufficient_scope"
    other_tenant = issuer.mint(tenant="globex", scope="payouts:read")
    assert reason((await raw_request(gw.url, "/tenants/acme/payouts", headers=bearer(other_tenant))).body) == (
        "rule_failed")
    no_mfa = issuer.mint(tenant="acme", scope="payouts:read", acr="urn:example:pwd")
    assert reason((await raw_request(gw.url, "/tenants/acme/payouts", headers=bearer(no_mfa))).body) == (
        "insufficient_user_authentication")
    mfa = issuer.mint(tenant="acme", scope="payouts:read", acr="urn:example:mfa")
    assert (await raw_request(gw.url, "/tenants/acme/payouts", headers=bearer(mfa))).status == 200


async def test_step_up_challenges_with_acr_values_and_max_age(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(routes=routes(issuer))
    seen = capture(gw)
    now = int(time.time())
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "acr_missing"),
        ({"acr": "urn:example:pwd", "auth_time": now}, "acr_not_accepted"),
        ({"acr": "urn:example:mfa"}, "auth_time_missing"),
        ({"acr": "urn:example:mfa", "auth_time": now - 3600}, "auth_time_too_old"),
    ]
    for claims, shortfall in cases:
        response = await raw_request(gw.url, "/payouts", headers=bearer(issuer.mint(**claims)))
        assert (response.status, reason(response.body)) == (401, "insufficient_user_authentication"), claims
        assert response.headers["WWW-Authenticate"] == (
            'Bearer realm="tokengate", error="insufficient_user_authentication", '
            'error_description="a stronger or more recent user authentication is required", '
            'acr_values="urn:example:mfa", max_age="300"')
        assert seen[-1].detail == shortfall
    fresh = issuer.mint(acr="urn:example:mfa", auth_time=now - 60)
    assert (await raw_request(gw.url, "/payouts", headers=bearer(fresh))).status == 200
    assert len(upstream.requests) == 1


async def test_the_decision_port_applies_rules_and_step_up(make_gateway: GatewayFactory, issuer: DemoIssuer) -> None:
    gw = await make_gateway(routes=routes(issuer), decision_listen="127.0.0.1:0", decision_sources=["nginx"])
    url = f"http://127.0.0.1:{gw.port('decision')}"

    async def check(uri: str, token: str) -> Any:
        return await raw_request(url, "/auth", headers={"X-Original-URI": uri, "X-Original-Method": "GET",
                                                        **bearer(token)})

    token = issuer.mint(tenant="acme")
    assert (await check("/tenants/acme/orders", token)).status == 200
    refused = await check("/tenants/globex/orders", token)
    assert (refused.status, reason(refused.body)) == (403, "rule_failed")
    assert "X-Auth-Subject" not in refused.headers
    step_up = await check("/payouts", token)
    assert 'acr_values="urn:example:mfa"' in step_up.headers["WWW-Authenticate"]


async def test_the_middleware_applies_rules_alike(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    route = {**TENANT_ROUTE, "path": "/orders/{tenant}/status", "methods": ["GET"],
             "rules": [{"name": "tenant-a", "expression": "claims.tenant == path.tenant"}]}
    base = base_config(issuer, EchoUpstream(), tmp_path / "unused.jsonl")["routes"]
    config = middleware_config(issuer, tmp_path / "audit.jsonl", routes=[route, *base])
    client = await aiohttp_client(orders_app(config, seen))
    token = issuer.mint(tenant="acme")
    assert (await client.get("/orders/acme/status", headers=bearer(token))).status == 200
    refused = await client.get("/orders/globex/status", headers=bearer(token))
    assert (refused.status, (await refused.json())["reason"]) == (403, "rule_failed")
    assert seen == [{"path": "/orders/acme/status"}]


async def test_a_reload_brings_new_rules_and_a_bad_one_keeps_the_running_ones(
    issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path
) -> None:
    data = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    data["routes"] = [*data["routes"], TENANT_ROUTE]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    server = Server(Gateway(load_config(path), str(path)))
    await server.start()
    url = f"http://127.0.0.1:{server.ports['proxy']}"
    token = issuer.mint(tenant="acme", region="eu")
    try:
        assert (await raw_request(url, "/tenants/acme/orders", headers=bearer(token))).status == 200
        data["routes"][-1] = {**TENANT_ROUTE, "rules": [{"name": "us-only", "expression": "claims.region == 'us'"}]}
        path.write_text(yaml.safe_dump(data))
        assert await Reloader(server.gateway).reload("test")
        assert reason((await raw_request(url, "/tenants/acme/orders", headers=bearer(token))).body) == "rule_failed"
        data["routes"][-1] = {**TENANT_ROUTE, "rules": [{"name": "broken", "expression": "claims.region =="}]}
        path.write_text(yaml.safe_dump(data))
        assert not await Reloader(server.gateway).reload("test")
        assert reason((await raw_request(url, "/tenants/acme/orders", headers=bearer(token))).body) == "rule_failed"
    finally:
        await server.stop()


# --- configuration ---------------------------------------------------------------------------


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return "\n".join(caught.value.problems)


ROUTE_EXTRA = MINIMAL_CONFIG.replace("    path: /r\n", "    path: /t/{tenant}\n")


def test_a_bad_expression_names_file_line_and_key() -> None:
    text = ROUTE_EXTRA + "    rules:\n      - name: same-tenant\n        expression: claims.tenant ==\n"
    problem = _problems(text)
    assert problem.startswith("gw.yaml:13: routes[0].rules[0].expression: rule same-tenant: invalid CEL expression")
    unknown = _problems(ROUTE_EXTRA + "    rules:\n      - name: r1\n        expression: tenant == 'a'\n")
    assert "gw.yaml:13: routes[0].rules[0].expression: rule r1: invalid CEL expression" in unknown
    not_bool = _problems(ROUTE_EXTRA + "    rules:\n      - name: r1\n        expression: 1 + 2\n")
    assert not_bool == ("gw.yaml:13: routes[0].rules[0].expression: rule r1: the expression yields int, "
                        "a rule must yield bool")


def test_rule_names_are_checked() -> None:
    bad = _problems(ROUTE_EXTRA + "    rules:\n      - name: 'has space'\n        expression: 'true'\n")
    assert bad.startswith("gw.yaml:12: routes[0].rules[0].name: rule name 'has space' must be")
    twice = _problems(ROUTE_EXTRA + "    rules:\n      - {name: a, expression: 'true'}\n"
                      "      - {name: a, expression: 'false'}\n")
    assert twice == "gw.yaml:13: routes[0].rules[1].name: rule name 'a' is used twice"


def test_step_up_and_public_routes_are_checked() -> None:
    assert _problems(MINIMAL_CONFIG + "    acr_values: ['a b']\n") == (
        "gw.yaml:11: routes[0].acr_values: acr value 'a b' must be non-empty, printable and free of spaces, quotes "
        "and backslashes")
    assert "routes[0].max_age" in _problems(MINIMAL_CONFIG + "    max_age: soon\n")
    public = _problems(MINIMAL_CONFIG + "    auth: none\n    rules: [{name: a, expression: 'true'}]\n")
    assert "a route with auth: none has no token for rules" in public
    parsed = parse_config(MINIMAL_CONFIG + "    acr_values: [urn:mfa]\n    max_age: 5m\n")
    assert (parsed.routes[0].acr_values, parsed.routes[0].max_age) == (["urn:mfa"], 300.0)
