"""``gateway audit --format table`` laid out for the terminal it is printed on (offline).

Piped or redirected, the table has its full width (every column, the widths of
``query._TABLE``), the same whatever the terminal. On a terminal narrower than that, the
columns that matter most for reading a trail (time, status, path, reason, client IP,
subject...) are kept at a readable width, the others are left out, and any width to spare
goes to the reason and the path first. A value longer than its column is cut with "…"; a time is cut to
the second (``2024-05-01T09:12:44``), not mid-number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from .query import _TABLE, Record, cell, visible

GAP = 2  # spaces between columns


@dataclass(frozen=True)
class Column:
    header: str
    field: str
    width: int


# field -> (readable width, smallest width); in the order columns are given up last to first
_PRIORITY: dict[str, tuple[int, int]] = {
    "ts": (19, 19), "status": (6, 6), "path": (14, 10), "reason": (18, 14),  # always shown
    "client_ip": (15, 15), "sub": (10, 8), "method": (6, 6), "route": (12, 8), "jti": (12, 8),
    "token_fingerprint": (12, 8), "binding": (7, 7), "key_thumbprint": (12, 8),
}
_ALWAYS = 4  # the first four: time, status, path and reason
_GROW = ("reason", "path", "ts", "sub", "route", "jti", "client_ip")  # who gets spare width first
_SECONDS = 19  # 2024-05-01T09:12:44: an RFC 3339 time to the second


def layout(width: int | None) -> list[Column]:
    """The columns and their widths for a terminal ``width`` characters wide (None: full width)."""
    full = [Column(header, field, size) for header, field, size in _TABLE]
    if width is None or _total(full) <= width:
        return full
    chosen = list(_PRIORITY)[:_ALWAYS]
    readable = {field: sizes[0] for field, sizes in _PRIORITY.items()}
    widths = dict(readable) if _total_of(chosen, readable) <= width else {f: s[1] for f, s in _PRIORITY.items()}
    for field in list(_PRIORITY)[_ALWAYS:]:
        if _total_of([*chosen, field], readable) > width:
            break
        chosen.append(field)
    spare = width - _total_of(chosen, widths)
    limits = {c.field: c.width for c in full}
    for field in _GROW:
        if field in chosen and spare > 0:
            grow = min(spare, limits[field] - widths[field])
            widths[field] += max(grow, 0)
            spare -= max(grow, 0)
    return [Column(c.header, c.field, widths[c.field]) for c in full if c.field in chosen]


def _total(columns: list[Column]) -> int:
    return sum(c.width for c in columns) + GAP * (len(columns) - 1)


def _total_of(fields: list[str], widths: dict[str, int]) -> int:
    return sum(widths[f] for f in fields) + GAP * (len(fields) - 1)


def fit(text: str, width: int, field: str = "") -> str:
    """``text`` made visible (control characters escaped) and cut to ``width`` characters."""
    text = visible(text)
    if len(text) <= width:
        return text
    if field == "ts" and width >= _SECONDS:
        return text[:_SECONDS]
    return text[: width - 1] + "…"


def header(columns: list[Column]) -> str:
    return (" " * GAP).join(fit(c.header, c.width).ljust(c.width) for c in columns).rstrip()


def row(record: Record, columns: list[Column], width: int | None) -> str:
    """One record; its live-detection flags after it (on a line of their own on a narrow terminal)."""
    line = (" " * GAP).join(fit(cell(record.get(c.field)), c.width, c.field).ljust(c.width) for c in columns)
    line = line.rstrip()
    suspicious = record.get("suspicious")
    if not suspicious:
        return line
    flags = f"SUSPICIOUS: {visible(cell(suspicious))}"
    if width is None or len(line) + GAP + len(flags) <= width:
        return f"{line}{' ' * GAP}{flags}"
    return f"{line}\n{' ' * GAP}{fit(flags, width - GAP)}"


def write_table(records: Iterable[Record], out: IO[str], width: int | None) -> int:
    """Write the table (header, then a line per record) for a terminal ``width`` wide; returns the count."""
    columns = layout(width)
    out.write(header(columns) + "\n")
    count = 0
    for record in records:
        out.write(row(record, columns, width) + "\n")
        count += 1
    return count
