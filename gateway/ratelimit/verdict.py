"""The answer of the limits of one request (``Verdict``), made from the counters' answers; per request."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..reasons import Reason
from .headers import ratelimit_headers
from .limits import Limit
from .rates import US

# the counters' answer for one limit: (allowed, remaining, reset_after µs, retry_after µs)
Answer = tuple[bool, int, int, int]


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit's state after the request: what the ``RateLimit`` header reports for it."""

    limit: Limit
    allowed: bool  # this limit alone would admit the request
    remaining: int  # requests that would pass now, after this one if it was admitted
    reset_after: float  # seconds until the bucket is full again
    retry_after: float  # seconds until this limit admits one request (0 when it does now)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for all limits of a request. ``degraded``: Redis could not be asked, and the
    limits' ``on_redis_error`` policies answered (``states`` is then empty)."""

    allowed: bool
    retry_after: float = 0.0
    states: tuple[LimitState, ...] = ()
    limits: tuple[Limit, ...] = ()
    degraded: bool = False

    @property
    def denied_by(self) -> tuple[Limit, ...]:
        """The limits that refused (with ``degraded``: those whose policy is ``deny``)."""
        if self.degraded:
            return () if self.allowed else tuple(lim for lim in self.limits if lim.on_redis_error == "deny")
        return tuple(state.limit for state in self.states if not state.allowed)

    @property
    def reason(self) -> Reason | None:
        """The decision reason of a refusal (None when allowed)."""
        if self.allowed:
            return None
        return Reason.RATE_LIMIT_UNAVAILABLE if self.degraded else Reason.RATE_LIMITED

    @property
    def retry_after_seconds(self) -> int:
        """``Retry-After`` (delay-seconds, rounded up, at least 1 on a refusal)."""
        return max(1, math.ceil(self.retry_after)) if not self.allowed else math.ceil(self.retry_after)

    def headers(self, *, retry_after: bool = True) -> list[tuple[str, str]]:
        """``RateLimit-Policy`` and ``RateLimit`` (and ``Retry-After`` on a refusal)."""
        return ratelimit_headers(self, retry_after=retry_after)


ALLOWED = Verdict(allowed=True)


def combine(*verdicts: Verdict) -> Verdict:
    """One verdict for the headers of a request checked in two steps (``before_auth`` limits, then
    ``after_auth``): refused if either refused, the longer wait, every limit's state."""
    present = [v for v in verdicts if v.limits or v.states]
    if len(present) <= 1:
        return present[0] if present else ALLOWED
    return Verdict(
        allowed=all(v.allowed for v in present), retry_after=max(v.retry_after for v in present),
        states=tuple(s for v in present for s in v.states), limits=tuple(lim for v in present for lim in v.limits),
        degraded=any(v.degraded for v in present),
    )


def _states(limits: Sequence[Limit], answers: Sequence[Answer], all_allowed: bool) -> tuple[LimitState, ...]:
    """``answers``: (allowed, remaining, reset_after µs, retry_after µs) per limit. When the
    request was refused, limits that would have admitted it were not charged: their remaining
    is one more and their bucket one interval fuller than the charged numbers say."""
    states = []
    for limit, (allowed, remaining, reset_us, retry_us) in zip(limits, answers, strict=True):
        if allowed and not all_allowed:
            remaining, reset_us = min(limit.burst, remaining + 1), max(0, reset_us - limit.interval_us)
        states.append(LimitState(limit, allowed, remaining, reset_us / US, retry_us / US))
    return tuple(states)


def verdict_of(limits: Sequence[Limit], answers: Sequence[Answer]) -> Verdict:
    """The verdict of the counters' answers, one per limit in ``limits`` order."""
    all_allowed = all(answer[0] for answer in answers)
    retry_us = 0 if all_allowed else max(answer[3] for answer in answers)
    return Verdict(all_allowed, retry_us / US, _states(limits, answers, all_allowed), tuple(limits))


def count_refusals(route: str, verdict: Verdict) -> None:
    """Count a refusal once for each limit that refused it (``gateway_rate_limited_total``)."""
    # imported here, not with the module: the configuration imports this package, and a
    # supervising parent (workers.py) loads the configuration before it may create the metrics
    from .. import metrics

    for limit in verdict.denied_by:
        metrics.RATE_LIMITED.labels(route, limit.name).inc()

