"""Progress of long offline commands (``gateway audit`` / ``incident`` over large or many files).

Shown on standard error, and only when standard error is a terminal: piped, redirected or
run by a script, a command prints nothing more than its result. The bar appears after
``DELAY`` seconds, so a quick search shows none, and it is erased when the work is done.

The work is not instrumented: a thread reads a counter a few times a second, and the
scanning loop stays as fast as it was. The counter of ``gateway audit``/``incident`` is the
number of bytes this process and its worker processes have read (the kernel's count,
``rchar`` in ``/proc/<pid>/io``): true for a search in this process or in a pool of
workers, for plain files and gzip alike (compressed bytes, as the files' sizes are). Where
the system keeps no such count, no bar is drawn.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any, cast

DELAY = 0.5  # seconds before a bar appears
INTERVAL = 0.2  # seconds between two readings of the counter


def wanted(stream: IO[str] | None = None) -> bool:
    """Whether progress may be drawn on ``stream`` (standard error): a terminal that can take it."""
    return _is_terminal(stream if stream is not None else sys.stderr) and os.environ.get("TERM") != "dumb"


def input_size(names: Sequence[str]) -> int | None:
    """The bytes of the named inputs when all are regular files (None: stdin or a pipe is among them)."""
    total = 0
    for name in names or ["-"]:
        if name == "-":
            return None
        try:
            stat = os.stat(name)
        except OSError:
            continue  # the engine says it cannot read it
        if not os.path.isfile(name):
            return None
        total += stat.st_size
    return total


def _read_so_far(pid: str | int) -> int | None:
    """The bytes a process has read (``rchar``: read and pread calls, files and pipes), None when unknown."""
    try:
        with open(f"/proc/{pid}/io", "rb") as io:
            for line in io:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (a scanning pool's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold spaces
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(parent).encode():
            found.append(int(entry))
    return found


def bytes_read() -> Callable[[], int] | None:
    """A counter of the bytes read from now on by this process and its children; None where the
    system keeps no count. A worker that has exited no longer counts: the bar never goes back."""
    me = os.getpid()
    base = _read_so_far(me)
    if base is None:
        return None
    bases: dict[int, int] = {}

    def read() -> int:
        total = (_read_so_far(me) or base) - base
        for child in _children(me):
            now = _read_so_far(child)
            if now is not None:
                total += now - bases.setdefault(child, 0)
        return total

    return read


class Progress:
    """A progress bar fed by ``read()`` (a growing count of bytes), drawn from a thread.

    ``with Progress(total, read, "scanning") as progress:`` around the work; ``total`` None
    draws a count and a rate without a percentage. Nothing is drawn unless ``enabled`` (by
    default: standard error is a terminal), nor before ``DELAY`` seconds have passed. What
    the work prints meanwhile goes through ``lines()`` and ``say()``, which lift the bar
    for it: a record or a warning never lands in the middle of the bar's line.
    """

    def __init__(self, total: int | None, read: Callable[[], int], label: str, enabled: bool | None = None,
                 stream: IO[str] | None = None) -> None:
        self.total, self.read, self.label = total, read, label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = wanted(self.stream) if enabled is None else enabled
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._shown = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._bar is not None:
                self._bar.close()  # leave=False: the line is erased
                self._bar = None

    def _run(self) -> None:
        if self._stop.wait(DELAY):
            return  # done before a bar was worth drawing
        from tqdm import tqdm  # type: ignore[import-untyped]  # loaded when a bar is drawn, never when piped

        with self._lock:
            # what was read before the bar starts counts as done, not as a burst of speed
            self._shown = self._done()
            self._bar = tqdm(total=self.total, initial=self._shown, desc=self.label, unit="B", unit_scale=True,
                             unit_divisor=1024, file=self.stream, leave=False, dynamic_ncols=True, mininterval=0)
        while True:
            with self._lock:
                self._advance()
            if self._stop.wait(INTERVAL):
                return

    def _done(self) -> int:
        done = self.read()
        return min(done, self.total) if self.total is not None else done

    def _advance(self) -> None:
        done = self._done()
        if self._bar is not None and done > self._shown:
            self._bar.update(done - self._shown)
            self._shown = done

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The bar lifted off the terminal while the body prints, then drawn again below it."""
        with self._lock:
            if self._bar is None:
                yield
                return
            self._bar.clear()
            try:
                yield
            finally:
                self._bar.refresh()

    def say(self, echo: Callable[[str], None]) -> Callable[[str], None]:
        """``echo`` (a warning printer) printing above the bar."""
        def said(message: str) -> None:
            with self.paused():
                echo(message)
        return said

    def lines(self, out: IO[str]) -> IO[str]:
        """``out`` itself, or, when it is the terminal the bar is drawn on, a stream that prints
        whole lines above the bar (a line cut in two by the bar would be unreadable)."""
        return cast(IO[str], _LinesAbove(out, self)) if self.enabled and _is_terminal(out) else out


class _LinesAbove:
    """Writes whole lines to ``out`` with the bar lifted; keeps the last partial line until it ends."""

    def __init__(self, out: IO[str], progress: Progress) -> None:
        self.out, self.progress, self.pending = out, progress, ""

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in text:
            whole, _, self.pending = self.pending.rpartition("\n")
            with self.progress.paused():
                self.out.write(whole + "\n")
                self.out.flush()
        return len(text)

    def flush(self) -> None:
        if self.pending:
            with self.progress.paused():
                self.out.write(self.pending)
            self.pending = ""
        self.out.flush()

    def isatty(self) -> bool:
        return True


def scanning(names: Sequence[str], label: str = "reading") -> Progress:
    """The progress of reading ``names`` (bytes read against their size), for audit and incident."""
    read = bytes_read()
    typed = (not names or "-" in names) and _is_terminal(sys.stdin)  # someone typing records: no bar over them
    return Progress(input_size(names), read or (lambda: 0), label,
                    enabled=False if read is None or typed else None)


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False
