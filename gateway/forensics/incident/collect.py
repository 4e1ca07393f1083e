"""Collecting an incident: the target's records and those of its families and subjects, in one scan (offline).

When the token belongs to a family or a subject, the engine also gathers the other tokens of
that family or subject (standard input is spooled to a temporary file for it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..envelope import Envelope
from ..query import Record, Warn, family_of, stderr_warn
from ..scan import ScanPlan, ScanStats
from ..scan import collect as scan_related
from .model import Incident
from .target import Target

# which fields of the target's records lead to related records: a subject's tokens are its
# records already; a family's own tokens too, so only its subjects' other tokens are related
_RELATED = ("family", "sid", "sub")  # "sid": records written before "family" existed
_EXPANSIONS: dict[str, tuple[str, ...]] = {"sub": (), "family": ("sub",)}


def collect(
    names: Sequence[str], target: Target, warn: Warn = stderr_warn, *, workers: int | None = None,
    envelope: Envelope | None = None, stats: ScanStats | None = None,
) -> Incident:
    """Build the incident in one scan of the inputs (files, directories, globs, ``-``): the
    target's records, and the records of its families and subjects (``forensics.scan.collect``)."""
    incident = Incident(target)
    plan = ScanPlan.for_query(target.query(), envelope=envelope, expand=_EXPANSIONS.get(target.kind, _RELATED))
    found = scan_related(list(names) or ["-"], plan, workers=workers, warn=warn, stats=stats)
    for record in found.records:
        incident.add(record)
    _add_related(incident, found.related)
    return incident


def _add_related(incident: Incident, records: Iterable[Record]) -> None:
    """The engine relates by every value it found; keep the records of the families and subjects
    the report shows (an escaped or cut value is not the token's and relates nothing)."""
    families, subs = set(incident.families), set(incident.subjects)
    if incident.target.kind == "family":
        families = set()
    for record in records:
        if family_of(record) in families or record.get("sub") in subs:
            incident.add_related(record)
