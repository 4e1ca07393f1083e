"""The revocation list's start-up load against a real redis-server.

Without ``revocation.snapshot`` every process loads the list from the entry keys themselves
(pipelined SCAN and MGET, values decoded in bulk): a key written without its stream message is
enforced from the next start-up, expired entries are left out, and the bulk decode reads every
value exactly as ``decode`` does.

With it, a process loads the signed snapshot when its MAC verifies and the stream still holds
every message after its position, and must end up with exactly what a full load gives (entries
written during and after the snapshot included, expired ones left out); anything else (no key,
another key, altered bytes, a replayed snapshot the stream no longer covers) means the full
load. A key written without its stream message reaches a process started from the snapshot by
its verifying scan, and every running process by the message that scan sends.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.config import RevocationConfig, RevocationSnapshotConfig
from gateway.config.files import snapshot_key
from gateway.revocation import snapshot
from gateway.revocation.entries import Entry, Kind, Match, RevocationList
from gateway.revocation.redis_store import RedisStore
from gateway.revocation.redis_stream import stream_info
from gateway.revocation.schema import Schema, write_entry, write_entry_sync
from gateway.revocation.snapshot_sync import Snapshots
from tests.helpers import metric

ISSUER = "https://issuer.test"
StoreFactory = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
def prefix() -> str:
    return f"s{uuid.uuid4().hex[:10]}:revoked:"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The fleet's snapshot key, as an operator makes it: random bytes in base64, one line."""
    path = tmp_path / "snapshot.key"
    path.write_text(base64.b64encode(os.urandom(48)).decode() + "\n")
    return path


@pytest.fixture
async def stores(redis_url: str, prefix: str) -> AsyncIterator[StoreFactory]:
    """``await stores()``: a started store loading every key; ``await stores(key_file)``: with the snapshot."""
    started: list[RedisStore] = []

    async def start(key_file: Path | None = None) -> RedisStore:
        signed = RevocationSnapshotConfig(key_file=str(key_file)) if key_file is not None else None
        store = RedisStore(RevocationConfig(redis_url=redis_url, key_prefix=prefix, max_staleness=3.0,
                                            snapshot=signed))
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


async def write_key_only(redis: Any, prefix: str, entry: Entry) -> None:
    """What the contract allows a writer to do (docs/revocation.md): the key without its stream message."""
    await redis.set(Schema(prefix).entry_key(entry), orjson.dumps(entry.to_json()), ex=3600 * 3)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def full_loads() -> float:
    return metric("gateway_revocation_resyncs_total", cause="startup")


def snapshot_loads(result: str) -> float:
    return metric("gateway_revocation_snapshot_loads_total", result=result)


async def test_a_key_written_without_its_stream_message_is_loaded_at_start(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    """The keys are the contract (docs/revocation.md): a bulk import that only SETs them is enforced
    by every process that starts after it, whatever another process loaded before."""
    await write(redis, prefix, jti("with-message"))
    first = await stores()
    assert has(first, "with-message")
    await write_key_only(redis, prefix, jti("key-only"))
    second = await stores()
    assert has(second, "with-message") and has(second, "key-only")
    assert not has(first, "key-only")  # no message: a running process learns it at its next resync


async def test_messages_trimmed_before_the_load_read_them_mean_another_load(
    redis_url: str, redis: Any, prefix: str
) -> None:
    """A revocation written during the scan reaches the copy through the stream; when the stream
    is trimmed past it before it is read, the store loads again rather than say ready without it."""

    class TrimmedDuringLoad(RedisStore):
        trims = 1

        async def _drain(self) -> int:
            if self.trims:  # what a heavy writer does to a long load: its message is trimmed unread
                self.trims -= 1
                await write(redis, prefix, jti("written-during-load"))
                await redis.xtrim(f"{prefix}stream", maxlen=0, approximate=False)
            return await super()._drain()

    await write(redis, prefix, jti("before"))
    loads = metric("gateway_revocation_resyncs_total", cause="trimmed")
    store = TrimmedDuringLoad(RevocationConfig(redis_url=redis_url, key_prefix=prefix, max_staleness=3.0))
    try:
        await store.start()
        assert store.ready
        assert has(store, "before") and has(store, "written-during-load")
        assert metric("gateway_revocation_resyncs_total", cause="trimmed") == loads + 1
    finally:
        await store.stop()


@pytest.mark.parametrize("signed", [False, True], ids=["keys", "snapshot"])
async def test_expired_entries_are_not_loaded(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path, signed: bool
) -> None:
    schema = Schema(prefix)
    gone = jti("expired-key", expires_in=-5.0)  # a key whose TTL outlived its entry
    await redis.set(schema.entry_key(gone), orjson.dumps(gone.to_json()), ex=3600)
    await write(redis, prefix, jti("short", expires_in=1.0), jti("long"))
    key = key_file if signed else None
    first = await stores(key)
    assert not has(first, "expired-key")
    assert has(first, "short") and has(first, "long")

    await asyncio.sleep(1.2)  # "short" has expired now, its key not yet; it is in the snapshot
    loaded = snapshot_loads("loaded")
    second = await stores(key)
    assert snapshot_loads("loaded") == loaded + signed
    assert has(second, "long")
    assert not has(second, "short") and not has(second, "expired-key")


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


# --- the signed snapshot (revocation.snapshot) ----------------------------------------------------


def secret_of(key_file: Path) -> bytes:
    return snapshot_key(RevocationSnapshotConfig(key_file=str(key_file)))


async def snapshot_fields(redis: Any, prefix: str) -> dict[str, bytes]:
    raw = await redis.hgetall(snapshot.snapshot_key(Schema(prefix)))
    return {name.decode(): value for name, value in raw.items()}


def in_snapshot(fields: dict[str, bytes]) -> RevocationList:
    copy = RevocationList()
    snapshot.merge_tables(copy, fields["data"])
    return copy


async def test_without_the_snapshot_key_no_snapshot_is_written_nor_read(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    await write(redis, prefix, jti("one"))
    first, second = await stores(), await stores()
    await second.revoke(jti("two"))
    await first.resync()
    await until(lambda: has(first, "two"))
    assert await redis.keys(f"{prefix}snapshot*") == []

    await stores(key_file)  # a store with the key writes one; a store without it still loads every key
    assert await redis.exists(snapshot.snapshot_key(Schema(prefix)))
    loads, loaded = full_loads(), snapshot_loads("loaded")
    third = await stores()
    assert full_loads() == loads + 1 and snapshot_loads("loaded") == loaded
    assert has(third, "one") and has(third, "two")


async def test_a_store_started_from_the_snapshot_sees_entries_written_during_and_after_it(
    stores: StoreFactory, redis: Any, redis_url: str, prefix: str, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write(redis, prefix, jti("before"))
    encode = snapshot.encode_tables

    def write_during(tables: dict[str, dict[Any, Any]]) -> bytes:  # the list is copied, its position noted
        with SyncRedis.from_url(redis_url) as client:
            write_entry_sync(client, Schema(prefix), jti("during"))
        return encode(tables)

    monkeypatch.setattr(snapshot, "encode_tables", write_during)
    first = await stores(key_file)
    monkeypatch.undo()
    assert (ISSUER, "before") in in_snapshot(await snapshot_fields(redis, prefix)).tables()["jti"]
    assert (ISSUER, "during") not in in_snapshot(await snapshot_fields(redis, prefix)).tables()["jti"]
    await write(redis, prefix, jti("after"))

    loads, loaded = full_loads(), snapshot_loads("loaded")
    second = await stores(key_file)
    assert full_loads() == loads and snapshot_loads("loaded") == loaded + 1  # the snapshot was used
    assert second.ready
    assert has(second, "before") and has(second, "during") and has(second, "after")  # ready = caught up
    await write(redis, prefix, jti("later"))
    await until(lambda: has(second, "later") and has(first, "later"))


@pytest.mark.parametrize("forgery", ["empty, signed with another key", "empty, unsigned", "entry removed",
                                     "position moved on", "another prefix's", "unsigned, of the version before"])
async def test_a_snapshot_not_signed_with_the_fleet_key_is_not_used(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path, forgery: str
) -> None:
    """A Redis credential alone cannot make a start-up forget the list: whatever it writes as the
    snapshot, a store started after it loads every key."""
    await write(redis, prefix, jti("one"))
    await stores(key_file)
    genuine = await snapshot_fields(redis, prefix)
    await write(redis, prefix, jti("two"))
    info = await stream_info(redis, Schema(prefix).stream_key)
    assert info is not None
    now = snapshot.Meta(info.last_generated, info.entries_added, time.time(), 0).dump()  # usable but for its MAC
    empty = snapshot.encode_tables(snapshot.copy_tables(RevocationList()))
    key, secret = snapshot.snapshot_key(Schema(prefix)), secret_of(key_file)
    forged = {
        "empty, signed with another key": {"meta": now, "data": empty, "mac": snapshot.seal(os.urandom(32), key, now,
                                                                                             empty)},
        "empty, unsigned": {"meta": now, "data": empty},
        "entry removed": {**genuine, "data": empty},
        "position moved on": {**genuine, "meta": now},  # would skip the message of "two"
        "another prefix's": {"meta": now, "data": empty, "mac": snapshot.seal(secret, "other:snapshot", now, empty)},
        "unsigned, of the version before": {"meta": now.replace(b'"format":2', b'"format":1'), "data": empty},
    }[forgery]
    await redis.delete(key)
    await redis.hset(key, mapping=forged)
    result = "unreadable" if "version before" in forgery else "bad_signature"
    loads, loaded, refused = full_loads(), snapshot_loads("loaded"), snapshot_loads(result)
    store = await stores(key_file)
    assert snapshot_loads("loaded") == loaded and snapshot_loads(result) == refused + 1
    assert full_loads() == loads + 1
    assert store.ready and has(store, "one") and has(store, "two")


async def test_an_older_signed_snapshot_replayed_is_used_only_while_the_stream_covers_it(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    await write(redis, prefix, jti("one"))
    await stores(key_file)
    key, older = snapshot.snapshot_key(Schema(prefix)), await snapshot_fields(redis, prefix)
    await write(redis, prefix, jti("two"))

    await redis.hset(key, mapping=older)  # replayed while the stream holds every message after it
    loads, loaded = full_loads(), snapshot_loads("loaded")
    second = await stores(key_file)
    assert snapshot_loads("loaded") == loaded + 1 and full_loads() == loads
    assert has(second, "one") and has(second, "two")  # complete: the stream after its position brought "two"
    await second.stop()  # (its verifying scan would write a fresh snapshot)

    await redis.xtrim(Schema(prefix).stream_key, maxlen=0, approximate=False)  # "two"'s message is gone
    await redis.hset(key, mapping=older)
    behind = snapshot_loads("behind_stream")
    third = await stores(key_file)
    assert snapshot_loads("loaded") == loaded + 1 and snapshot_loads("behind_stream") == behind + 1
    assert full_loads() == loads + 1  # the full load, which finds "two" in its key
    assert has(third, "one") and has(third, "two")


async def test_a_key_written_without_its_message_reaches_every_store_after_the_verifying_scan(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    """A bulk import that only SETs keys: a store started from the snapshot lacks them until its
    verifying scan, which announces them, so that a store running since before has them too."""
    stronger = jti("stronger-in-its-key", expires_in=7200)
    await write(redis, prefix, jti("with-message"), jti(stronger.value))
    running = await stores(key_file)  # the full load; it writes the snapshot
    await write_key_only(redis, prefix, jti("key-only"))
    await write_key_only(redis, prefix, stronger)  # the same key again, a later expiry, no message
    repaired, loaded = metric("gateway_revocation_snapshot_repaired_total"), snapshot_loads("loaded")

    started = await stores(key_file)
    assert snapshot_loads("loaded") == loaded + 1
    assert has(started, "with-message") and not has(started, "key-only")  # until its scan: the window
    jtis = started.list.tables()["jti"], running.list.tables()["jti"]
    await until(lambda: all(has(store, "key-only") for store in (started, running)))
    await until(lambda: all(table[(ISSUER, stronger.value)] == stronger.expires_at for table in jtis))
    assert metric("gateway_revocation_snapshot_repaired_total") == repaired + 2
    await until(lambda: started.snapshots is not None and not started.snapshots.unverified)
    for _ in range(200):  # the scan writes a fresh snapshot, which holds what it found
        if (ISSUER, "key-only") in in_snapshot(await snapshot_fields(redis, prefix)).tables()["jti"]:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("no fresh snapshot with the entries the scan found")

    later = await stores(key_file)  # from the fresh snapshot the scan wrote
    assert snapshot_loads("loaded") == loaded + 2
    assert has(later, "key-only") and later.list.tables()["jti"][(ISSUER, stronger.value)] == stronger.expires_at


async def test_stores_starting_together_do_one_full_load_and_verify_one_at_a_time(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write(redis, prefix, *(jti(f"many-{i}") for i in range(3000)))
    scans: list[tuple[float, float]] = []
    verify = Snapshots.verify

    async def timed(self: Snapshots) -> int:
        began = time.monotonic()
        try:
            return await verify(self)
        finally:
            scans.append((began, time.monotonic()))

    monkeypatch.setattr(Snapshots, "verify", timed)
    loads, loaded = full_loads(), snapshot_loads("loaded")
    together = await asyncio.gather(*(stores(key_file) for _ in range(3)))
    assert full_loads() == loads + 1 and snapshot_loads("loaded") == loaded + 2
    for store in together:
        assert store.ready and len(store.list) == 3000
    assert not await redis.exists(snapshot.lock_key(Schema(prefix)))
    await until(lambda: len(scans) == 2, within=30)  # the two started from the snapshot
    (_, first_ended), (second_began, _) = sorted(scans)
    assert second_began >= first_ended  # one at a time
    assert not await redis.exists(snapshot.verify_lock_key(Schema(prefix)))


async def test_a_snapshot_key_redis_refuses_to_read_means_the_full_load(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    """A snapshot key of another type (WRONGTYPE), or an ACL without the hash commands (NOPERM)."""
    await write(redis, prefix, jti("one"))
    await redis.set(snapshot.snapshot_key(Schema(prefix)), b"a string, not a hash")
    loads, refused = full_loads(), snapshot_loads("refused")
    store = await stores(key_file)
    assert store.ready and has(store, "one")
    assert full_loads() == loads + 1 and snapshot_loads("refused") == refused + 1


async def test_an_acl_without_the_snapshot_commands_means_the_full_load(
    redis: Any, redis_url: str, prefix: str, key_file: Path
) -> None:
    await write(redis, prefix, jti("one"))
    user = f"u{uuid.uuid4().hex[:8]}"
    await redis.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-@hash", "-eval")
    config = RevocationConfig(redis_url=redis_url.replace("redis://", f"redis://{user}:pw@"), key_prefix=prefix,
                              max_staleness=3.0, snapshot=RevocationSnapshotConfig(key_file=str(key_file)))
    store = RedisStore(config)
    loads, refused = full_loads(), snapshot_loads("refused")
    try:
        await store.start()
        assert store.ready and has(store, "one")
        assert full_loads() == loads + 1 and snapshot_loads("refused") == refused + 1
    finally:
        await store.stop()
        await redis.execute_command("ACL", "DELUSER", user)


@pytest.mark.parametrize("damage", ["not json", "an empty value", "not a number", "infinite", "too large",
                                    "counts that do not add up", "columns of different lengths"])
async def test_a_signed_snapshot_that_is_not_one_is_not_used(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path, damage: str
) -> None:
    await write(redis, prefix, jti("one"))
    info = await stream_info(redis, Schema(prefix).stream_key)
    assert info is not None
    meta = snapshot.Meta(info.last_generated, info.entries_added, time.time(), 1).dump()
    tables = {name: {"issuers": [ISSUER], "counts": [1], "value": ["x"], "expires": [time.time() + 60]}
              for name in ("jti", "fingerprint", "family")}
    tables["legacy"] = {"value": [], "expires": []}
    good = {**tables, **{name: {**tables["jti"], "not_before": [0.0]} for name in ("subject", "client")}}
    assert snapshot.merge_tables(RevocationList(), orjson.dumps(good)) == 5
    data = {
        "not json": b"not json",
        "an empty value": orjson.dumps({**good, "jti": {**good["jti"], "value": [""]}}),
        "not a number": orjson.dumps({**good, "jti": {**good["jti"], "expires": ["soon"]}}),
        "infinite": orjson.dumps({**good, "jti": {**good["jti"], "expires": [1.5e308]}}).replace(b"1.5e+308", b"1e400"),
        "too large": orjson.dumps({**good, "jti": {**good["jti"], "value": ["x", "y"], "counts": [2],
                                                   "expires": [1.5e308, 1.5e308]}}),  # finite, too large for a time
        "counts that do not add up": orjson.dumps({**good, "jti": {**good["jti"], "counts": [2]}}),
        "columns of different lengths": orjson.dumps({**good, "jti": {**good["jti"], "expires": [time.time()] * 2}}),
    }[damage]
    key = snapshot.snapshot_key(Schema(prefix))
    await redis.hset(key, mapping={"meta": meta, "data": data, "mac": snapshot.seal(secret_of(key_file), key, meta,
                                                                                     data)})
    loads, unreadable = full_loads(), snapshot_loads("unreadable")
    store = await stores(key_file)
    assert full_loads() == loads + 1 and snapshot_loads("unreadable") == unreadable + 1
    assert has(store, "one") and store.ready


def test_the_snapshot_round_trips_every_table() -> None:
    now = time.time()
    revocations = RevocationList()
    for entry in (
        jti("a"), Entry(Kind.TOKEN, "F" * 64, now + 60, ISSUER, match=Match.FINGERPRINT),
        Entry(Kind.TOKEN, "legacy", now + 60), Entry(Kind.FAMILY, "sid-1", now + 60, "*"),
        Entry(Kind.SUBJECT, "alice", now + 60, ISSUER, not_before=now - 1.5),
        Entry(Kind.CLIENT, "app", now + 60, ISSUER, not_before=now - 2.5),
        Entry(Kind.CLIENT, "app", now + 60, "https://other.test", not_before=now - 3.5),
        Entry(Kind.CLIENT, "app-2", now + 60, ISSUER, not_before=now - 4.5),  # issuers interleaved in the table
        jti("b"), Entry(Kind.TOKEN, "b", now + 60, "https://other.test", match=Match.JTI), jti("c"),
    ):
        revocations.add(entry)
    copy = RevocationList()
    assert snapshot.merge_tables(copy, snapshot.encode_tables(snapshot.copy_tables(revocations))) == 11
    assert copy.tables() == revocations.tables()
    # merging keeps the stronger of each: the later expiry and the later cut-off
    stronger = RevocationList()
    stronger.add(Entry(Kind.SUBJECT, "alice", now + 120, ISSUER, not_before=now - 3.0))
    snapshot.merge_tables(stronger, snapshot.encode_tables(snapshot.copy_tables(revocations)))
    assert stronger.tables()["subject"][(ISSUER, "alice")] == (now - 1.5, now + 120)


async def test_a_lock_whose_holder_is_gone_is_taken_once_it_expires(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    await write(redis, prefix, jti("one"))
    key = snapshot.lock_key(Schema(prefix))
    await redis.hset(key, "holder", "a-process-that-died")
    loads, started = full_loads(), time.monotonic()  # before the PEXPIRE: a slow set-up is not counted off the wait
    await redis.pexpire(key, 300)
    store = await stores(key_file)
    assert time.monotonic() - started >= 0.25  # it waited for the holder's snapshot first
    assert full_loads() == loads + 1 and has(store, "one")


async def test_locks_that_never_expire_hold_up_neither_a_start_nor_a_verifying_scan(
    stores: StoreFactory, redis: Any, prefix: str, key_file: Path
) -> None:
    """A gateway's locks always expire: a lock key without a TTL (left by hand, or by someone with
    the Redis credential) would otherwise keep every start-up waiting, or every scan from running."""
    schema = Schema(prefix)
    await write(redis, prefix, jti("one"))
    for key in (snapshot.lock_key(schema), snapshot.verify_lock_key(schema)):
        await redis.hset(key, "holder", "never-expires")
    loads = full_loads()
    store = await asyncio.wait_for(stores(key_file), timeout=5)  # no snapshot, and no lock to wait for
    assert full_loads() == loads + 1 and has(store, "one")

    await redis.delete(snapshot.lock_key(schema))
    await stores(key_file)  # the full load under the lock, which writes the snapshot
    await write_key_only(redis, prefix, jti("key-only"))
    loaded = snapshot_loads("loaded")
    started = await stores(key_file)
    assert snapshot_loads("loaded") == loaded + 1 and not has(started, "key-only")
    await until(lambda: has(started, "key-only"))  # its verifying scan ran all the same


def test_covers_tells_whether_an_entry_would_change_the_list() -> None:
    """What the verifying scan asks of each key: is it here, at least as strong?"""
    now = time.time()
    revocations = RevocationList()
    held = [jti("j", 600), Entry(Kind.SUBJECT, "s", now + 600, ISSUER, not_before=now - 10),
            Entry(Kind.CLIENT, "c", now + 600, ISSUER)]  # no not_before, no created_at: cut off when added
    for entry in held:
        revocations.add(entry)
    assert all(revocations.covers(entry) for entry in held)
    assert not revocations.covers(jti("other"))
    assert not revocations.covers(jti("j", 1200))  # a later expiry
    assert not revocations.covers(Entry(Kind.SUBJECT, "s", now + 600, ISSUER, not_before=now - 5))  # a later cut-off
    assert not revocations.covers(Entry(Kind.SUBJECT, "s", now + 600, "*", not_before=now - 10))  # another issuer
    assert revocations.covers(Entry(Kind.SUBJECT, "s", now + 300, ISSUER, not_before=now - 20))  # weaker
