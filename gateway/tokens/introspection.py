"""RFC 7662 token introspection for one issuer, per request: cached, coalesced, failing closed.

Lookup order for a token (by the SHA-256 of its exact bytes, ``cache_key``, never the token
itself; the authorization server judged those bytes, not a twin or a forged signature):

1. the positive cache: what the authorization server said about an active token, kept
   ``min(cache_ttl, exp - now)`` (``cache_ttl`` when the answer has no ``exp``);
2. the negative cache: the refusal of an inactive or unacceptable token, kept
   ``negative_cache_ttl``;
3. a call already in flight for the same token: wait for its answer (coalescing);
4. the shared second-level cache in Redis (``shared_cache: true``), same lifetimes;
5. one introspection call (one retry, with jitter, after a connection error).

Only a lookup that reaches step 5 counts in ``gateway_token_validations_total`` (its outcome,
under this issuer): a cache hit or a wait for a call in flight is not a validation.

The caches hold the authorization server's answer about the token, never a decision:
scopes, the route's issuer restriction and the revocation list are checked by the
decision path on every request, cache hit or not.

Any failure to get a trustworthy answer (server down, slow past ``timeout``, 5xx,
non-JSON, our client credentials refused) raises ``INTROSPECTION_UNAVAILABLE``, which
the gateway answers with 503 and ``Retry-After``: the request is never let through.
Failures are not cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from typing import Any

import aiohttp

from .. import metrics
from ..background import cancel_and_wait
from ..config import IntrospectionConfig, IssuerConfig
from ..reasons import Reason
from .cache import ExpiringCache
from .introspection_cache import IntrospectedToken, Refusal, SharedAnswers, cache_deadline
from .introspection_http import FailureLog, IntrospectionEndpoint
from .jwks import IssuerKeys
from .single_flight import SingleFlight
from .token import TokenError, ValidatedToken, as_number, cache_key, check_required_claims, token_from_claims

__all__ = ["ACCESS_TOKEN_TYPES", "PROBE_INTERVAL", "IntrospectedToken", "Introspector", "Refusal", "check_answer"]

# RFC 7662 2.2 token_type values (RFC 6749 7.1 / RFC 8693 3) that denote a bearer access token
ACCESS_TOKEN_TYPES = frozenset({"bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token"})
PROBE_INTERVAL = 5.0  # seconds between readiness probes while introspection is failing


def check_answer(answer: dict[str, Any], config: IssuerConfig, fp: str, now: float) -> ValidatedToken:
    """The token described by an introspection answer, or TokenError when it must be refused.

    Checks (RFC 7662 2.2 and section 4): ``active`` is the boolean true; ``exp``, when present
    (RFC 7662 makes it optional; null counts as absent), is a number and not past (with the
    issuer's leeway); ``nbf``, when present, is not ahead; ``iss``, when present, is this
    issuer; ``aud`` holds one of the issuer's audiences; ``token_type`` (and Ory Hydra's
    ``token_use``), when present, name an access token; the issuer's ``required_claims`` are there.
    """
    if answer.get("active") is not True:
        raise TokenError(Reason.INACTIVE_TOKEN, "the authorization server says the token is not active")
    if answer.get("exp") is not None:
        exp = as_number(answer.get("exp"))
        if exp is None:
            raise TokenError(Reason.INVALID_TOKEN, "the introspection answer's exp is not a number")
        if exp + config.leeway <= now:
            raise TokenError(Reason.TOKEN_EXPIRED, "the introspection answer's exp has passed")
    nbf = as_number(answer.get("nbf"))
    if nbf is not None and nbf - config.leeway > now:
        raise TokenError(Reason.TOKEN_NOT_YET_VALID, "the introspection answer's nbf is ahead")
    iss = answer.get("iss")
    if iss is not None and iss != config.issuer:
        raise TokenError(Reason.UNKNOWN_ISSUER, "the introspection answer names another issuer")
    aud = answer.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in config.audiences for a in audiences):
        raise TokenError(Reason.WRONG_AUDIENCE, "the token's aud holds none of the issuer's audiences")
    token_type = answer.get("token_type")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() not in ACCESS_TOKEN_TYPES):
        raise TokenError(Reason.WRONG_TOKEN_TYPE, "token_type is not an access token type")
    token_use = answer.get("token_use")
    if token_use is not None and token_use != "access_token":
        raise TokenError(Reason.WRONG_TOKEN_TYPE, "token_use is not access_token")
    check_required_claims(answer, config.required_claims)
    return token_from_claims(answer, config.issuer, fp, "introspection")


class Introspector:
    """The RFC 7662 client of one issuer, with its caches and its in-flight calls."""

    def __init__(self, config: IssuerConfig, session: aiohttp.ClientSession, keys: IssuerKeys | None = None) -> None:
        if config.introspection is None:
            raise ValueError(f"issuer {config.issuer} has no introspection section")
        self.config = config
        self.settings: IntrospectionConfig = config.introspection
        self.issuer = config.issuer
        self.token_prefix = self.settings.token_prefix
        size = self.settings.cache_size
        self.cache: ExpiringCache[ValidatedToken] = ExpiringCache(
            "introspection", size, cache_deadline, lambda t: t.fingerprint  # a revocation discards by fingerprint
        )
        self.negative: ExpiringCache[Refusal] = ExpiringCache("introspection_negative", size, lambda r: r.until)
        self._inflight: SingleFlight[ValidatedToken] = SingleFlight()
        failure_log = FailureLog(self.issuer)
        self.endpoint = IntrospectionEndpoint(self.issuer, self.settings, session, keys, failure_log)
        self._shared = SharedAnswers(self.issuer, self.settings, failure_log)
        self._coalesced = metrics.INTROSPECTION_COALESCED.labels(self.issuer)
        self._prober: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the endpoint from discovery when it is not configured (a failure is retried later),
        and start the readiness probe."""
        await self.endpoint.start()
        self._prober = asyncio.create_task(self._probe_forever(), name=f"introspection-probe:{self.issuer}")
        self._shared.connect()

    async def stop(self) -> None:
        """Cancel the calls in flight and the probe; close the shared cache."""
        prober, self._prober = self._prober, None
        await cancel_and_wait(*self._inflight.tasks(), prober)
        await self._shared.aclose()

    # --- readiness -------------------------------------------------------------------------

    def ready(self, now: float | None = None) -> bool:
        """False once introspection has failed without a single answer for ``readiness_grace``.

        An answer is any well-formed reply of the endpoint, ``active`` or not; a failure is what
        refuses tokens with 503 (unreachable, too slow, 5xx, our credentials refused). The
        grace period keeps a short outage of the authorization server from taking every replica
        out of rotation at once; a longer one does, since no opaque token can pass meanwhile.
        """
        since = self.endpoint.failing_since
        now = time.monotonic() if now is None else now
        return since is None or now - since < self.settings.readiness_grace

    async def _probe_forever(self) -> None:
        """While introspection fails, probe it every PROBE_INTERVAL: a replica out of rotation gets
        no tokens, so only a probe can see the endpoint come back. The probe introspects a random
        token; any answer (``active: false``) proves the endpoint and our credentials."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self.endpoint.failing_since is not None:
                with contextlib.suppress(TokenError):
                    await self.endpoint.call("tokengate-readiness-probe-" + secrets.token_urlsafe(16))

    # --- lookup ----------------------------------------------------------------------------

    async def introspect(self, raw: str, fp: str) -> ValidatedToken:
        """What the authorization server says about this token, from a cache when it may.

        ``fp`` is the token's fingerprint (its identity, carried by the result); every cache,
        the in-flight table and the shared cache use the hash of the exact bytes instead.
        """
        key = cache_key(raw)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        refusal = self.negative.get(key)
        if refusal is not None:
            raise TokenError(refusal.reason, refusal.detail)
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight.start(key, self._lookup(raw, key, fp), name=f"introspect:{self.issuer}")
        else:
            self._coalesced.inc()
        try:
            return await asyncio.shield(task)
        except TokenError as exc:
            raise TokenError(exc.reason, exc.detail) from None  # a fresh exception per waiter

    async def _lookup(self, raw: str, key: str, fp: str) -> ValidatedToken:
        """The one lookup past the local caches: the shared cache, else a call (counted as a validation)."""
        stored = await self._shared.get(key)
        if stored is not None:
            answer, until = stored
            return self._judge(answer, key, fp, time.time(), until)
        try:
            answer = await self.endpoint.call(raw)
        except TokenError as exc:
            metrics.TOKEN_VALIDATIONS.labels(self.issuer, exc.reason.value).inc()
            raise
        now = time.time()
        try:
            token = self._judge(answer, key, fp, now, None)
        except TokenError as exc:
            result = "inactive" if exc.reason is Reason.INACTIVE_TOKEN else "refused"
            metrics.INTROSPECTION_CALLS.labels(self.issuer, result).inc()
            metrics.TOKEN_VALIDATIONS.labels(self.issuer, exc.reason.value).inc()
            await self._shared.put(key, answer, now + self.settings.negative_cache_ttl, now)
            raise
        metrics.INTROSPECTION_CALLS.labels(self.issuer, "active").inc()
        metrics.TOKEN_VALIDATIONS.labels(self.issuer, "valid").inc()
        await self._shared.put(key, answer, cache_deadline(token), now)
        return token

    def _judge(self, answer: dict[str, Any], key: str, fp: str, now: float, until: float | None) -> ValidatedToken:
        """Check an answer and cache the outcome: the token positively, a refusal negatively."""
        try:
            token = check_answer(answer, self.config, fp, now)
        except TokenError as exc:
            deadline = until if until is not None else now + self.settings.negative_cache_ttl
            self.negative.put(key, Refusal(exc.reason, exc.detail, deadline))
            raise
        deadline = until if until is not None else now + self.settings.cache_ttl
        if token.expires_at:  # without exp (RFC 7662 makes it optional) cache_ttl alone bounds the entry
            deadline = min(deadline, token.expires_at)
        fields = {f.name: getattr(token, f.name) for f in dataclasses.fields(token) if f.init}
        entry = IntrospectedToken(**fields, cached_until=deadline)
        self.cache.put(key, entry)  # dropped at once when the deadline has already passed
        return entry
