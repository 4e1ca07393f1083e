"""The hot path's HTTP/1.1 client (per request, issue 14): keep-alive connections to a plain-http
upstream on asyncio protocols, answers parsed by httptools (llhttp, the parser uvicorn uses).

It serves requests without a body of the idempotent methods in ``LEAN_METHODS``: most API
traffic, and the only kind where aiohttp's generic client was a large part of the cost.
Bodies, HEAD (llhttp cannot be told that a HEAD answer has none), upgrades and https go
through aiohttp's client as before (forwarder.py). The answer offers what the forwarder and
the stream relay read of an ``aiohttp.ClientResponse`` (status, reason, headers, content, read,
release, close), and fails with aiohttp's exception types, so both paths share every rule
after the head arrives.

Kept behaviours: the read timeout is the time allowed between two reads (aiohttp's
``sock_read``), the connect timeout bounds the connect and, apart, the wait for a free
connection (aiohttp's ``connect``); a request that finds its kept-alive connection closed
before any byte of the answer is sent again once on a new connection (only
idempotent methods come here, and they carry no body); 1xx answers are skipped; an answer
without a length ends when the upstream closes, one cut short is an error; the connection goes
back to the pool only when the answer was read to its end and both sides allow keep-alive.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

import httptools
from aiohttp import ClientConnectionError, ClientPayloadError

from .lean_answer import Answer, LeanResponse, request_head

__all__ = ["LEAN_METHODS", "Answer", "LeanPool", "LeanResponse", "request_head"]

LEAN_METHODS = frozenset({"GET", "OPTIONS", "DELETE"})
_KEEPALIVE = 30.0  # seconds an idle connection is kept (aiohttp's keepalive_timeout, as before)
# the upstream's head, bounded as aiohttp's client bounds it (its max_field_size and max_headers),
# plus a total: httptools buffers a header until it is whole, so the total is checked per read
_MAX_FIELD = 8190
_MAX_HEADERS = 128
_MAX_HEAD = 64 * 1024


class _Stale(Exception):
    """A kept-alive connection closed before any byte of the answer: the request may go again."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one request at a time."""

    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: LeanResponse | None = None
        self.head: asyncio.Future[LeanResponse] | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.informational = False
        self.received = False  # any byte of the current answer
        self.reusable = False
        self.closed = False
        self.used = 0  # requests sent on it
        self.idle_since = 0.0
        self.last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self.complete = False  # the current answer was read to its end: any further byte is an error
        self.head_bytes = 0  # of the answer's head so far
        self.counted = False  # in the pool's ``open`` (set once connected)
        self.in_trailer = False  # a chunked answer's trailer fields: bounded as the head is (review)
        self.body_in_read = False

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self.idle_since = self.last_read = self.pool.loop.time()
        self._arm(self.last_read + min(self.pool.read_timeout or _KEEPALIVE, _KEEPALIVE))

    def data_received(self, data: bytes) -> None:
        if self.head is None or self.complete:
            # bytes with no request out, or after the whole answer: they belong to no request, and
            # kept they would become the start of the next user's answer
            self.reusable = False
            self.close()
            return
        self.received = True
        self.last_read = self.pool.loop.time()
        self.body_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # HttpParserCallbackError too: one of ours refused
            self._fail(ClientPayloadError(f"invalid answer from the upstream: {exc}"))
            return
        except httptools.HttpParserUpgrade:
            self._fail(ClientPayloadError("the upstream switched protocols unasked"))
            return
        if not self.head.done() or (self.in_trailer and not self.body_in_read):  # httptools holds a partial header
            self.head_bytes += len(data)
            if self.head_bytes > _MAX_HEAD:
                self._fail(ClientPayloadError("the upstream's head is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.pool.lost(self)
        if self.head is not None and not self.head.done():
            stale = not self.received and self.used > 1
            self._fail(_Stale() if stale else ClientConnectionError("the upstream closed the connection"))
        elif self.response is not None and not self.response._done:
            # an answer without Content-Length or chunked coding ends with the connection
            last_coding = self.response.headers.get("Transfer-Encoding", "").rpartition(",")[2].strip().lower()
            ends_at_close = exc is None and self.response.content_length is None and last_coding != "chunked"
            self._end(None if ends_at_close else ClientPayloadError("the upstream closed the connection mid-answer"))

    def pause_writing(self) -> None:  # one small head per request: never more than the socket takes
        pass

    # --- httptools callbacks (an exception raised here makes feed_data raise HttpParserCallbackError)
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer in the same read as the first
            raise ValueError("bytes after the answer")

    def on_status(self, status: bytes) -> None:
        self.reason += status
        if len(self.reason) > _MAX_FIELD:
            raise ValueError("the reason phrase is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is not None and self.head.done():  # a trailer field: aiohttp drops them too
            return
        if len(name) > _MAX_FIELD or len(value) > _MAX_FIELD or len(self.raw_headers) >= _MAX_HEADERS:
            raise ValueError("too many or too large headers")
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.informational = 100 <= status < 200 and status != 101  # 101 unasked: llhttp refuses what follows
        if self.informational:  # 100 Continue, 103 Early Hints: not the answer
            self.raw_headers, self.reason = [], b""
            return
        assert self.response is not None and self.head is not None
        self.response._set_head(status, self.reason.decode("utf-8", "surrogateescape"), self.raw_headers)
        if not self.head.done():
            self.head.set_result(self.response)

    def on_chunk_complete(self) -> None:
        self.in_trailer, self.head_bytes = True, 0  # what follows a chunk until the next body: sizes, trailer

    def on_body(self, body: bytes) -> None:
        self.in_trailer, self.body_in_read = False, True
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.reusable = self.parser.should_keep_alive()
        self.complete = True
        self._end(None)

    # --- the pool's side
    async def send(self, head: bytes) -> LeanResponse:
        assert self.transport is not None
        if self.closed or self.transport.is_closing():  # closed while it waited to be used
            raise _Stale
        self.used += 1
        self.response = LeanResponse(self)
        self.head = self.pool.loop.create_future()
        self.raw_headers, self.reason, self.received, self.reusable = [], b"", False, False
        self.complete, self.head_bytes, self.in_trailer = False, 0, False
        self.last_read = self.pool.loop.time()
        self.transport.write(head)
        return await self.head

    def finished(self, response: LeanResponse) -> None:
        if response is not self.response:
            return
        self.response = self.head = None
        if response._done and response._error is None and self.reusable and not self.closed and not self._paused:
            self.pool.give_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._disarm()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.last_read = self.pool.loop.time()  # the read timeout starts again (aiohttp's too)
            self.transport.resume_reading()

    def _end(self, error: BaseException | None) -> None:
        if self.response is not None:
            self.response._finish(error)

    def _fail(self, error: BaseException) -> None:
        self.reusable = False
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._end(error)
        self.close()

    # One timer per connection, for its whole life (not one per request): while an answer is
    # awaited it fires when the read timeout would be reached, and fails the request if nothing
    # was read since; while idle it closes the connection after the keep-alive time.
    def _watch(self) -> None:
        now, timeout = self.pool.loop.time(), self.pool.read_timeout or _KEEPALIVE  # 0: none, as aiohttp
        self._timer = None
        if self.response is not None and not self.response._done:
            due = self.last_read + timeout
            if now >= due and not self._paused and self.pool.read_timeout > 0:
                self._fail(TimeoutError())
                return
        elif self.head is None:  # idle in the pool
            due = self.idle_since + _KEEPALIVE
            if now >= due:
                self.close()
                return
        else:  # the answer is read, not yet released
            due = now + timeout
        # never later than one read timeout from now: a request sent meanwhile is due no sooner
        self._arm(min(due, now + timeout) if due > now else now + timeout)

    def _arm(self, at: float) -> None:
        self._timer = self.pool.loop.call_at(at, self._watch)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class LeanPool:
    """Keep-alive connections to one ``host:port``: at most ``limit`` open, idle ones reused newest first."""

    def __init__(self, host: str, port: int, limit: int, connect_timeout: float, read_timeout: float) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.loop = asyncio.get_running_loop()
        self.open = 0
        self._idle: list[_Connection] = []
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self.closed = False

    async def request(self, head: bytes) -> LeanResponse:
        try:
            return await self._send(await self._acquire(), head)
        except _Stale:  # the upstream had closed it while idle: once more, on a new connection
            try:
                return await self._send(await self._acquire(new=True), head)
            except _Stale:
                raise ClientConnectionError("the upstream closed the connection") from None

    @staticmethod
    async def _send(connection: _Connection, head: bytes) -> LeanResponse:
        try:
            return await connection.send(head)
        except BaseException:  # cancelled (the client went away) or failed: never back to the pool
            connection.close()
            raise

    async def _acquire(self, new: bool = False) -> _Connection:
        while not new and self._idle:
            connection = self._idle.pop()
            if not connection.closed and self.loop.time() - connection.idle_since < _KEEPALIVE:
                return connection
            connection.close()
        if self.open < self.limit:
            self.open += 1  # the slot is ours before any await: nobody else can take it meanwhile
        else:
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:  # bounded as aiohttp's client bounds its pool wait (ClientTimeout.connect): 504, not a hang
                async with asyncio.timeout(self.connect_timeout or None):
                    handed = await waiter
            except (asyncio.CancelledError, TimeoutError):  # the timeout turns the cancellation into TimeoutError
                if waiter.done() and not waiter.cancelled():  # handed a connection, or a slot, just then
                    given = waiter.result()
                    self.give_back(given) if given is not None else self._release_slot()
                raise
            if handed is not None:
                return handed
        return await self._connect()  # in the slot taken above or handed over (still counted)

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout or None):  # 0: none, as aiohttp's client
                _, protocol = await self.loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except BaseException as exc:  # cancelled too: the slot must not leak
            self._release_slot()
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise ClientConnectionError(f"cannot connect to the upstream: {exc.strerror or exc}") from None
            raise
        protocol.counted = True
        return protocol

    def give_back(self, connection: _Connection) -> None:
        connection.idle_since = self.loop.time()  # handed to a waiter too: not idle since it last was
        if self.closed:  # back from a request that outlived the pool (a reload, a shutdown)
            connection.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = self.loop.time()
        self._idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        if connection.counted:
            connection.counted = False
            self._release_slot()

    def _release_slot(self) -> None:
        """A slot freed: handed to the first waiter (still counted: it connects in it), else uncounted."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        self.closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
