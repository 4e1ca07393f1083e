"""What a WebSocket upgrade request carries: whether it is one, and the token a ``Sec-WebSocket-Protocol``
value may hold; read per request on the decision path, and offline by config validation.

Browsers cannot set ``Authorization`` on a WebSocket, so a route may take the token from one
``Sec-WebSocket-Protocol`` value, ``<prefix><base64url(token)>`` (Kubernetes does this with
``base64url.bearer.authorization.k8s.io.``). ``protocol_token`` finds and decodes it and returns
the other offered protocols, which are all the upstream ever sees (websocket/serve.py).

Kept apart from the websocket package, which proxies (and so imports the proxy and its
configuration): the config package, decision.py and the front ends import this module without those.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from .reasons import Reason
from .tokens.jws import b64url_decode

if TYPE_CHECKING:
    from aiohttp import web

_TCHAR = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: what a subprotocol value is
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class ProtocolTokenError(ValueError):
    """The Sec-WebSocket-Protocol token is malformed or ambiguous (answered 400, like a bad Authorization)."""


Offer = CIMultiDictProxy[str] | CIMultiDict[str] | Sequence[str]  # the request headers, or the lines


def offered_protocols(offer: Offer) -> list[str]:
    """The subprotocols the client offered, in order, over every Sec-WebSocket-Protocol line."""
    lines = offer.getall("Sec-WebSocket-Protocol", ()) if isinstance(offer, CIMultiDictProxy | CIMultiDict) else offer
    return [p.strip() for line in lines for p in line.split(",") if p.strip()]


def check_protocol_prefix(prefix: str | None) -> str | None:
    """A usable prefix: a non-empty RFC 9110 token of at most 128 characters (config validation)."""
    if prefix is not None and (not isinstance(prefix, str) or not _TCHAR.match(prefix) or len(prefix) > 128):
        raise ValueError("a token protocol prefix is 1-128 token characters, like base64url.bearer.")
    return prefix


def encode_protocol_token(token: str, prefix: str) -> str:
    """The protocol value a client offers for ``token`` (base64url without padding, after ``prefix``)."""
    return prefix + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def protocol_token(offer: Offer, prefix: str) -> tuple[str | None, list[str]]:
    """(the token, the other offered protocols); (None, all offered) when none carries a token.

    ProtocolTokenError when more than one value carries a token (which one counts would be a
    guess), the encoding is not unpadded base64url, or the token is not printable ASCII.
    """
    offered = offered_protocols(offer)
    carrying = [p for p in offered if p.startswith(prefix)]
    if not carrying:
        return None, offered
    if len(carrying) > 1:
        raise ProtocolTokenError("more than one Sec-WebSocket-Protocol value carries a token")
    encoded = carrying[0][len(prefix):]
    if not encoded or not _BASE64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise ProtocolTokenError("the Sec-WebSocket-Protocol token is not base64url")
    try:
        token = b64url_decode(encoded).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise ProtocolTokenError("the Sec-WebSocket-Protocol token is not base64url ASCII") from None
    if not token or not token.isprintable() or " " in token:
        raise ProtocolTokenError("the Sec-WebSocket-Protocol token holds characters a token cannot have")
    return token, [p for p in offered if p != carrying[0]]


def websocket_token(lines: Sequence[str], prefix: str) -> str | Reason | None:
    """The token of a WebSocket upgrade's Sec-WebSocket-Protocol lines (decision path); None when
    no value carries one, MALFORMED_AUTHORIZATION when it cannot be read."""
    if not lines:
        return None
    try:
        return protocol_token(lines, prefix)[0]
    except ProtocolTokenError:
        return Reason.MALFORMED_AUTHORIZATION


def asks_websocket(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Whether a request asks for a WebSocket: ``Upgrade: websocket`` with the ``upgrade`` option in
    ``Connection`` (RFC 9110 7.8, RFC 6455 4.1). An ``Upgrade`` alone is a hop-by-hop header, dropped."""
    upgrade = headers.get("Upgrade")
    if upgrade is None or not any(v.strip().lower() == "websocket" for v in upgrade.split(",")):
        return False
    return any(o.strip().lower() == "upgrade" for line in headers.getall("Connection", ()) for o in line.split(","))


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """Whether the request asks for a WebSocket (``Upgrade: websocket`` and ``Connection: upgrade``)."""
    return asks_websocket(request.headers)
