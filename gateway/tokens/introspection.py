"""RFC 7662 token introspection for one issuer: cached, coalesced, failing closed.

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
import base64
import contextlib
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import aiohttp
import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .. import metrics, tracing
from ..config import IntrospectionConfig, IssuerConfig
from ..reasons import Reason
from .cache import ExpiringCache
from .jwks import DiscoveryError, IssuerKeys, discover
from .token import TokenError, ValidatedToken, cache_key, check_required_claims, token_from_claims

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("gateway.introspection")

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# RFC 7662 2.2 token_type values (RFC 6749 7.1 / RFC 8693 3) that denote a bearer access token
ACCESS_TOKEN_TYPES = frozenset({"bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token"})
MAX_ANSWER_BYTES = 256 * 1024
ASSERTION_LIFETIME = 60  # seconds; RFC 7523 client assertions are single-use and short-lived
DISCOVERY_RETRY_INTERVAL = 5.0  # after a failed discovery, fail fast for this long
LOG_INTERVAL = 10.0  # the same failure is logged at most once per interval per issuer
RETRY_DELAY = (0.05, 0.2)  # jittered pause before the one retry after a connection error
SHARED_KEY_PREFIX = "tokengate:introspection:"
PROBE_INTERVAL = 5.0  # seconds between readiness probes while introspection is failing

_random = secrets.SystemRandom()
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


@dataclass(frozen=True, slots=True)
class IntrospectedToken(ValidatedToken):
    """A ValidatedToken from introspection, with the deadline of its cache entry."""

    cached_until: float = 0.0  # min(answered_at + cache_ttl, exp), answered_at + cache_ttl without exp


@dataclass(frozen=True, slots=True)
class Refusal:
    """A negative cache entry: why the token was refused, and until when to remember it."""

    reason: Reason
    detail: str
    until: float


def _cache_deadline(token: ValidatedToken) -> float:
    return token.cached_until if isinstance(token, IntrospectedToken) else token.expires_at


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
        exp = _number(answer.get("exp"))
        if exp is None:
            raise TokenError(Reason.INVALID_TOKEN, "the introspection answer's exp is not a number")
        if exp + config.leeway <= now:
            raise TokenError(Reason.TOKEN_EXPIRED, "the introspection answer's exp has passed")
    nbf = _number(answer.get("nbf"))
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


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749 2.3.1: id and secret are form-urlencoded *before* the Basic encoding (RFC 7617)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def load_private_key(path: str) -> Any:
    """The PEM private key for private_key_jwt (unencrypted PKCS#8 or traditional format)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"introspection private_key_file {path}: cannot read: {exc.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"introspection private_key_file {path}: not an unencrypted PEM private key") from None


def _key_kind(key: Any) -> str:
    """What a private key is, in the words of ``_NEEDS``."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC {_CURVES.get(key.curve.name, key.curve.name)} key"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return "an Ed25519 or Ed448 key"
    return f"a {type(key).__name__.removeprefix('_')}"


_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_NEEDS = {
    "RS": "an RSA key", "PS": "an RSA key", "ES256": "an EC P-256 key", "ES384": "an EC P-384 key",
    "ES512": "an EC P-521 key", "EdDSA": "an Ed25519 or Ed448 key",
}


class KeyProblem(ValueError):
    """A private_key_jwt key that cannot sign: ``field`` is the configuration key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def signing_key(path: str, algorithm: str) -> Any:
    """The private_key_jwt key, able to sign ``algorithm``; KeyProblem naming the key at fault otherwise.

    Checked when the configuration is loaded (``gateway check-config`` and ``serve``), so that a
    missing file or an RSA key configured for ES256 is a configuration error, not a failure of
    the first introspection call (PyJWT would say "Expecting a PEM-formatted key").
    """
    try:
        key = load_private_key(path)
    except ValueError as exc:
        raise KeyProblem("private_key_file", str(exc).removeprefix("introspection private_key_file ")) from None
    needs = _NEEDS.get(algorithm) or _NEEDS.get(algorithm[:2], "")
    have = _key_kind(key)
    if have != needs:
        raise KeyProblem("private_key_algorithm", f"{algorithm} needs {needs}, but {path} holds {have}")
    return key


class _Unavailable(Exception):
    """An introspection attempt that produced no usable answer; ``result`` is the metric label."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


class Introspector:
    """The RFC 7662 client of one issuer, with its caches and its in-flight calls."""

    def __init__(self, config: IssuerConfig, session: aiohttp.ClientSession, keys: IssuerKeys | None = None) -> None:
        if config.introspection is None:
            raise ValueError(f"issuer {config.issuer} has no introspection section")
        self.config = config
        self.settings: IntrospectionConfig = config.introspection
        self.issuer = config.issuer
        self.token_prefix = self.settings.token_prefix
        self._session = session
        self._keys = keys
        size = self.settings.cache_size
        self.cache: ExpiringCache[ValidatedToken] = ExpiringCache(
            "introspection", size, _cache_deadline, lambda t: t.fingerprint  # a revocation discards by fingerprint
        )
        self.negative: ExpiringCache[Refusal] = ExpiringCache("introspection_negative", size, lambda r: r.until)
        self._inflight: dict[str, asyncio.Task[ValidatedToken]] = {}
        self._endpoint = self.settings.endpoint
        self._token_endpoint: str | None = None
        self._discovery_lock = asyncio.Lock()
        self._discovery_failed_at = float("-inf")
        self._logged_at: dict[str, float] = {}
        self._basic = (
            basic_authorization(self.settings.client_id, self.settings.client_secret or "")
            if self.settings.auth_method == "client_secret_basic" else None
        )
        self._private_key: Any = None
        if self.settings.auth_method == "private_key_jwt":
            assert self.settings.private_key_file is not None  # the config model requires it
            self._private_key = signing_key(self.settings.private_key_file, self.settings.private_key_algorithm)
            try:
                self._client_assertion()
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise ValueError(
                    f"introspection private_key_file {self.settings.private_key_file}: cannot sign "
                    f"{self.settings.private_key_algorithm}: {exc}"
                ) from None
        self._shared_prefix = SHARED_KEY_PREFIX + hashlib.sha256(self.issuer.encode()).hexdigest()[:16] + ":"
        self._redis: Redis | None = None
        self._coalesced = metrics.INTROSPECTION_COALESCED.labels(self.issuer)
        self._duration = metrics.INTROSPECTION_DURATION.labels(self.issuer)
        self._failing_since: float | None = None  # monotonic time of the first failure since the last answer
        self._prober: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the endpoint from discovery when it is not configured (a failure is retried later),
        and start the readiness probe."""
        if self._needs_metadata():
            await self._discover()
        self._prober = asyncio.create_task(self._probe_forever(), name=f"introspection-probe:{self.issuer}")
        if self.settings.shared_cache and self.settings.redis_url:
            from redis.asyncio import Redis  # only imported when a shared cache is configured

            timeout = max(self.settings.timeout, 0.1)
            self._redis = Redis.from_url(
                self.settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )

    async def stop(self) -> None:
        tasks: list[asyncio.Task[Any]] = [*self._inflight.values()]
        if self._prober is not None:
            tasks.append(self._prober)
            self._prober = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # --- readiness -------------------------------------------------------------------------

    def ready(self, now: float | None = None) -> bool:
        """False once introspection has failed without a single answer for ``readiness_grace``.

        An answer is any well-formed reply of the endpoint, ``active`` or not; a failure is what
        refuses tokens with 503 (unreachable, too slow, 5xx, our credentials refused). The
        grace period keeps a short outage of the authorization server from taking every replica
        out of rotation at once; a longer one does, since no opaque token can pass meanwhile.
        """
        since = self._failing_since
        now = time.monotonic() if now is None else now
        return since is None or now - since < self.settings.readiness_grace

    async def _probe_forever(self) -> None:
        """While introspection fails, probe it every PROBE_INTERVAL: a replica out of rotation gets
        no tokens, so only a probe can see the endpoint come back. The probe introspects a random
        token; any answer (``active: false``) proves the endpoint and our credentials."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self._failing_since is not None:
                with contextlib.suppress(TokenError):
                    await self._call("tokengate-readiness-probe-" + secrets.token_urlsafe(16))

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
            # a task, not the caller's coroutine: a waiter that goes away does not cancel the call
            task = asyncio.create_task(self._lookup(raw, key, fp), name=f"introspect:{self.issuer}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        else:
            self._coalesced.inc()
        try:
            return await asyncio.shield(task)
        except TokenError as exc:
            raise TokenError(exc.reason, exc.detail) from None  # a fresh exception per waiter

    def _settled(self, key: str, task: asyncio.Task[ValidatedToken]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter went away

    async def _lookup(self, raw: str, key: str, fp: str) -> ValidatedToken:
        """The one lookup past the local caches: the shared cache, else a call (counted as a validation)."""
        stored = await self._shared_get(key)
        if stored is not None:
            answer, until = stored
            return self._judge(answer, key, fp, time.time(), until)
        try:
            answer = await self._call(raw)
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
            await self._shared_put(key, answer, now + self.settings.negative_cache_ttl, now)
            raise
        metrics.INTROSPECTION_CALLS.labels(self.issuer, "active").inc()
        metrics.TOKEN_VALIDATIONS.labels(self.issuer, "valid").inc()
        await self._shared_put(key, answer, _cache_deadline(token), now)
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
        fields = {f.name: getattr(token, f.name) for f in dataclasses.fields(token)}
        entry = IntrospectedToken(**fields, cached_until=deadline)
        self.cache.put(key, entry)  # dropped at once when the deadline has already passed
        return entry

    # --- the call --------------------------------------------------------------------------

    async def _call(self, raw: str) -> dict[str, Any]:
        """One introspection request (and one retry after a connection error)."""
        try:
            endpoint = await self._endpoint_url()
            try:
                answer = await self._attempt(endpoint, raw)
            except _Unavailable as first:
                if first.result != "connection_error":
                    raise
                await asyncio.sleep(_random.uniform(*RETRY_DELAY))
                answer = await self._attempt(endpoint, raw)
            self._failing_since = None
            return answer
        except _Unavailable as exc:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            if exc.result != "unauthorized":  # that one was logged at error level where it was seen
                self._log_failure(exc.result, logging.WARNING, str(exc))
            raise TokenError(Reason.INTROSPECTION_UNAVAILABLE, "token introspection failed") from None

    async def _attempt(self, endpoint: str, raw: str) -> dict[str, Any]:
        data, headers = await self._request(raw)
        started = time.monotonic()
        try:
            with tracing.http_call("POST", endpoint, issuer=self.issuer) as call:
                if call.headers:  # the client span's traceparent, while tracing
                    headers = {**headers, **call.headers}
                async with self._session.post(
                    endpoint, data=data, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                ) as resp:
                    call.status(resp.status)
                    status, content_type = resp.status, resp.content_type
                    body = await _read_limited(resp)
        except TimeoutError:
            raise self._failed("timeout", f"no answer within {self.settings.timeout:g}s") from None
        except aiohttp.ClientConnectionError as exc:
            raise self._failed("connection_error", f"cannot reach {endpoint}: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise self._failed("bad_response", f"broken answer: {type(exc).__name__}") from None
        finally:
            self._duration.observe(time.monotonic() - started)
        return self._parse(status, content_type, body, endpoint)

    def _parse(self, status: int, content_type: str, body: bytes | None, endpoint: str) -> dict[str, Any]:
        if body is None:
            raise self._failed("bad_response", f"{endpoint} answered more than {MAX_ANSWER_BYTES} bytes")
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if status == 200 and isinstance(answer, dict):
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error if isinstance(error, str) and _ERROR_CODE.match(error) else None  # nothing else is echoed
        if status in (401, 403) or code == "invalid_client":
            metrics.INTROSPECTION_CALLS.labels(self.issuer, "unauthorized").inc()
            self._log_failure(
                "unauthorized", logging.ERROR,
                f"{endpoint} refused the gateway's client credentials (client_id {self.settings.client_id!r}, "
                f"auth_method {self.settings.auth_method}, HTTP {status}{', error ' + code if code else ''}); "
                f"tokens of this issuer that need introspection are refused with 503 until they are fixed",
            )
            raise _Unavailable("unauthorized", "client credentials refused")
        if status != 200:
            raise self._failed("http_error", f"{endpoint} answered HTTP {status}")
        kind = content_type or "no content type"
        raise self._failed("bad_response", f"{endpoint} answered {kind}, not a JSON object")

    def _failed(self, result: str, message: str) -> _Unavailable:
        metrics.INTROSPECTION_CALLS.labels(self.issuer, result).inc()
        return _Unavailable(result, message)

    def _log_failure(self, key: str, level: int, message: str) -> None:
        """Log once per LOG_INTERVAL per kind of failure, so an outage does not flood the log."""
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) < LOG_INTERVAL:
            return
        self._logged_at[key] = now
        log.log(level, "introspection failed: %s", message, extra={"issuer": self.issuer, "result": key})

    async def _request(self, raw: str) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers of one call, with the configured client authentication."""
        data = {"token": raw, "token_type_hint": "access_token"}
        headers = {"Accept": "application/json"}
        method = self.settings.auth_method
        if method == "client_secret_basic":
            assert self._basic is not None
            headers["Authorization"] = self._basic
        elif method == "client_secret_post":
            data["client_id"] = self.settings.client_id
            data["client_secret"] = self.settings.client_secret or ""
        else:
            if self._token_endpoint is None:
                await self._discover()  # rate-limited; the issuer is the audience meanwhile
            data["client_id"] = self.settings.client_id
            data["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            data["client_assertion"] = self._client_assertion()
        return data, headers

    def _client_assertion(self) -> str:
        """RFC 7523 2.2 / 3: iss = sub = client_id, aud = the token endpoint (else the issuer)."""
        now = int(time.time())
        claims = {
            "iss": self.settings.client_id,
            "sub": self.settings.client_id,
            "aud": self._token_endpoint or self.issuer,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(24),
        }
        return jwt.encode(
            claims, self._private_key, algorithm=self.settings.private_key_algorithm, headers={"typ": "JWT"}
        )

    # --- discovery -------------------------------------------------------------------------

    def _needs_metadata(self) -> bool:
        return self._endpoint is None or (
            self.settings.auth_method == "private_key_jwt" and self._token_endpoint is None
        )

    async def _endpoint_url(self) -> str:
        if self._endpoint is None:
            await self._discover()
        if self._endpoint is None:
            raise self._failed("no_endpoint", "no introspection endpoint: not configured and not discovered")
        return self._endpoint

    async def _discover(self) -> None:
        """Fill the endpoints from the issuer's metadata (the JWKS loader's copy when it has one)."""
        async with self._discovery_lock:
            if not self._needs_metadata():
                return
            metadata = self._keys.metadata if self._keys is not None else {}
            if not isinstance(metadata.get("introspection_endpoint"), str):
                if time.monotonic() - self._discovery_failed_at < DISCOVERY_RETRY_INTERVAL:
                    return
                try:
                    metadata = await discover(self._session, self.issuer, self.settings.timeout)
                except DiscoveryError as exc:
                    self._discovery_failed_at = time.monotonic()
                    self._log_failure("discovery", logging.WARNING, f"discovery failed: {exc}")
                    return
            token_endpoint = metadata.get("token_endpoint")
            if isinstance(token_endpoint, str):
                self._token_endpoint = token_endpoint
            endpoint = metadata.get("introspection_endpoint")
            if self._endpoint is None:
                if isinstance(endpoint, str) and endpoint.startswith(("https://", "http://")):
                    self._endpoint = endpoint
                    log.info("introspection endpoint discovered", extra={"issuer": self.issuer, "endpoint": endpoint})
                else:
                    self._discovery_failed_at = time.monotonic()
                    self._log_failure("discovery", logging.WARNING, "the metadata has no introspection_endpoint")
            elif self._token_endpoint is None:
                self._discovery_failed_at = time.monotonic()

    # --- shared second-level cache ---------------------------------------------------------

    async def _shared_get(self, key: str) -> tuple[dict[str, Any], float] | None:
        if self._redis is None:
            return None
        try:
            with tracing.redis_call("GET", self._redis):
                value = await self._redis.get(self._shared_prefix + key)
        except Exception as exc:  # any Redis trouble means: ask the server
            metrics.TOKEN_CACHE.labels("introspection_shared", "error").inc()
            self._log_failure("redis", logging.WARNING, f"shared cache unavailable: {type(exc).__name__}")
            return None
        stored: Any = None
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            stored = orjson.loads(value) if value is not None else None
        answer = stored.get("answer") if isinstance(stored, dict) else None
        until = _number(stored.get("until")) if isinstance(stored, dict) else None
        if not isinstance(answer, dict) or until is None or until <= time.time():
            metrics.TOKEN_CACHE.labels("introspection_shared", "miss").inc()
            return None
        metrics.TOKEN_CACHE.labels("introspection_shared", "hit").inc()
        return answer, until

    async def _shared_put(self, key: str, answer: dict[str, Any], until: float, now: float) -> None:
        """Store the server's answer (not a decision) for as long as the local entry lives."""
        ttl_ms = int((until - now) * 1000)
        if self._redis is None or ttl_ms <= 0:
            return
        try:
            with tracing.redis_call("SET", self._redis):
                await self._redis.set(
                    self._shared_prefix + key, orjson.dumps({"answer": answer, "until": until}), px=ttl_ms
                )
        except Exception as exc:  # the shared cache is an optimisation only
            metrics.TOKEN_CACHE.labels("introspection_shared", "error").inc()
            self._log_failure("redis", logging.WARNING, f"shared cache unavailable: {type(exc).__name__}")


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None when it is larger than an introspection answer has any reason to be."""
    if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
        return None
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            return None
    return bytes(body)
