"""The supervisor's forked workers (worker_process.py), below a real ``gateway serve``.

A forked child must end as a fresh interpreter would (its exit status, its traceback), never
run the parent's code after the fork, see what the parent adds to its environment, and keep
none of the parent's port reservations. The metrics must be multiprocess values before any is
made: what ``gateway serve`` imports before it knows ``workers`` makes none. The whole gateway
with forked workers is exercised in test_lifecycle.py.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import worker_process, workers
from gateway.config import parse_config
from gateway.worker_process import WorkerSpec, spawn
from gateway.workers import Supervisor, exit_code
from tests.helpers import MINIMAL_CONFIG

ROOT = Path(__file__).resolve().parent.parent
SPEC = WorkerSpec(0, os.getpid(), "gw.yaml", MINIMAL_CONFIG, MINIMAL_CONFIG, {})


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    """spawn() freezes the heap before it forks (for the workers' sake): not this test process's."""
    yield
    gc.unfreeze()


def wait_for(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (code := exit_code(pid)) is None:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return code


def fork_running(monkeypatch: pytest.MonkeyPatch, body: Callable[[WorkerSpec], None], **kwargs: object) -> int:
    """Fork a child whose worker is ``body``; its exit status."""
    monkeypatch.setattr(worker_process, "worker_main", body)
    env = kwargs.get("env", {})
    reservations = kwargs.get("reservations", [])
    assert isinstance(env, dict) and isinstance(reservations, list)
    return wait_for(spawn(SPEC, env, reservations))


@pytest.mark.parametrize(("body", "status"), [
    (lambda spec: None, 0),
    (lambda spec: sys.exit(), 0),
    (lambda spec: sys.exit(3), 3),
    (lambda spec: sys.exit("a message"), 1),
])
def test_a_forked_worker_exits_with_the_status_an_interpreter_would_give(
    monkeypatch: pytest.MonkeyPatch, body: Callable[[WorkerSpec], None], status: int
) -> None:
    assert fork_running(monkeypatch, body) == status


def test_an_uncaught_exception_is_a_traceback_on_stderr_and_status_1(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def body(spec: WorkerSpec) -> None:
        raise LookupError("worker 0 broke")

    assert fork_running(monkeypatch, body) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "LookupError: worker 0 broke" in err


def test_the_child_never_runs_the_parents_code_after_the_fork(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whatever the worker does, the child ends in os._exit: the caller's ``finally`` runs once."""
    marker = tmp_path / "finally"
    monkeypatch.setattr(worker_process, "worker_main", lambda spec: None)
    try:
        pid = spawn(SPEC, {}, [])
    finally:
        with marker.open("a") as out:
            out.write(f"{os.getpid()}\n")
    assert wait_for(pid) == 0
    assert marker.read_text().split() == [str(os.getpid())]


def test_the_child_gets_the_environment_and_closes_the_reservations(monkeypatch: pytest.MonkeyPatch) -> None:
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    read, write = os.pipe()

    def body(spec: WorkerSpec) -> None:
        seen = {"secret": os.environ.get("TEST_WORKER_SECRET"), "closed": reserved.fileno() == -1,
                "slot": spec.slot, "parent": spec.parent}
        os.write(write, json.dumps(seen).encode())

    try:
        status = fork_running(monkeypatch, body, env={"TEST_WORKER_SECRET": "shared"}, reservations=[reserved])
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            seen = json.loads(pipe.read())
    finally:
        reserved.close()
    assert status == 0
    assert seen == {"secret": "shared", "closed": True, "slot": 0, "parent": os.getpid()}
    assert "TEST_WORKER_SECRET" not in os.environ  # the parent's own environment is left alone


def test_exit_code_is_none_while_it_runs_and_minus_the_signal_when_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_process, "worker_main", lambda spec: time.sleep(30))
    pid = spawn(SPEC, {}, [])
    try:
        assert exit_code(pid) is None
    finally:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(pid) == -signal.SIGKILL


def _run(code: str, metrics_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.run([sys.executable, "-c", code, str(metrics_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_serve_loads_the_configuration_without_making_a_metric(tmp_path: Path) -> None:
    """What ``gateway serve`` imports before it knows ``workers`` (the CLI, the configuration, the
    supervisor) must leave the metrics unmade: the supervisor then chooses multiprocess values."""
    config = tmp_path / "gw.yaml"
    config.write_text(MINIMAL_CONFIG + "workers: 2\n")
    code = (
        "import sys\n"
        "import gateway.cli, gateway.logs, gateway.workers\n"
        "from gateway.launch import load_or_exit\n"
        f"load_or_exit({str(config)!r})\n"
        "print(sorted(m for m in sys.modules if m == 'gateway.metrics'))\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_preload_makes_multiprocess_metrics_and_leaves_no_file_of_the_parent(tmp_path: Path) -> None:
    """The parent's values would be a process that never dies in every scrape; a forked worker's
    go to files of its own pid, and the collector adds them up."""
    code = (
        "import json, os, sys\n"
        "from gateway.config import parse_config\n"
        "from gateway.worker_process import preload\n"
        "from tests.helpers import MINIMAL_CONFIG\n"
        "preload(parse_config(MINIMAL_CONFIG), sys.argv[1])\n"
        "from gateway import metrics\n"
        "assert metrics._SHARED_FILES\n"
        "assert not [f for f in os.listdir(sys.argv[1]) if f.endswith(f'_{os.getpid()}.db')]\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    metrics.REVOCATION_REDIS_UP.set(1)\n"
        "    metrics.CONFIG_RELOADS.labels('success').inc()\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(json.dumps([pid, sorted(os.listdir(sys.argv[1]))]))\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    child, files = json.loads(result.stdout)
    # every value moved to files of the child's pid on its first use (the unlabelled gauges too)
    assert files == [f"counter_{child}.db", f"gauge_livemax_{child}.db", f"gauge_livemin_{child}.db"]


def test_preload_refuses_metrics_made_before_the_directory_was_known(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import gateway.metrics\n"
        "from gateway.config import parse_config\n"
        "from gateway.worker_process import preload\n"
        "from tests.helpers import MINIMAL_CONFIG\n"
        "preload(parse_config(MINIMAL_CONFIG), sys.argv[1])\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 1
    assert "gateway.metrics was imported before the metrics directory was known" in result.stderr


def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grace: str = "0s") -> Supervisor:
    monkeypatch.setattr(workers, "KILL_MARGIN", 0.3)
    path = tmp_path / "gw.yaml"
    text = MINIMAL_CONFIG + f"workers: 2\nshutdown_grace: {grace}\n"
    path.write_text(text)
    parent = Supervisor(str(path), text, parse_config(text, str(path)))
    parent.metrics_dir = str(tmp_path)
    return parent


def test_drain_stops_the_workers_and_kills_one_that_ignores_sigterm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``shutdown_grace`` + KILL_MARGIN pin, on pids instead of subprocess.Popen: SIGTERM to each,
    the status of those that exit, SIGKILL (and reaping) for one still running, exit status 1."""
    def stubborn(spec: WorkerSpec) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        time.sleep(30)

    parent = supervisor(tmp_path, monkeypatch)
    monkeypatch.setattr(worker_process, "worker_main", lambda spec: time.sleep(30))
    polite = spawn(SPEC, {}, [])
    monkeypatch.setattr(worker_process, "worker_main", stubborn)
    # forked with SIGTERM blocked already (a fork keeps the mask): no race with the child's own
    # sigmask call on a busy machine, where SIGTERM could arrive before the child has run at all
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        stuck = spawn(SPEC, {}, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    parent.procs = {0: polite, 1: stuck}
    caplog.set_level("INFO", "gateway.workers")
    started = time.monotonic()
    assert parent._drain() == 1
    assert time.monotonic() - started < 5
    assert parent.procs == {}
    for pid in (polite, stuck):
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped
    [stopped] = [r for r in caplog.records if r.getMessage() == "worker stopped"]
    assert (stopped.pid, stopped.exit_code) == (polite, -signal.SIGTERM)  # type: ignore[attr-defined]
    assert any(r.getMessage().startswith("workers still running after the grace period") for r in caplog.records)


def test_a_dead_worker_is_reaped_and_restarted_later_when_it_dies_young(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parent = supervisor(tmp_path, monkeypatch)
    monkeypatch.setattr(worker_process, "worker_main", lambda spec: sys.exit(7))
    pid = spawn(SPEC, {}, [])
    parent.procs, parent.started, parent.failures = {0: pid}, {0: time.monotonic()}, {0: 1}
    caplog.set_level("INFO", "gateway.workers")
    deadline = time.monotonic() + 5
    while parent.procs and time.monotonic() < deadline:
        parent._reap(restart=True)
        time.sleep(0.01)
    assert parent.procs == {} and parent.failures == {0: 2}
    assert 0.5 < parent.restart_at[0] - time.monotonic() <= 2.0  # backing off: it died young twice
    [exited] = [r for r in caplog.records if r.getMessage() == "worker exited; restarting it"]
    assert (exited.pid, exited.exit_code) == (pid, 7)  # type: ignore[attr-defined]


def test_gateway_serve_says_why_when_the_metrics_were_made_too_early(tmp_path: Path) -> None:
    """A sitecustomize that imports the gateway at interpreter start: one line naming the cause, no
    traceback, status 1 (the workers' /metrics would otherwise add up nothing)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import gateway.metrics\n")
    config = tmp_path / "gw.yaml"
    config.write_text(MINIMAL_CONFIG + "workers: 2\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    errors = [json.loads(line) for line in result.stdout.splitlines() if '"level":"error"' in line]
    assert [e["msg"] for e in errors] == [
        "cannot start the workers: gateway.metrics was imported before the metrics directory was known"]
    assert "Traceback" not in result.stdout + result.stderr
