"""The scanning engine of ``gateway audit`` / ``gateway incident`` at archive scale (offline):
the inputs cut into pieces, the pieces scanned (``scanner``, ``reader``) by a pool of
processes (``pool``), and their results merged here, in input order.

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
  first/last records allow (``window.skips``);
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

import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import IO

from .envelope import Envelope
from .inflate import Corrupt, chunks
from .inputs import Input, expand, is_gzip, open_stream
from .needles import SEARCH_BACKEND, Needles, needles_for_query, value_needles
from .pool import Runner, ScanError, cpu_count
from .reader import BLOCK, corrupt_warning, sniff_document, steps
from .scan_plan import Collected, Key, Piece, Pos, Record, Result, ScanPlan, ScanStats, Warn
from .scanner import PieceScan
from .window import Window, skips

__all__ = [
    "BLOCK", "SEARCH_BACKEND", "Collected", "Needles", "ScanError", "ScanPlan", "ScanStats", "collect", "cpu_count",
    "needles_for_query", "scan", "value_needles",
]

PIECE = 48 * 2**20  # a plain file larger than this is cut into pieces of about this size
PARALLEL_MIN = 16 * 2**20  # less input than this is scanned in this process: a pool costs more


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _prepare(names: Sequence[str], plan: ScanPlan, warn: Warn, stats: ScanStats,
             piece_bytes: int) -> tuple[list[Input], list[Piece]]:
    inputs = expand(names, warn)
    stats.inputs = len(inputs)
    skipped: dict[int, str] = {}
    if plan.skip:
        skipped = skips(inputs, Window.of(plan.since, plan.until, plan.slack), plan.envelope)
    pieces: list[Piece] = []
    for item in inputs:
        if item.index in skipped:
            stats.skipped.append((item.name, skipped[item.index]))
        elif not item.stream:
            pieces.extend(_pieces(item, plan.envelope, piece_bytes))
    stats.pieces = len(pieces)
    return [i for i in inputs if i.index not in skipped], pieces


def _pieces(item: Input, envelope: Envelope, piece_bytes: int) -> list[Piece]:
    if item.gzip:
        return [Piece(item.index, item.name, gzip=True, document=None)]
    document = envelope.whole_documents and sniff_document(item.name)
    if document or item.size <= piece_bytes:
        return [Piece(item.index, item.name, document=document)]
    count = -(-item.size // piece_bytes)
    step = -(-item.size // count)
    return [Piece(item.index, item.name, start=k * step, end=min(item.size, (k + 1) * step)) for k in range(count)]


def _workers(requested: int | None, pieces: Sequence[Piece], inputs: Sequence[Input]) -> int:
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
    runner = Runner(plan, stats.workers)
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
    runner = Runner(plan, stats.workers)
    finished = False
    results: list[Result] = []
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


def _rescans(results: Sequence[Result], keys: set[Key], spools: dict[int, str]) -> list[Piece]:
    """For each piece, the keys it was not searched for from its start, and how far to look."""
    pieces: list[Piece] = []
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
            piece = replace(piece, path=path, gzip=is_gzip(path))
        pieces.append(replace(piece, upto=upto, keys=frozenset(missing)))
    return pieces


def _input_results(
    item: Input, runner: Runner, results: Iterator[Result], counts: Counter[int], spool: IO[bytes] | None,
    warn: Warn, stats: ScanStats, live: bool = False,
) -> Iterator[Result]:
    """The results of one input: its pieces' from the runner, or a stream's read here (with
    ``live``, its matches block by block: ``kubectl logs -f | gateway audit`` prints as they come)."""
    if item.stream:
        state: PieceScan | None = None
        for state in _read_stream(runner, item, spool):
            if live and state.result.targets:
                yield Result(state.piece, targets=state.result.targets)
                state.result.targets = []
        assert state is not None
        _account(state.result, warn, stats)
        yield state.result
        return
    for _ in range(counts[item.index]):
        result = next(results)
        _account(result, warn, stats)
        yield result


def _account(result: Result, warn: Warn, stats: ScanStats) -> None:
    for message in result.warnings:
        warn(message)
    stats.bytes += result.bytes
    stats.decoded += result.decoded
    if result.piece.keys is not None:
        stats.rescanned += result.bytes


def _read_stream(runner: Runner, item: Input, spool: IO[bytes] | None) -> Iterator[PieceScan]:
    """Standard input or a pipe, read in this process (copied to ``spool`` when given): the
    scan's state after each block, and once more at the end."""
    scan_ = PieceScan(runner.plan, runner.board, Piece(item.index, item.name, document=None))
    try:
        reader = open_stream(item, spool)
    except OSError as exc:
        scan_.result.warnings.append(f"warning: {item.name}: cannot read: {exc.strerror}")
        yield scan_
        return
    try:
        for _ in steps(scan_, chunks(reader)):
            yield scan_
    except Corrupt as exc:
        scan_.result.warnings.append(corrupt_warning(item.name, exc))
    finally:
        if item.name != "-":
            reader.close()
    yield scan_
