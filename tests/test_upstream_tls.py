"""TLS to upstreams (``https://`` URLs, ``upstreams.<name>.tls``).

A real TLS upstream on 127.0.0.1 with certificates made and signed in the test (tests/certs.py):
verified against ``ca_file``, by the name in ``server_name`` (also the SNI it receives), with a
client certificate where the upstream requires one. Every failure is a 502, never a request sent
to an upstream that could not be verified.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import ConfigError, UpstreamTLSConfig, parse_config
from gateway.demo import DemoIssuer
from gateway.upstream_tls import TLSFileProblem, client_context
from tests.certs import NOW, Issued, issue, make_ca
from tests.helpers import MINIMAL_CONFIG, GatewayFactory, RunningGateway, bearer


@dataclass
class TLSUpstream:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)


@dataclass
class PKI:
    ca: Issued
    ca_file: Path
    directory: Path

    def leaf(self, name: str, **kwargs: Any) -> tuple[Path, Path]:
        return issue(self.ca, name, **kwargs).write(self.directory, name)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca = make_ca("Upstream CA")
    ca_file = tmp_path / "upstream-ca.pem"
    ca_file.write_text(ca.pem)
    return PKI(ca, ca_file, tmp_path)


StartUpstream = Callable[..., Any]


@pytest.fixture
async def tls_upstream(pki: PKI) -> AsyncIterator[StartUpstream]:
    """Start an HTTPS echo upstream: ``await tls_upstream(names=..., client_ca=..., not_after=...)``."""
    runners: list[web.AppRunner] = []

    async def start(names: tuple[str, ...] | None = None, client_ca: Path | None = None,
                    not_after: dt.datetime | None = None, maximum: ssl.TLSVersion | None = None) -> TLSUpstream:
        cert, key = pki.leaf(f"upstream-{len(runners)}", server=True, names=names, not_after=not_after)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if maximum is not None:
            context.maximum_version = maximum
        if client_ca is not None:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        upstream = TLSUpstream("")

        def remember_sni(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
            upstream.server_names.append(name)

        context.sni_callback = remember_sni

        async def handle(request: web.Request) -> web.Response:
            peer = request.transport.get_extra_info("peercert") if request.transport is not None else None
            subject = dict(item[0] for item in peer["subject"]) if peer else {}
            seen = {"path": request.path, "host": request.headers.get("Host"),
                    "subject": request.headers.get("X-Auth-Subject"), "client_cn": subject.get("commonName")}
            upstream.requests.append(seen)
            return web.json_response(seen)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        runners.append(runner)
        upstream.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
        return upstream

    yield start
    for runner in runners:
        await runner.cleanup()


ROUTES = [{"name": "orders", "path": "/orders", "methods": ["GET"], "upstream": "orders"}]


async def gateway_to(make_gateway: GatewayFactory, url: str, tls: dict[str, Any] | None = None) -> RunningGateway:
    upstream: dict[str, Any] = {"url": url, "timeout": "5s", "connect_timeout": "2s"}
    if tls is not None:
        upstream["tls"] = tls
    return await make_gateway(upstreams={"orders": upstream}, routes=ROUTES)


async def call(gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gw.url}/orders", headers=bearer(issuer.mint(sub="dana"))) as resp:
        return resp.status, json.loads(await resp.read())


async def test_verified_against_the_ca_file(
    make_gateway: GatewayFactory, tls_upstream: StartUpstream, pki: PKI, issuer: DemoIssuer,
    http: aiohttp.ClientSession,
) -> None:
    upstream = await tls_upstream()
    gw = await gateway_to(make_gateway, upstream.url, {"ca_file": str(pki.ca_file)})
    status, seen = await call(gw, issuer, http)
    assert status == 200
    assert seen["subject"] == "dana" and seen["host"] == upstream.url.removeprefix("https://")
    assert upstream.server_names == [None]  # an address is never sent as SNI (RFC 6066 section 3)


async def test_unverifiable_upstreams_get_nothing(
    make_gateway: GatewayFactory, tls_upstream: StartUpstream, pki: PKI, issuer: DemoIssuer,
    http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(make_ca("Someone else").pem)
    trusted = await tls_upstream()
    expired = await tls_upstream(not_after=NOW - dt.timedelta(minutes=5))
    cases = [
        (trusted.url, None),  # the system's trust store does not know the test CA
        (trusted.url, {"ca_file": str(other_ca)}),  # another CA
        (expired.url, {"ca_file": str(pki.ca_file)}),  # expired
        (trusted.url.replace("127.0.0.1", "localhost"), {"ca_file": str(pki.ca_file),
                                                         "server_name": "orders.internal"}),  # another name
    ]
    caplog.set_level(logging.WARNING, logger="gateway.upstream_tls")
    for url, tls in cases:
        gw = await gateway_to(make_gateway, url, tls)
        status, body = await call(gw, issuer, http)
        assert (status, body["reason"]) == (502, "upstream_unavailable"), (url, tls)
    assert trusted.requests == [] and expired.requests == []
    assert any("certificate verify failed" in str(getattr(r, "error", "")) for r in caplog.records)


async def test_server_name_overrides_sni_and_the_checked_name(
    make_gateway: GatewayFactory, tls_upstream: StartUpstream, pki: PKI, issuer: DemoIssuer,
    http: aiohttp.ClientSession,
) -> None:
    upstream = await tls_upstream(names=("orders.internal",))
    gw = await gateway_to(make_gateway, upstream.url, {"ca_file": str(pki.ca_file)})
    status, _ = await call(gw, issuer, http)
    assert status == 502  # the certificate does not name 127.0.0.1
    gw = await gateway_to(make_gateway, upstream.url, {"ca_file": str(pki.ca_file), "server_name": "orders.internal"})
    status, seen = await call(gw, issuer, http)
    assert status == 200 and seen["subject"] == "dana"
    assert upstream.server_names[-1] == "orders.internal"


async def test_mutual_tls_to_the_upstream(
    make_gateway: GatewayFactory, tls_upstream: StartUpstream, pki: PKI, issuer: DemoIssuer,
    http: aiohttp.ClientSession,
) -> None:
    upstream = await tls_upstream(client_ca=pki.ca_file)
    gw = await gateway_to(make_gateway, upstream.url, {"ca_file": str(pki.ca_file)})
    status, body = await call(gw, issuer, http)
    assert (status, body["reason"]) == (502, "upstream_unavailable")  # no client certificate
    certificate, key = pki.leaf("gateway-client")
    gw = await gateway_to(make_gateway, upstream.url, {"ca_file": str(pki.ca_file), "certificate": str(certificate),
                                                       "key": str(key)})
    status, seen = await call(gw, issuer, http)
    assert status == 200 and seen["client_cn"] == "gateway-client"
    assert len(upstream.requests) == 1


async def test_minimum_version(
    make_gateway: GatewayFactory, tls_upstream: StartUpstream, pki: PKI, issuer: DemoIssuer,
    http: aiohttp.ClientSession,
) -> None:
    upstream = await tls_upstream(maximum=ssl.TLSVersion.TLSv1_2)
    gw = await gateway_to(make_gateway, upstream.url, {"ca_file": str(pki.ca_file), "minimum_version": "1.3"})
    status, _ = await call(gw, issuer, http)
    assert status == 502 and upstream.requests == []


# --- configuration -------------------------------------------------------------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return caught.value.problems


HTTPS = MINIMAL_CONFIG.replace("    url: http://127.0.0.1:9000\n", "    url: https://127.0.0.1:9000\n")


def test_verification_cannot_be_turned_off() -> None:
    [problem] = problems_of(HTTPS.replace("routes:", "    tls: {verify: false}\nroutes:"))
    assert problem.startswith("gw.yaml:7: upstreams.svc.tls.verify: certificate verification cannot be turned off")


def test_tls_needs_https_and_a_full_client_pair(pki: PKI) -> None:
    [problem] = problems_of(MINIMAL_CONFIG.replace("routes:", f"    tls: {{ca_file: {pki.ca_file}}}\nroutes:"))
    assert problem == "gw.yaml:5: upstreams.svc: tls: applies to an https:// url only"
    [problem] = problems_of(HTTPS.replace("routes:", f"    tls: {{certificate: {pki.ca_file}}}\nroutes:"))
    assert problem == "gw.yaml:7: upstreams.svc.tls: a client certificate needs both certificate and key"


def test_tls_files_are_checked_when_loading(pki: PKI, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    [problem] = problems_of(HTTPS.replace("routes:", f"    tls: {{ca_file: {missing}}}\nroutes:"))
    assert problem == f"gw.yaml:7: upstreams.svc.tls.ca_file: cannot read {missing}"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    [problem] = problems_of(HTTPS.replace("routes:", f"    tls: {{ca_file: {garbage}}}\nroutes:"))
    assert problem == f"gw.yaml:7: upstreams.svc.tls.ca_file: {garbage} holds no PEM certificate"
    certificate, key = pki.leaf("client")
    other_key = pki.leaf("other")[1]
    text = HTTPS.replace("routes:", f"    tls: {{certificate: {certificate}, key: {other_key}}}\nroutes:")
    [problem] = problems_of(text)
    assert problem.startswith("gw.yaml:7: upstreams.svc.tls.certificate: ") and "are not a PEM certificate" in problem
    ok = parse_config(HTTPS.replace("routes:", f"    tls: {{certificate: {certificate}, key: {key}, "
                                    f"ca_file: {pki.ca_file}, server_name: orders.internal}}\nroutes:"), "gw.yaml")
    assert ok.upstreams["svc"].tls is not None and ok.upstreams["svc"].tls.server_name == "orders.internal"


def test_client_context_is_strict(pki: PKI) -> None:
    context = client_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(TLSFileProblem) as caught:
        client_context(UpstreamTLSConfig(ca_file=str(pki.directory)))  # a directory is not a bundle
    assert caught.value.key == "ca_file"
