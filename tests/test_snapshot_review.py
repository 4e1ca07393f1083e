"""Review of the signed start-up snapshot (revocation.snapshot): an attacker with the Redis
credential but not the snapshot key, and an operator's view. Each test states what should hold;
the ones that fail are findings (see the review report).

Real redis-server (tests/conftest.py), stores built as tests/test_revocation_bulk_load.py builds them.
"""

# ruff: noqa: F811 - pytest fixtures imported from test_revocation_bulk_load, named as parameters
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.revocation import snapshot
from gateway.revocation.redis_stream import stream_info
from gateway.revocation.schema import Schema
from tests.helpers import metric

# fixtures and helpers of the snapshot tests (no test function is imported: nothing runs twice)
from tests.test_revocation_bulk_load import (  # noqa: F401 - fixtures
    StoreFactory,
    has,
    jti,
    key_file,
    prefix,
    redis,
    snapshot_fields,
    snapshot_loads,
    stores,
    write,
    write_key_only,
)

HOUR_MS = 3_600_000


async def eventually(condition: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return bool(condition())


# --- 1. the stream-coverage check trusts stream metadata the Redis credential controls ------------


async def test_a_verify_lock_with_a_long_ttl_does_not_hold_up_the_verifying_scan_for_ever(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway's lock has a PX of 6 s (renewed); one with an hour is no gateway's, but only a lock
    with no TTL at all (-1) is recognised as foreign. HSET + PEXPIRE 1 h (or a renewal every 2 s)
    means no process started from the snapshot ever runs its scan: key-only writes (allowed by the
    contract) are never enforced by it, and nothing says so (no log, no metric)."""
    schema = Schema(prefix)
    await write(redis, prefix, jti("one"))
    await stores(key_file)  # full load, snapshot written
    await write_key_only(redis, prefix, jti("key-only"))
    lock = snapshot.verify_lock_key(schema)
    await redis.hset(lock, "holder", "attacker")
    await redis.pexpire(lock, HOUR_MS)

    caplog.set_level(logging.INFO, logger="gateway.revocation")
    errors = metric("gateway_revocation_redis_errors_total")
    started = await stores(key_file)
    assert started.ready and not has(started, "key-only")
    enforced = await eventually(lambda: has(started, "key-only"), within=12.0)
    said = [r.getMessage() for r in caplog.records if "verif" in r.getMessage()]
    more = metric("gateway_revocation_redis_errors_total") - errors
    assert enforced, (f"key-only entry never enforced: verifying scan held up by a foreign lock; "
                      f"logs about it: {said}, redis_errors +{more}")


async def test_together_the_two_make_new_processes_forget_every_revocation_after_the_snapshot(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    """Finding 1 + finding 2, with no entry key touched: every process started from now on serves
    without "two" (written the normal way after the snapshot), and keeps doing so; running
    processes, `gateway revocation` listings and the keys themselves all still show it."""
    schema = Schema(prefix)
    await write(redis, prefix, jti("one"))
    first = await stores(key_file)
    meta = snapshot.Meta.parse((await snapshot_fields(redis, prefix))["meta"])
    assert meta is not None and meta.added is not None
    await write(redis, prefix, jti("two"))
    await until_has(first, "two")
    info = await stream_info(redis, schema.stream_key)
    assert info is not None
    await redis.xdel(schema.stream_key, info.last_generated)
    await redis.execute_command("XSETID", schema.stream_key, info.last_generated, "MAXDELETEDID", "0-1")
    lock = snapshot.verify_lock_key(schema)
    await redis.hset(lock, "holder", "attacker")
    await redis.pexpire(lock, HOUR_MS)

    started = await stores(key_file)
    assert started.ready and await redis.exists(schema.entry_key(jti("two")))
    assert await eventually(lambda: has(started, "two"), within=12.0), "a new process never enforces \"two\""


async def test_a_load_lock_with_a_long_ttl_does_not_keep_start_ups_waiting_for_ever(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    """No usable snapshot (DEL it) and P snapshot:lock with PEXPIRE 1 h: every start waits in
    ``while expires_in > 0`` for ever, never ready (503 for every request), without a log line."""
    schema = Schema(prefix)
    await write(redis, prefix, jti("one"))
    lock = snapshot.lock_key(schema)
    await redis.hset(lock, "holder", "attacker")
    await redis.pexpire(lock, HOUR_MS)
    store = await stores(key_file)  # start() gives up waiting after 10 s
    assert await eventually(lambda: store.ready, within=2.0), "start-up stuck behind a foreign load lock"


# --- 3. unauthenticated meta used before the MAC check -------------------------------------------


@pytest.mark.parametrize("position", ["x", "1.5", None, "1-2-3"])
async def test_an_unsigned_meta_with_a_bad_position_means_the_full_load(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path, position: Any
) -> None:
    """The meta is parsed and its position fed to stream_id() before the MAC is checked; a position
    that is not an id raises ValueError, which start_up does not catch (ResponseError only): the feed
    retries for ever and the process is never ready. One HSET by anyone with the Redis credential."""
    import orjson

    await write(redis, prefix, jti("one"))
    meta = orjson.dumps({"format": snapshot.FORMAT, "position": position, "added": 1, "written": 0, "entries": 0})
    await redis.hset(snapshot.snapshot_key(Schema(prefix)), mapping={"meta": meta, "data": b"{}", "mac": b"00"})
    store = await stores(key_file)
    assert await eventually(lambda: store.ready, within=3.0), "never ready: an unsigned meta stops the start-up"
    assert has(store, "one")


# --- helpers -----------------------------------------------------------------------------------


async def until_has(store: Any, value: str, within: float = 5.0) -> None:
    assert await eventually(lambda: has(store, value), within)


# --- 4. resources: unauthenticated bytes parsed before the MAC is checked (low) --------------------


# --- 5. sizes asked before anything is read (the meta is parsed before its MAC can be checked) -----


@pytest.mark.parametrize(("field", "result"), [("meta", "unreadable"), ("data", "unreadable"),
                                               ("mac", "bad_signature")])
async def test_a_snapshot_field_too_large_to_be_one_is_never_read(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, field: str, result: str,
) -> None:
    """One HSET by a Redis credential holder (a meta of 30 MiB cost ~640 MiB and 4 s per start):
    the lengths are asked first and the field is not read; the full load follows."""
    monkeypatch.setattr(snapshot, "MAX_BYTES", 64 * 1024)  # the data's limit, small enough to test
    await write(redis, prefix, jti("one"))
    await stores(key_file)  # writes a genuine snapshot
    key = snapshot.snapshot_key(Schema(prefix))
    genuine = await snapshot_fields(redis, prefix)
    assert len(genuine["meta"]) <= snapshot.MAX_META_BYTES and len(genuine["mac"]) == snapshot.MAC_BYTES
    big = b"x" * 1024 * 1024
    padded = {"meta": genuine["meta"][:-1] + b',"pad":"' + big + b'"}', "data": big, "mac": genuine["mac"] + big}
    await redis.hset(key, field, padded[field])
    sent = await bytes_sent(redis)
    loaded, refused = snapshot_loads("loaded"), snapshot_loads(result)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        store = await stores(key_file)
    assert store.ready and has(store, "one")
    assert snapshot_loads(result) == refused + 1 and snapshot_loads("loaded") == loaded
    assert await bytes_sent(redis) - sent < len(big), "a field was read although its length rules it out"
    warning = next(r for r in caplog.records if r.getMessage().startswith("revocation snapshot not used"))
    assert "bytes" in getattr(warning, "error", "")


async def test_a_snapshot_of_plausible_sizes_is_still_loaded(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    await write(redis, prefix, jti("one"))
    await stores(key_file)
    loaded = snapshot_loads("loaded")
    store = await stores(key_file)
    assert snapshot_loads("loaded") == loaded + 1 and has(store, "one")


async def bytes_sent(redis: Any) -> int:
    """What the Redis server has sent to its clients so far (INFO stats)."""
    return int((await redis.info("stats"))["total_net_output_bytes"])
