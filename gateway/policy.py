"""The route's policy, checked against the validated token on every request: issuers, scopes, claims rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from . import metrics
from .reasons import Reason
from .routing import Route
from .rules import check_rules, path_parameters
from .stepup import check_step_up
from .tokens.issuer_pattern import IssuerMap
from .tokens.token import ValidatedToken


def missing_scopes(route: Route, token: ValidatedToken) -> frozenset[str]:
    """Scopes the token would need for this route; empty when it may pass.

    ``scopes`` must all be held; of ``any_scopes`` at least one. When ``any_scopes`` fails,
    all of them are reported, since any one would do.
    """
    missing = route.scopes - token.scopes
    if route.any_scopes and not (route.any_scopes & token.scopes):
        missing |= route.any_scopes
    return missing


def check_issuer(route: Route, token: ValidatedToken, issuers: IssuerMap[Any] | None = None) -> Reason | None:
    """A route may restrict which issuers' tokens it accepts.

    ``issuers`` tells the ``issuers[]`` entry the token's issuer falls under: for a tenant of a
    templated issuer, the template (docs/issuers.md). A route naming the template takes every
    tenant the template trusts; one naming a concrete tenant issuer takes that tenant only.
    """
    if route.issuers is None or token.issuer in route.issuers:
        return None
    entry = issuers.entry(token.issuer) if issuers is not None else None
    return None if entry is not None and entry in route.issuers else Reason.UNKNOWN_ISSUER


@dataclass(frozen=True, slots=True)
class ClaimsRefusal:
    """A claims rule or the step-up policy refused: the reason, the rule's name, a fixed cause."""

    reason: Reason
    rule: str | None = None  # the claims rule that refused (audit and metrics: never its inputs)
    cause: str = ""  # the rule's cause (false, error, ...) or the step-up shortfall (acr_missing, ...)


def check_claims(route: Route, token: ValidatedToken, method: str, path: str, leeway: float) -> ClaimsRefusal | None:
    """The route's CEL rules (403 ``rule_failed``), then its step-up policy (401, RFC 9470)."""
    if route.rules:
        params = _parameters(route, path)
        failure = check_rules(route.rules, token.claims, params, method, path)
        if failure is not None:
            _count_rule_denial(route.name, failure.rule)
            return ClaimsRefusal(Reason.RULE_FAILED, failure.rule, failure.cause.value)
    if route.step_up.required:
        challenge = check_step_up(route.step_up, token.claims, leeway=leeway)
        if challenge is not None:
            return ClaimsRefusal(Reason.INSUFFICIENT_USER_AUTHENTICATION, cause=challenge.shortfall.value)
    return None


def _parameters(route: Route, path: str) -> dict[str, str]:
    """What a rule reads as ``path``: the ``{name}`` segments of ``path``, the named groups of ``path_regex``."""
    if route.parameter_names:
        return path_parameters(route.parameter_names, path)
    if route.pattern is None or route.pattern.kind != "path_regex":
        return {}
    out: dict[str, str] = {}
    for name, raw in route.pattern.groups(path).items():
        try:
            out[name] = unquote(raw, errors="strict")  # as path_parameters decodes a segment
        except UnicodeDecodeError:
            continue  # left out: a rule reading it errors and denies
    return out


def _count_rule_denial(route: str, rule: str) -> None:
    metrics.count(metrics.RULE_DENIALS, route, rule)


def required_scopes(route: Route) -> list[str]:
    """What the route asks for, as written into audit records and the RFC 6750 ``scope``."""
    return sorted(route.scopes | route.any_scopes)
