"""The streaming forwarder (per request): the body goes upstream and the answer back in chunks,
nothing held whole in memory; upstream failures become ``UpstreamFailure`` or ``StreamAborted``.

Bodiless GET/OPTIONS/DELETE requests to a plain-http upstream go through the lean client
(lean.py); everything else through aiohttp's. Both answers go through the same ``_relay``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ..reasons import Reason
from ..upstream_tls import report_failure
from .errors import BodyTooLarge, StreamAborted, UpstreamFailure
from .headers import hop_by_hop
from .lean import LEAN_METHODS, Answer, LeanResponse, request_head

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from ..audit.record import Exchange
    from .upstream import Upstream

_CHUNK = 64 * 1024
_SMALL_BODY = 64 * 1024
# streamed answers that stay open (server-sent events, NDJSON feeds): relayed by ``live`` when given,
# so that they end with their token (websocket.serve_stream)
LIVE_STREAM_TYPES = frozenset({"text/event-stream", "application/x-ndjson"})
# what aiohttp's server refuses to write in a head (its http_writer): an upstream answer carrying one
# is an invalid answer (502), not a crash that leaves the client with a closed connection
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NOT_A_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")  # a header name is an RFC 9110 token
LiveRelay = Callable[[web.BaseRequest, Answer, list[tuple[str, str]]], Awaitable[web.StreamResponse]]


async def _body(request: web.BaseRequest, exchange: Exchange, limit: int) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        exchange.bytes_in += len(chunk)
        if exchange.bytes_in > limit:
            raise BodyTooLarge
        yield chunk


def has_body(request: web.BaseRequest) -> bool:
    """Whether the request carries a body (Content-Length > 0 or chunked, as aiohttp's parser saw it)."""
    return request.body_exists


async def forward(
    request: web.BaseRequest, target: str, upstream: Upstream, headers: CIMultiDict[str],
    exchange: Exchange, body_limit: int, own_headers: Sequence[tuple[str, str]] = (),
    live: LiveRelay | None = None,
) -> web.StreamResponse:
    """Send the request upstream and stream the answer back to the client.

    ``own_headers`` are the gateway's (``DPoP-Nonce``, RateLimit): they replace the upstream's of the
    same name. ``live`` relays an answer of ``LIVE_STREAM_TYPES`` instead (it is not buffered either).
    """
    assert upstream.session is not None
    data = _body(request, exchange, body_limit) if has_body(request) else None
    started = time.monotonic()
    lean = upstream.lean
    upstream_response: Answer
    try:
        if lean is not None and data is None and request.method in LEAN_METHODS:
            upstream_response = await lean.request(request_head(request.method, upstream.path(target), headers))
        else:
            upstream_response = await upstream.session.request(
                request.method, upstream.url(target), headers=headers, data=data, allow_redirects=False,
                compress=None, chunked=None, server_hostname=upstream.server_name,
            )
    except BodyTooLarge:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamFailure(Reason.UPSTREAM_TIMEOUT) from None
    except aiohttp.ClientSSLError as exc:  # an unverifiable certificate, a refused client certificate
        report_failure(upstream.name, exc)
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE) from None
    except aiohttp.ClientError:
        if exchange.bytes_in > body_limit:  # aiohttp wraps the BodyTooLarge of _body in a ClientConnectionError
            raise BodyTooLarge from None
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE) from None
    exchange.upstream_ms = (time.monotonic() - started) * 1000
    try:
        return await _relay(request, upstream_response, exchange, own_headers, live,
                            upstream.config.client_send_timeout)
    finally:
        upstream_response.release()


async def _relay(
    request: web.BaseRequest, upstream_response: Answer, exchange: Exchange,
    own_headers: Sequence[tuple[str, str]] = (), live: LiveRelay | None = None, send_timeout: float = 0.0,
) -> web.StreamResponse:
    """The upstream's answer to the client: small ones in one write, others streamed, each write
    allowed ``send_timeout`` (the upstream's ``client_send_timeout``; 0: none) to be taken by the client."""
    if _unsendable(upstream_response):
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE)
    # a list: web.Response copies it into its own CIMultiDict, no need to build one first
    dropped = hop_by_hop(upstream_response.headers)
    if own_headers:
        dropped = dropped | {name.lower() for name, _ in own_headers}
    headers = [
        (name, value) for name, value in upstream_response.headers.items()
        if (lowered := name.lower()) not in dropped and lowered != "x-request-id"
    ]
    headers.extend(own_headers)
    headers.append(("X-Request-Id", exchange.request_id))
    length = upstream_response.content_length
    if request.method == "HEAD" or (length is not None and length <= _SMALL_BODY):
        # small answers go out in one write: head and body together
        body = b"" if request.method == "HEAD" else await _read_small(upstream_response)
        exchange.bytes_out = len(body)
        response = web.Response(status=upstream_response.status, reason=upstream_response.reason, headers=headers)
        if request.method != "HEAD":
            response.body = body
        return response
    if live is not None and upstream_response.content_type in LIVE_STREAM_TYPES:
        return await live(request, upstream_response, headers)
    stream = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason, headers=headers)
    try:
        await stream.prepare(request)
        async for chunk in _upstream_chunks(request, upstream_response, stream):
            await _to_client(request, stream, chunk, send_timeout)
            exchange.bytes_out += len(chunk)
        await stream.write_eof()
    except ConnectionResetError:  # the client went away: normal traffic, not an error
        raise StreamAborted(Reason.CLIENT_DISCONNECTED, stream) from None
    return stream


async def _to_client(request: web.BaseRequest, stream: web.StreamResponse, chunk: bytes, timeout: float) -> None:
    """One write, cut when the client has not taken it after ``timeout`` (nginx's send_timeout): a
    client that stops reading would otherwise hold its upstream connection, a pool slot, for ever."""
    try:
        async with asyncio.timeout(timeout or None):
            await stream.write(chunk)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # what is still buffered for it is not waited for either
        raise StreamAborted(Reason.CLIENT_TOO_SLOW, stream) from None


def _unsendable(upstream_response: Answer) -> bool:
    """An answer not to pass on: 101 to a request that asked for no upgrade (upgrades never come
    here), a control character in the reason or a header, a header name that is not a token
    (``Content-Length : 2`` would reach the client as another header than the one it is to a
    lenient parser behind us). llhttp already refuses the last two in the lean client's answers;
    aiohttp's client lets them through."""
    if upstream_response.status == 101 or _UNSENDABLE.search(upstream_response.reason or "") is not None:
        return True
    if isinstance(upstream_response, LeanResponse):
        return False
    headers = upstream_response.headers.items()
    return any(_NOT_A_TOKEN.search(name) or _UNSENDABLE.search(value) for name, value in headers)


async def _upstream_chunks(
    request: web.BaseRequest, upstream_response: Answer, stream: web.StreamResponse
) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream_response.content.iter_chunked(_CHUNK):
            yield chunk
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        # the head is already out: the only honest signal left is to cut the connection
        if request.transport is not None:
            request.transport.close()
        raise StreamAborted(Reason.UPSTREAM_UNAVAILABLE, stream) from None


async def _read_small(upstream_response: Answer) -> bytes:
    try:
        return await upstream_response.read()
    except TimeoutError:
        raise UpstreamFailure(Reason.UPSTREAM_TIMEOUT) from None
    except aiohttp.ClientError:
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE) from None
