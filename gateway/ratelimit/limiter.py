"""The counters a gateway checks its limits against: Redis's when configured, else this process's."""

from __future__ import annotations

from .config import RateLimitingConfig
from .local_limiter import LocalLimiter
from .redis_limiter import RedisLimiter

Limiter = LocalLimiter | RedisLimiter


def build_limiter(config: RateLimitingConfig) -> Limiter:
    """Redis counters when ``redis_url`` is set, else this process's."""
    if config.redis_url is None:
        return LocalLimiter(config.local_max_keys)
    return RedisLimiter(
        config.redis_url, key_prefix=config.key_prefix, timeout=config.timeout, retry_interval=config.retry_interval,
    )
