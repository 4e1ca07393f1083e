"""The route's scope policy, checked against the validated token on every request."""

from __future__ import annotations

from .reasons import Reason
from .routing import Route
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


def check_issuer(route: Route, token: ValidatedToken) -> Reason | None:
    """A route may restrict which issuers' tokens it accepts."""
    if route.issuers is not None and token.issuer not in route.issuers:
        return Reason.UNKNOWN_ISSUER
    return None


def check_binding(token: ValidatedToken) -> Reason | None:
    """A sender-constrained token may only be used with proof of the key it is bound to.

    ``cnf`` (RFC 7800) binds a token to a key: ``jkt`` to a DPoP key (RFC 9449), ``x5t#S256``
    to a TLS client certificate (RFC 8705), in a JWT or an introspection answer alike. The
    gateway verifies no such proof yet, so a bound token is refused whatever its ``cnf`` holds,
    never accepted as a plain bearer token: whoever replays a stolen one has no key to prove.
    """
    if "cnf" in token.claims:
        return Reason.UNPROVEN_BINDING
    return None


def required_scopes(route: Route) -> list[str]:
    """What the route asks for, as written into audit records and the RFC 6750 ``scope``."""
    return sorted(route.scopes | route.any_scopes)
