"""Rates (``10/s``, ``1000/m``...) and the bounds that keep GCRA's numbers exact; parsed offline (config)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

US = 1_000_000  # microseconds per second: every GCRA time is a whole number of them
MAX_COUNT = 1_000_000_000
_MAX_PERIOD = 366 * 86400  # a year: longer windows are quotas for a billing system, not a gateway
MAX_TOLERANCE_US = 366 * 86400 * US  # burst * T: keeps every number exact in a double (Lua's only number)
_UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}
_RATE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*/[ \t]*([0-9]{0,8})[ \t]*([a-z]{1,7})[ \t]*")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds."""

    count: int
    period: int

    @property
    def interval_us(self) -> int:
        """T, the emission interval, in whole microseconds (at least 1)."""
        return max(1, round(self.period * US / self.count))

    def __str__(self) -> str:
        return f"{self.count}/{self.period}s"


def parse_rate(text: Any) -> Rate:
    """``10/s``, ``1000/m``, ``5000/h``, ``100000/d``, also ``100/10s`` or ``30/15m``."""
    if not isinstance(text, str):
        raise ValueError("a rate is a string like 10/s, 1000/m, 5000/h or 100000/d")
    match = _RATE.fullmatch(text.lower())
    if match is None or match.group(3) not in _UNITS:
        raise ValueError(f"{text[:40]!r} is not a rate like 10/s, 1000/m, 5000/h or 100000/d")
    count, multiplier = int(match.group(1)), int(match.group(2) or "1")
    period = multiplier * _UNITS[match.group(3)]
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"the count of a rate must be between 1 and {MAX_COUNT}")
    if not 1 <= period <= _MAX_PERIOD:
        raise ValueError("the window of a rate must be between 1 second and 366 days")
    if count > period * US:
        raise ValueError("a rate above one request per microsecond cannot be enforced")
    return Rate(count, period)

