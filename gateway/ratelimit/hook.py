"""Rate limits on the decision path, per request: a route's ``ip`` limits before the token is looked at,
its identity limits once the request is authorised.

``Decider.decide`` (decision.py) calls in here at two points of a route that has limits:

1. before the token is looked at: the route's ``ip`` limits (``RoutePlan.before_auth``), so that a
   flood of made-up tokens is refused before it costs a signature check;
2. after the request was authorised: the identity limits (``RoutePlan.after_auth``), with the
   caller's overrides. A request refused for another reason (401, 403) never spends its
   caller's budget; an ``ip`` limit counts every request of the address.

A route without limits costs one dictionary lookup and no Redis round trip. The verdict rides on
the ``Decision`` (``rate_limit``) so that every mode (proxy, decision port, middleware) answers
with the same ``RateLimit-Policy`` / ``RateLimit`` / ``Retry-After`` fields (responses.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from ..reasons import Reason
from .config import RateLimitingConfig, compile_overrides, route_plan
from .keys import bind
from .limiter import Limiter
from .limits import RoutePlan, select_limits
from .verdict import ALLOWED, Verdict, combine

if TYPE_CHECKING:
    from ..config import RouteConfig
    from ..decision import Decision



class RateLimits:
    """The limits of one configuration (one pipeline), counted by the gateway's limiter.

    The limiter (Redis connection or local counters) belongs to the Gateway and outlives
    reloads; the plans and overrides follow the configuration they were built from.
    """

    def __init__(self, config: RateLimitingConfig, routes: Iterable[RouteConfig], limiter: Limiter) -> None:
        self.limiter = limiter
        self.headers = config.headers
        self.ipv6_prefix = config.ipv6_prefix
        self.overrides = compile_overrides(config.overrides)
        plans = (route_plan(config, route.name, route.rate_limits) for route in routes)
        self.plans: dict[str, RoutePlan] = {plan.route: plan for plan in plans if plan}

    def plan(self, route: str) -> RoutePlan | None:
        """The limits of ``route``; None when it has none (nothing to check, no round trip)."""
        return self.plans.get(route)

    async def before_auth(self, plan: RoutePlan, client_ip: str) -> Verdict:
        """The ``ip`` limits, checked before the token is validated."""
        if not plan.before_auth:
            return ALLOWED
        return await self.limiter.check(plan.route, bind(plan.before_auth, None, client_ip, self.ipv6_prefix))

    async def after_auth(self, plan: RoutePlan, decision: Decision, client_ip: str, early: Verdict) -> Decision:
        """Charge an authorised request to its identity limits; the verdict goes on the decision.

        A refusal keeps the token in the decision, for the audit record; its headers are always
        sent. On other answers the RateLimit fields go out when ``rate_limiting.headers`` says so.
        """
        verdict = early
        if decision.allowed and plan.after_auth:
            limits = select_limits(plan.after_auth, self.overrides, plan.route, decision.token)
            late = await self.limiter.check(plan.route, bind(limits, decision.token, client_ip, self.ipv6_prefix))
            verdict = combine(early, late)
            if not late.allowed:
                return replace(decision, reason=late.reason or Reason.RATE_LIMITED, rate_limit=verdict,
                               detail=refusal_detail(late))
        if self.headers and (verdict.limits or verdict.states):
            return _with_rate_limit(decision, verdict)
        return decision


def _with_rate_limit(decision: Decision, verdict: Verdict) -> Decision:
    """``replace(decision, rate_limit=verdict)`` at half the cost (every allowed request of a limited
    route goes through here): the slots copied as they are, none validated again."""
    copy = object.__new__(type(decision))
    for name in type(decision).__slots__:
        object.__setattr__(copy, name, getattr(decision, name))
    object.__setattr__(copy, "rate_limit", verdict)
    return copy


def refusal_detail(verdict: Verdict) -> str:
    """The audit record's ``detail`` for a refusal: which limits said no (names from the configuration)."""
    names = ", ".join(limit.name for limit in verdict.denied_by)
    if verdict.degraded:
        return f"Redis unavailable; on_redis_error: deny for {names}"
    return f"exceeded {names}"

