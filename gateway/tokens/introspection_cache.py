"""What an introspection client remembers: its cache entries, and the shared second-level cache in Redis.

Runs per request. The caches hold the authorization server's answer about a token, never a
decision; they are keyed by the SHA-256 of the token's exact bytes (``cache_key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .. import metrics, tracing
from ..config import IntrospectionConfig
from ..reasons import Reason
from .introspection_http import FailureLog
from .token import ValidatedToken, as_number

if TYPE_CHECKING:
    from redis.asyncio import Redis

SHARED_KEY_PREFIX = "tokengate:introspection:"


@dataclass(frozen=True, slots=True)
class IntrospectedToken(ValidatedToken):
    """A ValidatedToken from introspection, with the deadline of its cache entry."""

    cached_until: float = 0.0  # min(answered_at + cache_ttl, exp), answered_at + cache_ttl without exp


@dataclass(frozen=True, slots=True)
class Refusal:
    """A negative cache entry: why the token was refused, and until when to remember it."""

    reason: Reason
    detail: str
    until: float


def cache_deadline(token: ValidatedToken) -> float:
    """When a cache entry of this token ends."""
    return token.cached_until if isinstance(token, IntrospectedToken) else token.expires_at


class SharedAnswers:
    """The shared second-level cache (``shared_cache: true``): answers by token hash, in Redis."""

    def __init__(self, issuer: str, settings: IntrospectionConfig, failure_log: FailureLog) -> None:
        self._settings = settings
        self._log_failure = failure_log
        self._prefix = SHARED_KEY_PREFIX + hashlib.sha256(issuer.encode()).hexdigest()[:16] + ":"
        self._redis: Redis | None = None

    def connect(self) -> None:
        """Open the Redis client when a shared cache is configured."""
        if self._settings.shared_cache and self._settings.redis_url:
            from redis.asyncio import Redis  # only imported when a shared cache is configured

            timeout = max(self._settings.timeout, 0.1)
            self._redis = Redis.from_url(
                self._settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )

    async def aclose(self) -> None:
        """Close the Redis client, if one was opened."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def get(self, key: str) -> tuple[dict[str, Any], float] | None:
        if self._redis is None:
            return None
        try:
            with tracing.redis_call("GET", self._redis):
                value = await self._redis.get(self._prefix + key)
        except Exception as exc:  # any Redis trouble means: ask the server
            metrics.TOKEN_CACHE.labels("introspection_shared", "error").inc()
            self._log_failure("redis", logging.WARNING, f"shared cache unavailable: {type(exc).__name__}")
            return None
        stored: Any = None
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            stored = orjson.loads(value) if value is not None else None
        answer = stored.get("answer") if isinstance(stored, dict) else None
        until = as_number(stored.get("until")) if isinstance(stored, dict) else None
        if not isinstance(answer, dict) or until is None or until <= time.time():
            metrics.TOKEN_CACHE.labels("introspection_shared", "miss").inc()
            return None
        metrics.TOKEN_CACHE.labels("introspection_shared", "hit").inc()
        return answer, until

    async def put(self, key: str, answer: dict[str, Any], until: float, now: float) -> None:
        """Store the server's answer (not a decision) for as long as the local entry lives."""
        ttl_ms = int((until - now) * 1000)
        if self._redis is None or ttl_ms <= 0:
            return
        try:
            with tracing.redis_call("SET", self._redis):
                await self._redis.set(
                    self._prefix + key, orjson.dumps({"answer": answer, "until": until}), px=ttl_ms
                )
        except Exception as exc:  # the shared cache is an optimisation only
            metrics.TOKEN_CACHE.labels("introspection_shared", "error").inc()
            self._log_failure("redis", logging.WARNING, f"shared cache unavailable: {type(exc).__name__}")
