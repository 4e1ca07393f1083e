"""Client headers that upstreams trust (``strip_request_headers``).

Upstream frameworks and the authenticating proxies they usually sit behind trust well-known
request headers for the user (``X-Remote-User``, ``X-Forwarded-User``...), the client address
(``X-Originating-IP``, ``Client-IP``...) or the URL and method to act on (``X-Rewrite-URL``,
``X-HTTP-Method-Override``...). Before the fix a client could send them through the gateway.
Now the default list drops them from every request, in any case and with ``_`` for ``-``;
a route (or the top level) may replace the list. What the upstream received is read back
from the real echo upstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.config import DEFAULT_STRIP_REQUEST_HEADERS, ConfigError, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.middleware import setup_tokengate
from gateway.proxy import compile_strip
from tests.helpers import MINIMAL_CONFIG, GatewayFactory, RunningGateway, base_config, bearer, raw_request
from tests.test_middleware import UNUSED_UPSTREAM

# every example of the issue, and family members, in the spellings clients use
TRUSTED_BY_UPSTREAMS = [
    "X-User", "X-User-Id", "x-user-email", "X-Remote-User", "Remote-User", "X_Remote_User", "REMOTE_USER",
    "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Preferred-Username", "X-Forwarded-Groups",
    "X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Preferred-Username", "X-Auth-Request-Groups",
    "X-Authenticated-User", "X-Authenticated-Userid", "X-Consumer-Username", "X-WEBAUTH-USER",
    "X-MS-CLIENT-PRINCIPAL-NAME", "X-Goog-Authenticated-User-Email", "x-amzn-oidc-identity", "Impersonate-User",
    "X-Forwarded-Client-Cert", "X-SSL-Client-DN", "SSL_CLIENT_S_DN",
    "X-Originating-IP", "Client-IP", "X-Cluster-Client-IP", "x_originating_ip",
    "X-Rewrite-URL", "X-Original-URL", "X-Forwarded-Path", "X-Original-Host", "X-Host",
    "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x_http_method_override",
]
# client-address headers a trusted proxy sets itself: dropped from others only (the fixed rule)
CLIENT_ADDRESS = ["X-Real-IP", "True-Client-IP", "Fastly-Client-IP", "X-Forwarded-Ssl", "X-Forwarded-Scheme"]
# near misses that must pass: prefixes match at a "-" boundary only, credentials are the client's own
KEPT = ["X-Userland", "X-Users-Count", "X-Auth-Token", "X-Api-Key", "X-Hostname", "X-Remote-Users-Page", "Accept"]


def _sent(names: list[str]) -> dict[str, str]:
    return {name: f"spoofed-{i}" for i, name in enumerate(names)}


def _received(upstream: EchoUpstream) -> set[str]:
    return {name.lower().replace("_", "-") for name in upstream.requests[-1]["headers"]}


def _gone(names: list[str], upstream: EchoUpstream) -> list[str]:
    """Names of ``names`` the upstream did receive (should be none)."""
    got = _received(upstream)
    return [n for n in names if n.lower().replace("_", "-") in got]


async def test_default_list_drops_every_family(gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream) -> None:
    headers = {**_sent(TRUSTED_BY_UPSTREAMS + CLIENT_ADDRESS + KEPT), **bearer(issuer.mint())}
    response = await raw_request(gw.url, "/orders", headers=headers)
    assert response.status == 200
    assert _gone(TRUSTED_BY_UPSTREAMS + CLIENT_ADDRESS, upstream) == []
    seen = upstream.requests[-1]["headers"]
    for name in KEPT:
        assert seen[name].startswith("spoofed-"), name
    assert seen["X-Auth-Subject"] == "alice"


async def test_public_routes_and_repeated_lines_too(gw: RunningGateway, upstream: EchoUpstream) -> None:
    lines = ["X-Remote-User: admin", "x-remote-user: root", "X_REMOTE_USER: admin", "X-HTTP-Method-Override: DELETE"]
    response = await raw_request(gw.url, "/public/health", extra_lines=lines)
    assert response.status == 200
    assert _gone(["X-Remote-User", "X-HTTP-Method-Override"], upstream) == []


async def test_a_trusted_proxy_cannot_pass_them_either(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    """Ingresses pass client headers on: trust in the peer does not extend to these names."""
    gw = await make_gateway(trusted_proxies=["127.0.0.1/32"])
    headers = {**_sent(TRUSTED_BY_UPSTREAMS + CLIENT_ADDRESS), **bearer(issuer.mint())}
    assert (await raw_request(gw.url, "/orders", headers=headers)).status == 200
    assert _gone(TRUSTED_BY_UPSTREAMS, upstream) == []
    # what a trusted proxy sets itself still passes (unchanged contract)
    seen = upstream.requests[-1]["headers"]
    assert seen["X-Real-IP"].startswith("spoofed-") and seen["True-Client-IP"].startswith("spoofed-")


async def test_a_route_replaces_the_list(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    routes = [
        {"name": "legacy", "path": "/legacy", "upstream": "orders", "auth": "none",
         "strip_request_headers": ["X-Tenant"]},
        {"name": "more", "path": "/more", "upstream": "orders", "auth": "none",
         "strip_request_headers": ["@defaults", "X-Tenant", "X-Partner-*"]},
        {"name": "default", "path": "/default", "upstream": "orders", "auth": "none"},
    ]
    gw = await make_gateway(routes=routes)
    headers = _sent(["X-Tenant", "X_Partner_Id", "X-User", "X-HTTP-Method-Override"])

    assert (await raw_request(gw.url, "/legacy", headers=headers)).status == 200
    got = _received(upstream)
    assert "x-tenant" not in got and {"x-user", "x-http-method-override", "x-partner-id"} <= got

    assert (await raw_request(gw.url, "/more", headers=headers)).status == 200
    assert not {"x-tenant", "x-partner-id", "x-user", "x-http-method-override"} & _received(upstream)

    assert (await raw_request(gw.url, "/default", headers=headers)).status == 200
    got = _received(upstream)
    assert {"x-tenant", "x-partner-id"} <= got and not {"x-user", "x-http-method-override"} & got


async def test_the_top_level_list_can_be_replaced(make_gateway: GatewayFactory, upstream: EchoUpstream) -> None:
    gw = await make_gateway(strip_request_headers=["X-Tenant"])
    headers = _sent(["X-Tenant", "X-User"])
    assert (await raw_request(gw.url, "/public/health", headers=headers)).status == 200
    got = _received(upstream)
    assert "x-tenant" not in got and "x-user" in got
    # identity headers stay the gateway's own whatever the list says
    assert (await raw_request(gw.url, "/public/health", headers={"X-Auth-Subject": "mallory"})).status == 200
    assert "x-auth-subject" not in _received(upstream)


async def test_the_middleware_drops_them_before_the_handler(
    aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path
) -> None:
    seen: list[dict[str, str]] = []

    async def orders(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/orders", orders)
    data = base_config(issuer, UNUSED_UPSTREAM, tmp_path / "audit.jsonl")
    setup_tokengate(app, parse_config(yaml.safe_dump(data)))
    client = await aiohttp_client(app)
    resp = await client.get("/orders", headers={**_sent(TRUSTED_BY_UPSTREAMS + KEPT), **bearer(issuer.mint())})
    assert resp.status == 200
    got = {name.lower().replace("_", "-") for name in seen[-1]}
    assert [n for n in TRUSTED_BY_UPSTREAMS if n.lower().replace("_", "-") in got] == []
    assert all(seen[-1][name].startswith("spoofed-") for name in KEPT)
    assert seen[-1]["X-Auth-Subject"] == "alice"


def test_default_list_compiles_to_names_and_prefixes() -> None:
    rule = compile_strip(DEFAULT_STRIP_REQUEST_HEADERS)
    assert {"x-user", "remote-user", "x-http-method-override", "client-ip", "x-originating-ip"} <= rule.names
    assert "x-auth-request-" in rule.prefixes and "x-user-" in rule.prefixes
    assert all(not p.endswith("*") and p.endswith("-") for p in rule.prefixes)
    with_defaults = compile_strip(["@defaults", "X_Tenant"])
    assert with_defaults.names == rule.names | {"x-tenant"} and with_defaults.prefixes == rule.prefixes


@pytest.mark.parametrize(("entry", "message"), [
    ("*", "is not a header name"),
    ("X Bad", "is not a header name"),
    ("X-*-Y", "is not a header name"),
    ("Host", "which the gateway needs"),
    ("content_length", "which the gateway needs"),
    ("Content-*", "would strip content-length"),
    ("Transfer-*", "would strip transfer-encoding"),
])
def test_bad_entries_are_config_errors_naming_the_key(entry: str, message: str) -> None:
    text = MINIMAL_CONFIG + f"strip_request_headers: [X-User, {entry!r}]\n"
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gw.yaml")
    line = text.splitlines().index(f"strip_request_headers: [X-User, {entry!r}]") + 1
    assert f"gw.yaml:{line}: strip_request_headers[1]: " in str(raised.value)
    assert message in str(raised.value)
    route = MINIMAL_CONFIG + f"    strip_request_headers: [{entry!r}]\n"
    with pytest.raises(ConfigError) as raised:
        parse_config(route, "gw.yaml")
    assert "routes[0].strip_request_headers[0]: " in str(raised.value)
