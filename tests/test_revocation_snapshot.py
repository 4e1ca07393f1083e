"""The start-up snapshot of the revocation list (revocation/snapshot.py) against a real redis-server.

A store that finds a usable snapshot loads it and follows the stream from the snapshot's
position: it must end up with exactly what a full load would give (entries written during and
after the snapshot included, expired ones left out), and fall back to the full load whenever the
snapshot cannot be trusted to be caught up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from gateway.config import RevocationConfig
from gateway.revocation import snapshot
from gateway.revocation.entries import Entry, Kind, Match, RevocationList
from gateway.revocation.redis_store import RedisStore
from gateway.revocation.schema import Schema, write_entry
from tests.helpers import metric

ISSUER = "https://issuer.test"



@pytest.fixture
def prefix() -> str:
    return f"s{uuid.uuid4().hex[:10]}:revoked:"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def stores(redis_url: str, prefix: str) -> AsyncIterator[Callable[[], Awaitable[RedisStore]]]:
    started: list[RedisStore] = []

    async def start() -> RedisStore:
        store = RedisStore(RevocationConfig(redis_url=redis_url, key_prefix=prefix, max_staleness=3.0))
        started.append(store)
        await store.start()
        return store

    yield start
    for store in started:
        await store.stop()


def jti(value: str, expires_in: float = 3600.0) -> Entry:
    return Entry(Kind.TOKEN, value, time.time() + expires_in, ISSUER, match=Match.JTI)


def has(store: RedisStore, value: str) -> bool:
    return (ISSUER, value) in store.list.tables()["jti"]


async def write(redis: Any, prefix: str, *entries: Entry) -> None:
    for entry in entries:
        await write_entry(redis, Schema(prefix), entry)


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def startups() -> float:
    return metric("gateway_revocation_resyncs_total", cause="startup")


async def test_a_store_started_from_the_snapshot_sees_entries_written_during_and_after_it(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    await write(redis, prefix, jti("before"))
    original = RedisStore._write_snapshot

    async def write_during(self: RedisStore) -> None:  # after the scan, before the snapshot is written
        await write(redis, prefix, jti("during"))
        await original(self)

    RedisStore._write_snapshot = write_during  # type: ignore[method-assign]
    try:
        first = await stores()
    finally:
        RedisStore._write_snapshot = original  # type: ignore[method-assign]
    raw = await redis.hget(snapshot.snapshot_key(Schema(prefix)), "data")
    in_snapshot = RevocationList()
    snapshot.merge_tables(in_snapshot, raw)
    assert (ISSUER, "before") in in_snapshot.tables()["jti"]
    assert (ISSUER, "during") not in in_snapshot.tables()["jti"]  # only the stream brings it
    await write(redis, prefix, jti("after"))

    full_loads = startups()
    second = await stores()
    assert startups() == full_loads  # no full load: the snapshot was used
    assert second.ready
    assert has(second, "before") and has(second, "during") and has(second, "after")  # ready = caught up
    await write(redis, prefix, jti("later"))
    await until(lambda: has(second, "later") and has(first, "later"))
    assert has(first, "during")


async def test_expired_entries_are_not_loaded_from_keys_nor_from_the_snapshot(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    schema = Schema(prefix)
    gone = jti("expired-key", expires_in=-5.0)  # a key whose TTL outlived its entry
    await redis.set(schema.entry_key(gone), orjson.dumps(gone.to_json()), ex=3600)
    await write(redis, prefix, jti("short", expires_in=1.0), jti("long"))
    first = await stores()
    assert not has(first, "expired-key")
    assert has(first, "short") and has(first, "long")

    await asyncio.sleep(1.2)  # "short" is in the snapshot, and expired now
    full_loads = startups()
    second = await stores()
    assert startups() == full_loads
    assert has(second, "long")
    assert not has(second, "short") and not has(second, "expired-key")


async def test_a_snapshot_the_stream_cannot_catch_up_is_not_used(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    await write(redis, prefix, jti("one"))
    await stores()
    await write(redis, prefix, jti("two"))
    await redis.xtrim(Schema(prefix).stream_key, maxlen=0, approximate=False)  # "two"'s message is gone
    full_loads = startups()
    second = await stores()
    assert startups() == full_loads + 1  # the full load, which finds "two" in its key
    assert has(second, "one") and has(second, "two")


async def test_a_snapshot_that_is_not_one_is_ignored(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    await write(redis, prefix, jti("one"))
    key = snapshot.snapshot_key(Schema(prefix))
    meta = snapshot.Meta("0-0", 0, time.time(), 1).dump()
    tables = {name: {"issuers": [ISSUER], "issuer": [0], "value": ["x"], "expires": [time.time() + 60]}
              for name in ("jti", "fingerprint", "family")}
    tables["legacy"] = {"value": [], "expires": []}
    good = {**tables, **{name: {**tables["jti"], "not_before": [0.0]} for name in ("subject", "client")}}
    assert snapshot.merge_tables(RevocationList(), orjson.dumps(good)) == 5
    for data in (
        b"not json", b'{"jti": {"value": [1]}}',  # not a snapshot
        orjson.dumps({**good, "jti": {**good["jti"], "value": [""]}}),  # an empty value
        orjson.dumps({**good, "jti": {**good["jti"], "expires": ["soon"]}}),  # not a number
        orjson.dumps({**good, "jti": {**good["jti"], "expires": [1.5e308]}}).replace(b"1.5e+308", b"1e400"),  # inf
        orjson.dumps({**good, "jti": {**good["jti"], "value": ["x", "y"], "issuer": [0, 0],
                                      "expires": [1.5e308, 1.5e308]}}),  # finite, but too large to be a time
        orjson.dumps({**good, "jti": {**good["jti"], "issuer": [0, 0]}}),  # columns of different lengths
    ):
        await redis.hset(key, mapping={"meta": meta, "data": data})
        full_loads, errors = startups(), metric("gateway_revocation_redis_errors_total")
        store = await stores()
        assert startups() == full_loads + 1
        assert metric("gateway_revocation_redis_errors_total") == errors + 1
        assert has(store, "one") and store.ready
        await redis.delete(Schema(prefix).stream_key)  # each round starts without a stream, as the first


async def test_stores_starting_together_do_one_full_load(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    await write(redis, prefix, *(jti(f"many-{i}") for i in range(3000)))
    full_loads = startups()
    together = await asyncio.gather(*(stores() for _ in range(3)))
    assert startups() == full_loads + 1
    for store in together:
        assert store.ready and len(store.list) == 3000
    assert not await redis.exists(snapshot.lock_key(Schema(prefix)))


def test_the_snapshot_round_trips_every_table() -> None:
    now = time.time()
    revocations = RevocationList()
    for entry in (
        jti("a"), Entry(Kind.TOKEN, "F" * 64, now + 60, ISSUER, match=Match.FINGERPRINT),
        Entry(Kind.TOKEN, "legacy", now + 60), Entry(Kind.FAMILY, "sid-1", now + 60, "*"),
        Entry(Kind.SUBJECT, "alice", now + 60, ISSUER, not_before=now - 1.5),
        Entry(Kind.CLIENT, "app", now + 60, ISSUER, not_before=now - 2.5),
    ):
        revocations.add(entry)
    copy = RevocationList()
    assert snapshot.merge_tables(copy, snapshot.encode_tables(revocations)) == 6
    assert copy.tables() == revocations.tables()
    # merging keeps the stronger of each: the later expiry and the later cut-off
    stronger = RevocationList()
    stronger.add(Entry(Kind.SUBJECT, "alice", now + 120, ISSUER, not_before=now - 3.0))
    snapshot.merge_tables(stronger, snapshot.encode_tables(revocations))
    assert stronger.tables()["subject"][(ISSUER, "alice")] == (now - 1.5, now + 120)


async def test_a_lock_whose_holder_is_gone_is_taken_once_it_expires(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    await write(redis, prefix, jti("one"))
    key = snapshot.lock_key(Schema(prefix))
    await redis.hset(key, "holder", "a-process-that-died")
    await redis.pexpire(key, 300)
    full_loads, started = startups(), time.monotonic()
    store = await stores()
    assert time.monotonic() - started >= 0.25  # it waited for the holder's snapshot first
    assert startups() == full_loads + 1 and has(store, "one")


def test_the_bulk_load_reads_every_value_as_decode_does() -> None:
    """``load_values`` adds conforming values without an ``Entry``; anything else goes through ``decode``."""
    from gateway.revocation.bulk_load import load_values
    from gateway.revocation.schema import decode

    now = time.time()
    later = now + 600
    written = [orjson.dumps(e.to_json()) for e in (
        jti("j"), Entry(Kind.TOKEN, "AB" * 32, later, ISSUER, match=Match.FINGERPRINT),
        Entry(Kind.TOKEN, "plain", later), Entry(Kind.FAMILY, "fam", later, "*"),
        Entry(Kind.SUBJECT, "sub", later, ISSUER, not_before=now - 9), Entry(Kind.CLIENT, "cli", later, ISSUER),
        jti("old", expires_in=-1),
    )]
    odd = [orjson.dumps(d) for d in (
        {"kind": "token", "value": "v1-token", "expires_at": later, "issuer": ISSUER},  # schema 1: every issuer
        {"v": 2, "kind": "client", "value": 42, "expires_at": str(later)},  # converted as from_json does
        {"v": 2, "kind": "subject", "value": "s", "expires_at": later, "issuer": None, "created_at": now - 4},
        {"v": 2, "kind": "family", "value": "f", "expires_at": later, "match": "jti"},  # refused
        {"v": "2", "kind": "token", "value": "t", "expires_at": later, "match": "jti"},  # from_json takes "2"
        {"v": 2.0, "kind": "token", "value": "t", "expires_at": later},  # refused
        {"v": True, "kind": "token", "value": "t", "expires_at": later},  # refused
        {"v": 2, "kind": "token", "value": "", "expires_at": later},  # refused
        {"v": 2, "kind": "nothing", "value": "n", "expires_at": later},  # refused
        {"v": 2, "kind": "token", "value": "nb", "expires_at": later, "not_before": "x"},  # refused
        [1, 2],
    )] + [b"{not json", b"null"]
    values = [*written, *odd, None]
    revocations = RevocationList()
    errors = metric("gateway_revocation_redis_errors_total")
    loaded = load_values(revocations, values)

    expected, refused = RevocationList(), 0
    for raw in values:
        if raw is None:
            continue
        try:
            entry = decode(raw)
        except ValueError:
            refused += 1
            continue
        if entry.expires_at > now:
            expected.add(entry)
    assert loaded == len(expected) == 10
    assert metric("gateway_revocation_redis_errors_total") == errors + refused == errors + 9
    assert revocations.tables().keys() == expected.tables().keys()
    for name, table in expected.tables().items():
        got = revocations.tables()[name]
        assert got.keys() == table.keys(), name
        if name != "client":  # a cut-off without not_before nor created_at is "now": read at two times
            assert got == table, name


async def test_a_store_that_read_many_messages_after_the_snapshot_writes_a_fresh_one(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.revocation import redis_store

    monkeypatch.setattr(redis_store, "SNAPSHOT_REFRESH", 3)
    await write(redis, prefix, jti("first"))
    await stores()
    key = snapshot.snapshot_key(Schema(prefix))
    old = snapshot.Meta.parse(await redis.hget(key, "meta"))
    await write(redis, prefix, *(jti(f"since-{i}") for i in range(3)))
    second = await stores()
    new = snapshot.Meta.parse(await redis.hget(key, "meta"))
    assert old is not None and new is not None
    assert new.position == second.last_id != old.position and new.entries == 4
    third = await stores()
    assert has(third, "since-2") and third.last_id == second.last_id


async def test_a_snapshot_key_redis_refuses_to_read_means_the_full_load(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    """An ACL without the hash commands (NOPERM) or a snapshot key of another type (WRONGTYPE)."""
    await write(redis, prefix, jti("one"))
    await redis.set(snapshot.snapshot_key(Schema(prefix)), b"a string, not a hash")
    full_loads = startups()
    store = await stores()
    assert store.ready and has(store, "one")
    assert startups() == full_loads + 1
