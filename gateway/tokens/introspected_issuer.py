"""An issuer whose tokens are introspected (RFC 7662): the ``IssuerValidator`` around its introspection client.

``validate`` runs per request; the client (``introspection.Introspector``) keeps its own caches
and counts ``gateway_token_validations_total`` itself, for the lookups that asked the
authorization server, so that a cache hit is never counted as a validation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..reasons import Reason
from .cache import ExpiringCache
from .issuer_validator import RawToken
from .token import TokenError, ValidatedToken


class IntrospectionClient(Protocol):
    """What the validator needs from an RFC 7662 introspection client (``tokens.introspection.Introspector``).

    ``introspect`` answers from the client's own caches when it can.
    """

    issuer: str
    token_prefix: str | None
    cache: ExpiringCache[ValidatedToken]  # its positive cache, purged on a revocation

    async def introspect(self, raw: str, fp: str) -> ValidatedToken: ...

    def ready(self, now: float | None = None) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class IntrospectedIssuer:
    """Introspects the tokens of one issuer, unless the revocation list already names the token."""

    def __init__(self, client: IntrospectionClient, revoked: Callable[[str, str], bool]) -> None:
        self.client = client
        self.issuer = client.issuer
        self.token_prefix = client.token_prefix
        self._revoked = revoked  # (issuer, fingerprint) -> on the revocation list?

    async def validate(self, token: RawToken) -> ValidatedToken:
        """Ask the client, unless the revocation list already names this very token: then the
        refusal says ``revoked_token`` (not the ``inactive_token`` the authorization server would
        answer once it revoked it too) and the call is saved. The decision path checks the whole
        list again afterwards, as for every token."""
        if self._revoked(self.issuer, token.fingerprint):
            raise TokenError(Reason.REVOKED_TOKEN, "the token is on the revocation list")
        return await self.client.introspect(token.raw, token.fingerprint)

    def ready(self) -> bool:
        """False while introspection has failed for longer than the issuer's ``readiness_grace``."""
        return self.client.ready()

    async def start(self) -> None:
        """Start the client (endpoint discovery, readiness probe, shared cache)."""
        await self.client.start()

    async def stop(self) -> None:
        """Stop the client."""
        await self.client.stop()
