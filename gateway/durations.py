"""Durations as people write them (``250ms``, ``30s``, ``5m``, ``1h``, ``2d``, ``1w``) -> seconds.

The one parser of the configuration, ``gateway audit --since`` and the CI checks; offline and at
load, never per request. Standard library only: ``gateway audit`` imports it and starts fast.
"""

from __future__ import annotations

import re
from typing import Any

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: Any, *, unit_required: bool = False) -> float:
    """``30s``, ``5m``, ``250ms``, ``1h``, ``2d``, ``1w`` or a number of seconds -> seconds.

    ``unit_required``: a bare number is refused (``--since 5`` is more likely a typo than 5 seconds).
    ValueError names the value otherwise.
    """
    if isinstance(value, bool):
        raise ValueError("a duration like 30s, 5m or 1h is expected")
    if isinstance(value, int | float) and not unit_required:
        return float(value)
    match = _DURATION.match(str(value))
    if not match or (unit_required and match.group(2) is None):
        raise ValueError(f"{value!r} is not a duration like 30s, 5m or 1h")
    return float(match.group(1)) * (UNITS[match.group(2)] if match.group(2) else 1.0)
