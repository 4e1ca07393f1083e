"""One audit record per request, its fields, no raw token anywhere, counts under load."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from gateway.demo import DemoIssuer
from gateway.logs import JsonFormatter
from gateway.tokens.token import fingerprint  # the token's identity
from tests.helpers import GatewayFactory, RunningGateway, bearer, free_port, metric, raw_request

FIELDS = {
    "ts", "request_id", "client_ip", "method", "host", "path", "route", "upstream", "status", "decision", "reason",
    "sub", "client_id", "iss", "jti", "family", "sid", "token_fingerprint", "scopes", "required_scopes", "user_agent",
    "duration_ms", "upstream_ms", "bytes_in", "bytes_out",
}


async def send(gw: Any, method: str, path: str, headers: dict[str, str] | None = None, data: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(
        method, gw.url + path, headers=headers or {}, data=data
    ) as resp:
        return resp.status, await resp.read()


async def test_allowed_request_record(gw: RunningGateway, issuer: DemoIssuer) -> None:
    token = issuer.mint(sub="alice", scope="orders:read profile", sid="session-1", jti="jti-1", client_id="web")
    status, _ = await send(gw, "POST", "/orders", {**bearer(issuer.mint(scope="orders:write"))}, data=b"12345")
    assert status == 200
    status, _ = await send(gw, "GET", "/public/health/../../orders?page=3",
                           {**bearer(token), "X-Request-Id": "rid-1", "User-Agent": "audit-test/1.0"})
    assert status == 200
    records = await gw.audit_records()
    assert len(records) == 2
    assert records[0]["bytes_in"] == 5
    record = records[1]
    assert set(record) >= FIELDS
    ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    assert record["ts"].endswith("Z") and ts.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 30
    assert record["request_id"] == "rid-1"
    assert record["client_ip"] == "127.0.0.1"
    assert record["method"] == "GET"
    assert record["host"] == gw.url.removeprefix("http://")
    assert record["path"] == "/orders"  # the normalised path that was authorised, without the query
    assert (record["route"], record["upstream"]) == ("list-orders", "orders")
    assert (record["status"], record["decision"], record["reason"]) == (200, "allow", "allowed")
    assert (record["sub"], record["client_id"], record["iss"]) == ("alice", "web", issuer.issuer)
    assert (record["jti"], record["family"], record["sid"]) == ("jti-1", "session-1", "session-1")
    assert record["token_fingerprint"] == fingerprint(token)[:32]
    assert record["scopes"] == ["orders:read", "profile"]
    assert record["required_scopes"] == ["orders:read"]
    assert record["user_agent"] == "audit-test/1.0"
    assert record["duration_ms"] >= record["upstream_ms"] > 0
    assert record["bytes_in"] == 0
    assert record["bytes_out"] > 100  # the echo upstream's JSON


async def test_generated_request_id_matches_the_response(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/orders") as resp:
        request_id = resp.headers["X-Request-Id"]
    records = await gw.audit_records()
    assert records[-1]["request_id"] == request_id


def test_made_request_ids_are_96_random_bits_and_incoming_ones_pass_through() -> None:
    from gateway.runtime import request_id

    made = [request_id(None) for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(len(rid) == 24 and int(rid, 16) >= 0 and rid == rid.lower() for rid in made)
    assert request_id("client-chosen.id:1") == "client-chosen.id:1"
    assert request_id("not allowed") != "not allowed" and len(request_id("x" * 129)) == 24


@pytest.mark.parametrize(
    ("method", "path", "scope", "status", "reason", "route"),
    [
        ("GET", "/orders", None, 401, "missing_token", "list-orders"),
        ("GET", "/orders", "profile", 403, "insufficient_scope", "list-orders"),
        ("GET", "/nothing", "orders:read", 404, "no_route", ""),
        ("DELETE", "/orders", "orders:read", 405, "method_not_allowed", ""),
        ("GET", "/public/health/..%2f..%2forders", None, 400, "bad_path", ""),
        ("GET", "/public/health", None, 200, "public_route", "health"),
    ],
)
async def test_denials_are_recorded_with_the_shared_reason(
    gw: RunningGateway, issuer: DemoIssuer, method: str, path: str, scope: str | None, status: int, reason: str,
    route: str,
) -> None:
    before = metric("gateway_requests_total", route=route, method=method, status=str(status),
                    decision="allow" if status == 200 else "deny", reason=reason)
    headers = bearer(issuer.mint(scope=scope)) if scope else {}
    response = await raw_request(gw.url, path, method=method, headers=headers)
    assert response.status == status
    if status != 200:
        assert json.loads(response.body)["reason"] == reason  # the client sees the same word ...
    records = await gw.audit_records()
    assert len(records) == 1
    assert (records[0]["status"], records[0]["reason"]) == (status, reason)  # ... as the audit record ...
    assert records[0]["decision"] == ("allow" if status == 200 else "deny")
    after = metric("gateway_requests_total", route=route, method=method, status=str(status),
                   decision="allow" if status == 200 else "deny", reason=reason)
    assert after == before + 1  # ... and the metric label


async def test_insufficient_scope_record(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    token = issuer.mint(sub="bob", scope="profile")
    await send(gw, "GET", "/orders/7/status", bearer(token))
    record = (await gw.audit_records())[-1]
    assert (record["status"], record["reason"], record["sub"]) == (403, "insufficient_scope", "bob")
    assert record["required_scopes"] == ["orders:admin", "orders:read"]
    assert record["scopes"] == ["profile"]
    assert record["upstream_ms"] is None


async def test_invalid_token_record_has_a_fingerprint_but_no_identity(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    token = issuer.mint(sub="mallory", ttl=-3600)
    await send(gw, "GET", "/orders", bearer(token))
    record = (await gw.audit_records())[-1]
    assert record["reason"] == "token_expired"
    assert record["token_fingerprint"] == fingerprint(token)[:32]
    assert record["sub"] is None and record["scopes"] == []


async def test_upstream_failure_is_recorded(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    gw = await make_gateway(upstreams={"orders": {"url": f"http://127.0.0.1:{free_port()}"}})
    await send(gw, "GET", "/orders", bearer(issuer.mint()))
    record = (await gw.audit_records())[-1]
    assert (record["status"], record["reason"], record["upstream"]) == (502, "upstream_unavailable", "orders")


async def test_no_raw_token_in_the_audit_trail_or_the_log(
    gw: RunningGateway, issuer: DemoIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = {
        "valid": issuer.mint(),
        "expired": issuer.mint(ttl=-3600),
        "no-scope": issuer.mint(scope="profile"),
        "bad-signature": issuer.mint()[:-6] + "AAAAAA",
        "unknown-kid": issuer.mint(headers={"kid": "nope"}),
        "garbage": "this-is-not-a-jwt-but-a-secret-value",
    }
    for token in tokens.values():
        for path in ("/orders", "/orders/1/status", "/nothing", "/public/health"):
            await send(gw, "GET", path, bearer(token))
        await send(gw, "GET", f"/orders?access_token={token}")
        await send(gw, "GET", f"/nothing?access_token={token}")
        await raw_request(gw.url, f"/orders%2F?access_token={token}")  # 400 before the query is looked at
        await raw_request(gw.url, f"/orders?x=1&access_token={token}", headers=bearer(token))
        await raw_request(gw.url, "/orders", headers={"Authorization": f"Bearer {token} extra"})
        await raw_request(gw.url, "/orders", headers={"Authorization": f"Basic {token}"})
    await gw.audit_records()
    audit_text = gw.audit_path.read_text()
    assert audit_text.count("\n") == len(tokens) * 10
    formatter = JsonFormatter()
    log_text = "\n".join(formatter.format(r) for r in caplog.records)
    for name, token in tokens.items():
        for part in {token, *token.split(".")}:
            if len(part) >= 20:
                assert part not in audit_text, f"{name} token found in the audit trail"
                assert part not in log_text, f"{name} token found in the log"
                assert part not in caplog.text


async def test_record_count_equals_request_count_under_load(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    good, poor = issuer.mint(), issuer.mint(scope="profile")
    plans = [
        ("/orders", bearer(good)), ("/orders", bearer(poor)), ("/orders", {}), ("/public/health", {}),
        ("/nothing", {}), ("/orders/1/status", bearer(good)),
    ]
    rng = random.Random(7)
    requests = [rng.choice(plans) for _ in range(500)]
    semaphore = asyncio.Semaphore(50)
    statuses: dict[int, int] = {}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:

        async def one(index: int, path: str, headers: dict[str, str]) -> None:
            async with semaphore, session.get(
                gw.url + path, headers={**headers, "X-Request-Id": f"load-{index}"}
            ) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(one(i, path, headers) for i, (path, headers) in enumerate(requests)))
    records = await gw.audit_records()
    assert len(records) == 500
    assert {r["request_id"] for r in records} == {f"load-{i}" for i in range(500)}
    recorded: dict[int, int] = {}
    for record in records:
        recorded[record["status"]] = recorded.get(record["status"], 0) + 1
    assert recorded == statuses
    assert len(gw.audit_path.read_bytes().splitlines()) == 500  # whole lines, none torn


async def test_stdout_sink(
    make_gateway: GatewayFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    gw = await make_gateway(audit={"sink": "stdout", "flush_interval": "10ms"})
    await send(gw, "GET", "/public/health", {"X-Request-Id": "to-stdout"})
    await gw.gateway.audit.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["request_id"] for r in lines if r.get("type") == "audit"] == ["to-stdout"]


async def test_audit_sink_none_writes_nothing(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(audit={"sink": "none"})
    await send(gw, "GET", "/public/health")
    assert await gw.audit_records() == []


class StalledPipe:
    """A FIFO whose reader only starts reading once released: the audit sink stalls meanwhile."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.release = threading.Event()
        self.chunks: list[bytes] = []
        os.mkfifo(path)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        self.release.wait(20)
        while chunk := os.read(fd, 65536):
            self.chunks.append(chunk)
        os.close(fd)

    def finish(self) -> list[bytes]:
        """Let the reader drain (after the writer closed) and return every line it got."""
        self._reader.join(10)
        return b"".join(self.chunks).splitlines()


@pytest.fixture
def stalled_pipe(tmp_path: Any) -> StalledPipe:
    return StalledPipe(tmp_path / "audit.fifo")


async def test_a_stalled_audit_sink_does_not_block_requests(
    make_gateway: GatewayFactory, stalled_pipe: StalledPipe
) -> None:
    """The audit trail goes to a pipe nobody reads for a while: requests are still answered at once."""
    gw = await make_gateway(audit={"sink": "file", "path": str(stalled_pipe.path), "flush_interval": "5ms"})
    try:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            for index in range(400):  # ~250 KB of records: far more than a pipe buffer holds
                async with session.get(gw.url + "/public/health", headers={"X-Request-Id": f"r{index}"}) as resp:
                    assert resp.status == 200
        assert time.monotonic() - started < 10
        await asyncio.sleep(0.05)
        assert stalled_pipe.chunks == []  # nothing was read: the writer thread is stuck, the event loop is not
        assert gw.gateway.audit.written < 400
    finally:
        stalled_pipe.release.set()
        await gw.stop()
    lines = stalled_pipe.finish()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(400)]


async def test_a_stalled_sink_drops_and_counts_past_max_pending(
    make_gateway: GatewayFactory, stalled_pipe: StalledPipe
) -> None:
    """Memory stays bounded while nobody reads the audit pipe; the loss is counted, not hidden."""
    gw = await make_gateway(
        audit={"sink": "file", "path": str(stalled_pipe.path), "flush_interval": "5ms", "max_pending": 50}
    )
    try:
        before = metric("gateway_audit_records_dropped_total")
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                async with session.get(gw.url + "/public/health") as resp:
                    assert resp.status == 200
        assert len(gw.gateway.audit._pending) <= 50
        dropped = metric("gateway_audit_records_dropped_total") - before
        assert dropped > 0
    finally:
        stalled_pipe.release.set()
        await gw.stop()
    assert len(stalled_pipe.finish()) + dropped == 400
