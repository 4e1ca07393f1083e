"""Issuer discovery (OIDC / RFC 8414) and the JWKS cache of one issuer.

Keys are fetched asynchronously (PyJWKClient's fetch would block the event loop) and
refreshed in the background. A token with an unknown ``kid`` makes the gateway look again
at once, so a key the issuer has just published works on its first token, however recently
the JWKS was fetched. What that costs the issuer stays bounded:

- single flight: concurrent lookups share one fetch in flight, and one that started after
  the token arrived answers for it;
- a token bucket: ``jwks_refetch_burst`` refetches at once, then one more per
  ``jwks_min_refresh_interval``; with the bucket empty an unknown kid is refused at once;
- negative memory: a kid that a fetch made after its token arrived did not find is refused
  without another fetch for ``jwks_min_refresh_interval`` (at most 4,096 kids remembered).

So a flood of made-up kids costs the issuer ``jwks_refetch_burst`` calls, then one per
interval. When the issuer is unreachable the last good keys stay in use. A key withdrawn
from the JWKS, or replaced by other key material under the same kid, is reported to
``on_withdrawn`` so that tokens it verified are verified again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import orjson

from .. import metrics, tracing
from ..background import cancel_and_wait
from ..config import IssuerConfig
from ..reasons import Reason
from .refetch import RecentMisses, RefetchBudget  # RefetchBudget: importable from here too
from .token import TokenError

log = logging.getLogger("gateway.jwks")

UNKNOWN_KIDS_REMEMBERED = 4096
# the members of a JWK that make up its key (RFC 7638 section 3.2 and RFC 8037 section 2)
_KEY_MEMBERS = ("kty", "crv", "n", "e", "x", "y")


class DiscoveryError(Exception):
    pass


def discovery_urls(issuer: str) -> list[str]:
    """OIDC discovery first, then the RFC 8414 location (well-known inserted before the path)."""
    parts = urlsplit(issuer)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    return [
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        f"{base}/.well-known/oauth-authorization-server{path}",
    ]


async def fetch_json(session: aiohttp.ClientSession, url: str, timeout: float) -> Any:
    with tracing.http_call("GET", url) as call:  # a JWKS or metadata fetch: a client span while tracing
        async with session.get(url, headers=call.headers, timeout=aiohttp.ClientTimeout(total=timeout),
                               allow_redirects=False) as resp:
            call.status(resp.status)
            if resp.status != 200:
                raise DiscoveryError(f"{url} answered {resp.status}")
            return await resp.json(content_type=None)


async def discover(session: aiohttp.ClientSession, issuer: str, timeout: float) -> dict[str, Any]:
    """The issuer's metadata; its ``issuer`` must equal the configured one (RFC 8414 section 3.3)."""
    errors = []
    for url in discovery_urls(issuer):
        try:
            metadata = await fetch_json(session, url, timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError, DiscoveryError) as exc:
            errors.append(f"{url}: {exc or type(exc).__name__}")
            continue
        if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
            errors.append(f"{url}: metadata names a different issuer")
            continue
        return metadata
    raise DiscoveryError("; ".join(errors))


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One signing key of an issuer's JWKS, with the ``alg`` its JWK declares (if any).

    A JWK that declares ``alg`` verifies that algorithm only (RFC 7517 section 4.4). One that
    does not verifies its key type's algorithms: an RSA key RS256/384/512 and PS256/384/512,
    any other key PyJWT's algorithm for its type and curve (ES256 for P-256, EdDSA...).
    """

    jwk: jwt.PyJWK = field(compare=False)
    declared_alg: str | None = None
    material: str = ""  # the JWK's key members: equal for the same key, whatever the JWK's other members

    @property
    def key(self) -> Any:
        """The public key object to verify with."""
        return self.jwk.key

    def verifies(self, alg: str) -> bool:
        """True when this key may verify a signature made with ``alg``."""
        if self.declared_alg is not None:
            return alg == self.declared_alg
        if self.jwk.key_type == "RSA":
            return alg[:2] in ("RS", "PS")
        return alg == self.jwk.algorithm_name


def parse_jwks(document: Any) -> dict[str, VerificationKey]:
    """Signing keys by kid; keys without kid get a positional name, unusable keys are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise DiscoveryError("the JWKS document has no keys array")
    keys: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        declared = jwk.get("alg")
        declared = declared if isinstance(declared, str) and declared else None
        material = orjson.dumps({m: jwk[m] for m in _KEY_MEMBERS if m in jwk}, default=str).decode()
        keys[str(jwk.get("kid", f"#{index}"))] = VerificationKey(key, declared, material)
    return keys


class IssuerKeys:
    """The key set of one issuer, kept apart from every other issuer's keys."""

    def __init__(
        self, config: IssuerConfig, session: aiohttp.ClientSession,
        on_withdrawn: Callable[[str], None] | None = None, label: str | None = None,
    ) -> None:
        self.config = config
        # the metric label: a tenant of a templated issuer counts under its template (bounded label values)
        self.label = label or config.issuer
        self._session = session
        self._on_withdrawn = on_withdrawn  # told when a refresh drops or replaces a key (e.g. a compromised one)
        self._keys: dict[str, VerificationKey] = {}
        self._jwks_uri = config.jwks_uri
        self.metadata: dict[str, Any] = {}
        self._budget = RefetchBudget(config.jwks_refetch_burst, config.jwks_min_refresh_interval)
        self._unknown = RecentMisses(config.jwks_min_refresh_interval, UNKNOWN_KIDS_REMEMBERED)  # kids not there
        self._started = float("-inf")  # when the latest fetch started (monotonic)
        self._succeeded = float("-inf")  # when the latest successful fetch started
        self._inflight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def start(self) -> None:
        """Load once (failures are logged, readiness stays false) and keep refreshing."""
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name=f"jwks:{self.config.issuer}")

    async def stop(self) -> None:
        await cancel_and_wait(self._refresher)

    async def _refresh_forever(self) -> None:
        while True:
            # retry sooner while nothing is loaded, so readiness comes as soon as the issuer is up
            await asyncio.sleep(self.config.jwks_refresh_interval if self.loaded else 2.0)
            await self.refresh()

    def _fetching(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    async def refresh(self) -> None:
        """Fetch the JWKS now, sharing one fetch among concurrent callers."""
        if not self._fetching():
            # stamped before the request is sent: a fetch started after a token arrived saw the JWKS of then
            self._started = time.monotonic()
            self._inflight = asyncio.create_task(self._fetch(self._started))
        assert self._inflight is not None
        await asyncio.shield(self._inflight)

    async def _fetch(self, started: float) -> None:
        issuer = self.config.issuer
        try:
            if self._jwks_uri is None:
                self.metadata = await discover(self._session, issuer, self.config.http_timeout)
                uri = self.metadata.get("jwks_uri")
                if not isinstance(uri, str):
                    raise DiscoveryError("metadata has no jwks_uri")
                self._jwks_uri = uri
            keys = parse_jwks(await fetch_json(self._session, self._jwks_uri, self.config.http_timeout))
            if not keys:
                raise DiscoveryError("the JWKS holds no usable signing key")
        except (aiohttp.ClientError, TimeoutError, ValueError, DiscoveryError) as exc:
            metrics.JWKS_REFRESH.labels(self.label, "error").inc()
            log.warning("jwks refresh failed", extra={"issuer": issuer, "error": str(exc) or type(exc).__name__})
            return
        # gone, or other key material under the same kid: what it verified must be verified again
        withdrawn = {kid for kid, key in self._keys.items() if keys.get(kid) != key}
        self._keys = keys
        self._succeeded = started
        metrics.JWKS_REFRESH.labels(self.label, "ok").inc()
        if withdrawn and self._on_withdrawn is not None:
            log.warning("jwks keys withdrawn", extra={"issuer": issuer, "kids": sorted(withdrawn)})
            self._on_withdrawn(issuer)
        log.info("jwks loaded", extra={"issuer": issuer, "kids": sorted(keys)})

    def candidates(self, kid: str | None) -> list[VerificationKey]:
        """Keys that may have signed a token with this kid (all keys when the token names none)."""
        if kid is None:
            return list(self._keys.values())
        key = self._keys.get(kid)
        return [key] if key is not None else []

    async def keys_for(self, kid: str | None) -> list[VerificationKey]:
        """Keys for ``kid``, looking at the issuer's JWKS again when none is known (see the module doc)."""
        keys = self.candidates(kid)
        if keys:
            return keys
        if kid is None or kid not in self._unknown:
            keys = await self._look_again(kid)
        if keys:
            return keys
        if not self.loaded:
            raise TokenError(Reason.JWKS_UNAVAILABLE, f"no keys loaded for {self.config.issuer}")
        raise TokenError(Reason.UNKNOWN_KEY, "no key with this kid")

    async def _look_again(self, kid: str | None) -> list[VerificationKey]:
        """The keys for ``kid`` after a fetch that started after this call, if the budget allows one."""
        arrived = time.monotonic()
        for _ in range(3):  # a fetch in flight, then one that started after we arrived: enough
            if self._fetching():
                await self.refresh()  # joins it: free for the issuer
            elif self._started < arrived and self._budget.take():
                await self.refresh()
            else:
                break
            keys = self.candidates(kid)
            if keys:
                return keys
        if kid is not None and self._succeeded >= arrived:  # looked after the token arrived: not there
            self._unknown.add(kid)
        return []
