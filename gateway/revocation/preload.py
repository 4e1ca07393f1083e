"""The revocation list read from the signed snapshot once by a supervising parent, for the workers
it is about to fork (workers.py, worker_process.py); at start-up only.

Without it each worker reads and decodes the whole snapshot itself, all at the same time (about
1 s of CPU each for 1,000,000 entries, and as many copies of the list). With it the parent does
it once and its first workers start with the list in memory they share until they write it.
The parent checks the snapshot as a worker does (``Snapshots.read_checked``: sizes, format,
position, MAC under the fleet's key); each worker checks again that the stream holds every
message after its position, catches up and scans every key in the background, as after a
snapshot it read itself (snapshot_sync.py). Whatever goes wrong here, the workers load as ever.

The parent has no event loop: this one is its own, and closed (with its Redis connection)
before anything is forked.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..config import RevocationConfig
from . import snapshot
from .bulk_load import no_gc
from .inherited import Inherited
from .redis_client import connect
from .redis_store import RedisStore
from .snapshot_sync import NotUsed

log = logging.getLogger("gateway.revocation")

LOAD_TIMEOUT = 10.0  # seconds the workers' start may wait for this (a worker waits as long for Redis)


def load_for_workers(config: RevocationConfig) -> Inherited | None:
    """The list of the signed snapshot, checked; None (the workers load as ever) without one to use."""
    if config.snapshot is None or not config.shared:
        return None
    try:
        store = RedisStore(config)
        read: list[tuple[snapshot.Meta, bytes]] = []
        # not the coroutine's result: asyncio.run ends by restoring its SIGINT handler, and CPython
        # 3.11 then takes the repr of the handler's task, result and all (0.3 s for 47 MB of data)
        asyncio.run(asyncio.wait_for(_read(store, read), LOAD_TIMEOUT))
        meta, data = read.pop()
        with no_gc():  # a million small objects would set off full collections over and over
            loaded = snapshot.merge_tables(store.list, data)
    except NotUsed as exc:
        _not_loaded(exc.result, exc.why)
        return None
    except Exception as exc:  # Redis away, a key file that cannot be read: the workers say so themselves
        _not_loaded("error", f"{type(exc).__name__}: {exc}")
        return None
    assert store.snapshots is not None
    log.info("revocation snapshot loaded for the workers", extra={"entries": len(store.list)})
    return Inherited(store.snapshots.key, store.list, meta, loaded)


async def _read(store: RedisStore, into: list[tuple[snapshot.Meta, bytes]]) -> None:
    assert store.snapshots is not None
    store.redis = connect(store.config, f"preload-{store.instance}", retries=0)
    try:
        into.append(await store.snapshots.read_checked())
    finally:
        await _close(store.redis)


async def _close(client: Any) -> None:
    """The client and, with Sentinel, its connections to the sentinels (its own aclose leaves those
    open: nothing of this loop's may outlive it into the workers)."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    if manager is not None:
        await manager.aclose()


def _not_loaded(result: str, why: str) -> None:
    log.info("revocation snapshot not loaded for the workers: each loads the list",
             extra={"result": result, "error": why[:300]})
