"""/readyz reflects introspection: out of rotation once it has failed for ``readiness_grace``, back when it answers.

Against the demo issuer's real /introspect, switched to HTTP 500 (the authorization server
broken) and back; the probe that sees recovery while no tokens arrive is made faster here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.demo import DemoIssuer
from gateway.tokens import introspection
from tests.helpers import GatewayFactory
from tests.test_introspection import get, introspecting


async def readyz(http: Any, gw: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gw.admin_url}/readyz") as resp:
        return resp.status, await resp.json()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.02)


async def test_failing_introspection_turns_readiness_off_after_the_grace_and_back_on(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(introspection, "PROBE_INTERVAL", 0.1)
    gw = await make_gateway(issuers=[introspecting(issuer, readiness_grace="0.5s")])
    assert await readyz(http, gw) == (200, {"ready": True, "accepting": True, "jwks_loaded": True,
                                            "introspection_ok": True, "revocation_synced": True,
                                            "audit_writer": True})
    issuer.introspection_mode = "error"
    status, _, body = await get(http, f"{gw.url}/orders", issuer.mint_opaque())
    assert (status, body["reason"]) == (503, "introspection_unavailable")
    started = time.monotonic()
    assert (await readyz(http, gw))[0] == 200  # one failure: still within the grace period

    async def unready() -> bool:
        return (await readyz(http, gw))[0] == 503

    await until(unready)
    assert time.monotonic() - started >= 0.4
    assert (await readyz(http, gw))[1]["introspection_ok"] is False
    probes = issuer.calls["introspect"]

    issuer.introspection_mode = "ok"  # no token arrives: only the probe can see it is back

    async def ready() -> bool:
        return (await readyz(http, gw))[0] == 200

    await until(ready)
    assert issuer.calls["introspect"] > probes
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 200


async def test_one_answer_within_the_grace_keeps_the_replica_ready(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer, readiness_grace="0.3s")])
    issuer.introspection_mode = "error"
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 503
    issuer.introspection_mode = "ok"
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 200  # an answer: healthy again
    await asyncio.sleep(0.4)
    assert (await readyz(http, gw))[0] == 200


async def test_refused_client_credentials_make_the_replica_unready(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer, client_secret="wrong-secret", readiness_grace="0.2s")])
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 503
    await asyncio.sleep(0.3)
    status, body = await readyz(http, gw)
    assert (status, body["introspection_ok"]) == (503, False)


async def test_an_inactive_answer_is_an_answer(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer, readiness_grace="0.1s")])
    assert (await get(http, f"{gw.url}/orders", "never-issued"))[0] == 401
    await asyncio.sleep(0.2)
    assert (await readyz(http, gw))[0] == 200
