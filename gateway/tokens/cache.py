"""Bounded caches keyed by token fingerprint whose entries never outlive the token."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import TLRUCache

from .. import metrics

V = TypeVar("V")


class ExpiringCache(Generic[V]):
    """An LRU cache where each entry carries its own deadline (wall-clock seconds).

    Keys are SHA-256 fingerprints, never raw tokens, so a memory dump of the cache does
    not hand anyone a usable token.
    """

    def __init__(self, name: str, maxsize: int, deadline: Callable[[V], float]) -> None:
        self.name = name
        self._enabled = maxsize > 0
        self._cache: TLRUCache[str, V] = TLRUCache(
            maxsize=max(maxsize, 1), ttu=lambda _key, value, _now: deadline(value), timer=time.time
        )
        self._hit = metrics.TOKEN_CACHE.labels(name, "hit")
        self._miss = metrics.TOKEN_CACHE.labels(name, "miss")

    def get(self, key: str) -> V | None:
        value = self._cache.get(key) if self._enabled else None
        (self._miss if value is None else self._hit).inc()
        return value

    def put(self, key: str, value: V) -> None:
        if self._enabled:
            self._cache[key] = value  # cachetools drops it at once when its deadline has passed

    def discard(self, key: str) -> None:
        self._cache.pop(key, None)

    def discard_where(self, predicate: Callable[[V], bool]) -> int:
        """Drop every entry matching ``predicate`` (a revocation of a family, subject or client)."""
        doomed = [key for key, value in list(self._cache.items()) if predicate(value)]
        for key in doomed:
            self._cache.pop(key, None)
        return len(doomed)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
