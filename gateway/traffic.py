"""Traffic control on the one decision path: rate limits, and what a WebSocket upgrade may carry.

``Decider.decide`` (decision.py) calls in here at two points of a route that has limits:

1. before the token is looked at: the route's ``ip`` limits (``RoutePlan.before_auth``), so that a
   flood of made-up tokens is refused before it costs a signature check;
2. after the request was authorised: the identity limits (``RoutePlan.after_auth``), with the
   caller's overrides. A request refused for another reason (401, 403) never spends its
   caller's budget; an ``ip`` limit counts every request of the address.

A route without limits costs one dictionary lookup and no Redis round trip. The verdict rides on
the ``Decision`` (``rate_limit``) so that every mode (proxy, decision port, middleware) answers
with the same ``RateLimit-Policy`` / ``RateLimit`` / ``Retry-After`` fields (responses.py).

Browsers cannot set ``Authorization`` on a WebSocket, so a route may take the token from one
``Sec-WebSocket-Protocol`` value, ``<prefix><base64url(token)>`` (Kubernetes does this with
``base64url.bearer.authorization.k8s.io.``). ``protocol_token`` finds and decodes it and returns
the other offered protocols, which are all the upstream ever sees (websocket.py).

Nothing here imports the decision or the proxy: config.py validates with ``check_protocol_prefix``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from .ratelimit import (
    ALLOWED,
    Limiter,
    RateLimitingConfig,
    RoutePlan,
    Verdict,
    bind,
    combine,
    compile_overrides,
    route_plan,
    select_limits,
)
from .reasons import Reason

if TYPE_CHECKING:
    from .config import RouteConfig
    from .decision import Decision

_TCHAR = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: what a subprotocol value is
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


# --- rate limits ---------------------------------------------------------------------------


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


# --- the token in Sec-WebSocket-Protocol ---------------------------------------------------


class ProtocolTokenError(ValueError):
    """The Sec-WebSocket-Protocol token is malformed or ambiguous (answered 400, like a bad Authorization)."""


Offer = CIMultiDictProxy[str] | CIMultiDict[str] | Sequence[str]  # the request headers, or the lines


def offered_protocols(offer: Offer) -> list[str]:
    """The subprotocols the client offered, in order, over every Sec-WebSocket-Protocol line."""
    lines = offer.getall("Sec-WebSocket-Protocol", ()) if isinstance(offer, CIMultiDictProxy | CIMultiDict) else offer
    return [p.strip() for line in lines for p in line.split(",") if p.strip()]


def check_protocol_prefix(prefix: str | None) -> str | None:
    """A usable prefix: a non-empty RFC 9110 token of at most 128 characters (config validation)."""
    if prefix is not None and (not isinstance(prefix, str) or not _TCHAR.match(prefix) or len(prefix) > 128):
        raise ValueError("a token protocol prefix is 1-128 token characters, like base64url.bearer.")
    return prefix


def encode_protocol_token(token: str, prefix: str) -> str:
    """The protocol value a client offers for ``token`` (base64url without padding, after ``prefix``)."""
    return prefix + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def protocol_token(offer: Offer, prefix: str) -> tuple[str | None, list[str]]:
    """(the token, the other offered protocols); (None, all offered) when none carries a token.

    ProtocolTokenError when more than one value carries a token (which one counts would be a
    guess), the encoding is not unpadded base64url, or the token is not printable ASCII.
    """
    offered = offered_protocols(offer)
    carrying = [p for p in offered if p.startswith(prefix)]
    if not carrying:
        return None, offered
    if len(carrying) > 1:
        raise ProtocolTokenError("more than one Sec-WebSocket-Protocol value carries a token")
    encoded = carrying[0][len(prefix):]
    if not encoded or not _BASE64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise ProtocolTokenError("the Sec-WebSocket-Protocol token is not base64url")
    try:
        token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise ProtocolTokenError("the Sec-WebSocket-Protocol token is not base64url ASCII") from None
    if not token or not token.isprintable() or " " in token:
        raise ProtocolTokenError("the Sec-WebSocket-Protocol token holds characters a token cannot have")
    return token, [p for p in offered if p != carrying[0]]


def websocket_token(lines: Sequence[str], prefix: str) -> str | Reason | None:
    """The token of a WebSocket upgrade's Sec-WebSocket-Protocol lines (decision path); None when
    no value carries one, MALFORMED_AUTHORIZATION when it cannot be read."""
    if not lines:
        return None
    try:
        return protocol_token(lines, prefix)[0]
    except ProtocolTokenError:
        return Reason.MALFORMED_AUTHORIZATION


def asks_websocket(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Whether a request asks for a WebSocket: ``Upgrade: websocket`` with the ``upgrade`` option in
    ``Connection`` (RFC 9110 7.8, RFC 6455 4.1). An ``Upgrade`` alone is a hop-by-hop header, dropped."""
    upgrade = headers.get("Upgrade")
    if upgrade is None or not any(v.strip().lower() == "websocket" for v in upgrade.split(",")):
        return False
    return any(o.strip().lower() == "upgrade" for line in headers.getall("Connection", ()) for o in line.split(","))
