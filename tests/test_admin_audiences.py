"""``admin.audiences``: an admin token has an audience of its own, so it is not also an API token."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.demo import DemoIssuer
from tests.helpers import AUDIENCE, GatewayFactory, RunningGateway, bearer

ADMIN = "https://gateway.example/admin"


async def revoke(http: aiohttp.ClientSession, gw: RunningGateway, credential: str, victim: str) -> int:
    async with http.post(f"{gw.admin_url}/revocation/revoke", headers=bearer(credential),
                         data={"token": victim}) as resp:
        return resp.status


async def status(http: aiohttp.ClientSession, gw: RunningGateway, token: str) -> int:
    async with http.get(f"{gw.url}/orders", headers=bearer(token)) as resp:
        return resp.status


@pytest.mark.parametrize("audiences", [[ADMIN], ["other-admin", ADMIN]])
async def test_an_admin_audience_token_revokes_and_cannot_call_the_api(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, audiences: list[str]
) -> None:
    gw = await make_gateway(admin={"audiences": audiences})
    admin = issuer.mint(scope="gateway:admin", aud=ADMIN)
    victim = issuer.mint(scope="orders:read")
    assert await status(http, gw, admin) == 401
    assert await revoke(http, gw, admin, victim) == 200
    assert await status(http, gw, victim) == 401
    assert [r["reason"] for r in await gw.audit_records()] == ["wrong_audience", "revoked_token"]


async def test_with_admin_audiences_an_api_token_is_no_admin_token(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(admin={"audiences": [ADMIN]})
    api_admin = issuer.mint(scope="orders:read gateway:admin")  # aud: the API's
    victim = issuer.mint(scope="orders:read")
    assert await revoke(http, gw, api_admin, victim) == 401
    assert await status(http, gw, victim) == 200


async def test_an_admin_token_of_both_audiences_still_needs_the_scope(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(admin={"audiences": [ADMIN]})
    assert await revoke(http, gw, issuer.mint(scope="orders:read", aud=[ADMIN, AUDIENCE]), "t") == 403


async def test_without_admin_audiences_the_api_audience_still_works(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway()
    assert await revoke(http, gw, issuer.mint(scope="gateway:admin"), issuer.mint()) == 200
