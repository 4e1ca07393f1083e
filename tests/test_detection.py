"""Live detection: a token replayed from a second network is flagged, counted, reported and cut off."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.audit.record import Exchange
from gateway.config import parse_config
from gateway.decision import Decision
from gateway.demo import DemoIssuer
from gateway.detection import Detector
from gateway.detection.places import distance_km, impossible_travel, network_of
from gateway.reasons import Reason
from gateway.revocation.entries import Entry, Kind, Match
from gateway.revocation.entry_factory import EXPIRY_MARGIN
from gateway.revocation.memory_store import MemoryStore
from gateway.tokens.token import ValidatedToken, fingerprint
from tests.audit_traffic import AWAY_IP, HOME_IP, TRUSTED, assert_no_raw_token, call, mint
from tests.helpers import GatewayFactory


class Webhook:
    """A real HTTP receiver on 127.0.0.1; the first ``fail_first`` deliveries get a 503."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.notices: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.delay = delay
        self.received = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.notices.append(await request.json())
        self.received.set()
        return web.Response(status=204)


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook(fail_first=1)
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield hook
    await runner.cleanup()


async def suspicious_count(http: aiohttp.ClientSession, admin_url: str, reason: str) -> float:
    async with http.get(f"{admin_url}/metrics") as response:
        text = await response.text()
    match = re.search(rf'^gateway_suspicious_token_use_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_second_network_is_flagged_counted_reported_and_cut_off(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, webhook: Webhook
) -> None:
    gw = await make_gateway(**TRUSTED, detection={
        "new_network_after_first_use": True, "window": "10m",
        "on_detect": ["audit", "metric", "webhook", "revoke_family"], "webhook_url": webhook.url,
    })
    before = await suspicious_count(http, gw.admin_url, "new_network")
    token = mint(issuer, "alice", "orders:read", "family-det-1")
    sibling = mint(issuer, "alice", "orders:read", "family-det-1")
    assert await call(http, gw, "GET", "/orders", token, HOME_IP) == 200
    assert await call(http, gw, "GET", "/orders", token, "198.51.100.200") == 200  # same /24: not new
    started = time.monotonic()
    assert await call(http, gw, "GET", "/orders", token, AWAY_IP) == 200  # this one is let through, but flagged
    assert time.monotonic() - started < 1.0

    records = await gw.audit_records()
    assert [r.get("suspicious") for r in records] == [None, None, ["new_network"]]
    assert await suspicious_count(http, gw.admin_url, "new_network") == before + 1

    await asyncio.wait_for(webhook.received.wait(), 5)
    assert webhook.attempts == 2  # the first delivery got a 503 and was retried
    notice = webhook.notices[0]
    assert notice["type"] == "suspicious_token_use" and notice["reasons"] == ["new_network"]
    assert notice["family"] == "family-det-1" and notice["sub"] == "alice"
    assert (notice["family_kind"], notice["family_claim"]) == ("sid", "sid")
    assert notice["client_ip"] == AWAY_IP and notice["first_network"] == "198.51.100.0/24"
    assert notice["jti"] == token.jti and notice["token_fingerprint"] == token.fingerprint
    assert notice["actions"] == ["revoke_family"]
    assert_no_raw_token(str(notice), token, sibling)

    # revoke_family: every token of the family now fails, from anywhere
    deadline = time.monotonic() + 5
    while await call(http, gw, "GET", "/orders", sibling, HOME_IP) != 401:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert await call(http, gw, "GET", "/orders", token, HOME_IP) == 401
    other = mint(issuer, "bob", "orders:read", "family-det-2")
    assert await call(http, gw, "GET", "/orders", other, AWAY_IP) == 200
    assert len(webhook.notices) == 1  # one notice per family and reason within the window


async def test_too_many_ips_and_scope_burst(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(**TRUSTED, detection={
        "max_ips_per_token": 2, "insufficient_scope_burst": 3, "window": "10m", "on_detect": ["audit", "metric"],
    })
    ips_before = await suspicious_count(http, gw.admin_url, "too_many_ips")
    burst_before = await suspicious_count(http, gw.admin_url, "insufficient_scope_burst")
    token = mint(issuer, "carol", "orders:read", "family-det-3")
    for ip in ("10.1.1.1", "10.1.1.2", "10.1.1.1", "10.1.1.3"):
        await call(http, gw, "GET", "/orders", token, ip)
    for _ in range(3):
        assert await call(http, gw, "POST", "/orders", token, "10.1.1.1") == 403
    records = await gw.audit_records()
    assert [r.get("suspicious") for r in records] == [
        None, None, None, ["too_many_ips"],
        ["too_many_ips"], ["too_many_ips"], ["too_many_ips", "insufficient_scope_burst"],
    ]
    assert await suspicious_count(http, gw.admin_url, "too_many_ips") == ips_before + 4
    assert await suspicious_count(http, gw.admin_url, "insufficient_scope_burst") == burst_before + 1
    # the responder sees it in the report
    from click.testing import CliRunner

    from gateway.cli import main

    result = CliRunner().invoke(main, ["incident", str(gw.audit_path), "--family", "family-det-3"])
    assert "flagged by live detection: too_many_ips x4, insufficient_scope_burst x1" in result.stdout


async def test_metric_only_leaves_the_record_unmarked(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(**TRUSTED, detection={"new_network_after_first_use": True, "on_detect": ["metric"]})
    before = await suspicious_count(http, gw.admin_url, "new_network")
    token = mint(issuer, "dave", "orders:read", "family-det-4")
    await call(http, gw, "GET", "/orders", token, "2001:db8:1:2::7")
    await call(http, gw, "GET", "/orders", token, "2001:db8:1:ffff::9")  # same /48
    await call(http, gw, "GET", "/orders", token, "2001:db8:2::1")
    assert [r.get("suspicious") for r in await gw.audit_records()] == [None, None, None]
    assert await suspicious_count(http, gw.admin_url, "new_network") == before + 1


async def test_detection_is_off_unless_configured(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(**TRUSTED)
    assert gw.gateway.detector is None
    token = mint(issuer, "erin", "orders:read", "family-det-5")
    await call(http, gw, "GET", "/orders", token, HOME_IP)
    await call(http, gw, "GET", "/orders", token, AWAY_IP)
    assert all("suspicious" not in r for r in await gw.audit_records())


async def test_geoip_without_maxminddb_says_so(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    if importlib.util.find_spec("maxminddb") is not None:
        pytest.skip("maxminddb is installed here")
    caplog.set_level(logging.WARNING, "gateway.detection")
    gw = await make_gateway(**TRUSTED, detection={"geoip_database": str(tmp_path / "GeoLite2-City.mmdb")})
    assert gw.gateway.detector is not None and gw.gateway.detector.locate is None
    assert any("maxminddb" in r.getMessage() and "impossible-travel" in r.getMessage() for r in caplog.records)


def test_networks_and_travel() -> None:
    assert network_of("198.51.100.7") == "198.51.100.0/24"
    assert network_of("::ffff:198.51.100.7") == "198.51.100.0/24"
    assert network_of("2001:db8:1:2::7") == "2001:db8:1::/48"
    assert network_of("2001:db8:1:ffff::1") == network_of("2001:db8:1::")
    assert network_of("not-an-ip") == "not-an-ip"
    paris, new_york = (48.8566, 2.3522), (40.7128, -74.0060)
    assert 5800 < distance_km(paris, new_york) < 5900
    assert impossible_travel(paris, 0, new_york, 3600)  # 5,800 km in an hour
    assert not impossible_travel(paris, 0, new_york, 8 * 3600)  # a flight
    assert not impossible_travel(paris, 0, (48.80, 2.13), 1)  # the next suburb: too close to judge


async def test_detection_revokes_for_the_issuers_max_token_lifetime() -> None:
    """a family entry lives as long as the issuer's tokens can, a lone token until its exp (+ margin)."""
    config = parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": "https://id.example", "audiences": ["api"], "max_token_lifetime": "1h"}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
        "detection": {"new_network_after_first_use": True, "on_detect": ["audit", "revoke_family"]},
    }))
    store = MemoryStore()
    revoked: list[Entry] = []
    store.on_revoke(revoked.append)
    detector = Detector(config, store)
    await detector.start()
    try:
        detector.observe(*_use(HOME_IP, "family-ttl"))
        exchange, decision = _use(AWAY_IP, "family-ttl")
        assert detector.observe(exchange, decision) == ["new_network"]
        detector.observe(*_use(HOME_IP, None, jti="lone-jti"))  # a token without a family
        exchange_lone, decision_lone = _use(AWAY_IP, None, jti="lone-jti")
        assert detector.observe(exchange_lone, decision_lone) == ["new_network"]
        deadline = time.monotonic() + 5
        while len(revoked) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        await detector.stop()
    family, token = revoked
    assert (family.kind, family.value, family.issuer) == (Kind.FAMILY, "family-ttl", "https://id.example")
    assert family.expires_at == exchange.started + 3600 + EXPIRY_MARGIN
    assert (token.kind, token.value, token.match, token.issuer) == (Kind.TOKEN, "lone-jti", Match.JTI,
                                                                    "https://id.example")
    assert decision_lone.token is not None
    assert token.expires_at == decision_lone.token.expires_at + EXPIRY_MARGIN


async def test_detection_revokes_for_the_tokens_own_issuer_only() -> None:
    """detection's entries never reach another issuer's tokens, and a token known only by
    its fingerprint is revoked by fingerprint (a jti equal to that fingerprint stays valid)."""
    config = parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": "https://id.example", "audiences": ["api"]},
                    {"issuer": "https://other.example", "audiences": ["api"]}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
        "detection": {"new_network_after_first_use": True, "on_detect": ["audit", "revoke_family"]},
    }))
    store = MemoryStore()
    revoked: list[Entry] = []
    store.on_revoke(revoked.append)
    detector = Detector(config, store)

    def use(ip: str, iss: str, sid: str | None, raw: str) -> tuple[Exchange, Decision]:
        token = ValidatedToken(iss, "frank", "app", frozenset({"orders:read"}), time.time() + 300,
                               fingerprint(raw), jti=None, claims={"sid": sid} if sid else {})
        exchange = Exchange(started=time.time(), started_mono=time.monotonic(), request_id=f"r-{ip}", client_ip=ip,
                            method="GET", host="api", raw_path="/x", user_agent="t", status=200)
        return exchange, Decision(Reason.ALLOWED, token=token, token_fingerprint=token.fingerprint)

    await detector.start()
    try:
        for sid, raw in (("shared-sid", "stolen-session-token"), (None, "stolen-lone-token")):
            detector.observe(*use(HOME_IP, "https://id.example", sid, raw))
            assert detector.observe(*use(AWAY_IP, "https://id.example", sid, raw)) == ["new_network"]
        deadline = time.monotonic() + 5
        while len(revoked) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        await detector.stop()
    family, lone = revoked
    assert (family.kind, family.issuer) == (Kind.FAMILY, "https://id.example")
    assert (lone.match, lone.issuer, lone.value) == (Match.FINGERPRINT, "https://id.example",
                                                     fingerprint("stolen-lone-token")[:32])
    check = store.list.check
    same = use(AWAY_IP, "https://id.example", "shared-sid", "another-token-of-the-family")[1].token
    elsewhere = use(AWAY_IP, "https://other.example", "shared-sid", "other-issuers-token")[1].token
    assert same is not None and elsewhere is not None
    assert check(same) is Reason.REVOKED_FAMILY and check(elsewhere) is None
    stolen = use(AWAY_IP, "https://id.example", None, "stolen-lone-token")[1].token
    assert stolen is not None and check(stolen) is Reason.REVOKED_TOKEN
    twin_jti = ValidatedToken("https://id.example", "x", "app", frozenset(), time.time() + 300, fingerprint("z"),
                              jti=fingerprint("stolen-lone-token")[:32])
    assert check(twin_jti) is None


# --- shared state through Redis: two replicas, one IP each ------------------------------------


def _config(redis_url: str, prefix: str) -> Any:
    return parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": "https://id.example", "audiences": ["api"]}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
        "revocation": {"redis_url": redis_url, "key_prefix": prefix},
        "detection": {"new_network_after_first_use": True, "max_ips_per_token": 1, "window": "10m"},
    }))


def _use(ip: str, sid: str | None, jti: str | None = None) -> tuple[Exchange, Decision]:
    now = time.time()
    token = ValidatedToken(
        issuer="https://id.example", subject="frank", client_id="app", scopes=frozenset({"orders:read"}),
        expires_at=now + 300, fingerprint="ab" * 32, jti=jti or f"jti-{ip}", claims={"sid": sid} if sid else {},
    )
    exchange = Exchange(started=now, started_mono=time.monotonic(), request_id=f"r-{ip}", client_ip=ip,
                        method="GET", host="api", raw_path="/x", user_agent="t", status=200)
    return exchange, Decision(Reason.ALLOWED, token=token, token_fingerprint=token.fingerprint)


async def test_replicas_share_what_they_saw_through_redis(redis_proc: Any) -> None:
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    prefix = f"det{time.time_ns()}:revoked:"
    one = Detector(_config(url, prefix), MemoryStore())
    two = Detector(_config(url, prefix), MemoryStore())
    await one.start()
    await two.start()
    assert one.shared is not None and two.shared is not None
    try:
        sid = "family-shared-1"
        assert one.observe(*_use(HOME_IP, sid)) is None
        await one.shared.flush()
        # replica two has never seen the family: locally this looks like a first use...
        assert two.observe(*_use(AWAY_IP, sid)) is None
        # ...until it merges what replica one wrote: the family started on another network
        await two.shared.flush()
        state = two.families[f"sid:https://id.example|{sid}"]
        assert state.first_network == "198.51.100.0/24"
        assert set(state.ips) == {HOME_IP, AWAY_IP}
        assert set(state.notified) == {"new_network", "too_many_ips"}
        # and its next request is marked at once
        assert two.observe(*_use(AWAY_IP, sid)) == ["new_network", "too_many_ips"]
        keys = [k.decode() async for k in two.shared._client.scan_iter(match=f"det{prefix[3:-8]}*")]
        assert keys and all(":detect:" in k for k in keys)
        assert all(k.startswith(prefix[: -len("revoked:")]) and "revoked:" not in k for k in keys)
    finally:
        await one.stop()
        await two.stop()


# --- proof failures: a stolen sender-constrained token replayed without its key -------------------

HOLDER_JKT = "Vh1TRylTz5iaHCUe6gGdC8ty7_NbPM_ZFiFR04O_yWs"


def _proof_config(revocation: dict[str, Any] | None = None, **detection: Any) -> Any:
    settings = {"proof_failures_per_token": 3, "window": "10m", "on_detect": ["audit", "metric"], **detection}
    return parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": "https://id.example", "audiences": ["api"], "max_token_lifetime": "1h"}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
        "detection": settings,
        **({"revocation": revocation} if revocation else {}),
    }))


def _bound_use(reason: Reason, raw: str = "stolen-dpop-token", sid: str | None = "family-bound",
               ip: str = AWAY_IP, key: str | None = None, started: float | None = None,
               request_id: str = "r-proof") -> tuple[Exchange, Decision]:
    """A request with a DPoP-bound token (a real jkt); the Decision as the binding check leaves it."""
    now = time.time() if started is None else started
    token = ValidatedToken("https://id.example", "frank", "app", frozenset({"orders:read"}), now + 300,
                           fingerprint(raw), jti=f"jti-{raw}",
                           claims={"cnf": {"jkt": HOLDER_JKT}, **({"sid": sid} if sid else {})})
    exchange = Exchange(started=now, started_mono=time.monotonic(), request_id=request_id, client_ip=ip,
                        method="GET", host="api", raw_path="/x", user_agent="t", status=reason.status)
    binding = "dpop" if reason is Reason.ALLOWED else "none"
    return exchange, Decision(reason, token=token, token_fingerprint=token.fingerprint, binding=binding,
                              key_thumbprint=key)


def _suspicious_total(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("gateway_suspicious_token_use_total", {"reason": reason}) or 0.0


async def test_proof_failures_of_one_token_flag_and_cut_off_its_family(webhook: Webhook) -> None:
    store = MemoryStore()
    revoked: list[Entry] = []
    store.on_revoke(revoked.append)
    detector = Detector(_proof_config(on_detect=["audit", "metric", "revoke_family", "webhook"],
                                      webhook_url=webhook.url), store)
    before = _suspicious_total("proof_failures")
    await detector.start()
    try:
        assert detector.observe(*_bound_use(Reason.ALLOWED, ip=HOME_IP, key=HOLDER_JKT)) is None  # its holder
        # the nonce round trip and a refusal for the route's constraint are no proof failures
        assert detector.observe(*_bound_use(Reason.USE_DPOP_NONCE, ip=HOME_IP)) is None
        assert detector.observe(*_bound_use(Reason.SENDER_CONSTRAINT_REQUIRED, ip=HOME_IP)) is None
        assert detector.observe(*_bound_use(Reason.UNPROVEN_BINDING)) is None  # the thief, without the key
        assert detector.observe(*_bound_use(Reason.DPOP_KEY_MISMATCH, key="thief-key")) is None
        assert detector.observe(*_bound_use(Reason.INVALID_DPOP_PROOF)) == ["proof_failures"]
        assert detector.observe(*_bound_use(Reason.DPOP_REPLAYED)) == ["proof_failures"]  # and every one after
        await asyncio.wait_for(webhook.received.wait(), 5)
        deadline = time.monotonic() + 5
        while not revoked:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        await detector.stop()
    assert _suspicious_total("proof_failures") == before + 2
    (entry,) = revoked
    assert (entry.kind, entry.value, entry.issuer) == (Kind.FAMILY, "family-bound", "https://id.example")
    assert "proof_failures" in entry.reason
    (notice,) = webhook.notices  # once per family and reason within the window
    assert notice["reasons"] == ["proof_failures"] and notice["family"] == "family-bound"
    assert notice["reason"] == "invalid_dpop_proof" and notice["binding"] == "none"
    assert notice["proof_failures"] == 3 and notice["token_fingerprint"] == fingerprint("stolen-dpop-token")[:32]
    assert notice["actions"] == ["revoke_family"]


async def test_proof_failures_are_counted_per_token_within_the_window() -> None:
    detector = Detector(_proof_config(), MemoryStore())
    now = time.time()
    # a token of the same family failing too is another token: its failures are its own
    assert detector.observe(*_bound_use(Reason.UNPROVEN_BINDING, started=now)) is None
    assert detector.observe(*_bound_use(Reason.UNPROVEN_BINDING, raw="sibling", started=now)) is None
    assert detector.observe(*_bound_use(Reason.UNPROVEN_BINDING, raw="sibling", started=now)) is None
    assert detector.observe(*_bound_use(Reason.UNPROVEN_BINDING, started=now + 1)) is None
    # a third and a fourth failure, but ten minutes on: the first ones have left the window
    assert detector.observe(*_bound_use(Reason.CLIENT_CERTIFICATE_MISMATCH, started=now + 601)) is None
    assert detector.observe(*_bound_use(Reason.CLIENT_CERTIFICATE_INVALID, started=now + 602)) is None
    assert detector.observe(*_bound_use(Reason.CLIENT_CERTIFICATE_INVALID, started=now + 603)) == ["proof_failures"]
    # a token without a family is followed by its jti, and flagged the same way
    for _ in range(2):
        assert detector.observe(*_bound_use(Reason.DPOP_KEY_MISMATCH, raw="lone", sid=None, started=now)) is None
    assert detector.observe(*_bound_use(Reason.DPOP_KEY_MISMATCH, raw="lone", sid=None, started=now)) == [
        "proof_failures"]
    # a token that failed validation carries no family to flag: detection leaves it to the denial
    no_token = Decision(Reason.UNPROVEN_BINDING, token_fingerprint=fingerprint("forged"))
    exchange = _bound_use(Reason.UNPROVEN_BINDING)[0]
    assert all(detector.observe(exchange, no_token) is None for _ in range(5))


async def test_proof_failures_count_alone_and_never_stop_other_detections() -> None:
    config = _proof_config(proof_failures_per_token=2)
    assert config.detection.new_network_after_first_use is False
    from gateway.detection import detection_enabled

    assert detection_enabled(config)
    with pytest.raises(Exception, match="proof_failures_per_token"):
        _proof_config(proof_failures_per_token=0)
    both = Detector(_proof_config(proof_failures_per_token=2, new_network_after_first_use=True), MemoryStore())
    assert both.observe(*_bound_use(Reason.ALLOWED, ip=HOME_IP)) is None
    assert both.observe(*_bound_use(Reason.UNPROVEN_BINDING)) == ["new_network"]
    assert both.observe(*_bound_use(Reason.UNPROVEN_BINDING)) == ["new_network", "proof_failures"]


async def test_replicas_count_a_tokens_proof_failures_together_through_redis(redis_proc: Any) -> None:
    """Two failures through one replica and one through another make three; a client repeating its
    own X-Request-Id cannot fold them into one."""
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    prefix = f"proof{time.time_ns()}:revoked:"
    config = _proof_config({"redis_url": url, "key_prefix": prefix})
    one, two = Detector(config, MemoryStore()), Detector(config, MemoryStore())
    assert one.shared is not None and two.shared is not None
    await one.start()
    await two.start()
    try:
        now = time.time()
        assert one.observe(*_bound_use(Reason.UNPROVEN_BINDING, started=now, request_id="same")) is None
        assert one.observe(*_bound_use(Reason.DPOP_KEY_MISMATCH, started=now + 0.5, request_id="same")) is None
        await one.shared.flush()
        # replica two sees its first failure of this token: alone, nothing to flag...
        assert two.observe(*_bound_use(Reason.INVALID_DPOP_PROOF, started=now + 1, request_id="same")) is None
        # ...until it merges what replica one counted: the third failure within the window
        await two.shared.flush()
        state = two.families["sid:https://id.example|family-bound"]
        assert set(state.notified) == {"proof_failures"}
        assert len(state.proof_failures[fingerprint("stolen-dpop-token")[:32]]) == 3
        # and its next failure is flagged at once
        assert two.observe(*_bound_use(Reason.UNPROVEN_BINDING, started=now + 2)) == ["proof_failures"]
        keys = [k.decode() async for k in two.shared._client.scan_iter(match=f"{prefix[:-8]}detect:*:proof:*")]
        assert keys == [f"{prefix[:-8]}detect:sid:https://id.example|family-bound:proof:"
                        f"{fingerprint('stolen-dpop-token')[:32]}"]
        assert 0 < await two.shared._client.ttl(keys[0]) <= 601
    finally:
        await one.stop()
        await two.stop()


async def test_a_stolen_dpop_token_replayed_without_its_key_is_flagged_and_cut_off(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """Through a real gateway: the holder's DPoP requests pass; the thief's replays of the same token
    (no proof, then proofs of its own key) are refused, the third is flagged, the family revoked."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.tokens.dpop import ProofRequest, confirmation, sign_proof

    gw = await make_gateway(**TRUSTED, detection={
        "proof_failures_per_token": 3, "window": "10m", "on_detect": ["audit", "metric", "revoke_family"],
    })
    before = await suspicious_count(http, gw.admin_url, "proof_failures")
    holder, thief = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    raw = issuer.mint(cnf=confirmation(holder), sid="family-dpop-stolen")
    url = f"{gw.url}/orders"

    async def get(key: Any | None, ip: str) -> int:
        headers = {"Authorization": f"Bearer {raw}"} if key is None else {
            "Authorization": f"DPoP {raw}", "DPoP": sign_proof(key, ProofRequest("GET", url, raw))}
        async with http.get(url, headers={**headers, "X-Forwarded-For": ip}) as response:
            await response.read()
            return response.status

    assert await get(holder, HOME_IP) == 200
    assert [await get(k, AWAY_IP) for k in (None, thief, thief)] == [401, 401, 401]
    records = await gw.audit_records()
    assert [(r["reason"], r.get("suspicious")) for r in records] == [
        ("allowed", None), ("unproven_binding", None), ("dpop_key_mismatch", None),
        ("dpop_key_mismatch", ["proof_failures"]),
    ]
    assert await suspicious_count(http, gw.admin_url, "proof_failures") == before + 1
    # revoke_family: the holder's own next request is refused too (the token is in the thief's hands)
    deadline = time.monotonic() + 5
    while await get(holder, HOME_IP) != 401:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert (await gw.audit_records())[-1]["reason"] == "revoked_family"
