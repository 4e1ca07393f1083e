"""The audit trail survives any input.

A request whose headers carry bytes that are not UTF-8 used to make the writer's
serialisation raise: the flush task died silently and nothing was written again. Every
value is now made serialisable and bounded where it is recorded; a record that still
cannot be serialised is replaced by a minimal one (counted, logged); the flush loop
survives anything; a dead or stuck writer turns /readyz unready.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.audit.record import LIMITS, SCOPE_LIMIT, SCOPES_LIMIT
from gateway.audit.writer import AuditWriter
from gateway.config import AuditConfig
from gateway.demo import DemoIssuer
from tests.helpers import GatewayFactory, RunningGateway, bearer, metric
from tests.test_audit import StalledPipe

# a User-Agent that is not UTF-8 at all, a Host with a broken sequence (0xC3 then "(")
HOSTILE_HEAD = (
    b"GET /orders HTTP/1.1\r\nHost: api\xc3(.example\r\nUser-Agent: \xff\xfe evil\r\n"
    b"X-Request-Id: hostile-bytes\r\nConnection: close\r\n\r\n"
)


async def send_raw(url: str, head: bytes) -> bytes:
    """Write ``head`` byte for byte on a fresh connection and read the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def authenticated_requests(gw: Any, token: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for index in range(count):
            async with session.get(gw.url + "/orders", headers={**bearer(token), "X-Request-Id": f"ok-{index}"}) as r:
                assert r.status == 200


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def readyz(gw: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/readyz") as resp:
        return resp.status, await resp.json()


def check_hostile_record(record: dict[str, Any]) -> None:
    assert record["request_id"] == "hostile-bytes"
    assert record["user_agent"] == "\\xff\\xfe evil"  # the bytes, written out: still evidence
    assert record["host"] == "api\\xc3(.example"
    assert {"user_agent", "host"} <= set(record["escaped"])


async def test_hostile_header_bytes_then_n_requests_give_n_plus_1_records(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    unserialisable = metric("gateway_audit_records_unserialisable_total")
    answer = await send_raw(gw.url, HOSTILE_HEAD)
    assert answer.startswith(b"HTTP/1.1 4")  # refused, unauthenticated
    n = 25
    await authenticated_requests(gw, issuer.mint(), n)
    records = await gw.audit_records()
    assert len(records) == n + 1
    check_hostile_record(records[0])
    assert [r["request_id"] for r in records[1:]] == [f"ok-{i}" for i in range(n)]
    assert all("escaped" not in r and "truncated" not in r for r in records[1:])  # only when needed
    assert metric("gateway_audit_records_unserialisable_total") == unserialisable  # caught where recorded
    assert gw.gateway.audit._pending == []
    status, body = await readyz(gw)
    assert status == 200 and body["audit_writer"] is True


async def test_hostile_header_bytes_then_graceful_stop_writes_every_record(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    await send_raw(gw.url, HOSTILE_HEAD)
    n = 10
    await authenticated_requests(gw, issuer.mint(), n)
    await gw.stop()  # no flush asked for: stopping writes what is queued
    records = lines_of(gw.audit_path)
    assert len(records) == n + 1
    check_hostile_record(records[0])


async def test_every_text_field_is_capped(
    gw: RunningGateway, issuer: DemoIssuer
) -> None:
    long_path = "/orders/" + "p" * 6000
    head = (f"GET {long_path} HTTP/1.1\r\nHost: {'h' * 3000}.example\r\nUser-Agent: {'u' * 7000}\r\n"
            "X-Request-Id: long-fields\r\nConnection: close\r\n\r\n").encode()
    await send_raw(gw.url, head)
    # within aiohttp's 8190-byte header line: past every limit, not by much
    scopes = ["a:" + "x" * 300, *(f"s:{i:03d}" for i in range(SCOPES_LIMIT + 10))]
    token = issuer.mint(jti="j" * 400, sid="s" * 300, scope=" ".join(scopes))
    async with aiohttp.ClientSession() as session, session.get(
        gw.url + "/orders", headers={**bearer(token), "X-Request-Id": "long-claims-2"}
    ):
        pass
    records = {r["request_id"]: r for r in await gw.audit_records()}
    long_fields = records["long-fields"]
    assert len(long_fields["path"]) == LIMITS["path"] and len(long_fields["host"]) == LIMITS["host"]
    assert len(long_fields["user_agent"]) == LIMITS["user_agent"]
    assert {"path", "host", "user_agent"} <= set(long_fields["truncated"])
    claims = records["long-claims-2"]
    assert claims["status"] == 403, claims["reason"]  # no orders:read among the scopes
    assert claims["jti"] == "j" * LIMITS["jti"]
    assert claims["sid"] == "s" * LIMITS["sid"]
    assert len(claims["scopes"]) == SCOPES_LIMIT and all(len(s) <= SCOPE_LIMIT for s in claims["scopes"])
    assert claims["scopes"][0] == "a:" + "x" * (SCOPE_LIMIT - 2)
    assert "escaped" not in claims  # a claim with a lone surrogate never validates: only headers need it
    assert set(claims["truncated"]) == {"jti", "family", "sid", "scopes"}
    assert max(len(line) for line in gw.audit_path.read_bytes().splitlines()) < 40_000


# --- the writer itself -----------------------------------------------------------------------


def writer_config(path: Path, **overrides: Any) -> AuditConfig:
    return AuditConfig(sink="file", path=str(path), flush_interval=0.01, **overrides)


async def test_a_record_that_cannot_be_serialised_is_replaced_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.audit")
    before = metric("gateway_audit_records_unserialisable_total")
    writer = AuditWriter(writer_config(tmp_path / "audit.jsonl"))
    await writer.start()
    bad: list[dict[str, Any]] = [
        {"type": "audit", "request_id": "bad-surrogate", "reason": "missing_token", "status": 401,
         "user_agent": "\udcff"},  # what aiohttp makes of a 0xFF byte, written without the recording's care
        {"type": "audit", "request_id": "bad-set", "reason": "allowed", "scopes": {"a", "b"}},
        {"type": "audit", "request_id": "bad-int\udc80", "reason": "allowed", "bytes_in": 2**70},
    ]
    writer.write({"type": "audit", "request_id": "good-1"})
    for record in bad:
        writer.write(record)
    writer.write({"type": "audit", "request_id": "good-2"})
    await writer.flush()
    await asyncio.sleep(0.05)
    writer.write({"type": "audit", "request_id": "good-3"})
    await writer.stop()
    lines = lines_of(tmp_path / "audit.jsonl")
    assert [r["request_id"] for r in lines] == ["good-1", "bad-surrogate", "bad-set", "bad-int\\x80", "good-2",
                                                "good-3"]
    minimal = lines[1]
    assert minimal["type"] == "audit" and minimal["reason"] == "missing_token" and minimal["status"] == 401
    assert "user_agent" not in minimal and "surrogates not allowed" in minimal["unserialisable"]
    assert "Type is not JSON serializable: set" in lines[2]["unserialisable"]
    assert metric("gateway_audit_records_unserialisable_total") == before + 3
    logged = [r for r in caplog.records if "could not be serialised" in r.getMessage()]
    assert len(logged) == 3 and all(r.levelno == logging.ERROR for r in logged)
    assert logged[0].request_id == "bad-surrogate"  # type: ignore[attr-defined]


class FailingOnce(AuditWriter):
    """A writer whose first write hits a fault no one planned for (not an OSError)."""

    failed = False

    def _write_all(self, fd: int, data: bytes) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("an unplanned fault")
        super()._write_all(fd, data)


async def test_the_flush_loop_survives_an_unexpected_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.audit")
    writer = FailingOnce(writer_config(tmp_path / "audit.jsonl"))
    await writer.start()
    writer.write({"type": "audit", "request_id": "lost"})
    deadline = time.monotonic() + 5
    while not any("carries on" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the failure was never logged"
        await asyncio.sleep(0.01)
    assert writer._task is not None and not writer._task.done()
    writer.write({"type": "audit", "request_id": "after"})
    deadline = time.monotonic() + 5
    while writer.written < 1:
        assert time.monotonic() < deadline, "the loop stopped writing after the failure"
        await asyncio.sleep(0.01)
    assert writer.healthy()
    await writer.stop()
    assert [r["request_id"] for r in lines_of(tmp_path / "audit.jsonl")] == ["after"]


async def test_a_dead_writer_turns_readyz_unready(gw: RunningGateway) -> None:
    assert (await readyz(gw))[0] == 200
    assert metric("gateway_audit_writer_heartbeat_timestamp_seconds") > time.time() - 60
    task = gw.gateway.audit._task
    assert task is not None
    task.cancel()  # however it died
    await asyncio.sleep(0)
    status, body = await readyz(gw)
    assert status == 503 and body["audit_writer"] is False and body["accepting"] is True


async def test_a_stuck_sink_turns_readyz_unready_until_it_drains(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    pipe = StalledPipe(tmp_path / "audit.fifo")
    gw = await make_gateway(audit={"sink": "file", "path": str(pipe.path), "flush_interval": "5ms",
                                   "stall_timeout": "300ms"})
    try:
        async with aiohttp.ClientSession() as session:
            for index in range(300):  # more than a pipe buffer holds: the writer thread blocks
                async with session.get(gw.url + "/public/health", headers={"X-Request-Id": f"s{index}"}) as resp:
                    assert resp.status == 200
        deadline = time.monotonic() + 5
        while (await readyz(gw))[0] == 200:
            assert time.monotonic() < deadline, "a stuck writer kept the gateway ready"
            await asyncio.sleep(0.05)
        assert (await readyz(gw))[1]["audit_writer"] is False
        pipe.release.set()
        deadline = time.monotonic() + 5
        while (await readyz(gw))[0] != 200:
            assert time.monotonic() < deadline, "the writer never came back once the sink drained"
            await asyncio.sleep(0.05)
    finally:
        pipe.release.set()
        await gw.stop()
    assert [json.loads(line)["request_id"] for line in pipe.finish()] == [f"s{i}" for i in range(300)]


async def test_stop_gives_up_on_a_sink_that_stays_blocked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.audit")
    pipe = StalledPipe(tmp_path / "audit.fifo")
    writer = AuditWriter(AuditConfig(sink="file", path=str(pipe.path), flush_interval=0.005, stall_timeout=0.3))
    await writer.start()
    try:
        for index in range(2000):
            writer.write({"type": "audit", "request_id": f"b{index}", "padding": "x" * 200})
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await writer.stop()
        assert time.monotonic() - started < 3  # bounded by stall_timeout, not by the sink
        assert any("blocked at shutdown" in r.getMessage() for r in caplog.records)
    finally:
        pipe.release.set()
    # whatever reached the pipe is whole lines, in order, and the file was closed after the last of them
    got = [json.loads(line)["request_id"] for line in pipe.finish()]
    assert got == [f"b{i}" for i in range(len(got))]


@pytest.mark.parametrize("value", ["\udcff", "a\ud800b", "\udfff" * 10])
def test_escaping_makes_any_text_serialisable(value: str) -> None:
    import orjson

    from gateway.audit.record import escape_invalid

    assert orjson.loads(orjson.dumps(escape_invalid(value))) == escape_invalid(value)


def test_an_escaped_or_cut_value_is_never_taken_for_the_tokens_identity(tmp_path: Path) -> None:
    """``gateway incident --revoke`` revokes by what the incident learned of the token: a jti or sid
    the gateway had to cut or escape is not the token's, so the fingerprint is used instead."""
    from gateway.forensics.incident import Target, collect

    fp = "0c26045c21b9e7d9e6b64018779de6ba"
    base = {"type": "audit", "ts": "2026-03-01T09:00:00.000Z", "decision": "allow", "sub": "alice",
            "token_fingerprint": fp}
    records = [
        {**base, "jti": "j" * 256, "sid": "s\\xff", "truncated": ["jti"], "escaped": ["sid"]},
        {**base, "jti": "j" * 256, "sid": "s\\xff", "truncated": ["jti", "user_agent"], "escaped": ["sid"]},
    ]
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    incident = collect([str(path)], Target("fingerprint", fp))
    (token,) = incident.tokens.values()
    assert (token.jti, token.family, token.sub, token.fingerprint) == (None, None, "alice", fp)
    assert incident.families == [] and incident.calls == 2
