"""The keys of a templated issuer's tenants: discovered on first use, kept apart per tenant.

A token whose ``iss`` matches a templated issuer (``issuer_pattern.py``) and names a trusted
tenant is verified with that tenant's keys only: each tenant has its own ``IssuerKeys``
(discovery at ``{its issuer}/.well-known/...``, its own JWKS cache, refresh, unknown-``kid``
refetch budget and negative memory, exactly as an issuer configured by name). A key of one
tenant never verifies another tenant's token, even where both publish the same JWKS.

Nothing is fetched for a tenant before its first token. What unknown tenants can cost:

- with ``tenants:`` only those tenants are ever fetched, any other ``iss`` is ``unknown_issuer``;
- with ``tenant_claim`` the token's (unverified, then verified) claim must name the tenant of
  its ``iss`` before anything is fetched;
- a new tenant's discovery takes a token of a bucket shared by the template
  (``jwks_refetch_burst`` at once, one more per ``jwks_min_refresh_interval``); one whose
  discovery failed is refused without a fetch for ``jwks_min_refresh_interval``; with the
  bucket empty a new tenant is ``jwks_unavailable`` (503) until it refills;
- at most ``max_tenants`` tenants keep keys: past that the least recently used one is dropped
  (its background refresh stops, its cached tokens are verified again on their next use).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp

from ..config import IssuerConfig
from ..reasons import Reason
from .issuer_pattern import IssuerTemplate
from .issuer_validator import RawToken, counted
from .jwks import IssuerKeys
from .jwt import JwtValidator
from .refetch import RecentMisses, RefetchBudget
from .single_flight import SingleFlight
from .token import TokenError, ValidatedToken

FAILED_TENANTS_REMEMBERED = 4096


class TemplatedIssuer:
    """One templated ``issuers[]`` entry: its tenants' validators, made on first use."""

    def __init__(
        self, config: IssuerConfig, session: aiohttp.ClientSession, on_withdrawn: Callable[[str], None],
    ) -> None:
        self.config = config
        self.issuer = config.issuer  # the template: the metric label
        self.template = IssuerTemplate.of(config.issuer, config.tenants, config.tenant_claim)
        self._session = session
        self._on_withdrawn = on_withdrawn  # a tenant's key withdrawn, or the tenant dropped: re-verify its tokens
        self._tenants: OrderedDict[str, JwtValidator] = OrderedDict()  # concrete issuer -> validator (LRU)
        self._pending: SingleFlight[JwtValidator] = SingleFlight()  # discoveries in flight
        self._failed = RecentMisses(config.jwks_min_refresh_interval, FAILED_TENANTS_REMEMBERED)  # discovery failed
        self._budget = RefetchBudget(config.jwks_refetch_burst, config.jwks_min_refresh_interval)

    def tenant_of(self, issuer: str) -> str | None:
        """The trusted tenant a token's ``iss`` names; None when this template does not cover it."""
        return self.template.trusted_tenant(issuer)

    async def validate(self, token: RawToken) -> ValidatedToken:
        """Verify a token whose ``iss`` is a tenant of this template with that tenant's keys.

        Counted as a validation under the template (one label value however many tenants).
        """
        assert token.header is not None and token.payload is not None  # the validator sends JWTs only
        issuer = token.payload.get("iss")
        tenant = self.tenant_of(issuer) if isinstance(issuer, str) else None
        if not isinstance(issuer, str) or tenant is None:  # the validator sends tokens of trusted tenants only
            raise TokenError(Reason.UNKNOWN_ISSUER, "the token names no trusted issuer")
        return await counted(self.issuer, self._validate(issuer, tenant, token))

    async def _validate(self, issuer: str, tenant: str, token: RawToken) -> ValidatedToken:
        claim = self.template.tenant_claim
        assert token.header is not None and token.payload is not None
        if claim is not None and token.payload.get(claim) != tenant:  # checked before anything is fetched
            raise TokenError(Reason.UNKNOWN_ISSUER, f"the {claim} claim does not name the tenant of the issuer")
        validator = await self._validator(issuer, tenant)
        verified = await validator.validate(token.raw, token.header, token.fingerprint)
        if claim is not None and verified.claims.get(claim) != tenant:  # and again, signed
            raise TokenError(Reason.UNKNOWN_ISSUER, f"the {claim} claim does not name the tenant of the issuer")
        return verified

    def ready(self) -> bool:
        """Always: a tenant's keys are fetched on its first token, so readiness waits for none."""
        return True

    async def start(self) -> None:
        """Nothing to start: no tenant is fetched before its first token."""

    def verifier(self, issuer: str) -> JwtValidator | None:
        """The validator of a tenant whose keys are loaded (None before its first token)."""
        return self._tenants.get(issuer)

    async def _validator(self, issuer: str, tenant: str) -> JwtValidator:
        known = self._tenants.get(issuer)
        if known is not None:
            self._tenants.move_to_end(issuer)
            return known
        pending = self._pending.get(issuer)
        if pending is None:
            if issuer in self._failed:
                raise TokenError(Reason.JWKS_UNAVAILABLE, "the tenant's keys could not be loaded a moment ago")
            if not self._budget.take():
                raise TokenError(Reason.JWKS_UNAVAILABLE, "too many new tenants at once: try again shortly")
            pending = self._pending.start(issuer, self._discover(issuer, tenant))
        return await asyncio.shield(pending)

    async def _discover(self, issuer: str, tenant: str) -> JwtValidator:
        update: dict[str, Any] = {"issuer": issuer, "tenants": None, "tenant_claim": None}
        if self.config.jwks_uri is not None:
            update["jwks_uri"] = self.template.concrete(tenant, self.config.jwks_uri)
        config = self.config.model_copy(update=update)
        keys = IssuerKeys(config, self._session, self._on_withdrawn, label=self.config.issuer)
        await keys.start()  # one fetch now, then the background refresh
        if not keys.loaded:
            await keys.stop()
            self._failed.add(issuer)
            raise TokenError(Reason.JWKS_UNAVAILABLE, "the tenant's keys could not be loaded")
        validator = JwtValidator(config, keys)
        self._tenants[issuer] = validator
        while len(self._tenants) > self.config.max_tenants:
            dropped, old = self._tenants.popitem(last=False)
            await old.keys.stop()
            self._on_withdrawn(dropped)  # its cached tokens are verified again, with keys fetched anew
        return validator

    @property
    def tenants(self) -> list[str]:
        """The concrete issuers whose keys are loaded, least recently used first."""
        return list(self._tenants)

    async def stop(self) -> None:
        """Cancel the discoveries in flight and stop every tenant's key refresh."""
        for task in self._pending.tasks():
            task.cancel()
        for validator in self._tenants.values():
            await validator.keys.stop()
