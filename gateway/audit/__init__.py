"""The audit trail as it is written per request: the record, its writer and the shared field formats.

The names below are loaded when first used, so that the offline commands (``gateway audit``,
``gateway incident``, in ``gateway.forensics``) can read ``audit.fields`` without importing
the request path (the record's decision types, aiohttp).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .record import Exchange, audit_record
    from .writer import AuditWriter

__all__ = ["AuditWriter", "Exchange", "audit_record"]
_HOME = {"AuditWriter": ".writer", "Exchange": ".record", "audit_record": ".record"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name], __name__), name)
