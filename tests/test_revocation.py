"""Revocation list semantics, the Redis schema's pure parts, SET event mapping, and the in-memory intake.

No Redis here: tests/test_revocation_redis.py runs the shared list against a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main as cli_main
from gateway.config import RevocationConfig
from gateway.demo import DemoIssuer, EchoUpstream, SigningKey
from gateway.reasons import Reason
from gateway.revocation import ANY_ISSUER, Entry, EntryFactory, Kind, Match, RevocationList, Schema
from gateway.revocation.entry_factory import EXPIRY_MARGIN
from gateway.revocation.intake.set_events import CAEP, OAUTH, RISC, SetError, entries_from_set
from gateway.revocation.redis_store import RedisStore
from gateway.revocation.schema import (
    decode,
    encode,
    merge,
    stream_id,
    ttl_seconds,
    write_args,
)
from gateway.tokens.jwks import parse_jwks
from gateway.tokens.token import ValidatedToken, fingerprint
from tests.helpers import AUDIENCE, GatewayFactory, LoopTurns, RunningGateway, base_config, bearer

REPO = Path(__file__).resolve().parent.parent

ISS = "https://as.example"
FAR = time.time() + 3600


def token(raw: str = "raw-token", iss: str = ISS, sub: str | None = "alice", client: str | None = "app",
          jti: str | None = "j1", iat: float | None = None, **claims: object) -> ValidatedToken:
    return ValidatedToken(
        issuer=iss, subject=sub, client_id=client, scopes=frozenset(), expires_at=FAR, fingerprint=fingerprint(raw),
        jti=jti, issued_at=time.time() - 10 if iat is None else iat, claims=dict(claims),
    )


# --- the local list --------------------------------------------------------------------------------


def test_schema1_token_entries_match_jti_full_fingerprint_and_audit_prefix_of_any_issuer() -> None:
    for value in ("j1", fingerprint("raw-token"), fingerprint("raw-token")[:32]):
        rl = RevocationList()
        rl.add(Entry(Kind.TOKEN, value, FAR))  # no match: a schema-1 entry, read as it was meant
        assert rl.check(token()) is Reason.REVOKED_TOKEN
        assert rl.check(token(iss="https://other.example")) is Reason.REVOKED_TOKEN
        assert rl.check(token(raw="other", jti="j2")) is None


def test_token_entries_match_their_own_namespace_and_issuer() -> None:
    factory = EntryFactory(issuers=(ISS, "https://other.example"))
    for entry in (factory.jti("j1", issuer=ISS), factory.fingerprint(fingerprint("raw-token"), issuer=ISS),
                  factory.fingerprint(fingerprint("raw-token")[:32], issuer=ISS)):
        rl = RevocationList()
        rl.add(entry)
        assert rl.check(token()) is Reason.REVOKED_TOKEN
        assert rl.check(token(iss="https://other.example")) is None
        assert rl.check(token(raw="other", jti="j2")) is None


def test_family_entry_matches_the_family_claim_only() -> None:
    rl = RevocationList(family_claim="sid")
    rl.add(Entry(Kind.FAMILY, "s1", FAR))
    assert rl.check(token(sid="s1")) is Reason.REVOKED_FAMILY
    assert rl.check(token(sid="s2")) is None
    assert rl.check(token()) is None
    other_claim = RevocationList(family_claim="rfid")
    other_claim.add(Entry(Kind.FAMILY, "s1", FAR))
    assert other_claim.check(token(sid="s1")) is None
    assert other_claim.check(token(rfid="s1")) is Reason.REVOKED_FAMILY


def test_subject_entry_revokes_tokens_issued_before_the_cutoff_per_issuer() -> None:
    now = time.time()
    rl = RevocationList()
    rl.add(Entry(Kind.SUBJECT, "alice", FAR, issuer=ISS, not_before=now))
    assert rl.check(token(iat=now - 5)) is Reason.REVOKED_SUBJECT
    assert rl.check(token(iat=now + 1)) is None
    assert rl.check(token(iat=now - 5, iss="https://other.example")) is None
    assert rl.check(token(iat=now - 5, sub="bob")) is None
    any_issuer = RevocationList()
    any_issuer.add(Entry(Kind.SUBJECT, "alice", FAR, issuer=ANY_ISSUER, not_before=now))
    assert any_issuer.check(token(iat=now - 5, iss="https://other.example")) is Reason.REVOKED_SUBJECT


def test_subject_entry_treats_a_token_without_iat_as_old() -> None:
    rl = RevocationList()
    rl.add(Entry(Kind.SUBJECT, "alice", FAR, not_before=time.time()))
    unknown_age = ValidatedToken(ISS, "alice", None, frozenset(), FAR, fingerprint("x"))
    assert rl.check(unknown_age) is Reason.REVOKED_SUBJECT


def test_client_entry_and_later_cutoff_wins() -> None:
    now = time.time()
    rl = RevocationList()
    rl.add(Entry(Kind.CLIENT, "app", FAR, not_before=now - 100))
    rl.add(Entry(Kind.CLIENT, "app", FAR - 10, not_before=now))
    rl.add(Entry(Kind.CLIENT, "app", FAR - 20, not_before=now - 200))  # an older cut-off never weakens it
    assert rl.check(token(iat=now - 50)) is Reason.REVOKED_CLIENT
    assert rl.check(token(iat=now + 1)) is None
    assert rl.check(token(iat=now - 50, client="other")) is None


def test_expired_entries_stop_matching_and_are_swept() -> None:
    now = time.time()
    rl = RevocationList()
    rl.add(Entry(Kind.TOKEN, "j1", now - 1))
    rl.add(Entry(Kind.FAMILY, "s1", now + 100))
    rl.add(Entry(Kind.SUBJECT, "alice", now - 1, not_before=now))
    assert rl.check(token(sid="zz")) is None
    assert len(rl) == 3
    assert rl.sweep(now) == 2
    assert len(rl) == 1
    assert rl.check(token(sid="s1")) is Reason.REVOKED_FAMILY


def test_matcher_for_selects_cached_tokens_to_evict() -> None:
    rl = RevocationList()
    matches = rl.matcher_for(Entry(Kind.FAMILY, "s1", FAR))
    assert matches(token(sid="s1"))
    assert not matches(token(sid="s2"))


def test_a_tiny_staleness_budget_fails_closed_before_the_first_sync() -> None:
    store = RedisStore(RevocationConfig(redis_url="redis://127.0.0.1:1/0", max_staleness=1.0))
    assert not store.ready
    assert store.check(token()) is Reason.REVOCATION_UNAVAILABLE
    store.list.add(Entry(Kind.TOKEN, "j1", FAR))
    assert store.check(token()) is Reason.REVOKED_TOKEN  # a known revocation keeps its own reason


# --- the schema ----------------------------------------------------------------------------------


def test_key_names() -> None:
    schema = Schema.for_prefix("gateway:revoked:")
    jti = Entry(Kind.TOKEN, "j1", FAR, ISS, match=Match.JTI)
    assert schema.entry_key(jti) == f"gateway:revoked:v2:jti:{ISS}|j1"
    assert schema.entry_key(Entry(Kind.TOKEN, "AB" * 16, FAR, match=Match.FINGERPRINT)) == \
        f"gateway:revoked:v2:fingerprint:*|{'ab' * 16}"
    assert schema.entry_key(Entry(Kind.FAMILY, "s1", FAR, ISS)) == f"gateway:revoked:v2:family:{ISS}|s1"
    assert schema.entry_key(Entry(Kind.SUBJECT, "alice", FAR, issuer=ISS)) == \
        f"gateway:revoked:v2:subject:{ISS}|alice"
    assert schema.entry_key(Entry(Kind.SUBJECT, "alice", FAR)) == "gateway:revoked:v2:subject:*|alice"
    assert schema.entry_key(Entry(Kind.CLIENT, "app", FAR)) == "gateway:revoked:v2:client:*|app"
    # the issuer's "|" and "%" are escaped: one key name, one (issuer, value) pair
    assert schema.entry_key(Entry(Kind.FAMILY, "x|y", FAR, "https://a")) != \
        schema.entry_key(Entry(Kind.FAMILY, "y", FAR, "https://a|x"))
    assert schema.entry_key(Entry(Kind.FAMILY, "y", FAR, "https://a|x%")) == \
        "gateway:revoked:v2:family:https://a%7Cx%25|y"
    assert schema.stream_key == "gateway:revoked:stream"
    cluster = Schema.for_prefix("gateway:revoked:", cluster=True)
    assert cluster.stream_key == "{gateway:revoked:}stream"
    assert cluster.entry_key(jti) == f"{{gateway:revoked:}}v2:jti:{ISS}|j1"
    assert Schema.for_prefix("{gw}:revoked:", cluster=True).prefix == "{gw}:revoked:"
    assert Schema.for_prefix("a*b[c]:").scan_pattern() == "a\\*b\\[c\\]:*"


def test_values_round_trip_and_merge_keeps_the_stronger_entry() -> None:
    entry = Entry(Kind.SUBJECT, "alice", FAR, ISS, 1000.0, "why", 999.0)
    assert decode(encode(entry)) == entry
    with pytest.raises(ValueError):
        decode(b"[1, 2]")
    with pytest.raises(ValueError):
        decode(b"{not json")
    older = Entry(Kind.SUBJECT, "alice", FAR + 100, ISS, 2000.0)
    merged = merge(older, entry)
    assert (merged.expires_at, merged.not_before, merged.reason) == (FAR + 100, 2000.0, "why")
    assert merge(None, entry) is entry
    keys, args = write_args(Schema(), encode(older), entry, maxlen=50, now=FAR - 10)
    assert keys == [f"gateway:revoked:v2:subject:{ISS}|alice", "gateway:revoked:stream"]
    assert args[0] == encode(older) and isinstance(args[1], bytes) and decode(args[1]).expires_at == FAR + 100
    assert args[2] == 110 and args[3] == 50


def test_ttl_and_stream_ids() -> None:
    assert ttl_seconds(Entry(Kind.TOKEN, "j", 100.2), now=50.0) == 51
    assert ttl_seconds(Entry(Kind.TOKEN, "j", 10.0), now=50.0) == 1
    assert stream_id(b"1700000000000-3") < stream_id("1700000000000-10") < stream_id("1700000000001-0")


def test_entry_factory_ttl_policy() -> None:
    now = 1_000_000.0
    factory = EntryFactory(default_ttl=3600, lifetimes={ISS: 600, "https://long.example": 7200})
    assert factory.jti("j", issuer=ISS, now=now).expires_at == now + 600 + EXPIRY_MARGIN
    assert factory.jti("j", issuer="*", now=now).expires_at == now + 7200 + EXPIRY_MARGIN  # any: the longest
    assert factory.family("s", issuer=ISS, ttl=30, now=now).expires_at == now + 30 + EXPIRY_MARGIN
    past = factory.subject("alice", issuer=ISS, before=now - 100, now=now)
    assert (past.not_before, past.expires_at) == (now - 100, now + 500 + EXPIRY_MARGIN)
    long_ago = factory.subject("alice", issuer=ISS, before=now - 10_000, now=now)
    assert long_ago.expires_at == now + EXPIRY_MARGIN
    iso = factory.client("app", before="1970-01-12T13:46:40Z", now=now)
    assert iso.not_before == now and iso.kind is Kind.CLIENT


def test_revoke_token_hashes_locally_and_uses_the_jwt_exp() -> None:
    now = time.time()
    raw = jwt.encode({"exp": int(now) + 120, "sub": "alice"}, "k" * 32, algorithm="HS256")
    entry = EntryFactory(default_ttl=86400).token(raw, issuer=ISS, now=now)
    assert entry.value == fingerprint(raw)
    assert raw not in encode(entry).decode()
    assert entry.expires_at == int(now) + 120 + EXPIRY_MARGIN
    capped = EntryFactory(default_ttl=60).token(jwt.encode({"exp": int(now) + 9999}, "k" * 32), issuer=ISS, now=now)
    assert capped.expires_at == now + 60 + EXPIRY_MARGIN


def test_entry_factory_refuses_bad_input() -> None:
    factory = EntryFactory()
    with pytest.raises(ValueError, match="fingerprint"):
        factory.fingerprint("not-hex")
    assert factory.fingerprint("AB" * 16, issuer=ISS).value == "ab" * 16
    with pytest.raises(ValueError):
        factory.build("jti", "")
    with pytest.raises(ValueError, match="before"):
        factory.build("family", "s1", before=5)
    with pytest.raises(ValueError, match="unknown"):
        factory.build("device", "d1")
    with pytest.raises(ValueError, match="zone"):
        factory.build("subject", "alice", before="2024-01-01T00:00:00")


# --- security events -------------------------------------------------------------------------------


def set_claims(event_type: str, event: dict[str, Any] | None = None, **claims: object) -> dict[str, Any]:
    return {"iss": ISS, "iat": 1_000_000, "jti": "set-1", "events": {event_type: event or {}}, **claims}


def test_session_revoked_maps_to_family_or_subject() -> None:
    factory = EntryFactory()
    now = 1_000_100.0
    [family] = entries_from_set(set_claims(CAEP + "session-revoked", sub_id={"format": "opaque", "id": "s1"}),
                                factory, now)
    assert (family.kind, family.value, family.issuer) == (Kind.FAMILY, "s1", ISS)
    complex_id = {"format": "complex", "session": {"format": "opaque", "id": "s2"},
                  "user": {"format": "iss_sub", "iss": ISS, "sub": "alice"}}
    [family] = entries_from_set(set_claims(CAEP + "session-revoked", sub_id=complex_id), factory, now)
    assert family.value == "s2"
    [subject] = entries_from_set(
        set_claims(RISC + "sessions-revoked", {"subject": {"subject_type": "iss-sub", "iss": ISS, "sub": "bob"}}),
        factory, now)
    assert (subject.kind, subject.value, subject.not_before) == (Kind.SUBJECT, "bob", 1_000_000)


def test_token_and_credential_events() -> None:
    factory = EntryFactory()
    now = 1_000_100.0
    [tok] = entries_from_set(set_claims(OAUTH + "token-revoked", sub_id={"format": "jwt_id", "iss": ISS, "jti": "j9"}),
                             factory, now)
    assert (tok.kind, tok.value) == (Kind.TOKEN, "j9")
    [sub] = entries_from_set(
        set_claims(CAEP + "credential-change", {"change_type": "update", "event_timestamp": 1_000_050},
                   sub_id={"format": "iss_sub", "iss": ISS, "sub": "alice"}), factory, now)
    assert (sub.kind, sub.value, sub.issuer, sub.not_before) == (Kind.SUBJECT, "alice", ISS, 1_000_050.0)
    in_ms = set_claims(RISC + "credential-compromise", {"event_timestamp": 1_700_000_050_000}, sub="bob")
    [sub] = entries_from_set(in_ms, factory, 1_700_000_100.0)
    assert (sub.value, sub.not_before) == ("bob", 1_700_000_050.0)
    created = set_claims(CAEP + "credential-change", {"change_type": "create"}, sub="alice")
    assert entries_from_set(created, factory, now) == []
    ignored = set_claims("https://schemas.openid.net/secevent/caep/event-type/device-compliance-change", sub="x")
    assert entries_from_set(ignored, factory, now) == []
    with pytest.raises(SetError) as refused:
        entries_from_set(set_claims(RISC + "account-disabled", sub_id={"format": "email", "email": "a@b.c"}),
                         factory, now)
    assert refused.value.err == "invalid_request" and "email" in refused.value.description


# --- intake and CLI with the in-memory list ----------------------------------------------------------


@pytest.fixture
def admin_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", secret)
    return secret


async def test_memory_store_revokes_through_the_admin_json_endpoint(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway()
    tok = issuer.mint(sid="sess-1")
    async with http.get(f"{gw.url}/orders", headers=bearer(tok)) as resp:
        assert resp.status == 200
    async with http.post(f"{gw.admin_url}/revocation/entries", json={"family": "sess-1", "reason": "test"},
                         headers=bearer(admin_secret)) as resp:
        assert resp.status == 200
        assert (await resp.json())["revoked"]["kind"] == "family"
    async with http.get(f"{gw.url}/orders", headers=bearer(tok)) as resp:
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await gw.audit_records())[-1]["reason"] == "revoked_family"
    async with http.post(f"{gw.admin_url}/revocation/entries", json={"family": "a", "jti": "b"},
                         headers=bearer(admin_secret)) as resp:
        assert resp.status == 400


async def test_a_short_shared_secret_is_not_accepted(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", "short")
    gw = await make_gateway()
    async with http.post(f"{gw.admin_url}/revocation/revoke", data={"token": "x"}, headers=bearer("short")) as resp:
        assert resp.status == 401


def test_cli_without_redis_exits_2_and_says_why(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "upstreams: {u: {url: 'http://127.0.0.1:9'}}\n"
        "routes: [{name: r, path: /x, upstream: u, auth: none}]\n"
    )
    result = CliRunner().invoke(cli_main, ["revoke", "--config", str(config), "--jti", "j1"])
    assert result.exit_code == 2
    assert "in its own memory" in result.output and "--admin-url" in result.output
    both = CliRunner().invoke(cli_main, ["revoke", "--config", str(config), "--jti", "j1", "--family", "f"])
    assert both.exit_code == 1


async def test_the_memory_store_sweeps_expired_entries_in_the_background() -> None:
    import asyncio
    import time

    from gateway.revocation import Entry, Kind, MemoryStore

    store = MemoryStore(sweep_interval=0.05)
    await store.start()
    try:
        await store.revoke(Entry(Kind.FAMILY, "gone-soon", expires_at=time.time() + 0.1))
        await store.revoke(Entry(Kind.FAMILY, "stays", expires_at=time.time() + 60))
        assert len(store.list) == 2
        await asyncio.sleep(0.3)
        assert len(store.list) == 1
    finally:
        await store.stop()


async def test_revocations_evict_cached_tokens_without_stalling_the_loop(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    import asyncio
    import time

    from gateway.revocation import Entry, Kind
    from gateway.tokens.token import ValidatedToken, cache_key, fingerprint

    gw = await make_gateway()
    cache = gw.pipeline.validator.cache
    family_token, lone_token = issuer.mint(sid="fam-1"), issuer.mint(sid="fam-2")
    for token in (family_token, lone_token):
        async with http.get(f"{gw.url}/orders", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    for n in range(50_000):  # one identity each: the cache keeps one entry per token identity
        cache.put(f"filler-{n}", ValidatedToken("x", "s", "c", frozenset(), time.time() + 600, f"f{n}"))

    issuer_name = issuer.issuer

    async def evicted(raw: str) -> bool:
        for _ in range(200):
            if cache.get(cache_key(raw)) is None:
                return True
            await asyncio.sleep(0.01)
        return False

    await gw.gateway.revocation.revoke(
        Entry(Kind.TOKEN, fingerprint(lone_token), time.time() + 600, issuer_name, match=Match.FINGERPRINT))
    assert await evicted(lone_token)

    # a family is found by a background scan that yields to the loop between chunks
    async with LoopTurns() as turns:
        await gw.gateway.revocation.revoke(Entry(Kind.FAMILY, "fam-1", time.time() + 600, issuer_name))
        assert cache.get(cache_key(family_token)) is not None  # not scanned synchronously
        assert await evicted(family_token)
    assert turns.count > 5
    assert len(cache) == 50_000


# --- admin authentication (finding 5), the JSON endpoint's input (18), SET issuers (8), keys (13) ---------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_admin_credentials_that_are_not_jwts_are_never_introspected(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", "short")  # too short: ignored, so it is just a wrong credential
    gw = await make_gateway(issuers=[{
        "issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s",
        "introspection": {"endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway",
                          "client_secret": "gateway-secret"},
    }])
    opaque_admin = issuer.mint_opaque(scope="gateway:admin")
    for credential in ("short", "a-mistyped-admin-secret-0123456789", opaque_admin):
        async with http.post(f"{gw.admin_url}/revocation/entries", json={"jti": "j"},
                             headers=bearer(credential)) as resp:
            assert resp.status == 401
    assert issuer.calls["introspect"] == 0  # no credential went to the authorization server
    async with http.post(f"{gw.admin_url}/revocation/entries", json={"jti": "j"},
                         headers=bearer(issuer.mint(scope="gateway:admin"))) as resp:
        assert resp.status == 200  # a JWT admin token still works


async def test_admin_token_and_set_checks_answer_503_while_the_issuers_keys_are_down(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    down = DemoIssuer(audience=AUDIENCE, issuer=f"http://127.0.0.1:{_closed_port()}")  # never started
    gw = await make_gateway(issuers=[
        {"issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s"},
        {"issuer": down.issuer, "audiences": [AUDIENCE], "jwks_min_refresh_interval": "100ms"},
    ])
    async with http.post(f"{gw.admin_url}/revocation/entries", json={"jti": "j"},
                         headers=bearer(down.mint(scope="gateway:admin"))) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        assert (await resp.json())["error"] == "temporarily_unavailable"
    async with http.post(f"{gw.admin_url}/revocation/entries", json={"jti": "j"},
                         headers=bearer(issuer.mint(scope="gateway:admin", aud="https://other.example"))) as resp:
        assert resp.status == 401  # a bad token is still a 401
    key = down.keys[0]
    set_jwt = jwt.encode(set_claims(CAEP + "session-revoked", iss=down.issuer, sub_id={"format": "opaque", "id": "s"}),
                         key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "secevent+jwt"})
    async with http.post(f"{gw.admin_url}/revocation/events", data=set_jwt,
                         headers={**bearer(admin_secret), "Content-Type": "application/secevent+jwt"}) as resp:
        assert resp.status == 503  # not a 400: the transmitter retries once the keys are back


async def test_the_json_endpoint_refuses_a_token_that_is_not_a_string(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway()
    for body in ({"token": 123}, {"token": ["a.b.c"]}, {"token": ""}, {"fingerprint": 5}):
        async with http.post(f"{gw.admin_url}/revocation/entries", json=body, headers=bearer(admin_secret)) as resp:
            assert resp.status == 400, body
            answer = await resp.json()
            assert answer["error"] == "invalid_request" and "non-empty string" in answer["error_description"]


def test_a_set_cannot_revoke_another_issuers_subjects_or_tokens() -> None:
    factory = EntryFactory()
    other = "https://other-as.example"
    for sub_id in (
        {"format": "iss_sub", "iss": other, "sub": "alice"},
        {"format": "complex", "user": {"format": "iss_sub", "iss": other, "sub": "alice"}},
        {"format": "jwt_id", "iss": other, "jti": "j1"},
    ):
        for event in (CAEP + "credential-change", CAEP + "session-revoked", OAUTH + "token-revoked"):
            with pytest.raises(SetError) as refused:
                entries_from_set(set_claims(event, sub_id=sub_id), factory, 1_000_100.0)
            assert refused.value.err == "invalid_issuer" and other in refused.value.description
    [own] = entries_from_set(set_claims(CAEP + "credential-change", sub_id={"format": "iss_sub", "iss": ISS,
                                                                           "sub": "alice"}), factory, 1_000_100.0)
    assert (own.kind, own.value, own.issuer) == (Kind.SUBJECT, "alice", ISS)
    [plain] = entries_from_set(set_claims(CAEP + "credential-change", sub_id={"format": "opaque", "id": "bob"}),
                               factory, 1_000_100.0)
    assert plain.issuer == ISS  # the SET's issuer is recorded on the subject entries it makes


def test_a_jwk_that_declares_its_alg_verifies_that_alg_only() -> None:
    rsa = SigningKey.generate("RS256").public_jwk()
    undeclared = {k: v for k, v in rsa.items() if k != "alg"}
    keys = parse_jwks({"keys": [rsa, {**undeclared, "kid": "bare"}, SigningKey.generate("ES256").public_jwk()]})
    declared, bare, ec = keys[rsa["kid"]], keys["bare"], next(k for name, k in keys.items() if name.startswith("es"))
    assert declared.verifies("RS256") and not declared.verifies("PS256") and not declared.verifies("RS512")
    assert bare.verifies("RS256") and bare.verifies("PS256") and bare.verifies("RS512") and not bare.verifies("ES256")
    assert ec.verifies("ES256") and not ec.verifies("RS256")


async def test_an_rs256_key_does_not_verify_ps256_tokens_or_sets(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, admin_secret: str
) -> None:
    gw = await make_gateway(issuers=[{"issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s",
                                      "algorithms": ["RS256", "PS256", "ES256"]}])
    rsa = issuer.keys[0]  # its JWK says "alg": "RS256"
    assert rsa.public_jwk()["alg"] == "RS256"
    pss = jwt.encode(issuer.claims(scope="orders:read"), rsa.private, algorithm="PS256",
                     headers={"kid": rsa.kid, "typ": "at+jwt"})
    async with http.get(f"{gw.url}/orders", headers=bearer(pss)) as resp:
        assert resp.status == 401
    assert (await gw.audit_records())[-1]["reason"] == "disallowed_algorithm"
    async with http.get(f"{gw.url}/orders", headers=bearer(issuer.mint())) as resp:
        assert resp.status == 200
    claims = set_claims(CAEP + "session-revoked", iss=issuer.issuer, iat=int(time.time()),
                        sub_id={"format": "opaque", "id": "pss-session"})
    headers = {**bearer(admin_secret), "Content-Type": "application/secevent+jwt"}
    set_pss = jwt.encode(claims, rsa.private, algorithm="PS256", headers={"kid": rsa.kid, "typ": "secevent+jwt"})
    async with http.post(f"{gw.admin_url}/revocation/events", data=set_pss, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["err"] == "invalid_key"
    # the SET goes through the access tokens' verification: its time claims must be numbers too
    string_iat = jwt.encode({**claims, "iat": str(int(time.time()))}, rsa.private, algorithm="RS256",
                            headers={"kid": rsa.kid, "typ": "secevent+jwt"})
    async with http.post(f"{gw.admin_url}/revocation/events", data=string_iat, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["err"] == "invalid_request"
    set_rs = jwt.encode(claims, rsa.private, algorithm="RS256", headers={"kid": rsa.kid, "typ": "secevent+jwt"})
    async with http.post(f"{gw.admin_url}/revocation/events", data=set_rs, headers=headers) as resp:
        assert resp.status == 202


# --- gateway revoke --token --admin-url (finding 14) ------------------------------------------------------


class RecordingRelay:
    """A TCP relay on 127.0.0.1 that keeps every byte a client sent through it."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.sent = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            while data := await src.read(65536):
                if record:
                    self.sent += data
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False), return_exceptions=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_cli_posts_a_fingerprint_to_the_admin_port_never_the_token(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession,
    admin_secret: str,
    tmp_path: Path,
) -> None:
    gw = await make_gateway()
    relay = RecordingRelay(gw.port("admin"))
    await relay.start()
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(base_config(issuer, upstream, tmp_path / "cli-audit.jsonl")))
    tok = issuer.mint(ttl=120)
    assert await _status(http, gw, tok) == 200
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "revoke", "--config", str(path), "--token", "-",
            "--admin-url", f"http://127.0.0.1:{relay.port}", cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(tok.encode() + b"\n"), 30)
    finally:
        await relay.stop()
    assert proc.returncode == 0, err.decode()
    sent = bytes(relay.sent)
    assert tok.encode() not in sent and tok.split(".")[2].encode() not in sent
    body = json.loads(sent.partition(b"\r\n\r\n")[2])
    assert body["fingerprint"] == fingerprint(tok) and "token" not in body
    assert 100 <= body["ttl"] <= 120  # the token's own exp, computed on the responder's machine
    assert tok not in out.decode() + err.decode()
    assert await _status(http, gw, tok) == 401
    assert (await gw.audit_records())[-1]["reason"] == "revoked_token"


async def _status(http: aiohttp.ClientSession, gw: RunningGateway, token: str) -> int:
    async with http.get(f"{gw.url}/orders", headers=bearer(token)) as resp:
        await resp.read()
        return resp.status


async def test_a_burst_of_revocations_is_one_lookup_per_cached_token(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    import asyncio
    import time

    from gateway.revocation import Entry, Kind
    from gateway.tokens.token import ValidatedToken

    gw = await make_gateway()
    cache = gw.pipeline.validator.cache
    for n in range(2_000):
        cache.put(f"t{n}", ValidatedToken("x", f"user{n}", "c", frozenset(), time.time() + 600, f"t{n}",
                                          claims={"sid": f"s{n}"}))
    started = time.perf_counter()
    for n in range(5_000):  # one stream read's worth of family revocations, all applied at once
        gw.gateway.revocation.apply(Entry(Kind.FAMILY, f"s{n}", time.time() + 600))
    for _ in range(500):
        if len(cache) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(cache) == 0
    assert time.perf_counter() - started < 5  # 2,000 tokens x 5,000 matchers one by one took minutes


async def test_a_large_list_is_swept_in_chunks_without_stalling_the_loop() -> None:
    import time

    from gateway.revocation import Entry, Kind, RevocationList

    now = time.time()
    rl = RevocationList()
    for n in range(60_000):
        rl.add(Entry(Kind.TOKEN, f"j{n}", expires_at=now - 1 if n % 2 else now + 600))
        rl.add(Entry(Kind.SUBJECT, f"s{n}", expires_at=now - 1 if n % 2 else now + 600, not_before=now))
    async with LoopTurns() as turns:
        dropped = await rl.sweep_gradually(chunk=5_000)
    assert dropped == 60_000 and len(rl) == 60_000
    assert turns.count >= 20  # the loop ran between chunks
