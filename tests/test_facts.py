"""The facts of a request (facts.py): the proxy's one-pass ``exchange_and_facts`` is ``new_exchange``
and ``facts_of`` composed, and what they report over real sockets.

First on mocked requests over plain HTTP; then through the real proxy listener on 127.0.0.1, over
real TLS with real certificates (tests/certs.py): the certificate of a mutual-TLS connection, a
certificate a trusted proxy forwards in ``client_certificates.header`` (an untrusted peer's is
ignored), none on plain HTTP whatever an untrusted peer sends, and hostile certificate headers
refused with a 401, never a 500. Every proxied request is also checked field by field against
``new_exchange`` + ``facts_of`` on the same request.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import ssl
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway import proxy_handler
from gateway.audit.record import Exchange
from gateway.config import GatewayConfig, parse_config
from gateway.decision import RequestFacts
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.facts import exchange_and_facts, facts_of, new_exchange
from gateway.tokens.certificates import CertificateProblem, CertificateRejected, ClientCertificate, thumbprint
from tests.certs import Issued
from tests.helpers import GatewayFactory, RunningGateway, bearer, raw_request
from tests.test_mtls import bound, client_context, get, pem_urlencoded, reason, routes, sent_upstream, tls_section
from tests.test_sender_constraint import capture

HEADERS: list[dict[str, str]] = [
    {"Host": "api.example", "Authorization": "Bearer abc", "User-Agent": "ua"},
    {"Host": "api.example", "X-Forwarded-For": "203.0.113.9, 10.0.0.7", "X-Forwarded-Proto": "https",
     "X-Forwarded-Host": "public.example", "X-Request-Id": "req-1", "DPoP": "proof"},
    {"Host": "h", "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Protocol": "chat, x"},
    {"Host": "h", "X-Forwarded-For": "not-an-ip", "X-Forwarded-Proto": "gopher"},
]
TIMES = frozenset({"started", "started_mono"})  # when each builder ran: never the same


def _config(trusted: list[str]) -> Any:
    return parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": "https://issuer.example", "audiences": ["api"]}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
        "trusted_proxies": trusted,
    }))


def fields_of(value: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A dataclass's fields by name (not ``asdict``: no deep copy of the headers and the certificate)."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name not in skip}


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"], ["192.0.2.0/24"]])
@pytest.mark.parametrize("headers", HEADERS)
def test_exchange_and_facts_equal_the_two_steps(trusted: list[str], headers: dict[str, str]) -> None:
    config = _config(trusted)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("10.1.2.3", 40000) if name == "peername" else default)
    request = make_mocked_request("GET", "/x?a=1", headers=CIMultiDict(headers), transport=transport)
    exchange, peer = new_exchange(request, config, "proxy")
    facts = facts_of(request, config, exchange.client_ip)
    exchange2, facts2, peer2, peer_trusted = exchange_and_facts(request, config, "proxy")
    assert peer2 == peer == "10.1.2.3"
    assert peer_trusted == (trusted == ["10.0.0.0/8"])
    skip = TIMES | {"request_id"}
    assert fields_of(exchange2, skip) == fields_of(exchange, skip)
    if "X-Request-Id" in headers:
        assert exchange2.request_id == exchange.request_id == headers["X-Request-Id"]
    assert facts2 == facts


# --- over real sockets: the proxy listener, TLS and plain ----------------------------------------

CERT_HEADER = "ssl-client-cert"
TRUST = pytest.mark.parametrize(("trusted_proxies", "believed"), [(["127.0.0.1/32"], True), (["192.0.2.0/24"], False)])
FORWARDED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "public.example", "X-Forwarded-Proto": "https"}


@dataclasses.dataclass
class Seen:
    """One proxied request as its handling began: what the proxy's ``exchange_and_facts`` gave, and
    what ``new_exchange`` then ``facts_of`` give for the same request (with the exchange's client IP,
    as the middleware calls it, and working it out itself). Exchanges by their fields: the proxy
    fills its own in later."""

    composed: tuple[dict[str, Any], RequestFacts, str, bool]
    separate: tuple[dict[str, Any], str]
    facts: RequestFacts
    own_facts: RequestFacts

    def agreed(self) -> RequestFacts:
        """The facts, once the composed and the separate paths agree field by field."""
        exchange, facts, peer, _ = self.composed
        assert (exchange, peer) == self.separate
        assert fields_of(facts) == fields_of(self.facts) == fields_of(self.own_facts)
        return facts


def observe(monkeypatch: pytest.MonkeyPatch) -> list[Seen]:
    """Every request the proxy handles, its facts built both ways (the proxy still uses its own)."""
    seen: list[Seen] = []

    def both(request: web.BaseRequest, config: GatewayConfig, mode: str) -> tuple[Exchange, RequestFacts, str, bool]:
        composed = exchange, facts, peer, trusted = exchange_and_facts(request, config, mode)
        separate, separate_peer = new_exchange(request, config, mode)
        skip = TIMES if "X-Request-Id" in request.headers else TIMES | {"request_id"}  # else each makes one up
        seen.append(Seen((fields_of(exchange, skip), facts, peer, trusted), (fields_of(separate, skip), separate_peer),
                         facts_of(request, config, separate.client_ip), facts_of(request, config)))
        return composed

    monkeypatch.setattr(proxy_handler, "exchange_and_facts", both)
    return seen


def presented(facts: RequestFacts) -> bytes | CertificateProblem | None:
    """The DER of the certificate the facts name, why it was refused, or None."""
    found = facts.client_certificate
    if isinstance(found, ClientCertificate):
        return found.der
    return found.problem if isinstance(found, CertificateRejected) else None


async def send(gw: RunningGateway, context: ssl.SSLContext | None, headers: dict[str, str]) -> tuple[int, str]:
    """GET /orders over TLS with ``context``, or over plain HTTP."""
    if context is not None:
        return await get(gw, "/orders", context, headers)
    response = await raw_request(gw.url, "/orders", headers=headers)
    return response.status, response.body.decode()


async def test_the_certificate_of_a_mutual_tls_connection_is_the_requests(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, ca: Issued, client: Issued,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = observe(monkeypatch)
    gw = await make_gateway(routes=routes(issuer), tls=tls_section(ca, tmp_path))
    decisions = capture(gw)
    headers = {**FORWARDED, **bearer(bound(issuer, client)), "X-Request-Id": "facts-mtls"}
    assert (await get(gw, "/orders", client_context(ca, client, tmp_path), headers))[0] == 200
    facts = seen[-1].agreed()
    assert presented(facts) == client.der
    # nobody is trusted: the forwarding headers are not believed, the scheme is our TLS's
    assert (facts.scheme, facts.client_ip, facts.authority, seen[-1].composed[2:]) == (
        "https", "127.0.0.1", "", ("127.0.0.1", False))
    assert (decisions[-1].binding, decisions[-1].key_thumbprint) == ("mtls", thumbprint(client.der))
    assert upstream.requests[-1]["headers"]["X-Forwarded-Proto"] == "https"
    record = (await gw.audit_records())[-1]
    assert (record["request_id"], record["client_ip"], record["binding"], record["key_thumbprint"]) == (
        "facts-mtls", "127.0.0.1", "mtls", thumbprint(client.der))

    status, text = await get(gw, "/orders", client_context(ca, None, tmp_path), headers)
    assert (status, reason(text)) == (401, "unproven_binding")
    assert presented(seen[-1].agreed()) is None


@TRUST
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_a_forwarded_certificate_counts_from_a_trusted_proxy_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, ca: Issued, client: Issued,
    other_client: Issued, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted_proxies: list[str],
    believed: bool, tls: bool,
) -> None:
    """Over TLS the peer presents a certificate of its own (``other_client``) and forwards ``client``'s."""
    seen = observe(monkeypatch)
    gw = await make_gateway(routes=routes(issuer), trusted_proxies=trusted_proxies,
                            client_certificates={"header": CERT_HEADER},
                            **({"tls": tls_section(ca, tmp_path)} if tls else {}))
    decisions = capture(gw)
    context = client_context(ca, other_client, tmp_path) if tls else None
    own = other_client.der if tls else None  # the connection's certificate: none on plain HTTP
    status, text = await send(gw, context, {**FORWARDED, CERT_HEADER: pem_urlencoded(client),
                                            **bearer(bound(issuer, client))})
    facts = seen[-1].agreed()
    assert seen[-1].composed[2:] == ("127.0.0.1", believed)
    assert presented(facts) == (client.der if believed else own)
    assert (facts.scheme, facts.client_ip, facts.authority) == (
        ("https", "203.0.113.9", "public.example") if believed else ("https" if tls else "http", "127.0.0.1", ""))
    if believed:
        assert status == 200
        assert (decisions[-1].binding, decisions[-1].key_thumbprint) == ("mtls", thumbprint(client.der))
        assert CERT_HEADER not in sent_upstream(upstream)
        assert upstream.requests[-1]["headers"]["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    else:
        assert (status, reason(text)) == (401, "client_certificate_mismatch" if tls else "unproven_binding")
        assert decisions[-1].key_thumbprint == (thumbprint(other_client.der) if tls else None)
    assert (await gw.audit_records())[-1]["client_ip"] == facts.client_ip

    # without the header: a trusted proxy's own certificate never stands for its client's; an
    # untrusted peer's is its own (a token bound to it passes over TLS)
    status, _ = await send(gw, context, bearer(bound(issuer, other_client)))
    assert presented(seen[-1].agreed()) == (None if believed else own)
    assert status == (200 if own is not None and not believed else 401)


async def test_plain_http_has_no_certificate_when_none_is_forwarded_by_configuration(
    make_gateway: GatewayFactory, issuer: DemoIssuer, client: Issued, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ``client_certificates``: even a trusted proxy's header is not read, and plain HTTP has no TLS."""
    seen = observe(monkeypatch)
    gw = await make_gateway(routes=routes(issuer), trusted_proxies=["127.0.0.1/32"])
    status, text = await send(gw, None, {CERT_HEADER: pem_urlencoded(client), **bearer(bound(issuer, client))})
    assert (status, reason(text)) == (401, "unproven_binding")
    assert presented(seen[-1].agreed()) is None
    assert seen[-1].composed[3] is True


# --- hostile certificate headers -----------------------------------------------------------------

_NOT_A_CERTIFICATE = CertificateProblem.NOT_A_CERTIFICATE
_MALFORMED = CertificateProblem.MALFORMED_HEADER


def pem_of(body: str) -> str:
    return quote(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n", safe="")


def pem_hostile(client: Issued, other: Issued) -> list[tuple[list[str], CertificateProblem]]:
    """``pem-urlencoded`` header lines no certificate can be read from, and why."""
    body = "".join(client.pem.splitlines()[1:-1])
    return [
        ([pem_of("MIIB" + "!*not-base64*!" * 4)], _NOT_A_CERTIFICATE),  # not base64's alphabet: no PEM block
        ([pem_of("MIIBkTCB+wIJAKHBfpegPjMCMA0GCSqGSIb3DQEBCwUAMBExDzANBgNVBAMMBnRl=c3Q")],
         _NOT_A_CERTIFICATE),  # padding inside: invalid base64
        ([pem_of(base64.b64encode(b"\x30\x82\x01\x00" + b"\x00" * 200).decode())],
         _NOT_A_CERTIFICATE),  # valid base64 of bytes that are no DER certificate
        ([pem_of(body[: len(body) // 2])], _NOT_A_CERTIFICATE),  # truncated
        ([pem_urlencoded(client) + pem_urlencoded(other)], _NOT_A_CERTIFICATE),  # two in one value
        ([quote(client.key_pem().decode(), safe="")], _NOT_A_CERTIFICATE),
        (["%C3%28" + pem_urlencoded(client)], _MALFORMED),  # percent-encoded invalid UTF-8
        ([pem_of(body[:40] + "\u00e9\u2603" + body[40:])], _NOT_A_CERTIFICATE),  # non-ASCII in the base64
        (["A" * 8000], _NOT_A_CERTIFICATE),  # long, but within a header line
        ([pem_urlencoded(client), pem_urlencoded(client)], _MALFORMED),  # two lines, even of the same certificate
    ]


def xfcc_hostile(client: Issued) -> list[tuple[list[str], CertificateProblem]]:
    """``xfcc`` header lines no certificate can be read from, and why."""
    cert = f'Cert="{pem_urlencoded(client)}"'
    return [
        (['By=spiffe://gw;Cert="unterminated'], _MALFORMED),
        ([cert, "By=spiffe://gw;URI=spiffe://x"], _MALFORMED),  # the last element, the nearest hop's, has no Cert
        ([f"By=spiffe://gw;{cert};{cert}"], _MALFORMED),
        ([f"By=spiffe://gw;Hash={'0' * 64};{cert}"], _MALFORMED),  # a Hash of another certificate
        (['Cert="' + pem_of("@@@@" * 10) + '"'], _NOT_A_CERTIFICATE),
        (["By=" + "x" * 7900] * 9, _MALFORMED),  # each line fits; together they are over MAX_HEADER_LENGTH
    ]


@pytest.mark.parametrize("fmt", ["pem-urlencoded", "xfcc"])
async def test_hostile_certificate_headers_from_a_trusted_proxy_are_a_401_not_a_500(
    make_gateway: GatewayFactory, issuer: DemoIssuer, ca: Issued, client: Issued, other_client: Issued,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str,
) -> None:
    seen = observe(monkeypatch)
    header = CERT_HEADER if fmt == "pem-urlencoded" else "X-Forwarded-Client-Cert"
    gw = await make_gateway(routes=routes(issuer), trusted_proxies=["127.0.0.1/32"],
                            client_certificates={"header": header, "format": fmt}, tls=tls_section(ca, tmp_path))
    context = client_context(ca, other_client, tmp_path)
    hostile = pem_hostile(client, other_client) if fmt == "pem-urlencoded" else xfcc_hostile(client)
    for lines, problem in hostile:
        values = [(header, line) for line in lines]
        status, text = await get(gw, "/orders", context, [*values, *bearer(bound(issuer, client)).items()])
        assert (status, reason(text)) == (401, "client_certificate_invalid"), lines[0][:60]
        assert json.loads(text)["error_description"] == problem.message
        assert presented(seen[-1].agreed()) is problem, lines[0][:60]
        record = (await gw.audit_records())[-1]
        assert (record["status"], record["reason"], record["key_thumbprint"]) == (
            401, "client_certificate_invalid", None)
        assert not any(line[10:40] in text or line[10:40] in json.dumps(record) for line in lines)  # never echoed
        # a token that needs no certificate does not mind the header
        assert (await get(gw, "/orders", context, [*values, *bearer(issuer.mint()).items()]))[0] == 200

    # a line longer than the HTTP parser takes: its 400, before any facts; the listener keeps serving
    before = len(seen)
    status, _ = await get(gw, "/orders", context, {header: "A" * 9000, **bearer(issuer.mint())})
    assert (status, len(seen)) == (400, before)
    assert (await get(gw, "/orders", context, bearer(issuer.mint())))[0] == 200


async def test_hostile_certificate_headers_from_an_untrusted_peer_change_nothing(
    make_gateway: GatewayFactory, issuer: DemoIssuer, ca: Issued, client: Issued, other_client: Issued,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The header is ignored: the certificate is the connection's, and a token bound to it passes."""
    seen = observe(monkeypatch)
    gw = await make_gateway(routes=routes(issuer), trusted_proxies=["192.0.2.0/24"],
                            client_certificates={"header": CERT_HEADER}, tls=tls_section(ca, tmp_path))
    context = client_context(ca, other_client, tmp_path)
    for lines, _ in [*pem_hostile(client, other_client), *xfcc_hostile(client)]:
        values = [(CERT_HEADER, line) for line in lines]
        status, _ = await get(gw, "/orders", context, [*values, *bearer(bound(issuer, other_client)).items()])
        assert status == 200, lines[0][:60]
        assert presented(seen[-1].agreed()) == other_client.der
