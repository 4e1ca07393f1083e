"""Limits, the overrides that change them for some callers, and a route's plan of both; built offline (config)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from ..tokens.token import ValidatedToken
from .headers import sf_string
from .keys import KeySpec
from .rates import MAX_TOLERANCE_US, Rate
from .resp import bulk

OnRedisError = Literal["allow", "deny"]
# a policy name goes into a structured-field string and a metric label: keep it plain
POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Limit:
    """One enforced limit. ``scope`` namespaces its counters: the route name, or ``*`` for the
    default limits every route shares (a caller's default budget is one budget, whatever route)."""

    name: str
    key: KeySpec
    rate: Rate
    burst: int
    on_redis_error: OnRedisError = "allow"
    scope: str = "*"
    # the header texts of this limit, made once: "name" as an sf-string, and its RateLimit-Policy item
    quoted: str = field(init=False, repr=False, compare=False)
    policy: str = field(init=False, repr=False, compare=False)
    resp_args: bytes = field(init=False, repr=False, compare=False)  # interval and burst as RESP bulk strings

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if self.burst * self.rate.interval_us > MAX_TOLERANCE_US:
            raise ValueError("burst / rate spans more than 366 days")
        quoted = sf_string(self.name)
        object.__setattr__(self, "quoted", quoted)
        object.__setattr__(self, "policy", f"{quoted};q={self.rate.count};w={self.rate.period}")
        object.__setattr__(self, "resp_args", bulk(self.interval_us) + bulk(self.burst))

    @property
    def interval_us(self) -> int:
        """T, the rate's emission interval, in microseconds."""
        return self.rate.interval_us


@dataclass(frozen=True, slots=True)
class Override:
    """Another rate (or none: ``exempt``) for the callers it matches: a partner client gets more.

    It matches a token whose client is one of ``clients`` or that carries one of ``scopes``
    (either), optionally only for ``issuers``, only on ``routes`` and only for the limits named
    in ``limits`` (None: every route / every limit). The first matching override of the list
    wins, so more specific ones go first.
    """

    clients: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    issuers: frozenset[str] | None = None
    routes: frozenset[str] | None = None
    limits: frozenset[str] | None = None
    rate: Rate | None = None
    burst: int | None = None
    exempt: bool = False

    def matches(self, route: str, limit: Limit, token: ValidatedToken | None) -> bool:
        """Whether this override is for ``token``'s caller, on ``route``, for ``limit``."""
        if token is None:
            return False
        if self.routes is not None and route not in self.routes:
            return False
        if self.limits is not None and limit.name not in self.limits:
            return False
        if self.issuers is not None and token.issuer not in self.issuers:
            return False
        return (token.client_id is not None and token.client_id in self.clients) or not self.scopes.isdisjoint(
            token.scopes
        )

    def apply(self, limit: Limit) -> Limit | None:
        """The limit as this override changes it; None when the caller is exempt."""
        if self.exempt:
            return None
        rate = self.rate or limit.rate
        # a new rate without a burst gets that rate's default burst (its count)
        burst = self.burst or (rate.count if self.rate is not None else limit.burst)
        # a burst alone may not fit every limit's rate: capped where the counters stay exact
        burst = min(burst, MAX_TOLERANCE_US // rate.interval_us)
        return replace(limit, rate=rate, burst=burst)


def select_limits(
    limits: Sequence[Limit], overrides: Sequence[Override], route: str, token: ValidatedToken | None
) -> list[Limit]:
    """The limits that apply to this caller on ``route``: each replaced by its first matching
    override, dropped when that override exempts the caller."""
    if not overrides or token is None:
        return list(limits)
    selected = []
    for limit in limits:
        override = next((o for o in overrides if o.matches(route, limit, token)), None)
        changed = limit if override is None else override.apply(limit)
        if changed is not None:
            selected.append(changed)
    return selected


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A route's limits split by when they can be evaluated.

    ``before_auth`` (``ip`` limits) need no token: checked before the token is validated, so that a
    flood of bad tokens is refused before it costs signature checks. ``after_auth`` need the
    validated token (and its overrides). A route with both costs two round trips; with one kind, one;
    with none, none.
    """

    route: str
    before_auth: tuple[Limit, ...] = ()
    after_auth: tuple[Limit, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.before_auth or self.after_auth)
