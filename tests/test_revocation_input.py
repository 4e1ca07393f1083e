"""Revocation input that would weaken a revocation: hostile numbers.

``before``, ``not_before``, ``ttl`` and ``expires_at`` must be finite and in range wherever they
come from (the admin JSON endpoint, a SET, the command line, the Python API, Redis): ``"nan"``,
``"inf"`` and ``1e308`` are refused with 400 and nothing is applied, and no merge of two entries
is ever weaker than either. Both stores: in memory, and a real redis-server.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import yaml
from click.testing import CliRunner
from redis.asyncio import Redis

from gateway.cli import main as cli_main
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.reasons import Reason
from gateway.revocation import Entry, EntryFactory, Kind, RevocationList, Revoker
from gateway.revocation.intake.set_events import CAEP
from gateway.revocation.schema import decode, merge
from gateway.tokens.token import ValidatedToken, fingerprint
from tests.helpers import GatewayFactory, RunningGateway, base_config, bearer

ISS = "https://as.example"
HOSTILE_TIMES: list[Any] = ["nan", "NaN", "inf", "-inf", "Infinity", "1e308", 1e308, -1e308, -1, "-5", 10**400,
                            "9999-12-31T23:59:59Z", "not a time", True, [1]]
HOSTILE_TTLS: list[Any] = [math.nan, math.inf, -math.inf, 1e308, 10**400, 0, -1, True, "60"]


@pytest.fixture
def admin_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "input-test-" + uuid.uuid4().hex
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", secret)
    return secret


async def status(http: aiohttp.ClientSession, gw: RunningGateway, tok: str) -> int:
    async with http.get(f"{gw.url}/orders", headers=bearer(tok)) as resp:
        await resp.read()
        return resp.status


async def post_entry(
    http: aiohttp.ClientSession, gw: RunningGateway, secret: str, body: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(f"{gw.admin_url}/revocation/entries", data=json.dumps(body),  # writes any int
                         headers={**bearer(secret), "Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


# --- the entry rules -----------------------------------------------------------------------------


def test_the_factory_refuses_non_finite_and_out_of_range_numbers() -> None:
    factory = EntryFactory(issuers=(ISS,))
    for before in HOSTILE_TIMES:
        for make in (factory.subject, factory.client):
            with pytest.raises(ValueError):
                make("alice", before=before)
    for ttl in HOSTILE_TTLS:
        for target in ("jti", "family", "subject", "client", "fingerprint"):
            with pytest.raises(ValueError):
                factory.build(target, "ab" * 32, ttl=ttl)
    for expires_at in (math.nan, math.inf, 1e308, -1.0):
        with pytest.raises(ValueError):
            factory.jti("j", expires_at=expires_at)
    # what is in range still works: a far but sane cut-off, a year-long ttl, an ISO time
    assert factory.subject("alice", before=time.time() + 86400).not_before is not None
    assert factory.jti("j", ttl=365 * 86400).expires_at > time.time()
    assert factory.client("app", before="2026-01-01T00:00:00Z").not_before == 1767225600.0


def test_an_entry_cannot_hold_a_non_finite_number() -> None:
    for fields in ({"expires_at": math.nan}, {"expires_at": math.inf}, {"not_before": math.nan},
                   {"not_before": -math.inf}, {"created_at": math.nan}, {"expires_at": 10**400}):
        with pytest.raises(ValueError, match="finite"):
            Entry(**{"kind": Kind.SUBJECT, "value": "alice", "expires_at": time.time() + 60, **fields})  # type: ignore[arg-type]
    # from Redis: a foreign writer's "nan" string (JSON itself has no NaN) is unreadable, not a weaker entry
    for raw in ({"kind": "subject", "value": "a", "expires_at": "nan"},
                {"kind": "subject", "value": "a", "expires_at": 1e9, "not_before": "-inf"},
                {"kind": "token", "value": "", "expires_at": 1e9}):
        with pytest.raises(ValueError):
            decode(orjson.dumps(raw))


def test_no_merge_is_weaker_than_either_entry() -> None:
    """Any sequence of valid writes of one subject: the cut-off and expiry only ever grow."""
    rng = random.Random(11)
    now = time.time()
    for _ in range(300):
        entries = [Entry(Kind.SUBJECT, "alice", now + rng.uniform(-100, 10_000), ISS,
                         not_before=now + rng.uniform(-10_000, 100), created_at=now) for _ in range(5)]
        merged: Entry | None = None
        rl = RevocationList()
        for entry in entries:
            merged = merge(merged, entry)
            rl.add(entry)
        assert merged is not None
        assert merged.expires_at == max(e.expires_at for e in entries)
        assert merged.not_before == max(e.not_before or 0 for e in entries)
        old = ValidatedToken(ISS, "alice", None, frozenset(), now + 600, fingerprint("t"),
                             issued_at=merged.not_before - 1)
        assert rl.check(old, now=now) is (Reason.REVOKED_SUBJECT if merged.expires_at > now else None)


# --- the admin endpoint, in-memory list ------------------------------------------------------------


async def test_hostile_numbers_get_400_and_never_undo_a_revocation(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway()
    alice = issuer.mint(sub="alice", iat=int(time.time()) - 60)
    assert (await post_entry(http, gw, admin_secret, {"subject": "alice"}))[0] == 200
    assert await status(http, gw, alice) == 401
    entries = len(gw.gateway.revocation.list)
    for before in HOSTILE_TIMES:
        code, answer = await post_entry(http, gw, admin_secret, {"subject": "alice", "before": before})
        assert code == 400 and answer["error"] == "invalid_request", before
    for ttl in (1e308, -1, 0, "nan", "inf", True):
        code, answer = await post_entry(http, gw, admin_secret, {"jti": "j", "ttl": ttl})
        assert code == 400 and answer["error"] == "invalid_request", ttl
    assert len(gw.gateway.revocation.list) == entries  # nothing applied, not even locally
    assert await status(http, gw, alice) == 401  # "before": "nan" used to undo the revocation
    assert (await gw.audit_records())[-1]["reason"] == "revoked_subject"


async def test_set_times_that_are_not_finite_or_in_range_get_400(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway()
    tok = issuer.mint(sub="erin", iat=int(time.time()) - 60)
    key = issuer.keys[0]
    headers = {**bearer(admin_secret), "Content-Type": "application/secevent+jwt"}
    for when in (math.nan, math.inf, 1e308, 10**400, -5):  # PyJWT writes NaN, Infinity, huge ints, and reads them
        claims = {"iss": issuer.issuer, "iat": int(time.time()), "jti": uuid.uuid4().hex,
                  "sub_id": {"format": "iss_sub", "iss": issuer.issuer, "sub": "erin"},
                  "events": {CAEP + "credential-change": {"change_type": "update", "event_timestamp": when}}}
        set_jwt = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "secevent+jwt"})
        async with http.post(f"{gw.admin_url}/revocation/events", data=set_jwt, headers=headers) as resp:
            assert resp.status == 400, when
            assert (await resp.json())["err"] == "invalid_request"
    assert len(gw.gateway.revocation.list) == 0
    assert await status(http, gw, tok) == 200


def test_cli_refuses_hostile_numbers_before_writing(tmp_path: Path, issuer: DemoIssuer, upstream: EchoUpstream) -> None:
    data = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    data["revocation"] = {"redis_url": "redis://127.0.0.1:9/0"}  # never reached: refused before connecting
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    for args in (["--subject", "alice", "--before", "nan"], ["--subject", "alice", "--before", "inf"],
                 ["--client", "app", "--before", "1e308"], ["--jti", "j", "--ttl", "nan"],
                 ["--jti", "j", "--ttl", "inf"], ["--family", "f", "--ttl", "1e308"]):
        result = CliRunner().invoke(cli_main, ["revoke", "--config", str(path), *args])
        assert result.exit_code == 1, (args, result.output)
        assert "finite" in result.output and "Traceback" not in result.output, args


# --- the Redis store --------------------------------------------------------------------------------


async def test_redis_store_refuses_infinity_instead_of_applying_it_locally(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_proc: Any, admin_secret: str
) -> None:
    url, prefix = f"redis://{redis_proc.host}:{redis_proc.port}/0", f"t{uuid.uuid4().hex[:10]}:revoked:"
    gw = await make_gateway(revocation={"redis_url": url, "key_prefix": prefix})
    alice = issuer.mint(sub="alice", iat=int(time.time()) - 60)
    async with Revoker(url, key_prefix=prefix) as revoker:
        await revoker.revoke_subject("alice", issuer=issuer.issuer)
        for before in ("nan", "inf", 1e308):
            with pytest.raises(ValueError):
                await revoker.revoke_subject("alice", issuer=issuer.issuer, before=before)
    redis = Redis.from_url(url)
    try:
        deadline = time.monotonic() + 2
        while await status(http, gw, alice) != 401:
            assert time.monotonic() < deadline
        for before in ("nan", "inf", "1e308"):
            code, _ = await post_entry(http, gw, admin_secret, {"subject": "alice", "before": before})
            assert code == 400  # "inf" used to be applied here, then refused by Redis with a 503
        assert len(gw.gateway.revocation.list) == 1
        assert await redis.xlen(f"{prefix}stream") == 1  # only the valid revocation was ever written
        [key] = [k async for k in redis.scan_iter(match=f"{prefix}v2:*")]
        assert 0 < await redis.ttl(key) <= 86400 + 120
    finally:
        await redis.aclose()
    assert await status(http, gw, alice) == 401
