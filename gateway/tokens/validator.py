"""Turns a raw bearer token into a ValidatedToken: cache, then JWT or introspection.

Routing of a token to an issuer:
1. a JWT goes to the issuer named by its (unverified) ``iss``; that issuer verifies it
   with its own keys, or introspects it when it says ``validation: introspection``; an ``iss``
   that is a trusted tenant of a templated issuer is verified with that tenant's keys (tenants.py);
2. any other token goes to introspection: first the issuer whose ``token_prefix``
   starts the token, otherwise the issuers that introspect, in configured order,
   until one answers ``active: true``.

Only JWT-shaped tokens are looked up in (and put into) the verified-token cache; the
introspection clients keep their own caches. The cache is keyed by the hash of the token's
exact bytes (``cache_key``), not by its fingerprint: a forged signature over the header and
payload of a cached token is a miss, and is verified (and refused) like any other token.
``gateway_token_validations_total`` counts real validations only: a JWT verification here,
an introspection call (or a refusal without one: an unknown issuer, no issuer that
introspects) but never a cache hit.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import jwt
import orjson

from .. import metrics
from ..config import GatewayConfig
from ..reasons import Reason
from .cache import ExpiringCache
from .jwks import IssuerKeys
from .jwt import JwtValidator
from .tenants import TemplatedIssuer
from .token import TokenError, ValidatedToken, cache_key, fingerprint


class IntrospectionClient(Protocol):
    """What the validator needs from an RFC 7662 introspection client (``tokens.introspection.Introspector``).

    ``introspect`` answers from the client's own caches when it can; the client counts
    ``gateway_token_validations_total`` itself, for the lookups that asked the
    authorization server, so that a cache hit is never counted as a validation.
    """

    issuer: str
    token_prefix: str | None
    cache: ExpiringCache[ValidatedToken]  # its positive cache, purged on a revocation

    async def introspect(self, raw: str, fp: str) -> ValidatedToken: ...

    def ready(self, now: float | None = None) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def jwt_parts(raw: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and unverified payload when ``raw`` is shaped like a JWS compact token, else None."""
    if raw.count(".") != 2:
        return None
    try:
        header = jwt.get_unverified_header(raw)
        payload_segment = raw.split(".", 2)[1]
        payload = orjson.loads(base64.urlsafe_b64decode(payload_segment + "=" * (-len(payload_segment) % 4)))
    except (jwt.PyJWTError, ValueError, TypeError, orjson.JSONDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    return header, payload


class TokenValidator:
    """Validates bearer tokens for every configured issuer; keys are never shared between issuers."""

    def __init__(self, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        self.keys = {
            i.issuer: IssuerKeys(i, session, self._forget_issuer)
            for i in config.issuers if i.validation == "jwt" and not i.templated
        }
        # templated issuers ({tenant}): each tenant's keys apart, fetched on its first token (tenants.py)
        self.templates = [TemplatedIssuer(i, session, self._forget_issuer) for i in config.issuers if i.templated]
        self.jwt = {name: JwtValidator(keys.config, keys) for name, keys in self.keys.items()}
        self.introspectors: dict[str, IntrospectionClient] = {}
        self.cache: ExpiringCache[ValidatedToken] = ExpiringCache(
            "verified_token", config.verified_token_cache_size, lambda t: t.expires_at, lambda t: t.fingerprint
        )
        self._forgetting: set[asyncio.Task[int]] = set()
        # (issuer, fingerprint) -> revoked?: the revocation list, asked before an introspection call
        self.revoked: Callable[[str, str], bool] | None = None

    def _forget_issuer(self, issuer: str) -> None:
        """An issuer withdrew a key, or replaced it under the same kid: tokens it signed must not
        pass on a cached verification, so every cached token of that issuer is verified again
        on its next use."""
        task = asyncio.get_running_loop().create_task(self.cache.discard_where(lambda t: t.issuer == issuer))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    def add_introspector(self, introspector: IntrospectionClient) -> None:
        self.introspectors[introspector.issuer] = introspector

    @property
    def ready(self) -> bool:
        """True once every JWT issuer has keys."""
        return all(keys.loaded for keys in self.keys.values())

    @property
    def introspection_ready(self) -> bool:
        """False while an issuer's introspection has failed for longer than its ``readiness_grace``."""
        return all(introspector.ready() for introspector in self.introspectors.values())

    async def start(self) -> None:
        for keys in self.keys.values():
            await keys.start()
        for introspector in self.introspectors.values():
            await introspector.start()

    async def stop(self) -> None:
        for keys in self.keys.values():
            await keys.stop()
        for template in self.templates:
            await template.stop()
        for introspector in self.introspectors.values():
            await introspector.stop()

    async def validate(self, raw: str, fp: str | None = None) -> ValidatedToken:
        """The validated token, from the cache when this exact token was verified before.

        ``fp`` is the token's fingerprint (its identity), computed by the caller when given.
        """
        fp = fp or fingerprint(raw)
        if raw.count(".") != 2:  # not a JWT: never in this cache, the introspectors cache their own
            return await self._introspect_opaque(raw, fp)
        key = cache_key(raw)  # the exact bytes: a twin or a forged signature is verified on its own
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        token = await self._validate_uncached(raw, fp)
        if token.source != "introspection":  # the introspector caches its own, never past cache_ttl
            self.cache.put(key, token)
        return token

    async def _validate_uncached(self, raw: str, fp: str) -> ValidatedToken:
        parts = jwt_parts(raw)
        if parts is None:
            return await self._introspect_opaque(raw, fp)
        header, payload = parts
        issuer = payload.get("iss")
        if isinstance(issuer, str):
            if issuer in self.jwt:
                return await self._verify(issuer, raw, header, fp)
            if issuer in self.introspectors:  # validation: introspection
                return await self._introspect(self.introspectors[issuer], raw, fp)
            for template in self.templates:
                tenant = template.tenant_of(issuer)
                if tenant is not None:
                    return await self._verify_tenant(template, issuer, tenant, raw, header, payload, fp)
        metrics.TOKEN_VALIDATIONS.labels("unknown", Reason.UNKNOWN_ISSUER.value).inc()
        raise TokenError(Reason.UNKNOWN_ISSUER, "the token names no trusted issuer")

    async def _verify(self, issuer: str, raw: str, header: dict[str, Any], fp: str) -> ValidatedToken:
        try:
            token = await self.jwt[issuer].validate(raw, header, fp)
        except TokenError as exc:
            metrics.TOKEN_VALIDATIONS.labels(issuer, exc.reason.value).inc()
            raise
        metrics.TOKEN_VALIDATIONS.labels(issuer, "valid").inc()
        return token

    async def _verify_tenant(self, template: TemplatedIssuer, issuer: str, tenant: str, raw: str,
                             header: dict[str, Any], payload: dict[str, Any], fp: str) -> ValidatedToken:
        label = template.config.issuer  # the template: one label value however many tenants
        try:
            token = await template.validate(issuer, tenant, raw, header, payload, fp)
        except TokenError as exc:
            metrics.TOKEN_VALIDATIONS.labels(label, exc.reason.value).inc()
            raise
        metrics.TOKEN_VALIDATIONS.labels(label, "valid").inc()
        return token

    async def _introspect_opaque(self, raw: str, fp: str) -> ValidatedToken:
        candidates = [i for i in self.introspectors.values() if i.token_prefix and raw.startswith(i.token_prefix)]
        if not candidates:
            candidates = [i for i in self.introspectors.values() if not i.token_prefix]
        if not candidates:
            metrics.TOKEN_VALIDATIONS.labels("unknown", Reason.INVALID_TOKEN.value).inc()
            raise TokenError(Reason.INVALID_TOKEN, "not a JWT and no issuer introspects tokens")
        failure: TokenError | None = None
        for introspector in candidates:
            try:
                return await self._introspect(introspector, raw, fp)
            except TokenError as exc:
                # an outage must not be hidden by a later issuer's "inactive": fail closed with 503
                if failure is None or exc.reason is Reason.INTROSPECTION_UNAVAILABLE:
                    failure = exc
        assert failure is not None
        raise failure

    async def _introspect(self, introspector: IntrospectionClient, raw: str, fp: str) -> ValidatedToken:
        """Ask the introspector, unless the revocation list already names this very token: then the
        refusal says ``revoked_token`` (not the ``inactive_token`` the authorization server would
        answer once it revoked it too) and the call is saved. The decision path checks the whole
        list again afterwards, as for every token."""
        if self.revoked is not None and self.revoked(introspector.issuer, fp):
            raise TokenError(Reason.REVOKED_TOKEN, "the token is on the revocation list")
        return await introspector.introspect(raw, fp)
