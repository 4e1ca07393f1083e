"""The RFC 7662 introspection call of one issuer: endpoint discovery, the request, its failures.

Runs per request (on a cache miss) and for the readiness probe. Any failure to get a trustworthy
answer (server down, slow past ``timeout``, 5xx, non-JSON, our client credentials refused) raises
``INTROSPECTION_UNAVAILABLE``, which the gateway answers with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any

import aiohttp
import orjson

from .. import metrics, tracing
from ..config import IntrospectionConfig
from ..reasons import Reason
from .client_auth import ClientAuth
from .jwks import DiscoveryError, IssuerKeys, discover
from .token import TokenError

log = logging.getLogger("gateway.introspection")

MAX_ANSWER_BYTES = 256 * 1024
DISCOVERY_RETRY_INTERVAL = 5.0  # after a failed discovery, fail fast for this long
LOG_INTERVAL = 10.0  # the same failure is logged at most once per interval per issuer
RETRY_DELAY = (0.05, 0.2)  # jittered pause before the one retry after a connection error

_random = secrets.SystemRandom()
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


class FailureLog:
    """Log once per LOG_INTERVAL per kind of failure of one issuer, so an outage does not flood the log."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._logged_at: dict[str, float] = {}

    def __call__(self, key: str, level: int, message: str) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) < LOG_INTERVAL:
            return
        self._logged_at[key] = now
        log.log(level, "introspection failed: %s", message, extra={"issuer": self.issuer, "result": key})


class _Unavailable(Exception):
    """An introspection attempt that produced no usable answer; ``result`` is the metric label."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result



class IntrospectionEndpoint:
    """Calls one issuer's introspection endpoint; remembers since when the calls have been failing."""

    def __init__(self, issuer: str, settings: IntrospectionConfig, session: aiohttp.ClientSession,
                 keys: IssuerKeys | None, failure_log: FailureLog) -> None:
        self.issuer = issuer
        self.settings = settings
        self.auth = ClientAuth(settings)
        self._session = session
        self._keys = keys
        self._log_failure = failure_log
        self._endpoint = settings.endpoint
        self._token_endpoint: str | None = None
        self._discovery_lock = asyncio.Lock()
        self._discovery_failed_at = float("-inf")
        self._duration = metrics.INTROSPECTION_DURATION.labels(issuer)
        self.failing_since: float | None = None  # monotonic time of the first failure since the last answer

    async def start(self) -> None:
        """Learn the endpoint from discovery when it is not configured (a failure is retried later)."""
        if self._needs_metadata():
            await self._discover()

    async def call(self, raw: str) -> dict[str, Any]:
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
            self.failing_since = None
            return answer
        except _Unavailable as exc:
            if self.failing_since is None:
                self.failing_since = time.monotonic()
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


    async def _request(self, raw: str) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers of one call, with the configured client authentication."""
        data = {"token": raw, "token_type_hint": "access_token"}
        headers = {"Accept": "application/json"}
        if self.auth.needs_token_endpoint and self._token_endpoint is None:
            await self._discover()  # rate-limited; the issuer is the audience meanwhile
        self.auth.credentials(data, headers, self._token_endpoint or self.issuer)
        return data, headers

    # --- discovery -------------------------------------------------------------------------

    def _needs_metadata(self) -> bool:
        return self._endpoint is None or (self.auth.needs_token_endpoint and self._token_endpoint is None)

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
