"""Revocation entries belong to an issuer: one issuer's entries never revoke another issuer's tokens.

Two real demo issuers on 127.0.0.1 whose tokens share a jti, a session id and a subject: an
entry for one issuer must never refuse the other's tokens, whether it came from a SET, an
RFC 7009 call, the admin JSON endpoint, the Python API or ``gateway revoke``; ``*`` entries are
written on purpose, by the operator only. Both stores: in memory, and a real redis-server.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
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
from gateway.config import parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.reasons import Reason
from gateway.revocation import (
    ANY_ISSUER,
    Entry,
    EntryFactory,
    IssuerNeeded,
    Kind,
    Match,
    RevocationList,
    Revoker,
    SyncRevoker,
)
from gateway.revocation.intake.set_events import CAEP, OAUTH, SetError, entries_from_set
from gateway.revocation.schema import decode, encode
from gateway.tokens.token import ValidatedToken, fingerprint
from tests.helpers import AUDIENCE, GatewayFactory, RunningGateway, base_config, bearer

REPO = Path(__file__).resolve().parent.parent
A, B = "https://a.example", "https://b.example"
FAR = time.time() + 3600


@pytest.fixture
async def other() -> AsyncIterator[DemoIssuer]:
    """A second authorization server, with its own keys."""
    server = DemoIssuer(audience=AUDIENCE)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def admin_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "issuer-test-" + uuid.uuid4().hex
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", secret)
    return secret



@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:revoked:"


def issuers(*servers: DemoIssuer) -> list[dict[str, Any]]:
    return [{"issuer": s.issuer, "audiences": [AUDIENCE], "leeway": "5s", "jwks_min_refresh_interval": "1s"}
            for s in servers]


def token(iss: str, jti: str | None = "j1", sid: str | None = None, sub: str = "alice",
          client: str = "app") -> ValidatedToken:
    claims = {"sid": sid} if sid else {}
    return ValidatedToken(iss, sub, client, frozenset(), FAR, fingerprint(f"{iss}-{jti}-{sid}"), jti=jti,
                          issued_at=time.time() - 10, claims=claims)


async def status(http: aiohttp.ClientSession, gw: RunningGateway, tok: str) -> int:
    async with http.get(f"{gw.url}/orders", headers=bearer(tok)) as resp:
        await resp.read()
        return resp.status


async def wait_status(
    http: aiohttp.ClientSession, gw: RunningGateway, tok: str, wanted: int, within: float = 1.0
) -> None:
    deadline = time.monotonic() + within
    while (got := await status(http, gw, tok)) != wanted:
        assert time.monotonic() < deadline, f"still {got}, wanted {wanted}"
        await asyncio.sleep(0.01)


def sign_set(server: DemoIssuer, event_type: str, sub_id: dict[str, Any], **claims: Any) -> str:
    key = server.keys[0]
    body = {"iss": server.issuer, "iat": int(time.time()), "jti": uuid.uuid4().hex, "sub_id": sub_id,
            "events": {event_type: {}}, **claims}
    return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "secevent+jwt"})


async def post_set(http: aiohttp.ClientSession, gw: RunningGateway, credential: str, set_jwt: str) -> tuple[int, Any]:
    async with http.post(f"{gw.admin_url}/revocation/events", data=set_jwt,
                         headers={**bearer(credential), "Content-Type": "application/secevent+jwt"}) as resp:
        return resp.status, (await resp.json() if resp.status == 400 else None)


async def post_entry(
    http: aiohttp.ClientSession, gw: RunningGateway, credential: str, body: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(f"{gw.admin_url}/revocation/entries", json=body, headers=bearer(credential)) as resp:
        return resp.status, await resp.json()


# --- the local list ------------------------------------------------------------------------------


def test_jti_family_and_client_entries_match_their_own_issuer_and_star_matches_all() -> None:
    for entry, probe in (
        (Entry(Kind.TOKEN, "j1", FAR, A, match=Match.JTI), {"jti": "j1"}),
        (Entry(Kind.FAMILY, "s1", FAR, A), {"sid": "s1", "jti": None}),
        (Entry(Kind.CLIENT, "app", FAR, A, not_before=time.time()), {"jti": None}),
    ):
        rl = RevocationList()
        rl.add(entry)
        assert rl.check(token(A, **probe)) is not None, entry
        assert rl.check(token(B, **probe)) is None, entry  # another issuer's token with the same id
        everywhere = RevocationList()
        everywhere.add(Entry(**{**_fields(entry), "issuer": ANY_ISSUER}))
        assert everywhere.check(token(A, **probe)) is not None and everywhere.check(token(B, **probe)) is not None


def _fields(entry: Entry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in Entry.__dataclass_fields__}


def test_a_jti_never_matches_a_fingerprint_and_a_fingerprint_never_matches_a_jti() -> None:
    victim = token(A, jti="victim-jti")
    rl = RevocationList()
    rl.add(Entry(Kind.TOKEN, victim.fingerprint[:32], FAR, A, match=Match.JTI))  # a jti that looks like one
    rl.add(Entry(Kind.TOKEN, victim.fingerprint, FAR, A, match=Match.JTI))
    assert rl.check(victim) is None
    crafted = token(A, jti=fingerprint("someone-else"))  # a token whose jti is another token's fingerprint
    rl.add(Entry(Kind.TOKEN, fingerprint("someone-else"), FAR, A, match=Match.FINGERPRINT))
    assert rl.check(crafted) is None
    rl.add(Entry(Kind.TOKEN, victim.fingerprint.upper(), FAR, A, match=Match.FINGERPRINT))
    assert rl.check(victim) is Reason.REVOKED_TOKEN


def test_schema1_entries_keep_their_meaning_until_they_expire() -> None:
    """Written before schema 2: token, family, client entries matched every issuer; subject did not."""
    v1 = [
        {"kind": "token", "value": "legacy-jti", "expires_at": FAR, "issuer": A},
        {"kind": "family", "value": "legacy-sid", "expires_at": FAR, "issuer": A},
        {"kind": "subject", "value": "carol", "expires_at": FAR, "issuer": A, "not_before": time.time()},
    ]
    rl = RevocationList()
    for data in v1:
        rl.add(decode(orjson.dumps(data)))
    assert rl.check(token(B, jti="legacy-jti")) is Reason.REVOKED_TOKEN
    assert rl.check(token(B, jti=None, sid="legacy-sid")) is Reason.REVOKED_FAMILY
    assert rl.check(token(A, jti=None, sub="carol")) is Reason.REVOKED_SUBJECT
    assert rl.check(token(B, jti=None, sub="carol")) is None
    fresh = decode(encode(Entry(Kind.TOKEN, "j", FAR, A, match=Match.JTI)))
    assert (fresh.issuer, fresh.match) == (A, Match.JTI)
    for bad in ({"v": 3, "kind": "token", "value": "j", "expires_at": FAR},
                {"v": 2, "kind": "token", "value": "j", "expires_at": FAR, "match": "email"}):
        with pytest.raises(ValueError):
            decode(orjson.dumps(bad))


def test_the_issuer_rule() -> None:
    two = EntryFactory(issuers=(A, B))
    makers: tuple[Callable[[EntryFactory], Entry], ...] = (
        lambda f: f.jti("j"), lambda f: f.family("s"), lambda f: f.token("raw"), lambda f: f.fingerprint("ab" * 32))
    for make in makers:
        with pytest.raises(IssuerNeeded) as needed:
            make(two)
        assert A in str(needed.value) and B in str(needed.value) and "'*'" in str(needed.value)
        assert make(EntryFactory(issuers=(A,))).issuer == A  # one issuer: that one is meant
        with pytest.raises(IssuerNeeded):
            make(EntryFactory())  # none known: name one
        assert make(EntryFactory(default_issuer=B)).issuer == B
    assert two.jti("j", issuer="*").issuer == ANY_ISSUER
    assert two.subject("alice").issuer == ANY_ISSUER  # subject and client: every issuer unless named
    with pytest.raises(ValueError, match="not configured"):
        two.jti("j", issuer="https://typo.example")
    with pytest.raises(ValueError, match="non-empty"):
        two.family("s", issuer="")


def test_a_set_is_refused_without_iss_and_its_entries_carry_its_issuer() -> None:
    claims = {"iat": 1_000_000, "jti": "set-1", "sub_id": {"format": "opaque", "id": "s1"},
              "events": {CAEP + "session-revoked": {}}}
    for iss in (None, "", "*", 5):
        with pytest.raises(SetError) as refused:
            entries_from_set({**claims, **({} if iss is None else {"iss": iss})}, EntryFactory(), 1_000_100.0)
        assert refused.value.err == "invalid_issuer"
    [family] = entries_from_set({**claims, "iss": A}, EntryFactory(), 1_000_100.0)
    assert (family.kind, family.value, family.issuer) == (Kind.FAMILY, "s1", A)


# --- the admin endpoints, in-memory list ----------------------------------------------------------


async def test_sets_and_rfc7009_from_one_issuer_never_revoke_another_issuers_tokens(
    make_gateway: GatewayFactory, issuer: DemoIssuer, other: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway(issuers=issuers(issuer, other))
    mine, theirs = issuer.mint(jti="shared-jti"), other.mint(jti="shared-jti")
    my_session, their_session = issuer.mint(sid="shared-sid"), other.mint(sid="shared-sid")
    for tok in (mine, theirs, my_session, their_session):
        assert await status(http, gw, tok) == 200
    jwt_id = {"format": "jwt_id", "iss": issuer.issuer, "jti": "shared-jti"}
    assert await post_set(http, gw, admin_secret, sign_set(issuer, OAUTH + "token-revoked", jwt_id)) == (202, None)
    session = {"format": "opaque", "id": "shared-sid"}
    assert await post_set(http, gw, admin_secret, sign_set(issuer, CAEP + "session-revoked", session)) == (202, None)
    assert await status(http, gw, mine) == 401 and await status(http, gw, my_session) == 401
    assert await status(http, gw, theirs) == 200 and await status(http, gw, their_session) == 200

    # RFC 7009 with the first issuer's admin token: the other issuer's token is out of its reach
    admin = issuer.mint(scope="gateway:admin")
    victim = other.mint(sid="their-other-session")
    async with http.post(f"{gw.admin_url}/revocation/revoke", data={"token": victim, "token_type_hint":
                                                                    "refresh_token"}, headers=bearer(admin)) as r:
        assert r.status == 200  # RFC 7009 2.2: the same answer whatever happened
    assert await status(http, gw, victim) == 200
    # the operator's shared secret revokes it, for its own issuer
    async with http.post(f"{gw.admin_url}/revocation/revoke", data={"token": victim},
                         headers=bearer(admin_secret)) as r:
        assert r.status == 200
    assert await status(http, gw, victim) == 401
    assert (await gw.audit_records())[-1]["reason"] == "revoked_token"


async def test_an_issuers_admin_token_acts_for_that_issuer_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, other: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway(issuers=issuers(issuer, other), admin={"any_issuer_scope": "gateway:any-issuer"})
    admin = issuer.mint(scope="gateway:admin")
    for body in ({"jti": "shared-jti", "issuer": other.issuer}, {"jti": "shared-jti", "issuer": "*"},
                 {"client": "app", "issuer": "*"}):
        code, answer = await post_entry(http, gw, admin, body)
        assert code == 403 and answer["error"] == "insufficient_scope", body
        assert "any_issuer_scope" in answer["error_description"]
    assert len(gw.gateway.revocation.list) == 0

    mine, theirs = issuer.mint(sub="dora", jti="d1"), other.mint(sub="dora", jti="d1")
    code, answer = await post_entry(http, gw, admin, {"subject": "dora"})  # no issuer named: its own
    assert code == 200 and answer["revoked"]["issuer"] == issuer.issuer
    assert await status(http, gw, mine) == 401 and await status(http, gw, theirs) == 200

    their_set = sign_set(other, CAEP + "session-revoked", {"format": "opaque", "id": "s"})
    assert (await post_set(http, gw, admin, their_set))[1]["err"] == "access_denied"

    # a token with the configured any-issuer scope may write '*' entries, as the shared secret may
    super_admin = issuer.mint(scope="gateway:admin gateway:any-issuer")
    code, answer = await post_entry(http, gw, super_admin, {"jti": "d1", "issuer": "*"})
    assert code == 200 and answer["revoked"]["issuer"] == "*"
    assert await status(http, gw, theirs) == 401


async def test_the_shared_secret_must_choose_an_issuer_when_several_are_configured(
    make_gateway: GatewayFactory, issuer: DemoIssuer, other: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway(issuers=issuers(issuer, other))
    mine, theirs = issuer.mint(sid="fam"), other.mint(sid="fam")
    for body in ({"family": "fam"}, {"jti": "j"}, {"fingerprint": "ab" * 32}, {"token": mine}):
        code, answer = await post_entry(http, gw, admin_secret, body)
        assert code == 400 and "several issuers are configured" in answer["error_description"], body
    code, answer = await post_entry(http, gw, admin_secret, {"family": "fam", "issuer": "https://typo.example"})
    assert code == 400 and "not configured" in answer["error_description"]
    assert len(gw.gateway.revocation.list) == 0
    code, answer = await post_entry(http, gw, admin_secret, {"family": "fam", "issuer": other.issuer})
    assert code == 200 and answer["revoked"]["issuer"] == other.issuer
    assert await status(http, gw, theirs) == 401 and await status(http, gw, mine) == 200
    assert (await post_entry(http, gw, admin_secret, {"family": "fam", "issuer": "*"}))[0] == 200
    assert await status(http, gw, mine) == 401


async def test_a_jti_that_equals_another_tokens_fingerprint_does_not_revoke_it(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway()
    victim = issuer.mint()
    assert await status(http, gw, victim) == 200
    for value in (fingerprint(victim)[:32], fingerprint(victim)):
        assert (await post_entry(http, gw, admin_secret, {"jti": value}))[0] == 200
    assert await status(http, gw, victim) == 200
    assert (await post_entry(http, gw, admin_secret, {"fingerprint": fingerprint(victim)[:32]}))[0] == 200
    assert await status(http, gw, victim) == 401


# --- the command line ------------------------------------------------------------------------------


def _config_file(tmp_path: Path, servers: list[DemoIssuer], upstream: Any, revocation: dict[str, Any]) -> Path:
    data = base_config(servers[0], upstream, tmp_path / "cli-audit.jsonl")
    data["issuers"] = issuers(*servers)
    data["revocation"] = revocation
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_refuses_a_jti_family_or_token_without_an_issuer_when_several_are_configured(
    tmp_path: Path, issuer: DemoIssuer, other: DemoIssuer, upstream: EchoUpstream
) -> None:
    # an unreachable Redis: the command must refuse before it connects anywhere
    path = _config_file(tmp_path, [issuer, other], upstream, {"redis_url": "redis://127.0.0.1:9/0"})
    for option, value in (("--jti", "j1"), ("--family", "f1"), ("--token", issuer.mint()),
                          ("--fingerprint", "ab" * 32)):
        result = CliRunner().invoke(cli_main, ["revoke", "--config", str(path), option, value])
        assert result.exit_code == 1, result.output
        assert "several issuers are configured" in result.output and "--issuer" in result.output
        assert issuer.issuer in result.output and other.issuer in result.output
        assert "Traceback" not in result.output
    unknown = CliRunner().invoke(cli_main, ["revoke", "--config", str(path), "--jti", "j", "--issuer", "nope"])
    assert unknown.exit_code == 1 and "not configured" in unknown.output


async def test_cli_revokes_for_the_named_issuer_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, other: DemoIssuer, upstream: EchoUpstream,
    http: aiohttp.ClientSession,
    redis_url: str, prefix: str, tmp_path: Path,
) -> None:
    revocation = {"redis_url": redis_url, "key_prefix": prefix}
    gw = await make_gateway(issuers=issuers(issuer, other), revocation=revocation)
    path = _config_file(tmp_path, [issuer, other], upstream, revocation)
    mine, theirs = issuer.mint(jti="cli-jti"), other.mint(jti="cli-jti")

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "revoke", "--config", str(path), *args, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode() + err.decode()

    code, output = await run("--jti", "cli-jti")
    assert code == 1 and "several issuers are configured" in output
    code, output = await run("--jti", "cli-jti", "--issuer", issuer.issuer)
    assert code == 0, output
    assert f"revoked jti cli-jti (issuer {issuer.issuer})" in output
    await wait_status(http, gw, mine, 401)
    assert await status(http, gw, theirs) == 200
    code, output = await run("--jti", "cli-jti", "--issuer", "*")
    assert code == 0 and "(every issuer)" in output
    await wait_status(http, gw, theirs, 401)


# --- the Python API and the shared list in Redis ----------------------------------------------------


async def test_python_api_takes_the_issuer_the_same_way(
    make_gateway: GatewayFactory, issuer: DemoIssuer, other: DemoIssuer, http: aiohttp.ClientSession, redis_url: str,
    prefix: str,
) -> None:
    gw = await make_gateway(issuers=issuers(issuer, other), revocation={"redis_url": redis_url, "key_prefix": prefix})
    redis = Redis.from_url(redis_url)
    try:
        async with Revoker.from_config(gw.gateway.config) as revoker:
            with pytest.raises(IssuerNeeded):
                await revoker.revoke_family("api-fam")
            with pytest.raises(ValueError, match="not configured"):
                await revoker.revoke_jti("j", issuer="https://typo.example")
        with SyncRevoker(redis_url, key_prefix=prefix) as plain, pytest.raises(IssuerNeeded):
            plain.revoke_jti("j")
        assert await redis.xlen(f"{prefix}stream") == 0  # nothing was written
        mine, theirs = issuer.mint(sid="api-fam"), other.mint(sid="api-fam")
        async with Revoker(redis_url, key_prefix=prefix, issuer=issuer.issuer) as revoker:  # an AS speaks for itself
            written = await revoker.revoke_family("api-fam", reason="refresh token reuse")
        assert written.issuer == issuer.issuer
        await wait_status(http, gw, mine, 401)
        assert await status(http, gw, theirs) == 200
        keys = sorted([key async for key in redis.scan_iter(match=f"{prefix}v2:*")])
        assert keys == [f"{prefix}v2:family:{issuer.issuer}|api-fam".encode()]
    finally:
        await redis.aclose()


async def test_redis_replicas_scope_entries_by_issuer_and_still_read_schema1_entries(
    make_gateway: GatewayFactory, issuer: DemoIssuer, other: DemoIssuer, http: aiohttp.ClientSession, redis_url: str,
    prefix: str,
    admin_secret: str,
) -> None:
    config = {"issuers": issuers(issuer, other), "revocation": {"redis_url": redis_url, "key_prefix": prefix}}
    a = await make_gateway(**config)
    b = await make_gateway(**config)
    mine, theirs = issuer.mint(jti="redis-jti"), other.mint(jti="redis-jti")
    session = {"format": "opaque", "id": "redis-sid"}
    assert await post_set(http, a, admin_secret,
                          sign_set(issuer, OAUTH + "token-revoked", {"format": "jwt_id", "jti": "redis-jti"})) == \
        (202, None)
    assert await post_set(http, a, admin_secret, sign_set(issuer, CAEP + "session-revoked", session)) == (202, None)
    my_session, their_session = issuer.mint(sid="redis-sid"), other.mint(sid="redis-sid")
    for gw in (a, b):
        await wait_status(http, gw, mine, 401)
        await wait_status(http, gw, my_session, 401)
        assert await status(http, gw, theirs) == 200 and await status(http, gw, their_session) == 200

    # a writer of schema 1 (an authorization server not upgraded yet): its entries keep their meaning
    redis = Redis.from_url(redis_url)
    try:
        legacy = orjson.dumps({"kind": "token", "value": "legacy-jti", "expires_at": time.time() + 600,
                               "issuer": issuer.issuer, "not_before": None, "reason": "", "created_at": time.time()})
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{prefix}token:legacy-jti", legacy, ex=600)
            pipe.xadd(f"{prefix}stream", {"v": "1", "entry": legacy})
            await pipe.execute()
    finally:
        await redis.aclose()
    old_mine, old_theirs = issuer.mint(jti="legacy-jti"), other.mint(jti="legacy-jti")
    for gw in (a, b):
        await wait_status(http, gw, old_mine, 401)
        await wait_status(http, gw, old_theirs, 401)  # schema 1 matched every issuer, and still does
    late = await make_gateway(**config)  # loads both layouts from the keys
    for tok, wanted in ((mine, 401), (theirs, 200), (my_session, 401), (their_session, 200), (old_theirs, 401)):
        assert await status(http, late, tok) == wanted


def test_parse_admin_any_issuer_scope() -> None:
    text = yaml.safe_dump({"upstreams": {"u": {"url": "http://127.0.0.1:9"}},
                           "routes": [{"name": "r", "path": "/x", "upstream": "u", "auth": "none"}],
                           "admin": {"any_issuer_scope": "gateway:super"}})
    assert parse_config(text).admin.any_issuer_scope == "gateway:super"
    assert parse_config(text.replace("any_issuer_scope: gateway:super", "scope: gateway:admin")) \
        .admin.any_issuer_scope is None
