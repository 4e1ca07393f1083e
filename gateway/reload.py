"""Hot reload of the configuration file: notice a change, validate it, swap the pipeline.

Kubernetes updates a mounted ConfigMap by swapping a ``..data`` symlink, which inotify on
the file itself never sees, so the file is polled: its resolved path, inode, mtime and size,
and a content hash decides. A new file is validated and built into a complete pipeline
before it replaces the running one; when anything fails the running configuration stays,
the reason is logged (``file:line: key: message``) and
``gateway_config_reload_total{result="error"}`` counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import ConfigError, GatewayConfig, load_config

if TYPE_CHECKING:
    from .runtime import Gateway, Pipeline

log = logging.getLogger("gateway.reload")

POLL_INTERVAL = 1.0
RETRY_INTERVAL = 30.0  # after a failure that may pass (an issuer's keys did not load)
KEYS_WAIT = 5.0

# What only a restart can change: sockets (and the proxy listener's TLS), processes, and what
# Gateway builds once and keeps across reloads (the audit writer, the revocation store, the live
# Detector, the DPoP replay cache and nonce secret, the rate limit counters with their overrides and
# defaults, the live-connection registry). Every other key is read from the swapped-in
# pipeline's configuration (``gateway.config``) on each request or poll, and so follows a reload:
# routes (with their rules, step-up and sender_constraint), issuers (with theirs and dpop),
# upstreams, realm, max_body_size, trusted_proxies, client_certificates, identity_headers,
# decision_path_prefix, decision_sources, admin, verified_token_cache_size, watch_config and
# log_level (docs/operations.md).
RESTART_ONLY = (
    "listen", "admin_listen", "decision_listen", "workers", "shutdown_grace", "audit", "revocation", "detection",
    "tls", "dpop", "rate_limiting", "long_connections", "tracing",
)


def restart_needed(declared: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The keys of ``new`` that differ from the file the process started from and need a restart."""
    return [key for key in RESTART_ONLY if getattr(new, key) != getattr(declared, key)]


def pinned(new: GatewayConfig, running: GatewayConfig) -> GatewayConfig:
    """``new`` with the restart-only keys kept as they run, so ``gateway.config`` tells what is in effect."""
    return new.model_copy(update={key: getattr(running, key) for key in RESTART_ONLY})


@dataclass(frozen=True)
class _Stat:
    resolved: str
    device: int
    inode: int
    mtime_ns: int
    size: int


class ConfigFile:
    """Tells when the file at ``path`` has new content, through symlink swaps and in-place writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stat, self._digest = self._stat_now(), self._digest_now()

    def poll(self) -> bool:
        """True once for every change of content since the last call (or ``mark_seen``)."""
        stat = self._stat_now()
        if stat == self._stat:
            return False
        self._stat = stat
        digest = self._digest_now()
        if digest == self._digest:  # touched or re-linked, same content
            return False
        self._digest = digest
        return True

    def mark_seen(self) -> None:
        """Take the file as it is now as known (after a reload that did not come from ``poll``)."""
        self._stat, self._digest = self._stat_now(), self._digest_now()

    def _stat_now(self) -> _Stat | None:
        try:
            resolved = os.path.realpath(self.path)
            st = os.stat(resolved)
        except OSError:
            return None
        return _Stat(resolved, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _digest_now(self) -> bytes | None:
        try:
            with open(self.path, "rb") as file:
                return hashlib.sha256(file.read()).digest()
        except OSError:
            return None


class ReloadFailed(Exception):
    """A valid file that could not be put into service; the running configuration stays."""


class Reloader:
    """Validates the configuration file again and swaps it into a running gateway.

    ``declared`` is the configuration as the process started from it (the file's own listen
    addresses, before a supervisor resolved port 0); restart-only keys are compared with it.
    """

    def __init__(
        self, gateway: Gateway, declared: GatewayConfig | None = None, *, keys_wait: float = KEYS_WAIT
    ) -> None:
        assert gateway.config_path is not None
        self.gateway = gateway
        self.path = gateway.config_path
        self.declared = declared or gateway.initial_config
        self.file = ConfigFile(self.path)
        self.keys_wait = keys_wait
        self._retry_at: float | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        self._closed = False
        # imported here, not with the module: `gateway serve`'s supervising parent (workers.py)
        # imports this module before it may create the metrics (worker_process.preload)
        from . import metrics

        # both series exported from the start, at 0: a series that first appears at 1 has no
        # increase() in Prometheus, so the first rejected reload would never raise an alert
        for result in ("success", "error"):
            metrics.CONFIG_RELOADS.labels(result)

    def request(self, cause: str = "SIGHUP") -> None:
        """Reload soon (from a signal handler); reloads never overlap."""
        if not self._closed:
            self._spawn(self.reload(cause))

    def start_watching(self) -> None:
        self._spawn(self._watch())

    async def close(self) -> None:
        """Stop watching and abandon a reload in progress (on shutdown)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def reload(self, cause: str) -> bool:
        """Validate and apply the file now; False (and the running configuration kept) on failure."""
        from . import metrics

        async with self._lock:
            ok = await self._reload(cause)
        metrics.CONFIG_RELOADS.labels("success" if ok else "error").inc()
        return ok

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if not self.gateway.config.watch_config:
                continue
            retry_due = self._retry_at is not None and time.monotonic() >= self._retry_at
            try:
                if self.file.poll() or retry_due:
                    await self.reload("file changed" if not retry_due else "retry")
            except Exception:  # the watcher must outlive anything one reload does
                log.exception("config watcher error")

    async def _reload(self, cause: str) -> bool:
        if cause != "file changed":
            self.file.mark_seen()
        self._retry_at = None
        try:
            config = await asyncio.to_thread(load_config, self.path)
        except (ConfigError, ValueError) as exc:  # ValueError: not UTF-8
            problems = exc.problems if isinstance(exc, ConfigError) else [f"{self.path}: {exc}"]
            for problem in problems:
                log.error("config reload rejected: %s", problem, extra={"cause": cause})
            log.error("the running configuration stays", extra={"file": self.path, "problems": len(problems)})
            return False
        restart = restart_needed(self.declared, config)
        if restart:
            log.warning(
                "changed keys take effect only after a restart: %s", ", ".join(restart),
                extra={"file": self.path, "keys": restart},
            )
        config = pinned(config, self.gateway.config)
        try:
            await self._apply(config)
        except Exception as exc:  # whatever breaks, the old pipeline serves on
            log.error(
                "config reload failed: %s; the running configuration stays", str(exc) or type(exc).__name__,
                extra={"file": self.path, "cause": cause, "error_type": type(exc).__name__, "retry_in": RETRY_INTERVAL},
            )
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            return False
        logging.getLogger().setLevel(config.log_level.upper())
        log.info(
            "config reloaded",
            extra={"file": self.path, "cause": cause, "routes": len(config.routes), "upstreams": len(config.upstreams)},
        )
        return True

    async def _apply(self, config: GatewayConfig) -> None:
        gateway = self.gateway
        from .runtime import build_pipeline

        pipeline = await build_pipeline(config, gateway.revocation, gateway.proofs, gateway.limiter)
        running = gateway.pipeline
        # never trade a pipeline that verifies tokens for one that cannot (the issuer is down right now)
        if running is not None and running.validator.ready and not await _keys_loaded(pipeline, self.keys_wait):
            missing = sorted(name for name, keys in pipeline.validator.keys.items() if not keys.loaded)
            await pipeline.stop()
            raise ReloadFailed(f"the keys of {', '.join(missing)} could not be loaded")
        gateway.swap(pipeline)

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _keys_loaded(pipeline: Pipeline, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while not pipeline.validator.ready and time.monotonic() < deadline:  # noqa: ASYNC110 - keys have no event
        await asyncio.sleep(0.1)
    return pipeline.validator.ready
