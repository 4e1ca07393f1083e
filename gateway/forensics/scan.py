"""The scanning engine of ``gateway audit`` / ``gateway incident`` at archive scale.

Given inputs (files, directories, globs, ``-``; plain, rotated and gzip mixed, see
``archive``) and a ``ScanPlan`` (the record filter, the byte strings a matching line must
hold, the time window, the envelope, the fields an incident expands by), it returns the
matching records in input order:

- only lines holding the needles are decoded (``needles``: searched a block at a time
  with StringZilla or ``bytes.find``; the filter's other needles are checked on
  the line before decoding it);
- a large plain file is cut into pieces at line boundaries and the pieces, and the files,
  are scanned by a process pool on every core; a gzip file is one piece, inflated as a
  stream (python-isal or zlib-ng when installed: two times zlib's speed);
- files outside ``--since``/``--until`` are left unread where their names or their
  first/last records allow (``archive.skips``);
- records inside a log shipper's or log store's envelope are unwrapped (``envelope``).

Memory holds the matches, one block per worker and nothing else.

An incident (``collect`` with ``plan.expand``) is one scan: the token's records give keys
(its family, its subject...) as they are found; every worker is told of them through a
small shared board and searches their needles too from then on, so the records of the
token's family and subject are collected in the same pass. The parts of the input scanned
before a key was known are scanned again for that key alone (nothing else); the result
is the same set, in the same order, whatever the timing, the number of workers or the
pieces: the target records, and every other record whose expansion field holds a key.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import IO, Any

import orjson

from . import archive
from .archive import Corrupt, Input, Window
from .envelope import Envelope
from .needles import SEARCH_BACKEND, Finder, Needles, needles_for_query, value_needles

__all__ = [
    "Collected", "Needles", "ScanError", "ScanPlan", "ScanStats", "collect", "needles_for_query", "scan",
    "value_needles",
]

Record = dict[str, Any]
Warn = Callable[[str], None]
Key = tuple[str, str]  # (field, value): a record holding value in field is related
Pos = tuple[int, int, int]  # (input, offset of the line in the input's bytes, record on the line)

BLOCK = 8 * 2**20  # bytes of a plain file searched per step (a worker looks for new keys between steps)
PIECE = 48 * 2**20  # a plain file larger than this is cut into pieces of about this size
PARALLEL_MIN = 16 * 2**20  # less input than this is scanned in this process: a pool costs more
DOCUMENT_MAX = 512 * 2**20  # an input that is one JSON document (a _search response) is read whole up to this
SNIFF = 64 * 1024
BOARD_BYTES = 1 << 20  # keys shared between workers; past this, workers rescan instead (still exact)
_AUDIT = b"audit"  # every record holds it (``"type":"audit"``, escaped or not)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanPlan:
    """What to look for. ``match`` is the record filter (a ``Query``'s ``matches``): with a
    process pool it runs in the workers (inherited by fork; it must pickle where processes
    are spawned). ``needles`` must be implied by ``match`` (a record it accepts holds them),
    ``since``/``until`` (canonical ts texts) by it too when given: they only let files be
    skipped. ``expand``: fields of the matching records whose values are keys of related
    records (``("sid", "sub")`` for an incident)."""

    match: Callable[[Record], bool]
    needles: Needles = field(default_factory=Needles)
    since: str | None = None
    until: str | None = None
    envelope: Envelope = field(default_factory=Envelope.auto)
    expand: tuple[str, ...] = ()
    slack: float = archive.DEFAULT_SLACK
    skip: bool = True  # leave files outside the window unread

    @classmethod
    def for_query(cls, query: Any, envelope: Envelope | None = None, expand: tuple[str, ...] = ()) -> ScanPlan:
        return cls(match=query.matches, needles=needles_for_query(query), since=getattr(query, "since", None),
                   until=getattr(query, "until", None), envelope=envelope or Envelope.auto(), expand=expand)


@dataclass
class ScanStats:
    """What a scan did (for tests, benchmarks and a verbose CLI)."""

    inputs: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, why)
    pieces: int = 0
    bytes: int = 0  # bytes searched (decompressed), rescans included
    rescanned: int = 0  # of which scanned again for keys learned late
    decoded: int = 0  # lines decoded
    workers: int = 1
    backend: str = archive.GZIP_BACKEND
    search: str = SEARCH_BACKEND


@dataclass
class Collected:
    """An incident's records: the target's, then the related ones (both in input order)."""

    records: list[Record]
    related: list[Record]
    keys: set[Key]


# --- pieces and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    input: int
    path: str
    gzip: bool = False
    start: int = 0  # a plain file: the lines starting in [start, end)
    end: int = -1
    document: bool | None = False  # the input is one JSON document, decoded whole (None: look at its start)
    upto: int | None = None  # a rescan: stop at this offset
    keys: frozenset[Key] | None = None  # a rescan: look for records of these keys only


@dataclass
class _Result:
    piece: _Piece
    begin: int = 0  # where the piece's first line starts
    targets: list[tuple[Pos, Record]] = field(default_factory=list)
    related: list[tuple[Pos, Record]] = field(default_factory=list)
    learned: set[Key] = field(default_factory=set)
    coverage: dict[Key, int] = field(default_factory=dict)  # key -> offset from which it was searched
    warnings: list[str] = field(default_factory=list)
    bytes: int = 0
    decoded: int = 0


# --- the board: keys shared between workers --------------------------------------------------


class _Board:
    """Keys learned so far by any worker, as JSON lines in shared memory (only appended to).
    An optimisation: a worker that has not heard of a key has its earlier blocks rescanned."""

    def __init__(self, context: Any = None) -> None:
        if context is None:
            self._data: Any = bytearray(BOARD_BYTES)
            self._size: Any = ctypes.c_long(0)
            self._lock: Any = None
        else:
            self._data = context.RawArray(ctypes.c_char, BOARD_BYTES)
            self._size = context.RawValue(ctypes.c_long, 0)
            self._lock = context.Lock()

    def publish(self, keys: Iterable[Key]) -> None:
        text = b"".join(orjson.dumps(list(k)) + b"\n" for k in keys)
        with ExitStack() as stack:
            if self._lock is not None:
                stack.enter_context(self._lock)
            size = self._size.value
            if size + len(text) > BOARD_BYTES:
                return  # full: the rescan finds what the sharing would have
            self._data[size:size + len(text)] = text
            self._size.value = size + len(text)

    def read(self, offset: int) -> tuple[int, list[Key]]:
        """Keys published since ``offset``, and the offset to read from next time."""
        with ExitStack() as stack:
            if self._lock is not None:
                stack.enter_context(self._lock)
            size = self._size.value
            if size == offset:
                return offset, []
            text = bytes(self._data[offset:size])
        keys = [tuple(orjson.loads(line)) for line in text.splitlines()]
        return size, [(str(k[0]), str(k[1])) for k in keys]


# --- scanning one piece ----------------------------------------------------------------------


class _Scan:
    """The state of one piece being scanned: known keys, coverage, what was found."""

    def __init__(self, plan: ScanPlan, board: _Board | None, piece: _Piece) -> None:
        self.plan = plan
        self.piece = piece
        self.result = _Result(piece)
        self.rescan = piece.keys is not None
        self.board = None if self.rescan else board
        self.known: dict[Key, tuple[bytes, ...]] = {}
        self.fields: set[str] = set()
        self.key_needles: list[bytes] = []
        self.keys_unsearchable = False  # a key with no needle: every line must be decoded
        self.board_offset = 0
        self.line_max = archive.MAX_LINE  # a whole document is one "line" of up to DOCUMENT_MAX
        self.decode_all = not plan.needles.groups and not self.rescan
        if piece.keys is not None:
            self._know(piece.keys, 0)

    # -- keys --

    def _know(self, keys: Iterable[Key], offset: int) -> list[bytes]:
        """Add keys, searched for from ``offset`` on; returns the needles that are new."""
        fresh: list[bytes] = []
        for key in keys:
            if key in self.known:
                continue
            needles = value_needles(key[1])
            self.known[key] = needles
            self.fields.add(key[0])
            self.result.coverage.setdefault(key, offset)
            if not needles:
                self.keys_unsearchable = True
            for needle in needles:
                if needle not in self.key_needles:
                    self.key_needles.append(needle)
                    fresh.append(needle)
        return fresh

    def _poll(self, offset: int) -> None:
        if self.board is not None:
            self.board_offset, keys = self.board.read(self.board_offset)
            if keys:
                self._know(keys, offset)

    # -- a block of whole lines: buf[s:e], buf[0] being at ``base`` in the input --

    def block(self, buf: Any, s: int, e: int, base: int) -> None:
        finder = Finder(buf)
        # a block decodes thousands of dicts, which cannot form cycles: the cyclic collector
        # would only walk them again and again (half the time of a query decoding every line)
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._block(buf, finder, s, e, base)
        finally:
            finder.close()
            if collecting:
                gc.enable()

    def _block(self, buf: Any, finder: Finder, s: int, e: int, base: int) -> None:
        self._poll(base + s)
        self.result.bytes += e - s
        everything = self.decode_all or self.keys_unsearchable
        found: dict[int, list[Record]] = {}
        if everything:
            self._decode_every_line(buf, s, e, found)
        else:
            starts: set[int] = set()
            if not self.rescan:
                for needle in self.plan.needles.groups[0]:
                    self._lines_with(buf, finder, s, e, needle, starts, check=True)
            for needle in self.key_needles:
                self._lines_with(buf, finder, s, e, needle, starts, check=False)
            self._decode(buf, starts, e, found)
        targets, learned = self._targets(found, base)
        if learned:
            fresh = self._know(learned, base + s)
            if self.board is not None:
                self.board.publish(learned)
            if self.keys_unsearchable and not everything:
                self._decode_every_line(buf, s, e, found)
            elif fresh and not everything:
                starts = set()
                for needle in fresh:
                    self._lines_with(buf, finder, s, e, needle, starts, check=False)
                self._decode(buf, starts - found.keys(), e, found)
        self._related(found, targets, base)

    def _lines_with(self, buf: Any, finder: Finder, s: int, e: int, needle: bytes, starts: set[int],
                    check: bool) -> None:
        """Add the start of every line of the block holding ``needle`` (and, with ``check``,
        the plan's other needles)."""
        check = check and len(self.plan.needles.groups) > 1
        pos = finder.find(needle, s, e)
        while pos != -1:
            start = max(buf.rfind(b"\n", s, pos) + 1, s)
            end = buf.find(b"\n", pos, e)
            end = e if end == -1 else end
            if not check or self.plan.needles.admits(buf[start:end]):
                starts.add(start)
            pos = finder.find(needle, end + 1, e) if end + 1 < e else -1

    def _decode(self, buf: Any, starts: Iterable[int], e: int, found: dict[int, list[Record]]) -> None:
        for start in starts:
            end = buf.find(b"\n", start, e)
            end = e if end == -1 else end
            if end - start <= self.line_max:
                found[start] = self._records(buf[start:end])

    def _decode_every_line(self, buf: Any, s: int, e: int, found: dict[int, list[Record]]) -> None:
        offset = s
        for line in buf[s:e].split(b"\n"):
            if line and offset not in found and len(line) <= self.line_max:
                records = self._records(line)
                if records:
                    found[offset] = records
            offset += len(line) + 1

    def _records(self, line: bytes) -> list[Record]:
        if _AUDIT not in line:
            return []
        self.result.decoded += 1
        return self.plan.envelope.records(line)

    def _targets(self, found: dict[int, list[Record]], base: int) -> tuple[set[tuple[int, int]], set[Key]]:
        """The places of the matching records (kept unless rescanning); the keys they give
        that are not known yet."""
        targets: set[tuple[int, int]] = set()
        learned: set[Key] = set()
        match, expand = self.plan.match, self.plan.expand
        for start in sorted(found):
            for i, record in enumerate(found[start]):
                if not match(record):
                    continue
                targets.add((start, i))
                if self.rescan:
                    continue
                self.result.targets.append(((self.piece.input, base + start, i), record))
                for name in expand:
                    value = record.get(name)
                    if type(value) is str and value and (name, value) not in self.known:
                        learned.add((name, value))
        self.result.learned |= learned
        return targets, learned

    def _related(self, found: dict[int, list[Record]], targets: set[tuple[int, int]], base: int) -> None:
        """Keep the records, other than targets, that hold a known key (inside the window)."""
        if not self.known:
            return
        known, fields, plan = self.known, self.fields, self.plan
        for start in sorted(found):
            for i, record in enumerate(found[start]):
                if (start, i) in targets:
                    continue
                if any(type(v := record.get(name)) is str and (name, v) in known for name in fields) \
                        and archive.in_window(record, plan.since, plan.until):
                    self.result.related.append(((self.piece.input, base + start, i), record))


def _run(plan: ScanPlan, board: _Board | None, piece: _Piece) -> _Result:
    scan = _Scan(plan, board, piece)
    try:
        if piece.gzip:
            with open(piece.path, "rb") as raw:
                _stream(scan, archive.gunzip(raw))
        else:
            _plain(scan)
    except Corrupt as exc:
        scan.result.warnings.append(_corrupt(piece.path, exc))
    except OSError as exc:
        scan.result.warnings.append(f"warning: {piece.path}: cannot read: {exc.strerror or exc}")
    return scan.result


def _corrupt(name: str, exc: Exception) -> str:
    return f"warning: {name}: compressed data ends early or is corrupt ({exc}); read what was there"


def _plain(scan: _Scan) -> None:
    """A plain file's piece, read a block of whole lines at a time with ``pread`` (one copy,
    as fast as a memory map here, and a file truncated under the scan, as logrotate's
    ``copytruncate`` does, ends the read instead of killing the process with SIGBUS)."""
    piece = scan.piece
    with open(piece.path, "rb", buffering=0) as file:
        fd = file.fileno()
        size = os.fstat(fd).st_size
        if piece.document:
            _document(scan, os.pread(fd, DOCUMENT_MAX + 1, 0))
            return
        bound = size if piece.end < 0 else min(piece.end, size)
        start = _line_start(fd, piece.start, bound)  # no line starting in the piece: nothing to read
        end = _line_start(fd, bound, size) if start < bound else start
        if piece.upto is not None:
            end = min(end, piece.upto)
        scan.result.begin = start
        buffer = bytearray(BLOCK)  # read into again and again: a fresh 8 MiB per block costs page faults
        while start < end:
            count = os.preadv(fd, [memoryview(buffer)[: min(BLOCK, end - start)]], start)
            if not count:
                scan.result.warnings.append(f"warning: {piece.path}: the file shrank while it was read"
                                            " (rotated by copytruncate?); read what was there")
                return
            stop = buffer.rfind(b"\n", 0, count) + 1 if start + count < end else count
            if stop == 0:  # one line longer than a block: read it whole, or pass over it
                start = _long_line(scan, fd, start, end)
                continue
            scan.block(buffer, 0, stop, start)
            start += stop


def _long_line(scan: _Scan, fd: int, start: int, end: int) -> int:
    """Scan the line at ``start`` (longer than a block) when it is not too long to keep; the
    offset after it."""
    after = _line_start(fd, start + 1, end)
    if after - start <= archive.MAX_LINE:
        data = os.pread(fd, after - start, start)
        scan.block(data, 0, len(data), start)
    return after


def _line_start(fd: int, offset: int, limit: int) -> int:
    """The first line start at or after ``offset`` (``limit`` when there is none before it)."""
    if offset <= 0:
        return 0
    at = offset - 1
    while at < limit:
        data = os.pread(fd, min(SNIFF, limit - at), at)
        if not data:
            return limit
        newline = data.find(b"\n")
        if newline != -1:
            return min(limit, at + newline + 1)
        at += len(data)
    return limit


def _stream(scan: _Scan, chunks: Iterator[bytes]) -> None:
    """A stream (gzip, stdin), a block of lines at a time; a whole JSON document at once."""
    for _ in _steps(scan, chunks):
        pass


def _steps(scan: _Scan, chunks: Iterator[bytes]) -> Iterator[None]:
    """``_stream``, pausing after each block (what is found so far can be passed on)."""
    upto, document = scan.piece.upto, scan.piece.document
    blocks = archive.line_blocks(chunks)
    for offset, data in blocks:
        if document is None:
            document = scan.plan.envelope.whole_documents and _is_document(data)
        if document:
            _document(scan, _gather(data, blocks))
            return
        if upto is not None and offset >= upto:
            return
        end = len(data) if upto is None or offset + len(data) <= upto else upto - offset
        scan.block(data, 0, end, offset)
        yield


def _gather(first: bytes, blocks: Iterator[tuple[int, bytes]]) -> bytes:
    """The rest of a stream after its first block, up to just past ``DOCUMENT_MAX``."""
    parts, size = [first], len(first)
    for _, block in blocks:
        parts.append(block)
        size += len(block)
        if size > DOCUMENT_MAX:
            break
    return b"".join(parts)


def _document(scan: _Scan, data: bytes) -> None:
    """An input that is one JSON document (a pretty-printed _search response, a JSON array):
    searched and decoded as one line."""
    if len(data) > DOCUMENT_MAX:
        scan.result.warnings.append(
            f"warning: {scan.piece.path}: a JSON document over {DOCUMENT_MAX >> 20} MiB: not read")
        return
    flat = data.replace(b"\n", b" ").replace(b"\r", b" ")  # newlines between tokens are only spaces
    scan.line_max = DOCUMENT_MAX
    scan.block(flat, 0, len(flat), 0)


def _is_document(head: bytes) -> bool:
    """Whether an input starts with a JSON document spread over lines (a pretty-printed
    ``_search`` response, ``jq`` output, a JSON array) rather than with JSON lines: its first
    line opens an object or an array and is not a value of its own."""
    first = head.lstrip().split(b"\n", 1)[0].strip()
    if first in (b"{", b"["):
        return True
    if first[:1] not in (b"{", b"[") or first[-1:] not in (b"{", b"[", b",") or len(first) >= SNIFF:
        return False
    try:
        orjson.loads(first)
    except orjson.JSONDecodeError:
        return True
    return False


# --- worker processes ------------------------------------------------------------------------

def _worker(conn: Connection, plan: ScanPlan, board: _Board) -> None:
    """A worker process: pieces in, results out, until told to stop or the parent is gone."""
    # Ctrl-C is the parent's to handle (it stops the workers); a worker would only print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, piece = task
        result = _run(plan, board, piece)
        try:
            conn.send((index, result))
        except OSError:  # the parent is gone (killed): nobody to answer
            return


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _context() -> Any:
    """fork where there is one: workers inherit the plan and start in milliseconds."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class ScanError(Exception):
    """The scan could not finish (a worker process died: killed, out of memory)."""


class _Pool:
    """Worker processes, each fed one piece at a time through its own pipe. Small and exact
    where a stock pool is not: a worker that dies is seen at once (its sentinel) and ends
    the scan with ``ScanError``; stopping early ends every worker, none is started behind
    our back."""

    def __init__(self, context: Any, count: int, plan: ScanPlan, board: _Board) -> None:
        self.workers: list[tuple[Any, Connection]] = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, plan, board), daemon=True)
            process.start()
            child.close()
            self.workers.append((process, parent))

    def map(self, pieces: Sequence[_Piece]) -> Iterator[_Result]:
        """The pieces' results, in their order, as soon as each and those before it are done."""
        tasks = iter(enumerate(pieces))
        busy: dict[Connection, int] = {}
        done: dict[int, _Result] = {}
        for _, conn in self.workers:
            self._feed(conn, tasks, busy)
        for index in range(len(pieces)):
            while index not in done:
                self._collect(busy, done, tasks)
            yield done.pop(index)

    def _feed(self, conn: Connection, tasks: Iterator[tuple[int, _Piece]], busy: dict[Connection, int]) -> None:
        task = next(tasks, None)
        if task is not None:
            conn.send(task)
            busy[conn] = task[0]

    def _collect(self, busy: dict[Connection, int], done: dict[int, _Result],
                 tasks: Iterator[tuple[int, _Piece]]) -> None:
        sentinels = {process.sentinel: process for process, _ in self.workers}
        ready = wait([*busy, *sentinels])
        for item in ready:
            if isinstance(item, Connection):
                try:
                    index, result = item.recv()
                except (EOFError, OSError):
                    raise _died() from None
                del busy[item]
                done[index] = result
                self._feed(item, tasks, busy)
        if any(item in sentinels for item in ready):
            raise _died()

    def close(self, finished: bool) -> None:
        """Let the workers go (asked to stop, or ended at once when stopping early)."""
        for process, conn in self.workers:
            if finished:
                with contextlib.suppress(OSError):
                    conn.send(None)
            else:
                process.terminate()
        for process, conn in self.workers:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()


def _died() -> ScanError:
    return ScanError("a scanning process died (killed, or out of memory): nothing after it was read;"
                     " run again with one worker to scan in this process")


class _Runner:
    """Runs pieces in this process or in a pool of processes; results come in piece order."""

    def __init__(self, plan: ScanPlan, workers: int) -> None:
        self.plan = plan
        self.pool: _Pool | None = None
        if workers > 1:
            context = _context()
            self.board = _Board(context)
            self.pool = _Pool(context, workers, plan, self.board)
        else:
            self.board = _Board()

    def map(self, pieces: Sequence[_Piece]) -> Iterator[_Result]:
        if self.pool is None:
            return (_run(self.plan, self.board, piece) for piece in pieces)
        return self.pool.map(pieces)

    def close(self, finished: bool) -> None:
        if self.pool is not None:
            self.pool.close(finished)


# --- the scan --------------------------------------------------------------------------------


def _prepare(names: Sequence[str], plan: ScanPlan, warn: Warn, stats: ScanStats,
             piece_bytes: int) -> tuple[list[Input], list[_Piece]]:
    inputs = archive.expand(names, warn)
    stats.inputs = len(inputs)
    skipped: dict[int, str] = {}
    if plan.skip:
        skipped = archive.skips(inputs, Window.of(plan.since, plan.until, plan.slack), plan.envelope)
    pieces: list[_Piece] = []
    for item in inputs:
        if item.index in skipped:
            stats.skipped.append((item.name, skipped[item.index]))
        elif not item.stream:
            pieces.extend(_pieces(item, plan.envelope, piece_bytes))
    stats.pieces = len(pieces)
    return [i for i in inputs if i.index not in skipped], pieces


def _pieces(item: Input, envelope: Envelope, piece_bytes: int) -> list[_Piece]:
    if item.gzip:
        return [_Piece(item.index, item.name, gzip=True, document=None)]
    document = envelope.whole_documents and _sniff_document(item.name)
    if document or item.size <= piece_bytes:
        return [_Piece(item.index, item.name, document=document)]
    count = -(-item.size // piece_bytes)
    step = -(-item.size // count)
    return [_Piece(item.index, item.name, start=k * step, end=min(item.size, (k + 1) * step)) for k in range(count)]


def _sniff_document(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return _is_document(file.read(SNIFF))
    except OSError:
        return False


def _workers(requested: int | None, pieces: Sequence[_Piece], inputs: Sequence[Input]) -> int:
    if requested is not None:
        return max(1, min(requested, len(pieces)))
    size = sum(i.size * (6 if i.gzip else 1) for i in inputs if not i.stream)  # gzip: ~6:1 on audit lines
    if len(pieces) < 2 or size < PARALLEL_MIN:
        return 1
    return max(1, min(cpu_count(), len(pieces)))


def scan(
    names: Sequence[str], plan: ScanPlan, *, workers: int | None = None, warn: Warn = _stderr,
    stats: ScanStats | None = None, piece_bytes: int = PIECE,
) -> Iterator[Record]:
    """The records of the inputs that ``plan.match`` accepts, in input order, streamed.

    ``workers``: None decides (every core for a large input, this process for a small one);
    1 scans in this process; N uses a pool of N. ``plan.expand`` is not used (``collect`` is).
    """
    stats = stats if stats is not None else ScanStats()
    plan = replace(plan, expand=())
    inputs, pieces = _prepare(names, plan, warn, stats, piece_bytes)
    stats.workers = _workers(workers, pieces, inputs)
    runner = _Runner(plan, stats.workers)
    finished = False
    try:
        results = runner.map(pieces)
        counts = Counter(piece.input for piece in pieces)
        for item in inputs:
            for result in _input_results(item, runner, results, counts, None, warn, stats, live=True):
                for _, record in result.targets:
                    yield record
        finished = True
    finally:
        runner.close(finished)


def collect(
    names: Sequence[str], plan: ScanPlan, *, workers: int | None = None, warn: Warn = _stderr,
    stats: ScanStats | None = None, piece_bytes: int = PIECE,
) -> Collected:
    """An incident in one scan: the records ``plan.match`` accepts, the keys they give
    (their values of the ``plan.expand`` fields) and every other record holding one of those
    keys in the same field; standard input is spooled to a temporary file for the rescans."""
    stats = stats if stats is not None else ScanStats()
    inputs, pieces = _prepare(names, plan, warn, stats, piece_bytes)
    stats.workers = _workers(workers, pieces, inputs)
    runner = _Runner(plan, stats.workers)
    finished = False
    results: list[_Result] = []
    with ExitStack() as stack:
        spools: dict[int, str] = {}
        try:
            mapped = runner.map(pieces)
            counts = Counter(piece.input for piece in pieces)
            for item in inputs:
                spool: IO[bytes] | None = None
                if item.stream and plan.expand:
                    spool = stack.enter_context(tempfile.NamedTemporaryFile(prefix="gateway-scan-", suffix=".spool"))
                    spools[item.index] = spool.name
                results.extend(_input_results(item, runner, mapped, counts, spool, warn, stats))
                if spool is not None:
                    spool.flush()
            keys: set[Key] = set().union(*(r.learned for r in results))
            rescans = _rescans(results, keys, spools)
            for result in runner.map(rescans):
                _account(result, warn, stats)
                results.append(result)
            finished = True
        finally:
            runner.close(finished)
    targets = sorted((pos, record) for r in results for pos, record in r.targets)
    related: dict[Pos, Record] = {}
    for result in results:
        for pos, record in result.related:
            related.setdefault(pos, record)
    return Collected([record for _, record in targets], [related[pos] for pos in sorted(related)], keys)


def _rescans(results: Sequence[_Result], keys: set[Key], spools: dict[int, str]) -> list[_Piece]:
    """For each piece, the keys it was not searched for from its start, and how far to look."""
    pieces: list[_Piece] = []
    for result in results:
        missing: set[Key] = set()
        upto: int | None = 0
        for key in keys:
            since = result.coverage.get(key)
            if since is not None and since <= result.begin:
                continue
            missing.add(key)
            upto = None if since is None or upto is None else max(upto, since)
        if not missing:
            continue
        piece = result.piece
        if piece.input in spools:
            path = spools[piece.input]
            piece = replace(piece, path=path, gzip=archive.is_gzip(path))
        pieces.append(replace(piece, upto=upto, keys=frozenset(missing)))
    return pieces


def _input_results(
    item: Input, runner: _Runner, results: Iterator[_Result], counts: Counter[int], spool: IO[bytes] | None,
    warn: Warn, stats: ScanStats, live: bool = False,
) -> Iterator[_Result]:
    """The results of one input: its pieces' from the runner, or a stream's read here (with
    ``live``, its matches block by block: ``kubectl logs -f | gateway audit`` prints as they come)."""
    if item.stream:
        state: _Scan | None = None
        for state in _read_stream(runner, item, spool):
            if live and state.result.targets:
                yield _Result(state.piece, targets=state.result.targets)
                state.result.targets = []
        assert state is not None
        _account(state.result, warn, stats)
        yield state.result
        return
    for _ in range(counts[item.index]):
        result = next(results)
        _account(result, warn, stats)
        yield result


def _account(result: _Result, warn: Warn, stats: ScanStats) -> None:
    for message in result.warnings:
        warn(message)
    stats.bytes += result.bytes
    stats.decoded += result.decoded
    if result.piece.keys is not None:
        stats.rescanned += result.bytes


def _read_stream(runner: _Runner, item: Input, spool: IO[bytes] | None) -> Iterator[_Scan]:
    """Standard input or a pipe, read in this process (copied to ``spool`` when given): the
    scan's state after each block, and once more at the end."""
    scan_ = _Scan(runner.plan, runner.board, _Piece(item.index, item.name, document=None))
    try:
        reader = archive.open_stream(item, spool)
    except OSError as exc:
        scan_.result.warnings.append(f"warning: {item.name}: cannot read: {exc.strerror}")
        yield scan_
        return
    try:
        for _ in _steps(scan_, archive.chunks(reader)):
            yield scan_
    except Corrupt as exc:
        scan_.result.warnings.append(_corrupt(item.name, exc))
    finally:
        if item.name != "-":
            reader.close()
    yield scan_
