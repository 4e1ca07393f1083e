"""The bytes of an input (offline): gzip inflated with the fastest inflater installed, plain
streams read as they come, and both cut into blocks of whole lines.
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Iterator
from typing import IO, Any

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE = 16 * 2**20  # a line longer than this is garbage: dropped (reader.py and scanner.py use the same bound)
READ = 2**20  # compressed bytes read at a time
INFLATE = 4 * 2**20  # most decompressed bytes produced by one call (a gzip bomb stays bounded)


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
