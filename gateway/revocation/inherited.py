"""A revocation list a forked worker inherits from its supervising parent (workers.py), in memory.

The parent loads the signed snapshot once (revocation/preload.py) and hands the copy down
before it forks its first workers: each adopts it (``take``, in its store's constructor) and
starts from it as from a snapshot it had read itself (snapshot_sync.py). Then the parent drops
its reference, so a worker forked later (a restart) loads the list as ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .entries import RevocationList
    from .snapshot import Meta


@dataclass(frozen=True)
class Inherited:
    """The list as the snapshot of ``key`` held it (``loaded`` live entries), and the snapshot's meta."""

    key: str
    list: RevocationList
    meta: Meta
    loaded: int


# set by the parent around its first forks only; a fork copies it, and its child takes it once
_handed_down: list[Inherited] = []


def hand_down(copy: Inherited | None) -> None:
    """What the workers forked from now on inherit (None: nothing, and the parent's copy is released)."""
    _handed_down[:] = [copy] if copy is not None else []


def take(key: str, family_claim: str) -> Inherited | None:
    """The handed-down copy of the snapshot of ``key``, once; None when there is none for this list."""
    if not _handed_down:
        return None
    copy = _handed_down[0]
    if copy.key != key or copy.list.family_claim != family_claim:
        return None
    _handed_down.clear()
    return copy
