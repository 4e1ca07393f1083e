"""How a piece's bytes are read (offline, in a worker): a plain file a block of whole lines at
a time with ``pread``, a gzip file or a stream inflated as it comes, a JSON document whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson

from .inflate import MAX_LINE, Corrupt, gunzip, line_blocks
from .scanner import PieceScan

if TYPE_CHECKING:
    from .pool import Board
    from .scan_plan import Piece, Result, ScanPlan

BLOCK = 8 * 2**20  # bytes of a plain file searched per step (a worker looks for new keys between steps)
DOCUMENT_MAX = 512 * 2**20  # an input that is one JSON document (a _search response) is read whole up to this
SNIFF = 64 * 1024


def run_piece(plan: ScanPlan, board: Board | None, piece: Piece) -> Result:
    """Scan one piece (in a worker or in this process); unreadable or corrupt input becomes a warning."""
    scan = PieceScan(plan, board, piece)
    try:
        if piece.gzip:
            with open(piece.path, "rb") as raw:
                _stream(scan, gunzip(raw))
        else:
            _plain(scan)
    except Corrupt as exc:
        scan.result.warnings.append(corrupt_warning(piece.path, exc))
    except OSError as exc:
        scan.result.warnings.append(f"warning: {piece.path}: cannot read: {exc.strerror or exc}")
    return scan.result


def corrupt_warning(name: str, exc: Exception) -> str:
    """The warning for compressed input that ends early or is corrupt."""
    return f"warning: {name}: compressed data ends early or is corrupt ({exc}); read what was there"


def _plain(scan: PieceScan) -> None:
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


def _long_line(scan: PieceScan, fd: int, start: int, end: int) -> int:
    """Scan the line at ``start`` (longer than a block) when it is not too long to keep; the
    offset after it."""
    after = _line_start(fd, start + 1, end)
    if after - start <= MAX_LINE:
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


def _stream(scan: PieceScan, chunks: Iterator[bytes]) -> None:
    """A stream (gzip, stdin), a block of lines at a time; a whole JSON document at once."""
    for _ in steps(scan, chunks):
        pass


def steps(scan: PieceScan, chunks: Iterator[bytes]) -> Iterator[None]:
    """``_stream``, pausing after each block (what is found so far can be passed on)."""
    upto, document = scan.piece.upto, scan.piece.document
    blocks = line_blocks(chunks)
    for offset, data in blocks:
        if document is None:
            document = scan.plan.envelope.whole_documents and is_document(data)
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


def _document(scan: PieceScan, data: bytes) -> None:
    """An input that is one JSON document (a pretty-printed _search response, a JSON array):
    searched and decoded as one line."""
    if len(data) > DOCUMENT_MAX:
        scan.result.warnings.append(
            f"warning: {scan.piece.path}: a JSON document over {DOCUMENT_MAX >> 20} MiB: not read")
        return
    flat = data.replace(b"\n", b" ").replace(b"\r", b" ")  # newlines between tokens are only spaces
    scan.line_max = DOCUMENT_MAX
    scan.block(flat, 0, len(flat), 0)


def is_document(head: bytes) -> bool:
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


def sniff_document(path: str) -> bool:
    """Whether a file starts with a JSON document spread over lines (``is_document``)."""
    try:
        with open(path, "rb") as file:
            return is_document(file.read(SNIFF))
    except OSError:
        return False
