"""Key rotation right after start, bounded refetches, keys replaced under a kid.

Fetches are counted where they land, at the demo issuer's real ``/jwks`` on 127.0.0.1
(``issuer.calls["jwks"]``); every token is signed with a real key.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp

from gateway.demo import DemoIssuer, SigningKey
from gateway.tokens.refetch import RefetchBudget
from tests.helpers import AUDIENCE, GatewayFactory, bearer


def issuer_entry(issuer: DemoIssuer, **extra: Any) -> dict[str, Any]:
    """The issuer with the default refetch settings (the shared test config shortens the interval)."""
    entry = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"], "leeway": "5s",
             "jwks_min_refresh_interval": "30s"}
    entry.update(extra)
    return entry


async def status_of(http: aiohttp.ClientSession, gw: Any, token: str) -> tuple[int, str]:
    async with http.get(f"{gw.url}/orders", headers=bearer(token)) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body.get("reason", "allowed") if resp.status != 200 else "allowed"


async def flood(http: aiohttp.ClientSession, gw: Any, tokens: list[str], concurrency: int = 50) -> list[int]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(token: str) -> int:
        async with semaphore, http.get(f"{gw.url}/orders", headers=bearer(token)) as resp:
            await resp.read()
            return resp.status

    return await asyncio.gather(*(one(t) for t in tokens))


# --- rotation right after start --------------------------------------------------------------


async def test_a_key_published_right_after_start_works_on_its_first_token(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer)])  # fetched the JWKS a moment ago
    fetched = issuer.calls["jwks"]
    new_key = issuer.rotate("RS256")
    assert await status_of(http, gw, issuer.mint(key=new_key)) == (200, "allowed")
    assert issuer.calls["jwks"] == fetched + 1
    # and again a few seconds later, well within jwks_min_refresh_interval
    newer = issuer.rotate("ES256")
    assert await status_of(http, gw, issuer.mint(key=newer)) == (200, "allowed")
    assert issuer.calls["jwks"] == fetched + 2
    assert await status_of(http, gw, issuer.mint(key=new_key)) == (200, "allowed")  # known: no fetch
    assert issuer.calls["jwks"] == fetched + 2


async def test_concurrent_first_tokens_of_a_new_key_share_one_fetch(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer)])
    fetched = issuer.calls["jwks"]
    issuer.jwks_delay = 0.2  # every request below arrives while the one fetch is in flight
    new_key = issuer.rotate("RS256")
    statuses = await flood(http, gw, [issuer.mint(key=new_key) for _ in range(50)])
    assert statuses == [200] * 50
    assert issuer.calls["jwks"] == fetched + 1


async def test_a_fetch_started_before_the_key_was_published_does_not_answer_for_it(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """A refresh already in flight when the key appeared saw the old JWKS: the token is looked up again."""
    gw = await make_gateway(issuers=[issuer_entry(issuer)])
    keys = gw.pipeline.validator.keys[issuer.issuer]
    issuer.jwks_delay = 0.3
    before = issuer.calls["jwks"]
    stale = asyncio.create_task(keys.refresh())  # the issuer answers with the keys of this moment
    while issuer.calls["jwks"] == before:  # the issuer has taken its snapshot of the keys
        await asyncio.sleep(0.005)
    new_key = issuer.rotate("RS256")
    fetched = issuer.calls["jwks"]
    assert await status_of(http, gw, issuer.mint(key=new_key)) == (200, "allowed")
    assert issuer.calls["jwks"] == fetched + 1  # joined the stale fetch, then one of its own
    await stale


# --- what made-up kids cost the issuer ---------------------------------------------------------


async def test_a_thousand_made_up_kids_cost_a_handful_of_fetches(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer)])
    fetched = issuer.calls["jwks"]
    attacker = SigningKey.generate("RS256")
    tokens = [issuer.mint(key=attacker, headers={"kid": uuid.uuid4().hex}) for _ in range(1000)]
    statuses = await flood(http, gw, tokens)
    assert statuses == [401] * 1000
    assert 1 <= issuer.calls["jwks"] - fetched <= 3  # jwks_refetch_burst
    assert await status_of(http, gw, issuer.mint()) == (200, "allowed")  # known keys keep working
    records = await gw.audit_records()
    assert {r["reason"] for r in records[:-1]} == {"unknown_key"}


async def test_a_repeated_unknown_kid_is_remembered_and_leaves_the_budget_to_rotations(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer)])
    fetched = issuer.calls["jwks"]
    stray = issuer.mint(key=SigningKey.generate("RS256", kid="from-another-environment"))
    for _ in range(30):  # a misconfigured client retrying the same token
        assert await status_of(http, gw, stray) == (401, "unknown_key")
    assert issuer.calls["jwks"] == fetched + 1
    new_key = issuer.rotate("RS256")
    assert await status_of(http, gw, issuer.mint(key=new_key)) == (200, "allowed")
    assert issuer.calls["jwks"] == fetched + 2


async def test_after_a_flood_a_rotation_is_picked_up_within_one_interval(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer, jwks_min_refresh_interval="1s", jwks_refetch_burst=2)])
    attacker = SigningKey.generate("RS256")
    await flood(http, gw, [issuer.mint(key=attacker, headers={"kid": uuid.uuid4().hex}) for _ in range(100)])
    emptied = time.monotonic()
    new_key = issuer.rotate("RS256")
    await asyncio.sleep(max(0.0, emptied + 1.05 - time.monotonic()))  # one refetch earned back
    assert await status_of(http, gw, issuer.mint(key=new_key)) == (200, "allowed")


def test_the_refetch_budget_is_a_token_bucket() -> None:
    budget = RefetchBudget(burst=3, interval=1.0)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    time.sleep(1.05)
    assert [budget.take() for _ in range(2)] == [True, False]
    assert RefetchBudget(burst=0, interval=30).take() is False


# --- a key replaced under the same kid ----------------------------------------


async def test_a_key_replaced_under_the_same_kid_drops_the_tokens_it_verified(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer)])
    validator = gw.pipeline.validator
    old = issuer.keys[0]
    token = issuer.mint(key=old)
    assert await status_of(http, gw, token) == (200, "allowed")
    assert len(validator.cache) == 1  # verified once, now served from the cache
    replacement = SigningKey.generate("RS256", kid=old.kid)  # new material, same kid
    issuer.keys[0] = replacement
    await validator.keys[issuer.issuer].refresh()
    for _ in range(100):  # the purge runs in the background
        if len(validator.cache) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(validator.cache) == 0
    assert await status_of(http, gw, token) == (401, "bad_signature")
    assert await status_of(http, gw, issuer.mint(key=replacement)) == (200, "allowed")


async def test_a_refresh_with_the_same_keys_keeps_the_cache(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[issuer_entry(issuer)])
    validator = gw.pipeline.validator
    assert await status_of(http, gw, issuer.mint()) == (200, "allowed")
    issuer.keys.reverse()  # the same keys, listed in another order
    await validator.keys[issuer.issuer].refresh()
    await asyncio.sleep(0.05)
    assert len(validator.cache) == 1
