"""The proxy's entry points for long connections: each registered while it is open and summed up in its
request's audit record; per connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..tokens.token import ValidatedToken
from ..ws_upgrade import offered_protocols, protocol_token
from .connection import LiveConnection
from .registry import LiveConnections
from .relay import DEFAULT_SETTINGS, WebSocketSettings, proxy_websocket
from .streams import relay_stream

if TYPE_CHECKING:
    from ..audit.record import Exchange
    from ..proxy.lean import Answer


def record_connection(exchange: Exchange, live: LiveConnection) -> None:
    """Put how the connection went into the request's audit record (written when it has closed):
    message bytes each way (``bytes_in``/``bytes_out``) and a ``connection`` object."""
    exchange.bytes_in, exchange.bytes_out = live.bytes_in, live.bytes_out
    summary: dict[str, Any] = {
        "kind": live.kind, "closed_by": live.closed_by or "unknown", "reason": live.end_reason,
        "messages_in": live.messages_in, "messages_out": live.messages_out,
    }
    if live.kind == "websocket":
        summary["close_code"] = live.close_code
        summary["upstream_close_code"] = live.upstream_close_code
    exchange.connection = summary


async def serve_websocket(
    request: web.BaseRequest, session: aiohttp.ClientSession, url: URL, *, headers: Mapping[str, str],
    registry: LiveConnections, route: str, token: ValidatedToken | None, exchange: Exchange,
    prefix: str | None = None, settings: WebSocketSettings = DEFAULT_SETTINGS,
    response_headers: Sequence[tuple[str, str]] = (), group: object = None,
) -> web.WebSocketResponse:
    """An authorised upgrade, proxied to ``url`` and registered until it closes.

    The offered subprotocols go upstream without the token-carrying one (the decision path read
    it). Raises HandshakeError, ProtocolTokenError or UpstreamFailure before anything is answered.
    """
    protocols = protocol_token(request.headers, prefix)[1] if prefix else offered_protocols(request.headers)
    with registry.open(route, "websocket", token, group) as live:
        response = await proxy_websocket(
            _without_token(request, protocols), session, url, headers=headers, protocols=protocols, live=live,
            settings=settings, response_headers=response_headers,
        )
        record_connection(exchange, live)
        return response


def _without_token(request: web.BaseRequest, protocols: list[str]) -> web.BaseRequest:
    """The request as the client handshake is answered from: its Sec-WebSocket-Protocol without the
    token-carrying value, which aiohttp would otherwise log (a warning naming every value offered)
    when the upstream chose none of them."""
    if offered_protocols(request.headers) == protocols:
        return request
    headers = CIMultiDict((n, v) for n, v in request.headers.items() if n.lower() != "sec-websocket-protocol")
    if protocols:
        headers["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    return request.clone(headers=headers)


async def serve_stream(
    request: web.BaseRequest, upstream_response: Answer, headers: list[tuple[str, str]], *,
    registry: LiveConnections, route: str, token: ValidatedToken | None, exchange: Exchange, group: object = None,
) -> web.StreamResponse:
    """A streamed answer (proxy.LIVE_STREAM_TYPES) relayed as it comes and registered until it ends."""
    with registry.open(route, "stream", token, group) as live:
        try:
            return await relay_stream(request, upstream_response, live, headers)
        finally:
            record_connection(exchange, live)
