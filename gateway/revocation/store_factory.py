"""Builds the revocation store a configuration asks for (at start-up)."""

from __future__ import annotations

from ..config import RevocationConfig
from .memory_store import MemoryStore
from .redis_store import RedisStore
from .store import RevocationStore


def build_store(config: RevocationConfig) -> RevocationStore:
    """Redis when a URL or Sentinel is given, else memory (redis itself is imported on connecting)."""
    if not config.shared:
        return MemoryStore(config.family_claim, config.resync_interval)
    return RedisStore(config)
