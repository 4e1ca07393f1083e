"""Single flight: concurrent callers asking for the same key share one task (per request, on a miss).

The work runs in a task of its own, not in the caller's coroutine, so a caller that goes away
does not cancel it for the others; its outcome is retrieved even when every caller went away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The tasks in flight, by key."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}

    def get(self, key: str) -> asyncio.Task[T] | None:
        """The task in flight for ``key``, if any."""
        return self._tasks.get(key)

    def start(self, key: str, work: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``work`` as the task for ``key``; it leaves the table when it is done."""
        task = self._tasks[key] = asyncio.create_task(work, name=name)
        task.add_done_callback(lambda done: self._settled(key, done))
        return task

    def tasks(self) -> list[asyncio.Task[T]]:
        """Every task in flight (to cancel them on stop)."""
        return list(self._tasks.values())

    def _settled(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter went away
