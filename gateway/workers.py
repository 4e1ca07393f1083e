"""Several worker processes on one port, under a supervising parent (``workers: N``, N > 1).

The parent serves no request itself:

- for every listen address it holds a bound, non-listening ``SO_REUSEPORT`` socket, so port 0
  resolves once and the ports stay reserved while workers come and go;
- it imports what a worker runs once, with ``PROMETHEUS_MULTIPROC_DIR`` set, and forks N
  workers (worker_process.py), each starting with those modules loaded. Each worker listens on
  the same ports with ``SO_REUSEPORT`` and the kernel spreads connections among them. Every
  worker serves the admin port as well: ``/metrics`` from any of them adds up all workers;
- it restarts a worker that dies (backing off when one keeps dying young), forwards SIGTERM,
  SIGINT (as SIGTERM) and SIGHUP, and watches the configuration file, sending SIGHUP to the
  workers when it changes. A restarted worker is forked from the last valid file.

The parent waits for signals with ``sigtimedwait``: no handlers, no event loop, no threads
(nothing that a fork would copy half-way). With ``revocation.snapshot`` it reads the snapshot
once before its first forks (revocation/preload.py), in an event loop closed before them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import multiprocess

from .config import Address, ConfigError, GatewayConfig, parse_config
from .reload import POLL_INTERVAL, ConfigFile
from .worker_process import EarlyMetrics, WorkerSpec, preload, revocations_handed_down, spawn

log = logging.getLogger("gateway.workers")

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
LISTEN_KEYS = ("listen", "admin_listen", "decision_listen")
STABLE_AFTER = 30.0  # a worker that lived this long is restarted at once when it dies
MAX_BACKOFF = 30.0
KILL_MARGIN = 5.0  # beyond shutdown_grace, before workers that still run are killed


def supervise(path: str) -> int:
    """Run the parent until SIGTERM or SIGINT and the workers have drained; the exit status."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        config = parse_config(text, path)
    except (OSError, ValueError, ConfigError) as exc:  # ValueError: not UTF-8
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return Supervisor(path, text, config).run()


class Supervisor:
    """The parent of `workers` worker processes: ports, restarts, signals, the config file."""

    def __init__(self, path: str, text: str, config: GatewayConfig) -> None:
        self.path = path
        self.declared_text = self.current_text = text
        self.declared = self.current = config
        self.file = ConfigFile(path)
        self.reservations: list[socket.socket] = []
        self.ports: dict[str, int] = {}
        self.metrics_dir = ""
        self.procs: dict[int, int] = {}  # slot -> pid of the running (not yet reaped) worker
        self.started: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.restart_at: dict[int, float] = {}
        self.worker_env = shared_secrets(config)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # workers inherit the mask until serve() is ready
        own_dir = False
        try:
            for key in LISTEN_KEYS:
                address = getattr(self.declared, key)
                if address is not None:
                    self.reservations.append(reserve(address))
                    self.ports[key] = self.reservations[-1].getsockname()[1]
            self.metrics_dir, own_dir = prepare_metrics_dir()
            self._warn_about_per_process_state()
            log.info(
                "starting workers",
                extra={"workers": self.declared.workers, "ports": self.ports, "metrics_dir": self.metrics_dir},
            )
            preload(self.current, self.metrics_dir)  # before the revocation list: its metrics must be multiprocess
            with revocations_handed_down(self.current):  # the first workers only: a restart loads as ever
                for slot in range(self.declared.workers):
                    self._start(slot)
            self._supervise()
            return self._drain()
        except (OSError, EarlyMetrics) as exc:
            log.error("cannot start the workers: %s", getattr(exc, "strerror", None) or exc)
            self._drain()
            return 1
        finally:
            for sock in self.reservations:
                sock.close()
            if own_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _warn_about_per_process_state(self) -> None:
        revocation = self.declared.revocation
        if not revocation.shared:
            log.warning(
                "the revocation list is in memory, one per worker: a revocation reaches only the worker that "
                "received it; with workers > 1 configure revocation.redis_url or revocation.sentinel"
            )

    def _start(self, slot: int) -> None:
        preload(self.current, self.metrics_dir)  # at once after the first time
        spec = WorkerSpec(slot, os.getpid(), self.path, self.declared_text, self.current_text, self.ports)
        pid = spawn(spec, self.worker_env, self.reservations)
        self.procs[slot] = pid
        self.started[slot] = time.monotonic()
        log.info("worker started", extra={"worker": slot, "pid": pid})

    def _supervise(self) -> None:
        next_poll = time.monotonic() + POLL_INTERVAL
        while True:
            wake = min([next_poll, *self.restart_at.values()])
            info = signal.sigtimedwait(SIGNALS, max(0.0, wake - time.monotonic()))
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                log.info(
                    "shutting down", extra={"signal": signal.Signals(info.si_signo).name,
                                            "grace_seconds": self.declared.shutdown_grace},
                )
                return
            self._reap(restart=True)
            if info is not None and info.si_signo == signal.SIGHUP:
                self._reload("SIGHUP")
            now = time.monotonic()
            for slot, when in list(self.restart_at.items()):
                if when <= now:
                    del self.restart_at[slot]
                    self._start(slot)
            if now >= next_poll:
                next_poll = now + POLL_INTERVAL
                if self.current.watch_config and self.file.poll():
                    self._reload("file changed")

    def _reap(self, restart: bool) -> None:
        for slot, pid in list(self.procs.items()):
            code = exit_code(pid)
            if code is None:
                continue
            del self.procs[slot]
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            if not restart:
                log.info("worker stopped", extra={"worker": slot, "pid": pid, "exit_code": code})
                continue
            young = time.monotonic() - self.started[slot] < STABLE_AFTER
            self.failures[slot] = self.failures.get(slot, 0) + 1 if young else 0
            delay = min(MAX_BACKOFF, 2.0 ** (self.failures[slot] - 1)) if self.failures[slot] > 1 else 0.0
            self.restart_at[slot] = time.monotonic() + delay
            log.warning(
                "worker exited; restarting it",
                extra={"worker": slot, "pid": pid, "exit_code": code, "restart_in": delay},
            )

    def _reload(self, cause: str) -> None:
        """Tell the workers to reload; remember the file for restarted workers when it is valid."""
        if cause != "file changed":
            self.file.mark_seen()
        try:
            text = Path(self.path).read_text(encoding="utf-8")
            config = parse_config(text, self.path)
        except (OSError, ValueError, ConfigError):
            pass  # every worker says why, and keeps what it runs
        else:
            self.current_text, self.current = text, config
        log.info("reloading workers", extra={"cause": cause})
        for pid in self.procs.values():
            with contextlib.suppress(ProcessLookupError):  # not yet reaped, so never another process's pid
                os.kill(pid, signal.SIGHUP)

    def _drain(self) -> int:
        """SIGTERM to every worker, wait until they are gone (killing them after the grace period)."""
        self.restart_at.clear()
        for pid in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.declared.shutdown_grace + KILL_MARGIN
        while self.procs and time.monotonic() < deadline:
            signal.sigtimedwait(SIGNALS, min(0.5, max(0.0, deadline - time.monotonic())))
            self._reap(restart=False)
        stuck = list(self.procs.values())
        self.procs.clear()  # killed and reaped below
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        if stuck:
            log.error("workers still running after the grace period were killed", extra={"killed": len(stuck)})
        log.info("stopped")
        return 1 if stuck else 0


def exit_code(pid: int) -> int | None:
    """The exit status of the worker ``pid`` once it has ended (then reaped), None while it runs;
    killed by a signal: minus its number (as subprocess says)."""
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped by someone else already: its status is lost (subprocess says 0)
        return 0
    return None if waited == 0 else os.waitstatus_to_exitcode(status)


def shared_secrets(config: GatewayConfig) -> dict[str, str]:
    """Secrets the workers must agree on and the operator did not set: one DPoP nonce secret for all of
    them (drawn here, passed in their environment), or a nonce one worker issued fails on the next."""
    name = config.dpop.nonce_secret_env
    if not name or os.environ.get(name):
        return {}
    return {name: secrets.token_urlsafe(32)}


def reserve(address: Address) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket: it holds the port without taking connections."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio's listeners do
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from None
    return sock


def prepare_metrics_dir() -> tuple[str, bool]:
    """The multiprocess directory, emptied (stale files would add up); True when made here (and removed)."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not configured:
        return tempfile.mkdtemp(prefix="tokengate-metrics-"), True
    clear_metrics_dir(configured)
    return configured, False


def clear_metrics_dir(path: str, keep_pid: int | None = None) -> None:
    """Remove the metric files of earlier processes (a container restart keeps an emptyDir)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        if keep_pid is None or not stale.name.endswith(f"_{keep_pid}.db"):
            stale.unlink(missing_ok=True)
