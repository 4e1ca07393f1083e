"""The one interface every way of validating an issuer's tokens implements (Oathkeeper's authenticator).

``validator.TokenValidator`` picks the implementation per issuer and calls it per request, on a
cache miss: ``jwt_issuer.JwtIssuer`` (a JWT against the issuer's JWKS), ``introspected_issuer.
IntrospectedIssuer`` (RFC 7662) and ``tenants.TemplatedIssuer`` (a JWT against its tenant's keys).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import metrics
from .token import TokenError, ValidatedToken


@dataclass(frozen=True, slots=True)
class RawToken:
    """A presented token: its exact text, its fingerprint and, for a JWT, its unverified header and payload."""

    raw: str
    fingerprint: str
    header: dict[str, Any] | None = None  # None: not a JWT (an opaque token)
    payload: dict[str, Any] | None = None


class IssuerValidator(Protocol):
    """Validates the tokens of one configured issuer; keys and caches are never shared between issuers."""

    issuer: str  # as configured (a templated issuer's template): the metric label

    async def validate(self, token: RawToken) -> ValidatedToken:
        """The validated token, or TokenError saying why it is refused."""
        ...

    def ready(self) -> bool:
        """True when this issuer can validate tokens now (its keys loaded, its introspection answering)."""
        ...

    async def start(self) -> None:
        """Start the background work (key refresh, readiness probe); failures are retried later."""
        ...

    async def stop(self) -> None:
        """Stop the background work and release connections."""
        ...


async def counted(label: str, validation: Awaitable[ValidatedToken]) -> ValidatedToken:
    """Await a validation that did the work itself (a signature check) and count its outcome under ``label``.

    ``gateway_token_validations_total`` counts real validations only, so cache hits never come here.
    """
    try:
        token = await validation
    except TokenError as exc:
        metrics.TOKEN_VALIDATIONS.labels(label, exc.reason.value).inc()
        raise
    metrics.TOKEN_VALIDATIONS.labels(label, "valid").inc()
    return token
