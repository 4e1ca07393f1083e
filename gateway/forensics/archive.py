"""An audit archive as inputs: files, directories, globs and standard input, plain or gzip,
and which of them a ``--since``/``--until`` window lets the scan skip without reading.

Names are expanded in order: a directory gives its regular files (recursively, sorted, dot
files left out), a pattern with ``*``, ``?`` or ``[`` that names no file gives its matches
(sorted, ``**`` recursive), ``-`` is standard input. The same file reached twice is read
once. Compression is told by the magic bytes, not the name.

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

import glob
import importlib
import io
import itertools
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from .envelope import Envelope
from .times import canonical_ts, parse_time, ts_time

Warn = Callable[[str], None]

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE = 16 * 2**20  # a line longer than this is garbage: dropped (as gateway.audit.query does)
READ = 2**20  # compressed bytes read at a time
INFLATE = 4 * 2**20  # most decompressed bytes produced by one call (a gzip bomb stays bounded)
SAMPLES = 9  # lines whose ts is read to tell a plain file's span
SAMPLE_READ = 64 * 1024  # bytes read around each sample point
DEFAULT_SLACK = 3600.0


# --- gzip ------------------------------------------------------------------------------------


def _backend() -> tuple[str, Any]:
    """The fastest zlib-compatible inflater installed: python-isal, zlib-ng, else zlib.
    ``GATEWAY_GZIP_BACKEND=zlib`` (or ``isal``, ``zlib-ng``) picks one (for benchmarks)."""
    wanted = os.environ.get("GATEWAY_GZIP_BACKEND", "")
    choices = (("isal", "isal.isal_zlib"), ("zlib-ng", "zlib_ng.zlib_ng"), ("zlib", "zlib"))
    for name, module in choices:
        if wanted and name != wanted:
            continue
        try:
            return name, importlib.import_module(module)
        except ImportError:
            continue
    return "zlib", importlib.import_module("zlib")


GZIP_BACKEND, _ZLIB = _backend()


class Corrupt(Exception):
    """Compressed data that ends early or is not valid: what came before it was read."""


def gunzip(raw: IO[bytes]) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (every member of a concatenation), a bounded
    piece at a time. Raises ``Corrupt`` after the last good bytes."""
    read = getattr(raw, "read1", raw.read)
    inflater = _ZLIB.decompressobj(31)
    data = read(READ)
    while data:
        try:
            out = inflater.decompress(data, INFLATE)
        except _ZLIB.error as exc:
            raise Corrupt(str(exc)) from None
        if out:
            yield out
        data = inflater.unconsumed_tail
        if inflater.eof:  # one member ended: another may follow (``cat a.gz b.gz``)
            rest = inflater.unused_data + (data or b"")
            data = rest or read(READ)
            if not data:
                return
            if data[:2] != GZIP_MAGIC:
                if not data.strip(b"\0"):
                    return  # zero padding after the last member (tape blocks): not data
                raise Corrupt("data after the last gzip member is not gzip")
            inflater = _ZLIB.decompressobj(31)
        elif not data:
            data = read(READ)
    if not inflater.eof:
        raise Corrupt("compressed data ends early")


def raw_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """Plain bytes of a stream, a bounded piece at a time (what is there: a pipe is not waited on)."""
    read1 = getattr(raw, "read1", raw.read)
    while chunk := read1(READ):
        yield chunk


def chunks(reader: io.BufferedReader) -> Iterator[bytes]:
    """The bytes of a stream, inflated when it starts with the gzip magic bytes."""
    return gunzip(reader) if reader.peek(2)[:2] == GZIP_MAGIC else raw_chunks(reader)


def line_blocks(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """(offset, block): blocks of whole lines (each ending with a newline), ``offset`` the
    place of the block's first byte in the stream. A line longer than ``MAX_LINE`` is dropped
    whole (offsets still count its bytes), so no input makes memory grow past it."""
    offset = 0  # stream offset of rest[0]
    rest = b""
    dropping = False  # inside a line too long to keep
    for chunk in chunks:
        if dropping:
            cut = chunk.find(b"\n")
            if cut == -1:
                offset += len(chunk)
                continue
            offset += cut + 1
            chunk = chunk[cut + 1:]
            dropping = False
        data = rest + chunk if rest else chunk
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) > MAX_LINE:
                offset += len(data)
                rest, dropping = b"", True
            else:
                rest = data
            continue
        yield offset, data[:end] if end != len(data) else data
        offset += end
        rest = data[end:]
        if len(rest) > MAX_LINE:
            offset += len(rest)
            rest, dropping = b"", True
    if rest and not dropping:
        yield offset, rest + b"\n"


# --- inputs ----------------------------------------------------------------------------------


@dataclass
class Input:
    """One input of the scan, in the order given."""

    index: int
    name: str  # as the user wrote it or as expanded
    stream: bool  # standard input, a pipe, a device: read once, in order, never seeked
    gzip: bool = False
    size: int = 0


def expand(names: Sequence[str], warn: Warn) -> list[Input]:
    """The inputs named, expanded (directories, globs), each file once; ``[]`` is stdin."""
    found: list[Input] = []
    seen: set[tuple[int, int]] = set()
    stdin_seen = False
    for name in names or ["-"]:
        if name == "-":
            if not stdin_seen:
                found.append(Input(len(found), "-", stream=True))
            stdin_seen = True
            continue
        paths = _paths(name, warn)
        for path in paths:
            item = _describe(path, warn)
            if item is None:
                continue
            key, stream, size = item
            if key in seen or (stream and paths != [name]):
                continue  # a pipe or device found in a directory or by a glob would be waited on forever
            seen.add(key)
            found.append(Input(len(found), path, stream=stream, size=size, gzip=not stream and _is_gzip(path)))
    return found


def _paths(name: str, warn: Warn) -> list[str]:
    if os.path.isdir(name):
        return sorted(_walk(name))
    if os.path.lexists(name) or not glob.has_magic(name):
        return [name]
    matches = sorted(p for p in glob.glob(name, recursive=True) if not os.path.isdir(p))
    if not matches:
        warn(f"warning: {name}: no file matches")
    return matches


def _walk(top: str) -> Iterator[str]:
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            if not file.startswith("."):
                yield os.path.join(root, file)


def _describe(path: str, warn: Warn) -> tuple[tuple[int, int], bool, int] | None:
    try:
        info = os.stat(path)
    except OSError as exc:
        warn(f"warning: {path}: cannot read: {exc.strerror}")
        return None
    if stat.S_ISDIR(info.st_mode):
        return None
    return (info.st_dev, info.st_ino), not stat.S_ISREG(info.st_mode), info.st_size


def _is_gzip(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(2) == GZIP_MAGIC
    except OSError:
        return False


class _Tee(io.RawIOBase):
    """A stream copied to a spool file as it is read (for a second look at standard input)."""

    def __init__(self, source: IO[bytes], spool: IO[bytes] | None, owned: bool) -> None:
        self.source, self.spool, self.owned = source, spool, owned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        read1 = getattr(self.source, "read1", self.source.read)
        data = read1(len(buffer))
        if data and self.spool is not None:
            self.spool.write(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.owned and not self.closed:
            self.source.close()
        super().close()


def open_stream(item: Input, spool: IO[bytes] | None = None) -> io.BufferedReader:
    """The raw bytes of a stream input (stdin or a pipe), copied to ``spool`` when given.
    Closing it closes the pipe, never standard input."""
    stdin = item.name == "-"
    source: IO[bytes] = sys.stdin.buffer if stdin else open(item.name, "rb")  # noqa: SIM115
    return io.BufferedReader(_Tee(source, spool, owned=not stdin), READ)


def is_gzip(path: str) -> bool:
    """Whether a file starts with the gzip magic bytes."""
    return _is_gzip(path)


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
        return cls(parse_time(since) if since else None, parse_time(until) if until else None,
                   timedelta(seconds=slack))

    @property
    def open(self) -> bool:
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

