"""A route's ``token_source`` (a named cookie or a custom header).

Real issuer, real echo upstream, real sockets (raw requests where aiohttp's client would merge or
refuse what a hostile client sends); the decision port is asked as Traefik asks.
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

from gateway.config import ConfigError, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.middleware import TOKEN_KEY, setup_tokengate
from gateway.reasons import Reason
from gateway.token_source import cookie_values, source_token, without_cookie
from tests.helpers import AUDIENCE, MINIMAL_CONFIG, GatewayFactory, RunningGateway, bearer, raw_request
from tests.test_forward_auth import traefik_headers
from tests.test_middleware import UNUSED_UPSTREAM

ROUTES = [
    {"name": "browser", "path_prefix": "/app", "methods": ["GET"], "upstream": "orders",
     "token_source": {"cookie": "at"}, "allow_query_token": True},
    {"name": "machine", "path_prefix": "/api", "methods": ["GET"], "upstream": "orders",
     "token_source": {"header": "X-Api-Token"}},
    {"name": "plain", "path": "/orders", "methods": ["GET"], "upstream": "orders"},
]


@pytest.fixture
async def sources_gw(make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(routes=ROUTES)


async def get(gw: RunningGateway, path: str, headers: dict[str, str] | None = None,
              lines: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    response = await raw_request(gw.url, path, headers=headers, extra_lines=lines)
    return response.status, json.loads(response.body or b"{}")


async def test_cookie_token_passes_and_stays_at_the_gateway(
    sources_gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    token = issuer.mint()
    status, seen = await get(sources_gw, "/app/x", {"Cookie": f"theme=dark; at={token}; lang=en"})
    assert status == 200
    assert seen["headers"]["Cookie"] == "theme=dark; lang=en"  # the others kept, as sent
    assert seen["headers"]["X-Auth-Subject"] == "alice"
    assert token not in json.dumps(seen)
    status, seen = await get(sources_gw, "/app/x", {"Cookie": f'at="{token}"'})  # RFC 6265 quoted value
    assert status == 200 and "Cookie" not in seen["headers"]  # a line left empty goes too
    record = (await sources_gw.audit_records())[-1]
    assert (record["reason"], record["route"]) == ("allowed", "browser")


async def test_custom_header_token_passes_and_is_stripped(
    sources_gw: RunningGateway, issuer: DemoIssuer
) -> None:
    token = issuer.mint()
    status, seen = await get(sources_gw, "/api/x", {"X-Api-Token": token})
    assert status == 200
    assert "X-Api-Token" not in seen["headers"] and token not in json.dumps(seen)
    # spelled with "_" (read as the same header by CGI, PHP, nginx's underscores_in_headers): dropped too
    status, seen = await get(sources_gw, "/api/x", {**bearer(token), "X_Api_Token": "x"})
    assert status == 200 and "X_Api_Token" not in seen["headers"]


async def test_authorization_alone_still_works_on_those_routes(sources_gw: RunningGateway, issuer: DemoIssuer) -> None:
    for path in ("/app/x", "/api/x"):
        status, _ = await get(sources_gw, path, bearer(issuer.mint()))
        assert status == 200


@pytest.mark.parametrize(("path", "headers", "lines"), [
    ("/app/x", {"Cookie": "at={t}", "Authorization": "Bearer {t}"}, []),  # cookie and Authorization
    ("/app/x", {"Cookie": "at={t}; at={t}"}, []),  # the cookie twice
    ("/app/x", {}, ["Cookie: at={t}", "Cookie: at={t}"]),  # twice, in two Cookie lines (as HTTP/2 splits them)
    ("/app/x?access_token={t}", {"Cookie": "at={t}"}, []),  # cookie and query
    ("/api/x", {"X-Api-Token": "{t}", "Authorization": "Bearer {t}"}, []),
    ("/api/x", {}, ["X-Api-Token: {t}", "X-Api-Token: {t}"]),  # the header twice
    ("/api/x", {"X-Api-Token": "{t}", "Authorization": "DPoP {t}"}, []),
])
async def test_two_ways_at_once_is_400(
    sources_gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream, path: str, headers: dict[str, str],
    lines: list[str],
) -> None:
    token = issuer.mint()
    filled = {name: value.format(t=token) for name, value in headers.items()}
    response = await raw_request(sources_gw.url, path.format(t=token), headers=filled,
                                 extra_lines=[line.format(t=token) for line in lines])
    assert response.status == 400
    assert json.loads(response.body)["reason"] == "ambiguous_token"
    assert upstream.requests == []


@pytest.mark.parametrize("value", ["a b", "<script>", "tok%20en", '"unterminated', "x,y"])
async def test_malformed_values_are_400(sources_gw: RunningGateway, upstream: EchoUpstream, value: str) -> None:
    for path, headers in (("/app/x", {"Cookie": f"at={value}"}), ("/api/x", {"X-Api-Token": value})):
        status, body = await get(sources_gw, path, headers)
        assert (status, body["reason"]) == (400, "malformed_token"), (path, value)
    assert upstream.requests == []


async def test_empty_or_absent_is_no_token(sources_gw: RunningGateway) -> None:
    for path, headers in (("/app/x", {"Cookie": "at="}), ("/app/x", {"Cookie": "other=1"}),
                          ("/api/x", {"X-Api-Token": ""}), ("/api/x", {})):
        status, body = await get(sources_gw, path, headers)
        assert (status, body["reason"]) == (401, "missing_token")


async def test_default_routes_read_authorization_only(sources_gw: RunningGateway, issuer: DemoIssuer) -> None:
    token = issuer.mint()
    for headers in ({"Cookie": f"at={token}"}, {"X-Api-Token": token}):
        status, body = await get(sources_gw, "/orders", headers)
        assert (status, body["reason"]) == (401, "missing_token")


async def test_a_dpop_bound_token_from_a_cookie_is_unproven(sources_gw: RunningGateway, issuer: DemoIssuer) -> None:
    bound = issuer.mint(cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
    for path, headers in (("/app/x", {"Cookie": f"at={bound}"}), ("/api/x", {"X-Api-Token": bound})):
        status, body = await get(sources_gw, path, headers)
        assert (status, body["reason"]) == (401, "unproven_binding")


async def test_invalid_cookie_token_is_refused_like_any_token(sources_gw: RunningGateway, issuer: DemoIssuer) -> None:
    other = DemoIssuer(audience=AUDIENCE)
    await other.start()
    try:
        status, body = await get(sources_gw, "/app/x", {"Cookie": f"at={other.mint()}"})
    finally:
        await other.stop()
    assert (status, body["reason"]) == (401, "unknown_issuer")
    status, body = await get(sources_gw, "/app/x", {"Cookie": f"at={issuer.mint(ttl=-120)}"})
    assert (status, body["reason"]) == (401, "token_expired")


# --- the decision port and the middleware --------------------------------------------------


async def test_decision_port_reads_the_original_cookie(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(routes=ROUTES, decision_listen="127.0.0.1:0", decision_sources=["traefik"],
                            trusted_proxies=["127.0.0.1/32"])
    url = f"http://127.0.0.1:{gw.port('decision')}/"
    token = issuer.mint(sub="carol")
    async with http.get(url, headers=traefik_headers("GET", "/app/x", Cookie=f"at={token}")) as resp:
        assert resp.status == 200 and resp.headers["X-Auth-Subject"] == "carol"
    both = traefik_headers("GET", "/app/x", Cookie=f"at={token}", **bearer(token))
    async with http.get(url, headers=both) as resp:
        assert resp.status == 400 and (await resp.json())["reason"] == "ambiguous_token"


async def test_middleware_handler_never_sees_the_token_cookie(
    aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path
) -> None:
    data = yaml.safe_load(MINIMAL_CONFIG)
    data["issuers"] = [{"issuer": issuer.issuer, "audiences": [AUDIENCE]}]
    data["upstreams"] = {"svc": {"url": UNUSED_UPSTREAM.url}}
    data["routes"] = [{"name": "r", "path": "/r", "upstream": "svc", "token_source": {"cookie": "at"}},
                      {"name": "h", "path": "/h", "upstream": "svc", "token_source": {"header": "X-Api-Token"}}]
    data["audit"] = {"sink": "none"}
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"cookies": dict(request.cookies), "header": request.headers.get("X-Api-Token"),
                     "sub": request[TOKEN_KEY].subject})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/r", handler)
    app.router.add_get("/h", handler)
    setup_tokengate(app, parse_config(yaml.safe_dump(data), "mw.yaml"))
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    token = issuer.mint()
    assert (await client.get("/r", headers={"Cookie": f"a=1; at={token}"})).status == 200
    assert (await client.get("/h", headers={"X-Api-Token": token})).status == 200
    assert seen == [{"cookies": {"a": "1"}, "header": None, "sub": "alice"},
                    {"cookies": {}, "header": None, "sub": "alice"}]


# --- parsing, unit by unit -----------------------------------------------------------------


def test_cookie_parsing_and_removal() -> None:
    assert cookie_values(["a=1; at=x; b=2", "at=y"], "at") == ["x", "y"]
    assert cookie_values(["xat=1; at_=2; AT=3"], "at") == []  # names match exactly (RFC 6265: case counts)
    assert without_cookie("a=1; at=x; b=2", frozenset({"at"})) == "a=1; b=2"
    assert without_cookie("at=x", frozenset({"at"})) == ""
    assert source_token(None, "at", None) is None


# --- configuration -------------------------------------------------------------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return caught.value.problems


@pytest.mark.parametrize(("source", "expected"), [
    ("{cookie: at, header: X-T}", "gw.yaml:11: routes[0].token_source: token_source names exactly one of cookie"),
    ("{}", "gw.yaml:11: routes[0].token_source: token_source names exactly one of cookie or header"),
    ("{header: Authorization}", "gw.yaml:11: routes[0].token_source.header: Authorization is where tokens come from"),
    ("{header: Cookie}", "gw.yaml:11: routes[0].token_source.header: Cookie is set or read by the gateway"),
    ("{header: DPoP}", "gw.yaml:11: routes[0].token_source.header: DPoP is set or read by the gateway"),
    ("{header: X-Auth-Subject}", "gw.yaml:11: routes[0].token_source.header: X-Auth-Subject is an identity header"),
    ('{cookie: "a b"}', "gw.yaml:11: routes[0].token_source.cookie: 'a b' is not a cookie name"),
    ("{cookie: at, path: /}", "gw.yaml:11: routes[0].token_source.path: "),
])
def test_token_source_configuration_errors(source: str, expected: str) -> None:
    text = MINIMAL_CONFIG + f"    token_source: {source}\n"
    problems = problems_of(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_token_source_needs_a_token_route() -> None:
    text = MINIMAL_CONFIG + "    auth: none\n    token_source: {cookie: at}\n"
    assert any("a route with auth: none reads no token, so no token_source" in p for p in problems_of(text))


def test_token_source_header_cannot_be_a_claim_header() -> None:
    text = MINIMAL_CONFIG + "    token_source: {header: X-Tenant}\nclaim_headers: {X-Tenant: tenant}\n"
    assert "gw.yaml:11: routes[0].token_source.header: X-Tenant is also a claim header: it cannot carry the token" \
        in problems_of(text)


def test_reason_words() -> None:
    assert (Reason.AMBIGUOUS_TOKEN.status, Reason.AMBIGUOUS_TOKEN.error) == (400, "invalid_request")
    assert (Reason.MALFORMED_TOKEN.status, Reason.MALFORMED_TOKEN.value) == (400, "malformed_token")
