"""The revocation list: entries, the local copy checked per request, and its stores.

Authorization servers written in Python revoke through ``Revoker`` (asyncio) or
``SyncRevoker``; the Redis schema they write is in ``schema`` (docs/revocation.md).
"""

from .api import Revoker, SyncRevoker
from .entries import ANY_ISSUER, Entry, Kind, Match, RevocationList
from .schema import EntryFactory, IssuerNeeded, RevocationWriteError, Schema
from .store import MemoryStore, RevocationStore

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
