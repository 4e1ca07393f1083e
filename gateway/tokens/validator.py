"""Turns a raw bearer token into a ValidatedToken, per request: the cache, then the issuer's validator.

Each issuer has one ``IssuerValidator`` (issuer_validator.py): ``JwtIssuer``, ``IntrospectedIssuer``
or, for a templated issuer, ``TemplatedIssuer``. Routing of a token to an issuer:
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
``gateway_token_validations_total`` counts real validations only: a JWT verification (its issuer's validator),
an introspection call (or a refusal without one: an unknown issuer, no issuer that
introspects) but never a cache hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from .. import metrics
from ..config import GatewayConfig
from ..reasons import Reason
from .cache import ExpiringCache
from .introspected_issuer import IntrospectedIssuer, IntrospectionClient
from .issuer_validator import IssuerValidator, RawToken
from .jwks import IssuerKeys
from .jws import jwt_parts
from .jwt import JwtValidator
from .jwt_issuer import JwtIssuer
from .tenants import TemplatedIssuer
from .token import TokenError, ValidatedToken, cache_key, fingerprint

__all__ = ["IntrospectionClient", "TokenValidator", "jwt_parts"]


class TokenValidator:
    """Validates bearer tokens for every configured issuer; keys are never shared between issuers."""

    def __init__(self, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        # a JWT's (unverified) iss -> the validator of that issuer: JWT issuers now, introspecting ones added
        self.issuers: dict[str, IssuerValidator] = {
            i.issuer: JwtIssuer(i, session, self._forget_issuer)
            for i in config.issuers if i.validation == "jwt" and not i.templated
        }
        # templated issuers ({tenant}): each tenant's keys apart, fetched on its first token (tenants.py)
        self.templates = [TemplatedIssuer(i, session, self._forget_issuer) for i in config.issuers if i.templated]
        self._introspecting: list[IntrospectedIssuer] = []  # for opaque tokens, in configured order
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

    def _known_revoked(self, issuer: str, fp: str) -> bool:
        return self.revoked is not None and self.revoked(issuer, fp)

    def add_introspector(self, introspector: IntrospectionClient) -> None:
        """Introspect opaque tokens of ``introspector.issuer`` and, for ``validation: introspection``, its JWTs."""
        validator = IntrospectedIssuer(introspector, self._known_revoked)
        self._introspecting.append(validator)
        self.issuers.setdefault(validator.issuer, validator)  # an issuer that verifies its JWTs keeps doing so

    # --- views by kind (readiness, reload, revocation intake, tests) ----------------------

    @property
    def _jwt_issuers(self) -> list[JwtIssuer]:
        return [v for v in self.issuers.values() if isinstance(v, JwtIssuer)]

    @property
    def keys(self) -> dict[str, IssuerKeys]:
        """The key set of every issuer configured by name that verifies JWTs."""
        return {v.issuer: v.keys for v in self._jwt_issuers}

    @property
    def jwt(self) -> dict[str, JwtValidator]:
        """The JWT verifier of every issuer configured by name that verifies JWTs."""
        return {v.issuer: v.verifier for v in self._jwt_issuers}

    @property
    def introspectors(self) -> dict[str, IntrospectionClient]:
        """The introspection client of every issuer that has one."""
        return {v.issuer: v.client for v in self._introspecting}

    @property
    def ready(self) -> bool:
        """True once every JWT issuer has keys."""
        return all(v.ready() for v in self._jwt_issuers)

    @property
    def introspection_ready(self) -> bool:
        """False while an issuer's introspection has failed for longer than its ``readiness_grace``."""
        return all(v.ready() for v in self._introspecting)

    def _lifecycle(self) -> list[IssuerValidator]:
        # JWT issuers first: an introspection client may read the discovery metadata their keys fetched
        return [*self._jwt_issuers, *self.templates, *self._introspecting]

    async def start(self) -> None:
        """Start every issuer's background work (key loads and refreshes, introspection probes)."""
        for validator in self._lifecycle():
            await validator.start()

    async def stop(self) -> None:
        """Stop every issuer's background work."""
        for validator in self._lifecycle():
            await validator.stop()

    # --- per request ----------------------------------------------------------------------

    async def validate(self, raw: str, fp: str | None = None) -> ValidatedToken:
        """The validated token, from the cache when this exact token was verified before.

        ``fp`` is the token's fingerprint (its identity), computed by the caller when given, else
        here when needed: a cache hit carries it already (the cached token's, computed from these bytes).
        """
        if raw.count(".") != 2:  # not a JWT: never in this cache, the introspectors cache their own
            return await self._introspect_opaque(RawToken(raw, fp or fingerprint(raw)))
        key = cache_key(raw)  # the exact bytes: a twin or a forged signature is verified on its own
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        token = await self._validate_uncached(raw, fp or fingerprint(raw))
        if token.source != "introspection":  # the introspector caches its own, never past cache_ttl
            self.cache.put(key, token)
        return token

    async def _validate_uncached(self, raw: str, fp: str) -> ValidatedToken:
        parts = jwt_parts(raw)
        if parts is None:
            return await self._introspect_opaque(RawToken(raw, fp))
        header, payload = parts
        issuer = payload.get("iss")
        validator = self._validator_for(issuer) if isinstance(issuer, str) else None
        if validator is None:
            metrics.TOKEN_VALIDATIONS.labels("unknown", Reason.UNKNOWN_ISSUER.value).inc()
            raise TokenError(Reason.UNKNOWN_ISSUER, "the token names no trusted issuer")
        return await validator.validate(RawToken(raw, fp, header, payload))

    def _validator_for(self, issuer: str) -> IssuerValidator | None:
        """The issuer configured by that name, else the template that has it as a trusted tenant."""
        found = self.issuers.get(issuer)
        if found is not None:
            return found
        return next((t for t in self.templates if t.tenant_of(issuer) is not None), None)

    async def _introspect_opaque(self, token: RawToken) -> ValidatedToken:
        raw = token.raw
        candidates = [i for i in self._introspecting if i.token_prefix and raw.startswith(i.token_prefix)]
        if not candidates:
            candidates = [i for i in self._introspecting if not i.token_prefix]
        if not candidates:
            metrics.TOKEN_VALIDATIONS.labels("unknown", Reason.INVALID_TOKEN.value).inc()
            raise TokenError(Reason.INVALID_TOKEN, "not a JWT and no issuer introspects tokens")
        failure: TokenError | None = None
        for validator in candidates:
            try:
                return await validator.validate(token)
            except TokenError as exc:
                # an outage must not be hidden by a later issuer's "inactive": fail closed with 503
                if failure is None or exc.reason is Reason.INTROSPECTION_UNAVAILABLE:
                    failure = exc
        assert failure is not None
        raise failure
