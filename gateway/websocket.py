"""WebSocket proxying, long streams, and the registry that closes them when their token dies.

A WebSocket request is decided like any other before the upgrade; ``proxy_websocket`` then does
the upstream handshake first (so an upstream refusal is still an HTTP answer), accepts the
client's upgrade with the subprotocol the upstream chose, and pumps frames both ways: text,
binary, ping and pong as they come (no auto-answers here, the far ends answer each other) and
the close code and reason of whichever side closes first. A message above the size limit
closes that side with 1009; the other side gets 1001 (the client left) or 1014 (bad gateway).

Browsers cannot set ``Authorization`` on a WebSocket, so a route may accept the token as a
``Sec-WebSocket-Protocol`` value (``<prefix><base64url(token)>``, as Kubernetes does with
``base64url.bearer.authorization.k8s.io.``); ``protocol_token`` finds and decodes it and returns
the other offered protocols, which are all the upstream ever sees. The client must also offer a
real subprotocol: the token value is never echoed back (it would put the token in a response
header), and browsers fail a handshake whose answer names no protocol they offered.

``LiveConnections`` holds every open WebSocket and long stream with the token that opened it,
indexed by the token's fingerprint, jti, family, subject, client and issuer. A revocation entry
(``revoked``, the listener for ``RevocationStore.on_revoke``, which also hears the other replicas'
revocations) closes exactly the connections it matches, and a timer closes each at its token's
``exp``: WebSockets with ``close_code`` (4401 by default, or 1008) and a reason, streams by ending
the response. Shutdown closes all with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from . import metrics
from .audit.record import Exchange
from .proxy import StreamAborted, UpstreamFailure
from .reasons import Reason
from .revocation.entries import REASON_OF_KIND, Entry, Kind, Match, RevocationList
from .tokens.token import FINGERPRINT_PREFIX, ValidatedToken
from .traffic import (  # noqa: F401 - the protocol-token helpers are part of this module's interface too
    ProtocolTokenError,
    asks_websocket,
    check_protocol_prefix,
    encode_protocol_token,
    offered_protocols,
    protocol_token,
)

log = logging.getLogger("gateway.websocket")

UNAUTHORIZED_CLOSE = 4401  # the 4000-4999 private range, mirroring HTTP 401 (as graphql-ws uses it)
POLICY_VIOLATION = 1008
GOING_AWAY = 1001
SERVICE_RESTART = 1012  # RFC 6455 registry: the server is restarting, a client may reconnect
BAD_GATEWAY = 1014  # RFC 6455 registry: a gateway got an invalid response from the upstream
MESSAGE_TOO_BIG = 1009
NORMAL = 1000
# handshake headers the two connections negotiate each for itself; never copied from one to the other
HANDSHAKE_HEADERS = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    "sec-websocket-accept", "upgrade", "connection",
})
_REASON_BYTES = 123  # RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code

ConnectionKind = Literal["websocket", "stream"]


# --- the token in Sec-WebSocket-Protocol (read on the decision path: traffic.py) --------------


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """Whether the request asks for a WebSocket (``Upgrade: websocket`` and ``Connection: upgrade``)."""
    return asks_websocket(request.headers)


# --- live connections ----------------------------------------------------------------------


class LiveConnection:
    """One open WebSocket or stream: its token, its byte counts, and how it ended.

    ``cut`` ends it from outside; a WebSocket proxy waits on it, a stream pump is cancelled by it.
    Usable without a registry (then nothing can cut it but its own code).
    """

    __slots__ = (
        "_cut", "_keys", "_registry", "_task", "_timer", "bytes_in", "bytes_out", "close_code", "closed_by",
        "cut_code", "cut_message", "cut_reason", "group", "id", "kind", "messages_in", "messages_out", "opened_at",
        "route", "started", "token", "upstream_close_code",
    )

    _ids = itertools.count(1)

    def __init__(
        self, route: str = "", kind: ConnectionKind = "websocket", token: ValidatedToken | None = None,
        group: object = None,
    ) -> None:
        self.id = next(self._ids)
        self.route, self.kind, self.token = route, kind, token
        self.group = group  # what it was opened under (the proxy's pipeline): cut together on a reload
        self.started, self.opened_at = time.monotonic(), time.time()
        self.bytes_in = self.bytes_out = self.messages_in = self.messages_out = 0
        self.cut_reason: Reason | None = None
        self.cut_code, self.cut_message = 0, ""
        self.closed_by = ""  # client | upstream | gateway, once it has ended
        self.close_code: int | None = None  # sent to (or received from) the client
        self.upstream_close_code: int | None = None
        self._cut: asyncio.Future[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._registry: LiveConnections | None = None
        self._keys: tuple[tuple[str, str], ...] = ()

    @property
    def duration(self) -> float:
        return time.monotonic() - self.started

    def cut(self, reason: Reason, code: int = UNAUTHORIZED_CLOSE, message: str = "") -> bool:
        """End the connection from outside (the first call wins); False when already cut."""
        if self.cut_reason is not None:
            return False
        self.cut_reason, self.cut_code, self.cut_message = reason, code, message or reason.message
        if self._cut is not None and not self._cut.done():
            self._cut.set_result(None)
        if self._task is not None:  # a stream pump, suspended inside its loop: end it there
            self._task.cancel("connection cut")
        return True

    def cut_waiter(self) -> asyncio.Future[None]:
        """A future done when the connection is cut (already done if it was)."""
        if self._cut is None:
            self._cut = asyncio.get_running_loop().create_future()
            if self.cut_reason is not None:
                self._cut.set_result(None)
        return self._cut

    @property
    def end_reason(self) -> str:
        """Why it ended, as the closes metric labels it: a decision reason when cut, else who closed."""
        return self.cut_reason.value if self.cut_reason is not None else (self.closed_by or "unknown")

    def __enter__(self) -> LiveConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if not self.closed_by:  # never got going (the upstream refused, the handshake failed)
            self.closed_by = "failed" if exc_type is not None else "unknown"
        if self._registry is not None:
            self._registry.finish(self)


def token_keys(token: ValidatedToken, family_claim: str = "sid") -> tuple[tuple[str, str], ...]:
    """The index keys a token is found by: every form a revocation entry may name it in."""
    short = FINGERPRINT_PREFIX
    keys = [("fp", token.fingerprint.lower()[:short]), ("iss", token.issuer)]
    presented = getattr(token, "presented_hash", None)
    if presented:
        keys.append(("fp", presented.lower()[:short]))
    if token.jti is not None:
        keys += [("jti", token.jti), ("fp", hashlib.sha256(token.jti.encode()).hexdigest()[:short])]
    family = token.claims.get(family_claim)
    if isinstance(family, str):
        keys.append(("family", family))
    if token.subject is not None:
        keys.append(("sub", token.subject))
    if token.client_id is not None:
        keys.append(("client", token.client_id))
    return tuple(dict.fromkeys(keys))


def entry_keys(entry: Entry) -> list[tuple[str, str]]:
    """The index keys a revocation entry may match (then checked exactly by the revocation list)."""
    value = entry.value
    if entry.kind is Kind.TOKEN:
        if entry.match is Match.JTI:
            return [("jti", value)]
        if entry.match is Match.FINGERPRINT:
            return [("fp", value.lower()[:FINGERPRINT_PREFIX])]
        return [("jti", value), ("fp", value.lower()[:FINGERPRINT_PREFIX])]  # schema 1: either
    return [({Kind.FAMILY: "family", Kind.SUBJECT: "sub", Kind.CLIENT: "client"}[entry.kind], value)]


class LiveConnections:
    """Every open long connection of this process, found by what its token can be revoked by."""

    def __init__(
        self, *, close_code: int = UNAUTHORIZED_CLOSE, family_claim: str = "sid", expiry_grace: float = 0.0
    ) -> None:
        self.close_code = close_code
        self.expiry_grace = expiry_grace
        self._probe = RevocationList(family_claim)
        self._family_claim = family_claim
        self._all: set[LiveConnection] = set()
        self._index: dict[tuple[str, str], set[LiveConnection]] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._all)

    def open(
        self, route: str, kind: ConnectionKind, token: ValidatedToken | None, group: object = None
    ) -> LiveConnection:
        """Register a connection (use as a context manager: it is finished on exit). With a token
        that has an ``exp``, it is cut at ``exp + expiry_grace``. ``group``: see ``cut_group``."""
        connection = LiveConnection(route, kind, token, group)
        connection._registry = self
        self._all.add(connection)
        self._empty.clear()
        if token is not None:
            connection._keys = token_keys(token, self._family_claim)
            for key in connection._keys:
                self._index.setdefault(key, set()).add(connection)
            if token.expires_at > 0:
                delay = max(0.0, token.expires_at + self.expiry_grace - time.time())
                connection._timer = asyncio.get_running_loop().call_later(
                    delay, connection.cut, Reason.TOKEN_EXPIRED, self.close_code, "token expired",
                )
        metrics.LONG_CONNECTIONS.labels(route, kind).inc()
        return connection

    def finish(self, connection: LiveConnection) -> None:
        """Unregister (idempotent); counts the close by its reason."""
        if connection not in self._all:
            return
        self._all.discard(connection)
        for key in connection._keys:
            members = self._index.get(key)
            if members is not None:
                members.discard(connection)
                if not members:
                    del self._index[key]
        if connection._timer is not None:
            connection._timer.cancel()
        metrics.LONG_CONNECTIONS.labels(connection.route, connection.kind).dec()
        metrics.LONG_CONNECTION_CLOSES.labels(connection.route, connection.kind, connection.end_reason).inc()
        if not self._all:
            self._empty.set()

    def _cut_all_of(
        self, connections: Iterable[LiveConnection], reason: Reason, code: int | None, message: str
    ) -> int:
        cut = sum(1 for c in list(connections) if c.cut(reason, self.close_code if code is None else code, message))
        if cut:
            log.info("closed %d live connection(s): %s", cut, reason.value,
                     extra={"reason": reason.value, "count": cut})
        return cut

    def revoked(self, entry: Entry) -> int:
        """Cut the connections whose token ``entry`` revokes (a ``RevocationStore.on_revoke`` listener).

        The index narrows the search to tokens carrying the entry's value; the revocation list's
        own matcher then decides (issuer, ``not_before`` cut-off), so a connection is closed
        exactly when a new request with its token would be refused.
        """
        candidates = {c for key in entry_keys(entry) for c in self._index.get(key, ())}
        if not candidates:
            return 0
        matches = self._probe.matcher_for(entry)
        hit = [c for c in candidates if c.token is not None and matches(c.token)]
        return self._cut_all_of(hit, REASON_OF_KIND[entry.kind], None, "token revoked")

    def cut_where(
        self, predicate: Callable[[ValidatedToken], bool], reason: Reason, code: int | None = None, message: str = ""
    ) -> int:
        """Cut every connection whose token satisfies ``predicate`` (e.g. after a configuration
        reload dropped an issuer or tightened a route)."""
        return self._cut_all_of(
            (c for c in self._all if c.token is not None and predicate(c.token)), reason, code, message,
        )

    def recheck(self, check: Callable[[ValidatedToken], Reason | None]) -> int:
        """Cut every connection whose token ``check`` (the revocation list's) now refuses: the
        safety net for entries that arrived without a notification (a resync after an outage)."""
        refused: dict[Reason, list[LiveConnection]] = {}
        for connection in list(self._all):
            reason = check(connection.token) if connection.token is not None else None
            if reason is not None:
                refused.setdefault(reason, []).append(connection)
        return sum(self._cut_all_of(group, reason, None, "token revoked") for reason, group in refused.items())

    def cut_issuer(self, issuer: str, reason: Reason = Reason.UNKNOWN_ISSUER) -> int:
        return self._cut_all_of(self._index.get(("iss", issuer), ()), reason, None, "issuer no longer trusted")

    def cut_all(
        self, reason: Reason = Reason.SHUTTING_DOWN, code: int = GOING_AWAY,
        message: str = "the gateway is shutting down",
    ) -> int:
        """Cut everything (graceful shutdown, after the drain period): WebSockets get ``code``."""
        return self._cut_all_of(self._all, reason, code, message)

    def count(self, group: object) -> int:
        """How many connections of ``group`` are open."""
        return sum(1 for c in self._all if c.group is group)

    def cut_group(
        self, group: object, reason: Reason = Reason.CONFIG_RELOADED, code: int = SERVICE_RESTART,
        message: str = "the configuration changed",
    ) -> int:
        """Cut the connections opened under ``group`` (a replaced pipeline: decided under a
        configuration no longer in force, and proxied through its upstream pools)."""
        return self._cut_all_of([c for c in self._all if c.group is group], reason, code, message)

    async def wait_group_closed(self, group: object, timeout: float) -> bool:
        """Wait until no connection of ``group`` is open; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.count(group):  # a reload's rare wait, polled
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection has finished; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    def open_by_route(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for c in self._all:
            counts[(c.route, c.kind)] = counts.get((c.route, c.kind), 0) + 1
        return counts


# --- WebSocket proxy -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
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
        await _stop(pumps)
        await _close_both(client, upstream, live, ends[0] if ends and not cut.done() else None, settings)
    finally:
        await _stop(pumps)
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


async def _stop(tasks: Sequence[asyncio.Task[_End]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


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


# --- long streams (server-sent events and other streamed answers) ---------------------------


async def pump_stream(response: web.StreamResponse, chunks: AsyncIterator[bytes], live: LiveConnection) -> bool:
    """Write ``chunks`` to the prepared ``response`` as they come, until they end or ``live`` is
    cut; True when it was cut (the caller then ends the response and closes the upstream answer).

    A cut cancels this task where it waits (for the upstream or for the client to take the
    bytes); that cancellation is absorbed here and only here, so any other cancellation passes.
    """
    task = asyncio.current_task()
    if live.cut_reason is not None:
        return True
    live._task = task
    try:
        async for chunk in chunks:
            await response.write(chunk)
            live.bytes_out += len(chunk)
            live.messages_out += 1
    except asyncio.CancelledError:
        if live.cut_reason is None or task is None or task.uncancel() > 0:
            raise
    finally:
        live._task = None
    if live.cut_reason is None:
        return False
    closer = getattr(chunks, "aclose", None)  # an async generator left at a yield: run its cleanup now
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()
    return True


async def relay_stream(
    request: web.BaseRequest, upstream_response: aiohttp.ClientResponse, live: LiveConnection,
    headers: Iterable[tuple[str, str]] = (),
) -> web.StreamResponse:
    """Stream an upstream answer (say ``text/event-stream``) to the client without buffering, ended
    cleanly when ``live`` is cut. ``headers`` are the response headers to send (the caller filters
    the upstream's); the caller still releases ``upstream_response``.

    Raises StreamAborted (the head is out) when the client goes away (``client_disconnected``) or
    the upstream fails mid-stream (``upstream_unavailable``: the client's connection is then cut,
    the only honest signal left).
    """
    stream = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason, headers=list(headers))
    await stream.prepare(request)
    try:
        was_cut = await pump_stream(stream, upstream_response.content.iter_any(), live)
    except (ConnectionError, TimeoutError, aiohttp.ClientError) as exc:
        upstream_response.close()
        if isinstance(exc, ConnectionError) and not isinstance(exc, aiohttp.ClientError):
            live.closed_by = "client"  # our write to the client failed
            raise StreamAborted(Reason.CLIENT_DISCONNECTED, stream) from None
        live.closed_by = "upstream"
        if request.transport is not None:
            request.transport.close()
        raise StreamAborted(Reason.UPSTREAM_UNAVAILABLE, stream) from None
    if was_cut:
        live.closed_by = "gateway"
        upstream_response.close()  # a half-read answer cannot go back into the pool
    else:
        live.closed_by = "upstream"
    with contextlib.suppress(ConnectionError):
        await stream.write_eof()
    return stream


# --- the proxy's side: one live connection per request, and its audit record ------------------


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
    request: web.BaseRequest, upstream_response: aiohttp.ClientResponse, headers: list[tuple[str, str]], *,
    registry: LiveConnections, route: str, token: ValidatedToken | None, exchange: Exchange, group: object = None,
) -> web.StreamResponse:
    """A streamed answer (proxy.LIVE_STREAM_TYPES) relayed as it comes and registered until it ends."""
    with registry.open(route, "stream", token, group) as live:
        try:
            return await relay_stream(request, upstream_response, live, headers)
        finally:
            record_connection(exchange, live)
