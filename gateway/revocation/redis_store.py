"""The revocation list shared through Redis: every replica keeps a full local copy, fed by a stream.

Start: note the stream's last id, SCAN every entry key into the local list, then follow the
stream (XREAD BLOCK) from that id. A revocation written anywhere (another replica, the
authorization server, ``gateway revoke``) is one key plus one stream message, so every replica
applies it within a stream round trip. The per-request check never talks to Redis.

After a lost connection the follower continues from its last id, unless the stream no longer
holds everything after it (trimmed past it, recreated, or rolled back by a failover): then it
reloads every key (a resync). While the feed is down the local copy is enforced for at most
``max_staleness``; after that ``check`` answers REVOCATION_UNAVAILABLE (503) and ``ready`` is
false until the feed is back and caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from .. import metrics
from ..background import cancel_and_wait
from ..config import RevocationConfig
from ..config.files import snapshot_key
from ..reasons import Reason
from ..tokens.token import ValidatedToken
from .bulk_load import no_gc, scan_all
from .entries import Entry
from .local_copy import LocalCopy, stamped
from .redis_client import connect
from .redis_stream import gap, stream_info, stream_messages
from .schema import STREAM_MAXLEN, RevocationWriteError, Schema, stream_fields, write_entry
from .snapshot_sync import Snapshots
from .store import RevocationStore

log = logging.getLogger("gateway.revocation")

READ_BATCH = 1000
SWEEP_INTERVAL = 30.0
WRITE_TIMEOUT = 5.0  # an admin call gets its answer (503 when Redis is away) within this


class RedisStore(LocalCopy, RevocationStore):
    """A RevocationStore whose list lives in Redis and is mirrored locally by every replica."""

    def __init__(self, config: RevocationConfig, stream_maxlen: int = STREAM_MAXLEN) -> None:
        super().__init__(config.family_claim)
        self.config = config
        self.schema = Schema.for_prefix(config.key_prefix, config.cluster)
        self.stream_maxlen = stream_maxlen
        self.last_id = "0-0"
        self.synced = False
        self._last_contact = float("-inf")  # monotonic time of the feed's last successful Redis reply
        # XREAD blocks at most this long, so a healthy but idle feed still proves itself often enough
        self._block_ms = int(max(20.0, min(1000.0, config.max_staleness * 1000 / 4)))
        self.redis: Any = None  # commands; the feed has a connection of its own
        self._feed: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._first_attempt = asyncio.Event()
        self._next_check = 0.0
        self._up = False
        self._stopping = False
        self.seen_added: int | None = None  # stream entries-added up to last_id (Redis >= 7)
        self.instance = os.urandom(4).hex()  # in our connection names: CLIENT LIST tells replicas apart
        self.snapshots = Snapshots(self, snapshot_key(config.snapshot)) if config.snapshot is not None else None

    # --- state -------------------------------------------------------------------------------

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._last_contact > self.config.max_staleness

    @property
    def connected(self) -> bool:
        """True while the feed is connected and caught up (the redis_up gauge)."""
        return self._up

    @property
    def ready(self) -> bool:
        return self.synced and not self.stale

    def check(self, token: ValidatedToken) -> Reason | None:
        """A local lookup; fail closed once the copy may have missed revocations for too long."""
        reason = self.list.check(token)
        if reason is None and (not self.synced or self.stale):
            return Reason.REVOCATION_UNAVAILABLE
        return reason

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            metrics.REVOCATION_REDIS_UP.set(1 if up else 0)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and load; waits for the first load attempt only (Redis down = not ready, 503)."""
        self.redis = connect(self.config, f"rw-{self.instance}", retries=2)
        self._feed = connect(self.config, f"feed-{self.instance}", retries=0)
        metrics.REVOCATION_REDIS_UP.set(0)
        self._tasks = [
            asyncio.create_task(self._follow(), name="revocation-feed"),
            asyncio.create_task(self._housekeeping(), name="revocation-housekeeping"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), timeout=10.0)

    async def stop(self) -> None:
        """Stop the feed and the housekeeping, then close both connections."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        if tasks:
            await self._stop_tasks(tasks)
        for client in (self._feed, self.redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._set_up(False)

    async def _stop_tasks(self, tasks: list[asyncio.Task[None]]) -> None:
        stopping = asyncio.ensure_future(cancel_and_wait(*tasks))
        done, _ = await asyncio.wait([stopping], timeout=1.0)
        if not done and self._feed is not None:
            # Python < 3.12's asyncio.wait_for (redis-py connects through it) can swallow a
            # cancellation: closing the feed's sockets ends whatever it waits for
            with contextlib.suppress(Exception):
                await self._feed.aclose()
            await asyncio.wait([stopping], timeout=2.0)
        for task in tasks:
            if not task.done():
                log.warning("revocation task did not stop", extra={"task": task.get_name()})

    # --- writes ------------------------------------------------------------------------------

    async def revoke(self, entry: Entry) -> None:
        """Enforce here at once, then write the key and its notification for every other replica."""
        entry = stamped(entry)
        self.apply(entry)
        if self.redis is None:
            raise RevocationWriteError("the Redis revocation store is not started")
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await write_entry(self.redis, self.schema, entry, self.stream_maxlen)
        except RevocationWriteError:
            metrics.REVOCATION_REDIS_ERRORS.inc()
            raise
        except Exception as exc:  # redis errors, OSError, timeouts
            metrics.REVOCATION_REDIS_ERRORS.inc()
            raise RevocationWriteError(f"revocation not written to Redis: {type(exc).__name__}: {exc}") from exc

    # --- the feed ----------------------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                if not self.synced:
                    await self._start_up()
                else:
                    await self._catch_up()
                self._set_up(True)
                self._first_attempt.set()
                backoff = 0.05
                while not self._stopping:
                    await self._read()
                    if time.monotonic() >= self._next_check:
                        await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis or network failure: count it, back off, reconnect
                if self._stopping:
                    return  # redis-py may turn our cancellation into a connection error while closing
                metrics.REVOCATION_REDIS_ERRORS.inc()
                self._set_up(False)
                self._first_attempt.set()
                log.warning("revocation feed error", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _read(self) -> None:
        reply = await self._feed.xread(
            {self.schema.stream_key: self.last_id}, count=READ_BATCH, block=self._block_ms
        )
        self._last_contact = time.monotonic()
        self._apply_messages(reply)

    async def _drain(self) -> int:
        """Apply every message the stream holds after ``last_id`` now, without waiting for more:
        after a load, the copy is current before it is called ready (writes during the scan included)."""
        read = 0
        while True:
            reply = await self.redis.xread({self.schema.stream_key: self.last_id}, count=READ_BATCH)
            batch = self._apply_messages(reply)
            if not batch:
                return read
            read += batch

    def _apply_messages(self, reply: Any) -> int:
        """Apply an XREAD reply's messages in order; how many there were."""
        read = 0
        for _stream, messages in stream_messages(reply):
            now = time.time()
            read += len(messages)
            for message_id, fields in messages:
                self.last_id = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
                if self.seen_added is not None:
                    self.seen_added += 1
                try:
                    entry = stream_fields(fields)
                except ValueError as exc:
                    metrics.REVOCATION_REDIS_ERRORS.inc()
                    log.warning("unreadable revocation message", extra={"id": self.last_id, "error": str(exc)})
                    continue
                if entry is None:
                    continue
                self.apply(entry)
                if entry.created_at:
                    metrics.REVOCATION_LAG.set(max(0.0, now - entry.created_at))
        metrics.REVOCATION_ENTRIES.set(len(self.list))
        return read

    async def _catch_up(self) -> None:
        """Before reading on from ``last_id``: resync unless the stream still holds all that followed it."""
        self._next_check = time.monotonic() + self.config.resync_interval
        info = await stream_info(self.redis, self.schema.stream_key)
        cause = gap(info, self.last_id, self.seen_added)
        if cause is not None:
            await self.resync(cause)
        else:
            self._last_contact = time.monotonic()

    # --- the load ----------------------------------------------------------------------------

    async def _start_up(self) -> None:
        """The first load: every key (pipelined SCAN and MGET, decoded in bulk), then the stream;
        with ``revocation.snapshot``, the signed snapshot when it can be used (snapshot_sync.py).

        Without the snapshot each process loads from the keys themselves: the keys are what
        writers are held to (docs/revocation.md); a process started from the snapshot scans
        them once it is ready, for what was written to them without a stream message.
        """
        if self.snapshots is not None:
            await self.snapshots.start_up()
        else:
            await self.resync("startup")

    def background(self, task: asyncio.Task[None]) -> None:
        """A task of this store's, stopped with it."""
        self._tasks.append(task)

    async def resync(self, cause: str = "manual") -> int:
        """Reload every key into the local copy, then follow the stream from where it stood.

        The stream position is taken first, so a revocation written during the scan is
        applied at least once. Entries are only added (a resync never weakens the list).
        """
        info = await stream_info(self.redis, self.schema.stream_key)
        position = info.last_generated if info is not None else "0-0"
        seen_added = info.entries_added if info is not None else 0  # None on Redis < 7
        with no_gc():  # a million small objects would set off full collections over and over
            loaded = await scan_all(self.redis, self.schema, self.list, self.config.cluster)
        self.last_id, self.seen_added = position, seen_added
        if self.snapshots is not None:
            self.snapshots.unverified = False  # every key was read
        metrics.REVOCATION_RESYNCS.labels(cause).inc()
        await self.caught_up(cause, loaded)
        return loaded

    async def caught_up(self, cause: str, loaded: int) -> int:
        """Apply what the stream holds after the load's position, then say ready; how many messages.

        When messages after that position were trimmed before they were read (a long load under
        heavy writing), what they carried may be missing: load again instead of saying ready.
        """
        read = await self._drain()
        lost = gap(await stream_info(self.redis, self.schema.stream_key), self.last_id, self.seen_added)
        if lost is not None:
            log.warning("revocation messages lost during the load: loading again", extra={"cause": lost})
            await self.resync(lost)
            return read
        self.synced = True
        self._last_contact = time.monotonic()
        self._next_check = self._last_contact + self.config.resync_interval
        metrics.REVOCATION_ENTRIES.set(len(self.list))
        log.info("revocation list loaded", extra={"cause": cause, "keys": loaded, "entries": len(self.list),
                                                  "messages": read})
        return read

    # --- housekeeping ------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Drop expired entries now and then; keep the redis_up gauge honest while the feed hangs."""
        tick = max(0.05, min(1.0, self.config.max_staleness / 4))
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while True:
            await asyncio.sleep(tick)
            if self.stale:
                self._set_up(False)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL
                dropped = await self.list.sweep_gradually()
                metrics.REVOCATION_ENTRIES.set(len(self.list))
                if dropped:
                    log.debug("revocation entries expired", extra={"dropped": dropped})


