"""Interoperability with node oidc-provider: real tokens, real introspection, real revocation events.

The authorization server is oidc-provider (tests/interop/conftest.py), not the gateway's own demo
issuer: client credentials with resource indicators give JWT access tokens signed RS256 or ES256,
or opaque ones that the gateway introspects with each client authentication method; revoking at
the authorization server reaches the gateway through the hook docs/revocation.md gives integrators.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.tokens.dpop import ProofRequest, key_thumbprint, sign_proof
from gateway.tokens.token import fingerprint
from tests.helpers import RunningGateway, bearer, metric

from .provider import (
    ADMIN_AUDIENCE,
    ADMIN_SECRET,
    CLIENT,
    CLIENT_SECRET,
    ES,
    OPAQUE,
    PROVIDER_DIR,
    REDIRECT_URI,
    RS,
    WEB_APP,
    WEB_APP_SECRET,
    InteropGateway,
    Provider,
)

ROOT = Path(__file__).resolve().parents[2]


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(client_id, secret)}


async def client_credentials(http: aiohttp.ClientSession, provider: Provider, resource: str, scope: str) -> str:
    """An access token for ``resource`` from the token endpoint (client_secret_basic)."""
    async with http.post(provider.token_endpoint, headers=basic(CLIENT, CLIENT_SECRET),
                         data={"grant_type": "client_credentials", "resource": resource, "scope": scope}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["scope"] == scope
    return str(body["access_token"])


async def revoke_at_as(http: aiohttp.ClientSession, provider: Provider, token: str, client: tuple[str, str],
                       hint: str = "access_token") -> None:
    """RFC 7009 at the authorization server itself (not at the gateway)."""
    async with http.post(provider.issuer + "/token/revocation", headers=basic(*client),
                         data={"token": token, "token_type_hint": hint}) as resp:
        assert resp.status == 200, await resp.text()


async def until_refused(http: aiohttp.ClientSession, gw: RunningGateway, token: str, started: float,
                        timeout: float = 10.0) -> tuple[float, aiohttp.ClientResponse]:
    """Seconds from ``started`` until the gateway refuses ``token`` with 401, and that answer."""
    while True:
        async with http.get(gw.url + "/orders", headers=bearer(token)) as resp:
            await resp.read()
            if resp.status == 401:
                return time.perf_counter() - started, resp
            assert resp.status == 200, resp.status
        assert time.perf_counter() - started < timeout, "the revocation never reached the gateway"
        await asyncio.sleep(0.001)


async def reasons(gw: RunningGateway) -> list[str]:
    return [record["reason"] for record in await gw.audit_records()]


# --- JWT access tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(("resource", "alg"), [(RS, "RS256"), (ES, "ES256")])
async def test_jwt_access_token_is_accepted_with_its_scope_and_403_without(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession, upstream: Any,
    resource: str, alg: str,
) -> None:
    gw = await interop_gateway()
    token = await client_credentials(http, oidc_provider, resource, "orders:read")
    assert jwt.get_unverified_header(token)["alg"] == alg
    async with http.get(gw.url + "/orders", headers=bearer(token)) as resp:
        assert resp.status == 200
    seen = upstream.requests[-1]["headers"]
    assert seen["X-Auth-Subject"] == CLIENT  # oidc-provider's JWT: sub is the client (RFC 9068 2.2)
    assert seen["X-Auth-Client-Id"] == CLIENT
    async with http.post(gw.url + "/orders", headers=bearer(token)) as resp:
        assert resp.status == 403
        assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
        assert 'scope="orders:write"' in resp.headers["WWW-Authenticate"]
    assert await reasons(gw) == ["allowed", "insufficient_scope"]


async def test_jwt_for_another_resource_is_refused(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession
) -> None:
    gw = await interop_gateway()
    token = await client_credentials(http, oidc_provider, ADMIN_AUDIENCE, "gateway:admin")
    async with http.get(gw.url + "/orders", headers=bearer(token)) as resp:
        assert resp.status == 401
    assert await reasons(gw) == ["wrong_audience"]


# --- opaque access tokens, introspected --------------------------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
async def test_opaque_token_is_introspected_with_each_client_authentication(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession, upstream: Any,
    auth_method: str,
) -> None:
    gw = await interop_gateway(auth_method=auth_method)
    reader = await client_credentials(http, oidc_provider, OPAQUE, "orders:read")
    writer = await client_credentials(http, oidc_provider, OPAQUE, "orders:read orders:write")
    assert reader.count(".") == 0  # opaque indeed
    calls = metric("gateway_introspection_requests_total", issuer=oidc_provider.issuer, result="active")
    async with http.get(gw.url + "/orders", headers=bearer(reader)) as resp:
        assert resp.status == 200
    # the answer has no sub (a client-credentials token): the client is the subject, as in the JWT
    assert upstream.requests[-1]["headers"]["X-Auth-Subject"] == CLIENT
    async with http.post(gw.url + "/orders", headers=bearer(reader)) as resp:
        assert resp.status == 403
    async with http.post(gw.url + "/orders", headers=bearer(writer)) as resp:
        assert resp.status == 200
    async with http.get(gw.url + "/orders", headers=bearer("not-a-token-the-provider-issued")) as resp:
        assert resp.status == 401
    assert metric("gateway_introspection_requests_total", issuer=oidc_provider.issuer, result="active") == calls + 2
    records = await gw.audit_records()
    assert [r["reason"] for r in records] == ["allowed", "insufficient_scope", "allowed", "inactive_token"]
    assert records[0]["sub"] == CLIENT


# --- revocation at the authorization server reaching the gateway --------------------------------


async def test_revoking_an_opaque_token_at_the_authorization_server_refuses_it_at_the_gateway(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession,
) -> None:
    """client_credentials.destroyed -> the hook -> POST /revocation/entries (fingerprint) -> 401.

    Measured five times: from the revocation request to the authorization server until the
    first 401 at the gateway (the first includes the warm-up of Node's fetch)."""
    gw = await interop_gateway(auth_method="client_secret_basic")
    latencies = []
    for _ in range(5):
        token = await client_credentials(http, oidc_provider, OPAQUE, "orders:read")
        async with http.get(gw.url + "/orders", headers=bearer(token)) as resp:
            assert resp.status == 200  # introspected once, and cached for 60 s
        calls = metric("gateway_introspection_requests_total", issuer=oidc_provider.issuer, result="active")
        started = time.perf_counter()
        await revoke_at_as(http, oidc_provider, token, (CLIENT, CLIENT_SECRET))
        latency, resp = await until_refused(http, gw, token, started)
        latencies.append(latency * 1000)
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        async with http.get(gw.url + "/orders", headers=bearer(token)) as resp:
            assert resp.status == 401
        # the list is read before the authorization server is asked: revoked_token, and no new call
        assert (await reasons(gw))[-2:] == ["revoked_token", "revoked_token"]
        assert metric("gateway_introspection_requests_total", issuer=oidc_provider.issuer, result="active") == calls
        assert gw.gateway.revocation.list.fingerprint_revoked(oidc_provider.issuer, fingerprint(token))
    print("\nrevoke at oidc-provider -> 401 at the gateway (opaque token, hook -> admin JSON), ms: "
          + ", ".join(f"{ms:.1f}" for ms in latencies) + f"; median {statistics.median(latencies):.1f}")


async def authorization_code(http: aiohttp.ClientSession, provider: Provider, resource: str) -> dict[str, Any]:
    """The authorization code flow through oidc-provider's auto-consenting login: its token response."""
    url = provider.issuer + "/auth?" + "&".join(f"{k}={v}" for k, v in {
        "client_id": WEB_APP, "response_type": "code", "redirect_uri": REDIRECT_URI, "state": "s1",
        "scope": "openid%20offline_access%20orders:read", "resource": resource, "prompt": "consent",
    }.items())
    for _ in range(10):
        async with http.get(url, allow_redirects=False) as resp:
            assert resp.status in (302, 303), await resp.text()
            url = urljoin(url, resp.headers["Location"])
        if url.startswith(REDIRECT_URI):
            break
    query = parse_qs(urlsplit(url).query)
    assert "code" in query, query
    async with http.post(provider.token_endpoint, headers=basic(WEB_APP, WEB_APP_SECRET), data={
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT_URI,
        "resource": resource,
    }) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
    return body


@pytest.mark.parametrize("resource", [RS, OPAQUE])
async def test_a_grant_revoked_at_the_authorization_server_revokes_its_family_at_the_gateway(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession, resource: str,
) -> None:
    """grant.revoked (here: the refresh token revoked) -> the hook -> a family entry (grant_id) -> 401.

    oidc-provider cannot revoke a JWT access token itself (its revocation endpoint answers
    unsupported_token_type), so for a JWT the gateway's list is the only revocation there is.
    """
    gw = await interop_gateway(auth_method="client_secret_post")
    tokens = await authorization_code(http, oidc_provider, resource)
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    async with http.get(gw.url + "/orders", headers=bearer(access)) as resp:
        assert resp.status == 200
    started = time.perf_counter()
    await revoke_at_as(http, oidc_provider, refresh, (WEB_APP, WEB_APP_SECRET), hint="refresh_token")
    latency, _ = await until_refused(http, gw, access, started)
    kind = "JWT" if resource == RS else "opaque"
    print(f"\nrevoke at oidc-provider -> 401 at the gateway ({kind} token, grant.revoked -> family): "
          f"{latency * 1000:.1f} ms")
    records = await gw.audit_records()
    assert records[-1]["reason"] == "revoked_family"
    assert records[0]["sub"] == "alice"


async def test_an_opaque_token_revoked_by_jti_is_refused(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession,
) -> None:
    """The integrator's hole: oidc-provider's opaque token *is* its jti, and the introspection answer
    names none. Sent as "jti", it used to be stored as it is (a live token in the list) and never
    matched; it is now kept as its SHA-256, which is the token's fingerprint."""
    gw = await interop_gateway(auth_method="client_secret_basic")
    token = await client_credentials(http, oidc_provider, OPAQUE, "orders:read")
    async with http.get(gw.url + "/orders", headers=bearer(token)) as resp:
        assert resp.status == 200
    async with http.post(gw.admin_url + "/revocation/entries", headers=bearer(ADMIN_SECRET),
                         json={"jti": token, "issuer": oidc_provider.issuer}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert token not in str(body)
    assert body["revoked"]["match"] == "fingerprint"
    async with http.get(gw.url + "/orders", headers=bearer(token)) as resp:
        assert resp.status == 401
    assert (await reasons(gw))[-1] == "revoked_token"


# --- admin tokens with an audience of their own ---------------------------------------------------


async def test_an_admin_token_for_the_admin_audience_revokes_and_is_no_api_token(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession,
) -> None:
    gw = await interop_gateway(admin={"audiences": [ADMIN_AUDIENCE]})
    admin = await client_credentials(http, oidc_provider, ADMIN_AUDIENCE, "gateway:admin")
    victim = await client_credentials(http, oidc_provider, RS, "orders:read")
    async with http.get(gw.url + "/orders", headers=bearer(admin)) as resp:
        assert resp.status == 401  # not an API token
    async with http.post(gw.admin_url + "/revocation/revoke", headers=bearer(admin), data={"token": victim}) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(gw.url + "/orders", headers=bearer(victim)) as resp:
        assert resp.status == 401
    # an API token is not an admin token, even when it carries the admin scope
    api_admin = await client_credentials(http, oidc_provider, RS, "orders:read gateway:admin")
    async with http.post(gw.admin_url + "/revocation/revoke", headers=bearer(api_admin),
                         data={"token": victim}) as resp:
        assert resp.status == 401
    assert await reasons(gw) == ["wrong_audience", "revoked_token"]


# --- DPoP-bound tokens (RFC 9449) ------------------------------------------------------------------


async def test_a_dpop_bound_token_from_the_provider_needs_its_proof_at_the_gateway(
    interop_gateway: InteropGateway, oidc_provider: Provider, http: aiohttp.ClientSession, upstream: Any,
) -> None:
    """oidc-provider binds a client-credentials token to the key of the DPoP proof sent to its token
    endpoint (cnf.jkt); the gateway accepts it with a fresh proof of that key, and refuses it as a
    bearer token, without a proof, with another key's proof or with a proof used before."""
    gw = await interop_gateway()
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    token_proof = sign_proof(key, ProofRequest(method="POST", url=oidc_provider.token_endpoint))
    async with http.post(oidc_provider.token_endpoint, headers={**basic(CLIENT, CLIENT_SECRET), "DPoP": token_proof},
                         data={"grant_type": "client_credentials", "resource": RS, "scope": "orders:read"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["token_type"] == "DPoP"
    token = body["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["cnf"] == {"jkt": key_thumbprint(key)}
    url = gw.url + "/orders"

    def proof(signer: Any = key) -> str:
        return sign_proof(signer, ProofRequest(method="GET", url=url, access_token=token))

    accepted = proof()
    async with http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": accepted}) as resp:
        assert resp.status == 200, await resp.text()
    assert upstream.requests[-1]["headers"]["X-Auth-Subject"] == CLIENT
    async with http.get(url, headers=bearer(token)) as resp:  # the bound token alone, as a bearer token
        assert resp.status == 401
    async with http.get(url, headers={"Authorization": f"DPoP {token}"}) as resp:  # the scheme, no proof
        assert resp.status == 401
        challenge = [v for v in resp.headers.getall("WWW-Authenticate") if v.startswith("DPoP ")]
        assert len(challenge) == 1 and 'error="invalid_dpop_proof"' in challenge[0]
    async with http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof(other)}) as resp:
        assert resp.status == 401
    async with http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": accepted}) as resp:  # replayed
        assert resp.status == 401
    records = await gw.audit_records()
    assert [r["reason"] for r in records] == [
        "allowed", "unproven_binding", "invalid_dpop_proof", "dpop_key_mismatch", "dpop_replayed"]
    assert (records[0]["binding"], records[0]["key_thumbprint"]) == ("dpop", key_thumbprint(key))


# --- the documentation quotes the tested hook -------------------------------------------------------


def test_docs_quote_the_tested_revocation_hook() -> None:
    """docs/revocation.md shows integrators this very file, line for line."""
    hook = (PROVIDER_DIR / "revocation-hook.js").read_text()
    assert hook in (ROOT / "docs" / "revocation.md").read_text()
