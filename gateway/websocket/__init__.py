"""WebSocket proxying, long streams, and the registry that closes them when their token dies.

The modules, one job each: connection (one live connection and its close codes), registry (every
open one, cut on revocation, expiry, reload or shutdown), revocation_keys (how a revocation entry
finds them), relay (the WebSocket proxy), streams (long streamed answers) and serve (the proxy's
entry points, with the audit record). What an upgrade request carries, the token in
``Sec-WebSocket-Protocol`` included, is read on the decision path by ``gateway.ws_upgrade``.
"""

from __future__ import annotations

from ..ws_upgrade import ProtocolTokenError, encode_protocol_token, is_websocket_upgrade, protocol_token
from .connection import (
    GOING_AWAY,
    SERVICE_RESTART,
    UNAUTHORIZED_CLOSE,
    ConnectionKind,
    LiveConnection,
)
from .registry import LiveConnections
from .relay import HandshakeError, UpstreamRefused, WebSocketSettings, proxy_websocket, sendable
from .serve import serve_stream, serve_websocket
from .streams import relay_stream

__all__ = [
    "GOING_AWAY", "SERVICE_RESTART", "UNAUTHORIZED_CLOSE", "ConnectionKind", "HandshakeError", "LiveConnection",
    "LiveConnections", "ProtocolTokenError", "UpstreamRefused", "WebSocketSettings", "encode_protocol_token",
    "is_websocket_upgrade", "protocol_token", "proxy_websocket", "relay_stream", "sendable", "serve_stream",
    "serve_websocket",
]
