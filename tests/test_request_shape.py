"""Request shapes refused before any route is considered.

Every request here is written byte for byte on a raw socket (aiohttp's client would fix the
Host, the version or the path first) against a real gateway, a real decision endpoint or a
real aiohttp application with the middleware; the echo upstream says what got through.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from gateway.demo import DemoIssuer, EchoUpstream
from gateway.middleware import TOKENGATE_KEY, setup_tokengate
from tests.helpers import GatewayFactory, RawResponse, RunningGateway, bearer, raw_request
from tests.test_middleware import middleware_config

# --- a raw HTTP client that sends any bytes at all ------------------------------------------


def _parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    response = RawResponse(int(status_line.split(" ")[1]))
    for line in lines:
        name, _, value = line.partition(":")
        response.headers.add(name.strip(), value.strip())
    response.body = body
    return response


async def send_raw(url: str, message: bytes, timeout: float = 5.0) -> RawResponse:
    """Write ``message`` as it is and read the answer until the server closes the connection."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(message)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return _parse(data)


def with_host(target: str, host: bytes) -> bytes:
    return f"GET {target} HTTP/1.1\r\n".encode() + b"Host: " + host + b"\r\nConnection: close\r\n\r\n"


def reason_of(response: RawResponse) -> str:
    return str(json.loads(response.body)["reason"])


# --- item 4: the Host header ---------------------------------------------------------------

BAD_HOSTS = [
    b"api example",  # whitespace inside
    b"api\texample",
    b"user@127.0.0.1",  # userinfo (RFC 9110 4.2.4: not in an http URI's authority)
    b"user:secret@127.0.0.1:8080",
    b"127.0.0.1:",  # an empty port
    b"127.0.0.1:http",  # a port that is not a number
    b"127.0.0.1:99999",  # out of range
    b"127.0.0.1:0",
    b"127.0.0.1:80:80",
    b"::1",  # an IPv6 address needs brackets
    b"[::1",
    b"[::1]x",
    b"[zz::1]",
    b"[fe80::1%25eth0]",  # zone identifiers are not for Host
    b"a,b",  # would split X-Forwarded-Host into two hosts
    b"a/b",
    b"a?b",
    b"a#b",
    b"a\\b",
    b"a%2eb",  # percent-encoded reg-name: decoded differently downstream
    b"a..b",  # an empty label
    b".a",
    b"\xc3\xa9vil.example",  # non-ASCII (IDNs travel as A-labels)
    b"a\xff",  # not even UTF-8
    b"a" * 300,
    b"",
]


@pytest.mark.parametrize("host", BAD_HOSTS)
async def test_invalid_host_is_400_and_never_forwarded(gw: RunningGateway, upstream: EchoUpstream, host: bytes) -> None:
    response = await send_raw(gw.url, with_host("/public/health", host))  # a public route: nothing else stops it
    assert response.status == 400
    assert reason_of(response) == "bad_host"
    assert "WWW-Authenticate" not in response.headers  # not about tokens
    assert upstream.requests == []
    records = await gw.audit_records()
    assert records[-1]["reason"] == "bad_host"


@pytest.mark.parametrize(
    "host",
    [b"127.0.0.1", b"127.0.0.1:8080", b"api.example", b"API.Example:443", b"[::1]", b"[::1]:8443",
     b"[::ffff:127.0.0.1]", b"svc_internal.local", b"api.example.", b"localhost:65535"],
)
async def test_valid_hosts_pass(gw: RunningGateway, upstream: EchoUpstream, host: bytes) -> None:
    response = await send_raw(gw.url, with_host("/public/health", host))
    assert response.status == 200
    assert len(upstream.requests) == 1


async def test_host_with_a_trailing_dot_meets_its_host_route(
    make_gateway: GatewayFactory, upstream: EchoUpstream
) -> None:
    """``admin.example.`` is the same host as ``admin.example`` to DNS and to virtual hosts upstream:
    it must not fall through to a laxer route listed after the host's own."""
    gw = await make_gateway(routes=[
        {"name": "admin", "path_prefix": "/", "host": "admin.example", "upstream": "orders", "scopes": ["admin"]},
        {"name": "public", "path_prefix": "/", "upstream": "orders", "auth": "none"},
    ])
    for host in (b"admin.example.", b"ADMIN.example.:80"):
        response = await send_raw(gw.url, with_host("/users", host))
        assert response.status == 401, host
    assert upstream.requests == []


async def test_http10_without_host_is_400(gw: RunningGateway, upstream: EchoUpstream) -> None:
    response = await send_raw(gw.url, b"GET /public/health HTTP/1.0\r\n\r\n")
    assert response.status == 400
    assert reason_of(response) == "bad_host"
    assert upstream.requests == []


async def test_http11_without_host_is_400_and_never_forwarded(gw: RunningGateway, upstream: EchoUpstream) -> None:
    # aiohttp's parser refuses it itself (RFC 9112 3.2), before the gateway sees a request
    response = await send_raw(gw.url, b"GET /public/health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert response.status == 400
    assert b"Traceback" not in response.body
    assert upstream.requests == []


async def test_duplicate_host_is_400_and_never_forwarded(gw: RunningGateway, upstream: EchoUpstream) -> None:
    response = await send_raw(
        gw.url, b"GET /public/health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 400
    assert upstream.requests == []


def _decision_url(gw: RunningGateway) -> str:
    return f"http://127.0.0.1:{gw.port('decision')}"


@pytest.mark.parametrize("host", ["user@127.0.0.1", "a b", "127.0.0.1:99999", "a/b"])
async def test_decision_endpoint_refuses_an_invalid_original_host(make_gateway: GatewayFactory, host: str) -> None:
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["nginx"],
                            trusted_proxies=["127.0.0.1/32"])
    response = await raw_request(_decision_url(gw), "/verify", headers={
        "X-Original-URI": "/public/health", "X-Original-Method": "GET", "X-Forwarded-Host": host})
    assert response.status == 400
    assert reason_of(response) == "bad_host"
    assert "WWW-Authenticate" not in response.headers
    assert (await gw.audit_records())[-1]["reason"] == "bad_host"


async def test_decision_endpoint_refuses_an_invalid_check_host(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["nginx"])
    response = await send_raw(_decision_url(gw), b"GET /verify HTTP/1.1\r\nHost: user@a\r\n"
                              b"X-Original-URI: /public/health\r\nX-Original-Method: GET\r\nConnection: close\r\n\r\n")
    assert response.status == 400
    assert reason_of(response) == "bad_host"


@pytest.fixture
async def middleware_service(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path) -> SimpleNamespace:
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"path": request.raw_path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    setup_tokengate(app, middleware_config(issuer, tmp_path / "audit.jsonl"))
    client = await aiohttp_client(app)
    return SimpleNamespace(url=f"http://{client.host}:{client.port}", seen=seen, gateway=client.app[TOKENGATE_KEY])


@pytest.mark.parametrize("host", [b"user@127.0.0.1", b"a b", b"127.0.0.1:http"])
async def test_middleware_refuses_an_invalid_host(middleware_service: SimpleNamespace, host: bytes) -> None:
    response = await send_raw(middleware_service.url, with_host("/public/health", host))
    assert response.status == 400
    assert reason_of(response) == "bad_host"
    assert middleware_service.seen == []


# --- item 15: HTTP versions ----------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"GET /public/health HTTP/0.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /public/health HTTP/0.9\r\n\r\n",
        b"GET /public/health HTTP/2.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ],
)
async def test_http_versions_other_than_1x_are_505(gw: RunningGateway, upstream: EchoUpstream, message: bytes) -> None:
    response = await send_raw(gw.url, message)
    assert response.status == 505
    assert reason_of(response) == "unsupported_http_version"
    assert "WWW-Authenticate" not in response.headers
    assert upstream.requests == []
    assert (await gw.audit_records())[-1]["reason"] == "unsupported_http_version"


@pytest.mark.parametrize(
    "message",
    [
        b"GET /public/health\r\n\r\n",  # a true HTTP/0.9 request line: no version at all
        b"GET /public/health HTTP/1.2\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /public/health HTTP/3.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ],
)
async def test_other_request_lines_are_refused_whichever_parser_runs(
    gw: RunningGateway, upstream: EchoUpstream, message: bytes,
) -> None:
    # aiohttp's C parser refuses some of these itself (400), its pure-Python parser passes them on (505)
    response = await send_raw(gw.url, message)
    assert response.status in (400, 505)
    assert upstream.requests == []


async def test_middleware_refuses_http09(middleware_service: SimpleNamespace) -> None:
    response = await send_raw(middleware_service.url, b"GET /public/health HTTP/0.9\r\nHost: 127.0.0.1\r\n\r\n")
    assert response.status == 505
    assert middleware_service.seen == []


# --- item 5: percent-encoded bytes that are not UTF-8 ---------------------------------------

NOT_UTF8 = [
    "/public/files/%C0%AF..%C0%AForders",  # overlong "/"
    "/public/files/%C0%AE%C0%AE/%C0%AE%C0%AE/orders",  # overlong "."
    "/public/files/%E0%80%AF",  # three-byte overlong "/"
    "/public/files/%c0%af",  # lower-case hex
    "/public/files/%80",  # a lone continuation byte
    "/public/files/a%BFb",
    "/public/files/%ED%A0%80",  # an encoded surrogate (U+D800)
    "/public/files/%ED%BF%BF",
    "/public/files/%F4%90%80%80",  # above U+10FFFF
    "/public/files/%FF",
    "/public/files/%C3",  # a truncated sequence
    "/public/files/%F0%9F%98/x",
]


@pytest.mark.parametrize("target", NOT_UTF8)
async def test_percent_encoding_that_is_not_utf8_is_400(
    gw: RunningGateway, upstream: EchoUpstream, target: str
) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 400
    assert reason_of(response) == "bad_path"
    assert upstream.requests == []


async def test_encoded_utf8_still_passes(gw: RunningGateway, upstream: EchoUpstream) -> None:
    response = await raw_request(gw.url, "/public/files/caf%c3%a9/%F0%9F%98%80")
    assert response.status == 200
    assert [r["path"] for r in upstream.requests] == ["/public/files/caf%C3%A9/%F0%9F%98%80"]


# --- item 15: path parameters --------------------------------------------------------------

ADMIN_ROUTES = [
    {"name": "admin", "path_prefix": "/api/admin", "methods": ["GET"], "upstream": "orders", "scopes": ["admin"]},
    {"name": "api", "path_prefix": "/api", "methods": ["GET"], "upstream": "orders", "auth": "none"},
]


@pytest.mark.parametrize(
    "target",
    ["/api/admin;x/users", "/api/admin;/users", "/api/admin;jsessionid=1", "/api/admin%3Bx/users",
     "/api/admin%3bx/users", "/api/x;y"],
)
async def test_path_parameters_are_400_by_default(
    make_gateway: GatewayFactory, upstream: EchoUpstream, target: str
) -> None:
    gw = await make_gateway(routes=ADMIN_ROUTES)
    response = await raw_request(gw.url, target)
    assert response.status == 400
    assert reason_of(response) == "bad_path"
    assert upstream.requests == []


async def test_a_route_may_allow_path_parameters(
    make_gateway: GatewayFactory, upstream: EchoUpstream, issuer: DemoIssuer,
) -> None:
    routes = [{**ADMIN_ROUTES[0], "allow_path_parameters": True}, {**ADMIN_ROUTES[1], "allow_path_parameters": True}]
    gw = await make_gateway(routes=routes)
    # matched as the upstream (a servlet container) routes it, /api/admin/users: the admin route decides
    assert (await raw_request(gw.url, "/api/admin;x/users")).status == 401
    assert (await raw_request(gw.url, "/api/admin%3Bx/users")).status == 401
    token = issuer.mint(scope="admin")
    ok = await raw_request(gw.url, "/api/admin;jsessionid=1/users", headers=bearer(token))
    assert ok.status == 200
    public = await raw_request(gw.url, "/api/docs;v=2")
    assert public.status == 200
    # forwarded as sent (normalised): the application still reads its parameters
    assert [r["path"] for r in upstream.requests] == ["/api/admin;jsessionid=1/users", "/api/docs;v=2"]


async def test_path_parameters_allowed_on_a_laxer_route_do_not_reach_a_stricter_one(
    make_gateway: GatewayFactory, upstream: EchoUpstream,
) -> None:
    gw = await make_gateway(routes=[ADMIN_ROUTES[0], {**ADMIN_ROUTES[1], "allow_path_parameters": True}])
    response = await raw_request(gw.url, "/api/admin;x/users")  # the admin route does not allow them
    assert response.status == 400
    assert upstream.requests == []


async def test_dot_segments_with_encoded_parameters_are_400(gw: RunningGateway, upstream: EchoUpstream) -> None:
    for target in ("/public/files/..%3B/..%3B/orders", "/public/files/%2e%2e%3bx/orders"):
        response = await raw_request(gw.url, target)
        assert response.status == 400, target
    assert upstream.requests == []


# --- item 15: case and trailing-character variants of a protected prefix --------------------


@pytest.mark.parametrize(
    "target",
    ["/api/admin.", "/api/admin..", "/api/admin%20", "/api/admin%09", "/api/admin.%20.", "/api/%20admin",
     "/api/admin%C2%A0", "/api/admin%E3%80%80/users", "/api/admin./users", "/api/..."],
)
async def test_trailing_character_variants_of_a_protected_prefix_are_400(
    make_gateway: GatewayFactory, upstream: EchoUpstream, target: str,
) -> None:
    gw = await make_gateway(routes=ADMIN_ROUTES)
    response = await raw_request(gw.url, target)
    assert response.status == 400, target
    assert reason_of(response) == "bad_path"
    assert upstream.requests == []


async def test_trailing_characters_that_change_no_route_pass(
    make_gateway: GatewayFactory, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(routes=ADMIN_ROUTES)
    for target in ("/api/zones/example.org.", "/api/search/a%20", "/api/admin/"):
        response = await raw_request(gw.url, target)
        assert response.status == (401 if target.startswith("/api/admin") else 200), target
    assert [r["path"] for r in upstream.requests] == ["/api/zones/example.org.", "/api/search/a%20"]


async def test_trailing_slash_cannot_dodge_an_exact_route(make_gateway: GatewayFactory, upstream: EchoUpstream) -> None:
    gw = await make_gateway(routes=[
        {"name": "admin", "path": "/admin", "upstream": "orders", "scopes": ["admin"]},
        {"name": "site", "path_prefix": "/", "upstream": "orders", "auth": "none"},
    ])
    assert (await raw_request(gw.url, "/admin/")).status == 400
    assert (await raw_request(gw.url, "/admin")).status == 401
    assert (await raw_request(gw.url, "/about/")).status == 200
    assert [r["path"] for r in upstream.requests] == ["/about/"]


async def test_case_insensitive_route(make_gateway: GatewayFactory, upstream: EchoUpstream) -> None:
    gw = await make_gateway(routes=[{**ADMIN_ROUTES[0], "case_insensitive": True}, ADMIN_ROUTES[1]])
    for target in ("/api/ADMIN", "/api/Admin/users", "/API/admin/x", "/api/ADMIN."):
        response = await raw_request(gw.url, target)
        assert response.status in (400, 401), target
    assert upstream.requests == []
    assert (await raw_request(gw.url, "/api/administrators")).status == 200  # still a segment boundary


# --- item 15: a percent-encoded access_token name -------------------------------------------


@pytest.mark.parametrize(
    "query", ["access%5Ftoken={t}", "access%5ftoken={t}", "%61ccess_token={t}", "a=1;access_token={t}",
              "a=1&access%5Ftoken={t}"],
)
async def test_encoded_access_token_name_is_a_query_token(
    gw: RunningGateway, upstream: EchoUpstream, issuer: DemoIssuer, query: str,
) -> None:
    token = issuer.mint(scope="orders:read")
    response = await raw_request(gw.url, "/orders?" + query.format(t=token))
    assert response.status == 400
    assert reason_of(response) == "token_not_in_header"
    # next to an Authorization header: two methods in one request (RFC 6750 section 2)
    both = await raw_request(gw.url, "/orders?" + query.format(t="x"), headers=bearer(token))
    assert both.status == 400
    assert reason_of(both) == "malformed_authorization"
    assert upstream.requests == []


async def test_encoded_access_token_name_is_validated_where_query_tokens_are_allowed(
    make_gateway: GatewayFactory, upstream: EchoUpstream, issuer: DemoIssuer,
) -> None:
    gw = await make_gateway(routes=[
        {"name": "feed", "path": "/feed", "upstream": "orders", "scopes": ["feed"], "allow_query_token": True},
    ])
    forged = await raw_request(gw.url, "/feed?access%5Ftoken=not-a-token")
    assert forged.status == 401
    assert reason_of(forged) == "invalid_token"  # looked at, not taken for a request without a token
    token = issuer.mint(scope="feed")
    assert (await raw_request(gw.url, f"/feed?access%5Ftoken={token}")).status == 200
    two = await raw_request(gw.url, f"/feed?access_token={token}&access%5Ftoken=other")
    assert two.status == 400  # which one would the upstream read?
    assert len(upstream.requests) == 1
