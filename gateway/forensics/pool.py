"""The worker processes of a scan (offline): a pool fed one piece at a time, and the board on
which workers share the keys they learn.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from multiprocessing.connection import Connection, wait
from typing import Any

import orjson

from .reader import run_piece
from .scan_plan import Key, Piece, Result, ScanPlan

BOARD_BYTES = 1 << 20  # keys shared between workers; past this, workers rescan instead (still exact)


class Board:
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
        """Add keys for every worker to read (dropped when the board is full)."""
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


def _worker(conn: Connection, plan: ScanPlan, board: Board) -> None:
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
        result = run_piece(plan, board, piece)
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

    def __init__(self, context: Any, count: int, plan: ScanPlan, board: Board) -> None:
        self.workers: list[tuple[Any, Connection]] = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, plan, board), daemon=True)
            process.start()
            child.close()
            self.workers.append((process, parent))

    def map(self, pieces: Sequence[Piece]) -> Iterator[Result]:
        """The pieces' results, in their order, as soon as each and those before it are done."""
        tasks = iter(enumerate(pieces))
        busy: dict[Connection, int] = {}
        done: dict[int, Result] = {}
        for _, conn in self.workers:
            self._feed(conn, tasks, busy)
        for index in range(len(pieces)):
            while index not in done:
                self._collect(busy, done, tasks)
            yield done.pop(index)

    def _feed(self, conn: Connection, tasks: Iterator[tuple[int, Piece]], busy: dict[Connection, int]) -> None:
        task = next(tasks, None)
        if task is not None:
            conn.send(task)
            busy[conn] = task[0]

    def _collect(self, busy: dict[Connection, int], done: dict[int, Result],
                 tasks: Iterator[tuple[int, Piece]]) -> None:
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


class Runner:
    """Runs pieces in this process or in a pool of processes; results come in piece order."""

    def __init__(self, plan: ScanPlan, workers: int) -> None:
        self.plan = plan
        self.pool: _Pool | None = None
        if workers > 1:
            context = _context()
            self.board = Board(context)
            self.pool = _Pool(context, workers, plan, self.board)
        else:
            self.board = Board()

    def map(self, pieces: Sequence[Piece]) -> Iterator[Result]:
        """The pieces' results, in their order."""
        if self.pool is None:
            return (run_piece(self.plan, self.board, piece) for piece in pieces)
        return self.pool.map(pieces)

    def close(self, finished: bool) -> None:
        """Let the pool's workers go, if there is a pool."""
        if self.pool is not None:
            self.pool.close(finished)
