"""DPoP-bound tokens (RFC 9449) through the one decision path: proxy, forward-auth port, middleware.

Everything is real: the demo issuer signs the access tokens (with ``cnf.jkt`` of a key made
here), the proofs are signed with EC/RSA keys made here, the gateway listens on 127.0.0.1, and
the replay cache is a redis-server process shared by two gateways: one in this process and one
started as ``python -m gateway serve``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.binding import nonce_source
from gateway.config import ConfigError, load_config, parse_config
from gateway.decision import Decision
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.reload import Reloader
from gateway.runtime import Gateway
from gateway.server import Server
from gateway.tokens.dpop import (
    ProofRequest,
    access_token_hash,
    confirmation,
    key_thumbprint,
    public_jwk,
    sign_proof,
)
from gateway.workers import shared_secrets
from tests.helpers import (
    AUDIENCE,
    MINIMAL_CONFIG,
    GatewayFactory,
    RunningGateway,
    base_config,
    free_port,
    metric,
    raw_request,
)
from tests.test_middleware import middleware_config, orders_app

REPO = Path(__file__).resolve().parent.parent
DPOP_ROUTE = {"name": "dpop-orders", "path": "/dpop/orders", "methods": ["GET"], "upstream": "orders",
              "scopes": ["orders:read"], "sender_constraint": "dpop"}
NONE_ROUTE = {"name": "plain-orders", "path": "/plain/orders", "methods": ["GET"], "upstream": "orders",
              "scopes": ["orders:read"], "sender_constraint": "none"}


# --- keys, tokens, proofs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def proof(key: Any, url: str, token: str | None, method: str = "GET", **kw: Any) -> str:
    return sign_proof(key, ProofRequest(method=method, url=url, access_token=token, **kw))


def dpop(token: str, proof_value: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof_value}


def bound_token(issuer: DemoIssuer, key: Any, **claims: Any) -> str:
    return issuer.mint(cnf=confirmation(key), **claims)


def capture(gw: RunningGateway) -> list[Decision]:
    """The decisions the gateway records (observed, not replaced: the audit record is still written)."""
    seen: list[Decision] = []
    original = gw.gateway.record

    def record(exchange: Any, decision: Decision) -> None:
        seen.append(decision)
        original(exchange, decision)

    gw.gateway.record = record  # type: ignore[method-assign]
    return seen


def challenge_lines(headers: Any) -> list[str]:
    return list(headers.getall("WWW-Authenticate", []))


def body(response: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response.body)
    return parsed


def with_issuer(issuer: DemoIssuer, **settings: Any) -> list[dict[str, Any]]:
    return [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"], "leeway": "5s",
             **settings}]


async def dpop_gateway(make_gateway: GatewayFactory, issuer: DemoIssuer, **overrides: Any) -> RunningGateway:
    routes = base_config(issuer, EchoUpstream(), Path("unused"))["routes"]
    return await make_gateway(routes=[*routes, DPOP_ROUTE, NONE_ROUTE], **overrides)


# --- the proxy ------------------------------------------------------------------------------


async def test_a_dpop_bound_token_with_its_proof_passes_the_proxy(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    seen = capture(gw)
    before = metric("gateway_dpop_proofs_total", result="valid")
    token = bound_token(issuer, key)
    for path in ("/orders", "/dpop/orders", "/plain/orders"):
        url = f"{gw.url}{path}"
        response = await raw_request(gw.url, path, headers=dpop(token, proof(key, url, token)))
        assert response.status == 200, response.body
    assert [r["path"] for r in upstream.requests] == ["/orders", "/dpop/orders", "/plain/orders"]
    assert upstream.requests[0]["headers"]["X-Auth-Subject"] == "alice"
    assert [(d.binding, d.key_thumbprint, d.scheme) for d in seen] == [("dpop", key_thumbprint(key), "dpop")] * 3
    assert metric("gateway_dpop_proofs_total", result="valid") == before + 3


async def test_a_replayed_proof_is_refused(make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = bound_token(issuer, key)
    headers = dpop(token, proof(key, f"{gw.url}/orders", token))
    assert (await raw_request(gw.url, "/orders", headers=headers)).status == 200
    replayed = await raw_request(gw.url, "/orders", headers=headers)
    assert replayed.status == 401
    assert body(replayed)["reason"] == "dpop_replayed"
    bearer, dpop_challenge = challenge_lines(replayed.headers)
    assert bearer == 'Bearer realm="tokengate"'
    assert dpop_challenge.startswith('DPoP realm="tokengate", error="invalid_dpop_proof"')
    assert dpop_challenge.endswith('algs="ES256 EdDSA PS256 RS256"')


async def test_a_proof_for_another_access_token_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, key: Any
) -> None:
    """``ath`` binds the proof to the token: a proof made for one token does not carry another."""
    gw = await dpop_gateway(make_gateway, issuer)
    token, other = bound_token(issuer, key), bound_token(issuer, key)
    response = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, f"{gw.url}/orders", other)))
    assert response.status == 401
    assert body(response)["error_description"] == "the DPoP proof ath does not match the access token"
    assert upstream.requests == []


async def test_a_proof_carrying_a_private_key_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = bound_token(issuer, key)
    numbers = key.private_numbers()
    private_jwk = {**public_jwk(key), "d": base64.urlsafe_b64encode(numbers.private_value.to_bytes(32, "big"))
                   .rstrip(b"=").decode()}
    claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": f"{gw.url}/orders", "iat": int(time.time()),
              "ath": access_token_hash(token)}
    value = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": private_jwk})
    response = await raw_request(gw.url, "/orders", headers=dpop(token, value))
    assert response.status == 401
    assert body(response) | {"request_id": ""} == {
        "error": "invalid_dpop_proof", "reason": "invalid_dpop_proof", "request_id": "",
        "error_description": "the DPoP proof jwk contains private key material",
    }


@pytest.mark.parametrize("signature", ["", "AAAA"])
async def test_an_unsigned_alg_none_proof_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any, signature: str
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = bound_token(issuer, key)

    def segment(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    header = {"typ": "dpop+jwt", "alg": "none", "jwk": public_jwk(key)}
    claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": f"{gw.url}/orders", "iat": int(time.time())}
    response = await raw_request(gw.url, "/orders", headers=dpop(token, f"{segment(header)}.{segment(claims)}."
                                                                 f"{signature}"))
    assert response.status == 401
    assert body(response)["reason"] == "invalid_dpop_proof"


async def test_a_dpop_bound_token_sent_as_bearer_is_unproven(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = bound_token(issuer, key)
    # even with a valid proof beside it: RFC 9449 section 7.1 wants the DPoP scheme for a DPoP-bound token
    headers = {"Authorization": f"Bearer {token}", "DPoP": proof(key, f"{gw.url}/orders", token)}
    for path in ("/orders", "/plain/orders"):  # sender_constraint none does not turn it into a bearer token
        response = await raw_request(gw.url, path, headers=headers)
        assert response.status == 401
        assert body(response)["reason"] == "unproven_binding"
    assert upstream.requests == []


async def test_a_token_bound_to_another_key_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any, other_key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    seen = capture(gw)
    before = metric("gateway_dpop_proofs_total", result="dpop_key_mismatch")
    token = bound_token(issuer, key)
    response = await raw_request(gw.url, "/orders", headers=dpop(token, proof(other_key, f"{gw.url}/orders", token)))
    assert response.status == 401
    assert (body(response)["error"], body(response)["reason"]) == ("invalid_token", "dpop_key_mismatch")
    assert challenge_lines(response.headers)[1].startswith('DPoP realm="tokengate", error="invalid_token"')
    assert (seen[-1].binding, seen[-1].key_thumbprint) == ("none", key_thumbprint(other_key))
    assert metric("gateway_dpop_proofs_total", result="dpop_key_mismatch") == before + 1


async def test_a_plain_token_as_dpop_passes_only_where_unbound_tokens_do(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    seen = capture(gw)
    token = issuer.mint()
    allowed = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, f"{gw.url}/orders", token)))
    assert allowed.status == 200
    assert (seen[-1].binding, seen[-1].key_thumbprint) == ("none", key_thumbprint(key))
    refused = await raw_request(gw.url, "/dpop/orders", headers=dpop(token, proof(key, f"{gw.url}/dpop/orders", token)))
    assert refused.status == 401
    assert body(refused)["reason"] == "sender_constraint_required"
    # a DPoP-only route offers the DPoP scheme alone, and the error goes on it
    (only,) = challenge_lines(refused.headers)
    assert only.startswith('DPoP realm="tokengate", error="invalid_token"')
    bearer = await raw_request(gw.url, "/dpop/orders", headers={"Authorization": f"Bearer {token}"})
    assert body(bearer)["reason"] == "sender_constraint_required"
    # without any token: the challenges say which schemes each route takes
    assert challenge_lines((await raw_request(gw.url, "/dpop/orders")).headers) == [
        'DPoP realm="tokengate", algs="ES256 EdDSA PS256 RS256"']
    assert challenge_lines((await raw_request(gw.url, "/plain/orders")).headers) == ['Bearer realm="tokengate"']
    assert len(challenge_lines((await raw_request(gw.url, "/orders")).headers)) == 2


async def test_a_plain_token_sent_as_dpop_still_needs_a_valid_proof(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = issuer.mint()
    missing = await raw_request(gw.url, "/orders", headers={"Authorization": f"DPoP {token}"})
    assert (missing.status, body(missing)["error_description"]) == (401, "exactly one DPoP header is required")
    value = proof(key, f"{gw.url}/orders", token)
    two = await raw_request(gw.url, "/orders", headers={"Authorization": f"DPoP {token}"},
                            extra_lines=[f"DPoP: {value}", f"DPoP: {value}"])
    assert body(two)["reason"] == "invalid_dpop_proof"


@pytest.mark.parametrize(
    ("value", "reason"),
    [("DPoP a b", "malformed_authorization"), ("DPoP a,b", "malformed_authorization"),
     ('DPoP a"', "malformed_authorization"), ("DPoP", "missing_token"), ("dpop\tabc", "missing_token")],
)
async def test_malformed_dpop_authorization(
    make_gateway: GatewayFactory, issuer: DemoIssuer, value: str, reason: str
) -> None:
    """The token68 syntax of Bearer (RFC 9449 section 7.1); a bare or tab-separated scheme carries no token."""
    gw = await dpop_gateway(make_gateway, issuer)
    response = await raw_request(gw.url, "/orders", headers={"Authorization": value})
    assert (response.status, body(response)["reason"]) == (400 if reason.startswith("malformed") else 401, reason)


async def test_a_dpop_token_and_a_query_token_together_are_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = bound_token(issuer, key)
    response = await raw_request(gw.url, f"/orders?access_token={token}",
                                 headers=dpop(token, proof(key, f"{gw.url}/orders", token)))
    assert body(response)["reason"] == "malformed_authorization"


async def test_the_dpop_scheme_is_case_insensitive(make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = bound_token(issuer, key)
    headers = {"Authorization": f"dpop {token}", "DPoP": proof(key, f"{gw.url}/orders", token)}
    assert (await raw_request(gw.url, "/orders", headers=headers)).status == 200


async def test_a_proof_for_another_method_or_url_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer)
    token = bound_token(issuer, key)
    post = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, f"{gw.url}/orders", token, "POST")))
    assert body(post)["error_description"] == "the DPoP proof htm does not match the request method"
    other = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, "http://evil.example/orders", token)))
    assert body(other)["error_description"] == "the DPoP proof htu does not match the request URI"
    # the query is not part of htu (RFC 9449 section 4.3): a proof for /orders serves /orders?page=2
    query = await raw_request(gw.url, "/orders?page=2", headers=dpop(token, proof(key, f"{gw.url}/orders", token)))
    assert query.status == 200


async def test_the_scheme_and_host_of_htu_come_from_a_trusted_proxy_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    """Behind a TLS-terminating proxy the client addressed https://api.example: believed from it alone."""
    token = bound_token(issuer, key)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example"}
    untrusted = await dpop_gateway(make_gateway, issuer)
    headers = {**dpop(token, proof(key, "https://api.example/orders", token)), **forwarded}
    refused = await raw_request(untrusted.url, "/orders", headers=headers)
    assert body(refused)["error_description"] == "the DPoP proof htu does not match the request URI"
    trusted = await dpop_gateway(make_gateway, issuer, trusted_proxies=["127.0.0.1/32"])
    headers = {**dpop(token, proof(key, "https://api.example/orders", token)), **forwarded}
    assert (await raw_request(trusted.url, "/orders", headers=headers)).status == 200


async def test_the_nonce_flow(make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any) -> None:
    """RFC 9449 section 8: use_dpop_nonce with a DPoP-Nonce, then the same request with it passes."""
    gw = await dpop_gateway(make_gateway, issuer, issuers=with_issuer(issuer, dpop={"nonce": True}))
    token = bound_token(issuer, key)
    url = f"{gw.url}/orders"
    first = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, url, token)))
    assert first.status == 401
    assert body(first)["reason"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    assert 'error="use_dpop_nonce"' in challenge_lines(first.headers)[1]
    second = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, url, token, nonce=nonce)))
    assert second.status == 200
    assert second.headers["DPoP-Nonce"]  # the current nonce rides on allowed responses too
    stale = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, url, token, nonce="made-up")))
    assert body(stale)["reason"] == "use_dpop_nonce" and stale.headers["DPoP-Nonce"]
    # a request without a token is told the nonce up front
    assert (await raw_request(gw.url, "/orders")).headers["DPoP-Nonce"]


async def test_an_unreachable_replay_cache_fails_closed(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer, dpop={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                                         "timeout": "1s"})
    token = bound_token(issuer, key)
    response = await raw_request(gw.url, "/orders", headers=dpop(token, proof(key, f"{gw.url}/orders", token)))
    assert response.status == 503
    assert (body(response)["reason"], response.headers["Retry-After"]) == ("dpop_replay_unavailable", "5")
    assert "WWW-Authenticate" not in response.headers
    assert upstream.requests == []
    # a plain bearer token does not need the cache
    assert (await raw_request(gw.url, "/orders", headers={"Authorization": f"Bearer {issuer.mint()}"})).status == 200


# --- replay across gateways sharing one Redis ----------------------------------------------



async def test_two_gateways_on_the_revocation_redis_refuse_each_others_proofs(
    make_gateway: GatewayFactory, issuer: DemoIssuer, redis_url: str, key: Any
) -> None:
    """The replay cache lives in the revocation list's Redis unless dpop.redis_url says otherwise."""
    revocation = {"redis_url": redis_url, "key_prefix": f"t{uuid.uuid4().hex[:8]}:revoked:"}
    first = await dpop_gateway(make_gateway, issuer, revocation=revocation)
    second = await dpop_gateway(make_gateway, issuer, revocation=revocation)
    token = bound_token(issuer, key)
    value = proof(key, "http://api.example/orders", token)
    headers = {**dpop(token, value)}
    assert (await raw_request(first.url, "/orders", headers=headers, host_header="api.example")).status == 200
    replayed = await raw_request(second.url, "/orders", headers=headers, host_header="api.example")
    assert (replayed.status, body(replayed)["reason"]) == (401, "dpop_replayed")


@pytest.fixture
async def child_gateway(
    issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A second gateway process, ``python -m gateway serve``, on the same Redis."""
    port, admin = free_port(), free_port()
    data = base_config(issuer, upstream, tmp_path / "child-audit.jsonl")
    data.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}", watch_config=False,
                audit={"sink": "none"}, log_level="warning",
                dpop={"redis_url": redis_url, "key_prefix": f"t{uuid.uuid4().hex[:8]}:dpop:"})
    path = tmp_path / "child.yaml"
    path.write_text(yaml.safe_dump(data))
    child = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    try:
        await _ready(f"http://127.0.0.1:{admin}/readyz", child)
        yield f"http://127.0.0.1:{port}", data
    finally:
        child.terminate()
        await asyncio.to_thread(child.wait, 30)


async def _ready(url: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the child gateway did not become ready")


async def test_a_proof_used_at_another_gateway_process_is_refused_here(
    make_gateway: GatewayFactory, issuer: DemoIssuer, child_gateway: tuple[str, dict[str, Any]], key: Any
) -> None:
    child_url, child_config = child_gateway
    here = await dpop_gateway(make_gateway, issuer, dpop=child_config["dpop"])
    token = bound_token(issuer, key)
    for first, second in ((child_url, here.url), (here.url, child_url)):
        headers = dpop(token, proof(key, "http://api.example/orders", token))
        assert (await raw_request(first, "/orders", headers=headers, host_header="api.example")).status == 200
        replayed = await raw_request(second, "/orders", headers=headers, host_header="api.example")
        assert (replayed.status, body(replayed)["reason"]) == (401, "dpop_replayed"), (first, second)


# --- the forward-auth decision port ---------------------------------------------------------


async def test_the_decision_port_checks_htu_against_the_original_request(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer, decision_listen="127.0.0.1:0", decision_sources=["nginx"])
    url = f"http://127.0.0.1:{gw.port('decision')}"
    token = bound_token(issuer, key)
    original = {"X-Original-URL": "https://api.example/orders?page=1", "X-Original-Method": "GET"}
    good = await raw_request(url, "/auth", headers={
        **original, **dpop(token, proof(key, "https://api.example/orders", token))})
    assert good.status == 200
    assert good.headers["X-Auth-Subject"] == "alice"
    wrong = await raw_request(url, "/auth", headers={
        **original, **dpop(token, proof(key, "https://api.example/orders/1", token))})
    assert wrong.status == 401
    assert body(wrong)["error_description"] == "the DPoP proof htu does not match the request URI"
    assert "X-Auth-Subject" not in wrong.headers
    # the check request's own URL is not the original one
    own = await raw_request(url, "/auth", headers={**original, **dpop(token, proof(key, f"{url}/auth", token))})
    assert body(own)["reason"] == "invalid_dpop_proof"
    # X-Forwarded-Proto (a TLS-terminating balancer in front of the ingress) names the scheme the client used
    forwarded = {"X-Original-URL": "http://api.example/orders", "X-Original-Method": "GET",
                 "X-Forwarded-Proto": "https"}
    behind_lb = await raw_request(url, "/auth", headers={
        **forwarded, **dpop(token, proof(key, "https://api.example/orders", token))})
    assert behind_lb.status == 200


async def test_the_decision_port_passes_the_nonce_to_the_ingress(
    make_gateway: GatewayFactory, issuer: DemoIssuer, key: Any
) -> None:
    gw = await dpop_gateway(make_gateway, issuer, decision_listen="127.0.0.1:0", decision_sources=["traefik"],
                            issuers=with_issuer(issuer, dpop={"nonce": True}))
    url = f"http://127.0.0.1:{gw.port('decision')}"
    token = bound_token(issuer, key)
    original = {"X-Forwarded-Uri": "/orders", "X-Forwarded-Method": "GET", "X-Forwarded-Host": "api.example",
                "X-Forwarded-Proto": "https"}
    first = await raw_request(url, "/verify", headers={**original, **dpop(
        token, proof(key, "https://api.example/orders", token))})
    assert body(first)["reason"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    second = await raw_request(url, "/verify", headers={**original, **dpop(
        token, proof(key, "https://api.example/orders", token, nonce=nonce))})
    assert second.status == 200 and second.headers["DPoP-Nonce"]


# --- the middleware -------------------------------------------------------------------------


async def test_the_middleware_enforces_dpop_alike(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path,
                                                  key: Any) -> None:
    seen: list[dict[str, Any]] = []
    config = middleware_config(issuer, tmp_path / "audit.jsonl", issuers=with_issuer(issuer, dpop={"nonce": True}))
    client = await aiohttp_client(orders_app(config, seen))
    token = bound_token(issuer, key)
    url = str(client.make_url("/orders"))
    first = await client.get("/orders", headers=dpop(token, proof(key, url, token)))
    assert (first.status, (await first.json())["reason"]) == (401, "use_dpop_nonce")
    headers = dpop(token, proof(key, url, token, nonce=first.headers["DPoP-Nonce"]))
    allowed = await client.get("/orders", headers=headers)
    assert allowed.status == 200 and allowed.headers["DPoP-Nonce"]
    replayed = await client.get("/orders", headers=headers)
    assert (await replayed.json())["reason"] == "dpop_replayed"
    bearer = await client.get("/orders", headers={"Authorization": f"Bearer {token}"})
    assert (await bearer.json())["reason"] == "unproven_binding"
    assert [s["sub"] for s in seen] == ["alice"]


# --- configuration ---------------------------------------------------------------------------


def _config_problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return "\n".join(caught.value.problems)


def test_sender_constraint_and_dpop_keys_are_validated() -> None:
    def issuer_with(line: str) -> str:
        return MINIMAL_CONFIG.replace("    audiences: [api]\n", f"    audiences: [api]\n    {line}\n")

    bad_constraint = issuer_with("sender_constraint: always")
    assert ("gw.yaml:4: issuers[0].sender_constraint: must be one of none, optional, dpop, mtls, any, not the text "
            "'always'") in _config_problem(bad_constraint)
    bad_alg = issuer_with("dpop: {algorithms: [HS256]}")
    assert "gw.yaml:4: issuers[0].dpop.algorithms[0]" in _config_problem(bad_alg)
    route = MINIMAL_CONFIG + "    sender_constraint: dpop-ish\n"
    assert "routes[0].sender_constraint" in _config_problem(route)
    redis = MINIMAL_CONFIG + "dpop:\n  redis_url: http://redis\n"
    assert "gw.yaml:12: dpop.redis_url: 'http://redis' is not a redis://" in _config_problem(redis)
    assert parse_config(MINIMAL_CONFIG + "dpop:\n  redis_url: none\n").dpop.redis_url == "none"


def test_a_short_nonce_secret_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORT_SECRET", "too-short")
    text = MINIMAL_CONFIG + "dpop:\n  nonce_secret_env: SHORT_SECRET\n"
    assert "gw.yaml:12: dpop.nonce_secret_env: the secret in SHORT_SECRET must be at least 16 bytes" in (
        _config_problem(text))


async def test_issuer_dpop_settings_follow_a_reload_and_the_dpop_section_waits_for_a_restart(
    issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    data = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    server = Server(Gateway(load_config(path), str(path)))
    await server.start()
    url = f"http://127.0.0.1:{server.ports['proxy']}"
    token = bound_token(issuer, key)
    try:
        first = await raw_request(url, "/orders", headers=dpop(token, proof(key, f"{url}/orders", token)))
        assert first.status == 200
        data["issuers"][0]["dpop"] = {"nonce": True}
        data["dpop"] = {"max_entries": 10}
        path.write_text(yaml.safe_dump(data))
        with caplog.at_level(logging.WARNING):
            assert await Reloader(server.gateway).reload("test")
        assert "changed keys take effect only after a restart: dpop" in caplog.text
        response = await raw_request(url, "/orders", headers=dpop(token, proof(key, f"{url}/orders", token)))
        assert body(response)["reason"] == "use_dpop_nonce"
        assert server.gateway.config.dpop.max_entries == 100_000  # the running replay cache stays
    finally:
        await server.stop()


def test_workers_of_one_gateway_share_a_nonce_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the operator's secret each process would issue nonces the other workers refuse."""
    monkeypatch.delenv("GATEWAY_DPOP_NONCE_SECRET", raising=False)
    config = parse_config(MINIMAL_CONFIG)
    drawn = shared_secrets(config)
    assert list(drawn) == ["GATEWAY_DPOP_NONCE_SECRET"] and len(drawn["GATEWAY_DPOP_NONCE_SECRET"]) >= 32
    monkeypatch.setenv("GATEWAY_DPOP_NONCE_SECRET", "an operator's secret of enough length")
    assert shared_secrets(config) == {}
    monkeypatch.setenv("GATEWAY_DPOP_NONCE_SECRET", drawn["GATEWAY_DPOP_NONCE_SECRET"])
    first, second = nonce_source(config.dpop), nonce_source(config.dpop)
    assert second.accepts(first.current())
