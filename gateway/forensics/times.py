"""Times of audit records and of ``--since``/``--until``, as ``gateway audit`` reads them.

The same rules as ``gateway.audit.query`` (kept here so that the scanning engine imports
nothing but the standard library and orjson: ``gateway audit`` starts in a tenth of a
second); ``tests/test_audit_scan.py`` holds the two to the same answers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_RELATIVE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time (``2024-05-01T12:00:00Z``, a date alone means midnight UTC) or a
    relative one meaning "that long ago" (``90s``, ``30m``, ``2h``, ``7d``, ``1w``)."""
    match = _RELATIVE.match(value)
    if match:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=float(match.group(1)) * _RELATIVE_UNITS[match.group(2)])
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an RFC 3339 time (2024-05-01T12:00:00Z) or a relative one (2h, 30m, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def ts_text(moment: datetime) -> str:
    """The form audit records use for ``ts`` (UTC, milliseconds, ``Z``): comparable as text."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical_ts(ts: Any) -> str | None:
    """``ts`` in the canonical form (records from this gateway already are); None when it is
    not a time."""
    if not isinstance(ts, str):
        return None
    if len(ts) == 24 and ts[-1] == "Z" and ts[10] == "T":
        return ts
    try:
        return ts_text(parse_time(ts))
    except ValueError:
        return None


def ts_time(ts: str) -> datetime:
    """A canonical ``ts`` text as a time."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))
