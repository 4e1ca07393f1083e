"""``claim_headers`` send claims upstream as headers.

Real issuer (signed tokens), real echo upstream, real gateway sockets; the decision port is asked
as Traefik asks, the middleware runs inside a real aiohttp application. Hostile claim values are
properly signed: the issuer wrote them, the gateway refuses to forward them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.claim_headers import ClaimMapping, UnsafeClaim, lookup, render
from gateway.config import ConfigError, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.middleware import TOKEN_KEY, setup_tokengate
from tests.helpers import AUDIENCE, MINIMAL_CONFIG, GatewayFactory, RunningGateway, bearer
from tests.test_forward_auth import traefik_headers
from tests.test_middleware import UNUSED_UPSTREAM

ROUTES = [
    {"name": "orders", "path": "/orders", "methods": ["GET"], "upstream": "orders", "scopes": ["orders:read"]},
    {"name": "reports", "path_prefix": "/reports", "methods": ["GET"], "upstream": "orders",
     "claim_headers": {"X-Report-Tenant": "tenant", "X-Roles": "realm_access.roles"},
     "claim_header_separator": " "},
    {"name": "health", "path": "/public/health", "upstream": "orders", "auth": "none"},
]
CLAIM_HEADERS = {"X-Tenant": "tenant", "X-Groups": "groups", "X-Level": "level", "X-Verified": "email_verified"}


@pytest.fixture
async def claims_gw(make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(routes=ROUTES, claim_headers=CLAIM_HEADERS)


async def echo(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
        return resp.status, json.loads(body) if resp.status == 200 else json.loads(body or b"{}")


async def test_claims_reach_the_upstream_as_headers(
    claims_gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    token = issuer.mint(tenant="acme", groups=["admins", "ops"], level=3, email_verified=True)
    status, seen = await echo(http, f"{claims_gw.url}/orders", **bearer(token))
    assert status == 200
    headers = seen["headers"]
    assert headers["X-Tenant"] == "acme"
    assert headers["X-Groups"] == "admins,ops"  # arrays joined with the default separator
    assert headers["X-Level"] == "3" and headers["X-Verified"] == "true"
    assert headers["X-Auth-Subject"] == "alice"  # the identity headers as before


async def test_client_copies_are_dropped_on_every_route(
    claims_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    forged = {"X-Tenant": "evil", "X_Groups": "admins", "x-report-tenant": "evil", "X-Roles": "root"}
    # the token has no tenant: the client's copy must not survive in its place
    status, seen = await echo(http, f"{claims_gw.url}/orders", **bearer(issuer.mint()), **forged)
    assert status == 200
    names = {name.lower().replace("_", "-") for name in seen["headers"]}
    assert not names & {"x-tenant", "x-groups", "x-report-tenant", "x-roles"}
    # a public route: no token, no claim headers, and still no client copies (of any route's names)
    status, seen = await echo(http, f"{claims_gw.url}/public/health", **forged)
    assert status == 200
    names = {name.lower().replace("_", "-") for name in seen["headers"]}
    assert not names & {"x-tenant", "x-groups", "x-report-tenant", "x-roles"}


async def test_route_mapping_replaces_the_default_with_its_separator(
    claims_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    token = issuer.mint(tenant="acme", groups=["a"], realm_access={"roles": ["viewer", "editor"]})
    status, seen = await echo(http, f"{claims_gw.url}/reports/q1", **bearer(token))
    assert status == 200
    headers = seen["headers"]
    assert headers["X-Report-Tenant"] == "acme"
    assert headers["X-Roles"] == "viewer editor"  # nested claim, the route's separator
    assert "X-Tenant" not in headers and "X-Groups" not in headers  # the default mapping is replaced


HOSTILE_CLAIMS: list[tuple[str, Any]] = [
    ("tenant", "acme\r\nX-Auth-Scopes: orders:admin"),
    ("tenant", "acme\nX-Injected: 1"),
    ("tenant", "ac\x00me"),
    ("tenant", "ac\tme"),
    ("tenant", "acm\u00e9"),
    ("tenant", " acme"),
    ("tenant", {"id": "acme"}),  # an object cannot be a header value
    ("groups", ["admins,ops"]),  # would reach the upstream as two groups
    ("groups", ["admins", ""]),
    ("groups", ["admins", " ops"]),
    ("groups", ["admins", ["nested"]]),
    ("groups", ["admins", None]),
    ("groups", ["admins\r\nX-Injected: 1"]),
]


@pytest.mark.parametrize(("claim", "value"), HOSTILE_CLAIMS)
async def test_unsafe_claim_values_are_refused_never_forwarded(
    claims_gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession,
    claim: str, value: Any,
) -> None:
    token = issuer.mint(**{claim: value})
    async with http.get(f"{claims_gw.url}/orders", headers=bearer(token)) as resp:
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert (await resp.json())["reason"] == "invalid_claim"
    assert upstream.requests == []
    record = (await claims_gw.audit_records())[-1]
    assert (record["reason"], record["status"]) == ("invalid_claim", 401)
    assert "acme" not in json.dumps(record)  # the value is never written anywhere


async def test_absent_null_or_empty_claims_send_no_header(
    claims_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    token = issuer.mint(tenant=None, groups=[], level=0, email_verified=False)
    status, seen = await echo(http, f"{claims_gw.url}/orders", **bearer(token))
    assert status == 200
    headers = seen["headers"]
    assert "X-Tenant" not in headers and "X-Groups" not in headers
    assert headers["X-Level"] == "0" and headers["X-Verified"] == "false"


# --- the decision port ---------------------------------------------------------------------


async def test_decision_port_returns_claim_headers_for_the_ingress(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(routes=ROUTES, claim_headers=CLAIM_HEADERS, decision_listen="127.0.0.1:0",
                            decision_sources=["traefik"], trusted_proxies=["127.0.0.1/32"])
    url = f"http://127.0.0.1:{gw.port('decision')}/"
    token = issuer.mint(tenant="acme", groups=["admins", "ops"])
    async with http.get(url, headers=traefik_headers("GET", "/orders", **bearer(token))) as resp:
        assert resp.status == 200
        assert resp.headers["X-Tenant"] == "acme" and resp.headers["X-Groups"] == "admins,ops"
        # every configured name is answered, empty when there is no value: copying them over the
        # client's headers never lets the client's own through
        assert resp.headers["X-Level"] == "" and resp.headers["X-Roles"] == ""
    async with http.get(url, headers=traefik_headers("GET", "/public/health", **{"X-Tenant": "evil"})) as resp:
        assert resp.status == 200
        assert resp.headers["X-Tenant"] == "" and resp.headers["X-Report-Tenant"] == ""
    hostile = issuer.mint(tenant="acme\r\nX-Injected: 1")
    async with http.get(url, headers=traefik_headers("GET", "/orders", **bearer(hostile))) as resp:
        assert resp.status == 401
        assert (await resp.json())["reason"] == "invalid_claim"
        assert "X-Tenant" not in resp.headers


# --- the middleware ------------------------------------------------------------------------


async def test_middleware_handler_sees_the_gateways_values_only(
    aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path
) -> None:
    data = yaml.safe_load(MINIMAL_CONFIG)
    data["issuers"] = [{"issuer": issuer.issuer, "audiences": [AUDIENCE]}]
    data["upstreams"] = {"svc": {"url": UNUSED_UPSTREAM.url}}
    data["routes"] = [{"name": "r", "path": "/r", "upstream": "svc"},
                      {"name": "open", "path": "/open", "upstream": "svc", "auth": "none"}]
    data["claim_headers"] = {"X-Tenant": "tenant", "X-Groups": "groups"}
    data["claim_header_separator"] = ";"
    data["audit"] = {"sink": "none"}
    seen: list[dict[str, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"tenant": request.headers.get("X-Tenant"), "groups": request.headers.get("X-Groups"),
                     "underscore": request.headers.get("X_Tenant"),
                     "sub": request[TOKEN_KEY].subject if TOKEN_KEY in request else None})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/r", handler)
    app.router.add_get("/open", handler)
    setup_tokengate(app, parse_config(yaml.safe_dump(data), "mw.yaml"))
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    token = issuer.mint(tenant="acme", groups=["a", "b"])
    resp = await client.get("/r", headers={**bearer(token), "X-Tenant": "evil", "X_Tenant": "evil"})
    assert resp.status == 200
    resp = await client.get("/open", headers={"X-Tenant": "evil", "X-Groups": "admins"})
    assert resp.status == 200
    resp = await client.get("/r", headers=bearer(issuer.mint(groups=["a;b"])))
    assert resp.status == 401 and (await resp.json())["reason"] == "invalid_claim"
    assert seen == [
        {"tenant": "acme", "groups": "a;b", "underscore": None, "sub": "alice"},
        {"tenant": None, "groups": None, "underscore": None, "sub": None},
    ]


# --- the values, unit by unit --------------------------------------------------------------


def test_render_and_lookup() -> None:
    assert render("acme", ",") == "acme"
    assert render(["a", "b", 3, True], ", ") == "a, b, 3, true"
    assert render(1.5, ",") == "1.5" and render(False, ",") == "false"
    assert render(None, ",") is None and render([], ",") is None
    for bad in ({"a": 1}, ["a", {"b": 1}], ["a,b"], ["a", ""]):
        with pytest.raises(UnsafeClaim):
            render(bad, ",")
    with pytest.raises(UnsafeClaim):  # ", " splits at "," for most readers: an element may not hold one
        render(["a,b"], ", ")
    claims = {"realm_access": {"roles": ["r1"]}, "https://example.com/roles": ["x"], "a": "plain"}
    assert lookup(claims, "realm_access.roles") == ["r1"]
    assert lookup(claims, "https://example.com/roles") == ["x"]  # a top-level name with dots wins
    assert lookup(claims, "a.b") is None and lookup(claims, "missing.deeper") is None
    mapping = ClaimMapping((("X-A", "a"), ("X-Missing", "nope")), ",")
    assert mapping.values(claims) == (("X-A", "plain"),)
    # past MAX_VALUE (an introspection answer can be as large as the server likes; a JWT cannot)
    with pytest.raises(UnsafeClaim):
        mapping.values({"a": "x" * 8193})
    with pytest.raises(UnsafeClaim):
        ClaimMapping((("X-A", "a"),), ",").values({"a": ["x" * 100] * 100})


# --- configuration -------------------------------------------------------------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return caught.value.problems


@pytest.mark.parametrize("name", ["Host", "Authorization", "Connection", "Transfer-Encoding", "Keep-Alive", "TE",
                                  "Upgrade", "Cookie", "X-Forwarded-For", "X-Request-Id", "Proxy-Authorization",
                                  "DPoP", "bad name", "X-Tenant\r\nX"])
def test_reserved_or_invalid_claim_header_names_are_refused(name: str) -> None:
    text = MINIMAL_CONFIG + f"claim_headers:\n  {json.dumps(name)}: tenant\n"
    [problem] = problems_of(text)
    assert problem.startswith(f"gw.yaml:12: claim_headers.{name}: ")
    assert "cannot carry a claim" in problem or "is not a valid header name" in problem


def test_identity_and_duplicate_claim_header_names_are_refused() -> None:
    text = MINIMAL_CONFIG.replace("    upstream: svc\n", "    upstream: svc\n    claim_headers:\n"
                                  "      X_Auth_Subject: tenant\n      X-Tenant: tenant\n      x_tenant: org\n")
    problems = problems_of(text)
    assert "gw.yaml:12: routes[0].claim_headers.X_Auth_Subject: X_Auth_Subject is an identity header " \
           "(identity_headers): it cannot carry a claim" in problems
    assert any(p.startswith("gw.yaml:14: routes[0].claim_headers.x_tenant: x_tenant is named twice") for p in problems)


@pytest.mark.parametrize("separator", ["", "\t", "\n", "\u00e9", "123456789"])
def test_bad_separators_are_refused(separator: str) -> None:
    text = MINIMAL_CONFIG + f"claim_header_separator: {json.dumps(separator)}\n"
    [problem] = problems_of(text)
    assert problem.startswith("gw.yaml:11: claim_header_separator: claim_header_separator is 1-8 printable ASCII")
