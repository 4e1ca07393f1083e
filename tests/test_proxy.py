"""End to end: RFC 6750 answers, scopes, the streaming proxy and its headers.

A real gateway forwards to a real upstream on 127.0.0.1; what the upstream received is read
back from the upstream itself (``EchoUpstream.requests`` or the ``ProbeUpstream`` below).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.demo import DemoIssuer, EchoUpstream
from tests.helpers import GatewayFactory, RunningGateway, bearer, free_port, raw_request

MiB = 2**20
ALLOWED_BODY_KEYS = {"error", "reason", "request_id", "error_description"}


async def call(
    gw: Any, method: str = "GET", path: str = "/orders", token: str | None = None, **kwargs: Any
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers.update(bearer(token))
    async with aiohttp.ClientSession() as session, session.request(
        method, gw.url + path, headers=headers, **kwargs
    ) as resp:
        body = await resp.read()
        try:
            parsed: Any = json.loads(body) if body else body
        except ValueError:
            parsed = body
        return resp.status, parsed, resp.headers


# --- RFC 6750 answers ----------------------------------------------------------------------


async def test_no_token_is_401_with_a_bare_challenge(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    status, body, headers = await call(gw)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'  # RFC 6750 3.1: no error code
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert body["reason"] == "missing_token"
    assert set(body) <= ALLOWED_BODY_KEYS
    assert upstream.requests == []


async def test_other_auth_scheme_gets_the_bearer_challenge(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    status, _, headers = await call(gw, headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'
    assert upstream.requests == []


async def test_realm_is_configurable(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(realm="orders-api")
    _, _, headers = await call(gw)
    assert headers["WWW-Authenticate"] == 'Bearer realm="orders-api"'


async def test_invalid_token_is_401_invalid_token(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    expired = issuer.mint(ttl=-3600)
    status, body, headers = await call(gw, token=expired)
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tokengate", error="invalid_token"')
    assert body["error"] == "invalid_token"
    assert body["reason"] == "token_expired"
    assert set(body) <= ALLOWED_BODY_KEYS
    # no internals: no library messages, keys or issuer addresses
    text = challenge + str(body)
    for leak in ("Signature", "signature has", issuer.issuer, issuer.keys[0].kid, "Traceback", "jwt"):
        assert leak not in text
    assert upstream.requests == []


async def test_garbage_token_is_401_invalid_token(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    for token in ("abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"):
        status, body, headers = await call(gw, token=token)
        assert (status, body["error"]) == (401, "invalid_token"), token
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_missing_scope_is_403_insufficient_scope(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    status, body, headers = await call(gw, token=issuer.mint(scope="profile email"))
    assert status == 403
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="tokengate", error="insufficient_scope", '
        'error_description="the access token lacks a required scope", scope="orders:read"'
    )
    assert body["error"] == "insufficient_scope"
    assert upstream.requests == []


async def test_token_in_query_is_refused(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    token = issuer.mint()
    status, body, headers = await call(gw, path=f"/orders?access_token={token}")
    assert status == 400
    assert body["error"] == "invalid_request"
    assert body["reason"] == "token_not_in_header"
    assert 'error="invalid_request"' in headers["WWW-Authenticate"]
    # header and query together: one method per request (RFC 6750 2)
    status, _, _ = await call(gw, path=f"/orders?access_token={token}", token=token)
    assert status == 400
    assert upstream.requests == []


async def test_token_in_form_body_is_not_accepted(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    status, body, _ = await call(gw, "POST", data={"access_token": issuer.mint(scope="orders:write")})
    assert (status, body["reason"]) == (401, "missing_token")
    assert upstream.requests == []


async def test_query_token_when_the_route_opts_in(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(routes=[
        {"name": "feed", "path": "/feed", "upstream": "orders", "scopes": ["orders:read"], "allow_query_token": True},
    ])
    status, _, _ = await call(gw, path=f"/feed?access_token={issuer.mint()}")
    assert status == 200
    status, body, _ = await call(gw, path=f"/feed?access_token={issuer.mint(scope='profile')}")
    assert (status, body["error"]) == (403, "insufficient_scope")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer a b", "Bearer tok\u00e9n", "Bearer a,b", "Bearer  ==abc", "Bearer a=b", 'Bearer "abc"'],
)
async def test_malformed_bearer_header_is_400(
    gw: RunningGateway, upstream: EchoUpstream, authorization: str
) -> None:
    response = await raw_request(gw.url, "/orders", headers={"Authorization": authorization})
    assert response.status == 400
    assert b'"invalid_request"' in response.body
    assert upstream.requests == []


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer    "])
async def test_bearer_without_credentials_is_a_missing_token(
    gw: RunningGateway, upstream: EchoUpstream, authorization: str
) -> None:
    response = await raw_request(gw.url, "/orders", headers={"Authorization": authorization})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'
    assert upstream.requests == []


async def test_two_authorization_headers_are_400(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    token = issuer.mint()
    response = await raw_request(
        gw.url, "/orders", extra_lines=[f"Authorization: Bearer {token}", f"Authorization: Bearer {token}"]
    )
    assert response.status == 400
    assert upstream.requests == []


async def test_bearer_scheme_is_case_insensitive(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    response = await raw_request(gw.url, "/orders", headers={"Authorization": f"bEaReR {issuer.mint()}"})
    assert response.status == 200


# --- scopes --------------------------------------------------------------------------------


SCOPE_ROUTES = [
    {"name": "all-of", "path": "/all", "upstream": "orders", "scopes": ["orders:read", "orders:export"]},
    {"name": "any-of", "path": "/any", "upstream": "orders", "any_scopes": ["orders:read", "orders:admin"]},
    {"name": "both", "path": "/both", "upstream": "orders", "scopes": ["orders:read"],
     "any_scopes": ["region:eu", "region:us"]},
]


@pytest.mark.parametrize(
    ("claims", "path", "status"),
    [
        ({"scope": "orders:read orders:export"}, "/all", 200),
        ({"scope": "orders:export   orders:read extra"}, "/all", 200),
        ({"scope": "orders:read"}, "/all", 403),
        ({"scope": "orders:read:export"}, "/all", 403),
        ({"scope": None, "scp": ["orders:read", "orders:export"]}, "/all", 200),
        ({"scope": None, "scp": ["orders:read"]}, "/all", 403),
        ({"scope": "orders:read", "scp": ["orders:export"]}, "/all", 200),  # both claims count
        ({"scope": None}, "/all", 403),
        ({"scope": "orders:admin"}, "/any", 200),
        ({"scope": "orders:read"}, "/any", 200),
        ({"scope": None, "scp": ["orders:admin"]}, "/any", 200),
        ({"scope": "orders:write"}, "/any", 403),
        ({"scope": "orders:read region:us"}, "/both", 200),
        ({"scope": "orders:read"}, "/both", 403),
        ({"scope": "region:eu"}, "/both", 403),
    ],
)
async def test_scope_and_scp(
    make_gateway: GatewayFactory, issuer: DemoIssuer, claims: dict[str, Any], path: str, status: int
) -> None:
    gw = await make_gateway(routes=SCOPE_ROUTES)
    got, body, _ = await call(gw, path=path, token=issuer.mint(**claims))
    assert got == status
    if status == 403:
        assert body["error"] == "insufficient_scope"


async def test_403_names_the_missing_scopes(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(routes=SCOPE_ROUTES)
    _, _, headers = await call(gw, path="/all", token=issuer.mint(scope="orders:read"))
    assert headers["WWW-Authenticate"].endswith('scope="orders:export"')
    _, _, headers = await call(gw, path="/any", token=issuer.mint(scope="profile"))
    assert headers["WWW-Authenticate"].endswith('scope="orders:admin orders:read"')


# --- routing answers -----------------------------------------------------------------------


async def test_404_is_never_forwarded(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    for path in ("/", "/nothing", "/orders/1/2", "/metrics", "/healthz"):
        status, body, _ = await call(gw, path=path, token=issuer.mint(scope="orders:read orders:write"))
        assert (status, body["reason"]) == (404, "no_route"), path
    assert upstream.requests == []


async def test_405_with_allow(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    status, body, headers = await call(gw, "PATCH", "/orders", token=issuer.mint(scope="orders:write"))
    assert (status, body["reason"]) == (405, "method_not_allowed")
    assert headers["Allow"] == "GET, HEAD, POST"
    assert upstream.requests == []


async def test_head_is_forwarded_without_a_body(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    status, body, _ = await call(gw, "HEAD", "/orders", token=issuer.mint())
    assert status == 200
    assert body == b""
    assert [r["method"] for r in upstream.requests] == ["HEAD"]


# --- headers -------------------------------------------------------------------------------


async def test_hop_by_hop_request_headers_are_not_forwarded(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    response = await raw_request(
        gw.url, "/orders",
        headers={"Authorization": f"Bearer {issuer.mint()}", "Keep-Alive": "timeout=5", "TE": "trailers",
                 "Trailer": "X-Checksum", "Upgrade": "websocket", "Proxy-Authorization": "Basic eDp5",
                 "Proxy-Connection": "keep-alive", "X-Private-Hop": "secret", "X-Other-Hop": "secret",
                 "X-Kept": "yes"},
        extra_lines=["Connection: X-Private-Hop", "Connection: x-other-hop, Keep-Alive"],
    )
    assert response.status == 200
    seen = {name.lower() for name in upstream.requests[0]["headers"]}
    for name in ("keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection",
                 "x-private-hop", "x-other-hop"):
        assert name not in seen, name
    assert upstream.requests[0]["headers"]["X-Kept"] == "yes"
    assert upstream.requests[0]["headers"].get("Connection", "keep-alive").lower() != "x-private-hop"


async def test_spoofed_identity_headers_are_replaced(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    token = issuer.mint(sub="alice", scope="orders:read orders:admin", client_id="web-app")
    response = await raw_request(
        gw.url, "/orders", headers={"Authorization": f"Bearer {token}"},
        extra_lines=["X-Auth-Subject: admin", "x-auth-subject: root", "X-AUTH-CLIENT-ID: trusted-backend",
                     "X-Auth-Scopes: orders:write superuser"],
    )
    assert response.status == 200
    headers = upstream.requests[0]["headers"]
    identity = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-auth-")}
    assert identity == {"x-auth-subject": "alice", "x-auth-client-id": "web-app",
                        "x-auth-scopes": "orders:admin orders:read"}
    assert sum(1 for k in headers if k.lower() == "x-auth-subject") == 1


async def test_identity_headers_are_stripped_on_public_routes(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    status, _, _ = await call(gw, path="/public/health",
                              headers={"X-Auth-Subject": "admin", "X-Auth-Scopes": "everything"})
    assert status == 200
    assert not any(k.lower().startswith("x-auth-") for k in upstream.requests[0]["headers"])


async def test_identity_header_names_are_configurable(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(identity_headers={"subject": "X-User", "client_id": "X-Client", "scopes": "X-Scopes"})
    status, _, _ = await call(gw, token=issuer.mint(sub="bob"), headers={"X-User": "admin", "X-Client": "x"})
    assert status == 200
    headers = upstream.requests[0]["headers"]
    assert (headers["X-User"], headers["X-Client"], headers["X-Scopes"]) == ("bob", "demo-client", "orders:read")


async def test_forwarded_headers_from_an_untrusted_peer(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    status, _, _ = await call(gw, token=issuer.mint(), headers={
        "X-Forwarded-For": "203.0.113.66", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=203.0.113.66", "X-Real-Ip": "203.0.113.66"})
    assert status == 200
    headers = upstream.requests[0]["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == gw.url.removeprefix("http://")
    assert "Forwarded" not in headers
    assert headers["Host"] == upstream.url.removeprefix("http://")  # the upstream's own authority
    records = await gw.audit_records()
    assert records[-1]["client_ip"] == "127.0.0.1"


async def test_forwarded_headers_from_a_trusted_proxy(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(trusted_proxies=["127.0.0.0/8"])
    status, _, _ = await call(gw, token=issuer.mint(), headers={
        "X-Forwarded-For": "198.51.100.7, 127.0.0.2", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "api.example"})
    assert status == 200
    headers = upstream.requests[0]["headers"]
    assert headers["X-Forwarded-For"] == "198.51.100.7, 127.0.0.2, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"
    # the host the route was matched on, not one a proxy named: the upstream acts on what was authorised
    assert headers["X-Forwarded-Host"] == gw.url.removeprefix("http://")
    records = await gw.audit_records()
    assert records[-1]["client_ip"] == "198.51.100.7"  # the last hop that is not a trusted proxy


@pytest.mark.parametrize(("sent", "seen"), [("https", "https"), ("HTTPS", "https"), ("https, http", "https"),
                                          ("gopher", "http"), ("javascript:alert(1)", "http"), ("", "http")])
async def test_the_upstream_sees_the_scheme_the_decision_used(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, sent: str, seen: str
) -> None:
    """A trusted proxy's X-Forwarded-Proto is read as http or https, and that is what goes upstream:
    never its raw value (the upstream builds URLs from it), never another scheme than the one the
    gateway decided on."""
    gw = await make_gateway(trusted_proxies=["127.0.0.0/8"])
    status, _, _ = await call(gw, token=issuer.mint(), headers={"X-Forwarded-Proto": sent})
    assert status == 200
    assert upstream.requests[-1]["headers"]["X-Forwarded-Proto"] == seen


async def test_trusted_proxy_with_a_garbage_chain(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(trusted_proxies=["127.0.0.1/32"])
    await call(gw, token=issuer.mint(), headers={"X-Forwarded-For": "not-an-ip"})
    records = await gw.audit_records()
    assert records[-1]["client_ip"] == "127.0.0.1"


async def test_request_id_is_propagated(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    _, _, headers = await call(gw, token=issuer.mint(), headers={"X-Request-Id": "req-123"})
    assert headers["X-Request-Id"] == "req-123"
    seen = {k.lower(): v for k, v in upstream.requests[0]["headers"].items()}
    assert seen["x-request-id"] == "req-123"
    _, _, headers = await call(gw, headers={"X-Request-Id": "bad id with spaces\u00e9"})
    assert headers["X-Request-Id"] != "bad id with spaces\u00e9"
    assert len(headers["X-Request-Id"]) >= 16


async def test_authorization_forwarding_can_be_turned_off(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(upstreams={"orders": {"url": upstream.url, "forward_authorization": False}})
    status, _, _ = await call(gw, token=issuer.mint())
    assert status == 200
    assert "Authorization" not in upstream.requests[0]["headers"]


async def test_preserve_host(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(upstreams={"orders": {"url": upstream.url, "preserve_host": True}})
    await call(gw, token=issuer.mint())
    assert upstream.requests[0]["headers"]["Host"] == gw.url.removeprefix("http://")


# --- a probe upstream: status codes, response headers, streaming proof, connection reuse -----


class ProbeUpstream:
    """A real upstream whose answers the tests script, and which sees bytes as they arrive."""

    def __init__(self) -> None:
        self.received = 0
        self.first_bytes = asyncio.Event()
        self.client_has_data = asyncio.Event()
        self.peers: list[tuple[str, int]] = []
        self.upload_sha256 = ""
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            self.received += len(chunk)
            if self.received >= MiB:
                self.first_bytes.set()
        self.upload_sha256 = digest.hexdigest()
        return web.json_response({"bytes": self.received})

    async def download(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = b"x" * 65536
        for _ in range(160):  # 10 MiB, then wait until the client has seen some of it
            await response.write(block)
        await asyncio.wait_for(self.client_has_data.wait(), 10)
        for _ in range(160):
            await response.write(block)
        await response.write_eof()
        return response

    async def headers(self, _: web.Request) -> web.Response:
        return web.Response(status=201, text="made", headers={
            "X-Custom": "kept", "Keep-Alive": "timeout=99", "Proxy-Authenticate": "Basic",
            "Trailer": "X-Sum", "Upgrade": "h2c", "Set-Cookie": "a=b"})

    async def peer(self, request: web.Request) -> web.Response:
        self.peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return web.Response(status=418, text="teapot")

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/download", self.download)
        app.router.add_get("/headers", self.headers)
        app.router.add_get("/peer", self.peer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def probe() -> AsyncIterator[ProbeUpstream]:
    server = ProbeUpstream()
    await server.start()
    yield server
    await server.stop()


def probe_config(probe: ProbeUpstream, **upstream: Any) -> dict[str, Any]:
    return {
        "upstreams": {"probe": {"url": probe.url, **upstream}},
        "routes": [{"name": "probe", "path_prefix": "/", "methods": ["GET", "POST"], "upstream": "probe",
                    "auth": "none"}],
        "max_body_size": "64MiB",
    }


async def test_upstream_status_and_end_to_end_headers_pass_through(
    make_gateway: GatewayFactory, probe: ProbeUpstream
) -> None:
    gw = await make_gateway(**probe_config(probe))
    response = await raw_request(gw.url, "/headers")
    assert response.status == 201
    assert response.body == b"made"
    assert response.headers["X-Custom"] == "kept"
    assert response.headers["Set-Cookie"] == "a=b"
    for name in ("Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert name not in response.headers, name
    status, body, _ = await call(gw, path="/peer")
    assert (status, body) == (418, b"teapot")  # an upstream error is the upstream's answer


async def test_upstream_connections_are_kept_alive(
    make_gateway: GatewayFactory, probe: ProbeUpstream
) -> None:
    gw = await make_gateway(**probe_config(probe))
    for _ in range(10):
        status, _, _ = await call(gw, path="/peer")
        assert status == 418
    assert len(set(probe.peers)) == 1


async def test_request_body_is_streamed_to_the_upstream(
    make_gateway: GatewayFactory, probe: ProbeUpstream
) -> None:
    """The second half of the body is only sent once the upstream has received part of the first."""
    gw = await make_gateway(**probe_config(probe))
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for index in range(320):  # 20 MiB
            if index == 160:
                await asyncio.wait_for(probe.first_bytes.wait(), 10)
            chunk = os.urandom(65536)
            digest.update(chunk)
            yield chunk

    status, answer, _ = await call(gw, "POST", "/upload", data=body())
    assert status == 200
    assert answer == {"bytes": 20 * MiB}
    assert probe.upload_sha256 == digest.hexdigest()


async def test_response_body_is_streamed_to_the_client(
    make_gateway: GatewayFactory, probe: ProbeUpstream
) -> None:
    """The upstream sends the second half only once the client has received part of the first."""
    gw = await make_gateway(**probe_config(probe))
    received = 0
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/download") as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(65536):
            received += len(chunk)
            if received >= MiB:
                probe.client_has_data.set()
    assert received == 20 * MiB


# --- bodies through the EchoUpstream -------------------------------------------------------


async def test_streamed_20_mib_upload(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(max_body_size="32MiB")
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(320):
            chunk = os.urandom(65536)
            digest.update(chunk)
            yield chunk

    status, answer, _ = await call(gw, "POST", "/orders", token=issuer.mint(scope="orders:write"), data=body())
    assert status == 200
    assert answer["body_bytes"] == 20 * MiB
    assert answer["body_sha256"] == digest.hexdigest()
    assert upstream.requests[0]["body_sha256"] == digest.hexdigest()
    records = await gw.audit_records()
    assert records[-1]["bytes_in"] == 20 * MiB


async def test_upload_with_content_length(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(max_body_size="4MiB")
    payload = os.urandom(3 * MiB)
    status, answer, _ = await call(gw, "PUT", "/orders/9", token=issuer.mint(scope="orders:write"), data=payload)
    assert status == 200
    assert (answer["body_bytes"], answer["body_sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())


async def test_20_mib_download(gw: RunningGateway, issuer: DemoIssuer) -> None:
    received = 0
    async with aiohttp.ClientSession() as session, session.get(
        f"{gw.url}/download/{20 * MiB}", headers=bearer(issuer.mint())
    ) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(65536):
            received += len(chunk)
    assert received == 20 * MiB
    records = await gw.audit_records()
    assert records[-1]["bytes_out"] == 20 * MiB


async def test_body_over_the_limit_with_content_length_is_413(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(max_body_size="1MiB")
    status, body, _ = await call(gw, "POST", "/orders", token=issuer.mint(scope="orders:write"),
                                 data=b"x" * (MiB + 1))
    print("BODY", status, body)
    assert upstream.requests == []


async def test_chunked_body_over_the_limit_is_413(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(max_body_size="1MiB")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):  # 4 MiB
            yield b"x" * 65536

    status, body_json, _ = await call(gw, "POST", "/orders", token=issuer.mint(scope="orders:write"), data=body())
    assert (status, body_json["reason"]) == (413, "body_too_large")
    assert upstream.requests == []  # the upstream never got a complete request
    records = await gw.audit_records()
    assert (records[-1]["status"], records[-1]["reason"]) == (413, "body_too_large")
    # the half-sent upstream connection is not reused for the next request
    status, answer, _ = await call(gw, "POST", "/orders", token=issuer.mint(scope="orders:write"), data=b"ok")
    assert (status, answer["body_bytes"]) == (200, 2)


async def test_route_body_limit_overrides_the_global_one(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    routes = [{"name": "small", "path": "/orders", "methods": ["POST"], "upstream": "orders",
               "scopes": ["orders:write"], "max_body_size": "1KiB"}]
    gw = await make_gateway(routes=routes)
    token = issuer.mint(scope="orders:write")
    status, _, _ = await call(gw, "POST", "/orders", token=token, data=b"x" * 1024)
    assert status == 200
    status, _, _ = await call(gw, "POST", "/orders", token=token, data=b"x" * 1025)
    assert status == 413


async def _expect_continue(gw: Any, token: str | None) -> tuple[bytes, bytes]:
    """Send a head with ``Expect: 100-continue``; the first answer, then the rest after sending the body."""
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"POST /orders HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5\r\n"
                 "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
        writer.write(b"hello")
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return first, rest


async def test_expect_100_continue_after_the_policy_passed(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    first, rest = await _expect_continue(gw, issuer.mint(scope="orders:write"))
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert upstream.requests[0]["body_bytes"] == 5
    assert "expect" not in {k.lower() for k in upstream.requests[0]["headers"]}


async def test_expect_100_continue_is_not_sent_to_a_denied_request(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    first, _ = await _expect_continue(gw, None)
    assert first.startswith(b"HTTP/1.1 401 ")
    assert upstream.requests == []


# --- upstream failures ---------------------------------------------------------------------


async def test_upstream_timeout_is_504(
    make_gateway: GatewayFactory, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(upstreams={"orders": {"url": upstream.url, "timeout": "200ms"}})
    status, body, _ = await call(gw, path="/slow/1")
    assert (status, body["reason"], body["error"]) == (504, "upstream_timeout", "gateway_timeout")
    records = await gw.audit_records()
    assert (records[-1]["status"], records[-1]["reason"]) == (504, "upstream_timeout")


async def test_slow_upstream_within_the_timeout_is_fine(
    make_gateway: GatewayFactory, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(upstreams={"orders": {"url": upstream.url, "timeout": "2s"}})
    status, _, _ = await call(gw, path="/slow/0.2")
    assert status == 200


async def test_upstream_down_is_502(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(upstreams={"orders": {"url": f"http://127.0.0.1:{free_port()}"}})
    status, body, _ = await call(gw, token=issuer.mint())
    assert (status, body["reason"], body["error"]) == (502, "upstream_unavailable", "bad_gateway")
    assert set(body) <= ALLOWED_BODY_KEYS
    records = await gw.audit_records()
    assert (records[-1]["status"], records[-1]["reason"]) == (502, "upstream_unavailable")


async def test_a_second_forwarded_for_line_from_a_trusted_proxy_counts(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    # HAProxy's "option forwardfor" adds its own line instead of appending to the client's
    gw = await make_gateway(trusted_proxies=["127.0.0.0/8"])
    response = await raw_request(gw.url, "/orders", headers=bearer(issuer.mint()),
                                 extra_lines=["X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 9.9.9.9"])
    assert response.status == 200
    assert upstream.requests[0]["headers"]["X-Forwarded-For"] == "6.6.6.6, 9.9.9.9, 127.0.0.1"
    assert (await gw.audit_records())[-1]["client_ip"] == "9.9.9.9"


async def test_underscore_spellings_of_identity_headers_are_dropped(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    status, _, _ = await call(gw, path="/public/health", headers={
        "X_Auth_Subject": "admin", "X-Auth_Scopes": "orders:admin", "x_auth_client_id": "root"})
    assert status == 200
    seen = {name.lower().replace("_", "-") for name in upstream.requests[0]["headers"]}
    assert not seen & {"x-auth-subject", "x-auth-scopes", "x-auth-client-id"}


async def test_client_address_headers_only_pass_from_a_trusted_proxy(
    make_gateway: GatewayFactory, upstream: EchoUpstream
) -> None:
    spoof = {"X-Real-IP": "1.2.3.4", "X-Original-URI": "/admin", "True-Client-IP": "1.2.3.4"}
    untrusted = await make_gateway()
    assert (await call(untrusted, path="/public/health", headers=spoof))[0] == 200
    assert not {"X-Real-IP", "X-Original-URI", "True-Client-IP"} & set(upstream.requests[-1]["headers"])
    trusted = await make_gateway(trusted_proxies=["127.0.0.0/8"])
    assert (await call(trusted, path="/public/health", headers=spoof))[0] == 200
    passed = upstream.requests[-1]["headers"]
    assert passed["X-Real-IP"] == "1.2.3.4" and "X-Original-URI" not in passed


async def test_a_chunked_body_is_forwarded_whatever_the_case_of_transfer_encoding(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    response = await raw_request(
        gw.url, "/orders", method="POST", headers=bearer(issuer.mint(scope="orders:write")),
        extra_lines=["Transfer-Encoding: Chunked", "", "5", "hello", "0", ""],
    )
    assert response.status == 200
    assert upstream.requests[-1]["body_bytes"] == 5


async def test_a_route_body_limit_of_zero_is_enforced(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path
) -> None:
    from tests.helpers import base_config

    routes = base_config(issuer, upstream, tmp_path / "a.jsonl")["routes"]
    for route in routes:
        if route["name"] == "create-order":
            route["max_body_size"] = 0
    gw = await make_gateway(routes=routes)
    status, body, _ = await call(gw, method="POST", path="/orders", token=issuer.mint(scope="orders:write"), data=b"x")
    assert (status, body["reason"]) == (413, "body_too_large")
    assert upstream.requests == []
