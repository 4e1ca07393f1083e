"""Certificate-bound tokens (RFC 8705): the gateway terminating TLS, and certificates forwarded by an ingress.

Real certificates (tests/certs.py: a CA, server and client leaves, EC P-256), a real TLS listener
on 127.0.0.1 with client certificates checked by OpenSSL against the CA bundle, tokens minted by
the demo issuer with ``cnf.x5t#S256`` of a client certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import LooseHeaders
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import ConfigError, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.tokens.certificates import thumbprint
from gateway.tokens.dpop import ProofRequest, confirmation, sign_proof
from tests.certs import NOW, Issued, issue, make_ca
from tests.helpers import MINIMAL_CONFIG, GatewayFactory, RunningGateway, base_config, raw_request
from tests.test_middleware import middleware_config, orders_app
from tests.test_sender_constraint import capture

MTLS_ROUTE = {"name": "mtls-orders", "path": "/mtls/orders", "methods": ["GET"], "upstream": "orders",
              "scopes": ["orders:read"], "sender_constraint": "mtls"}
ANY_ROUTE = {"name": "bound-orders", "path": "/bound/orders", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"], "sender_constraint": "any"}


def bound(issuer: DemoIssuer, cert: Issued) -> str:
    return issuer.mint(cnf={"x5t#S256": thumbprint(cert.der)})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reason(payload: bytes | str) -> str:
    value: str = json.loads(payload)["reason"]
    return value


def routes(issuer: DemoIssuer) -> list[dict[str, Any]]:
    return [*base_config(issuer, EchoUpstream(), Path("unused"))["routes"], MTLS_ROUTE, ANY_ROUTE]


# --- the gateway terminating TLS --------------------------------------------------------------


def tls_section(ca: Issued, tmp_path: Path, client_certificates: str = "optional",
                minimum_version: str | float = "1.2") -> dict[str, Any]:
    """The ``tls:`` section of a gateway terminating TLS on 127.0.0.1, client certificates checked against ``ca``."""
    server_cert, server_key = issue(ca, "gateway", server=True).write(tmp_path, "server")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_text(ca.pem)
    return {"certificate": str(server_cert), "key": str(server_key), "client_ca": str(ca_path),
            "client_certificates": client_certificates, "minimum_version": minimum_version}


@pytest.fixture
async def tls_gateway(
    make_gateway: GatewayFactory, issuer: DemoIssuer, ca: Issued, tmp_path: Path
) -> RunningGateway:
    return await make_gateway(routes=routes(issuer), tls=tls_section(ca, tmp_path))


def client_context(ca: Issued, cert: Issued | None, tmp_path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.pem)
    if cert is not None:
        cert_path, key_path = cert.write(tmp_path, f"client-{id(cert)}")
        context.load_cert_chain(cert_path, key_path)
    return context


async def get(gw: RunningGateway, path: str, context: ssl.SSLContext, headers: LooseHeaders) -> tuple[int, str]:
    url = f"https://127.0.0.1:{gw.port('proxy')}{path}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers, ssl=context) as response:
        text = await response.text()
        return response.status, text


async def test_the_certificate_the_token_names_passes_and_another_does_not(
    tls_gateway: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream, ca: Issued, client: Issued,
    other_client: Issued, tmp_path: Path,
) -> None:
    seen = capture(tls_gateway)
    token = bound(issuer, client)
    status, _ = await get(tls_gateway, "/orders", client_context(ca, client, tmp_path), bearer(token))
    assert status == 200
    assert upstream.requests[-1]["headers"]["X-Forwarded-Proto"] == "https"
    assert (seen[-1].binding, seen[-1].key_thumbprint) == ("mtls", thumbprint(client.der))

    status, text = await get(tls_gateway, "/orders", client_context(ca, other_client, tmp_path), bearer(token))
    assert (status, reason(text)) == (401, "client_certificate_mismatch")
    assert seen[-1].key_thumbprint == thumbprint(other_client.der)
    status, text = await get(tls_gateway, "/orders", client_context(ca, None, tmp_path), bearer(token))
    assert (status, reason(text)) == (401, "unproven_binding")
    assert len(upstream.requests) == 1


async def test_an_mtls_route_wants_a_certificate_bound_token(
    tls_gateway: RunningGateway, issuer: DemoIssuer, ca: Issued, client: Issued, tmp_path: Path
) -> None:
    context = client_context(ca, client, tmp_path)
    status, text = await get(tls_gateway, "/mtls/orders", context, bearer(issuer.mint()))
    assert (status, reason(text)) == (401, "sender_constraint_required")
    assert (await get(tls_gateway, "/mtls/orders", context, bearer(bound(issuer, client))))[0] == 200
    # a plain token passes the default (optional) route with or without a certificate
    assert (await get(tls_gateway, "/orders", context, bearer(issuer.mint())))[0] == 200
    assert (await get(tls_gateway, "/orders", client_context(ca, None, tmp_path), bearer(issuer.mint())))[0] == 200


async def test_any_takes_either_binding_but_not_none(
    tls_gateway: RunningGateway, issuer: DemoIssuer, ca: Issued, client: Issued, tmp_path: Path
) -> None:
    context = client_context(ca, client, tmp_path)
    assert (await get(tls_gateway, "/bound/orders", context, bearer(bound(issuer, client))))[0] == 200
    key = ec.generate_private_key(ec.SECP256R1())
    token = issuer.mint(cnf=confirmation(key))
    url = f"https://127.0.0.1:{tls_gateway.port('proxy')}/bound/orders"  # htu: our TLS makes it https
    proof = sign_proof(key, ProofRequest("GET", url, access_token=token))
    status, _ = await get(tls_gateway, "/bound/orders", context, {"Authorization": f"DPoP {token}", "DPoP": proof})
    assert status == 200
    status, text = await get(tls_gateway, "/bound/orders", context, bearer(issuer.mint()))
    assert (status, reason(text)) == (401, "sender_constraint_required")


async def test_a_certificate_of_another_ca_never_completes_the_handshake(
    tls_gateway: RunningGateway, issuer: DemoIssuer, ca: Issued, tmp_path: Path
) -> None:
    stranger = issue(make_ca("Other CA"), "client-a")
    with pytest.raises(aiohttp.ClientError):
        await get(tls_gateway, "/orders", client_context(ca, stranger, tmp_path), bearer(bound(issuer, stranger)))


async def test_required_client_certificates_refuse_a_handshake_without_one(
    make_gateway: GatewayFactory, issuer: DemoIssuer, ca: Issued, client: Issued, tmp_path: Path
) -> None:
    gw = await make_gateway(tls=tls_section(ca, tmp_path, "required", 1.3))
    with pytest.raises(aiohttp.ClientError):
        await get(gw, "/orders", client_context(ca, None, tmp_path), bearer(issuer.mint()))
    assert (await get(gw, "/orders", client_context(ca, client, tmp_path), bearer(bound(issuer, client))))[0] == 200


# --- configuration of tls: -------------------------------------------------------------------


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return "\n".join(caught.value.problems)


def test_tls_files_are_checked_when_the_configuration_loads(ca: Issued, client: Issued, tmp_path: Path) -> None:
    server_cert, server_key = issue(ca, "gateway", server=True).write(tmp_path, "server")
    _, other_key = client.write(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")

    def tls(**keys: str) -> str:
        return MINIMAL_CONFIG + "tls:\n" + "".join(f"  {k}: {v}\n" for k, v in keys.items())

    missing = _problems(tls(certificate=str(tmp_path / "nope.pem"), key=str(server_key)))
    assert missing == f"gw.yaml:12: tls.certificate: cannot read {tmp_path / 'nope.pem'}"
    mismatch = _problems(tls(certificate=str(server_cert), key=str(other_key)))
    assert mismatch.startswith(f"gw.yaml:12: tls.certificate: cannot use certificate {server_cert} with key")
    bad_ca = _problems(tls(certificate=str(server_cert), key=str(server_key), client_ca=str(garbage),
                           client_certificates="optional"))
    assert bad_ca.startswith(f"gw.yaml:14: tls.client_ca: cannot load client_ca {garbage}")
    no_ca = _problems(tls(certificate=str(server_cert), key=str(server_key), client_certificates="required"))
    assert "gw.yaml:11: tls: client_certificates: required needs client_ca" in no_ca
    old = _problems(tls(certificate=str(server_cert), key=str(server_key), minimum_version="1.1"))
    assert "tls.minimum_version" in old
    assert parse_config(tls(certificate=str(server_cert), key=str(server_key))).tls is not None


def test_the_certificate_header_name_is_validated() -> None:
    assert "client_certificates.header: Authorization is set or read by the gateway" in _problems(
        MINIMAL_CONFIG + "client_certificates:\n  header: Authorization\n")
    assert "client_certificates.header: 'a b' is not a valid header name" in _problems(
        MINIMAL_CONFIG + "client_certificates:\n  header: a b\n")
    assert "is also an identity header" in _problems(
        MINIMAL_CONFIG + "client_certificates:\n  header: X-Auth-Subject\n")
    assert "client_certificates.format" in _problems(MINIMAL_CONFIG + "client_certificates:\n  format: der\n")


# --- certificates forwarded by an ingress ------------------------------------------------------


def pem_urlencoded(cert: Issued) -> str:
    return quote(cert.pem, safe="")  # ingress-nginx $ssl_client_escaped_cert


def xfcc(cert: Issued) -> str:
    digest = hashlib.sha256(cert.der).hexdigest()
    return f'By=spiffe://gw;Hash={digest};Cert="{quote(cert.pem, safe="")}";Subject="CN=client-a"'


def sent_upstream(upstream: EchoUpstream) -> set[str]:
    return {name.lower() for name in upstream.requests[-1]["headers"]}


async def test_a_forwarded_certificate_from_an_untrusted_peer_is_ignored_and_stripped(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, client: Issued
) -> None:
    header = "X-Client-Certificate-Pem"  # not in the default strip list: stripped because it is configured
    gw = await make_gateway(routes=routes(issuer), client_certificates={"header": header})
    response = await raw_request(gw.url, "/orders", headers={header: pem_urlencoded(client),
                                                             **bearer(bound(issuer, client))})
    assert (response.status, reason(response.body)) == (401, "unproven_binding")
    plain = await raw_request(gw.url, "/orders", headers={header: pem_urlencoded(client), **bearer(issuer.mint())})
    assert plain.status == 200
    assert header.lower() not in sent_upstream(upstream)


async def test_a_forwarded_certificate_from_a_trusted_ingress_is_used_and_stripped(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, ca: Issued, client: Issued,
    other_client: Issued,
) -> None:
    gw = await make_gateway(routes=routes(issuer), trusted_proxies=["127.0.0.1/32"],
                            client_certificates={"header": "ssl-client-cert", "format": "pem-urlencoded"},
                            strip_request_headers=["X-Nothing"])  # the configured header is stripped anyway
    seen = capture(gw)
    token = bound(issuer, client)
    ok = await raw_request(gw.url, "/mtls/orders", headers={"ssl-client-cert": pem_urlencoded(client), **bearer(token)})
    assert ok.status == 200
    assert "ssl-client-cert" not in sent_upstream(upstream)
    assert (seen[-1].binding, seen[-1].key_thumbprint) == ("mtls", thumbprint(client.der))

    other = await raw_request(gw.url, "/orders", headers={"ssl-client-cert": pem_urlencoded(other_client),
                                                          **bearer(token)})
    assert reason(other.body) == "client_certificate_mismatch"
    garbage = await raw_request(gw.url, "/orders", headers={"ssl-client-cert": "-----BEGIN%20junk", **bearer(token)})
    assert (garbage.status, reason(garbage.body)) == (401, "client_certificate_invalid")
    assert json.loads(garbage.body)["error_description"] == "the client certificate cannot be parsed"
    expired = issue(ca, "client-a", not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1))
    old = await raw_request(gw.url, "/orders", headers={"ssl-client-cert": pem_urlencoded(expired),
                                                        **bearer(bound(issuer, expired))})
    assert (reason(old.body), json.loads(old.body)["error_description"]) == (
        "client_certificate_invalid", "the client certificate has expired")
    empty = await raw_request(gw.url, "/orders", headers={"ssl-client-cert": "", **bearer(token)})
    assert reason(empty.body) == "unproven_binding"  # ingress-nginx's value when the client sent none
    # an unreadable header does not hurt a request whose token needs no certificate
    assert (await raw_request(gw.url, "/orders", headers={"ssl-client-cert": "junk",
                                                          **bearer(issuer.mint())})).status == 200


async def test_an_envoy_xfcc_certificate_from_a_trusted_proxy(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, client: Issued, other_client: Issued
) -> None:
    gw = await make_gateway(routes=routes(issuer), trusted_proxies=["127.0.0.1/32"],
                            client_certificates={"header": "X-Forwarded-Client-Cert", "format": "xfcc"})
    token = bound(issuer, client)
    ok = await raw_request(gw.url, "/orders", headers={"X-Forwarded-Client-Cert": xfcc(client), **bearer(token)})
    assert ok.status == 200
    assert "x-forwarded-client-cert" not in sent_upstream(upstream)
    # the last element is the nearest proxy's: a client-supplied earlier element does not count
    spoofed = f"{xfcc(client)},{xfcc(other_client)}"
    refused = await raw_request(gw.url, "/orders", headers={"X-Forwarded-Client-Cert": spoofed, **bearer(token)})
    assert reason(refused.body) == "client_certificate_mismatch"


async def test_the_decision_port_takes_the_certificate_from_a_trusted_ingress_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, client: Issued
) -> None:
    original = {"X-Forwarded-Uri": "/mtls/orders", "X-Forwarded-Method": "GET", "X-Forwarded-Host": "api.example"}
    token = bound(issuer, client)
    headers = {**original, "ssl-client-cert": pem_urlencoded(client), **bearer(token)}
    for trusted, expected in (([], 401), (["127.0.0.1/32"], 200)):
        gw = await make_gateway(routes=routes(issuer), trusted_proxies=trusted, decision_listen="127.0.0.1:0",
                                decision_sources=["traefik"], client_certificates={"header": "ssl-client-cert"})
        response = await raw_request(f"http://127.0.0.1:{gw.port('decision')}", "/verify", headers=headers)
        assert response.status == expected, response.body


async def test_the_middleware_uses_a_trusted_forwarded_certificate_and_hides_it(
    aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path, client: Issued
) -> None:
    seen: list[dict[str, Any]] = []
    config = middleware_config(issuer, tmp_path / "audit.jsonl", trusted_proxies=["127.0.0.1/32"],
                               client_certificates={"header": "ssl-client-cert"})
    app = orders_app(config, seen)
    handler_headers: list[set[str]] = []

    @web.middleware  # after tokengate's: what the handler's request carries
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        handler_headers.append({n.lower() for n in request.headers})
        return await handler(request)  # type: ignore[no-any-return]

    app.middlewares.append(observe)
    test_client = await aiohttp_client(app)
    token = bound(issuer, client)
    allowed = await test_client.get("/orders", headers={"ssl-client-cert": pem_urlencoded(client), **bearer(token)})
    assert allowed.status == 200
    assert "ssl-client-cert" not in handler_headers[-1]
    refused = await test_client.get("/orders", headers=bearer(token))
    assert (await refused.json())["reason"] == "unproven_binding"
