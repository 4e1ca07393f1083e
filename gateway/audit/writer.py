"""The audit writer: records are queued on the event loop and written in batches off it.

Every batch is whole lines. On a regular file opened with O_APPEND each batch is one
``write`` (the kernel keeps appends from several worker processes apart); on a pipe
(stdout) batches are cut at line boundaries into writes of at most PIPE_BUF bytes,
which POSIX guarantees are not interleaved with other writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import stat
from pathlib import Path
from typing import Any

import orjson

from .. import metrics
from ..config import AuditConfig

log = logging.getLogger("gateway.audit")


class AuditWriter:
    """Queues records and writes them in batches from a worker thread."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self._pending: list[dict[str, Any]] = []
        self._fd: int | None = None
        self._atomic_limit: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self.written = 0
        self._overflowing = False

    async def start(self) -> None:
        if self.config.sink == "none":
            return
        if self.config.sink == "stdout":
            self._fd = 1
        else:
            assert self.config.path is not None
            Path(self.config.path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            self._atomic_limit = select.PIPE_BUF
        self._task = asyncio.create_task(self._flush_forever(), name="audit-writer")

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks."""
        if self._fd is None:
            return
        if len(self._pending) >= self.config.max_pending:
            # the sink is stalled (a blocked pipe, a full disk): memory stays bounded, the loss is counted
            metrics.AUDIT_OVERFLOW.inc()
            if not self._overflowing:
                self._overflowing = True
                log.error("audit sink fell behind; records are dropped", extra={"pending": len(self._pending)})
            return
        self._overflowing = False
        self._pending.append(record)
        if len(self._pending) >= self.config.max_batch:
            self._wakeup.set()

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.config.flush_interval)
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued so far, in order."""
        async with self._lock:
            if not self._pending or self._fd is None:
                return
            batch, self._pending = self._pending, []
            data = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in batch)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._write_all, data)
            except OSError as exc:
                metrics.AUDIT_DROPPED.inc()
                log.error("audit write failed", extra={"error": str(exc), "records": len(batch)})
                return
            self.written += len(batch)

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        for chunk in _chunks(data, self._atomic_limit):
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._fd is not None and self._fd > 2:
            os.close(self._fd)
        self._fd = None


def _chunks(data: bytes, limit: int | None) -> list[bytes]:
    """Whole-line chunks of at most ``limit`` bytes (a longer single line goes alone)."""
    if limit is None or len(data) <= limit:
        return [data]
    chunks, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + limit) + 1
        if end <= start:
            end = data.index(b"\n", start) + 1
        chunks.append(data[start:end])
        start = end
    return chunks
