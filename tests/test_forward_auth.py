"""The forward-auth decision endpoint behind a real nginx (auth_request), and Traefik-,
ingress-nginx- and Envoy-shaped check requests sent straight to the decision port.

nginx is the Debian package, started here on a free port with its own configuration, pid
file, logs and temp paths under tmp_path (``daemon off``), in front of the echo upstream.
The server block is read from docs/forward-auth.md, so the documented snippet is what is tested.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import Address, ConfigError, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.forward_auth import CheckRequestError, original_request
from gateway.runtime import Gateway
from gateway.server import Server
from tests.helpers import MINIMAL_CONFIG, GatewayFactory, RunningGateway, bearer, free_port, metric, raw_request

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin")

DOC = Path(__file__).resolve().parents[1] / "docs" / "forward-auth.md"


def documented_nginx_server(port: int, decision_port: int, upstream: str) -> str:
    """The ``server`` block of docs/forward-auth.md, with the test's ports filled in."""
    match = re.search(r"```nginx\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/forward-auth.md has no nginx snippet"
    block = match.group(1)
    for placeholder, value in (("listen 80;", f"listen 127.0.0.1:{port};"),
                               ("http://127.0.0.1:8081", f"http://127.0.0.1:{decision_port}"),
                               ("http://orders-backend/", f"{upstream}/")):
        assert placeholder in block, placeholder
        block = block.replace(placeholder, value)
    return block


NGINX_MAIN = """
{user}
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{server}
}}
"""


@dataclass
class Nginx:
    url: str
    error_log: Path


@dataclass
class Stack:
    gateway: RunningGateway
    nginx: Nginx

    @property
    def decision_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port('decision')}"


@pytest.fixture
def nginx_binary() -> str:
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian package 'nginx'; `make system-deps` installs it)")
    return NGINX


def _start_nginx(
    binary: str, directory: Path, decision_port: int, upstream: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""  # workers keep our uid
    server = documented_nginx_server(port, decision_port, upstream)
    config = directory / "nginx.conf"
    config.write_text(NGINX_MAIN.format(user=user, tmp=directory, server=server))
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return process, f"http://127.0.0.1:{port}"


async def _wait_listening(url: str, process: subprocess.Popen[bytes], error_log: Path) -> None:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            log = error_log.read_text() if error_log.exists() else ""
            pytest.fail(f"nginx exited with {process.returncode}: {stderr}{log}")
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    pytest.fail("nginx did not start listening within 10 s")


@pytest.fixture
async def stack(
    nginx_binary: str, make_gateway: GatewayFactory, upstream: EchoUpstream, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Gateway with a decision port, and nginx using it with auth_request in front of the echo upstream."""
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["nginx"], trusted_proxies=["127.0.0.1/32"])
    directory = tmp_path / "nginx"
    directory.mkdir()
    process, url = _start_nginx(nginx_binary, directory, gw.port("decision"), upstream.url)
    try:
        await _wait_listening(url, process, directory / "error.log")
        yield Stack(gw, Nginx(url, directory / "error.log"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture
async def decision_gw(make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway whose decision port trusts 127.0.0.1 (the test plays the ingress) and reads both
    nginx's and Traefik's headers, so that the rule that they must agree is exercised."""
    return await make_gateway(
        decision_listen="127.0.0.1:0", decision_sources=["nginx", "traefik"], trusted_proxies=["127.0.0.1/32"]
    )


@pytest.fixture
async def envoy_gw(make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway whose decision port is asked by Envoy ext_authz (``path_prefix: /ext_authz``)."""
    return await make_gateway(
        decision_listen="127.0.0.1:0", decision_sources=["envoy"], decision_path_prefix="/ext_authz",
        trusted_proxies=["127.0.0.1/32"],
    )


def decision_url(gw: RunningGateway) -> str:
    return f"http://127.0.0.1:{gw.port('decision')}"


async def last_record(gw: RunningGateway) -> dict[str, object]:
    records = await gw.audit_records()
    assert records, "no audit record was written"
    return records[-1]


# --- nginx auth_request ------------------------------------------------------------------


async def test_nginx_no_token_is_401_with_challenge(
    stack: Stack, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.nginx.url}/orders") as resp:
        assert resp.status == 401
        assert resp.headers.getall("WWW-Authenticate") == ['Bearer realm="tokengate"']
        body = await resp.json(content_type=None)
    assert upstream.requests == []
    record = await last_record(stack.gateway)
    assert record["mode"] == "decision"
    assert (record["reason"], record["status"], record["path"], record["method"]) == (
        "missing_token", 401, "/orders", "GET")
    assert body == {"error": "unauthorized", "request_id": record["request_id"]}


async def test_nginx_missing_scope_is_403_with_scope_challenge(
    stack: Stack, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.nginx.url}/orders", headers=bearer(issuer.mint(scope="profile"))) as resp:
        assert resp.status == 403
        challenge = resp.headers.getall("WWW-Authenticate")
    assert len(challenge) == 1
    assert 'error="insufficient_scope"' in challenge[0] and 'scope="orders:read"' in challenge[0]
    assert upstream.requests == []
    assert (await last_record(stack.gateway))["reason"] == "insufficient_scope"


async def test_nginx_good_token_reaches_upstream_with_identity(
    stack: Stack, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    before = metric("gateway_requests_total", route="list-orders", method="GET", status="200",
                    decision="allow", reason="allowed")
    headers = {**bearer(issuer.mint(sub="alice", scope="orders:read profile")), "X-Auth-Subject": "mallory"}
    async with http.get(f"{stack.nginx.url}/orders?limit=5", headers=headers) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["path"] == "/orders?limit=5"
    assert seen["headers"]["X-Auth-Subject"] == "alice"  # the client's own value never gets through
    assert seen["headers"]["X-Auth-Client-Id"] == "demo-client"
    assert seen["headers"]["X-Auth-Scopes"] == "orders:read profile"
    record = await last_record(stack.gateway)
    assert (record["mode"], record["reason"], record["sub"], record["route"]) == (
        "decision", "allowed", "alice", "list-orders")
    assert record["upstream"] is None
    assert record["client_ip"] == "127.0.0.1"
    assert metric("gateway_requests_total", route="list-orders", method="GET", status="200",
                  decision="allow", reason="allowed") == before + 1


async def test_nginx_passes_the_original_method(
    stack: Stack, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    """nginx's auth subrequest is always a GET: the method must come from X-Original-Method."""
    reader = bearer(issuer.mint(scope="orders:read"))
    async with http.post(f"{stack.nginx.url}/orders", headers=reader, data=b"{}") as resp:
        assert resp.status == 403
    async with http.post(f"{stack.nginx.url}/orders", headers=bearer(issuer.mint(scope="orders:write")),
                         data=b'{"item": 1}') as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["method"] == "POST" and seen["body_bytes"] == 11
    assert (await last_record(stack.gateway))["route"] == "create-order"


async def test_nginx_public_route_drops_client_identity_headers(
    stack: Stack, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.nginx.url}/public/health", headers={"X-Auth-Subject": "mallory"}) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert "X-Auth-Subject" not in seen["headers"]
    assert (await last_record(stack.gateway))["reason"] == "public_route"


@pytest.mark.parametrize("target", [
    "/public/health/../../orders",
    "/public/health/%2e%2e/%2e%2e/orders",
    "/public//health/./../../ord%65rs",
])
async def test_nginx_path_tricks_are_normalised_like_the_proxy(
    stack: Stack, issuer: DemoIssuer, upstream: EchoUpstream, target: str
) -> None:
    denied = await raw_request(stack.nginx.url, target)
    assert denied.status == 401
    assert upstream.requests == []
    decision = await last_record(stack.gateway)
    assert (decision["path"], decision["reason"]) == ("/orders", "missing_token")

    # the proxy decides the same raw request the same way
    proxied = await raw_request(stack.gateway.url, target)
    assert proxied.status == 401
    assert (await last_record(stack.gateway))["reason"] == "missing_token"

    allowed = await raw_request(stack.nginx.url, target, headers=bearer(issuer.mint(scope="orders:read")))
    assert allowed.status == 200
    assert upstream.requests[-1]["path"] == "/orders"  # nginx forwards the normalised URI, as authorised


async def test_nginx_client_cannot_choose_the_authorised_path(
    stack: Stack, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    """Headers a client adds are passed to the auth subrequest; they must not pick the path."""
    spoof = {"X-Original-URI": "/public/health", "X-Original-Method": "GET", "X-Forwarded-Uri": "/public/health",
             "X-Forwarded-Method": "GET", "X-Original-URL": "http://127.0.0.1/public/health"}
    async with http.get(f"{stack.nginx.url}/orders", headers=spoof) as resp:
        assert resp.status != 200
    assert upstream.requests == []
    assert (await last_record(stack.gateway))["decision"] == "deny"


async def test_nginx_other_denials_surface_as_500(
    stack: Stack, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    """auth_request only knows 2xx, 401 and 403; the audit record keeps the real reason."""
    async with http.get(f"{stack.nginx.url}/nowhere") as resp:
        assert resp.status == 500
    assert upstream.requests == []
    record = await last_record(stack.gateway)
    assert (record["reason"], record["status"]) == ("no_route", 404)


# --- Traefik ForwardAuth ---------------------------------------------------------------


def traefik_headers(method: str, uri: str, **extra: str) -> dict[str, str]:
    """What Traefik's ForwardAuth sends: the client's headers plus X-Forwarded-* of the original request."""
    return {"X-Forwarded-Method": method, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example",
            "X-Forwarded-Uri": uri, "X-Forwarded-For": "203.0.113.7", **extra}


async def test_traefik_allowed_returns_identity_headers(
    decision_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    token = issuer.mint(sub="bob", scope="orders:admin")
    headers = traefik_headers("GET", "/orders/42/status?verbose=1", **bearer(token))
    async with http.get(f"{decision_url(decision_gw)}/", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-Subject"] == "bob"
        assert resp.headers["X-Auth-Client-Id"] == "demo-client"
        assert resp.headers["X-Auth-Scopes"] == "orders:admin"
        assert resp.headers["Cache-Control"] == "no-store"
        assert await resp.read() == b""
    record = await last_record(decision_gw)
    assert (record["mode"], record["method"], record["host"], record["path"], record["route"]) == (
        "decision", "GET", "api.example", "/orders/42/status", "order-status")
    assert record["client_ip"] == "203.0.113.7"  # from X-Forwarded-For: the peer is a trusted proxy


async def test_traefik_denials_carry_rfc6750_response(
    decision_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    async with http.get(decision_url(decision_gw), headers=traefik_headers("GET", "/orders")) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'
        body = await resp.json()
    assert body["reason"] == "missing_token"
    expired = issuer.mint(scope="orders:read", ttl=-120)
    headers = traefik_headers("GET", "/orders", **bearer(expired))
    async with http.get(decision_url(decision_gw), headers=headers) as resp:
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert (await resp.json())["reason"] == "token_expired"
    writer = bearer(issuer.mint(scope="orders:read"))
    async with http.get(decision_url(decision_gw), headers=traefik_headers("DELETE", "/orders/7", **writer)) as resp:
        assert resp.status == 403
        assert 'scope="orders:write"' in resp.headers["WWW-Authenticate"]
        assert "X-Auth-Subject" not in resp.headers


async def test_traefik_client_header_injection_is_refused(
    decision_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """Traefik copies the client's headers: an X-Original-URI of the client's choosing must not win."""
    headers = traefik_headers("GET", "/orders", **{"X-Original-URI": "/public/health", "X-Original-Method": "GET"})
    async with http.get(decision_url(decision_gw), headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["reason"] == "bad_path"
    headers = traefik_headers("DELETE", "/orders/7", **{"X-Original-URI": "/orders/7", "X-Original-Method": "GET"},
                              **bearer(issuer.mint(scope="orders:read")))
    async with http.get(decision_url(decision_gw), headers=headers) as resp:
        assert resp.status == 400


async def test_traefik_untrusted_peer_keeps_peer_address(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["traefik"])  # no trusted_proxies
    async with http.get(decision_url(gw), headers=traefik_headers("GET", "/public/health")) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-Subject"] == ""  # always present, so the ingress overwrites a client's value
    assert (await last_record(gw))["client_ip"] == "127.0.0.1"


# --- ingress-nginx auth-url -----------------------------------------------------------


async def test_ingress_nginx_shape(
    decision_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """ingress-nginx sends X-Original-URL (scheme://host/uri) and X-Original-Method; Host is the auth-url host."""
    headers = {"Host": "tokengate.auth.svc:8081", "X-Original-URL": "https://API.example/orders?limit=1",
               "X-Original-Method": "GET", "X-Real-IP": "198.51.100.9", "X-Sent-From": "nginx-ingress-controller",
               "X-Auth-Request-Redirect": "/orders?limit=1", **bearer(issuer.mint(scope="orders:read"))}
    async with http.get(f"{decision_url(decision_gw)}/verify", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-Subject"] == "alice"
    record = await last_record(decision_gw)
    assert (record["host"], record["path"], record["client_ip"]) == ("API.example", "/orders", "198.51.100.9")

    spoofed = {**headers, "X-Original-URI": "/public/health"}  # ingress-nginx passes this client header through
    spoofed.pop("Authorization")
    async with http.get(f"{decision_url(decision_gw)}/verify", headers=spoofed) as resp:
        assert resp.status == 400


async def test_host_routes_use_the_original_host(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    routes = [{"name": "admin", "host": "admin.example", "path_prefix": "/", "upstream": "orders",
               "scopes": ["orders:admin"]},
              {"name": "www", "host": "www.example", "path_prefix": "/", "upstream": "orders", "auth": "none"}]
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["nginx", "traefik"], routes=routes)
    for host, status in (("www.example", 200), ("admin.example", 401), ("other.example", 404)):
        headers = traefik_headers("GET", "/x", **{"X-Forwarded-Host": host})
        async with http.get(decision_url(gw), headers=headers) as resp:
            assert resp.status == status, host
    # a client-chosen X-Forwarded-Host that contradicts the ingress's X-Original-URL is refused
    headers = {"X-Original-URL": "http://admin.example/x", "X-Original-Method": "GET",
               "X-Forwarded-Host": "www.example"}
    async with http.get(decision_url(gw), headers=headers) as resp:
        assert resp.status == 400


# --- Envoy ext_authz (HTTP service) ------------------------------------------------------


async def test_envoy_check_uses_method_and_prefixed_path(
    envoy_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """Envoy sends the original method and path_prefix + path, with Host and Authorization by default."""
    writer = bearer(issuer.mint(sub="carol", scope="orders:write"))
    async with http.put(f"{decision_url(envoy_gw)}/ext_authz/orders/9?dry_run=1",
                        headers={"Host": "api.example", "Content-Length": "0", **writer}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-Subject"] == "carol"
        assert resp.headers["X-Auth-Scopes"] == "orders:write"
    record = await last_record(envoy_gw)
    assert (record["method"], record["path"], record["route"], record["host"]) == (
        "PUT", "/orders/9", "change-order", "api.example")

    async with http.delete(f"{decision_url(envoy_gw)}/ext_authz/orders/9",
                           headers=bearer(issuer.mint(scope="orders:read"))) as resp:
        assert resp.status == 403
        assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
        assert (await resp.json())["reason"] == "insufficient_scope"


async def test_envoy_path_tricks_and_missing_prefix(envoy_gw: RunningGateway, issuer: DemoIssuer) -> None:
    url = decision_url(envoy_gw)
    trick = await raw_request(url, "/ext_authz/public/health/../../orders")
    assert trick.status == 401
    assert (await last_record(envoy_gw))["path"] == "/orders"
    no_prefix = await raw_request(url, "/orders", headers=bearer(issuer.mint(scope="orders:read")))
    assert no_prefix.status == 400
    assert (await last_record(envoy_gw))["reason"] == "bad_path"


async def test_decision_sources_can_be_pinned(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["nginx"])
    async with http.get(f"{decision_url(gw)}/public/health") as resp:  # an Envoy-shaped check
        assert resp.status == 400
    headers = {"X-Original-URI": "/orders", "X-Original-Method": "GET", "X-Forwarded-Uri": "/public/health",
               **bearer(issuer.mint(scope="orders:read"))}
    async with http.get(decision_url(gw), headers=headers) as resp:  # Traefik headers are not consulted
        assert resp.status == 200


def test_decision_sources_are_required_with_decision_listen() -> None:
    """Trusting nginx's, Traefik's and Envoy's ways of asking at once let a client behind Envoy
    choose the target with an ``X-Original-URI`` of its own: the operator must name the ingress."""
    text = MINIMAL_CONFIG + "decision_listen: 127.0.0.1:8081\n"
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gw.yaml")
    line = text.splitlines().index("decision_listen: 127.0.0.1:8081") + 1
    assert str(raised.value).startswith(f"gw.yaml:{line}: decision_listen: decision_sources is required")
    for sources in ("[envoy, nginx]", "[traefik, envoy]"):
        with pytest.raises(ConfigError, match=r"gw.yaml:\d+: decision_sources: envoy cannot be combined"):
            parse_config(text + f"decision_sources: {sources}\n", "gw.yaml")
    for sources in ("[nginx]", "[traefik]", "[envoy]", "[nginx, traefik]"):
        assert parse_config(text + f"decision_sources: {sources}\n").decision_sources
    assert parse_config(MINIMAL_CONFIG).decision_sources is None  # no decision port: nothing to name


async def test_a_config_built_in_code_without_sources_does_not_open_the_port(
    issuer: DemoIssuer, tmp_path: Path
) -> None:
    config = parse_config(MINIMAL_CONFIG.replace("https://as.example", issuer.issuer)).model_copy(update={
        "decision_listen": Address("127.0.0.1", 0), "listen": Address("127.0.0.1", 0),
        "admin_listen": Address("127.0.0.1", 0)})
    server = Server(Gateway(config))
    try:
        with pytest.raises(ConfigError, match="decision_sources is required"):
            await server.start()
    finally:
        await server.stop()
    with pytest.raises(CheckRequestError):  # and the check path itself fails closed without sources
        original_request("GET", "/orders", _headers(X_Original_URI="/", X_Original_Method="GET"), sources=None)


async def test_behind_envoy_client_headers_cannot_name_the_target(
    envoy_gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """Envoy's ext_authz passes client headers: nginx's and Traefik's statements must not be believed."""
    spoof = {"X-Original-URI": "/public/health", "X-Original-Method": "GET", "X-Forwarded-Uri": "/public/health",
             "X-Forwarded-Method": "GET", "X-Original-URL": "http://127.0.0.1/public/health"}
    async with http.get(f"{decision_url(envoy_gw)}/ext_authz/orders", headers=spoof) as resp:
        assert resp.status == 401
        assert (await resp.json())["reason"] == "missing_token"
    record = await last_record(envoy_gw)
    assert (record["path"], record["route"]) == ("/orders", "list-orders")


async def test_behind_traefik_an_nginx_header_is_not_consulted(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["traefik"])
    headers = traefik_headers("GET", "/orders", **{"X-Original-URI": "/public/health", "X-Original-Method": "GET"})
    async with http.get(decision_url(gw), headers=headers) as resp:
        assert resp.status == 401  # decided on Traefik's /orders, not the client's /public/health
    assert (await last_record(gw))["path"] == "/orders"


# --- shape detection (pure) --------------------------------------------------------------


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def test_original_request_order_and_agreement() -> None:
    nginx = original_request("GET", "/auth", _headers(X_Original_URI="/a?b", X_Original_Method="POST",
                                                        X_Forwarded_Host="h.example"))
    assert (nginx.source, nginx.method, nginx.target, nginx.host) == ("nginx", "POST", "/a?b", "h.example")
    both = original_request("GET", "/auth", _headers(X_Original_URI="/a", X_Original_Method="PUT",
                                                       X_Forwarded_Uri="/a", X_Forwarded_Method="PUT"))
    assert both.source == "nginx"
    envoy = original_request("PATCH", "/check/a/b", _headers(Host="h:8443"), path_prefix="/check")
    assert (envoy.source, envoy.method, envoy.target, envoy.host) == ("envoy", "PATCH", "/a/b", "h:8443")
    for bad in (
        _headers(X_Original_URI="/a"),  # no method: never guessed (nginx's subrequest is always GET)
        _headers(X_Original_URI="/a", X_Original_Method="GET", X_Forwarded_Uri="/b"),
        _headers(X_Forwarded_Uri="/a", X_Forwarded_Method="GET", X_Original_Method="POST", X_Original_URI="/a"),
        _headers(X_Original_URI="a", X_Original_Method="GET"),
        _headers(X_Original_URI="/a", X_Original_Method="G E T"),
        _headers(X_Original_URL="/relative", X_Original_Method="GET"),
        _headers(X_Original_URL="http://u@h/a", X_Original_Method="GET"),
    ):
        with pytest.raises(CheckRequestError):
            original_request("GET", "/auth", bad)
