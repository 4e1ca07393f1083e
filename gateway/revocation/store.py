"""The revocation store interface: what the decision, the server and the admin endpoints need from a store.

Implementations: ``MemoryStore`` (memory_store.py, one process) and ``RedisStore``
(redis_store.py, shared by the replicas); ``store_factory.build_store`` picks one from the config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from ..reasons import Reason
from ..tokens.token import ValidatedToken
from .entries import Entry, RevocationList

Listener = Callable[[Entry], object]  # what it returns is ignored


class RevocationStore(ABC):
    """Where the revocation list lives, and this process's local copy of it (``list``).

    The per-request check reads the local copy only; a store keeps that copy current and
    writes a revocation where every replica sees it.
    """

    list: RevocationList

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether the local copy may be enforced now (the readiness probe's ``revocation_synced``)."""

    @abstractmethod
    def on_revoke(self, listener: Listener) -> None:
        """Call ``listener`` for every entry applied locally (e.g. to drop cached tokens)."""

    @abstractmethod
    def apply(self, entry: Entry) -> None:
        """Add ``entry`` to the local copy and tell the listeners."""

    @abstractmethod
    def check(self, token: ValidatedToken) -> Reason | None:
        """The revocation reason for this token; REVOCATION_UNAVAILABLE when the copy may be too stale."""

    @abstractmethod
    async def revoke(self, entry: Entry) -> None:
        """Enforce ``entry`` here at once and make it reach every replica (RevocationWriteError if it cannot)."""

    @abstractmethod
    async def start(self) -> None:
        """Load the list and start keeping the local copy current (background tasks)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop the background tasks and close connections."""
