"""Discovery, JWKS caching and refetching, JWT validation, the verified-token cache.

Every token here is signed with a real RSA or EC key and checked by a gateway on 127.0.0.1
against a real issuer serving discovery and JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.demo import DemoIssuer, SigningKey
from gateway.tokens.jwks import discovery_urls
from tests.helpers import AUDIENCE, GatewayFactory, RunningGateway, bearer, free_port, metric


def issuer_entry(issuer: DemoIssuer, **extra: Any) -> dict[str, Any]:
    entry = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"], "leeway": "5s",
             "jwks_min_refresh_interval": "1s"}
    entry.update(extra)
    return entry


async def get_orders(gw: Any, token: str | None, path: str = "/orders") -> tuple[int, dict[str, Any], str]:
    """Status, JSON body and WWW-Authenticate of one GET through the gateway."""
    headers = bearer(token) if token is not None else {}
    async with aiohttp.ClientSession() as session, session.get(gw.url + path, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("WWW-Authenticate", "")


async def reason_of(gw: Any, token: str | None, path: str = "/orders") -> str:
    status, body, _ = await get_orders(gw, token, path)
    return "allowed" if status == 200 else f"{status} {body['reason']}"


def absent(*names: str) -> dict[str, Any]:
    """Claims for ``DemoIssuer.mint`` that leave ``names`` out of the token (it drops claims given as None).

    Typed ``Any``: the claim names are only known at run time, and ``mint``'s own parameters (ttl, key) take no None.
    """
    return dict.fromkeys(names)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A compact JWS signed with HMAC-SHA256 by hand (PyJWT refuses PEM keys as HMAC secrets)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


# --- discovery -----------------------------------------------------------------------------


def test_discovery_urls_follow_oidc_then_rfc8414() -> None:
    assert discovery_urls("https://as.example") == [
        "https://as.example/.well-known/openid-configuration",
        "https://as.example/.well-known/oauth-authorization-server",
    ]
    assert discovery_urls("https://as.example/tenant/a/") == [
        "https://as.example/tenant/a/.well-known/openid-configuration",
        "https://as.example/.well-known/oauth-authorization-server/tenant/a",
    ]


async def test_keys_found_through_openid_discovery(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    assert issuer.calls["discovery"] == 1
    assert issuer.calls["jwks"] == 1
    assert await reason_of(gw, issuer.mint()) == "allowed"


async def test_rfc8414_discovery_when_openid_is_missing(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    issuer.discovery = "oauth"
    gw = await make_gateway()
    assert issuer.calls["discovery"] == 2  # openid-configuration 404, then oauth-authorization-server
    assert await reason_of(gw, issuer.mint()) == "allowed"


async def test_configured_jwks_uri_skips_discovery(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    issuer.discovery = "none"
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_uri=f"{issuer.issuer}/jwks")])
    assert issuer.calls["discovery"] == 0
    assert await reason_of(gw, issuer.mint()) == "allowed"


async def test_metadata_naming_another_issuer_is_not_trusted(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    impostor = DemoIssuer(audience=AUDIENCE, issuer="https://someone-else.example")
    await impostor.start()
    try:
        # the gateway trusts impostor's address as an issuer, but the metadata there names another issuer
        url = f"http://127.0.0.1:{impostor._runner.addresses[0][1]}"  # type: ignore[union-attr]
        gw = await make_gateway(issuers=[{"issuer": url, "audiences": [AUDIENCE]}])
        assert impostor.calls["jwks"] == 0
        async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/readyz") as resp:
            assert resp.status == 503
        status, body, _ = await get_orders(gw, impostor.mint(iss=url))
        assert (status, body["reason"]) == (503, "jwks_unavailable")
    finally:
        await impostor.stop()


# --- signatures and algorithms -------------------------------------------------------------


async def test_rs256_and_es256_tokens_pass(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    rsa_key, ec_key = issuer.keys
    assert (rsa_key.alg, ec_key.alg) == ("RS256", "ES256")
    assert await reason_of(gw, issuer.mint(key=rsa_key)) == "allowed"
    assert await reason_of(gw, issuer.mint(key=ec_key)) == "allowed"


async def test_alg_none_is_refused(gw: RunningGateway, issuer: DemoIssuer) -> None:
    unsigned = jwt.encode(issuer.claims(), "", algorithm="none", headers={"kid": issuer.keys[0].kid})
    assert await reason_of(gw, unsigned) == "401 disallowed_algorithm"
    # the same with "None" and a signature glued on
    header = b64url(json.dumps({"alg": "None", "kid": issuer.keys[0].kid}).encode())
    forged = f"{header}.{b64url(json.dumps(issuer.claims()).encode())}.{b64url(b'x' * 32)}"
    assert await reason_of(gw, forged) == "401 disallowed_algorithm"


@pytest.mark.parametrize("pem_format", [serialization.PublicFormat.SubjectPublicKeyInfo,
                                        serialization.PublicFormat.PKCS1])
async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    gw: RunningGateway, issuer: DemoIssuer, pem_format: serialization.PublicFormat
) -> None:
    key = issuer.keys[0]
    pem = key.private.public_key().public_bytes(serialization.Encoding.PEM, pem_format)
    forged = hand_signed({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}, issuer.claims(), pem)
    assert await reason_of(gw, forged) == "401 disallowed_algorithm"


async def test_algorithm_off_the_allow_list_is_refused(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, algorithms=["ES256"])])
    assert await reason_of(gw, issuer.mint(key=issuer.keys[1])) == "allowed"
    assert await reason_of(gw, issuer.mint(key=issuer.keys[0])) == "401 disallowed_algorithm"


async def test_token_header_cannot_pick_a_key_of_another_type(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    rsa_key, ec_key = issuer.keys
    # signed with the RSA key, but names the EC key's kid
    token = issuer.mint(key=rsa_key, headers={"kid": ec_key.kid})
    assert (await reason_of(gw, token)).startswith("401 ")


async def test_embedded_jwk_header_is_ignored(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    attacker = SigningKey.generate("RS256")
    token = issuer.mint(key=attacker, headers={"jwk": attacker.public_jwk(), "jku": f"{issuer.issuer}/jwks"})
    assert await reason_of(gw, token) == "401 unknown_key"
    token = issuer.mint(key=attacker, headers={"kid": issuer.keys[0].kid, "jwk": attacker.public_jwk()})
    assert await reason_of(gw, token) == "401 bad_signature"


async def test_tampered_payload_fails_the_signature(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    header, _, signature = issuer.mint(scope="profile").split(".")
    payload = b64url(json.dumps(issuer.claims(scope="orders:read")).encode())
    assert await reason_of(gw, f"{header}.{payload}.{signature}") == "401 bad_signature"


async def test_token_without_kid_is_checked_against_the_issuer_keys(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    for key in issuer.keys:
        token = jwt.encode(issuer.claims(), key.private, algorithm=key.alg, headers={"typ": "at+jwt"})
        assert "kid" not in jwt.get_unverified_header(token)
        assert await reason_of(gw, token) == "allowed"
    stranger = SigningKey.generate("RS256")
    token = jwt.encode(issuer.claims(), stranger.private, algorithm="RS256")
    assert await reason_of(gw, token) == "401 bad_signature"


async def test_not_a_jwt_is_invalid(gw: RunningGateway) -> None:
    status, body, challenge = await get_orders(gw, "opaque-token-without-introspection")
    assert (status, body["error"]) == (401, "invalid_token")
    assert 'error="invalid_token"' in challenge


# --- claims --------------------------------------------------------------------------------


async def test_time_claims_with_leeway(gw: RunningGateway, issuer: DemoIssuer) -> None:
    now = int(time.time())
    leeway = 5  # base configuration
    assert await reason_of(gw, issuer.mint(exp=now - 60)) == "401 token_expired"
    assert await reason_of(gw, issuer.mint(exp=now - leeway - 2)) == "401 token_expired"
    assert await reason_of(gw, issuer.mint(exp=now - leeway + 3)) == "allowed"  # within leeway
    assert await reason_of(gw, issuer.mint(nbf=now + 60)) == "401 token_not_yet_valid"
    assert await reason_of(gw, issuer.mint(nbf=now + leeway - 3)) == "allowed"
    assert await reason_of(gw, issuer.mint(iat=now + 3600)) == "401 token_not_yet_valid"
    assert await reason_of(gw, issuer.mint(iat="yesterday")) == "401 invalid_token"


@pytest.mark.parametrize("exp", [None, "tomorrow", "9999999999", True, [9999999999], {"t": 1}])
async def test_exp_is_required_and_numeric(
    gw: RunningGateway, issuer: DemoIssuer, exp: bool | dict[str, Any] | list[Any] | str | None
) -> None:
    token = issuer.mint(exp=exp)  # None leaves exp out
    # PyJWT reads true as 1; a missing exp is named as such (still 401 invalid_token on the wire)
    expected = "401 token_expired" if exp is True else "401 missing_claim" if exp is None else "401 invalid_token"
    assert await reason_of(gw, token) == expected


async def test_float_exp_is_numeric(gw: RunningGateway, issuer: DemoIssuer) -> None:
    assert await reason_of(gw, issuer.mint(exp=time.time() + 120.5)) == "allowed"


@pytest.mark.parametrize("nbf", ["soon", "1"])
async def test_nbf_must_be_numeric(
    gw: RunningGateway, issuer: DemoIssuer, nbf: str
) -> None:
    assert await reason_of(gw, issuer.mint(nbf=nbf)) == "401 invalid_token"


async def test_audience(gw: RunningGateway, issuer: DemoIssuer) -> None:
    assert await reason_of(gw, issuer.mint(aud="https://api.example/other")) == "401 wrong_audience"
    assert await reason_of(gw, issuer.mint(aud=["https://a.example", AUDIENCE])) == "allowed"
    assert await reason_of(gw, issuer.mint(aud=["https://a.example", "https://b.example"])) == "401 wrong_audience"
    assert (await reason_of(gw, issuer.mint(aud=None))).startswith("401 ")  # aud is required


async def test_issuer_must_match_exactly(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    assert await reason_of(gw, issuer.mint(iss=issuer.issuer + "/")) == "401 unknown_issuer"
    assert await reason_of(gw, issuer.mint(iss=issuer.issuer.upper())) == "401 unknown_issuer"
    assert await reason_of(gw, issuer.mint(iss="https://evil.example")) == "401 unknown_issuer"
    assert (await reason_of(gw, issuer.mint(iss=None))).startswith("401 ")


async def test_untrusted_iss_is_never_fetched(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    other = DemoIssuer(audience=AUDIENCE)
    await other.start()
    try:
        assert await reason_of(gw, other.mint()) == "401 unknown_issuer"
        assert other.calls == {"discovery": 0, "jwks": 0, "introspect": 0, "token": 0}
    finally:
        await other.stop()


async def test_require_typ_at_jwt(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, require_typ="at+jwt")])
    assert await reason_of(gw, issuer.mint()) == "allowed"  # typ: at+jwt
    assert await reason_of(gw, issuer.mint(headers={"typ": "application/at+jwt"})) == "allowed"
    assert await reason_of(gw, issuer.mint(headers={"typ": "JWT"})) == "401 wrong_token_type"
    assert await reason_of(gw, issuer.mint(headers={"typ": "id+jwt"})) == "401 wrong_token_type"
    no_typ = jwt.encode(issuer.claims(), issuer.keys[0].private, algorithm="RS256",
                        headers={"kid": issuer.keys[0].kid, "typ": None})
    assert "typ" not in jwt.get_unverified_header(no_typ)
    assert await reason_of(gw, no_typ) == "401 wrong_token_type"


async def test_typ_not_enforced_unless_configured(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    assert await reason_of(gw, issuer.mint(headers={"typ": "JWT"})) == "allowed"


# --- required claims (RFC 9068 section 2.2) -------------------------------------

RFC9068_CLAIMS = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt"])
async def test_at_jwt_requires_every_rfc9068_claim(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, typ: str
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, require_typ=typ)])
    assert await reason_of(gw, issuer.mint()) == "allowed"  # the demo issuer mints all seven
    # without iss the token names no issuer to verify it: unknown_issuer, before any key is used
    expected = {name: "unknown_issuer" if name == "iss" else "missing_claim" for name in RFC9068_CLAIMS}
    for name in RFC9068_CLAIMS:
        async with http.get(f"{gw.url}/orders", headers=bearer(issuer.mint(**absent(name)))) as resp:
            assert resp.status == 401, name
            assert (await resp.json())["reason"] == expected[name], name
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    records = await gw.audit_records()
    assert [r["reason"] for r in records[1:]] == list(expected.values())


@pytest.mark.parametrize(
    "claims", [{"client_id": ""}, {"client_id": 7}, {"client_id": ["demo-client"]}, {"sub": ""}, {"jti": ""}]
)
async def test_at_jwt_required_claims_must_be_usable(
    make_gateway: GatewayFactory, issuer: DemoIssuer, claims: dict[str, Any]
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, require_typ="at+jwt")])
    assert await reason_of(gw, issuer.mint(**claims)) == "401 missing_claim"


async def test_without_at_jwt_only_exp_iss_aud_are_required(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    assert await reason_of(gw, issuer.mint(sub=None, client_id=None, iat=None, jti=None)) == "allowed"
    assert await reason_of(gw, issuer.mint(exp=None)) == "401 missing_claim"
    assert await reason_of(gw, issuer.mint(aud=None)) == "401 missing_claim"


async def test_required_claims_for_any_issuer(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, required_claims=["sid", "sub", "iat"])])
    assert await reason_of(gw, issuer.mint(headers={"typ": "JWT"}, sid="s-1")) == "allowed"
    assert await reason_of(gw, issuer.mint(sid=None)) == "401 missing_claim"
    assert await reason_of(gw, issuer.mint(sid="s-1", sub=None)) == "401 missing_claim"
    assert await reason_of(gw, issuer.mint(sid=["s-1"])) == "401 missing_claim"  # read as a string downstream
    assert await reason_of(gw, issuer.mint(sid="s-1", client_id=None, jti=None)) == "allowed"  # not listed


async def test_a_missing_claim_is_refused_only_after_the_signature(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    stranger = SigningKey(issuer.keys[0].kid, "RS256", SigningKey.generate("RS256").private)
    assert await reason_of(gw, issuer.mint(key=stranger, exp=None)) == "401 bad_signature"


def test_required_claims_config() -> None:
    from gateway.config import ConfigError, parse_config
    from tests.helpers import MINIMAL_CONFIG

    config = parse_config(MINIMAL_CONFIG.replace("audiences: [api]", "audiences: [api]\n    required_claims: [sid]"))
    assert config.issuers[0].required_claims == ["sid"]
    assert config.issuers[0].jwks_refetch_burst == 3
    with pytest.raises(ConfigError, match="required_claims"):
        parse_config(MINIMAL_CONFIG.replace("audiences: [api]", "audiences: [api]\n    required_claims: ['']"))
    with pytest.raises(ConfigError, match="jwks_refetch_burst"):
        parse_config(MINIMAL_CONFIG.replace("audiences: [api]", "audiences: [api]\n    jwks_refetch_burst: -1"))


# --- JWKS lifecycle ------------------------------------------------------------------------


async def test_key_rotation_picks_up_a_new_kid(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_min_refresh_interval="200ms")])
    fetched = issuer.calls["jwks"]
    await asyncio.sleep(0.25)
    new_key = issuer.rotate("RS256")
    assert await reason_of(gw, issuer.mint(key=new_key)) == "allowed"
    assert issuer.calls["jwks"] == fetched + 1
    assert await reason_of(gw, issuer.mint(key=issuer.keys[1])) == "allowed"  # the old key still works


async def test_rotation_to_an_ec_key(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_min_refresh_interval="100ms")])
    await asyncio.sleep(0.15)
    assert await reason_of(gw, issuer.mint(key=issuer.rotate("ES256"))) == "allowed"


async def test_removed_key_stops_working(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_min_refresh_interval="100ms")])
    old = issuer.keys[0]
    assert await reason_of(gw, issuer.mint(key=old)) == "allowed"
    new_key = issuer.rotate("RS256")
    issuer.keys.remove(old)
    await asyncio.sleep(0.15)
    assert await reason_of(gw, issuer.mint(key=new_key)) == "allowed"  # refetch on the unknown kid
    assert await reason_of(gw, issuer.mint(key=old)) == "401 unknown_key"


async def test_unknown_kid_flood_is_bounded(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_min_refresh_interval="30s")])
    before = issuer.calls["jwks"]
    attacker = SigningKey.generate("RS256")
    tokens = [issuer.mint(key=attacker, headers={"kid": uuid.uuid4().hex}) for _ in range(200)]
    semaphore = asyncio.Semaphore(50)

    async with aiohttp.ClientSession() as session:

        async def one(token: str) -> int:
            async with semaphore, session.get(gw.url + "/orders", headers=bearer(token)) as resp:
                return resp.status

        statuses = await asyncio.gather(*(one(t) for t in tokens))
    assert statuses == [401] * 200
    assert 1 <= issuer.calls["jwks"] - before <= 3  # jwks_refetch_burst, then one per 30 s
    assert await reason_of(gw, issuer.mint()) == "allowed"


async def test_unknown_kids_within_the_interval_cost_the_burst_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    # the 20 rounds below all fall in the same (wide) interval: the burst, then no refetch
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_min_refresh_interval="10m", jwks_refetch_burst=2)])
    before = issuer.calls["jwks"]
    for _ in range(20):
        assert await reason_of(gw, issuer.mint(headers={"kid": uuid.uuid4().hex})) == "401 unknown_key"
    assert issuer.calls["jwks"] == before + 2


async def test_no_refetch_for_unknown_kids_with_a_burst_of_zero(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_refetch_burst=0)])
    before = issuer.calls["jwks"]
    assert await reason_of(gw, issuer.mint(key=issuer.rotate("RS256"))) == "401 unknown_key"
    assert issuer.calls["jwks"] == before


async def test_unreachable_issuer_keeps_the_old_keys(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_min_refresh_interval="100ms")])
    errors_before = metric("gateway_jwks_refresh_total", issuer=issuer.issuer, result="error")
    await issuer.stop()
    issuer._runner = None  # stopped for good: the fixture must not stop it twice
    await asyncio.sleep(0.15)
    # an unknown kid makes the gateway try the (dead) issuer ...
    assert await reason_of(gw, issuer.mint(headers={"kid": "rotated-away"})) == "401 unknown_key"
    assert metric("gateway_jwks_refresh_total", issuer=issuer.issuer, result="error") == errors_before + 1
    # ... and fresh tokens signed with the known keys still pass
    assert await reason_of(gw, issuer.mint(key=issuer.keys[0])) == "allowed"
    assert await reason_of(gw, issuer.mint(key=issuer.keys[1])) == "allowed"
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/readyz") as resp:
        assert resp.status == 200


async def test_issuer_down_at_start_fails_closed_then_recovers(
    make_gateway: GatewayFactory
) -> None:
    port = free_port()
    late = DemoIssuer(audience=AUDIENCE, issuer=f"http://127.0.0.1:{port}")
    gw = await make_gateway(issuers=[issuer_entry(late, jwks_min_refresh_interval="100ms")])
    status, body, _ = await get_orders(gw, late.mint())
    assert (status, body["reason"]) == (503, "jwks_unavailable")
    await late.start(port=port)
    try:
        await asyncio.sleep(0.15)
        assert await reason_of(gw, late.mint()) == "allowed"
    finally:
        await late.stop()


async def test_two_issuers_never_share_keys(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    second = DemoIssuer(audience=AUDIENCE)
    await second.start()
    try:
        routes = [
            {"name": "list-orders", "path": "/orders", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"]},
            {"name": "only-first", "path": "/orders/{id}/status", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"], "issuers": [issuer.issuer]},
        ]
        gw = await make_gateway(issuers=[issuer_entry(issuer), issuer_entry(second)], routes=routes)
        assert await reason_of(gw, issuer.mint()) == "allowed"
        assert await reason_of(gw, second.mint()) == "allowed"
        # issuer A's claims signed with B's key (B's kid): A does not know that key
        assert await reason_of(gw, issuer.mint(key=second.keys[0])) == "401 unknown_key"
        assert await reason_of(gw, second.mint(key=issuer.keys[1])) == "401 unknown_key"
        # ... and with A's kid on B's key the signature fails
        borrowed = SigningKey(issuer.keys[0].kid, "RS256", second.keys[0].private)
        assert await reason_of(gw, issuer.mint(key=borrowed)) == "401 bad_signature"
        # a route may accept only some issuers
        assert await reason_of(gw, issuer.mint(), "/orders/1/status") == "allowed"
        assert await reason_of(gw, second.mint(), "/orders/1/status") == "401 unknown_issuer"
    finally:
        await second.stop()


# --- verified-token cache ------------------------------------------------------------------


async def test_hot_token_is_verified_once(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    token = issuer.mint()
    valid_before = metric("gateway_token_validations_total", issuer=issuer.issuer, result="valid")
    hits_before = metric("gateway_token_cache_total", cache="verified_token", result="hit")
    for _ in range(10):
        assert await reason_of(gw, token) == "allowed"
    assert metric("gateway_token_validations_total", issuer=issuer.issuer, result="valid") == valid_before + 1
    assert metric("gateway_token_cache_total", cache="verified_token", result="hit") == hits_before + 9
    assert await reason_of(gw, token, "/orders/1/status") == "allowed"  # the cache holds facts, not decisions
    assert metric("gateway_token_validations_total", issuer=issuer.issuer, result="valid") == valid_before + 1


async def test_cached_token_still_meets_each_routes_scopes(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    token = issuer.mint(scope="orders:read")
    assert await reason_of(gw, token) == "allowed"
    async with aiohttp.ClientSession() as session, session.put(gw.url + "/orders/1", headers=bearer(token)) as resp:
        assert resp.status == 403


async def test_cache_entries_never_outlive_exp(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, leeway=0)])
    now = time.time()
    exp = int(now) + (2 if now % 1 > 0.7 else 1)  # an integer exp at least 0.3 s away
    token = issuer.mint(exp=exp)
    assert await reason_of(gw, token) == "allowed"
    assert await reason_of(gw, token) == "allowed"  # served from the cache
    await asyncio.sleep(exp - time.time() + 0.05)
    assert await reason_of(gw, token) == "401 token_expired"


async def test_cache_is_bounded(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(verified_token_cache_size=3)
    for _ in range(10):
        assert await reason_of(gw, issuer.mint()) == "allowed"
    assert len(gw.pipeline.validator.cache) == 3


async def test_cache_can_be_disabled(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(verified_token_cache_size=0)
    token = issuer.mint()
    before = metric("gateway_token_validations_total", issuer=issuer.issuer, result="valid")
    for _ in range(3):
        assert await reason_of(gw, token) == "allowed"
    assert metric("gateway_token_validations_total", issuer=issuer.issuer, result="valid") == before + 3


async def test_refused_tokens_are_not_cached(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    token = issuer.mint(aud="https://elsewhere.example")
    before = metric("gateway_token_validations_total", issuer=issuer.issuer, result="wrong_audience")
    for _ in range(3):
        assert await reason_of(gw, token) == "401 wrong_audience"
    assert metric("gateway_token_validations_total", issuer=issuer.issuer, result="wrong_audience") == before + 3


async def test_a_withdrawn_key_stops_its_cached_tokens(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway()
    compromised = issuer.keys[0]
    token = issuer.mint(key=compromised)
    other = issuer.mint(key=issuer.keys[1])
    for t in (token, other):
        async with http.get(f"{gw.url}/orders", headers=bearer(t)) as resp:
            assert resp.status == 200
    issuer.keys.remove(compromised)  # the issuer withdraws the key from its JWKS
    await gw.pipeline.validator.keys[issuer.issuer].refresh()
    for _ in range(100):
        if len(gw.pipeline.validator.cache) == 0:
            break
        await asyncio.sleep(0.01)
    async with http.get(f"{gw.url}/orders", headers=bearer(token)) as resp:
        assert resp.status == 401
        assert (await resp.json())["reason"] == "unknown_key"
    async with http.get(f"{gw.url}/orders", headers=bearer(other)) as resp:
        assert resp.status == 200  # tokens of the keys that stay are verified again and pass
