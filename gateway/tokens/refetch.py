"""What bounds the fetches a stranger's token can cause: a refetch budget and a memory of recent misses.

Used per request by the JWKS cache (an unknown ``kid``) and by templated issuers (a new tenant).
"""

from __future__ import annotations

import time
from collections import OrderedDict


class RefetchBudget:
    """A token bucket: ``burst`` refetches at once, one more earned per ``interval`` seconds."""

    def __init__(self, burst: int, interval: float) -> None:
        self._burst = float(burst)
        self._interval = interval
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self) -> bool:
        """Spend one refetch; False (nothing spent) while the bucket is empty."""
        now = time.monotonic()
        if self._interval > 0:
            self._tokens = min(self._burst, self._tokens + (now - self._updated) / self._interval)
        else:
            self._tokens = self._burst
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class RecentMisses:
    """Names a fetch just failed to find, refused without another fetch for ``interval`` seconds.

    At most ``limit`` names are remembered (the oldest forgotten first), so a flood of made-up
    names costs memory no more than it costs the issuer fetches.
    """

    def __init__(self, interval: float, limit: int) -> None:
        self._interval = interval
        self._limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()  # name -> refused without a fetch until

    def __contains__(self, name: str) -> bool:
        until = self._until.get(name)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._until[name]
        return False

    def add(self, name: str) -> None:
        """Remember ``name`` as missing for the next ``interval`` seconds."""
        self._until[name] = time.monotonic() + self._interval
        self._until.move_to_end(name)
        while len(self._until) > self._limit:
            self._until.popitem(last=False)
