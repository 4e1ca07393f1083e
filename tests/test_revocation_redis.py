"""The shared revocation list against a real redis-server: replicas, outages, resync, intake, CLI.

Every test gets its own key prefix on the session's redis-server, so tests never see each
other's entries. Outages are real: a TCP relay on 127.0.0.1 between a replica and Redis is cut
(connections reset, new ones refused) or frozen (bytes held), or the replica's connections are
killed with CLIENT KILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jwt
import pytest
import yaml
from redis.asyncio import Redis

from gateway.demo import DemoIssuer, SigningKey
from gateway.revocation import Revoker, SyncRevoker
from gateway.revocation.entry_factory import EXPIRY_MARGIN
from gateway.revocation.intake.set_events import CAEP
from gateway.revocation.redis_store import RedisStore
from gateway.tokens.token import ValidatedToken, fingerprint
from tests.helpers import AUDIENCE, GatewayFactory, RunningGateway, base_config, bearer, free_port, metric

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


class Relay:
    """A TCP relay between one replica and Redis that a test can cut, freeze and restore."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self._open.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()

    async def cut(self) -> None:
        """Reset every connection and refuse new ones (Redis unreachable)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def freeze(self) -> None:
        """Keep the connections open but let no byte through (a silent network partition)."""
        self._flowing.clear()

    async def restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        self._flowing.set()
        await self.cut()



@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:revoked:"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:  # redis-py types replies for every decoding mode at once
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def admin_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "test-admin-" + uuid.uuid4().hex
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", secret)
    return secret


@pytest.fixture
async def relay(redis_proc: Any) -> AsyncIterator[Relay]:
    r = Relay(redis_proc.host, redis_proc.port)
    await r.start()
    yield r
    await r.stop()


def revocation(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"redis_url": url, "key_prefix": prefix, "max_staleness": "3s", **extra}


async def status(http: aiohttp.ClientSession, gw: RunningGateway, token: str) -> int:
    async with http.get(f"{gw.url}/orders", headers=bearer(token)) as resp:
        await resp.read()
        return resp.status


async def wait_status(http: aiohttp.ClientSession, gw: RunningGateway, token: str, wanted: int, within: float) -> float:
    """Seconds until ``gw`` answers ``wanted`` for ``token``; fails after ``within``."""
    started = time.perf_counter()
    while True:
        got = await status(http, gw, token)
        elapsed = time.perf_counter() - started
        if got == wanted:
            return elapsed
        assert elapsed < within, f"still {got} after {elapsed:.3f}s, wanted {wanted}"
        await asyncio.sleep(0.002)


async def until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def last_reason(gw: RunningGateway) -> str:
    return str((await gw.audit_records())[-1]["reason"])


# --- cross-replica enforcement -----------------------------------------------------------------------


async def test_token_revoked_at_one_replica_is_denied_at_both_within_100ms(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    admin_secret: str,
) -> None:
    a = await make_gateway(revocation=revocation(redis_url, prefix))
    b = await make_gateway(revocation=revocation(redis_url, prefix))
    tok, other = issuer.mint(), issuer.mint()
    for gw in (a, b):
        assert await status(http, gw, tok) == 200  # cached as verified at both
    started = time.perf_counter()
    async with http.post(f"{a.admin_url}/revocation/revoke", data={"token": tok, "token_type_hint": "access_token"},
                         headers=bearer(admin_secret)) as resp:
        assert resp.status == 200
    delays = await asyncio.gather(*(wait_status(http, gw, tok, 401, within=0.1) for gw in (a, b)))
    assert time.perf_counter() - started < 0.1, delays
    for gw in (a, b):
        assert await last_reason(gw) == "revoked_token"
        assert await status(http, gw, other) == 200


async def test_family_revocation_denies_every_token_of_the_family_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str
) -> None:
    a = await make_gateway(revocation=revocation(redis_url, prefix))
    b = await make_gateway(revocation=revocation(redis_url, prefix))
    family = [issuer.mint(sid="fam-1", scope="orders:read") for _ in range(3)]
    sibling = issuer.mint(sid="fam-2")  # same subject (alice), another session
    for gw in (a, b):
        for tok in [*family, sibling]:
            assert await status(http, gw, tok) == 200
    async with Revoker(redis_url, key_prefix=prefix) as revoker:  # what the authorization server calls
        await revoker.revoke_family("fam-1", issuer=issuer.issuer, reason="refresh token reuse")
    for gw in (a, b):
        for tok in family:
            await wait_status(http, gw, tok, 401, within=0.5)
            assert await last_reason(gw) == "revoked_family"
        assert await status(http, gw, sibling) == 200


async def test_subject_revoked_before_t_spares_tokens_issued_after_t(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str
) -> None:
    a = await make_gateway(revocation=revocation(redis_url, prefix))
    b = await make_gateway(revocation=revocation(redis_url, prefix))
    now = int(time.time())
    old = issuer.mint(sub="carol", iat=now - 60)
    fresh = issuer.mint(sub="carol", iat=now)
    someone_else = issuer.mint(sub="dave", iat=now - 60)
    revoker = SyncRevoker(redis_url, key_prefix=prefix)
    try:
        revoker.revoke_subject("carol", issuer=issuer.issuer, before=now - 30)
    finally:
        revoker.close()
    for gw in (a, b):
        await wait_status(http, gw, old, 401, within=0.5)
        assert await last_reason(gw) == "revoked_subject"
        assert await status(http, gw, fresh) == 200
        assert await status(http, gw, someone_else) == 200


async def test_client_revocation_via_the_admin_json_endpoint(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    admin_secret: str,
) -> None:
    a = await make_gateway(revocation=revocation(redis_url, prefix))
    b = await make_gateway(revocation=revocation(redis_url, prefix))
    tok = issuer.mint(client_id="leaky-app")
    other = issuer.mint(client_id="good-app")
    async with http.post(f"{b.admin_url}/revocation/entries", json={"client": "leaky-app", "reason": "secret leak"},
                         headers=bearer(admin_secret)) as resp:
        assert resp.status == 200
    for gw in (a, b):
        await wait_status(http, gw, tok, 401, within=0.5)
        assert await last_reason(gw) == "revoked_client"
        assert await status(http, gw, other) == 200


async def test_a_new_replica_loads_existing_revocations_at_start(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str
) -> None:
    tok = issuer.mint(jti="preexisting-jti")
    async with Revoker(redis_url, key_prefix=prefix) as revoker:
        await revoker.revoke_jti("preexisting-jti", issuer=issuer.issuer)
    late = await make_gateway(revocation=revocation(redis_url, prefix))
    assert late.gateway.revocation.ready
    assert await status(http, late, tok) == 401


# --- outages -----------------------------------------------------------------------------------------


async def test_revocation_written_while_the_connection_is_cut_is_enforced_after_reconnect(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    relay: Relay,
) -> None:
    a = await make_gateway(revocation=revocation(redis_url, prefix))
    b = await make_gateway(revocation=revocation(f"redis://127.0.0.1:{relay.port}/0", prefix))
    tok = issuer.mint(sid="cut-family")
    assert await status(http, b, tok) == 200
    resyncs = metric("gateway_revocation_resyncs_total", cause="trimmed")
    await relay.cut()
    async with Revoker(redis_url, key_prefix=prefix) as revoker:
        await revoker.revoke_family("cut-family", issuer=issuer.issuer)
    await wait_status(http, a, tok, 401, within=0.5)
    await asyncio.sleep(0.2)
    assert await status(http, b, tok) == 200  # B really missed the notification (and is within max_staleness)
    store = b.gateway.revocation
    assert isinstance(store, RedisStore)
    await until(lambda: not store.connected, within=0.5)  # B's feed saw the cut
    await relay.restore()
    await wait_status(http, b, tok, 401, within=2.0)
    assert metric("gateway_revocation_resyncs_total", cause="trimmed") == resyncs  # continued from its last id
    assert metric("gateway_revocation_redis_errors_total") > 0


async def test_killed_client_connections_reconnect_and_catch_up(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    redis: Any,
) -> None:
    b = await make_gateway(revocation=revocation(redis_url, prefix))
    tok = issuer.mint(jti="killed-conn-jti")
    assert await status(http, b, tok) == 200
    store = b.gateway.revocation
    assert isinstance(store, RedisStore)
    instance = store.instance
    clients = [c for c in await redis.client_list() if instance in c.get("name", "")]
    assert any("feed" in c["name"] for c in clients)
    for c in clients:
        await redis.client_kill_filter(_id=c["id"])
    async with Revoker(redis_url, key_prefix=prefix) as revoker:
        await revoker.revoke_jti("killed-conn-jti", issuer=issuer.issuer)
    await wait_status(http, b, tok, 401, within=2.0)


async def test_stream_trimmed_during_the_outage_forces_a_full_resync(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    relay: Relay,
    redis: Any,
) -> None:
    b = await make_gateway(revocation=revocation(f"redis://127.0.0.1:{relay.port}/0", prefix))
    tok = issuer.mint(jti="trimmed-jti")
    assert await status(http, b, tok) == 200
    before = metric("gateway_revocation_resyncs_total", cause="trimmed")
    await relay.cut()
    async with Revoker(redis_url, key_prefix=prefix) as revoker:
        await revoker.revoke_jti("trimmed-jti", issuer=issuer.issuer)
        await revoker.revoke_jti("filler", issuer=issuer.issuer)
    await redis.xtrim(f"{prefix}stream", maxlen=0, approximate=False)  # the notification is gone
    await relay.restore()
    await wait_status(http, b, tok, 401, within=2.0)
    assert metric("gateway_revocation_resyncs_total", cause="trimmed") == before + 1


@pytest.mark.parametrize("outage", ["cut", "freeze"])
async def test_redis_down_longer_than_max_staleness_fails_closed_with_503(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, prefix: str, relay: Relay,
    outage: str,
) -> None:
    b = await make_gateway(revocation=revocation(f"redis://127.0.0.1:{relay.port}/0", prefix, max_staleness="400ms"))
    tok = issuer.mint()
    assert await status(http, b, tok) == 200
    if outage == "cut":
        await relay.cut()
    else:
        relay.freeze()
    assert await status(http, b, tok) == 200  # within max_staleness the local copy is still enforced
    delay = await wait_status(http, b, tok, 503, within=1.5)
    assert delay > 0.15
    async with http.get(f"{b.url}/orders", headers=bearer(tok)) as resp:
        assert resp.headers["Retry-After"]
        assert (await resp.json())["error"] == "temporarily_unavailable"
    assert await last_reason(b) == "revocation_unavailable"
    async with http.get(f"{b.admin_url}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["revocation_synced"] is False
    await until(lambda: metric("gateway_revocation_redis_up") == 0, within=0.5)  # the gauge follows within a tick
    await relay.restore()
    await wait_status(http, b, tok, 200, within=8.0)  # a frozen socket first has to time out
    async with http.get(f"{b.admin_url}/readyz") as resp:
        assert resp.status == 200


async def test_redis_unreachable_at_start_means_not_ready_and_503_until_it_is_back(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, prefix: str, relay: Relay,
    admin_secret: str,
) -> None:
    await relay.cut()
    b = await make_gateway(revocation=revocation(f"redis://127.0.0.1:{relay.port}/0", prefix))
    tok = issuer.mint()
    assert await status(http, b, tok) == 503
    async with http.get(f"{b.admin_url}/readyz") as resp:
        assert resp.status == 503
    async with http.post(f"{b.admin_url}/revocation/entries", json={"jti": "not-written"},
                         headers=bearer(admin_secret)) as resp:
        assert resp.status == 503  # the caller learns the revocation did not reach Redis, and retries
        assert resp.headers["Retry-After"]
    await relay.restore()
    await wait_status(http, b, tok, 200, within=3.0)
    assert metric("gateway_revocation_resyncs_total", cause="startup") > 0


# --- schema in Redis ---------------------------------------------------------------------------------


async def test_keys_carry_ttls_and_never_a_raw_token(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    redis: Any,
    admin_secret: str,
) -> None:
    a = await make_gateway(
        revocation=revocation(redis_url, prefix, default_ttl="2h"),
        issuers=[{"issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s", "max_token_lifetime": "1h"}],
    )
    tok = issuer.mint(ttl=120)
    async with http.post(f"{a.admin_url}/revocation/revoke", data={"token": tok}, headers=bearer(admin_secret)) as r:
        assert r.status == 200
    async with Revoker.from_config(a.gateway.config) as revoker:
        await revoker.revoke_family("ttl-family", issuer=issuer.issuer)
        await revoker.revoke_subject("erin", issuer=issuer.issuer, before=time.time() - 600)
        await revoker.revoke_client("some-client")  # no issuer: the longest lifetime (default_ttl 2h)
    fp = fingerprint(tok)
    ttls = {key: await redis.ttl(f"{prefix}{key}") for key in
            (f"v2:fingerprint:{issuer.issuer}|{fp}", f"v2:family:{issuer.issuer}|ttl-family",
             f"v2:subject:{issuer.issuer}|erin", "v2:client:*|some-client")}
    assert 120 - 5 <= ttls[f"v2:fingerprint:{issuer.issuer}|{fp}"] <= 120 + EXPIRY_MARGIN + 1  # the token's own exp
    assert 3600 <= ttls[f"v2:family:{issuer.issuer}|ttl-family"] <= 3600 + EXPIRY_MARGIN + 1  # the issuer's lifetime
    assert 3000 - 5 <= ttls[f"v2:subject:{issuer.issuer}|erin"] <= 3000 + EXPIRY_MARGIN + 1  # cut-off + lifetime
    assert 7200 <= ttls["v2:client:*|some-client"] <= 7200 + EXPIRY_MARGIN + 1
    messages = await redis.xrange(f"{prefix}stream")
    assert len(messages) == 4 and all(fields[b"v"] == b"2" for _, fields in messages)
    stored = b"".join([fields[b"entry"] for _, fields in messages])
    async for key in redis.scan_iter(match=f"{prefix}*", _type="STRING"):
        stored += key + await redis.get(key)
    assert tok.encode() not in stored and tok.split(".")[2].encode() not in stored
    assert fp.encode() in stored


async def test_concurrent_writers_merge_instead_of_weakening(redis_url: str, prefix: str, redis: Any) -> None:
    now = time.time()
    async with Revoker(redis_url, key_prefix=prefix) as revoker:
        await asyncio.gather(*(revoker.revoke_subject("frank", before=now - i) for i in range(10)))
    raw = await redis.get(f"{prefix}v2:subject:*|frank")
    assert yaml.safe_load(raw)["not_before"] == now
    assert await redis.xlen(f"{prefix}stream") == 10


# --- admin intake ------------------------------------------------------------------------------------


async def test_rfc7009_answers_200_for_unknown_tokens_and_refuses_unauthenticated_callers(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    admin_secret: str,
) -> None:
    gw = await make_gateway(revocation=revocation(redis_url, prefix))
    url = f"{gw.admin_url}/revocation/revoke"
    for headers in ({}, bearer("wrong-secret-wrong-secret"), {"Authorization": f"Basic {admin_secret}"},
                    bearer(issuer.mint(scope="gateway:admin", aud="https://other.example"))):
        async with http.post(url, data={"token": "whatever"}, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.post(url, data={"token": "x"}, headers=bearer(issuer.mint(scope="orders:read"))) as resp:
        assert resp.status == 403
    async with http.post(url, data={}, headers=bearer(admin_secret)) as resp:
        assert resp.status == 400
    admin_token = issuer.mint(scope="gateway:admin")
    for credential in (admin_secret, admin_token):
        async with http.post(url, data={"token": "never-issued-" + uuid.uuid4().hex},
                             headers=bearer(credential)) as resp:
            assert resp.status == 200
            assert await resp.read() == b""
    # a refresh token JWT carrying the family claim takes its family with it
    refresh = issuer.mint(sid="rt-family", typ="refresh")
    access = issuer.mint(sid="rt-family")
    async with http.post(url, data={"token": refresh, "token_type_hint": "refresh_token"},
                         headers=bearer(admin_token)) as resp:
        assert resp.status == 200
    await wait_status(http, gw, access, 401, within=0.5)


async def test_admin_token_is_refused_with_503_while_the_revocation_list_is_not_current(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, prefix: str, relay: Relay,
    admin_secret: str,
) -> None:
    """The admin token itself may have been revoked meanwhile: with a stale list it cannot be trusted."""
    await relay.cut()
    gw = await make_gateway(revocation=revocation(f"redis://127.0.0.1:{relay.port}/0", prefix))
    assert not gw.gateway.revocation.ready
    async with http.post(f"{gw.admin_url}/revocation/entries", json={"jti": "not-applied"},
                         headers=bearer(issuer.mint(scope="gateway:admin"))) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        assert (await resp.json())["error_description"] == "the revocation list is unavailable"
    probe = ValidatedToken(issuer.issuer, "alice", None, frozenset(), time.time() + 60, "f" * 64, jti="not-applied")
    assert gw.gateway.revocation.list.check(probe) is None  # refused before anything was revoked
    await relay.restore()
    await until(lambda: gw.gateway.revocation.ready, within=3.0)
    async with http.post(f"{gw.admin_url}/revocation/entries", json={"jti": "now-applied"},
                         headers=bearer(issuer.mint(scope="gateway:admin"))) as resp:
        assert resp.status == 200


def sign_set(claims: dict[str, Any], key: SigningKey, **headers: Any) -> str:
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "secevent+jwt",
                                                                      **headers})


async def test_security_event_tokens_are_verified_then_applied(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    admin_secret: str,
) -> None:
    a = await make_gateway(revocation=revocation(redis_url, prefix))
    b = await make_gateway(revocation=revocation(redis_url, prefix))
    tok = issuer.mint(sid="set-session")
    claims = {"iss": issuer.issuer, "iat": int(time.time()), "jti": uuid.uuid4().hex, "aud": AUDIENCE,
              "sub_id": {"format": "opaque", "id": "set-session"},
              "events": {CAEP + "session-revoked": {"event_timestamp": int(time.time())}}}
    headers = {**bearer(admin_secret), "Content-Type": "application/secevent+jwt"}
    url = f"{a.admin_url}/revocation/events"

    async def post(body: str, extra: dict[str, str] | None = None) -> tuple[int, Any]:
        async with http.post(url, data=body, headers={**headers, **(extra or {})}) as resp:
            return resp.status, (await resp.json() if resp.status == 400 else None)

    impostor = SigningKey.generate("RS256", kid=issuer.keys[0].kid)  # same kid, key not in the JWKS
    assert await post(sign_set(claims, impostor)) == (400, {"err": "invalid_key", "description": pytest.approx(
        "the SET signature does not verify with the issuer's keys")})
    assert (await post(sign_set({**claims, "iss": "https://evil.example"}, issuer.keys[0])))[1]["err"] == \
        "invalid_issuer"
    assert (await post(sign_set({**claims, "aud": "https://elsewhere"}, issuer.keys[0])))[1]["err"] == \
        "invalid_audience"
    assert (await post(sign_set(claims, issuer.keys[0], typ="at+jwt")))[1]["err"] == "invalid_request"
    assert (await post(sign_set(claims, issuer.keys[0]), {"Content-Type": "application/jwt"}))[0] == 400
    async with http.post(url, data=sign_set(claims, issuer.keys[0]),
                         headers={"Content-Type": "application/secevent+jwt"}) as resp:
        assert resp.status == 401
    assert await status(http, b, tok) == 200  # nothing refused above was applied
    assert await post(sign_set(claims, issuer.keys[0])) == (202, None)
    for gw in (a, b):
        await wait_status(http, gw, tok, 401, within=0.5)
        assert await last_reason(gw) == "revoked_family"


# --- CLI ---------------------------------------------------------------------------------------------


async def test_cli_revoke_end_to_end(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_url: str, prefix: str,
    tmp_path: Path,
) -> None:
    gw = await make_gateway(revocation=revocation(redis_url, prefix))
    tok, by_token = issuer.mint(jti="cli-jti"), issuer.mint()
    config = base_config(issuer, type("U", (), {"url": "http://127.0.0.1:9"})(), tmp_path / "audit.jsonl")
    config["revocation"] = revocation(redis_url, prefix)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))

    async def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "revoke", "--config", str(path), *args, cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await run("--jti", "cli-jti", "--reason", "incident 42")
    assert code == 0, err
    assert f"revoked jti cli-jti (issuer {issuer.issuer})" in out
    await wait_status(http, gw, tok, 401, within=0.5)
    code, out, err = await run("--token", "-", stdin=by_token.encode() + b"\n")
    assert code == 0, err
    assert by_token not in out and fingerprint(by_token) in out
    await wait_status(http, gw, by_token, 401, within=0.5)


# --- deployments: TLS, Sentinel, Cluster (each with its own redis processes) -------------------------


@contextlib.asynccontextmanager
async def redis_server(workdir: Path, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A redis-server (or sentinel) process for one test, stopped at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        shutil.which("redis-server") or "/usr/bin/redis-server", *args, "--dir", str(workdir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def ping_until_up(client: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await client.ping()
            return
        except Exception:
            assert time.monotonic() < deadline, "redis did not come up"
            await asyncio.sleep(0.02)


def tls_files(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 (EC P-256, valid for a day)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokengate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(2)
              .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    directory.mkdir(parents=True, exist_ok=True)
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


async def test_tls_rediss_url(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    files = tls_files(tmp_path / "tls")
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca']}"
    async with redis_server(tmp_path / "redis", "--port", "0", "--tls-port", str(port), "--tls-cert-file",
                            str(files["cert"]), "--tls-key-file", str(files["key"]), "--tls-ca-cert-file",
                            str(files["ca"]), "--tls-auth-clients", "no", "--save", ""):
        probe = Redis.from_url(url)
        await ping_until_up(probe)
        gw = await make_gateway(revocation={"redis_url": url, "key_prefix": "tls:revoked:"})
        tok = issuer.mint(jti="tls-jti")
        assert await status(http, gw, tok) == 200
        async with Revoker.from_config(gw.gateway.config) as revoker:
            await revoker.revoke_jti("tls-jti")
        await wait_status(http, gw, tok, 401, within=0.5)
        assert gw.gateway.revocation.ready
        await probe.aclose()
        await gw.stop()


async def test_sentinel(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_proc: Any, tmp_path: Path,
    prefix: str,
) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nsentinel monitor tg 127.0.0.1 {redis_proc.port} 1\n")
    async with redis_server(tmp_path / "sentinel", str(conf), "--sentinel"):
        await ping_until_up(Redis(port=port))
        sentinel = {"hosts": [f"127.0.0.1:{port}"], "service_name": "tg"}
        a = await make_gateway(revocation={"sentinel": sentinel, "key_prefix": prefix})
        b = await make_gateway(revocation={"sentinel": sentinel, "key_prefix": prefix})
        tok = issuer.mint(sid="sentinel-family")
        async with Revoker.from_config(a.gateway.config) as revoker:
            await revoker.revoke_family("sentinel-family")
        for gw in (a, b):
            await wait_status(http, gw, tok, 401, within=0.5)
            await gw.stop()


async def test_cluster_keys_share_one_hash_slot(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    async with redis_server(tmp_path / "cluster", "--port", str(port), "--cluster-enabled", "yes",
                            "--cluster-port", str(free_port()),  # the default (port + 10000) may not exist
                            "--cluster-config-file", str(tmp_path / "nodes.conf"), "--save", ""):
        node = Redis(port=port)
        await ping_until_up(node)
        await node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
        await until_async(lambda: node.execute_command("CLUSTER", "INFO"), lambda info: b"cluster_state:ok" in info)  # type: ignore[no-untyped-call]
        url = f"redis://127.0.0.1:{port}/0"
        revocation_config = {"redis_url": url, "cluster": True, "key_prefix": "gateway:revoked:"}
        a = await make_gateway(revocation=revocation_config)
        b = await make_gateway(revocation=revocation_config)
        tok = issuer.mint(jti="cluster-jti", sub="grace")
        async with Revoker(url, cluster=True) as revoker:
            await revoker.revoke_jti("cluster-jti", issuer=issuer.issuer)
            await revoker.revoke_subject("nobody-here")
        for gw in (a, b):
            await wait_status(http, gw, tok, 401, within=0.5)
            await gw.stop()
        keys = await node.keys("*")
        assert sorted(keys) == [b"{gateway:revoked:}stream",
                                f"{{gateway:revoked:}}v2:jti:{issuer.issuer}|cluster-jti".encode(),
                                b"{gateway:revoked:}v2:subject:*|nobody-here"]
        slots = {await node.execute_command("CLUSTER", "KEYSLOT", key) for key in keys}  # type: ignore[no-untyped-call]
        assert len(slots) == 1
        await node.aclose()


async def until_async(fetch: Callable[[], Awaitable[T]], condition: Callable[[T], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition(await fetch()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
