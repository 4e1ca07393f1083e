"""The scan of one piece of input (offline, in a worker): the lines holding the plan's needles
or a known key are decoded, the matching records kept, and the keys they give learned.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .inflate import MAX_LINE
from .needles import Finder, value_needles
from .scan_plan import Key, Piece, Record, Result, ScanPlan
from .window import in_window

if TYPE_CHECKING:
    from .pool import Board

_AUDIT = b"audit"  # every record holds it (``"type":"audit"``, escaped or not)


class PieceScan:
    """The state of one piece being scanned: known keys, coverage, what was found."""

    def __init__(self, plan: ScanPlan, board: Board | None, piece: Piece) -> None:
        self.plan = plan
        self.piece = piece
        self.result = Result(piece)
        self.rescan = piece.keys is not None
        self.board = None if self.rescan else board
        self.known: dict[Key, tuple[bytes, ...]] = {}
        self.fields: set[str] = set()
        self.key_needles: list[bytes] = []
        self.keys_unsearchable = False  # a key with no needle: every line must be decoded
        self.board_offset = 0
        self.line_max = MAX_LINE  # a whole document is one "line" of up to DOCUMENT_MAX
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
        """Scan the whole lines ``buf[s:e]``, ``buf[0]`` being at ``base`` in the input."""
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
                        and in_window(record, plan.since, plan.until):
                    self.result.related.append(((self.piece.input, base + start, i), record))
