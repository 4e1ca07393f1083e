"""GCRA counters in this process's memory, for a gateway without Redis; checked per request."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .keys import Hit, unique_hits
from .verdict import ALLOWED, Verdict, count_refusals, verdict_of


def gcra(tat_us: int | None, now_us: int, interval_us: int, burst: int) -> tuple[bool, int, int, int, int]:
    """One limit's decision: (allowed, new TAT, remaining, reset_after µs, retry_after µs).

    The same arithmetic as the Lua script; the new TAT is only stored when every limit admits.
    """
    tat = now_us if tat_us is None or tat_us < now_us else tat_us
    new_tat = tat + interval_us
    allow_at = new_tat - interval_us * burst
    diff = now_us - allow_at
    if diff < 0:
        return False, tat, 0, tat - now_us, -diff
    return True, new_tat, diff // interval_us, new_tat - now_us, 0


class LocalLimiter:
    """GCRA in this process's memory: limits hold per process (per worker, per replica).

    At most ``max_keys`` counters are kept; beyond that the least recently used is forgotten
    (its caller starts with a full bucket again), so a flood of distinct callers cannot grow
    memory without bound. A counter whose TAT has passed holds nothing and is dropped first.
    """

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], int] | None = None) -> None:
        self.max_keys = max_keys
        self._clock = clock or (lambda: time.monotonic_ns() // 1000)
        self._tats: OrderedDict[tuple[str, str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    async def check(self, route: str, hits: Sequence[Hit]) -> Verdict:
        """Decide and, when every limit admits, charge the request (the limiter interface)."""
        return self.check_now(route, hits)

    def check_now(self, route: str, hits: Sequence[Hit]) -> Verdict:
        """The decision, synchronously (nothing here waits)."""
        if not hits:
            return ALLOWED
        hits = unique_hits(hits)
        now = self._clock()
        tats = self._tats
        idents = [(h.limit.scope, h.limit.name, h.value) for h in hits]
        decided = [
            gcra(tats.get(ident), now, h.limit.interval_us, h.limit.burst)
            for h, ident in zip(hits, idents, strict=True)
        ]
        verdict = verdict_of([h.limit for h in hits], [(a, r, reset, retry) for a, _, r, reset, retry in decided])
        if verdict.allowed:
            for ident, answer in zip(idents, decided, strict=True):
                tats[ident] = answer[1]
                tats.move_to_end(ident)
            self._evict()
        else:
            count_refusals(route, verdict)
        return verdict

    def _evict(self) -> None:
        # least recently charged first: with every write moved to the end, the front holds the
        # counters idle the longest, which are also the first whose TAT has passed (holding nothing)
        tats = self._tats
        while len(tats) > self.max_keys:
            tats.popitem(last=False)

    async def close(self) -> None:
        """Nothing to release (the limiter interface)."""
        return None
