"""ExpiringCache (tokens/cache.py): per-entry deadlines, LRU eviction, the expiry heap, chunked purges.

Deadlines are wall-clock seconds taken from the value itself (``Item.until``); a test that
needs an entry to expire waits until its deadline has passed, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from dataclasses import dataclass

import pytest

from gateway.tokens.cache import ExpiringCache
from tests.helpers import LoopTurns, metric

_names = itertools.count()


@dataclass(frozen=True)
class Item:
    name: str
    until: float


def cache(maxsize: int = 100) -> ExpiringCache[Item]:
    # a cache name of its own per test, so that its hit / miss counts can be read alone
    return ExpiringCache(f"test_cache_{next(_names)}", maxsize, lambda item: item.until)


def later(seconds: float = 3600.0) -> float:
    return time.time() + seconds


async def until_past(deadline: float) -> None:
    while time.time() < deadline:
        await asyncio.sleep(0.01)


def keys(c: ExpiringCache[Item]) -> list[str]:
    """The keys held, least recently used first (what eviction would take first)."""
    return list(c._entries)


# --- deadlines -----------------------------------------------------------------------------


async def test_each_entry_expires_at_its_own_deadline() -> None:
    c = cache()
    short, long = Item("short", later(0.05)), Item("long", later())
    c.put("s", short)
    c.put("l", long)
    assert c.get("s") is short and c.get("l") is long
    await until_past(short.until)
    assert c.get("s") is None
    assert c.get("l") is long
    assert len(c) == 1  # the expired entry went on the lookup


def test_an_already_expired_value_is_never_stored_and_removes_an_older_entry() -> None:
    c = cache()
    c.put("k", Item("fresh", later()))
    c.put("k", Item("stale", time.time() - 1))
    assert c.get("k") is None
    assert len(c) == 0
    c.put("other", Item("stale", time.time() - 1))
    assert len(c) == 0


def test_a_newer_value_replaces_the_older_one_and_its_deadline() -> None:
    c = cache()
    c.put("k", Item("first", later()))
    second = Item("second", later(7200))
    c.put("k", second)
    assert c.get("k") is second
    assert len(c) == 1


# --- eviction ------------------------------------------------------------------------------


def test_the_least_recently_used_entry_is_evicted() -> None:
    c = cache(maxsize=3)
    for key in "abc":
        c.put(key, Item(key, later()))
    assert c.get("a") is not None  # a is now the most recently used
    c.put("d", Item("d", later()))
    assert keys(c) == ["c", "a", "d"]  # b went
    c.put("c", Item("c2", later()))  # writing a key uses it too
    c.put("e", Item("e", later()))
    assert keys(c) == ["d", "c", "e"]
    assert c.get("b") is None and c.get("a") is None


async def test_expired_entries_are_dropped_before_anything_is_evicted() -> None:
    c = cache(maxsize=3)
    c.put("oldest", Item("oldest", later()))  # least recently used, but still valid
    dying = Item("dying", later(0.05))
    c.put("dying", dying)
    c.put("newest", Item("newest", later()))
    await until_past(dying.until)
    c.put("new", Item("new", later()))
    assert keys(c) == ["oldest", "newest", "new"]


def test_a_size_of_zero_disables_the_cache() -> None:
    c = cache(maxsize=0)
    c.put("k", Item("k", later()))
    assert c.get("k") is None
    assert len(c) == 0


def test_discard_and_clear() -> None:
    c = cache()
    for key in "abc":
        c.put(key, Item(key, later()))
    c.discard("b")
    c.discard("missing")  # nothing to do, no error
    assert keys(c) == ["a", "c"]
    c.clear()
    assert len(c) == 0 and c.get("a") is None


# --- the expiry heap -----------------------------------------------------------------------


async def test_the_heap_of_deadlines_is_rebuilt_when_stale_pairs_pile_up() -> None:
    c = cache(maxsize=10)
    base = later()
    for i in range(5000):  # one key written over and over leaves a stale (deadline, key) pair each time
        c.put("hot", Item("hot", base + i))
    assert len(c) == 1
    assert len(c._expiries) <= 2 * len(c) + 1024 + 1
    # the rebuilt heap still expires what it holds
    dying = Item("dying", later(0.05))
    c.put("dying", dying)
    await until_past(dying.until)
    c.put("other", Item("other", later()))  # a put expires what is due first
    assert keys(c) == ["hot", "other"]
    assert c.get("hot") == Item("hot", base + 4999)


# --- purges --------------------------------------------------------------------------------


def test_discard_where_is_a_coroutine() -> None:
    assert inspect.iscoroutinefunction(ExpiringCache.discard_where)


async def test_discard_where_checks_in_chunks_and_yields_between_them() -> None:
    c = cache(maxsize=1000)
    for i in range(35):
        c.put(f"k{i}", Item(str(i), later()))
    seen: list[int] = []
    async with LoopTurns() as turns:

        def even(item: Item) -> bool:
            seen.append(turns.count)
            return int(item.name) % 2 == 0

        dropped = await c.discard_where(even, chunk=10)
    assert dropped == 18
    assert len(c) == 17 and all(int(c._entries[k][0].name) % 2 for k in c._entries)
    # every chunk of 10 ran without a break; the loop served others between the chunks
    runs = [len(list(group)) for _, group in itertools.groupby(seen)]
    assert runs == [10, 10, 10, 5]


async def test_discard_where_skips_entries_that_went_meanwhile() -> None:
    c = cache(maxsize=1000)
    for i in range(30):
        c.put(f"k{i}", Item(str(i), later()))

    async def remove_the_rest() -> None:  # first runs when the purge yields, after its first chunk
        for i in range(10, 30):
            c.discard(f"k{i}")

    other = asyncio.create_task(remove_the_rest())
    dropped = await c.discard_where(lambda item: True, chunk=10)
    await other
    assert dropped == 10
    assert len(c) == 0


# --- metrics -------------------------------------------------------------------------------


def test_hits_and_misses_are_counted_under_the_cache_name() -> None:
    c = cache()
    c.put("k", Item("k", later()))
    c.get("k")
    c.get("k")
    c.get("missing")
    assert metric("gateway_token_cache_total", cache=c.name, result="hit") == 2
    assert metric("gateway_token_cache_total", cache=c.name, result="miss") == 1


@pytest.mark.parametrize("maxsize", [1, 2, 5])
def test_never_more_entries_than_maxsize(maxsize: int) -> None:
    c = cache(maxsize=maxsize)
    for i in range(20):
        c.put(f"k{i}", Item(str(i), later()))
        assert len(c) <= maxsize
    assert keys(c) == [f"k{i}" for i in range(20 - maxsize, 20)]


# --- a second name shared by several keys ----------------------------------------
# the verified-token cache keys a token by the hash of its exact bytes and files it under its
# fingerprint too, which twins of one signed token share


@dataclass(frozen=True)
class Token:
    fingerprint: str
    until: float


def token_cache(maxsize: int = 100) -> ExpiringCache[Token]:
    return ExpiringCache(f"test_cache_{next(_names)}", maxsize, lambda t: t.until, lambda t: t.fingerprint)


def test_discard_by_identity_drops_the_entry_filed_under_it() -> None:
    c = token_cache()
    c.put("exact-1", Token("fp-1", later()))
    c.put("exact-2", Token("fp-2", later()))
    c.put("fp-3", Token("fp-3", later()))  # an opaque token: key and identity coincide
    c.discard("fp-1")
    assert c.get("exact-1") is None and c.get("exact-2") is not None
    c.discard("fp-3")
    assert c.get("fp-3") is None
    c.discard("exact-2")  # by key, as before
    assert len(c) == 0 and c._keys_by_identity == {}


def test_get_never_answers_by_identity() -> None:
    c = token_cache()
    c.put("exact-1", Token("fp-1", later()))
    assert c.get("fp-1") is None  # a forged token shares the fingerprint, never the exact bytes


def test_one_entry_per_identity() -> None:
    c = token_cache()
    first, twin = Token("fp", later()), Token("fp", later())
    c.put("exact-1", first)
    c.put("exact-2", twin)
    assert c.get("exact-1") is None and c.get("exact-2") is twin
    c.put("exact-2", twin)  # put again under the same key: still filed
    c.discard("fp")
    assert len(c) == 0 and c._keys_by_identity == {}


async def test_the_identity_index_never_outgrows_the_cache() -> None:
    c = token_cache(maxsize=10)
    short = later(0.05)
    for n in range(50):  # LRU eviction
        c.put(f"exact-{n}", Token(f"fp-{n}", later()))
    assert len(c) == 10 and len(c._keys_by_identity) == 10
    assert c.get("exact-0") is None
    c.discard("fp-0")  # long gone: nothing to do, and fp-49 stays
    assert c.get("exact-49") is not None
    for n in range(5):  # expiry
        c.put(f"brief-{n}", Token(f"bfp-{n}", short))
    await until_past(short)
    c.put("after", Token("fp-after", later()))
    assert all(not k.startswith("bfp-") for k in c._keys_by_identity)
    dropped = await c.discard_where(lambda t: t.fingerprint.startswith("fp-4"))
    assert dropped == 5  # fp-45 .. fp-49: the brief ones pushed fp-40 .. fp-44 out
    assert list(c._keys_by_identity) == ["fp-after"]
    c.clear()
    assert c._keys_by_identity == {}
