"""The small things a user of the command line notices: ``check-config`` taking the file either
way, one exit status for a missing file and a directory, ``--version``, whole summaries in
``--help``, plurals, ``gateway demo`` on ports of one's choosing, ``incident --format json``,
an ``audit`` table that fits the terminal, progress on a terminal and never in a pipe, and the
benchmark generator's ``--help``.

Terminals are real: a pseudo-terminal (``pty``) of a given width is the command's stdout or
stderr; the demo is a real ``gateway demo`` process answering on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import platform
import pty
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
from click.testing import CliRunner

from gateway.cli import _summary, demo_ports, main, version_text
from gateway.demo import DemoPorts
from gateway.forensics.progress import Progress, bytes_read
from gateway.forensics.query import table_header, table_row
from tests.helpers import MINIMAL_CONFIG

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]
BAR = re.compile(r"reading:.*B/s")  # what the progress bar looks like on the terminal


def make_log(path: Path, records: int, seed: int = 7) -> list[str]:
    """An audit log written by bench/make_audit_log.py's generator; the needle tokens' jtis."""
    spec = importlib.util.spec_from_file_location("make_audit_log", ROOT / "bench" / "make_audit_log.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with path.open("wb") as out:
        needles = module.generate(out, records, 2, seed, 1714521600.0)
    return [n["jti"] for n in needles]


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    return path, make_log(path, 20_000)


def run_on_terminal(args: list[str], columns: int, *, stdout_tty: bool = True, stderr_tty: bool = False,
                    env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL,
                    feed: Iterator[bytes] | None = None) -> tuple[str, str, str]:
    """Run ``args`` with stdout and/or stderr on a pseudo-terminal ``columns`` wide.
    Returns (what the terminal showed, stdout if piped, stderr if piped)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environment.update(env or {}, TERM="xterm")
    proc = subprocess.Popen(args, cwd=ROOT, env=environment, stdin=subprocess.PIPE if feed else stdin,
                            stdout=slave if stdout_tty else subprocess.PIPE,
                            stderr=slave if stderr_tty else subprocess.PIPE)
    os.close(slave)
    feeder = None
    if feed is not None:
        def pump() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                for chunk in feed:
                    proc.stdin.write(chunk)
                    proc.stdin.flush()
            proc.stdin.close()
        feeder = threading.Thread(target=pump, daemon=True)
        feeder.start()
    shown, piped = b"", {"out": b"", "err": b""}
    streams = {proc.stdout: "out", proc.stderr: "err"}
    streams.pop(None, None)
    open_fds: list[Any] = [master, *streams]
    deadline = time.monotonic() + 120
    while open_fds and time.monotonic() < deadline:
        ready, _, _ = select.select(open_fds, [], [], 1)
        for fd in ready:
            try:
                chunk = os.read(fd, 65536) if fd == master else fd.read1(65536)
            except OSError:  # EIO: the terminal's last writer is gone
                chunk = b""
            if not chunk:
                open_fds.remove(fd)
            elif fd == master:
                shown += chunk
            else:
                piped[streams[fd]] += chunk
    proc.wait(timeout=30)
    os.close(master)
    if feeder is not None:
        feeder.join(5)
    return shown.decode().replace("\r\n", "\n"), piped["out"].decode(), piped["err"].decode()


# --- check-config --------------------------------------------------------------------------------


def test_check_config_takes_the_file_either_way(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL_CONFIG)
    for args in (["check-config", str(path)], ["check-config", "--config", str(path)],
                 ["check-config", str(path), "--config", str(path)]):
        result = CliRunner().invoke(main, args)
        assert (result.exit_code, result.stdout) == (0, f"{path}: ok (1 route, 1 upstream, 1 issuer)\n"), args
    other = tmp_path / "other.yaml"
    result = CliRunner().invoke(main, ["check-config", str(path), "--config", str(other)])
    assert result.exit_code == 2 and "two files given" in result.stderr
    result = CliRunner().invoke(main, ["check-config"])
    assert result.exit_code == 2 and "which file? gateway check-config FILE (or --config FILE)" in result.stderr


@pytest.mark.parametrize("command", [["check-config"], ["check-config", "--config"], ["serve", "--config"],
                                     ["revoke", "--jti", "j", "--config"]])
def test_a_missing_file_and_a_directory_exit_alike(tmp_path: Path, command: list[str]) -> None:
    missing = CliRunner().invoke(main, [*command, str(tmp_path / "absent.yaml")])
    directory = CliRunner().invoke(main, [*command, str(tmp_path)])
    assert missing.exit_code == directory.exit_code == 1
    assert missing.stderr == f"error: {tmp_path / 'absent.yaml'}: no such file\n"
    assert directory.stderr == f"error: {tmp_path}: is a directory, not a configuration file\n"


def test_counts_are_in_the_singular_and_the_plural(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(MINIMAL_CONFIG)
    two = tmp_path / "two.yaml"
    two.write_text(MINIMAL_CONFIG.replace("upstreams:\n", "upstreams:\n  other:\n    url: http://127.0.0.1:9001\n")
                   .replace("    audiences: [api]\n", "    audiences: [api]\n  - issuer: https://b.example\n"
                            "    audiences: [b]\n") + "  - name: s\n    path: /s\n    upstream: other\n")
    none = tmp_path / "none.yaml"
    none.write_text("upstreams: {a: {url: 'http://127.0.0.1:1'}}\nroutes: [{name: r, path: /r, upstream: a, "
                    "auth: none}]\n")
    said = {p.name: CliRunner().invoke(main, ["check-config", str(p)]).stdout for p in (one, two, none)}
    assert said == {"one.yaml": f"{one}: ok (1 route, 1 upstream, 1 issuer)\n",
                    "two.yaml": f"{two}: ok (2 routes, 2 upstreams, 2 issuers)\n",
                    "none.yaml": f"{none}: ok (1 route, 1 upstream, 0 issuers)\n"}


def test_serve_names_the_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            admin = free.getsockname()[1]
        path = tmp_path / "gateway.yaml"
        path.write_text("upstreams: {a: {url: 'http://127.0.0.1:1'}}\nroutes: [{name: r, path: /r, upstream: a, "
                        f"auth: none}}]\nlisten: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\n"
                        "watch_config: false\n")  # no issuer: nothing is fetched from anywhere
        run = subprocess.run([*GATEWAY, "serve", "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert run.returncode == 1
    assert run.stderr == (f"error: {path}: cannot listen on 127.0.0.1:{port}: Address already in use (another "
                          "process holds it: stop it or choose another address)\n")


# --- --version and --help ------------------------------------------------------------------------


def test_version_names_the_gateway_python_aiohttp_and_openssl() -> None:
    run = subprocess.run([*GATEWAY, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0] == f"tokengate {version('tokengate')}"
    assert lines[1] == f"Python {platform.python_version()} ({platform.python_implementation()})"
    assert lines[2] == f"aiohttp {aiohttp.__version__}"
    assert lines[3] == f"{ssl.OPENSSL_VERSION} (TLS: Python's ssl module)"
    assert lines[4].startswith(f"cryptography {version('cryptography')} with OpenSSL ")
    assert CliRunner().invoke(main, ["--version"]).stdout == version_text() + "\n" == run.stdout


def _commands() -> dict[str, click.Command]:
    """Every command, the lazily loaded ones included."""
    ctx = click.Context(main)
    commands = {name: main.get_command(ctx, name) for name in main.list_commands(ctx)}
    return {name: command for name, command in commands.items() if command is not None}


@pytest.mark.parametrize("width", [60, 80, 200])
def test_help_lists_every_command_with_its_whole_summary(width: int) -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=width)
    assert result.exit_code == 0
    listed = " ".join(result.stdout.split("Commands:")[1].split())  # the list, its line breaks undone
    assert "..." not in listed
    for name, command in _commands().items():
        summary = _summary(command.help or "")
        assert summary.endswith(".") and f"{name} {summary}" in listed, (name, listed)


# dpop-request: argparse's own help
@pytest.mark.parametrize("name", sorted(n for n in main.list_commands(click.Context(main)) if n != "dpop-request"))
def test_every_command_describes_itself_and_every_option(name: str) -> None:
    command = _commands()[name]
    result = CliRunner().invoke(main, [name, "--help"], terminal_width=100)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert " ".join(_summary(command.help or "").split()) in text
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"gateway {name} {param.opts[0]} has no help"


# --- gateway demo ----------------------------------------------------------------------------------


def test_demo_ports_are_the_defaults_given_or_free() -> None:
    assert demo_ports(None, None, None, None, False) == DemoPorts()
    assert demo_ports(18080, 19090, 19400, 19401, False) == DemoPorts(18080, 19400, 19401, 19090)
    free = demo_ports(None, None, None, None, True)
    ports = [free.gateway, free.issuer, free.upstream, free.admin]
    assert len(set(ports)) == 4 and not set(ports) & {8080, 9090, 9400, 9401}
    for port in ports:  # really free: each can be bound now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    mixed = demo_ports(18080, 0, None, None, False)  # 0 picks one; the others keep their defaults
    assert (mixed.gateway, mixed.issuer, mixed.upstream) == (18080, 9400, 9401) and mixed.admin not in (0, 9090)


@pytest.mark.parametrize(("given", "message"), [
    ((5000, 5000, None, None, False), "the demo ports must differ: --port-proxy 5000, --port-admin 5000"),
    ((9400, None, None, None, False), "--port-proxy 9400 is also the issuer port's default: give --port-issuer too, "
                                      "or --free-ports"),
])
def test_demo_ports_that_clash_are_refused(given: tuple[Any, ...], message: str) -> None:
    with pytest.raises(click.UsageError) as caught:
        demo_ports(*given)
    assert str(caught.value.message) == message


def test_demo_port_flags_are_checked() -> None:
    result = CliRunner().invoke(main, ["demo", "--port-admin", "70000"])
    assert result.exit_code == 2 and "70000 is not a port (0-65535; 0 picks a free one)" in result.stderr
    result = CliRunner().invoke(main, ["demo", "--port-issuer", "-1"])
    assert result.exit_code == 2 and "-1 is not a port" in result.stderr


def _start_demo(args: list[str], audit: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*GATEWAY, "demo", *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "DEMO_AUDIT_PATH": str(audit)})
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops the demo."):
            return proc, "".join(lines)
    proc.kill()
    raise AssertionError("".join(lines) + (proc.stderr.read() if proc.stderr else ""))


def _get(url: str) -> tuple[int, bytes]:
    for _ in range(50):  # the gateway starts listening just after it prints
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # 127.0.0.1 only
                return int(response.status), response.read()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize("how", ["free", "given"])
def test_the_demo_answers_on_the_ports_it_prints(tmp_path: Path, how: str) -> None:
    chosen: list[int] = []
    while len(chosen) < 4:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            if (port := int(sock.getsockname()[1])) not in chosen:
                chosen.append(port)
    args = ["--free-ports"] if how == "free" else [
        "--port-proxy", str(chosen[0]), "--port-issuer", str(chosen[1]), "--port-upstream", str(chosen[2]),
        "--port-admin", str(chosen[3])]
    proc, text = _start_demo(args, tmp_path / "audit.jsonl")
    try:
        head = re.search(r"gateway http://127\.0\.0\.1:(\d+), issuer http://127\.0\.0\.1:(\d+), upstream "
                         r"http://127\.0\.0\.1:(\d+)\nmetrics: http://127\.0\.0\.1:(\d+)/metrics", text)
        assert head, text
        proxy, issuer, upstream, admin = (int(p) for p in head.groups())
        if how == "given":
            assert [proxy, issuer, upstream, admin] == chosen
        else:
            assert not {proxy, issuer, upstream, admin} & {8080, 9090, 9400, 9401}
        # every address the printed commands use is one of the four
        assert {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)} == {proxy, issuer, upstream, admin}
        assert _get(f"http://127.0.0.1:{proxy}/public/health")[0] == 200  # through the gateway to the upstream
        assert _get(f"http://127.0.0.1:{admin}/metrics")[0] == 200
        status, body = _get(f"http://127.0.0.1:{issuer}/.well-known/openid-configuration")
        assert status == 200 and json.loads(body)["issuer"] == f"http://127.0.0.1:{issuer}"
        assert _get(f"http://127.0.0.1:{upstream}/echo")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_the_demo_says_which_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--port-proxy", "--port-issuer"):
            run = subprocess.run([*GATEWAY, "demo", "--free-ports", flag, str(port)], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60, env={**os.environ, "DEMO_AUDIT_PATH": str(tmp_path / "a")})
            which = flag.removeprefix("--port-")
            assert run.returncode == 1 and run.stdout == ""
            assert run.stderr == (f"gateway demo: cannot listen on 127.0.0.1:{port} (the {which} port): Address "
                                  f"already in use; choose another with {flag}, or --free-ports\n")


# --- gateway incident: --format json and the HTML notice -----------------------------------------


def test_incident_json_is_the_report_for_tools(audit_log: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, needles = audit_log
    html = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["incident", str(path), "--jti", needles[0], "--format", "json",
                                       "--html", str(html)])
    assert result.exit_code == 0
    report = json.loads(result.stdout)  # standard output is the JSON document alone
    assert result.stderr == f"HTML report written to {html}\n"
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert report["target"] == {"kind": "jti", "value": needles[0], "from_token": False}
    summary = report["summary"]
    assert report["found"] and summary["calls"] == summary["allowed"] + summary["denied"] == len(report["calls"])
    assert summary["families"] == ["needle-family-0"] and summary["subjects"] == ["needle-user-0"]
    assert sum(ip["calls"] for ip in report["client_ips"]) == summary["calls"] == summary["calls"]
    assert sum(d["count"] for d in report["denials"]) == summary["denied"]
    assert [c["ts"] for c in report["calls"]] == sorted(c["ts"] for c in report["calls"])
    text = CliRunner().invoke(main, ["incident", str(path), "--jti", needles[0]])
    assert f"calls: {summary['calls']} ({summary['allowed']} allowed, {summary['denied']} denied)" in text.stdout


def test_incident_json_for_nothing_found(audit_log: tuple[Path, list[str]]) -> None:
    result = CliRunner().invoke(main, ["incident", str(audit_log[0]), "--sub", "nobody", "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["found"] is False and report["calls"] == [] and report["target"]["kind"] == "sub"


def test_incident_text_html_notice_goes_to_stderr(audit_log: tuple[Path, list[str]], tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["incident", str(audit_log[0]), "--jti", audit_log[1][1], "--html", str(html)])
    assert result.exit_code == 0 and "HTML report" not in result.stdout
    assert result.stderr == f"HTML report written to {html}\n"


# --- gateway audit --format table: the terminal's width ------------------------------------------


def test_audit_table_piped_has_every_column_at_full_width(audit_log: tuple[Path, list[str]]) -> None:
    path, needles = audit_log
    result = CliRunner().invoke(main, ["audit", str(path), "--jti", needles[0]], env={"COLUMNS": "60"})
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in path.read_text().splitlines() if needles[0] in line]
    assert lines == [table_header(), *(table_row(r) for r in records)]  # as before: no terminal, no fitting
    assert max(map(len, lines)) > 150


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_audit_table_fits_the_terminal(audit_log: tuple[Path, list[str]], columns: int) -> None:
    path, needles = audit_log
    shown, _, err = run_on_terminal([*GATEWAY, "audit", str(path), "--jti", needles[0]], columns)
    lines = shown.splitlines()
    count = int(err.split()[0])
    assert err == f"{count} records matched\n" and count > 10 and len(lines) == count + 1
    assert max(map(len, lines)) <= columns
    header = lines[0].split()
    assert header[0] == "TIME" and {"PATH", "STATUS", "REASON"} <= set(header)
    assert ("CLIENT" in header) == (columns >= 80) and ("JTI" in header) == (columns >= 214)
    first = lines[1]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d  ", first)  # the time cut to the second, not mid-number
    assert "insufficient_scope" in shown  # the reason column is wide enough for the common reasons


def test_audit_table_honours_columns_as_a_terminal_does(audit_log: tuple[Path, list[str]]) -> None:
    path, needles = audit_log
    shown, _, _ = run_on_terminal([*GATEWAY, "audit", str(path), "--jti", needles[0]], 200, env={"COLUMNS": "70"})
    assert max(map(len, shown.splitlines())) <= 70


def test_a_flagged_record_keeps_within_a_narrow_terminal(tmp_path: Path) -> None:
    record = {"type": "audit", "ts": "2024-05-01T09:12:44.123Z", "client_ip": "203.0.113.9", "method": "GET",
              "path": "/orders/" + "x" * 80, "route": "list-orders", "status": 200, "reason": "allowed",
              "sub": "alice", "jti": "j1", "suspicious": ["new_network", "too_many_ips\x1b[31m"]}
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(record) + "\n")
    shown, _, _ = run_on_terminal([*GATEWAY, "audit", str(path)], 60)
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 60 and "\x1b" not in shown
    assert lines[1].startswith("2024-05-01T09:12:44  /orders/xx") and "…" in lines[1]
    assert lines[2] == "  SUSPICIOUS: new_network too_many_ips\\x1b[31m"


# --- progress: on a terminal, never in a pipe ------------------------------------------------------


def _slow_lines(path: Path, seconds: float) -> Iterator[bytes]:
    """The log's lines, spread over ``seconds``: a long read whatever the machine's speed."""
    data = path.read_bytes().splitlines(keepends=True)
    step = max(1, len(data) // 20)
    for start in range(0, len(data), step):
        yield b"".join(data[start:start + step])
        time.sleep(seconds / 20)


def test_progress_shows_on_a_terminal_and_goes_away(audit_log: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, needles = audit_log
    shown, out, _ = run_on_terminal([*GATEWAY, "audit", "-", "--jti", needles[0], "--format", "csv"], 100,
                                    stdout_tty=False, stderr_tty=True, feed=_slow_lines(path, 2.5))
    assert BAR.search(shown), shown  # the bar was drawn on stderr's terminal while stdin was read
    assert shown.rstrip().endswith("records matched")
    final = shown.rsplit("\r", 1)[-1]  # what is left on the bar's line when the command ends
    assert not BAR.search(final)
    assert out.startswith("ts,request_id,") and "reading" not in out  # the results are untouched


def test_progress_lifts_itself_over_records_on_the_same_terminal(audit_log: tuple[Path, list[str]]) -> None:
    path, needles = audit_log
    shown, _, _ = run_on_terminal([*GATEWAY, "audit", "-", "--jti", needles[0]], 120, stderr_tty=True,
                                  feed=_slow_lines(path, 2.5))
    lines = [line for line in shown.splitlines() if re.search(r"\d{4}-\d\d-\d\dT", line)]
    assert len(lines) > 10
    for line in lines:  # a record starts its line: the bar was lifted off it, not written over or beside it
        assert re.match(r"\d{4}-", line.rsplit("\r", 1)[-1]) and "reading:" not in line.rsplit("\r", 1)[-1], line
    assert BAR.search(shown)


def test_no_progress_when_stderr_is_piped(audit_log: tuple[Path, list[str]]) -> None:
    path, needles = audit_log
    run = subprocess.Popen([*GATEWAY, "audit", "-", "--jti", needles[0]], cwd=ROOT, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdin is not None
    for chunk in _slow_lines(path, 1.5):
        run.stdin.write(chunk)
    run.stdin.close()
    assert run.stdout is not None and run.stderr is not None
    out, err = run.stdout.read(), run.stderr.read()  # a few lines: no pipe fills up
    assert run.wait(timeout=60) == 0
    assert re.fullmatch(rb"\d+ records matched\n", err), err  # the count alone: no bar, no escape sequence
    assert b"\r" not in out and b"\x1b" not in out


def test_the_counter_includes_worker_processes(tmp_path: Path) -> None:
    """Bytes read with pread by a child process count, as a scanning pool's workers read."""
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 * 2**20))
    read = bytes_read()
    if read is None:
        pytest.skip("this system keeps no count of the bytes a process reads (/proc/<pid>/io)")
    child = subprocess.Popen([sys.executable, "-c", "import os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                              "os.pread(fd, 3 * 2**20, 0)\nprint('read', flush=True)\ntime.sleep(30)", str(data)],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"read\n"
        assert read() >= 3 * 2**20
    finally:
        child.kill()
        child.wait()


def test_progress_is_off_unless_asked_on_a_terminal() -> None:
    counter = [0]
    with Progress(100, lambda: counter[0], "reading") as progress:  # stderr is not a terminal under pytest
        assert progress.enabled is False
        assert progress.lines(sys.stdout) is sys.stdout


# --- bench/make_audit_log.py --help -----------------------------------------------------------------


def test_the_benchmark_generator_describes_every_flag_with_its_default() -> None:
    run = subprocess.run([sys.executable, "bench/make_audit_log.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0
    options = {m.group(1): m.group(2) for m in re.finditer(r"^  (--[a-z]+)(?: [A-Z]+)?\s+(.*)$", run.stdout, re.M)}
    assert set(options) == {"--records", "--out", "--gzip", "--needles", "--seed", "--start"}
    defaults = {"--records": "1000000", "--out": "bench/results/audit-1m.jsonl", "--needles": "3", "--seed": "5",
                "--start": "2024-05-01T00:00:00Z", "--gzip": "plain JSON lines"}
    for flag, text in options.items():
        assert len(text) > 20 and "default: " + defaults[flag] in text, (flag, text)


def test_the_offline_commands_start_without_the_request_path() -> None:
    """``gateway audit`` / ``incident`` / ``--help`` start fast: they load neither the
    configuration models nor aiohttp unless a command needs them."""
    code = ("import sys\nfrom gateway.cli import main\nsys.argv = ['gateway', 'audit', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('gateway.config', 'aiohttp', 'gateway.decision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert set(_commands()) >= {"audit", "incident", "revoke", "serve", "check-config", "demo"}
