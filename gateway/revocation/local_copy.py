"""The local copy of the revocation list and its listeners: the part every store shares (per request and background)."""

from __future__ import annotations

import time
from dataclasses import replace

from .. import metrics
from .entries import Entry, RevocationList
from .store import Listener


class LocalCopy:
    """Mixed into a store: the list checked per request, and who hears of each entry applied to it."""

    def __init__(self, family_claim: str = "sid") -> None:
        self.list = RevocationList(family_claim)
        self._listeners: list[Listener] = []

    def on_revoke(self, listener: Listener) -> None:
        """Call ``listener`` for every entry applied locally (e.g. to drop cached tokens)."""
        self._listeners.append(listener)

    def apply(self, entry: Entry) -> None:
        """Add ``entry`` to the local copy, update the entries gauge and tell the listeners."""
        self.list.add(entry)
        metrics.REVOCATION_ENTRIES.set(len(self.list))
        for listener in self._listeners:
            listener(entry)


def stamped(entry: Entry) -> Entry:
    """``entry`` with its creation time: now, when the caller gave none."""
    return entry if entry.created_at else replace(entry, created_at=time.time())
