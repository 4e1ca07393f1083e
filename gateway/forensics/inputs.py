"""The inputs of a scan (offline): files, directories, globs and standard input, expanded in
order, each file once; streams copied to a spool when they must be read twice.

Names are expanded in order: a directory gives its regular files (recursively, sorted, dot
files left out), a pattern with ``*``, ``?`` or ``[`` that names no file gives its matches
(sorted, ``**`` recursive), ``-`` is standard input. The same file reached twice is read
once. Compression is told by the magic bytes, not the name.
"""

from __future__ import annotations

import glob
import io
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .inflate import GZIP_MAGIC, READ

Warn = Callable[[str], None]


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
