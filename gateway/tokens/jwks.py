"""Issuer discovery (OIDC / RFC 8414) and the JWKS cache of one issuer.

Keys are fetched asynchronously (PyJWKClient's fetch would block the event loop),
refreshed in the background, and refetched on an unknown ``kid`` at most once per
``jwks_min_refresh_interval`` so that a flood of made-up kids costs the issuer one call.
When the issuer is unreachable the last good keys stay in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from .. import metrics
from ..config import IssuerConfig
from ..reasons import Reason
from .token import TokenError

log = logging.getLogger("gateway.jwks")


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
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as resp:
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

    jwk: jwt.PyJWK
    declared_alg: str | None = None

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
        keys[str(jwk.get("kid", f"#{index}"))] = VerificationKey(key, declared)
    return keys


class IssuerKeys:
    """The key set of one issuer, kept apart from every other issuer's keys."""

    def __init__(
        self, config: IssuerConfig, session: aiohttp.ClientSession,
        on_withdrawn: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._session = session
        self._on_withdrawn = on_withdrawn  # told when a refresh drops a kid (e.g. a compromised key)
        self._keys: dict[str, VerificationKey] = {}
        self._jwks_uri = config.jwks_uri
        self.metadata: dict[str, Any] = {}
        self._last_attempt = float("-inf")
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
        if self._refresher:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _refresh_forever(self) -> None:
        while True:
            # retry sooner while nothing is loaded, so readiness comes as soon as the issuer is up
            await asyncio.sleep(self.config.jwks_refresh_interval if self.loaded else 2.0)
            await self.refresh()

    async def refresh(self) -> None:
        """Fetch the JWKS now, sharing one fetch among concurrent callers."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        self._last_attempt = time.monotonic()
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
            metrics.JWKS_REFRESH.labels(issuer, "error").inc()
            log.warning("jwks refresh failed", extra={"issuer": issuer, "error": str(exc) or type(exc).__name__})
            return
        withdrawn = set(self._keys) - set(keys)
        self._keys = keys
        metrics.JWKS_REFRESH.labels(issuer, "ok").inc()
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
        """Keys for ``kid``, refetching the JWKS for an unknown kid at most once per interval."""
        keys = self.candidates(kid)
        if keys:
            return keys
        if time.monotonic() - self._last_attempt >= self.config.jwks_min_refresh_interval or (
            self._inflight is not None and not self._inflight.done()
        ):
            await self.refresh()
            keys = self.candidates(kid)
        if keys:
            return keys
        if not self.loaded:
            raise TokenError(Reason.JWKS_UNAVAILABLE, f"no keys loaded for {self.config.issuer}")
        raise TokenError(Reason.UNKNOWN_KEY, "no key with this kid")
