"""The in-memory revocation store: the list of a single instance (the demo); revocations are lost on restart."""

from __future__ import annotations

import asyncio

from .. import metrics
from ..background import cancel_and_wait
from ..reasons import Reason
from ..tokens.token import ValidatedToken
from .entries import Entry
from .local_copy import LocalCopy, stamped
from .store import RevocationStore


class MemoryStore(LocalCopy, RevocationStore):
    """A list for a single instance; revocations are lost on restart.

    Expired entries stop matching at once; a background sweep also frees their memory.
    """

    def __init__(self, family_claim: str = "sid", sweep_interval: float = 30.0) -> None:
        super().__init__(family_claim)
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Always: nothing to load."""
        return True

    def check(self, token: ValidatedToken) -> Reason | None:
        """The revocation reason for this token, or None."""
        return self.list.check(token)

    async def revoke(self, entry: Entry) -> None:
        """Revoke in this process: the only one that checks this list."""
        self.apply(stamped(entry))

    async def start(self) -> None:
        """Start the sweep of expired entries."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="revocation-sweep")

    async def stop(self) -> None:
        """Stop the sweep."""
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            if await self.list.sweep_gradually():
                metrics.REVOCATION_ENTRIES.set(len(self.list))
