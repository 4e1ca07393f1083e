"""What a scan looks for and what it hands back (offline): the plan, the pieces of the input
the workers scan, their results, and the scan's statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .envelope import Envelope
from .inflate import GZIP_BACKEND
from .needles import SEARCH_BACKEND, Needles, needles_for_query
from .window import DEFAULT_SLACK

Record = dict[str, Any]
Warn = Callable[[str], None]
Key = tuple[str, str]  # (field, value): a record holding value in field is related
Pos = tuple[int, int, int]  # (input, offset of the line in the input's bytes, record on the line)


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
    slack: float = DEFAULT_SLACK
    skip: bool = True  # leave files outside the window unread

    @classmethod
    def for_query(cls, query: Any, envelope: Envelope | None = None, expand: tuple[str, ...] = ()) -> ScanPlan:
        """The plan of a ``Query``: its filter, its needles and its window."""
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
    backend: str = GZIP_BACKEND
    search: str = SEARCH_BACKEND


@dataclass
class Collected:
    """An incident's records: the target's, then the related ones (both in input order)."""

    records: list[Record]
    related: list[Record]
    keys: set[Key]


# --- pieces and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A part of one input that one worker scans: a whole file, a stretch of a plain file, or a rescan."""

    input: int
    path: str
    gzip: bool = False
    start: int = 0  # a plain file: the lines starting in [start, end)
    end: int = -1
    document: bool | None = False  # the input is one JSON document, decoded whole (None: look at its start)
    upto: int | None = None  # a rescan: stop at this offset
    keys: frozenset[Key] | None = None  # a rescan: look for records of these keys only


@dataclass
class Result:
    """What the scan of one piece found, learned and covered (sent back from the worker)."""

    piece: Piece
    begin: int = 0  # where the piece's first line starts
    targets: list[tuple[Pos, Record]] = field(default_factory=list)
    related: list[tuple[Pos, Record]] = field(default_factory=list)
    learned: set[Key] = field(default_factory=set)
    coverage: dict[Key, int] = field(default_factory=dict)  # key -> offset from which it was searched
    warnings: list[str] = field(default_factory=list)
    bytes: int = 0
    decoded: int = 0
