"""The WebSocket proxy: the upstream handshake, then frames relayed both ways until a close; per connection.

A WebSocket request is decided like any other before the upgrade; ``proxy_websocket`` then does
the upstream handshake first (so an upstream refusal is still an HTTP answer), accepts the
client's upgrade with the subprotocol the upstream chose, and pumps frames both ways: text,
binary, ping and pong as they come (no auto-answers here, the far ends answer each other) and
the close code and reason of whichever side closes first. A message above the size limit
closes that side with 1009; the other side gets 1001 (the client left) or 1014 (bad gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from ..background import cancel_and_wait
from ..proxy import UpstreamFailure
from ..reasons import Reason
from .connection import BAD_GATEWAY, GOING_AWAY, NORMAL, LiveConnection

# handshake headers the two connections negotiate each for itself; never copied from one to the other
HANDSHAKE_HEADERS = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    "sec-websocket-accept", "upgrade", "connection",
})
_REASON_BYTES = 123  # RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """How WebSockets are proxied (the ``long_connections`` configuration's WebSocket part)."""

    max_message_size: int = 4 * 2**20  # per message, both directions; 0 = unlimited
    close_timeout: float = 5.0  # how long a close handshake may take at each end
    compress: bool = True  # permessage-deflate with the client when it offers it


DEFAULT_SETTINGS = WebSocketSettings()


class HandshakeError(ValueError):
    """Not a valid WebSocket upgrade request (answer 400)."""


class UpstreamRefused(UpstreamFailure):
    """The upstream answered the WebSocket handshake with something else than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(Reason.UPSTREAM_UNAVAILABLE)
        self.status = status


@dataclass(frozen=True, slots=True)
class _End:
    """How one direction ended: ``side`` closed (cleanly with ``code`` or not at all)."""

    side: Literal["client", "upstream"]
    code: int | None = None  # None: the connection broke without a close frame
    message: str = ""


def sendable(code: int | None) -> int:
    """A close code that may go out in a frame: 0 (none given), 1005, 1006, 1015 and unknown
    codes below 3000 become 1000."""
    if code is not None and (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        return code
    return NORMAL


def _reason_bytes(message: str) -> bytes:
    return message.encode()[:_REASON_BYTES].decode("utf-8", "ignore").encode()


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    side: Literal["client", "upstream"], live: LiveConnection,
) -> _End:
    """Copy frames from ``source`` (the ``side`` end) to ``sink`` until a close or a failure."""
    other: Literal["client", "upstream"] = "upstream" if side == "client" else "client"
    inbound = side == "client"
    while True:
        msg = await source.receive()
        kind = msg.type
        try:
            if kind is WSMsgType.TEXT:
                data = msg.data.encode()
                await sink.send_frame(data, WSMsgType.TEXT)
            elif kind is WSMsgType.BINARY:
                data = msg.data
                await sink.send_bytes(data)
            elif kind is WSMsgType.PING:
                await sink.ping(msg.data)
                continue
            elif kind is WSMsgType.PONG:
                await sink.pong(msg.data)
                continue
            elif kind is WSMsgType.CLOSE:
                return _End(side, msg.data, msg.extra or "")
            else:  # CLOSING, CLOSED, ERROR (too big, protocol error, connection lost)
                return _End(side, None)
        except (ConnectionError, aiohttp.ClientConnectionError):
            return _End(other, None)  # the sink is gone
        if inbound:
            live.bytes_in += len(data)
            live.messages_in += 1
        else:
            live.bytes_out += len(data)
            live.messages_out += 1


def _upstream_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in HANDSHAKE_HEADERS)


async def proxy_websocket(
    request: web.BaseRequest, session: aiohttp.ClientSession, url: URL | str, *, headers: Mapping[str, str],
    protocols: Sequence[str] = (), live: LiveConnection | None = None, settings: WebSocketSettings = DEFAULT_SETTINGS,
    response_headers: Sequence[tuple[str, str]] = (),
) -> web.WebSocketResponse:
    """Proxy an authorised WebSocket request to ``url`` (ws:// or wss://) until either side closes
    or ``live`` is cut. Returns the (closed) response for the handler to return.

    ``headers``: the upstream request headers (as ``proxy.upstream_headers`` builds them; the
    handshake headers in it are dropped). ``protocols``: the offered subprotocols to forward,
    without any token-carrying one. ``response_headers``: the gateway's own, for the 101 answer.
    Raises HandshakeError before anything is sent when the request is no valid upgrade,
    UpstreamFailure (UpstreamRefused with the status) when the upstream handshake fails;
    nothing has been answered to the client then.
    """
    # the offered protocols in the check too: without an overlap aiohttp logs every value offered
    if not web.WebSocketResponse(protocols=tuple(protocols)).can_prepare(request).ok:
        raise HandshakeError("not a valid WebSocket upgrade request")
    live = live if live is not None else LiveConnection(kind="websocket")
    upstream = await _connect(session, url, headers, protocols, settings)
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (), autoclose=False, autoping=False,
        max_msg_size=settings.max_message_size, timeout=settings.close_timeout, compress=settings.compress,
    )
    client.headers.extend(response_headers)
    try:
        await client.prepare(request)
    except BaseException:
        await _close_quietly(upstream, GOING_AWAY, "client handshake failed", settings.close_timeout)
        raise
    pumps = [
        asyncio.create_task(_pump(client, upstream, "client", live)),
        asyncio.create_task(_pump(upstream, client, "upstream", live)),
    ]
    cut = live.cut_waiter()
    try:
        waiters: list[asyncio.Future[Any]] = [*pumps, cut]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        ends = [p.result() for p in pumps if p.done() and not p.cancelled()]
        await cancel_and_wait(*pumps)
        await _close_both(client, upstream, live, ends[0] if ends and not cut.done() else None, settings)
    finally:
        await cancel_and_wait(*pumps)
        if not upstream.closed:
            await _close_quietly(upstream, GOING_AWAY, "", settings.close_timeout)
    return client


async def _connect(
    session: aiohttp.ClientSession, url: URL | str, headers: Mapping[str, str], protocols: Sequence[str],
    settings: WebSocketSettings,
) -> aiohttp.ClientWebSocketResponse:
    try:
        return await session.ws_connect(
            url, protocols=tuple(protocols), headers=_upstream_headers(headers), autoclose=False, autoping=False,
            max_msg_size=settings.max_message_size,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=settings.close_timeout),
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamRefused(exc.status) from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamFailure(Reason.UPSTREAM_TIMEOUT) from None
    except aiohttp.ClientError:
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE) from None


async def _close_both(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, live: LiveConnection,
    end: _End | None, settings: WebSocketSettings,
) -> None:
    """Close both ends: the first closer's code and reason go to the other end; a cut sends its own."""
    if end is None:  # cut from outside
        closed_by = "gateway"
        to_client, to_upstream = (live.cut_code, live.cut_message), (GOING_AWAY, live.cut_message)
    elif end.side == "client":
        closed_by = "client"
        code = sendable(end.code) if end.code is not None else (client.close_code or GOING_AWAY)
        to_client = (code, end.message)
        to_upstream = (sendable(end.code), end.message) if end.code is not None else (GOING_AWAY, "client went away")
    else:
        closed_by = "upstream"
        to_upstream = (sendable(end.code), end.message)
        to_client = (sendable(end.code), end.message) if end.code is not None else (BAD_GATEWAY, "upstream failed")
    await asyncio.gather(
        _close_quietly(client, *to_client, settings.close_timeout),
        _close_quietly(upstream, *to_upstream, settings.close_timeout),
    )
    live.close_code = client.close_code if end is not None and end.side == "client" else to_client[0]
    live.upstream_close_code = upstream.close_code if end is not None and end.side == "upstream" else to_upstream[0]
    live.closed_by = closed_by  # last: whoever waits for it finds the codes set


async def _close_quietly(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, code: int, message: str, timeout: float
) -> None:
    """Close one end; a peer that is gone or never answers the close is not an error here."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout + 1.0):
            await ws.close(code=code, message=_reason_bytes(message))

