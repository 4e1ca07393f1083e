"""Revocation stores: where the list lives and how the local copy stays current.

``MemoryStore`` keeps the list in this process only (a single instance, the demo).
``RedisStore`` (redis_store.py) shares it between replicas through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace

from .. import metrics
from ..config import RevocationConfig
from ..reasons import Reason
from ..tokens.token import ValidatedToken
from .entries import Entry, RevocationList

Listener = Callable[[Entry], object]  # what it returns is ignored


class RevocationStore:
    """The in-memory list plus the hooks every store offers; the base of the Redis store."""

    def __init__(self, family_claim: str = "sid") -> None:
        self.list = RevocationList(family_claim)
        self._listeners: list[Listener] = []

    @property
    def ready(self) -> bool:
        return True

    def on_revoke(self, listener: Listener) -> None:
        """Call ``listener`` for every entry applied locally (e.g. to drop cached tokens)."""
        self._listeners.append(listener)

    def apply(self, entry: Entry) -> None:
        self.list.add(entry)
        metrics.REVOCATION_ENTRIES.set(len(self.list))
        for listener in self._listeners:
            listener(entry)

    def check(self, token: ValidatedToken) -> Reason | None:
        """The revocation reason for this token; REVOCATION_UNAVAILABLE when the copy is too stale."""
        return self.list.check(token)

    async def revoke(self, entry: Entry) -> None:
        """Revoke in this process (subclasses also persist and notify the other replicas)."""
        if not entry.created_at:
            entry = replace(entry, created_at=time.time())
        self.apply(entry)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class MemoryStore(RevocationStore):
    """A list for a single instance; revocations are lost on restart.

    Expired entries stop matching at once; a background sweep also frees their memory.
    """

    def __init__(self, family_claim: str = "sid", sweep_interval: float = 30.0) -> None:
        super().__init__(family_claim)
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="revocation-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            if await self.list.sweep_gradually():
                metrics.REVOCATION_ENTRIES.set(len(self.list))


def build_store(config: RevocationConfig) -> RevocationStore:
    """The store the configuration asks for: Redis when a URL or Sentinel is given, else memory."""
    if config.redis_url is None and config.sentinel is None:
        return MemoryStore(config.family_claim, config.resync_interval)
    from .redis_store import RedisStore  # redis is only imported when it is used

    return RedisStore(config)
