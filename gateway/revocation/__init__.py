"""The revocation list: entries, the local copy checked per request, and its stores."""

from .entries import ANY_ISSUER, Entry, Kind, RevocationList
from .store import MemoryStore, RevocationStore

__all__ = ["ANY_ISSUER", "Entry", "Kind", "MemoryStore", "RevocationList", "RevocationStore"]
