"""Sender-constrained tokens presented as plain bearer tokens.

A token whose claims (a JWT's payload or an RFC 7662 introspection answer) carry ``cnf`` is
bound to a key: ``jkt`` to a DPoP key (RFC 9449 section 6), ``x5t#S256`` to a TLS client
certificate (RFC 8705 section 3). Presented without proof of that key it must be refused
(401 ``invalid_token``, reason ``unproven_binding``), in every mode, never accepted as a bearer
token. A bound token WITH its proof passes (tests at the end; tests/test_sender_constraint.py and
tests/test_mtls.py in depth),
and a ``cnf`` the gateway cannot check (``jwk``, ``kid``, empty, not an object) is still refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.middleware import TOKENGATE_KEY
from gateway.tokens.certificates import thumbprint
from gateway.tokens.dpop import ProofRequest, confirmation, sign_proof
from gateway.tokens.token import fingerprint
from tests.certs import issue, make_ca
from tests.helpers import GatewayFactory, RunningGateway, base_config, bearer, metric, raw_request
from tests.test_middleware import UNUSED_UPSTREAM, orders_app
from tests.test_mtls import pem_urlencoded

# RFC 9449 section 6.1 and RFC 8705 section 3.1 examples, and other RFC 7800 confirmation methods
BINDINGS: list[tuple[str, Any]] = [
    ("dpop jkt", {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
    ("mtls x5t#S256", {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
    ("jwk", {"jwk": {"kty": "EC", "crv": "P-256", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
                     "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}}),
    ("kid", {"kid": "dfd1aa97-6d8d-4575-a0fe-34b96de2bfad"}),
    ("empty", {}),  # bound to nothing known: still not a bearer token
    ("not an object", "jkt"),
    ("jkt not a string", {"jkt": 5}),
]
IDS = [b[0] for b in BINDINGS]


def _assert_unproven(status: int, body: bytes, headers: Any) -> None:
    assert status == 401
    parsed = json.loads(body)
    assert (parsed["error"], parsed["reason"]) == ("invalid_token", "unproven_binding")
    assert headers["WWW-Authenticate"].startswith('Bearer realm="tokengate", error="invalid_token"')


@pytest.mark.parametrize("cnf", [b[1] for b in BINDINGS], ids=IDS)
async def test_bound_jwt_is_refused_by_the_proxy(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream, cnf: Any
) -> None:
    before = metric("gateway_requests_total", route="list-orders", method="GET", status="401",
                    decision="deny", reason="unproven_binding")
    token = issuer.mint(cnf=cnf)
    for _ in range(2):  # the second time from the verified-token cache: the binding is still checked
        response = await raw_request(gw.url, "/orders", headers=bearer(token))
        _assert_unproven(response.status, response.body, response.headers)
    assert upstream.requests == []
    records = (await gw.audit_records())[-2:]
    assert [(r["reason"], r["status"], r["token_fingerprint"]) for r in records] == [
        ("unproven_binding", 401, fingerprint(token)[:32])] * 2
    assert records[-1]["sub"] == "alice"  # the token was valid: who presented it is on record
    assert metric("gateway_requests_total", route="list-orders", method="GET", status="401",
                  decision="deny", reason="unproven_binding") == before + 2


async def test_unbound_tokens_still_pass(gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream) -> None:
    response = await raw_request(gw.url, "/orders", headers=bearer(issuer.mint(cnf_hint="not cnf")))
    assert response.status == 200
    assert len(upstream.requests) == 1


def _introspecting(issuer: DemoIssuer) -> dict[str, Any]:
    return {"issuer": issuer.issuer, "audiences": [issuer.audience],
            "introspection": {"endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway",
                              "client_secret": "gateway-secret", "token_prefix": "demo_"}}


@pytest.mark.parametrize("token_type", [None, "Bearer"])
async def test_bound_introspection_answer_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, token_type: str | None
) -> None:
    """RFC 8705 section 3.2 / RFC 9449 section 8: the introspection answer carries ``cnf``."""
    gw = await make_gateway(issuers=[_introspecting(issuer)])
    for name, cnf in BINDINGS:
        token = issuer.mint_opaque(cnf=cnf)
        if token_type is None:
            del issuer.opaque[token]["token_type"]
        for _ in range(2):  # then from the introspection cache
            response = await raw_request(gw.url, "/orders", headers=bearer(token))
            assert response.status == 401, name
            _assert_unproven(response.status, response.body, response.headers)
    assert upstream.requests == []
    plain = await raw_request(gw.url, "/orders", headers=bearer(issuer.mint_opaque()))
    assert plain.status == 200


async def test_introspected_jwt_with_cnf_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    """``validation: introspection`` for a JWT-shaped token: the answer's cnf counts."""
    gw = await make_gateway(issuers=[{**_introspecting(issuer), "validation": "introspection"}])
    token = issuer.mint()
    cnf = {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}
    issuer.opaque[token] = {"active": True, **issuer.claims(cnf=cnf)}
    response = await raw_request(gw.url, "/orders", headers=bearer(token))
    _assert_unproven(response.status, response.body, response.headers)
    assert upstream.requests == []


async def test_decision_endpoint_refuses_bound_tokens(make_gateway: GatewayFactory, issuer: DemoIssuer) -> None:
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["traefik"])
    url = f"http://127.0.0.1:{gw.port('decision')}"
    for name, cnf in BINDINGS:
        headers = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/orders", **bearer(issuer.mint(cnf=cnf))}
        response = await raw_request(url, "/verify", headers=headers)
        assert response.status == 401, name
        _assert_unproven(response.status, response.body, response.headers)
        assert "X-Auth-Subject" not in response.headers
        record = (await gw.audit_records())[-1]
        assert (record["mode"], record["reason"]) == ("decision", "unproven_binding")


async def test_middleware_refuses_bound_tokens(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    audit_path = tmp_path / "audit.jsonl"
    data = base_config(issuer, UNUSED_UPSTREAM, audit_path)
    client = await aiohttp_client(orders_app(parse_config(yaml.safe_dump(data)), seen))
    for name, cnf in BINDINGS:
        resp = await client.get("/orders", headers=bearer(issuer.mint(cnf=cnf)))
        assert resp.status == 401, name
        assert (await resp.json())["reason"] == "unproven_binding"
    assert seen == []
    await client.app[TOKENGATE_KEY].audit.flush()
    reasons = {json.loads(line)["reason"] for line in audit_path.read_text().splitlines()}
    assert reasons == {"unproven_binding"}


# --- with the proof, a bound token passes -------------------------------------------


async def test_bound_tokens_with_their_proof_pass(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    """The same kinds of token the tests above refuse, now with the DPoP proof / certificate they need."""
    gw = await make_gateway(issuers=[_introspecting(issuer)],
                            trusted_proxies=["127.0.0.1/32"], client_certificates={"header": "ssl-client-cert"})
    key = ec.generate_private_key(ec.SECP256R1())
    for token in (issuer.mint(cnf=confirmation(key)), issuer.mint_opaque(cnf=confirmation(key))):
        proof = sign_proof(key, ProofRequest("GET", f"{gw.url}/orders", access_token=token))
        response = await raw_request(gw.url, "/orders", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert response.status == 200, response.body
    client = issue(make_ca(), "client")
    for token in (issuer.mint(cnf={"x5t#S256": thumbprint(client.der)}),
                  issuer.mint_opaque(cnf={"x5t#S256": thumbprint(client.der)})):
        response = await raw_request(gw.url, "/orders",
                                     headers={"ssl-client-cert": pem_urlencoded(client), **bearer(token)})
        assert response.status == 200, response.body
    assert len(upstream.requests) == 4
