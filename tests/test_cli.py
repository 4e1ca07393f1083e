"""The command line: ``gateway check-config`` exit codes and messages, ``python -m gateway``,
and a real ``gateway serve`` process whose own log never shows a token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import aiohttp
import yaml
from click.testing import CliRunner

from gateway.cli import main
from gateway.demo import DemoIssuer, EchoUpstream
from tests.helpers import MINIMAL_CONFIG, base_config, bearer, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gateway.example.yaml"
GOOD = MINIMAL_CONFIG


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_config_ok() -> None:
    result = CliRunner().invoke(main, ["check-config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{EXAMPLE}: ok (4 routes, 1 upstream, 1 issuer)\n"


def test_check_config_names_an_unknown_upstream(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("upstream: svc", "upstream: payments"))
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert result.stderr == (f"error: {path}:10: routes[0].upstream: unknown upstream 'payments' (the only upstream "
                             "is svc)\n")
    assert result.stdout == ""


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    text = GOOD.replace("audiences: [api]", "audiences: [api]\n    leeway: a while") + "listn: 127.0.0.1:80\n"
    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {path}:4: issuers[0].leeway: 'a while' is not a duration like 30s, 5m or 1h",
        f"error: {path}:12: listn: unknown key; did you mean listen?",
    ]


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check-config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'nope.yaml'}: no such file\n"


def test_check_config_env_var(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("http://127.0.0.1:9000", "${TEST_CLI_UPSTREAM_URL}"))
    env = {k: v for k, v in os.environ.items() if k != "TEST_CLI_UPSTREAM_URL"}
    result = CliRunner(env=env).invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert f"{path}:6: environment variable TEST_CLI_UPSTREAM_URL is not set" in result.stderr
    result = CliRunner(env={"TEST_CLI_UPSTREAM_URL": "http://10.1.2.3:80"}).invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0


def test_python_dash_m_gateway_and_the_console_script(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("upstream: svc", "upstream: nowhere"))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(bad)], capture_output=True, text=True, timeout=30,
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert f"{bad}:10: routes[0].upstream: unknown upstream 'nowhere'" in run.stderr
    # `gateway` is the console script of the same entry point
    scripts = entry_points(group="console_scripts", name="gateway")
    assert [ep.value for ep in scripts] == ["gateway.cli:main"]


async def test_serve_process_never_logs_a_token(
    issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path
) -> None:
    """A real `gateway serve` at log_level debug, fed valid, invalid and query tokens."""
    proxy_port, admin_port = free_port(), free_port()
    data = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    data.update(listen=f"127.0.0.1:{proxy_port}", admin_listen=f"127.0.0.1:{admin_port}", log_level="debug",
                watch_config=False)
    config = write(tmp_path, yaml.safe_dump(data))
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config),
            stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
        )
    try:
        tokens = [issuer.mint(), issuer.mint(ttl=-60), issuer.mint(scope="profile"), issuer.mint()[:-4] + "AAAA",
                  issuer.mint(headers={"kid": "unknown"})]
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(log_path.read_text())
            statuses = []
            for token in tokens:
                for path in ("/orders", f"/orders?access_token={token}", f"/x%2f?access_token={token}"):
                    async with session.get(f"http://127.0.0.1:{proxy_port}{path}", headers=bearer(token)) as resp:
                        statuses.append(resp.status)
            assert statuses[0] == 200
            # a malformed request carrying a token, then a client that leaves mid-request: normal traffic
            malformed = tokens[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            writer.write(f"GET /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {malformed}\r\n"
                         f"Bad Header {malformed}\r\n\r\n".encode())
            await writer.drain()
            assert (await reader.read(12))[9:12] == b"400"
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            writer.write(b"GET /slow/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.transport.abort()
            await asyncio.sleep(1.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    log_text = log_path.read_text()
    lines = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert any(line.get("msg") == "jwks loaded" for line in lines)  # the log is there, as JSON lines
    assert [line for line in lines if line.get("level") == "error"] == []
    audit_text = (tmp_path / "audit.jsonl").read_text()
    assert len(audit_text.splitlines()) == len(tokens) * 3 + 1  # + the request its client abandoned
    for token in tokens:
        for part in (token, *token.split(".")):
            if len(part) >= 20:
                assert part not in log_text
                assert part not in audit_text
