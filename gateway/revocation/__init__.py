"""The revocation list: entries, the local copy checked per request, and its stores.

Authorization servers written in Python revoke through ``Revoker`` (asyncio) or
``SyncRevoker``; the Redis schema they write is in ``schema`` (docs/revocation.md).
"""

from .api import Revoker, SyncRevoker
from .entries import ANY_ISSUER, Entry, Kind, Match, RevocationList
from .entry_factory import EntryFactory, IssuerNeeded
from .memory_store import MemoryStore
from .schema import RevocationWriteError, Schema
from .store import RevocationStore

__all__ = [
    "ANY_ISSUER",
    "Entry",
    "EntryFactory",
    "IssuerNeeded",
    "Kind",
    "Match",
    "MemoryStore",
    "RevocationList",
    "RevocationStore",
    "RevocationWriteError",
    "Revoker",
    "Schema",
    "SyncRevoker",
]
