"""The revocation list a supervising parent loads from the signed snapshot for its first workers
(revocation/preload.py, revocation/inherited.py), in process: what a forked worker's store does
with the copy it inherits. The fork itself is exercised in test_lifecycle.py.

Real redis-server (tests/conftest.py), stores built as tests/test_revocation_bulk_load.py builds them.
"""

# ruff: noqa: F811 - pytest fixtures imported from test_revocation_bulk_load, named as parameters
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.config import RevocationConfig, RevocationSnapshotConfig, SentinelConfig
from gateway.revocation import snapshot
from gateway.revocation.inherited import Inherited, hand_down, take
from gateway.revocation.preload import load_for_workers
from gateway.revocation.redis_store import RedisStore
from gateway.revocation.schema import Schema
from tests.helpers import free_port

# fixtures and helpers of the snapshot tests (no test function is imported: nothing runs twice)
from tests.test_revocation_bulk_load import (  # noqa: F401 - fixtures
    StoreFactory,
    full_loads,
    has,
    jti,
    key_file,
    prefix,
    redis,
    snapshot_loads,
    stores,
    until,
    write,
)
from tests.test_revocation_redis import ping_until_up, redis_server


@pytest.fixture(autouse=True)
def _nothing_handed_down() -> Iterator[None]:
    yield
    hand_down(None)


def config_of(redis_url: str, prefix: str, key_file: Path | None, **settings: Any) -> RevocationConfig:
    signed = RevocationSnapshotConfig(key_file=str(key_file)) if key_file is not None else None
    return RevocationConfig(redis_url=redis_url, key_prefix=prefix, max_staleness=3.0, snapshot=signed, **settings)


async def parent_load(config: RevocationConfig) -> Inherited | None:
    """What the parent does before it forks, in a thread of its own: it has no event loop, this test has one."""
    before = set(threading.enumerate())
    with ThreadPoolExecutor(1) as pool:
        copy = await asyncio.get_running_loop().run_in_executor(pool, load_for_workers, config)
    assert set(threading.enumerate()) == before  # no thread of its loop or its connection is left
    return copy


async def started(config: RevocationConfig, running: list[RedisStore]) -> RedisStore:
    store = RedisStore(config)
    running.append(store)
    await store.start()
    return store


@pytest.fixture
async def running() -> Any:
    stores_: list[RedisStore] = []
    yield stores_
    for store in stores_:
        await store.stop()


async def test_a_worker_starts_from_the_copy_its_parent_loaded_and_catches_up(
    stores: StoreFactory, redis: Any, redis_url: str, prefix: str, key_file: Path, running: list[RedisStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await write(redis, prefix, jti("before"))
    await stores(key_file)  # the first start: loads every key, writes the snapshot
    config = config_of(redis_url, prefix, key_file)
    copy = await parent_load(config)
    assert copy is not None and copy.loaded == 1 and (snapshot.snapshot_key(Schema(prefix)) == copy.key)
    await write(redis, prefix, jti("after"))  # while the workers are being forked

    hand_down(copy)
    loads, loaded = full_loads(), snapshot_loads("loaded")
    caplog.set_level("INFO", "gateway.revocation")
    caplog.clear()  # what the first start logged
    worker = await started(config, running)
    assert worker.list is copy.list  # adopted, not copied: the pages stay shared with the parent's
    assert worker.ready and has(worker, "before") and has(worker, "after")  # caught up from its position
    assert full_loads() == loads and snapshot_loads("loaded") == loaded + 1
    [record] = [r for r in caplog.records if r.getMessage() == "revocation list loaded"]
    assert record.cause == "snapshot_from_parent"  # type: ignore[attr-defined]
    assert worker.snapshots is not None and worker.snapshots.unverified  # its verifying scan is due
    assert any(task.get_name() == "revocation-snapshot-verify" for task in worker._tasks)

    second = await started(config, running)  # taken once: another store loads as ever
    assert second.list is not copy.list and has(second, "before") and has(second, "after")
    await write(redis, prefix, jti("later"))
    await until(lambda: has(worker, "later") and has(second, "later"))


async def test_a_copy_behind_the_stream_by_the_time_the_worker_starts_is_not_trusted(
    stores: StoreFactory, redis: Any, redis_url: str, prefix: str, key_file: Path, running: list[RedisStore],
) -> None:
    """Messages trimmed between the parent's read and the worker's start: what they carried may be
    missing from the copy, so the worker does not say ready from it (it loads every key)."""
    await write(redis, prefix, jti("before"))
    await stores(key_file)
    config = config_of(redis_url, prefix, key_file)
    copy = await parent_load(config)
    assert copy is not None
    await write(redis, prefix, jti("trimmed"))
    await redis.xtrim(f"{prefix}stream", maxlen=0, approximate=False)

    hand_down(copy)
    loads = full_loads()
    worker = await started(config, running)
    assert worker.ready and has(worker, "before") and has(worker, "trimmed")
    assert full_loads() == loads + 1


@pytest.mark.parametrize("case", ["no snapshot yet", "another key", "redis away"])
async def test_the_parent_hands_nothing_down_without_a_snapshot_to_use(
    stores: StoreFactory, redis: Any, redis_url: str, prefix: str, key_file: Path, tmp_path: Path, case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await write(redis, prefix, jti("one"))
    if case != "no snapshot yet":
        await stores(key_file)
    if case == "another key":
        key_file = tmp_path / "other.key"
        key_file.write_text(base64.b64encode(os.urandom(48)).decode() + "\n")
    url = f"redis://127.0.0.1:{free_port()}/0" if case == "redis away" else redis_url
    caplog.set_level("INFO", "gateway.revocation")
    caplog.clear()
    started_at = time.monotonic()
    assert await parent_load(config_of(url, prefix, key_file)) is None
    assert time.monotonic() - started_at < 5
    [record] = [r for r in caplog.records if r.getMessage().startswith("revocation snapshot not loaded")]
    assert record.result == {"no snapshot yet": "absent", "another key": "bad_signature",  # type: ignore[attr-defined]
                             "redis away": "error"}[case]


def test_a_copy_is_taken_once_and_only_for_its_own_list() -> None:
    from gateway.revocation.entries import RevocationList

    copy = Inherited("p:snapshot", RevocationList("sid"), snapshot.Meta("1-0", 1, 0.0, 0), 0)
    hand_down(copy)
    assert take("other:snapshot", "sid") is None and take("p:snapshot", "sub") is None
    assert take("p:snapshot", "sid") is copy
    assert take("p:snapshot", "sid") is None
    hand_down(copy)
    hand_down(None)  # the parent after its first forks: a restarted worker loads as ever
    assert take("p:snapshot", "sid") is None


def test_without_a_snapshot_key_or_redis_the_parent_reads_nothing() -> None:
    assert load_for_workers(RevocationConfig()) is None
    assert load_for_workers(RevocationConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0")) is None


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def test_through_sentinel_the_parent_leaves_no_connection_open(
    stores: StoreFactory, redis: Any, redis_proc: Any, prefix: str, key_file: Path, tmp_path: Path,
) -> None:
    """Sentinel's clients keep their own connections to the sentinels: closed too, or the workers
    would each inherit sockets nobody reads."""
    await write(redis, prefix, jti("one"))
    await stores(key_file)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nsentinel monitor tg 127.0.0.1 {redis_proc.port} 1\n")
    async with redis_server(tmp_path / "sentinel", str(conf), "--sentinel"):
        probe = Redis(port=port)
        await ping_until_up(probe)
        await probe.aclose()
        sentinel = SentinelConfig(hosts=[f"127.0.0.1:{port}"], service_name="tg")
        config = RevocationConfig(sentinel=sentinel, key_prefix=prefix,
                                  snapshot=RevocationSnapshotConfig(key_file=str(key_file)))
        before = open_sockets()
        copy = await parent_load(config)
        assert copy is not None and copy.loaded == 1
        assert open_sockets() == before
