"""Which inputs a ``--since``/``--until`` window lets the scan skip unread (offline).

Skipping (every rule conservative: a file that might hold a record of the window is read).
``slack`` bounds how far a record's ``ts`` (the start of the request) can be from where it
was written (the end of the request, plus shipping delay): one hour unless told otherwise.

- By name, for any file with a time in its name (``audit-2026-12-05T10.jsonl.gz``,
  ``audit.jsonl-20261205``, ``audit-2026-12-05.log``): whether the time is when the file
  was started (a shipper bucketing by event time) or when it was rotated away (logrotate
  ``dateext``), its records end before that time plus the name's precision (an hour, a
  day) plus slack: older than ``--since``, skipped. Its records start after the previous
  rotation of the same series (same name but for the time): when that is later than
  ``--until``, skipped.
- By first/last records, for a plain file: the ``ts`` of its first and last lines and of
  seven lines between are read (a few small reads); when they are in order (within slack)
  the file is taken as one writer's append-only log, and skipped when that span (widened
  by slack) misses the window. A file whose samples are out of order, or lack a ``ts``,
  is read.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from .envelope import Envelope
from .times import canonical_ts, parse_time, ts_time

if TYPE_CHECKING:
    from .inputs import Input

SAMPLES = 9  # lines whose ts is read to tell a plain file's span
SAMPLE_READ = 64 * 1024  # bytes read around each sample point
DEFAULT_SLACK = 3600.0


# --- times in names --------------------------------------------------------------------------

# 2026-12-05, 20261205, then optionally T10 / _10 / -10, then minutes and seconds
_NAME_TIME = re.compile(
    r"(?<!\d)(?P<y>20\d\d)(?P<s1>-?)(?P<m>[01]\d)(?P=s1)(?P<d>[0-3]\d)"
    r"(?:[T_ .-]?(?P<H>[0-2]\d)(?:[:.-]?(?P<M>[0-5]\d)(?:[:.-]?(?P<S>[0-5]\d))?)?)?(?!\d)"
)


@dataclass(frozen=True)
class NameTime:
    """The time a file name carries, to its precision."""

    start: datetime
    period: timedelta
    series: str  # the path with the time taken out: files of one rotated log share it


def name_time(path: str) -> NameTime | None:
    """The time in a file's name (one time only: a name with two is not guessed at)."""
    base = os.path.basename(path)
    matches = list(_NAME_TIME.finditer(base))
    if len(matches) != 1:
        return None
    match = matches[0]
    try:
        start = datetime(int(match["y"]), int(match["m"]), int(match["d"]), int(match["H"] or 0),
                         int(match["M"] or 0), int(match["S"] or 0), tzinfo=UTC)
    except ValueError:
        return None
    if match["S"]:
        period = timedelta(seconds=1)
    elif match["M"]:
        period = timedelta(minutes=1)
    elif match["H"]:
        period = timedelta(hours=1)
    else:
        period = timedelta(days=1)
    series = base[: match.start()] + "{}" + base[match.end():]
    series = re.sub(r"(\.\d+)?(\.gz)?$", "", series)
    return NameTime(start, period, os.path.join(os.path.dirname(path), series))


# --- the window ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """``--since``/``--until`` as times, and the slack a record's ts may lag where it is."""

    since: datetime | None
    until: datetime | None
    slack: timedelta = timedelta(seconds=DEFAULT_SLACK)

    @classmethod
    def of(cls, since: str | None, until: str | None, slack: float = DEFAULT_SLACK) -> Window:
        """The window of ``--since``/``--until`` texts (times or durations, as ``parse_time`` reads them)."""
        return cls(parse_time(since) if since else None, parse_time(until) if until else None,
                   timedelta(seconds=slack))

    @property
    def open(self) -> bool:
        """No bound on either side: nothing is skipped."""
        return self.since is None and self.until is None

    def misses(self, first: datetime, last: datetime) -> bool:
        """Whether records between ``first`` and ``last`` (widened by slack) are all outside."""
        return bool((self.since is not None and last + self.slack < self.since)
                    or (self.until is not None and first - self.slack > self.until))


def skips(inputs: Sequence[Input], window: Window, envelope: Envelope) -> dict[int, str]:
    """The inputs the window lets the scan leave unread, each with why (index -> reason)."""
    if window.open:
        return {}
    out: dict[int, str] = {}
    named = {item.index: t for item in inputs if not item.stream and (t := name_time(item.name)) is not None}
    previous = _previous_in_series(named)
    for item in inputs:
        if item.stream:
            continue
        when = named.get(item.index)
        if when is not None:
            reason = _skip_by_name(when, previous.get(item.index), window)
            if reason:
                out[item.index] = reason
                continue
        if not item.gzip:
            reason = _skip_by_records(item, window, envelope)
            if reason:
                out[item.index] = reason
    return out


def _previous_in_series(named: dict[int, NameTime]) -> dict[int, datetime]:
    """For each named file, the time of the one before it in its series (the last rotation
    before it was started)."""
    by_series: dict[str, list[tuple[datetime, int]]] = {}
    for index, when in named.items():
        by_series.setdefault(when.series, []).append((when.start, index))
    previous: dict[int, datetime] = {}
    for members in by_series.values():
        members.sort()
        for (before, _), (now, index) in itertools.pairwise(members):
            if before < now:
                previous[index] = before
    return previous


def _skip_by_name(when: NameTime, previous: datetime | None, window: Window) -> str | None:
    if window.since is not None and when.start + when.period + window.slack < window.since:
        return f"name: ends by {when.start + when.period:%Y-%m-%dT%H:%M:%SZ}, before --since"
    if window.until is not None and previous is not None and previous - window.slack > window.until:
        return f"name: starts after {previous:%Y-%m-%dT%H:%M:%SZ}, after --until"
    return None


def _skip_by_records(item: Input, window: Window, envelope: Envelope) -> str | None:
    times = sample_times(item.name, item.size, envelope)
    if times is None or not _in_order(times, window.slack):
        return None
    first, last = min(times), max(times)
    if window.misses(first, last):
        return f"records: from {_fmt(first)} to {_fmt(last)}, outside the window"
    return None


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _in_order(times: list[datetime], slack: timedelta) -> bool:
    rising = all(b >= a - slack for a, b in itertools.pairwise(times))
    falling = all(b <= a + slack for a, b in itertools.pairwise(times))  # logcli: newest first
    return rising or falling


def sample_times(path: str, size: int, envelope: Envelope) -> list[datetime] | None:
    """The ts of the first record, the last record and records evenly between (the first
    with a ts within a few KiB of each point); None when a point has none (not an audit
    file, a whole JSON document, lines too long to sample)."""
    if size == 0:
        return None
    times: list[datetime] = []
    try:
        with open(path, "rb") as file:
            for k in range(SAMPLES):
                moment = _time_near(file, size, k * size // (SAMPLES - 1), envelope)
                if moment is None:
                    return None
                times.append(moment)
    except OSError:
        return None
    return times


def _time_near(file: IO[bytes], size: int, offset: int, envelope: Envelope) -> datetime | None:
    """The ts of the first record whose line starts at or after ``offset``; for ``size``
    (or when no line starts after it), of the last record of the file."""
    if offset < size:
        start = max(0, offset - 1)
        file.seek(start)
        data = file.read(SAMPLE_READ)
        whole = data if start + len(data) == size else data[: data.rfind(b"\n") + 1]
        lines = whole.split(b"\n")
        for line in lines[1:] if start > 0 else lines:  # the first piece began before ``offset``
            moment = _line_time(line, envelope)
            if moment is not None:
                return moment
    start = max(0, size - SAMPLE_READ)
    file.seek(start)
    lines = file.read(size - start).split(b"\n")
    for line in reversed(lines[1:] if start > 0 else lines):
        moment = _line_time(line, envelope)
        if moment is not None:
            return moment
    return None


def _line_time(line: bytes, envelope: Envelope) -> datetime | None:
    if b"audit" not in line:
        return None
    records = envelope.records(line)
    if len(records) != 1:
        return None
    ts = canonical_ts(records[0].get("ts"))
    return ts_time(ts) if ts else None


def in_window(record: dict[str, Any], since: str | None, until: str | None) -> bool:
    """Whether a record's ts is inside ``[since, until]`` (canonical ts texts, as ``Query``)."""
    if since is None and until is None:
        return True
    ts = canonical_ts(record.get("ts"))
    if ts is None:
        return False
    return not ((since is not None and ts < since) or (until is not None and ts > until))
