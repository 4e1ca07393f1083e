"""Times of audit records and of ``--since``/``--until``, as ``gateway audit`` reads them.

The rules ``gateway.forensics.query`` uses (kept here so that the scanning engine imports
nothing but the standard library, orjson and ``gateway.durations``: ``gateway audit`` starts
in a tenth of a second); ``tests/test_audit_scan.py`` holds the two to the same answers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ..durations import parse_duration


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time (``2024-05-01T12:00:00Z``, a date alone means midnight UTC) or a
    relative one meaning "that long ago" (``90s``, ``30m``, ``2h``, ``7d``, ``1w``)."""
    try:
        ago = parse_duration(value, unit_required=True)
    except ValueError:
        pass
    else:
        return (now or datetime.now(UTC)) - timedelta(seconds=ago)
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
