"""Client certificates for RFC 8705 certificate-bound tokens: forwarded headers, checks, real TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes

from gateway.tokens.certificates import (
    MAX_HEADER_LENGTH,
    MAX_XFCC_ELEMENTS,
    CertificateProblem,
    CertificateRejected,
    ClientCertificate,
    TLSSettings,
    certificate_from_der,
    check_certificate_binding,
    check_validity,
    is_certificate_bound,
    parse_forwarded_certificate,
    parse_xfcc,
    peer_certificate,
    peer_certificate_der,
    server_ssl_context,
    thumbprint,
)

from .certs import NOW, Issued, issue, make_ca


@dataclass
class PKI:
    ca: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued  # another key, another CA
    expired: Issued
    future: Issued
    server: Issued


@pytest.fixture(scope="module")
def pki() -> PKI:
    ca, other_ca = make_ca("Test CA"), make_ca("Other CA")
    return PKI(
        ca=ca,
        client=issue(ca, "client-1"),
        other_ca=other_ca,
        other_client=issue(other_ca, "client-1"),
        expired=issue(ca, "old", not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)),
        future=issue(ca, "soon", not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=10)),
        server=issue(ca, "gateway", server=True),
    )


def accepted(result: ClientCertificate | CertificateRejected) -> ClientCertificate:
    assert isinstance(result, ClientCertificate), str(result)
    return result


def rejected(result: ClientCertificate | CertificateRejected, problem: CertificateProblem) -> CertificateRejected:
    assert isinstance(result, CertificateRejected), "accepted a certificate that should have been refused"
    assert result.problem is problem, str(result)
    return result


def rfc8705_thumbprint(issued: Issued) -> str:
    """Computed independently: base64url(SHA-256(DER)) without padding."""
    return base64.urlsafe_b64encode(issued.cert.fingerprint(hashes.SHA256())).decode().rstrip("=")


def xfcc_element(issued: Issued, *, by: str = "spiffe://cluster.local/ns/gw/sa/gateway", with_hash: bool = True) -> str:
    parts = [f"By={by}"]
    if with_hash:
        parts.append(f"Hash={hashlib.sha256(issued.der).hexdigest()}")
    parts.append(f'Cert="{quote(issued.pem, safe="")}"')
    parts.append(f'Subject="CN={issued.cert.subject.rfc4514_string()},O=Example\\"Quoted\\";OU=a=b"')
    parts.append("URI=spiffe://cluster.local/ns/client/sa/app")
    parts.append("DNS=client.example")
    parts.append("DNS=client2.example")
    return ";".join(parts)


# --- thumbprints and parsing ---------------------------------------------------------------------


def test_thumbprint_is_rfc8705_x5t_s256(pki: PKI) -> None:
    found = accepted(certificate_from_der(pki.client.der))
    assert found.thumbprint == thumbprint(pki.client.der) == rfc8705_thumbprint(pki.client)
    assert len(found.thumbprint) == 43 and "=" not in found.thumbprint
    assert found.thumbprint != rfc8705_thumbprint(pki.other_client)
    assert found.subject == "CN=client-1"


def test_der_with_trailing_bytes_or_garbage_is_not_a_certificate(pki: PKI) -> None:
    rejected(certificate_from_der(pki.client.der + b"\x00"), CertificateProblem.NOT_A_CERTIFICATE)
    rejected(certificate_from_der(pki.client.der[:-1]), CertificateProblem.NOT_A_CERTIFICATE)
    rejected(certificate_from_der(b""), CertificateProblem.NOT_A_CERTIFICATE)
    rejected(certificate_from_der(b"\x30" * 40000), CertificateProblem.NOT_A_CERTIFICATE)


def test_pem_urlencoded_as_ingress_nginx_sends_it(pki: PKI) -> None:
    # $ssl_client_escaped_cert: every reserved character, newlines included, percent-encoded
    header = quote(pki.client.pem, safe="")
    found = accepted(parse_forwarded_certificate([header], "pem-urlencoded"))
    assert found.thumbprint == rfc8705_thumbprint(pki.client)


def test_pem_urlencoded_keeps_a_literal_plus(pki: PKI) -> None:
    # an encoder that leaves base64's '+', '/' and '=' alone: '+' must not become a space
    header = quote(pki.client.pem, safe="+/=")
    assert accepted(parse_forwarded_certificate([header], "pem-urlencoded")).der == pki.client.der


@pytest.mark.parametrize(
    ("make_header", "problem"),
    [
        (lambda p: "", CertificateProblem.NOT_A_CERTIFICATE),
        (lambda p: "garbage", CertificateProblem.NOT_A_CERTIFICATE),
        (lambda p: quote(p.client.pem + p.other_client.pem, safe=""), CertificateProblem.NOT_A_CERTIFICATE),
        (lambda p: quote(p.client.key_pem().decode(), safe=""), CertificateProblem.NOT_A_CERTIFICATE),
        (lambda p: quote(p.client.pem, safe="").replace("%0A", "%ZZ", 1), CertificateProblem.NOT_A_CERTIFICATE),
        (lambda p: "%C3%28" + quote(p.client.pem, safe=""), CertificateProblem.MALFORMED_HEADER),
        (lambda p: quote(p.client.pem.replace("M", "*", 1), safe=""), CertificateProblem.NOT_A_CERTIFICATE),
        (lambda p: quote(p.client.pem.replace("-----END", "AAAA-----END"), safe=""),
         CertificateProblem.NOT_A_CERTIFICATE),
        (lambda p: "A" * (MAX_HEADER_LENGTH + 1), CertificateProblem.MALFORMED_HEADER),
    ],
)
def test_pem_urlencoded_hostile_values_are_refused_without_raising(
    pki: PKI, make_header: Callable[[PKI], str], problem: CertificateProblem
) -> None:
    result = rejected(parse_forwarded_certificate([make_header(pki)], "pem-urlencoded"), problem)
    assert "BEGIN" not in str(result)  # the detail never echoes the input


def test_pem_urlencoded_needs_exactly_one_header_line(pki: PKI) -> None:
    rejected(parse_forwarded_certificate([], "pem-urlencoded"), CertificateProblem.MISSING)
    line = quote(pki.client.pem, safe="")
    rejected(parse_forwarded_certificate([line, line], "pem-urlencoded"), CertificateProblem.MALFORMED_HEADER)


def test_xfcc_takes_the_cert_of_the_last_element(pki: PKI) -> None:
    # earlier elements come from hops further away (possibly the client): they never count
    header = ",".join([xfcc_element(pki.other_client), xfcc_element(pki.expired), xfcc_element(pki.client)])
    found = accepted(parse_forwarded_certificate([header], "xfcc"))
    assert found.thumbprint == rfc8705_thumbprint(pki.client)
    reverse = ",".join([xfcc_element(pki.client), xfcc_element(pki.other_client)])
    assert accepted(parse_forwarded_certificate([reverse], "xfcc")).der == pki.other_client.der


def test_xfcc_header_lines_are_combined_in_order(pki: PKI) -> None:
    lines = [xfcc_element(pki.other_client), xfcc_element(pki.client)]
    assert accepted(parse_forwarded_certificate(lines, "xfcc")).der == pki.client.der


def test_xfcc_elements_keys_and_quoting() -> None:
    header = 'By=spiffe://a;Hash=ab;Subject="/C=US/ST=CA, \\"Inc\\"; x=y";URI=,  by=b;DNS=x;DNS=y'
    elements = parse_xfcc(header)
    assert elements == [
        [("by", "spiffe://a"), ("hash", "ab"), ("subject", '/C=US/ST=CA, "Inc"; x=y'), ("uri", "")],
        [("by", "b"), ("dns", "x"), ("dns", "y")],
    ]


def test_xfcc_without_hash_is_accepted(pki: PKI) -> None:
    assert accepted(parse_forwarded_certificate([xfcc_element(pki.client, with_hash=False)], "xfcc")).der == (
        pki.client.der
    )


def test_xfcc_cert_in_an_earlier_element_only_is_refused(pki: PKI) -> None:
    header = xfcc_element(pki.client) + ",By=spiffe://gateway;URI=spiffe://x"
    rejected(parse_forwarded_certificate([header], "xfcc"), CertificateProblem.MALFORMED_HEADER)


_MALFORMED = CertificateProblem.MALFORMED_HEADER


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ('Cert="unterminated', _MALFORMED),
        ('Cert="abc"def', _MALFORMED),  # text after the closing quote
        ("Cert", _MALFORMED),  # no '='
        ("=abc", _MALFORMED),  # empty key
        ("Cert=a=b", _MALFORMED),  # '=' must be quoted
        ('Cert=ab"c', _MALFORMED),  # a stray quote
        ("Cert=a;", _MALFORMED),
        ("Cert=a,", _MALFORMED),
        ("Cert=a,,Cert=b", _MALFORMED),
        (",Cert=a", _MALFORMED),
        ("Cert=a;;URI=b", _MALFORMED),
        ("C\u00e9rt=a", _MALFORMED),  # non-ASCII key
        ("Cert=a;Cert=b", _MALFORMED),  # which one?
        (",".join(["By=x"] * (MAX_XFCC_ELEMENTS + 1)), _MALFORMED),
        ("By=" + "x" * MAX_HEADER_LENGTH, _MALFORMED),
        ('Cert="%C3%28"', _MALFORMED),  # percent-encoded invalid UTF-8
        ('Cert="\\"', _MALFORMED),  # the only quote is escaped: unterminated
        ('Cert="%ZZ"', CertificateProblem.NOT_A_CERTIFICATE),
        ("By=x, Cert=abc", CertificateProblem.NOT_A_CERTIFICATE),
    ],
)
def test_xfcc_hostile_syntax_is_a_clear_error(header: str, problem: CertificateProblem) -> None:
    rejected(parse_forwarded_certificate([header], "xfcc"), problem)


def test_xfcc_hash_must_match_the_cert(pki: PKI) -> None:
    element = xfcc_element(pki.client).replace(
        hashlib.sha256(pki.client.der).hexdigest(), hashlib.sha256(pki.other_client.der).hexdigest()
    )
    result = rejected(parse_forwarded_certificate([element], "xfcc"), CertificateProblem.MALFORMED_HEADER)
    assert "Hash" in result.detail


def test_random_mutations_never_raise(pki: PKI) -> None:
    """Hostile input yields a value, never an exception (a seeded, reproducible fuzz)."""
    rng = random.Random(8705)
    seeds = [
        ",".join([xfcc_element(pki.other_client), xfcc_element(pki.client)]),
        quote(pki.client.pem, safe=""),
    ]
    alphabet = '",;=\\% -+/AZaz09\n\x00\x7f\u00e9\ud800'
    for _ in range(1500):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            op, pos = rng.randrange(3), rng.randrange(len(text) + 1)
            if op == 0:
                text.insert(pos, rng.choice(alphabet))
            elif op == 1 and text:
                del text[min(pos, len(text) - 1)]
            elif text:
                text[min(pos, len(text) - 1)] = rng.choice(alphabet)
        value = "".join(text)
        for fmt in ("xfcc", "pem-urlencoded"):
            result = parse_forwarded_certificate([value], fmt)
            assert isinstance(result, ClientCertificate | CertificateRejected)


# --- validity and binding ----------------------------------------------------------------------


def test_validity_period(pki: PKI) -> None:
    assert check_validity(accepted(certificate_from_der(pki.client.der))) is None
    expired = check_validity(accepted(certificate_from_der(pki.expired.der)))
    assert expired is not None and expired.problem is CertificateProblem.EXPIRED
    assert "not after" in expired.detail
    future = accepted(certificate_from_der(pki.future.der))
    early = check_validity(future)
    assert early is not None and early.problem is CertificateProblem.NOT_YET_VALID
    assert check_validity(future, now=future.not_before - dt.timedelta(seconds=10), leeway=30) is None
    late = check_validity(future, now=future.not_after + dt.timedelta(seconds=1))
    assert late is not None and late.problem is CertificateProblem.EXPIRED


def test_binding_to_the_presented_certificate(pki: PKI) -> None:
    claims = {"sub": "u", "cnf": {"x5t#S256": rfc8705_thumbprint(pki.client)}}
    assert is_certificate_bound(claims)
    assert check_certificate_binding(claims, accepted(certificate_from_der(pki.client.der))) is None
    mismatch = check_certificate_binding(claims, accepted(certificate_from_der(pki.other_client.der)))
    assert mismatch is not None and mismatch.problem is CertificateProblem.MISMATCH
    missing = check_certificate_binding(claims, None)
    assert missing is not None and missing.problem is CertificateProblem.MISSING


@pytest.mark.parametrize("cnf", [{"x5t#S256": 12}, {"x5t#S256": None}, {"x5t#S256": ""}, {"x5t#S256": "\ud800"}])
def test_malformed_cnf_never_matches(pki: PKI, cnf: dict[str, object]) -> None:
    claims = {"cnf": cnf}
    assert is_certificate_bound(claims)
    result = check_certificate_binding(claims, accepted(certificate_from_der(pki.client.der)))
    assert result is not None and result.problem is CertificateProblem.MISMATCH


def test_unbound_tokens_are_not_certificate_bound() -> None:
    assert not is_certificate_bound({})
    assert not is_certificate_bound({"cnf": "x"})
    assert not is_certificate_bound({"cnf": {"jkt": "abc"}})


# --- the gateway terminating TLS: real handshakes on 127.0.0.1 ----------------------------------


@dataclass
class TLSServer:
    url: str
    seen: list[str]


async def _start(context: ssl.SSLContext) -> tuple[web.AppRunner, TLSServer]:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        found = peer_certificate(request)
        der = peer_certificate_der(request)
        label = "none" if found is None else found.thumbprint if isinstance(found, ClientCertificate) else "bad"
        assert (der is None) == (found is None)
        seen.append(label)
        return web.Response(text=label)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, TLSServer(f"https://127.0.0.1:{port}/", seen)


@pytest.fixture
def files(pki: PKI, tmp_path: Path) -> dict[str, Path]:
    server_cert, server_key = pki.server.write(tmp_path, "server")
    client_cert, client_key = pki.client.write(tmp_path, "client")
    other_cert, other_key = pki.other_client.write(tmp_path, "other")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_text(pki.ca.pem)
    return {"server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key, "other_cert": other_cert, "other_key": other_key, "ca": ca_path}


@pytest.fixture
async def cleanup_runners() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()


def client_context(
    files: dict[str, Path], cert: str | None, *, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files["ca"]))
    if cert is not None:
        context.load_cert_chain(str(files[f"{cert}_cert"]), str(files[f"{cert}_key"]))
    if maximum is not None:
        context.maximum_version = maximum
    return context


async def _get(url: str, context: ssl.SSLContext) -> str:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        assert response.status == 200
        return await response.text()


async def _start_mode(
    files: dict[str, Path], runners: list[web.AppRunner], mode: str, minimum_version: str = "1.2"
) -> TLSServer:
    settings = TLSSettings(
        certificate=str(files["server_cert"]), key=str(files["server_key"]), client_ca=str(files["ca"]),
        client_certificates=mode, minimum_version=minimum_version,  # type: ignore[arg-type]
    )
    runner, server = await _start(server_ssl_context(settings))
    runners.append(runner)
    return server


async def test_required_client_certificate_is_read_from_the_handshake(
    pki: PKI, files: dict[str, Path], cleanup_runners: list[web.AppRunner]
) -> None:
    server = await _start_mode(files, cleanup_runners, "required")
    assert await _get(server.url, client_context(files, "client")) == rfc8705_thumbprint(pki.client)
    assert server.seen == [rfc8705_thumbprint(pki.client)]


async def test_required_refuses_a_handshake_without_a_certificate(
    files: dict[str, Path], cleanup_runners: list[web.AppRunner]
) -> None:
    server = await _start_mode(files, cleanup_runners, "required")
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await _get(server.url, client_context(files, None))
    assert server.seen == []  # the request never reached the application


async def test_a_certificate_from_another_ca_never_completes_a_handshake(
    files: dict[str, Path], cleanup_runners: list[web.AppRunner]
) -> None:
    for mode in ("required", "optional"):
        server = await _start_mode(files, cleanup_runners, mode)
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await _get(server.url, client_context(files, "other"))
        assert server.seen == []


async def test_optional_client_certificate(
    pki: PKI, files: dict[str, Path], cleanup_runners: list[web.AppRunner]
) -> None:
    server = await _start_mode(files, cleanup_runners, "optional")
    assert await _get(server.url, client_context(files, None)) == "none"
    assert await _get(server.url, client_context(files, "client")) == rfc8705_thumbprint(pki.client)


async def test_no_client_certificate_is_asked_for_in_mode_none(
    files: dict[str, Path], cleanup_runners: list[web.AppRunner]
) -> None:
    server = await _start_mode(files, cleanup_runners, "none")
    assert await _get(server.url, client_context(files, "client")) == "none"


async def test_minimum_tls_version(files: dict[str, Path], cleanup_runners: list[web.AppRunner]) -> None:
    server = await _start_mode(files, cleanup_runners, "optional", minimum_version="1.3")
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await _get(server.url, client_context(files, "client", maximum=ssl.TLSVersion.TLSv1_2))
    assert server.seen == []
    assert await _get(server.url, client_context(files, None)) == "none"


async def test_plain_http_has_no_peer_certificate(cleanup_runners: list[web.AppRunner]) -> None:
    seen: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(peer_certificate(request))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    cleanup_runners.append(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{runner.addresses[0][1]}/") as r:
        assert r.status == 200
    assert seen == [None]


# --- TLS settings errors -----------------------------------------------------------------------


def test_tls_settings_need_a_ca_for_client_certificates(files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="needs client_ca"):
        TLSSettings(certificate=str(files["server_cert"]), key=str(files["server_key"]), client_certificates="required")
    with pytest.raises(ValueError, match="minimum_version"):
        TLSSettings(certificate="c", key="k", minimum_version="1.1")  # type: ignore[arg-type]


def test_unusable_files_name_the_file(files: dict[str, Path], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=r"nope\.pem"):
        server_ssl_context(TLSSettings(certificate=missing, key=str(files["server_key"])))
    with pytest.raises(ValueError, match="cannot use certificate"):  # the client's key with the server's cert
        server_ssl_context(TLSSettings(certificate=str(files["server_cert"]), key=str(files["client_key"])))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a bundle")
    with pytest.raises(ValueError, match="client_ca"):
        server_ssl_context(TLSSettings(certificate=str(files["server_cert"]), key=str(files["server_key"]),
                                       client_ca=str(garbage), client_certificates="optional"))


def test_problems_map_to_shared_reasons(pki: PKI) -> None:
    from gateway.reasons import Reason

    assert CertificateRejected(CertificateProblem.MISSING).reason is Reason.UNPROVEN_BINDING
    assert CertificateRejected(CertificateProblem.MISMATCH).reason is Reason.CLIENT_CERTIFICATE_MISMATCH
    for problem in (CertificateProblem.EXPIRED, CertificateProblem.NOT_YET_VALID, CertificateProblem.MALFORMED_HEADER,
                    CertificateProblem.NOT_A_CERTIFICATE):
        reason = CertificateRejected(problem).reason
        assert reason is Reason.CLIENT_CERTIFICATE_INVALID and (reason.status, reason.error) == (401, "invalid_token")


def test_parsed_headers_are_reused_but_validity_is_checked_each_time(pki: PKI) -> None:
    header = xfcc_element(pki.expired)
    first = accepted(parse_forwarded_certificate([header], "xfcc"))
    assert parse_forwarded_certificate([header], "xfcc") is first  # one parse per distinct header
    assert check_validity(first) is not None  # the cached value carries no verdict about time
    bad = parse_forwarded_certificate(['Cert="x'], "xfcc")
    assert parse_forwarded_certificate(['Cert="x'], "xfcc") is bad


async def test_resumed_tls_sessions_still_carry_the_client_certificate(
    pki: PKI, files: dict[str, Path], cleanup_runners: list[web.AppRunner]
) -> None:
    """A resumed session (TLS 1.2 session ID / 1.3 ticket) must not lose the binding's certificate."""
    server = await _start_mode(files, cleanup_runners, "optional")
    port = int(server.url.rsplit(":", 1)[1].strip("/"))

    def fetch(version: ssl.TLSVersion) -> list[tuple[bool, str]]:
        context = client_context(files, "client", maximum=version)
        session, seen = None, []
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(
                raw, server_hostname="127.0.0.1", session=session
            ) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
                seen.append((bool(tls.session_reused), data.split(b"\r\n\r\n", 1)[1].decode()))
                session = tls.session
        return seen

    expected = rfc8705_thumbprint(pki.client)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert await asyncio.to_thread(fetch, version) == [(False, expected), (True, expected)]
