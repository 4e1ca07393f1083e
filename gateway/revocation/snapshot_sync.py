"""A Redis store's start-up from the signed snapshot, and the verifying scan that follows it (start-up, background).

Start-up: read ``P snapshot`` and use it when its MAC verifies under the fleet's key and the
stream still holds every message after its position; else do the full load (every key), one
process at a time under ``P snapshot:lock``, and write a fresh snapshot from it. Processes that
start meanwhile wait for that snapshot instead of loading every key themselves.

A snapshot cannot hold what was written to the keys without a stream message after it was made
(docs/revocation.md allows such writes). So a process that started from one scans every key
once it is ready (one process at a time across the fleet, under ``P snapshot:verify``; in small
batches, paced, so serving goes on): an entry missing from its copy, or stronger in its key, is
announced on the stream (its key's value as it is) so that every running replica applies it,
and applied here; then the process writes a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..background import cancel_and_wait
from . import snapshot
from .bulk_load import load_values, no_gc, scan_values
from .entries import Entry, RevocationList
from .inherited import Inherited, take
from .redis_stream import gap, stream_info
from .schema import announce, decode_or_none

if TYPE_CHECKING:
    from .redis_store import RedisStore

log = logging.getLogger("gateway.revocation")

LOAD_POLL = 0.05  # seconds between two looks at a full load another process is doing
VERIFY_DELAY = 1.0  # after ready: the other workers starting beside this one load first
VERIFY_POLL = 0.5  # seconds (give or take half) between two tries at the verify lock
VERIFY_BATCH = 1000  # keys per SCAN of the verifying scan
VERIFY_IDLE = 1.0  # after each batch, pause this many times as long as the batch took (half a core at most)
RETRY_MAX = 30.0


class NotUsed(Exception):
    """Why the snapshot cannot be used: a result of gateway_revocation_snapshot_loads_total, and details."""

    def __init__(self, result: str, why: str = "") -> None:
        super().__init__(result, why)
        self.result, self.why = result, why


class RedisLock:
    """A lock in Redis (a hash with a holder and a PX), held while its holder renews it."""

    def __init__(self, key: str, holder: str) -> None:
        self.key, self.holder = key, holder

    async def take(self, client: Any) -> bool:
        return bool(await client.eval(snapshot.LOCK_SCRIPT, 1, self.key, self.holder, snapshot.LOCK_MS))

    async def expires_in(self, client: Any) -> int:
        """PTTL: milliseconds; -2 when free, -1 for a key that never expires (no gateway's: theirs always do)."""
        return int(await client.pttl(self.key))

    async def held_by_a_gateway(self, client: Any) -> bool:
        """Held, with a TTL a gateway sets (at most LOCK_MS): a lock without one, or with a longer
        one, is not a gateway's and must hold up neither a start-up nor a verifying scan (review)."""
        return 0 < await self.expires_in(client) <= snapshot.LOCK_MS

    @contextlib.asynccontextmanager
    async def held(self, client: Any) -> AsyncIterator[None]:
        """While taken: renewed every LOCK_MS / 3, released on the way out."""
        renewing = asyncio.ensure_future(self._renew(client))
        try:
            yield
        finally:
            await cancel_and_wait(renewing)
            with contextlib.suppress(Exception):
                await client.eval(snapshot.UNLOCK_SCRIPT, 1, self.key, self.holder)

    async def _renew(self, client: Any) -> None:
        while True:
            await asyncio.sleep(snapshot.LOCK_MS / 3000)
            with contextlib.suppress(Exception):  # the work itself fails and says why
                await client.eval(snapshot.RENEW_SCRIPT, 1, self.key, self.holder, snapshot.LOCK_MS)


class Snapshots:
    """The signed snapshot of one store's list: loading it, writing it, and the verifying scan."""

    def __init__(self, store: RedisStore, secret: bytes) -> None:
        self.store, self.secret = store, secret
        self.key = snapshot.snapshot_key(store.schema)
        self.load_lock = RedisLock(snapshot.lock_key(store.schema), store.instance)
        self.verify_lock = RedisLock(snapshot.verify_lock_key(store.schema), store.instance)
        self.unverified = False  # the copy came from a snapshot, and no scan of every key has run since
        # the list the supervising parent loaded from the snapshot before it forked this process, if any:
        # adopted now, before anything holds on to the store's list (the pipeline takes its methods)
        self.inherited: Inherited | None = take(self.key, store.list.family_claim)
        if self.inherited is not None:
            store.list = self.inherited.list

    # --- start-up ----------------------------------------------------------------------------

    async def start_up(self) -> None:
        """The first load: the snapshot when it can be used, else the full load (one process at a time)."""
        from redis.exceptions import ResponseError

        try:
            await self._start_up()
        except (ResponseError, ValueError) as exc:  # NOPERM, WRONGTYPE; ValueError: a meta that is no snapshot's
            result = "refused" if isinstance(exc, ResponseError) else "unreadable"
            self._not_used(result, f"{type(exc).__name__}: {exc}")
            if not self.store.synced:
                await self.store.resync("startup")

    async def _start_up(self) -> None:
        redis = self.store.redis
        if await self._from_inherited() or await self._from_snapshot():
            return
        if not await self.load_lock.take(redis):
            while await self.load_lock.held_by_a_gateway(redis):  # noqa: ASYNC110 - another process holds it
                await asyncio.sleep(LOAD_POLL)  # its holder renews it while it loads, or it expires soon
            if await self._from_snapshot():
                return
            if not await self.load_lock.take(redis):
                await self.store.resync("startup")
                return
        async with self.load_lock.held(redis):
            await self.store.resync("startup")
            await self.write()

    async def _from_inherited(self) -> bool:
        """Start from the copy the parent handed down: checked by the parent as ``read_checked``
        checks, and here as after any read (the stream still holds every message after it)."""
        inherited, self.inherited = self.inherited, None
        return inherited is not None and await self.started_from(inherited.meta, inherited.loaded,
                                                                 "snapshot_from_parent")

    async def _from_snapshot(self) -> bool:
        """Load the snapshot and catch up from its position; False when there is none to use."""
        try:
            meta, data = await self.read_checked()
            with no_gc():
                loaded = snapshot.merge_tables(self.store.list, data)
        except NotUsed as exc:
            return self._not_used(exc.result, exc.why)
        except ValueError as exc:
            return self._not_used("unreadable", str(exc))
        del data
        return await self.started_from(meta, loaded)

    async def read_checked(self) -> tuple[snapshot.Meta, bytes]:
        """The snapshot's meta and data once they check out: plausible sizes, this format, a position
        the stream still covers, and a MAC that verifies under the fleet's key. NotUsed otherwise."""
        sizes, fields = await self._read("meta")
        if sizes == [0, 0, 0]:
            raise NotUsed("absent")
        if not fields:
            raise NotUsed(*snapshot.implausible(*sizes))
        unchecked = snapshot.Meta.parse(fields[0])  # not checked yet: only spares reading a snapshot behind the stream
        if unchecked is None:
            raise NotUsed("unreadable", "meta of another format")
        if not await self._usable(unchecked):
            raise NotUsed("behind_stream")
        sizes, fields = await self._read("all")
        if not fields:  # changed since the meta was read
            raise NotUsed(*snapshot.implausible(*sizes))
        raw, data, mac = fields
        if not snapshot.authentic(self.secret, self.key, raw, data, mac):
            raise NotUsed("bad_signature", "its MAC does not verify under revocation.snapshot's key")
        meta = snapshot.Meta.parse(raw)
        if meta is None:
            raise NotUsed("unreadable", "meta of another format")
        return meta, data

    async def started_from(self, meta: snapshot.Meta, loaded: int, cause: str = "snapshot") -> bool:
        """With the snapshot of ``meta`` in the list (``loaded`` live entries): catch up from its position
        and say ready, then scan every key in the background; False when the stream lost messages since."""
        store = self.store
        if not await self._usable(meta):  # checked after the read too: the stream holds all that followed it
            return self._not_used("behind_stream")  # what was merged stays (only added); the full load follows
        store.last_id, store.seen_added = meta.position, meta.added
        self.unverified = True
        await store.caught_up(cause, loaded)
        metrics.REVOCATION_SNAPSHOT_LOADS.labels("loaded").inc()
        if self.unverified:  # a full load may have followed (messages lost meanwhile): it read every key
            store.background(asyncio.create_task(self._verify_when_free(), name="revocation-snapshot-verify"))
        return True

    async def _read(self, fields: str) -> tuple[list[int], list[bytes]]:
        """The lengths of the meta, the data and the MAC (0: absent), and the fields asked for
        (``"meta"`` or ``"all"``), none when the lengths cannot be a snapshot's."""
        reply = await self.store.redis.eval(
            snapshot.READ_SCRIPT, 1, self.key, snapshot.MAX_META_BYTES, snapshot.MAX_BYTES, snapshot.MAC_BYTES, fields
        )
        return [int(size) for size in reply[:3]], list(reply[3:])

    def _not_used(self, result: str, why: str = "") -> bool:
        metrics.REVOCATION_SNAPSHOT_LOADS.labels(result).inc()
        if result != "absent":  # none written yet (the first start against this Redis): nothing to warn of
            log.warning("revocation snapshot not used: loading every key",
                        extra={"result": result, "error": why[:300]})
        return False

    async def _usable(self, meta: snapshot.Meta) -> bool:
        """Whether the stream still holds every message after the snapshot's position."""
        info = await stream_info(self.store.redis, self.store.schema.stream_key)
        return gap(info, meta.position, meta.added) is None

    # --- writing -----------------------------------------------------------------------------

    async def write(self) -> None:
        """Write the list as it is now, with the stream position it is current up to, signed."""
        store = self.store
        if not store.ready:
            return  # a copy that may miss messages is no one's starting point
        meta = snapshot.Meta(store.last_id, store.seen_added, time.time(), len(store.list)).dump()
        with no_gc():
            tables = snapshot.copy_tables(store.list)  # with last_id, in one step: nothing applied in between
        data = await asyncio.to_thread(snapshot.encode_tables, tables)  # the loop serves between its GIL turns
        del tables
        if len(data) > snapshot.MAX_BYTES:
            log.info("revocation list too large for a snapshot", extra={"bytes": len(data)})
            return
        mac = await asyncio.to_thread(snapshot.seal, self.secret, self.key, meta, data)
        try:
            await store.redis.hset(self.key, mapping={"meta": meta, "data": data, "mac": mac})
        except Exception as exc:  # a start-up without a snapshot is only slower
            log.warning("revocation snapshot not written", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})

    # --- the verifying scan --------------------------------------------------------------------

    async def _verify_when_free(self) -> None:
        """Once this process is ready: wait for the verify lock, then scan every key (retried until done)."""
        from redis.exceptions import ResponseError

        await asyncio.sleep(VERIFY_DELAY)
        backoff = 1.0
        while self.unverified:
            try:
                redis = self.store.redis
                if await self.verify_lock.take(redis):
                    async with self.verify_lock.held(redis):
                        await self.verify()
                    return
                if not await self.verify_lock.held_by_a_gateway(redis):  # not a gateway's: it would stop every scan
                    await self.verify()
                    return
                await asyncio.sleep(VERIFY_POLL * random.uniform(0.5, 1.5))  # noqa: S311 - not cryptographic
            except Exception as exc:  # Redis away: try again later, the copy stays as it is meanwhile
                metrics.REVOCATION_REDIS_ERRORS.inc()
                refused = isinstance(exc, ResponseError)  # an ACL without EVAL: load every key the plain way
                log.warning("revocation snapshot not verified" + (": loading every key" if refused else ""),
                            extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                if refused:
                    with contextlib.suppress(Exception):  # the feed resyncs by itself when Redis is away
                        await self.store.resync("snapshot_unverified")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)

    async def verify(self) -> int:
        """Scan every key as the full load does; announce and apply what this copy lacks, then write a
        fresh snapshot. How many entries were repaired."""
        store = self.store
        repaired = 0

        async def check(values: list[Any]) -> int:
            nonlocal repaired
            started = time.monotonic()
            probe = RevocationList(store.list.family_claim)
            load_values(probe, values)
            if stronger_in(probe, store.list):
                repaired += await self._repair(values)
            await asyncio.sleep((time.monotonic() - started) * VERIFY_IDLE)
            return 0

        await scan_values(store.redis, store.schema, store.config.cluster, check, VERIFY_BATCH)
        self.unverified = False
        if repaired:
            metrics.REVOCATION_SNAPSHOT_REPAIRED.inc(repaired)
            log.warning("revocation entries missing from the snapshot: announced on the stream",
                        extra={"entries": repaired})
        await self.write()
        return repaired

    async def _repair(self, values: list[Any]) -> int:
        """Announce, then apply, every entry of ``values`` this copy lacks or holds weaker; how many."""
        store, now = self.store, time.time()
        found: list[tuple[bytes, Entry]] = []
        for raw in values:
            entry = decode_or_none(raw)
            if entry is not None and entry.expires_at > now and not store.list.covers(entry):
                found.append((raw, entry))
        if found:
            await announce(store.redis, store.schema, [raw for raw, _ in found], store.stream_maxlen)
            for _, entry in found:  # announced first: one that failed is found again by the next try
                store.apply(entry)
        return len(found)


def stronger_in(probe: RevocationList, ours: RevocationList) -> bool:
    """Whether ``probe`` holds an entry ``ours`` lacks or holds weaker (an earlier expiry or cut-off).

    A cut-off entry without ``not_before`` or ``created_at`` reads as cut off now, so it shows as
    stronger every time: ``RevocationList.covers`` then decides entry by entry.
    """
    tables = ours.tables()
    for name, theirs in probe.tables().items():
        table = tables[name]
        for key, value in theirs.items():
            held = table.get(key)
            if held is None:
                return True
            if isinstance(value, tuple):
                if held[0] < value[0] or held[1] < value[1]:
                    return True
            elif held < value:
                return True
    return False
