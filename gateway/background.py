"""Background tasks: the one way a component stops the task it started."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task still running and wait until it has finished.

    A task's own failure was already reported where it happened (its done callback or its log
    line), so shutting down never raises it a second time.
    """
    running = [task for task in tasks if task is not None and not task.done()]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
