"""Step-up authentication (RFC 9470): does the token's user authentication meet the route's bar?

A route may require ``acr_values`` (the token's ``acr`` must be one of them) and/or ``max_age``
(the token's ``auth_time`` must be at most that many seconds ago). A token that falls short is
answered 401 ``error="insufficient_user_authentication"`` with the route's ``acr_values`` and
``max_age`` in the challenge, so the client knows what to ask the authorization server for.

Absent or malformed ``acr`` / ``auth_time`` claims never meet a requirement (fail closed).
``leeway`` absorbs clock skew between the authorization server and the gateway in both
directions: an ``auth_time`` up to ``leeway`` seconds in the future is accepted, and so is one up to
``max_age + leeway`` seconds old. A larger future ``auth_time`` is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

ERROR_CODE = "insufficient_user_authentication"


class Shortfall(str, Enum):
    """Which requirement the token missed; a fixed vocabulary for audit records."""

    ACR_MISSING = "acr_missing"
    ACR_NOT_ACCEPTED = "acr_not_accepted"
    AUTH_TIME_MISSING = "auth_time_missing"
    AUTH_TOO_OLD = "auth_time_too_old"
    AUTH_TIME_IN_FUTURE = "auth_time_in_future"


@dataclass(frozen=True, slots=True)
class StepUpPolicy:
    """A route's requirement; empty ``acr_values`` and no ``max_age`` mean none."""

    acr_values: tuple[str, ...] = ()
    max_age: int | None = None  # whole seconds, as the challenge carries it

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age < 0:
            raise ValueError("max_age must not be negative")
        for value in self.acr_values:
            if not value or any(c in value for c in ' "\\') or not value.isprintable():
                raise ValueError(
                    f"acr value {value!r} must be non-empty, printable and free of spaces, quotes and backslashes"
                )

    @classmethod
    def of(cls, acr_values: Sequence[str] | None, max_age: float | None) -> StepUpPolicy:
        """From config values (``max_age`` in seconds, e.g. a parsed ``5m``; rounded down)."""
        return cls(tuple(acr_values or ()), None if max_age is None else int(max_age))

    @property
    def required(self) -> bool:
        """Whether the route asks anything of the user's authentication."""
        return bool(self.acr_values) or self.max_age is not None


@dataclass(frozen=True, slots=True)
class StepUpChallenge:
    """The data of a 401 challenge: ``error``, and the route's ``acr_values`` / ``max_age``."""

    shortfall: Shortfall
    acr_values: tuple[str, ...]
    max_age: int | None

    @property
    def error(self) -> str:
        """The challenge's ``error`` code (always ``insufficient_user_authentication``)."""
        return ERROR_CODE

    def parameters(self) -> list[tuple[str, str]]:
        """Auth-params in the order RFC 9470 shows them; values unquoted (the caller quotes).

        ``acr_values`` is space-separated in order of preference; ``max_age`` is a decimal count
        of seconds.
        """
        params = [("error", ERROR_CODE)]
        if self.acr_values:
            params.append(("acr_values", " ".join(self.acr_values)))
        if self.max_age is not None:
            params.append(("max_age", str(self.max_age)))
        return params


def _auth_time(value: Any) -> float | None:
    """A NumericDate (JSON number, not a boolean, finite) or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _shortfall(policy: StepUpPolicy, claims: Mapping[str, Any], now: float, leeway: float) -> Shortfall | None:
    if policy.acr_values:
        acr = claims.get("acr")
        if not isinstance(acr, str) or not acr:
            return Shortfall.ACR_MISSING
        if acr not in policy.acr_values:
            return Shortfall.ACR_NOT_ACCEPTED
    if policy.max_age is not None:
        auth_time = _auth_time(claims.get("auth_time"))
        if auth_time is None:
            return Shortfall.AUTH_TIME_MISSING
        if auth_time > now + leeway:
            return Shortfall.AUTH_TIME_IN_FUTURE
        if now - auth_time > policy.max_age + leeway:
            return Shortfall.AUTH_TOO_OLD
    return None


def check_step_up(
    policy: StepUpPolicy, claims: Mapping[str, Any], *, now: float | None = None, leeway: float = 0.0
) -> StepUpChallenge | None:
    """None when the token's ``acr`` and ``auth_time`` meet the policy; otherwise the challenge."""
    if not policy.required:
        return None
    shortfall = _shortfall(policy, claims, time.time() if now is None else now, leeway)
    if shortfall is None:
        return None
    return StepUpChallenge(shortfall, policy.acr_values, policy.max_age)
