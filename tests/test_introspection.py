"""Opaque tokens through RFC 7662 introspection, against the demo issuer's real /introspect.

Call counts come from the issuer itself (``issuer.calls["introspect"]``), so every
"exactly one call" below is what the authorization server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY
from redis import Redis

from gateway.demo import DemoIssuer, EchoUpstream
from gateway.revocation.api import factory_for
from gateway.revocation.entries import Entry, Kind, Match
from gateway.tokens.introspection_cache import IntrospectedToken
from gateway.tokens.token import cache_key, fingerprint
from tests.helpers import AUDIENCE, GatewayFactory, bearer


def introspecting(issuer: DemoIssuer, validation: str = "jwt", **settings: Any) -> dict[str, Any]:
    """An issuer entry that introspects at the demo issuer (``None`` drops a setting)."""
    introspection = {
        "endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway", "client_secret": "gateway-secret",
        "cache_ttl": "60s", "negative_cache_ttl": "10s", "timeout": "1s", **settings,
    }
    return {
        "issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s", "validation": validation,
        "introspection": {k: v for k, v in introspection.items() if v is not None},
    }


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def as_bytes(value: bytes | str | None) -> bytes:
    """A key or value read with the sync client, which does not decode responses: always bytes."""
    assert isinstance(value, bytes), value
    return value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get(
    http: aiohttp.ClientSession, url: str, token: str, method: str = "GET"
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, url, headers=bearer(token)) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), orjson.loads(body) if body else None


# --- call counts -------------------------------------------------------------------------------


async def test_hundred_concurrent_requests_make_one_call(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    issuer.introspection_delay = 0.3  # every request arrives while the one call is in flight
    token = issuer.mint_opaque(scope="orders:read")
    coalesced = metric("gateway_introspection_coalesced_total", issuer=issuer.issuer)

    results = await asyncio.gather(*(get(http, f"{gw.url}/orders", token) for _ in range(100)))

    assert [status for status, _, _ in results] == [200] * 100
    assert issuer.calls["introspect"] == 1
    assert len(upstream.requests) == 100
    assert metric("gateway_introspection_coalesced_total", issuer=issuer.issuer) - coalesced > 0
    assert metric("gateway_introspection_requests_total", issuer=issuer.issuer, result="active") == 1
    records = await gw.audit_records()
    assert len(records) == 100
    record = records[0]
    assert (record["sub"], record["client_id"], record["iss"]) == ("alice", "demo-client", issuer.issuer)
    assert record["jti"] == issuer.opaque[token]["jti"]
    assert record["token_fingerprint"] == fingerprint(token)[:32]


async def test_repeated_requests_within_ttl_make_no_new_call(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    token = issuer.mint_opaque()
    for _ in range(5):
        assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert issuer.calls["introspect"] == 1


async def test_only_introspection_calls_count_as_validations(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """Cache hits and coalesced waits are not validations; opaque tokens skip the verified-token cache."""
    gw = await make_gateway(issuers=[introspecting(issuer)])
    issuer.introspection_delay = 0.2  # the concurrent requests below share the one call in flight
    token, made_up = issuer.mint_opaque(), "made_up_token_for_metrics"

    def counts() -> dict[str, float]:
        return {
            "valid": metric("gateway_token_validations_total", issuer=issuer.issuer, result="valid"),
            "inactive": metric("gateway_token_validations_total", issuer=issuer.issuer, result="inactive_token"),
            "verified_hit": metric("gateway_token_cache_total", cache="verified_token", result="hit"),
            "verified_miss": metric("gateway_token_cache_total", cache="verified_token", result="miss"),
            "positive_hit": metric("gateway_token_cache_total", cache="introspection", result="hit"),
            "negative_hit": metric("gateway_token_cache_total", cache="introspection_negative", result="hit"),
        }

    before = counts()
    statuses = await asyncio.gather(*(get(http, f"{gw.url}/orders", token) for _ in range(10)))
    assert [status for status, _, _ in statuses] == [200] * 10
    for _ in range(3):
        assert (await get(http, f"{gw.url}/orders", token))[0] == 200
        assert (await get(http, f"{gw.url}/orders", made_up))[0] == 401
    assert (await get(http, f"{gw.url}/orders", made_up))[0] == 401
    after = counts()

    assert issuer.calls["introspect"] == 2
    delta = {key: after[key] - before[key] for key in before}
    assert delta == {
        "valid": 1, "inactive": 1, "verified_hit": 0, "verified_miss": 0, "positive_hit": 3, "negative_hit": 3,
    }


async def test_cached_answer_never_outlives_exp(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer, cache_ttl="60s")])
    token = issuer.mint_opaque(ttl=2)
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert issuer.calls["introspect"] == 1

    await asyncio.sleep(issuer.opaque[token]["exp"] - time.time() + 0.1)
    status, _, body = await get(http, f"{gw.url}/orders", token)

    assert status == 401
    assert body["reason"] == "inactive_token"
    assert issuer.calls["introspect"] == 2  # the cached answer died with the token


async def test_cached_answer_never_outlives_cache_ttl(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    ttl = 2.0  # wide enough for the second request to come well within it, even on a loaded machine
    gw = await make_gateway(issuers=[introspecting(issuer, cache_ttl=f"{ttl}s")])
    token = issuer.mint_opaque(ttl=300)
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    answered_by = time.time()  # the entry lives until (answer time + cache_ttl) at the latest
    issuer.opaque[token]["active"] = False  # revoked at the authorization server
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200  # within cache_ttl: the cached answer
    assert issuer.calls["introspect"] == 1

    await asyncio.sleep(answered_by + ttl - time.time() + 0.05)

    assert (await get(http, f"{gw.url}/orders", token))[0] == 401
    assert issuer.calls["introspect"] == 2


async def test_inactive_token_is_refused_and_remembered(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    status, headers, body = await get(http, f"{gw.url}/orders", "made_up_token_123")
    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["reason"] == "inactive_token"
    assert issuer.calls["introspect"] == 1

    assert (await get(http, f"{gw.url}/orders", "made_up_token_123"))[0] == 401
    assert issuer.calls["introspect"] == 1  # inside the negative TTL
    assert (await get(http, f"{gw.url}/orders", "another_made_up_token"))[0] == 401
    assert issuer.calls["introspect"] == 2  # one call per distinct token
    assert upstream.requests == []


async def test_negative_cache_expires(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    ttl = 2.0  # wide enough for the second request to come well within it, even on a loaded machine
    gw = await make_gateway(issuers=[introspecting(issuer, negative_cache_ttl=f"{ttl}s")])
    assert (await get(http, f"{gw.url}/orders", "not_yet_known"))[0] == 401
    refused_by = time.time()  # the refusal is remembered until (answer time + negative_cache_ttl) at the latest
    issuer.opaque["not_yet_known"] = {"active": True, **issuer.claims()}
    assert (await get(http, f"{gw.url}/orders", "not_yet_known"))[0] == 401
    assert issuer.calls["introspect"] == 1  # the remembered refusal
    await asyncio.sleep(refused_by + ttl - time.time() + 0.05)
    assert (await get(http, f"{gw.url}/orders", "not_yet_known"))[0] == 200
    assert issuer.calls["introspect"] == 2


# --- failures: closed, never open --------------------------------------------------------------


@pytest.mark.parametrize("failure", ["down", "slow", "html", "error"])
async def test_authorization_server_failure_denies_with_503(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession, failure: str
) -> None:
    settings: dict[str, Any] = {"timeout": "300ms"}
    if failure == "down":
        settings["endpoint"] = f"http://127.0.0.1:{closed_port()}/introspect"
    elif failure == "slow":
        issuer.introspection_delay = 1.0
    else:
        issuer.introspection_mode = failure
    gw = await make_gateway(issuers=[introspecting(issuer, **settings)])
    token = issuer.mint_opaque()

    started = time.monotonic()
    status, headers, body = await get(http, f"{gw.url}/orders", token)

    assert status == 503
    assert headers["Retry-After"]
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"] == "temporarily_unavailable"
    assert body["reason"] == "introspection_unavailable"
    assert upstream.requests == []
    assert time.monotonic() - started < 1.0  # the timeout holds
    records = await gw.audit_records()
    assert records[-1]["reason"] == "introspection_unavailable"
    assert records[-1]["decision"] == "deny"

    if failure != "down":  # failures are not cached: the next request asks again and passes
        issuer.introspection_delay, issuer.introspection_mode = 0.0, "ok"
        assert (await get(http, f"{gw.url}/orders", token))[0] == 200


async def test_connection_error_is_retried_once(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    port = closed_port()
    gw = await make_gateway(issuers=[introspecting(issuer, endpoint=f"http://127.0.0.1:{port}/introspect")])
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 503
    assert metric("gateway_introspection_requests_total", issuer=issuer.issuer, result="connection_error") == 2


class DropFirstConnection:
    """A real TCP front for the issuer that drops the first connection unanswered, then relays."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections == 1:
            await reader.read(1)
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_dropped_connection_retry_succeeds(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    front = DropFirstConnection(int(issuer.issuer.rsplit(":", 1)[1]))
    port = await front.start()
    try:
        gw = await make_gateway(issuers=[introspecting(issuer, endpoint=f"http://127.0.0.1:{port}/introspect")])
        assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 200
        assert front.connections == 2
        assert issuer.calls["introspect"] == 1
    finally:
        await front.stop()


async def test_cached_answer_keeps_serving_during_an_outage(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    token = issuer.mint_opaque()
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    issuer.introspection_mode = "error"
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 503


async def test_wrong_client_credentials_are_logged_clearly(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gw = await make_gateway(issuers=[introspecting(issuer, client_secret="not-the-secret")])
    token = issuer.mint_opaque()

    status, _, body = await get(http, f"{gw.url}/orders", token)

    assert status == 503
    assert body["reason"] == "introspection_unavailable"
    assert upstream.requests == []
    errors = [r for r in caplog.records if r.name == "gateway.introspection" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "refused the gateway's client credentials" in message
    assert "'gateway'" in message and "client_secret_basic" in message and "HTTP 401" in message
    assert token not in caplog.text
    assert "not-the-secret" not in caplog.text
    assert metric("gateway_introspection_requests_total", issuer=issuer.issuer, result="unauthorized") == 1


# --- client authentication -----------------------------------------------------------------------

AWKWARD_ID, AWKWARD_SECRET = "gate way", "s3cr:t/+ %é"  # RFC 6749 2.3.1 form-encoding matters here


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_secret_methods(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, method: str
) -> None:
    issuer.clients = {AWKWARD_ID: AWKWARD_SECRET}
    gw = await make_gateway(issuers=[
        introspecting(issuer, auth_method=method, client_id=AWKWARD_ID, client_secret=AWKWARD_SECRET)
    ])
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 200
    assert issuer.calls["introspect"] == 1


async def test_private_key_jwt_with_discovered_endpoint(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    issuer.clients = {}
    issuer.client_keys = {"gateway-pkjwt": key.public_key()}
    gw = await make_gateway(issuers=[introspecting(
        issuer, validation="introspection", endpoint=None, client_secret=None, client_id="gateway-pkjwt",
        auth_method="private_key_jwt", private_key_file=str(key_file),
    )])

    for _ in range(2):  # a second, distinct assertion is accepted: the jti is never reused
        assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 200

    assert issuer.calls["introspect"] == 2
    assert len(issuer.client_assertions) == 2
    for claims in issuer.client_assertions:
        assert claims["iss"] == claims["sub"] == "gateway-pkjwt"
        assert claims["aud"] == f"{issuer.issuer}/token"  # the discovered token endpoint
        assert 0 < claims["exp"] - claims["iat"] <= 60
    assert issuer.client_assertions[0]["jti"] != issuer.client_assertions[1]["jti"]


async def test_endpoint_from_the_jwks_loaders_discovery(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer, endpoint=None)])
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 200
    assert (await get(http, f"{gw.url}/orders", issuer.mint(scope="orders:read")))[0] == 200  # JWTs: local
    assert issuer.calls["introspect"] == 1
    assert issuer.calls["discovery"] == 1  # the metadata the JWKS loader fetched, not a second discovery


# --- response checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"active": "true"}, "inactive_token"),
        ({"active": 1}, "inactive_token"),
        ({"iss": "https://elsewhere.example"}, "unknown_issuer"),
        ({"aud": "https://api.example/other"}, "wrong_audience"),
        ({"aud": None}, "wrong_audience"),
        ({"token_type": "refresh_token"}, "wrong_token_type"),
        ({"token_use": "refresh_token"}, "wrong_token_type"),
        ({"nbf": time.time() + 3600}, "token_not_yet_valid"),
        ({"exp": "tomorrow"}, "invalid_token"),  # optional, but when present a number
        ({"exp": True}, "invalid_token"),
    ],
)
async def test_answer_checks(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession,
    change: dict[str, Any], reason: str,
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    token = issuer.mint_opaque()
    issuer.opaque[token].update(change)
    issuer.opaque[token] = {k: v for k, v in issuer.opaque[token].items() if v is not None}

    status, headers, body = await get(http, f"{gw.url}/orders", token)

    assert status == 401
    assert body["reason"] == reason
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.requests == []
    assert (await get(http, f"{gw.url}/orders", token))[0] == 401
    assert issuer.calls["introspect"] == 1  # refusals are negatively cached too


@pytest.mark.parametrize(
    "change",
    [{"aud": ["https://api.example/other", AUDIENCE]}, {"iss": None}, {"token_type": None},
     {"token_type": "access_token"}, {"token_use": "access_token"}],
)
async def test_acceptable_answers(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, change: dict[str, Any]
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    token = issuer.mint_opaque()
    issuer.opaque[token].update(change)
    issuer.opaque[token] = {k: v for k, v in issuer.opaque[token].items() if v is not None}
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200


# --- answers without exp (RFC 7662 makes it optional) -----------------------------


@pytest.mark.parametrize("exp", ["absent", None])
async def test_an_answer_without_exp_is_accepted_and_cached_for_cache_ttl(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, exp: str | None
) -> None:
    ttl = 2.0
    gw = await make_gateway(issuers=[introspecting(issuer, cache_ttl=f"{ttl}s")])
    token = issuer.mint_opaque(exp=None)  # no exp in the answer at all
    if exp is None:
        issuer.opaque[token]["exp"] = None  # or a JSON null
    asked_at = time.time()
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    entry = gw.pipeline.validator.introspectors[issuer.issuer].cache.get(cache_key(token))
    assert entry is not None and entry.expires_at == 0.0
    assert isinstance(entry, IntrospectedToken)  # introspection's own entry, with its cache deadline
    assert asked_at + ttl <= entry.cached_until <= time.time() + ttl  # answered_at + cache_ttl
    issuer.opaque[token]["active"] = False  # revoked at the authorization server
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200  # within cache_ttl: the cached answer
    assert issuer.calls["introspect"] == 1

    await asyncio.sleep(entry.cached_until - time.time() + 0.05)

    status, _, body = await get(http, f"{gw.url}/orders", token)
    assert (status, body["reason"]) == (401, "inactive_token")
    assert issuer.calls["introspect"] == 2
    record = (await gw.audit_records())[0]
    assert (record["reason"], record["sub"], record["jti"]) == ("allowed", "alice", issuer.opaque[token]["jti"])


async def test_a_shared_entry_without_exp_lives_cache_ttl(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_proc: Any
) -> None:
    redis = Redis(host=redis_proc.host, port=redis_proc.port)
    redis.flushdb()
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    gw = await make_gateway(issuers=[introspecting(issuer, cache_ttl="5s", shared_cache=True, redis_url=url)])
    token = issuer.mint_opaque(exp=None)
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    (key,) = [as_bytes(k) for k in redis.keys("*")]
    assert key.endswith(cache_key(token).encode())
    assert 0 < redis.pttl(key) <= 5_000
    redis.close()


async def test_required_claims_apply_to_introspection_answers(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[{**introspecting(issuer), "required_claims": ["sid"]}])
    status, headers, body = await get(http, f"{gw.url}/orders", issuer.mint_opaque())
    assert (status, body["reason"]) == (401, "missing_claim")
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque(sid="s-1")))[0] == 200
    assert len(upstream.requests) == 1


# --- scopes: checked per route, never cached ---------------------------------------------------------


async def test_insufficient_scope_is_403(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    status, headers, body = await get(http, f"{gw.url}/orders", issuer.mint_opaque(scope="profile"))
    assert status == 403
    assert body["reason"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert 'scope="orders:read"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_cached_answer_does_not_pass_other_routes_scope_checks(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    """CVE-2021-32701: the cache holds the server's answer, the scope decision is made per route."""
    gw = await make_gateway(issuers=[introspecting(issuer)])
    token = issuer.mint_opaque(scope="orders:read")
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200  # cached now

    status, _, body = await get(http, f"{gw.url}/orders", token, method="POST")
    assert status == 403
    assert body["reason"] == "insufficient_scope"
    assert (await get(http, f"{gw.url}/orders/7", token, method="DELETE"))[0] == 403
    assert (await get(http, f"{gw.url}/orders/7/status", token))[0] == 200
    assert issuer.calls["introspect"] == 1
    assert [r["method"] for r in upstream.requests] == ["GET", "GET"]


# --- routing among issuers, JWT introspection, revocation ------------------------------------------


async def test_configured_order_and_token_prefix(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    other = DemoIssuer(audience=AUDIENCE)
    await other.start()
    try:
        gw = await make_gateway(issuers=[introspecting(other), introspecting(issuer)])
        token = issuer.mint_opaque()
        assert (await get(http, f"{gw.url}/orders", token))[0] == 200
        assert (other.calls["introspect"], issuer.calls["introspect"]) == (1, 1)  # in configured order
        assert (await get(http, f"{gw.url}/orders", token))[0] == 200
        assert (other.calls["introspect"], issuer.calls["introspect"]) == (1, 1)  # both answers cached

        gw = await make_gateway(issuers=[introspecting(other), introspecting(issuer, token_prefix="demo_")])
        assert (await get(http, f"{gw.url}/orders", issuer.mint_opaque()))[0] == 200
        assert (other.calls["introspect"], issuer.calls["introspect"]) == (1, 2)  # the prefix picks the issuer
    finally:
        await other.stop()


async def test_validation_introspection_applies_to_jwts(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer, validation="introspection", cache_ttl="300ms")])
    token = issuer.mint(scope="orders:read")
    assert (await get(http, f"{gw.url}/orders", token))[0] == 401  # a valid signature is not enough
    assert issuer.calls["introspect"] == 1
    issuer.opaque[token] = {"active": True, "token_type": "Bearer", **issuer.claims(scope="orders:read")}
    other = issuer.mint(scope="orders:read")
    issuer.opaque[other] = dict(issuer.opaque[token])
    assert (await get(http, f"{gw.url}/orders", other))[0] == 200
    issuer.opaque[other]["active"] = False  # revoked at the authorization server
    await asyncio.sleep(0.4)
    assert (await get(http, f"{gw.url}/orders", other))[0] == 401
    assert issuer.calls["introspect"] == 3


async def test_revocation_keeps_cached_answers_and_refuses_without_a_call(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """A subject (or family, or client) is known only from the answer: the cached answer is kept, so the
    refusal says revoked_subject and the authorization server is not asked again (it would say inactive)."""
    gw = await make_gateway(issuers=[introspecting(issuer)])
    token = issuer.mint_opaque(sub="mallory")
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    introspector = gw.pipeline.validator.introspectors[issuer.issuer]
    assert len(introspector.cache) == 1

    await gw.gateway.revocation.revoke(
        Entry(Kind.SUBJECT, "mallory", expires_at=time.time() + 600, not_before=time.time() + 1)
    )
    issuer.opaque[token]["active"] = False  # revoked at the authorization server too
    await asyncio.sleep(0.05)  # what a background purge would take

    status, _, body = await get(http, f"{gw.url}/orders", token)
    assert (status, body["reason"]) == (401, "revoked_subject")
    assert issuer.calls["introspect"] == 1
    assert len(introspector.cache) == 1


async def test_a_revoked_opaque_token_is_refused_before_introspection(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """The list is read before the authorization server is asked: revoked_token, and no call at all,
    for a token never seen (not cached) and for one whose cached answer the revocation dropped."""
    gw = await make_gateway(issuers=[introspecting(issuer)])
    seen, unseen = issuer.mint_opaque(), issuer.mint_opaque()
    assert (await get(http, f"{gw.url}/orders", seen))[0] == 200
    factory = factory_for(gw.gateway.config)
    for token in (seen, unseen):
        await gw.gateway.revocation.revoke(factory.token(token, issuer=issuer.issuer))
        issuer.opaque[token]["active"] = False
    for token in (seen, unseen):
        status, _, body = await get(http, f"{gw.url}/orders", token)
        assert (status, body["reason"]) == (401, "revoked_token")
    assert issuer.calls["introspect"] == 1
    assert [r["reason"] for r in await gw.audit_records()] == ["allowed", "revoked_token", "revoked_token"]


async def test_another_issuers_revocation_does_not_stop_introspection(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[introspecting(issuer)])
    token = issuer.mint_opaque()
    other = Entry(Kind.TOKEN, fingerprint(token), time.time() + 600, "https://other.example", match=Match.FINGERPRINT)
    gw.gateway.revocation.list.add(other)
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert issuer.calls["introspect"] == 1


# --- shared second-level cache -------------------------------------------------------------------------


async def test_shared_cache_in_redis_serves_other_replicas(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, redis_proc: Any
) -> None:
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    redis = Redis(host=redis_proc.host, port=redis_proc.port)
    redis.flushdb()
    replica_a = await make_gateway(issuers=[introspecting(issuer, shared_cache=True, redis_url=url)])
    replica_b = await make_gateway(issuers=[introspecting(issuer, shared_cache=True, redis_url=url)])
    token = issuer.mint_opaque(ttl=20)

    assert (await get(http, f"{replica_a.url}/orders", token))[0] == 200
    assert (await get(http, f"{replica_b.url}/orders", token))[0] == 200
    assert issuer.calls["introspect"] == 1
    assert (await get(http, f"{replica_a.url}/orders", "garbage_token"))[0] == 401
    status, _, body = await get(http, f"{replica_b.url}/orders", "garbage_token")
    assert (status, body["reason"]) == (401, "inactive_token")
    assert issuer.calls["introspect"] == 2
    # scopes are still decided per route on the replica that reads the shared answer
    assert (await get(http, f"{replica_b.url}/orders", token, method="POST"))[0] == 403

    keys = sorted(as_bytes(k) for k in redis.keys("*"))
    assert len(keys) == 2
    assert all(fingerprint(token).encode() not in k or k.endswith(fingerprint(token).encode()) for k in keys)
    for key in keys:
        assert token.encode() not in key and b"garbage_token" not in key
        assert token.encode() not in as_bytes(redis.get(key))
        assert b"garbage_token" not in as_bytes(redis.get(key))
    ttls = {k: redis.pttl(k) for k in keys}
    positive = next(k for k in keys if k.endswith(fingerprint(token).encode()))
    assert 0 < ttls[positive] <= 20_000  # the token's exp, not cache_ttl (60 s)
    negative = next(k for k in keys if k != positive)
    assert 0 < ttls[negative] <= 10_000  # negative_cache_ttl
    redis.close()


async def test_shared_cache_down_falls_back_to_the_server(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    gw = await make_gateway(issuers=[introspecting(issuer, shared_cache=True, redis_url=url)])
    token = issuer.mint_opaque()
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert (await get(http, f"{gw.url}/orders", token))[0] == 200
    assert issuer.calls["introspect"] == 1
