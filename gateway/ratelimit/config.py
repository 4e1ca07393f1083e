"""The ``rate_limiting`` configuration models and their compilation into limits and route plans; offline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..durations import parse_duration
from .keys import KeySpec
from .limits import POLICY_NAME, Limit, OnRedisError, Override, RoutePlan
from .rates import MAX_COUNT, MAX_TOLERANCE_US, parse_rate


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Model):
    """One entry of ``routes[].rate_limits`` or ``rate_limiting.default_limits``."""

    key: str
    rate: str
    burst: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    name: str | None = None  # the policy name in the headers and the metric; default: the key
    on_redis_error: OnRedisError | None = None  # default: rate_limiting.on_redis_error

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        KeySpec.parse(value)
        return value

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not POLICY_NAME.match(value):
            raise ValueError("a limit name is 1-64 letters, digits or _ . : - (it is sent in RateLimit headers)")
        return value

    @model_validator(mode="after")
    def _tolerance(self) -> RateLimitConfig:
        rate = parse_rate(self.rate)
        if (self.burst or rate.count) * rate.interval_us > MAX_TOLERANCE_US:
            raise ValueError("burst / rate spans more than 366 days")
        return self


class RateLimitOverrideConfig(_Model):
    """One entry of ``rate_limiting.overrides``."""

    clients: list[str] = []
    scopes: list[str] = []
    issuers: list[str] | None = None
    routes: list[str] | None = None
    limits: list[str] | None = None
    rate: str | None = None
    burst: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    exempt: bool = False

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @model_validator(mode="after")
    def _meaningful(self) -> RateLimitOverrideConfig:
        if not (self.clients or self.scopes):
            raise ValueError("an override names the clients or scopes it is for")
        if self.exempt == (self.rate is not None or self.burst is not None):
            raise ValueError("an override sets rate and/or burst, or exempt: true (not both)")
        return self


class RateLimitingConfig(_Model):
    """The top-level ``rate_limiting`` section."""

    redis_url: str | None = None  # omitted: counters per process
    on_redis_error: OnRedisError = "allow"
    timeout: float = 0.05  # per Redis call; "50ms"
    retry_interval: float = 1.0  # Redis left alone this long after a failure
    key_prefix: str = "gateway:ratelimit:"
    headers: bool = True  # RateLimit-Policy / RateLimit on allowed responses too
    ipv6_prefix: int = Field(default=64, ge=32, le=128)
    local_max_keys: int = Field(default=100_000, ge=1)
    default_limits: list[RateLimitConfig] = []
    overrides: list[RateLimitOverrideConfig] = []

    @field_validator("timeout", "retry_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration(value)  # the configuration's one duration syntax
        if not 0.001 <= seconds <= 60:
            raise ValueError("must be between 1ms and 60s")
        return seconds


def compile_limits(
    entries: Sequence[RateLimitConfig], scope: str, default_policy: OnRedisError = "allow"
) -> tuple[Limit, ...]:
    """Config entries as limits; a missing name is the key (then ``key-2``, ``key-3`` for repeats)."""
    limits: list[Limit] = []
    names: set[str] = set()
    for entry in entries:
        rate = parse_rate(entry.rate)
        base = entry.name or str(KeySpec.parse(entry.key))
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.add(name)
        limits.append(Limit(
            name=name, key=KeySpec.parse(entry.key), rate=rate, burst=entry.burst or rate.count,
            on_redis_error=entry.on_redis_error or default_policy, scope=scope,
        ))
    return tuple(limits)


def compile_overrides(entries: Sequence[RateLimitOverrideConfig]) -> tuple[Override, ...]:
    """Config entries as overrides, in order (the first that matches a caller wins)."""
    def optional(values: list[str] | None) -> frozenset[str] | None:
        return frozenset(values) if values is not None else None

    return tuple(
        Override(
            clients=frozenset(e.clients), scopes=frozenset(e.scopes), issuers=optional(e.issuers),
            routes=optional(e.routes), limits=optional(e.limits), rate=parse_rate(e.rate) if e.rate else None,
            burst=e.burst, exempt=e.exempt,
        )
        for e in entries
    )


def route_plan(
    config: RateLimitingConfig, route: str, route_limits: Sequence[RateLimitConfig] = ()
) -> RoutePlan:
    """The limits of ``route``: the shared defaults (scope ``*``) and its own (scope: its name)."""
    limits = (
        *compile_limits(config.default_limits, "*", config.on_redis_error),
        *compile_limits(route_limits, route, config.on_redis_error),
    )
    return RoutePlan(
        route,
        before_auth=tuple(lim for lim in limits if not lim.key.needs_token),
        after_auth=tuple(lim for lim in limits if lim.key.needs_token),
    )

