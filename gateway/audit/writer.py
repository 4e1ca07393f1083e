"""The audit writer: records are queued on the event loop and written in batches off it.

Every batch is whole lines. On a regular file opened with O_APPEND each batch is one
``write`` (the kernel keeps appends from several worker processes apart); on a pipe
(stdout) batches are cut at line boundaries into writes of at most PIPE_BUF bytes,
which POSIX guarantees are not interleaved with other writers.

The writer must outlive anything the traffic can throw at it: a record that cannot be
serialised is replaced by a minimal record saying so (counted, logged), a failing write
is counted and logged, and the flush loop carries on after any exception. Writes go
through one thread of the writer's own, so batches reach the sink in order even when a
waiting coroutine is cancelled, and the file is closed only after the last of them.
``healthy()`` (``/readyz``) turns false when the loop has died or a write has not
finished within ``audit.stall_timeout``; the heartbeat gauge goes stale for the alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from .. import metrics
from ..background import cancel_and_wait
from ..config import AuditConfig
from .fields import rfc3339
from .record import escape_invalid

log = logging.getLogger("gateway.audit")

HEARTBEAT_EVERY = 1.0  # seconds between updates of the heartbeat gauge (it is a file write with workers)
RETRY_PAUSE = 0.5  # after an unexpected failure of the loop: no busy loop if it repeats
_FALLBACK_LINE = b'{"type":"audit","unserialisable":"even the minimal record failed"}\n'


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
        self._thread: ThreadPoolExecutor | None = None
        self._last_job: Future[None] | None = None  # the last batch handed to the thread
        self._busy_since: float | None = None  # monotonic start of the write in progress (set in the thread)
        self._turned = 0.0  # monotonic time of the loop's last turn
        self._published = 0.0
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
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
        self._beat()
        self._task = asyncio.create_task(self._flush_forever(), name="audit-writer")
        self._task.add_done_callback(self._ended)

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

    def healthy(self) -> bool:
        """False when the flush loop has ended, or a write or a turn of the loop is overdue."""
        if self._fd is None:  # no sink, or not serving (before start, after stop): nothing to watch
            return True
        if self._task is None or self._task.done():
            return False
        now = time.monotonic()
        busy = self._busy_since
        if busy is not None and now - busy > self.config.stall_timeout:
            return False
        return now - self._turned <= self.config.flush_interval + self.config.stall_timeout

    async def _flush_forever(self) -> None:
        while True:
            self._beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.config.flush_interval)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception as exc:  # the writer outlives any failure; the batch in hand is counted lost
                metrics.AUDIT_DROPPED.inc()
                log.error("audit writer failed; it carries on", extra={"error": _describe(exc)})
                await asyncio.sleep(RETRY_PAUSE)

    def _beat(self) -> None:
        now = time.monotonic()
        self._turned = now
        if now - self._published >= HEARTBEAT_EVERY:
            self._published = now
            metrics.AUDIT_HEARTBEAT.set(time.time())

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():  # only stop() ends the loop; anything else is a defect made loud
            exc = task.exception()
            log.error("audit writer stopped unexpectedly; /readyz reports it",
                      extra={"error": _describe(exc) if exc else "returned"})

    async def flush(self) -> None:
        """Write everything queued so far, in order."""
        async with self._lock:
            if not self._pending or self._fd is None or self._thread is None:
                return
            batch, self._pending = self._pending, []
            data = _serialise(batch)
            job = self._last_job = self._thread.submit(self._write_batch, self._fd, data, len(batch))
            # shielded: a cancelled flush (stop, a timeout) never takes a queued batch with it
            await asyncio.shield(asyncio.wrap_future(job))

    def _write_batch(self, fd: int, data: bytes, count: int) -> None:
        """In the writer's thread: one batch, its failure counted and logged."""
        self._busy_since = time.monotonic()
        try:
            self._write_all(fd, data)
        except OSError as exc:
            metrics.AUDIT_DROPPED.inc()
            log.error("audit write failed", extra={"error": str(exc), "records": count})
        else:
            self.written += count
        finally:
            self._busy_since = None

    def _write_all(self, fd: int, data: bytes) -> None:
        for chunk in _chunks(data, self._atomic_limit):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]

    async def stop(self) -> None:
        """Write what is queued (waiting at most ``stall_timeout`` for a stuck sink), then close."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await asyncio.wait_for(self._drain(), self.config.stall_timeout)
        except TimeoutError:
            log.error("audit sink blocked at shutdown; the last records may be lost",
                      extra={"waited_s": self.config.stall_timeout})
        fd, self._fd = self._fd, None
        if self._thread is not None:
            if fd is not None and fd > 2:
                self._thread.submit(os.close, fd)  # after every batch submitted before it
            self._thread.shutdown(wait=False)
            self._thread = None

    async def _drain(self) -> None:
        """Hand over what is queued, then wait until the thread has written every batch."""
        await self.flush()
        if self._last_job is not None:
            await asyncio.shield(asyncio.wrap_future(self._last_job))


def _serialise(batch: list[dict[str, Any]]) -> bytes:
    lines = []
    for record in batch:
        try:
            lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        except Exception as exc:  # a value the recording let through: the request still leaves a trace
            lines.append(unserialisable_line(record, exc))
    return b"".join(lines)


def unserialisable_line(record: object, error: BaseException) -> bytes:
    """The minimal record that replaces one that could not be serialised; counted and logged."""
    get = record.get if isinstance(record, dict) else {}.get
    status = get("status")
    minimal = {
        "type": "audit",
        "ts": _plain(get("ts")) or rfc3339(time.time()),
        "request_id": _plain(get("request_id")),
        "mode": _plain(get("mode")),
        "decision": _plain(get("decision")),
        "reason": _plain(get("reason")),
        "status": status if type(status) is int and 0 <= status < 1000 else None,
        "unserialisable": _describe(error),
    }
    metrics.AUDIT_UNSERIALISABLE.inc()
    log.error("audit record could not be serialised; a minimal record replaces it",
              extra={"request_id": minimal["request_id"], "error": minimal["unserialisable"]})
    try:
        return orjson.dumps(minimal, option=orjson.OPT_APPEND_NEWLINE)
    except Exception:  # cannot happen (only plain, escaped texts): still never lose the line
        return _FALLBACK_LINE


def _plain(value: object, limit: int = 256) -> str | None:
    return escape_invalid(value)[:limit] if isinstance(value, str) else None


def _describe(error: BaseException) -> str:
    """``Type: message``, serialisable and short (what a log line and the minimal record hold)."""
    return escape_invalid(f"{type(error).__name__}: {error}")[:512]


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
