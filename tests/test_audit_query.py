"""``gateway audit``: the query over real audit records written by a running gateway."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.demo import DemoIssuer
from gateway.forensics.query import Query, select
from gateway.forensics.scan import BLOCK
from gateway.forensics.times import parse_time
from tests.audit_traffic import AWAY_IP, HOME_IP, TRUSTED, Traffic, assert_no_raw_token, drive
from tests.helpers import GatewayFactory


@pytest.fixture
async def traffic(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> tuple[Traffic, Path]:
    gw = await make_gateway(**TRUSTED)
    result = await drive(gw, issuer, http)
    return result, gw.audit_path


def run(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def jsonl(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line]


async def test_by_jti_finds_every_call_of_the_token_from_both_ips(traffic: tuple[Traffic, Path]) -> None:
    t, path = traffic
    code, out, err = run("audit", str(path), "--jti", t.a.jti, "--format", "json")
    assert code == 0
    records = jsonl(out)
    assert len(records) == 7
    assert {r["jti"] for r in records} == {t.a.jti}
    assert {r["client_ip"] for r in records} == {HOME_IP, AWAY_IP}
    assert "7 records matched" in err


async def test_token_is_hashed_locally_and_never_printed(traffic: tuple[Traffic, Path]) -> None:
    t, path = traffic
    for fmt in ("table", "json", "csv"):
        code, out, err = run("audit", str(path), "--token", t.a.raw, "--format", fmt)
        assert code == 0
        assert_no_raw_token(out + err, t.a)
    assert len(jsonl(run("audit", str(path), "--token", t.a.raw, "--format", "json")[1])) == 7
    # "Bearer <token>" pasted from a header works too
    assert len(jsonl(run("audit", str(path), "--token", f"Bearer {t.a.raw}", "--format", "json")[1])) == 7


async def test_fingerprint_prefix_and_full_fingerprint(traffic: tuple[Traffic, Path]) -> None:
    t, path = traffic
    from gateway.tokens.token import fingerprint

    for value in (t.a.fingerprint[:10], fingerprint(t.a.raw), t.a.fingerprint.upper()):
        records = jsonl(run("audit", str(path), "--fingerprint", value, "--format", "json")[1])
        assert {r["jti"] for r in records} == {t.a.jti}
        assert len(records) == 7
    code, _, err = run("audit", str(path), "--fingerprint", "not-hex")
    assert code == 2 and "hex" in err


async def test_filters_combine_with_and(traffic: tuple[Traffic, Path]) -> None:
    t, path = traffic

    def count(*flags: str) -> int:
        code, out, _ = run("audit", str(path), *flags, "--format", "json")
        assert code == 0
        return len(jsonl(out))

    assert count("--jti", t.a.jti, "--ip", AWAY_IP) == 5
    assert count("--jti", t.a.jti, "--ip", AWAY_IP, "--decision", "deny") == 2
    assert count("--jti", t.a.jti, "--ip", "203.0.113.0/24", "--reason", "insufficient_scope") == 2
    assert count("--sub", "alice", "--route", "list-orders") == 4
    assert count("--family", t.a.sid) == 8
    assert count("--family", t.a.sid, "--client", "demo-client", "--decision", "allow") == 6
    assert count("--sub", "bob", "--reason", "insufficient_scope") == 1
    assert count("--sub", "bob", "--jti", t.a.jti) == 0
    assert count("--decision", "deny") == 3
    assert count("--since", "1h") == 10
    assert count("--since", "1h", "--until", "2000-01-01T00:00:00Z") == 0
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert count("--until", future, "--sub", "alice") == 8
    assert count("--since", future) == 0


async def test_table_and_csv_output(traffic: tuple[Traffic, Path]) -> None:
    t, path = traffic
    _, out, _ = run("audit", str(path), "--jti", t.a.jti)
    lines = out.splitlines()
    assert lines[0].startswith("TIME") and "CLIENT IP" in lines[0]
    assert len(lines) == 8 and sum(AWAY_IP in line for line in lines) == 5
    _, out, _ = run("audit", str(path), "--sub", "alice", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8
    denied = [r for r in rows if r["decision"] == "deny"]
    assert [r["missing_scopes"] for r in denied] == ["orders:write", "orders:write"]
    assert all(r["scopes"] == "orders:read" for r in denied)


async def test_gzip_rotated_files_and_foreign_lines(traffic: tuple[Traffic, Path], tmp_path: Path) -> None:
    t, path = traffic
    lines = path.read_bytes().splitlines(keepends=True)
    old = tmp_path / "audit.jsonl.2.gz"
    with gzip.open(old, "wb") as f:  # the older half, compressed, with the gateway's own log lines in between
        for line in lines[:5]:
            f.write(line)
            f.write(b'{"type":"log","ts":"2024-05-01T00:00:00.000Z","level":"info","msg":"jwks refreshed"}\n')
    recent = tmp_path / "audit.jsonl.1"
    recent.write_bytes(
        b"not json at all\n\n"
        + b"".join(b"2024-05-01T00:00:00.123456789Z " + line for line in lines[5:])  # kubectl logs --timestamps
        + b'{"type": "log", "msg": "' + t.a.jti.encode() + b'"}\n'
        + b'{"broken": \n'
    )
    code, out, err = run("audit", str(old), str(recent), "--jti", t.a.jti, "--format", "json")
    assert code == 0, err
    records = jsonl(out)
    assert len(records) == 7
    assert [r["request_id"] for r in records] == [r["request_id"] for r in t.records if r["jti"] == t.a.jti]
    # a scan without a literal to look for parses every line: same answer
    records = jsonl(run("audit", str(old), str(recent), "--decision", "deny", "--format", "json")[1])
    assert len(records) == 3


async def test_truncated_gzip_is_read_as_far_as_it_goes(traffic: tuple[Traffic, Path], tmp_path: Path) -> None:
    _, path = traffic
    data = gzip.compress(path.read_bytes())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) - 20])
    code, out, err = run("audit", str(cut), "--format", "json")
    assert code == 0
    assert "ends early" in err
    assert 0 < len(jsonl(out)) <= 10


async def test_stdin_plain_and_gzip(traffic: tuple[Traffic, Path]) -> None:
    t, path = traffic
    data = path.read_bytes()
    for payload in (data, gzip.compress(data)):
        code, out, _ = run("audit", "--jti", t.a.jti, "--format", "json", input=payload)
        assert code == 0 and len(jsonl(out)) == 7
        code, out, _ = run("audit", "-", "--sub", "bob", "--format", "json", input=payload)
        assert code == 0 and len(jsonl(out)) == 2


async def test_real_pipe_into_the_command(traffic: tuple[Traffic, Path]) -> None:
    """``kubectl logs ... | gateway audit --jti J``: a real process reading a real pipe."""
    t, path = traffic
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "--jti", t.a.jti, "--format", "json"],
        input=path.read_bytes(), capture_output=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 7
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "--token", t.a.raw],
        input=gzip.compress(b'{"type":"log","msg":"starting"}\n' + path.read_bytes()),
        capture_output=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 8  # header + 7
    assert_no_raw_token(proc.stdout.decode() + proc.stderr.decode(), t.a)


def test_times() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert parse_time("30m", now) == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)
    assert parse_time("7d", now) == datetime(2024, 4, 24, 12, 0, tzinfo=UTC)
    assert parse_time("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("2024-05-01T12:00:00Z") == now
    assert parse_time("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("yesterday")
    code, _, err = run("audit", "--since", "yesterday", input=b"")
    assert code == 2 and "RFC 3339" in err


def test_memory_stays_flat_while_streaming(tmp_path: Path) -> None:
    """Reading 40,000 records holds one block of the engine (``scan.BLOCK``), not the file:
    peak allocations are that block and a little, whatever the file's size."""
    base = {
        "type": "audit", "ts": "2024-05-01T00:00:00.000Z", "request_id": "r", "mode": "proxy",
        "client_ip": "10.0.0.1", "method": "GET", "host": "api", "path": "/orders", "route": "list-orders",
        "status": 200, "decision": "allow", "reason": "allowed", "sub": "u", "jti": "j", "sid": "s",
        "token_fingerprint": "0" * 32, "scopes": ["orders:read"], "user_agent": "x" * 200,
    }
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        for i in range(40_000):
            f.write(orjson.dumps({**base, "request_id": f"r{i}", "jti": f"jti-{i}",
                                  "decision": "deny" if i % 1000 == 0 else "allow"}) + b"\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        denied = sum(1 for _ in select([str(path)], Query(decision="deny")))
        found = [r["request_id"] for r in select([str(path)], Query(jti="jti-39999"))]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert denied == 40 and found == ["r39999"]
    assert size > 2 * BLOCK + 4 * 2**20
    assert peak < BLOCK + 2 * 2**20, (peak, size)
