"""Bounded caches keyed by token hash whose entries never outlive the token."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from .. import metrics

V = TypeVar("V")


class ExpiringCache(Generic[V]):
    """An LRU cache where each entry carries its own deadline (wall-clock seconds).

    Keys are SHA-256 hashes, never raw tokens, so a memory dump of the cache does not hand
    anyone a usable token.

    With ``identity``, entries are also found by a second name that several keys may share
    (the fingerprint of a token, where the key is the hash of its exact bytes): ``discard``
    of that name drops the entry, and at most one entry per identity is kept (a later key
    replaces the earlier one). ``get`` only ever looks up keys.

    It behaves like cachetools' ``TLRUCache`` (expired entries are dropped first, then the
    least recently used) with a lookup of one dict access and one clock read: ``get``
    runs on every request that carries a token.
    """

    def __init__(
        self, name: str, maxsize: int, deadline: Callable[[V], float], identity: Callable[[V], str] | None = None,
    ) -> None:
        self.name = name
        self._enabled = maxsize > 0
        self._maxsize = max(maxsize, 1)
        self._deadline = deadline
        self._entries: OrderedDict[str, tuple[V, float]] = OrderedDict()  # least recently used first
        self._expiries: list[tuple[float, str]] = []  # a heap of (deadline, key); stale pairs are skipped
        self._identity = identity
        self._keys_by_identity: dict[str, str] = {}  # only for entries whose identity differs from the key
        # counted on the request path, folded into prometheus-client by metrics.fold
        self._hit = metrics.pending(metrics.TOKEN_CACHE, name, "hit")
        self._miss = metrics.pending(metrics.TOKEN_CACHE, name, "miss")

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is not None:
            if time.time() < entry[1]:
                self._entries.move_to_end(key)
                self._hit.count += 1
                return entry[0]
            self._remove(key)
        self._miss.count += 1
        return None

    def put(self, key: str, value: V) -> None:
        if not self._enabled:
            return
        now = time.time()
        self._expire(now)
        expires = self._deadline(value)
        entries = self._entries
        if not now < expires:  # its deadline has passed: never stored, and an older entry goes too
            self._remove(key)
            return
        if key in entries:
            self._remove(key)  # its identity may differ from the new value's
        self._alias(key, value)
        entries[key] = (value, expires)
        heapq.heappush(self._expiries, (expires, key))
        while len(entries) > self._maxsize:
            self._remove(next(iter(entries)))
        if len(self._expiries) > 2 * len(entries) + 1024:  # too many stale pairs: rebuild the heap
            self._expiries = [(deadline, k) for k, (_, deadline) in entries.items()]
            heapq.heapify(self._expiries)

    def _expire(self, now: float) -> None:
        expiries, entries = self._expiries, self._entries
        while expiries and not now < expiries[0][0]:
            deadline, key = heapq.heappop(expiries)
            entry = entries.get(key)
            if entry is not None and entry[1] == deadline:
                self._remove(key)

    def _alias(self, key: str, value: V) -> None:
        """File ``key`` under the value's identity, dropping the entry filed there before."""
        if self._identity is None:
            return
        identity = self._identity(value)
        if identity == key:
            return
        previous = self._keys_by_identity.get(identity)
        if previous is not None and previous != key:
            self._remove(previous)
        self._keys_by_identity[identity] = key

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and self._identity is not None:
            identity = self._identity(entry[0])
            if self._keys_by_identity.get(identity) == key:
                del self._keys_by_identity[identity]

    def discard(self, key: str) -> None:
        """Drop the entry under ``key``, and the one whose identity is ``key``."""
        self._remove(key)
        aliased = self._keys_by_identity.get(key)
        if aliased is not None:
            self._remove(aliased)

    async def discard_where(self, predicate: Callable[[V], bool], chunk: int = 2000) -> int:
        """Drop every entry matching ``predicate`` (a revocation of a family, subject or client).

        Checked ``chunk`` entries at a time, yielding to the event loop in between, so a purge
        of a large cache never stalls the requests being served meanwhile.
        """
        keys = list(self._entries)
        dropped = 0
        for start in range(0, len(keys), chunk):
            for key in keys[start : start + chunk]:
                entry = self._entries.get(key)
                if entry is not None and predicate(entry[0]):
                    self._remove(key)
                    dropped += 1
            await asyncio.sleep(0)
        return dropped

    def clear(self) -> None:
        self._entries.clear()
        self._expiries.clear()
        self._keys_by_identity.clear()

    def __len__(self) -> int:
        return len(self._entries)
