"""One token, one revocation identity.

An ECDSA signature stays valid when ``s`` is replaced by ``n - s``, and a base64url
signature segment stays decodable with ``=`` padding appended: each gives another token
string that verifies just as well (a twin). The token's identity, its fingerprint, is the
SHA-256 of the signing input ``header.payload``, so every twin of a revoked token is revoked
through every path (the in-memory store, the admin JSON endpoint, RFC 7009 intake on the
admin port, ``gateway revoke --token``, ``gateway incident --revoke``) and audit search by
fingerprint finds every twin. Caches of verified tokens are keyed by the exact bytes, so a
forged signature over the header and payload of a cached token is still verified, and refused.

Everything runs against real servers on 127.0.0.1 with real EC and RSA keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main as cli_main
from gateway.demo import DemoIssuer, EchoUpstream, SigningKey
from gateway.forensics.incident import Target, collect
from gateway.forensics.query import Query, select
from gateway.forensics.revoke import apply_revocation, plan_revocation
from gateway.revocation.api import factory_for
from gateway.tokens.token import cache_key, fingerprint, signing_input
from tests.helpers import AUDIENCE, GatewayFactory, base_config, bearer, metric

# the group orders of P-256 and P-384 (SEC 2, FIPS 186-4 D.1.2)
ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
}
ALGORITHMS = ["RS256", "ES256", "ES384"]


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ecdsa_twin(token: str, alg: str) -> str:
    """The same signed token with its ECDSA signature (r, s) re-encoded as (r, n - s)."""
    head, payload, signature = token.split(".")
    raw = b64decode(signature)
    half = len(raw) // 2
    s = int.from_bytes(raw[half:], "big")
    return f"{head}.{payload}.{b64encode(raw[:half] + (ORDERS[alg] - s).to_bytes(half, 'big'))}"


def padded_twin(token: str) -> str:
    """The same token with base64 padding after its signature segment (which PyJWT decodes alike)."""
    missing = -len(token.rsplit(".", 1)[1]) % 4
    assert missing, "this signature length needs no padding"
    return token + "=" * missing


def public_key(key: SigningKey) -> Any:
    return key.private.public_key()


@pytest.fixture
def ec_issuer(issuer: DemoIssuer) -> DemoIssuer:
    """The demo issuer, publishing an ES384 key beside its RS256 and ES256 ones."""
    issuer.keys.append(SigningKey.generate("ES384"))
    return issuer


def key_of(issuer: DemoIssuer, alg: str) -> SigningKey:
    return next(k for k in issuer.keys if k.alg == alg)


def issuer_entries(issuer: DemoIssuer, **extra: Any) -> list[dict[str, Any]]:
    entry = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "algorithms": ALGORITHMS, "leeway": "5s",
             "jwks_min_refresh_interval": "1s", **extra}
    return [entry]


async def status(http: aiohttp.ClientSession, gw: Any, token: str) -> tuple[int, str]:
    async with http.get(f"{gw.url}/orders", headers=bearer(token)) as resp:
        body = await resp.json(content_type=None)
        return resp.status, "allowed" if resp.status == 200 else body["reason"]


@pytest.fixture
def admin_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "identity-admin-" + uuid.uuid4().hex
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", secret)
    return secret


# --- the fingerprint -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
def test_an_ecdsa_twin_is_another_string_that_verifies_with_the_same_identity(ec_issuer: DemoIssuer, alg: str) -> None:
    key = key_of(ec_issuer, alg)
    token = ec_issuer.mint(key=key)
    twin = ecdsa_twin(token, alg)
    assert twin != token
    assert jwt.decode(twin, public_key(key), algorithms=[alg], audience=AUDIENCE) == jwt.decode(
        token, public_key(key), algorithms=[alg], audience=AUDIENCE)
    assert fingerprint(twin) == fingerprint(token)
    assert fingerprint(token) == hashlib.sha256(token.rsplit(".", 1)[0].encode()).hexdigest()
    assert cache_key(twin) != cache_key(token)
    assert cache_key(token) == hashlib.sha256(token.encode()).hexdigest()


def test_a_padded_twin_has_the_same_identity(issuer: DemoIssuer) -> None:
    token = issuer.mint(key=key_of(issuer, "RS256"))
    assert fingerprint(padded_twin(token)) == fingerprint(token)
    assert cache_key(padded_twin(token)) != cache_key(token)


@pytest.mark.parametrize(
    "opaque",
    [
        "demo_abc.def.ghi",  # two dots, but no JSON header: one opaque token
        "e30x.payload.sig",  # not base64 of anything decodable as JSON
        b64encode(b"[1, 2]") + ".payload.sig",  # JSON, but not an object
        b64encode(b'"alg"') + ".payload.sig",
        "\u00e9.payload.sig",  # not ASCII
        "a.b",
        "a.b.c.d.e",  # JWE-shaped: the whole token
        "",
        "..",
    ],
)
def test_anything_but_a_jws_is_fingerprinted_whole(opaque: str) -> None:
    assert signing_input(opaque) is None
    assert fingerprint(opaque) == hashlib.sha256(opaque.encode()).hexdigest() == cache_key(opaque)


def test_opaque_tokens_sharing_two_segments_keep_apart() -> None:
    assert fingerprint("ory_at_x.y.one") != fingerprint("ory_at_x.y.two")
    assert fingerprint("e30.p.one") == fingerprint("e30.p.two")  # {} is a JSON object: a JWS header


# --- through the gateway ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
async def test_twins_pass_alike_and_are_audited_under_one_fingerprint(
    make_gateway: GatewayFactory, ec_issuer: DemoIssuer, http: aiohttp.ClientSession, alg: str
) -> None:
    gw = await make_gateway(issuers=issuer_entries(ec_issuer))
    token = ec_issuer.mint(key=key_of(ec_issuer, alg), jti=None)
    twin = ecdsa_twin(token, alg)
    assert await status(http, gw, token) == (200, "allowed")
    assert await status(http, gw, twin) == (200, "allowed")
    records = await gw.audit_records()
    assert [r["token_fingerprint"] for r in records] == [fingerprint(token)[:32]] * 2
    # audit search by either string, or by the printed fingerprint, finds both calls
    for query in (Query.build(token=twin), Query.build(token=token), Query(fingerprint=fingerprint(twin))):
        assert len(list(select([str(gw.audit_path)], query))) == 2


async def _revoke_in_memory(gw: Any, http: aiohttp.ClientSession, raw: str, _: Path) -> None:
    entry = factory_for(gw.gateway.config).token(raw, issuer=gw.gateway.config.issuers[0].issuer)
    await gw.gateway.revocation.revoke(entry)


async def _revoke_admin_json(gw: Any, http: aiohttp.ClientSession, raw: str, _: Path) -> None:
    body = {"token": raw, "issuer": gw.gateway.config.issuers[0].issuer}
    headers = bearer(os.environ["GATEWAY_ADMIN_SECRET"])
    async with http.post(f"{gw.admin_url}/revocation/entries", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["revoked"]["value"] == fingerprint(raw)


async def _revoke_rfc7009(gw: Any, http: aiohttp.ClientSession, raw: str, _: Path) -> None:
    headers = bearer(os.environ["GATEWAY_ADMIN_SECRET"])
    async with http.post(f"{gw.admin_url}/revocation/revoke", data={"token": raw}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


async def _revoke_cli(gw: Any, http: aiohttp.ClientSession, raw: str, config: Path) -> None:
    args = ["revoke", "--config", str(config), "--token", "-", "--admin-url", gw.admin_url]
    # the command runs its own event loop: off this one, in a thread
    result = await asyncio.to_thread(CliRunner().invoke, cli_main, args, input=raw + "\n")
    assert result.exit_code == 0, result.output
    assert raw not in result.output


async def _revoke_incident(gw: Any, http: aiohttp.ClientSession, raw: str, _: Path) -> None:
    """``gateway incident --token T --revoke`` for a token without jti: by its fingerprint."""
    await gw.gateway.audit.flush()
    incident = collect([str(gw.audit_path)], Target.from_options(token=raw))
    assert incident.calls
    entries = plan_revocation(incident, gw.gateway.config, "twin test")
    assert [e.value for e in entries] == [fingerprint(raw)[:32]]
    await apply_revocation(gw.gateway.revocation, entries)


REVOCATION_PATHS = {
    "memory-store": _revoke_in_memory,
    "admin-json": _revoke_admin_json,
    "rfc7009": _revoke_rfc7009,
    "cli-token": _revoke_cli,
    "incident": _revoke_incident,
}


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
@pytest.mark.parametrize("path", sorted(REVOCATION_PATHS))
@pytest.mark.parametrize("revoked", ["original", "twin"])
async def test_revoking_one_encoding_revokes_its_twin(
    make_gateway: GatewayFactory, ec_issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession,
    admin_secret: str,
    tmp_path: Path, alg: str, path: str, revoked: str,
) -> None:
    entries = issuer_entries(ec_issuer)
    gw = await make_gateway(issuers=entries)
    responder_config = tmp_path / "responder.yaml"  # what a responder's `gateway revoke` reads
    responder_config.write_text(yaml.safe_dump(
        {**base_config(ec_issuer, upstream, tmp_path / "cli-audit.jsonl"), "issuers": entries}))
    token = ec_issuer.mint(key=key_of(ec_issuer, alg), jti=None, sid=None)  # only the fingerprint names it
    twin = ecdsa_twin(token, alg)
    assert await status(http, gw, token) == (200, "allowed")  # cached, and in the audit trail

    await REVOCATION_PATHS[path](gw, http, token if revoked == "original" else twin, responder_config)

    assert await status(http, gw, twin) == (401, "revoked_token")
    assert await status(http, gw, token) == (401, "revoked_token")
    assert await status(http, gw, padded_twin(twin) if len(twin.rsplit(".", 1)[1]) % 4 else twin) == (
        401, "revoked_token")
    assert await status(http, gw, ec_issuer.mint(key=key_of(ec_issuer, alg))) == (200, "allowed")  # only that one


async def test_a_revocation_evicts_the_cached_twin(
    make_gateway: GatewayFactory, ec_issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=issuer_entries(ec_issuer))
    cache = gw.pipeline.validator.cache
    token = ec_issuer.mint(key=key_of(ec_issuer, "ES256"))
    twin = ecdsa_twin(token, "ES256")
    assert await status(http, gw, twin) == (200, "allowed")
    assert cache.get(cache_key(twin)) is not None
    await _revoke_in_memory(gw, http, token, Path())
    assert cache.get(cache_key(twin)) is None  # found by its fingerprint, evicted at once


# --- the verified-token cache answers for the exact bytes only --------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_a_forged_signature_over_a_cached_token_is_refused(
    make_gateway: GatewayFactory, ec_issuer: DemoIssuer, http: aiohttp.ClientSession, alg: str
) -> None:
    gw = await make_gateway(issuers=issuer_entries(ec_issuer))
    token = ec_issuer.mint(key=key_of(ec_issuer, alg))
    assert await status(http, gw, token) == (200, "allowed")
    assert await status(http, gw, token) == (200, "allowed")  # served from the verified-token cache
    head, payload, signature = token.split(".")
    length = len(b64decode(signature))
    flipped = bytearray(b64decode(signature))
    flipped[length // 3] ^= 0x01
    forgeries = [
        f"{head}.{payload}.{b64encode(os.urandom(length))}",
        f"{head}.{payload}.{b64encode(bytes(flipped))}",
        f"{head}.{payload}.{b64encode(b64decode(ec_issuer.mint(key=key_of(ec_issuer, alg)).split('.')[2]))}",
    ]
    before = metric("gateway_token_validations_total", issuer=ec_issuer.issuer, result="bad_signature")
    for forged in forgeries:
        assert fingerprint(forged) == fingerprint(token)  # the same identity ...
        assert await status(http, gw, forged) == (401, "bad_signature")  # ... but verified on its own
    assert metric("gateway_token_validations_total", issuer=ec_issuer.issuer, result="bad_signature") == before + 3
    assert await status(http, gw, token) == (200, "allowed")


async def test_a_twin_is_verified_on_its_own(
    make_gateway: GatewayFactory, ec_issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=issuer_entries(ec_issuer))
    token = ec_issuer.mint(key=key_of(ec_issuer, "ES256"))
    before = metric("gateway_token_validations_total", issuer=ec_issuer.issuer, result="valid")
    for raw in (token, token, ecdsa_twin(token, "ES256"), ecdsa_twin(token, "ES256")):
        assert await status(http, gw, raw) == (200, "allowed")
    assert metric("gateway_token_validations_total", issuer=ec_issuer.issuer, result="valid") == before + 2


async def test_an_introspected_jwt_answer_is_not_reused_for_its_twin(
    make_gateway: GatewayFactory, ec_issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """The authorization server judged one string; a twin is asked about again (and is unknown there)."""
    introspection = {"endpoint": f"{ec_issuer.issuer}/introspect", "client_id": "gateway",
                     "client_secret": "gateway-secret"}
    gw = await make_gateway(issuers=issuer_entries(ec_issuer, validation="introspection", introspection=introspection))
    token = ec_issuer.mint(key=key_of(ec_issuer, "ES256"))
    ec_issuer.opaque[token] = {"active": True, "token_type": "Bearer", **ec_issuer.claims()}
    assert await status(http, gw, token) == (200, "allowed")
    assert await status(http, gw, token) == (200, "allowed")
    assert ec_issuer.calls["introspect"] == 1
    assert await status(http, gw, ecdsa_twin(token, "ES256")) == (401, "inactive_token")
    assert ec_issuer.calls["introspect"] == 2


async def test_a_fingerprint_entry_over_the_whole_jwt_still_revokes_that_exact_token(
    make_gateway: GatewayFactory, ec_issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """Entries written before identities hashed ``header.payload`` hashed the whole token: they keep working."""
    gw = await make_gateway(issuers=issuer_entries(ec_issuer))
    token = ec_issuer.mint(key=key_of(ec_issuer, "ES256"), jti=None, sid=None)
    assert await status(http, gw, token) == (200, "allowed")
    old_style = hashlib.sha256(token.encode()).hexdigest()
    assert old_style != fingerprint(token)
    entry = factory_for(gw.gateway.config).fingerprint(old_style, issuer=gw.gateway.config.issuers[0].issuer)
    await gw.gateway.revocation.revoke(entry)
    assert await status(http, gw, token) == (401, "revoked_token")
    assert await status(http, gw, ec_issuer.mint(key=key_of(ec_issuer, "ES256"))) == (200, "allowed")
