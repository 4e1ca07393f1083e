"""The demo: what ``gateway demo`` prints works as announced, and the demo issuer mints bound tokens.

The printed commands are run as printed (bash, curl and the installed ``gateway dpop-request``)
against the demo configuration served on ephemeral ports; the issuer's token endpoint is
exercised with real DPoP proofs (RFC 9449 section 5) and real client certificates, over plain
HTTP and mutual TLS (RFC 8705 section 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cli import main
from gateway.demo import DemoIssuer, DemoPorts, EchoUpstream, certificate_confirmation, demo_config, demo_instructions
from gateway.reasons import Reason
from gateway.runtime import Gateway
from gateway.server import Server
from gateway.tokens.certificates import thumbprint
from gateway.tokens.dpop import NonceSource, ProofRequest, key_thumbprint, public_jwk, sign_proof
from tests.certs import issue, make_ca

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's `gateway` console script
REASONS = {reason.value for reason in Reason}


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# --- the printed commands --------------------------------------------------------------------


@dataclass
class Step:
    comment: str
    command: str
    expected: int


def steps_of(text: str) -> tuple[dict[str, str], list[Step]]:
    """The shell variables and every command with the status its comment announces."""
    variables: dict[str, str] = {}
    steps: list[Step] = []
    comment = ""
    for line in text.splitlines():
        if match := re.fullmatch(r"([A-Z]+)='([^']*)'", line):
            variables[match.group(1)] = match.group(2)
        elif line.startswith("#") and "->" in line:
            comment = line
        elif line.startswith(("curl ", "gateway ")):
            status = re.search(r"-> (\d{3})$", comment)
            assert status is not None, f"no announced status for {line!r}"
            steps.append(Step(comment, line, int(status.group(1))))
            comment = ""
    return variables, steps


def status_of(step: Step, out: str, err: str) -> int:
    if step.command.startswith("curl "):
        match = re.match(r"HTTP/1\.1 (\d{3})", out)
    else:
        match = re.search(r"^HTTP (\d{3})$", err, re.MULTILINE)
    assert match is not None, (step.command, out, err)
    return int(match.group(1))


@dataclass
class RunningDemo:
    text: str  # what `gateway demo` prints
    gateway: Gateway

    async def audit_records(self) -> list[dict[str, Any]]:
        await self.gateway.audit.flush()
        path = Path(self.gateway.config.audit.path or "")
        return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
async def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningDemo]:
    """The demo's issuer, upstream and gateway on ephemeral ports, and the printed instructions."""
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("DEMO_AUDIT_PATH", str(audit))
    issuer, upstream = DemoIssuer(), EchoUpstream()
    await issuer.start()
    await upstream.start()
    ports = DemoPorts(gateway=0, issuer=urlsplit(issuer.issuer).port or 0,
                      upstream=urlsplit(upstream.url).port or 0, admin=0)
    server = Server(Gateway(demo_config(ports)))
    await server.start()
    try:
        bound = DemoPorts(server.ports["proxy"], ports.issuer, ports.upstream, server.ports["admin"])
        yield RunningDemo(demo_instructions(issuer, upstream.url, bound, str(audit)), server.gateway)
    finally:
        await server.stop()
        await upstream.stop()
        await issuer.stop()


async def run_shell(command: str, env: dict[str, str]) -> tuple[str, str]:
    child = await asyncio.create_subprocess_exec(
        "bash", "-c", command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    return out.decode(), err.decode()


async def test_every_printed_command_gets_the_answer_it_announces(demo: RunningDemo) -> None:
    variables, steps = steps_of(demo.text)
    assert set(variables) == {"READER", "WRITER", "ACME", "MFA", "STOLEN"}
    assert any(s.command.startswith("gateway dpop-request ") for s in steps)
    assert len(steps) == 11
    env = {**os.environ, **variables, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_PROXY": "*", "no_proxy": "*"}
    for step in steps:
        out, err = await run_shell(step.command, env)
        assert status_of(step, out, err) == step.expected, (step.comment, step.command, out, err)
        for word in set(re.findall(r"[a-z_]+", step.comment)) & REASONS - {"allowed"}:
            assert f'"{word}"' in out, (step.comment, out)  # the body's error or reason names it
    records = {r["route"]: r for r in await demo.audit_records() if r.get("route") in ("dpop-orders", "tenant-orders")
               and r["decision"] == "allow"}
    assert records["dpop-orders"]["binding"] == "dpop"  # the printed DPoP command proved its key
    assert records["dpop-orders"]["key_thumbprint"]
    denied = [r for r in await demo.audit_records() if r.get("reason") == "rule_failed"]
    assert [r.get("rule") for r in denied] == ["same-tenant"]


async def test_the_printed_dpop_command_also_runs_from_a_checkout(demo: RunningDemo) -> None:
    """The tools/ script takes the same arguments (as the comment above the command says)."""
    command = next(s.command for s in steps_of(demo.text)[1] if s.command.startswith("gateway dpop-request "))
    argv = command.removeprefix("gateway dpop-request ").split()
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "tools" / "dpop_client.py"), *argv, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err
    seen = json.loads(out)  # what the echo upstream received
    assert seen["path"] == "/dpop/orders"
    assert seen["headers"]["Authorization"].startswith("DPoP ")
    assert seen["headers"]["X-Auth-Subject"] == "demo-user"


def test_the_demo_configuration_keeps_its_addresses_apart() -> None:
    """The ports are moved in one pass: a new port equal to another default is not moved again."""
    config = demo_config(DemoPorts(gateway=9400, issuer=9401, upstream=9090, admin=8080))
    assert (config.listen.port, config.admin_listen.port) == (9400, 8080)
    assert config.issuers[0].issuer == "http://127.0.0.1:9401"
    assert config.upstreams["orders"].url == "http://127.0.0.1:9090"
    routes = {r.name: r for r in config.routes}
    assert routes["dpop-orders"].sender_constraint == "dpop"
    assert [r.name for r in routes["tenant-orders"].rules] == ["same-tenant"]


def test_dpop_request_is_a_gateway_command() -> None:
    result = CliRunner().invoke(main, ["dpop-request", "--help"])
    assert result.exit_code == 0
    assert result.output.startswith("usage: gateway dpop-request")
    assert "--token-endpoint" in result.output


# --- the token endpoint: DPoP-bound tokens -------------------------------------------------


@pytest.fixture
async def issuer_http(issuer: DemoIssuer) -> AsyncIterator[tuple[DemoIssuer, aiohttp.ClientSession]]:
    async with aiohttp.ClientSession() as session:
        yield issuer, session


async def ask_token(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
                    **form: str) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with session.post(url, data={"grant_type": "client_credentials", **form}, headers=headers or {}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_token_request_with_a_dpop_proof_gets_a_token_bound_to_its_key(
    issuer_http: tuple[DemoIssuer, aiohttp.ClientSession],
) -> None:
    issuer, session = issuer_http
    key = ec.generate_private_key(ec.SECP256R1())
    proof = sign_proof(key, ProofRequest("POST", issuer.token_endpoint))
    status, body, _ = await ask_token(session, issuer.token_endpoint, {"DPoP": proof})
    assert status == 200, body
    assert body["token_type"] == "DPoP"
    assert claims_of(body["access_token"])["cnf"] == {"jkt": key_thumbprint(key)}
    status, body, _ = await ask_token(session, issuer.token_endpoint)
    assert status == 200 and body["token_type"] == "Bearer"
    assert "cnf" not in claims_of(body["access_token"])  # no proof, no binding: as before


def _proof(issuer: DemoIssuer, key: ec.EllipticCurvePrivateKey, case: str) -> list[str]:
    if case == "another URL":
        return [sign_proof(key, ProofRequest("POST", f"{issuer.issuer}/other"))]
    if case == "another method":
        return [sign_proof(key, ProofRequest("GET", issuer.token_endpoint))]
    if case == "too old":
        return [sign_proof(key, ProofRequest("POST", issuer.token_endpoint, iat=1_000_000_000))]
    if case == "private key in the header":
        header = {"typ": "dpop+jwt", "jwk": {**public_jwk(key), "d": "AAAA"}}
        return [jwt.encode({"jti": "j", "htm": "POST", "htu": issuer.token_endpoint, "iat": 0}, key,
                           algorithm="ES256", headers=header)]
    if case == "two headers":
        one = sign_proof(key, ProofRequest("POST", issuer.token_endpoint))
        return [one, sign_proof(key, ProofRequest("POST", issuer.token_endpoint))]
    return ["not.a.proof"]


@pytest.mark.parametrize(
    "case", ["another URL", "another method", "too old", "private key in the header", "two headers", "garbage"]
)
async def test_a_bad_dpop_proof_gets_400_invalid_dpop_proof_and_no_token(
    issuer_http: tuple[DemoIssuer, aiohttp.ClientSession], case: str
) -> None:
    issuer, session = issuer_http
    values = _proof(issuer, ec.generate_private_key(ec.SECP256R1()), case)
    headers = CIMultiDict(("DPoP", v) for v in values)
    async with session.post(issuer.token_endpoint, data={"grant_type": "client_credentials"}, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 400, body
    assert body["error"] == "invalid_dpop_proof"
    assert "access_token" not in body


async def test_a_replayed_dpop_proof_gets_no_second_token(
    issuer_http: tuple[DemoIssuer, aiohttp.ClientSession],
) -> None:
    issuer, session = issuer_http
    proof = sign_proof(ec.generate_private_key(ec.SECP256R1()), ProofRequest("POST", issuer.token_endpoint))
    assert (await ask_token(session, issuer.token_endpoint, {"DPoP": proof}))[0] == 200
    status, body, _ = await ask_token(session, issuer.token_endpoint, {"DPoP": proof})
    assert (status, body["error"]) == (400, "invalid_dpop_proof")
    assert "already used" in body["error_description"]


async def test_the_token_endpoint_can_require_its_nonce(issuer_http: tuple[DemoIssuer, aiohttp.ClientSession]) -> None:
    """RFC 9449 section 8: 400 use_dpop_nonce with a DPoP-Nonce header, then the retry succeeds."""
    issuer, session = issuer_http
    issuer.dpop_nonces = NonceSource(b"k" * 32)
    key = ec.generate_private_key(ec.SECP256R1())
    status, body, headers = await ask_token(
        session, issuer.token_endpoint, {"DPoP": sign_proof(key, ProofRequest("POST", issuer.token_endpoint))})
    assert (status, body["error"]) == (400, "use_dpop_nonce")
    nonce = headers["DPoP-Nonce"]
    proof = sign_proof(key, ProofRequest("POST", issuer.token_endpoint, nonce=nonce))
    status, body, _ = await ask_token(session, issuer.token_endpoint, {"DPoP": proof})
    assert status == 200 and body["token_type"] == "DPoP"


async def test_the_metadata_advertises_dpop_and_certificate_binding(
    issuer_http: tuple[DemoIssuer, aiohttp.ClientSession],
) -> None:
    issuer, session = issuer_http
    async with session.get(f"{issuer.issuer}/.well-known/openid-configuration") as resp:
        metadata = await resp.json()
    assert "ES256" in metadata["dpop_signing_alg_values_supported"]
    assert "HS256" not in metadata["dpop_signing_alg_values_supported"]
    assert metadata["tls_client_certificate_bound_access_tokens"] is True


async def test_the_token_endpoint_adds_tenant_and_acr_with_auth_time(
    issuer_http: tuple[DemoIssuer, aiohttp.ClientSession],
) -> None:
    issuer, session = issuer_http
    _, body, _ = await ask_token(session, issuer.token_endpoint, tenant="acme", acr="urn:example:mfa")
    claims = claims_of(body["access_token"])
    assert (claims["tenant"], claims["acr"]) == ("acme", "urn:example:mfa")
    assert abs(claims["auth_time"] - claims["iat"]) <= 1


# --- the token endpoint: certificate-bound tokens ------------------------------------------


async def test_a_client_certificate_field_binds_the_token_to_it(
    issuer_http: tuple[DemoIssuer, aiohttp.ClientSession],
) -> None:
    issuer, session = issuer_http
    client = issue(make_ca(), "client-a")
    status, body, _ = await ask_token(session, issuer.token_endpoint, client_certificate=client.pem)
    assert status == 200 and body["token_type"] == "Bearer"
    assert claims_of(body["access_token"])["cnf"] == {"x5t#S256": thumbprint(client.der)}
    assert issuer.mint(cnf=certificate_confirmation(client.der)).count(".") == 2


BAD_PEMS = ["", "not a certificate", "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----"]


@pytest.mark.parametrize("pem", BAD_PEMS)
async def test_a_bad_client_certificate_field_gets_400(
    issuer_http: tuple[DemoIssuer, aiohttp.ClientSession], pem: str
) -> None:
    issuer, session = issuer_http
    status, body, _ = await ask_token(session, issuer.token_endpoint, client_certificate=pem)
    assert (status, body["error"]) == (400, "invalid_request")
    assert "access_token" not in body


async def test_over_mutual_tls_the_token_is_bound_to_the_presented_certificate(tmp_path: Path) -> None:
    """RFC 8705 section 3: the certificate of the TLS handshake, not a form field, is what counts."""
    ca = make_ca()
    server_cert, server_key = issue(ca, "127.0.0.1", server=True).write(tmp_path, "server")
    client = issue(ca, "client-a")
    client_cert, client_key = client.write(tmp_path, "client")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(server_cert, server_key)
    server_ctx.load_verify_locations(ca_file)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    client_ctx.load_cert_chain(client_cert, client_key)
    issuer = DemoIssuer()
    url = await issuer.start(ssl_context=server_ctx)
    assert url.startswith("https://127.0.0.1:")
    other = issue(ca, "someone-else")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
            status, body, _ = await ask_token(session, issuer.token_endpoint, client_certificate=other.pem)
    finally:
        await issuer.stop()
    assert status == 200, body
    assert claims_of(body["access_token"])["cnf"] == {"x5t#S256": thumbprint(client.der)}


# --- the client's own errors: one line, never a traceback ------------------------------------


async def run_client(*args: str) -> tuple[int, str]:
    child = await asyncio.create_subprocess_exec(
        str(BIN / "gateway"), "dpop-request", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, err.decode()


async def test_the_client_explains_a_token_endpoint_without_a_token(upstream: EchoUpstream) -> None:
    code, err = await run_client("--token-endpoint", f"{upstream.url}/token", f"{upstream.url}/orders")
    assert code == 1 and "has no access_token" in err and "Traceback" not in err


async def test_the_client_explains_an_unreachable_server(tmp_path: Path) -> None:
    from tests.helpers import free_port

    code, err = await run_client("--token", "t", f"http://127.0.0.1:{free_port()}/orders")
    assert code == 1 and "cannot reach" in err and "Traceback" not in err
    code, err = await run_client("--token", "t", "file:///etc/passwd")
    assert code == 1 and "not an http(s) URL" in err
    bad_key = tmp_path / "key.pem"
    bad_key.write_text("not a key")
    code, err = await run_client("--key", str(bad_key), "--print-jkt")
    assert code == 1 and "not an unencrypted PEM private key" in err and "Traceback" not in err


async def test_the_client_authenticates_with_a_secret_from_the_environment(
    issuer: DemoIssuer, upstream: EchoUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--client-id sends HTTP Basic; the secret comes from $DPOP_CLIENT_SECRET, never argv."""
    from gateway.tokens import dpop_client

    monkeypatch.setenv(dpop_client.CLIENT_SECRET_ENV, "s3cret:x")
    headers = dpop_client.client_authentication("demo client")
    assert headers == {"Authorization": "Basic ZGVtbytjbGllbnQ6czNjcmV0JTNBeA=="}  # form-encoded halves
    monkeypatch.delenv(dpop_client.CLIENT_SECRET_ENV)
    with pytest.raises(SystemExit, match="DPOP_CLIENT_SECRET"):
        dpop_client.client_authentication("demo client")
