"""A plain sequential reader of audit files: the reference the forensics engine's answers are
compared with (the engine prefilters bytes, cuts files into pieces and scans them in
processes; this reads every line of every file in order and decodes it).

It reads plain and gzip files and ``-`` (standard input); a line longer than ``MAX_LINE``
is dropped as the engine drops it.
"""

from __future__ import annotations

import gzip
import io
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, cast

import orjson

from gateway.forensics.archive import GZIP_MAGIC, MAX_LINE

Record = dict[str, Any]
Warn = Callable[[str], None]
BLOCK = 2**20


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def open_input(name: str) -> IO[bytes]:
    """A binary stream of decompressed bytes: a file (``-`` is stdin), gzip or plain."""
    raw: io.BufferedReader
    if name == "-":
        stdin = sys.stdin.buffer
        raw = stdin if isinstance(stdin, io.BufferedReader) else io.BufferedReader(cast(Any, stdin), BLOCK)
    else:
        raw = open(name, "rb")  # noqa: SIM115 - closed by the caller
    if raw.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _blocks(stream: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """(data, end): ``data[:end]`` is whole lines, a block at a time (no copy of the block)."""
    rest = b""
    while True:
        block = stream.read(BLOCK)
        if not block:
            break
        data = rest + block if rest else block
        end = data.rfind(b"\n") + 1
        if end == 0:
            rest = data if len(data) <= MAX_LINE else b""
            continue
        rest = data[end:]
        yield data, end
    if rest:
        yield rest + b"\n", len(rest) + 1


def _candidate_lines(stream: IO[bytes], needles: Sequence[bytes]) -> Iterator[bytes]:
    """Lines of ``stream`` holding one of ``needles`` (every line when there are none)."""
    if not needles:
        yield from stream
        return
    if len(needles) == 1:
        needle = needles[0]

        def find(data: bytes, start: int, end: int) -> int:
            return data.find(needle, start, end)
    else:
        pattern = re.compile(b"|".join(re.escape(n) for n in sorted(set(needles), key=len, reverse=True)))

        def find(data: bytes, start: int, end: int) -> int:
            hit = pattern.search(data, start, end)
            return hit.start() if hit else -1

    for data, limit in _blocks(stream):
        pos = find(data, 0, limit)
        while pos != -1:
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.index(b"\n", pos)
            yield data[start:end]
            pos = find(data, end + 1, limit)


def parse_line(line: bytes) -> Record | None:
    """The audit record on this line, or None (a log line, a prefix-only line, garbage)."""
    start = line.find(b"{")
    if start == -1:
        return None
    if b'"audit"' not in line:
        return None
    try:
        record = orjson.loads(line[start:] if start else line)
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict or record.get("type") != "audit":
        return None
    return record


def iter_records(
    names: Sequence[str], needles: Sequence[bytes] = (), warn: Warn = _stderr,
) -> Iterator[Record]:
    """Every audit record of the inputs (``[]`` or ``-`` is stdin), in input order.

    With ``needles``, only lines containing one of them are parsed (a pre-filter: callers
    still apply the real filter).
    """
    for name in names or ["-"]:
        try:
            stream = open_input(name)
        except OSError as exc:
            warn(f"warning: {name}: cannot read: {exc.strerror}")
            continue
        try:
            for line in _candidate_lines(stream, needles):
                record = parse_line(line)
                if record is not None:
                    yield record
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            warn(f"warning: {name}: compressed data ends early or is corrupt ({exc}); read what was there")
        finally:
            if name != "-":
                stream.close()




def reference_select(names: Sequence[str], query: Any) -> list[Record]:
    """The records ``query`` accepts, read line by line in input order."""
    return [record for record in iter_records(names) if query.matches(record)]
