"""The revocation list's start-up load against a real redis-server.

Every process loads the list from the entry keys themselves (pipelined SCAN and MGET, values
decoded in bulk): a key written without its stream message is enforced from the next start-up,
expired entries are left out, and the bulk decode reads every value exactly as ``decode`` does.
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


async def test_a_key_written_without_its_stream_message_is_loaded_at_start(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    """The keys are the contract (docs/revocation.md): a bulk import that only SETs them is enforced
    by every process that starts after it, whatever another process loaded before."""
    await write(redis, prefix, jti("with-message"))
    first = await stores()
    assert has(first, "with-message")
    key_only = jti("key-only")
    await redis.set(Schema(prefix).entry_key(key_only), orjson.dumps(key_only.to_json()), ex=3600)
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


async def test_expired_entries_are_not_loaded(
    stores: Callable[[], Awaitable[RedisStore]], redis: Any, prefix: str
) -> None:
    schema = Schema(prefix)
    gone = jti("expired-key", expires_in=-5.0)  # a key whose TTL outlived its entry
    await redis.set(schema.entry_key(gone), orjson.dumps(gone.to_json()), ex=3600)
    await write(redis, prefix, jti("short", expires_in=1.0), jti("long"))
    first = await stores()
    assert not has(first, "expired-key")
    assert has(first, "short") and has(first, "long")

    await asyncio.sleep(1.2)  # "short" has expired now, its key not yet
    second = await stores()
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
