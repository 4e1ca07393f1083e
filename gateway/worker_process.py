"""One worker process of ``workers: N``: forked by the supervising parent (workers.py), never exec'd.

The parent imports what a worker runs once (``preload``), then ``os.fork()``s each worker
(``spawn``): a worker starts with aiohttp, the configuration models, the token code and
prometheus-client loaded, sharing those pages with the parent and its siblings until written,
instead of importing them in a fresh interpreter (most of a worker's start-up time).

What must not cross the fork, and why it does not:

- no event loop, thread or client connection exists in the parent (it waits in ``sigtimedwait``);
  the worker makes its own loop (uvloop), threads and connections;
- prometheus-client picks its value class when a metric is made, from ``PROMETHEUS_MULTIPROC_DIR``:
  ``preload`` sets it before gateway.metrics is imported, and removes the files the parent's own
  (never used) values made, so no series of the parent's pid is ever exported. A forked value
  notices the new pid on first use and moves to files of the worker's pid;
- the child never returns into the parent's code: whatever happens, it ends with ``os._exit``
  (no ``finally`` or ``atexit`` of the parent runs twice, and the parent alone removes the
  metrics directory);
- per-process state made at import is re-drawn at fork where it matters (runtime.py's request
  ids, CPython's ``random``); ``secrets`` reads the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import values

from .config import Address, GatewayConfig, parse_config
from .reload import pinned

log = logging.getLogger("gateway.workers")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class WorkerSpec:
    """What the parent tells a worker (in memory: the worker is a fork of it)."""

    slot: int
    parent: int
    path: str
    declared: str  # the file's text when the gateway started: restart-only keys are compared with it
    current: str  # the last valid text, which a restarted worker starts from even if the file broke since
    ports: dict[str, int]  # listen key -> the port the parent reserved

    def configs(self) -> tuple[GatewayConfig, GatewayConfig]:
        """The file as the gateway started from it, and what this worker runs (ports resolved)."""
        declared = parse_config(self.declared, self.path)
        ports = {key: Address(getattr(declared, key).host, port) for key, port in self.ports.items()}
        return declared, pinned(parse_config(self.current, self.path), declared.model_copy(update=ports))


# --- in the parent -----------------------------------------------------------------------------


class EarlyMetrics(RuntimeError):
    """The gateway's metrics were created before the workers' metrics directory was known (something
    imported the gateway at interpreter start, a sitecustomize say): /metrics would add up nothing."""


def preload(config: GatewayConfig, metrics_dir: str) -> None:
    """Import what a worker running ``config`` needs, with prometheus-client in multiprocess mode.

    Called before every fork: a module already loaded costs a dictionary lookup, and a restarted
    worker whose configuration turned tracing on since finds the tracing SDK loaded as well.
    """
    _multiprocess_metrics(metrics_dir)
    _import_worker_modules(config)
    remove_own_metric_files(metrics_dir)


def _multiprocess_metrics(metrics_dir: str) -> None:
    """Make every metric created from now on a multiprocess value in ``metrics_dir``."""
    os.environ[METRICS_DIR_VARIABLE] = metrics_dir
    if values.ValueClass is values.MutexValue:  # chosen when prometheus-client was imported, without the variable
        if "gateway.metrics" in sys.modules:  # its metrics would be per process: /metrics would add up nothing
            raise EarlyMetrics("gateway.metrics was imported before the metrics directory was known")
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _import_worker_modules(config: GatewayConfig) -> None:
    """What ``worker_main`` imports, and what a worker's start-up imports on its way (measured with
    ``python -X importtime``): redis-py is already loaded by the configuration's checks."""
    import uvloop  # noqa: F401

    from . import launch, logs, runtime, server  # noqa: F401

    if config.tracing.enabled:
        from .tracing import sdk  # noqa: F401
    if any(issuer.introspection is not None for issuer in config.issuers):
        from .tokens import introspection  # noqa: F401


@contextlib.contextmanager
def revocations_handed_down(config: GatewayConfig) -> Iterator[None]:
    """Within: the workers forked start from the revocation list this process loaded from the
    signed snapshot (revocation/preload.py), if there is one to use. On leaving, this process
    drops its copy: a worker forked later (a restart) loads the list as ever."""
    from .revocation.inherited import hand_down
    from .revocation.preload import load_for_workers

    hand_down(load_for_workers(config.revocation))
    try:
        yield
    finally:
        hand_down(None)


def remove_own_metric_files(metrics_dir: str) -> None:
    """Remove the multiprocess files of this process's values (made at import, never written).

    A live gauge's file of the parent would count in every scrape (a ``livemin`` gauge at 0,
    say) as a process that never dies. The parent's values keep their mapping of the removed
    file; a forked worker drops it on first use (prometheus-client checks the pid).
    """
    for own in Path(metrics_dir).glob(f"*_{os.getpid()}.db"):
        own.unlink(missing_ok=True)


def spawn(spec: WorkerSpec, env: Mapping[str, str], reservations: Iterable[socket.socket]) -> int:
    """Fork a worker that runs ``spec`` with ``env`` added to its environment; its pid.

    Only the parent returns. ``reservations`` are the parent's port-holding sockets: the worker
    binds its own listeners, and closes its copies.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # what is still buffered would be written by both processes
    # the parent's objects move to the permanent generation: a worker's collections neither
    # walk them nor write to their pages, which stay shared with the parent. Only the young
    # generations are collected first: a full collection costs ~40 ms here for a few dozen
    # objects of import-time garbage, which stay (once: later forks freeze what is new)
    gc.collect(1)
    gc.freeze()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = _child(spec, env, reservations)
    finally:
        os._exit(code)


# --- in the worker -----------------------------------------------------------------------------


def _child(spec: WorkerSpec, env: Mapping[str, str], reservations: Iterable[socket.socket]) -> int:
    """The worker's life from the fork on; its exit status, as the interpreter would give it."""
    try:
        for sock in reservations:
            sock.close()
        os.environ.update(env)
        worker_main(spec)
        return 0
    except SystemExit as exc:
        return _exit_status(exc)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # a traceback on stderr, as an uncaught exception gives
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or broken stream: nothing more to say
                stream.flush()


def _exit_status(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` gives: None is 0, a number itself, anything else printed and 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def worker_main(spec: WorkerSpec) -> None:
    """One worker: its configuration, its log fields, then the gateway until it is stopped."""
    from .launch import run_async
    from .logs import setup_logging

    with open(os.devnull, "rb") as devnull:  # the parent's stdin is not the worker's to read
        os.dup2(devnull.fileno(), 0)
    # the parent blocks workers.SIGNALS and a fork keeps the mask: SIGCHLD is the worker's own
    # (its child processes, if any), serve() unblocks the others once its handlers are in place
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    declared, config = spec.configs()
    setup_logging(config.log_level, worker=spec.slot, pid=os.getpid())
    run_async(_serve_worker(spec, declared, config))


async def _serve_worker(spec: WorkerSpec, declared: GatewayConfig, config: GatewayConfig) -> None:
    from .runtime import Gateway
    from .server import serve

    stop = asyncio.Event()
    watchdog = asyncio.create_task(_stop_when_orphaned(spec.parent, stop))
    try:
        await serve(Gateway(config, spec.path), reuse_port=True, stop=stop, watch=False, declared=declared)
    finally:
        watchdog.cancel()


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """Drain and exit when the parent is gone (killed): nobody would restart or stop this worker."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
        await asyncio.sleep(1.0)
    log.warning("the supervising parent is gone; shutting down")
    stop.set()
