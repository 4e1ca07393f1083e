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
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp

from ..config import IssuerConfig
from ..reasons import Reason
from .issuer_pattern import IssuerTemplate
from .jwks import IssuerKeys, RefetchBudget
from .jwt import JwtValidator
from .token import TokenError, ValidatedToken

FAILED_TENANTS_REMEMBERED = 4096


class TemplatedIssuer:
    """One templated ``issuers[]`` entry: its tenants' validators, made on first use."""

    def __init__(
        self, config: IssuerConfig, session: aiohttp.ClientSession, on_withdrawn: Callable[[str], None],
    ) -> None:
        self.config = config
        self.template = IssuerTemplate.of(config.issuer, config.tenants, config.tenant_claim)
        self._session = session
        self._on_withdrawn = on_withdrawn  # a tenant's key withdrawn, or the tenant dropped: re-verify its tokens
        self._tenants: OrderedDict[str, JwtValidator] = OrderedDict()  # concrete issuer -> validator (LRU)
        self._pending: dict[str, asyncio.Task[JwtValidator]] = {}  # discoveries in flight (single flight)
        self._failed: OrderedDict[str, float] = OrderedDict()  # concrete issuer -> refused without a fetch until
        self._budget = RefetchBudget(config.jwks_refetch_burst, config.jwks_min_refresh_interval)

    def tenant_of(self, issuer: str) -> str | None:
        """The trusted tenant a token's ``iss`` names; None when this template does not cover it."""
        return self.template.trusted_tenant(issuer)

    async def validate(self, issuer: str, tenant: str, raw: str, header: dict[str, Any],
                       payload: dict[str, Any], fp: str) -> ValidatedToken:
        """Verify a token of ``issuer`` (a tenant of this template) with that tenant's keys."""
        claim = self.template.tenant_claim
        if claim is not None and payload.get(claim) != tenant:  # checked before anything is fetched
            raise TokenError(Reason.UNKNOWN_ISSUER, f"the {claim} claim does not name the tenant of the issuer")
        validator = await self._validator(issuer, tenant)
        token = await validator.validate(raw, header, fp)
        if claim is not None and token.claims.get(claim) != tenant:  # and again, signed
            raise TokenError(Reason.UNKNOWN_ISSUER, f"the {claim} claim does not name the tenant of the issuer")
        return token

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
            if self._recently_failed(issuer):
                raise TokenError(Reason.JWKS_UNAVAILABLE, "the tenant's keys could not be loaded a moment ago")
            if not self._budget.take():
                raise TokenError(Reason.JWKS_UNAVAILABLE, "too many new tenants at once: try again shortly")
            pending = self._pending[issuer] = asyncio.create_task(self._discover(issuer, tenant))
            pending.add_done_callback(self._settled)
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
            self._remember_failure(issuer)
            raise TokenError(Reason.JWKS_UNAVAILABLE, "the tenant's keys could not be loaded")
        validator = JwtValidator(config, keys)
        self._tenants[issuer] = validator
        while len(self._tenants) > self.config.max_tenants:
            dropped, old = self._tenants.popitem(last=False)
            await old.keys.stop()
            self._on_withdrawn(dropped)  # its cached tokens are verified again, with keys fetched anew
        return validator

    def _settled(self, task: asyncio.Task[JwtValidator]) -> None:
        self._pending = {issuer: t for issuer, t in self._pending.items() if t is not task}
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have been cancelled meanwhile

    def _recently_failed(self, issuer: str) -> bool:
        until = self._failed.get(issuer)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._failed[issuer]
        return False

    def _remember_failure(self, issuer: str) -> None:
        self._failed[issuer] = time.monotonic() + self.config.jwks_min_refresh_interval
        self._failed.move_to_end(issuer)
        while len(self._failed) > FAILED_TENANTS_REMEMBERED:
            self._failed.popitem(last=False)

    @property
    def tenants(self) -> list[str]:
        """The concrete issuers whose keys are loaded, least recently used first."""
        return list(self._tenants)

    async def stop(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        for validator in self._tenants.values():
            await validator.keys.stop()
