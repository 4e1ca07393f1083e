"""A lean RESP2 connection to Redis for the rate limiter's script calls; used per request.

redis-py's asyncio client costs about 100 us of CPU per command here (a pool lock, timeouts,
its parser): more than the rest of a request's decision. The limiter only ever sends EVALSHA
(EVAL once after a script flush, AUTH and SELECT when connecting), so it speaks RESP itself on
one pipelined connection per process: each command is written at once and the replies, which
Redis sends in order, resolve the waiting calls in order. redis:// and unix:// URLs take this
path; rediss:// and URLs with options go through redis-py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast


class RespError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def _line(buffer: bytearray, pos: int) -> tuple[bytes, int]:
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    return bytes(buffer[pos:end]), end + 2


def parse_reply(buffer: bytearray, pos: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``buffer`` at ``pos``: (value, the position after it); _Incomplete
    when the buffer holds only part of it. Integers are ints, bulk strings bytes, errors RespError."""
    line, pos = _line(buffer, pos)
    kind, body = line[:1], line[1:]
    if kind == b":":
        return int(body), pos
    if kind == b"*":
        count = int(body)
        items: list[Any] = []
        for _ in range(max(count, 0)):
            end = buffer.find(b"\r\n", pos)
            if end > pos and buffer[pos] == 0x3A:  # ":": an integer, the script's every item, read here
                items.append(int(buffer[pos + 1:end]))
                pos = end + 2
            else:
                item, pos = parse_reply(buffer, pos)
                items.append(item)
        return (items if count >= 0 else None), pos
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _Incomplete
        return bytes(buffer[pos:pos + size]), pos + size + 2
    if kind == b"+":
        return body.decode("utf-8", "replace"), pos
    if kind == b"-":
        return RespError(body.decode("utf-8", "replace")), pos
    raise ValueError(f"not a RESP reply: {line[:40]!r}")


def bulk(part: bytes | str | int) -> bytes:
    """One RESP bulk string."""
    data = part if isinstance(part, bytes) else str(part).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(*parts: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings."""
    return b"".join([b"*%d\r\n" % len(parts), *map(bulk, parts)])



class RespConnection(asyncio.Protocol):
    """One pipelined connection: ``call`` queues a command and returns the future of its reply.

    The commands queued in one turn of the event loop go out in one write, and the replies of
    one read resolve their calls in order: under load, requests share round trips and system
    calls. A reply later than ``timeout`` fails every waiting call with TimeoutError and closes
    the connection (one timer per connection, not one per call).
    """

    def __init__(self, timeout: float = 0.05) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (call, when it was queued)
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            while pos < len(buffer):
                reply, pos = parse_reply(buffer, pos)
                if not self._waiting:
                    raise ValueError("a reply nobody asked for")
                waiter, _ = self._waiting.popleft()
                if not waiter.done():  # a call whose request was cancelled leaves its future cancelled
                    waiter.set_result(reply)
        except _Incomplete:
            pass
        except ValueError as exc:  # the stream cannot be trusted any more
            self._fail(ConnectionError(f"Redis protocol error: {exc}"))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("Redis closed the connection"))

    def _fail(self, error: Exception) -> None:
        self.lost = True
        self._outgoing.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.abort()
        while self._waiting:
            waiter, _ = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def call(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command`` (sent with this turn's others); the future of its reply."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectionError("the Redis connection is closed")
        loop = self._loop
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((waiter, loop.time()))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(command)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._watch)
        return waiter

    def _flush(self) -> None:
        if self._outgoing and not self.lost and self.transport is not None:
            self.transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _watch(self) -> None:
        self._watchdog = None
        if self.lost or not self._waiting:
            return
        left = self._waiting[0][1] + self.timeout - self._loop.time()
        if left <= 0:
            self._fail(TimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = self._loop.call_later(left, self._watch)

    def close(self) -> None:
        """Close the connection; the calls still waiting fail with ConnectionError."""
        self._fail(ConnectionError("the Redis connection was closed"))


@dataclass(frozen=True, slots=True)
class RespAddress:
    """Where the lean connection goes: a TCP host and port or a unix socket, with AUTH and SELECT."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def of(cls, redis_url: str) -> RespAddress | None:
        """The address of a plain redis:// or unix:// URL; None for what redis-py should handle."""
        from redis import connection

        parse_url = cast(Callable[[str], dict[str, Any]], connection.parse_url)  # redis-py leaves it unannotated
        options = dict(parse_url(redis_url))
        unix = options.pop("connection_class", None)
        if unix is not None and unix is not connection.UnixDomainSocketConnection:
            return None  # rediss://
        if set(options) - {"host", "port", "db", "username", "password", "path"}:
            return None  # socket options, TLS settings...: redis-py knows them
        return cls(
            host=options.get("host") or "127.0.0.1", port=int(options.get("port") or 6379),
            path=options.get("path"), db=int(options.get("db") or 0),
            username=options.get("username"), password=options.get("password"),
        )

    async def open(self, timeout: float = 0.05) -> RespConnection:
        """A connection ready for commands (AUTH and SELECT done); every wait bounded by ``timeout``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if self.path is not None:
                _, connection = await loop.create_unix_connection(lambda: RespConnection(timeout), self.path)
            else:
                _, connection = await loop.create_connection(lambda: RespConnection(timeout), self.host, self.port)
        setup = []
        if self.password is not None:
            credentials = (self.username, self.password) if self.username else (self.password,)
            setup.append(connection.call(encode_command(b"AUTH", *credentials)))
        if self.db:
            setup.append(connection.call(encode_command(b"SELECT", self.db)))
        for reply in await asyncio.gather(*setup):
            if isinstance(reply, RespError):
                connection.close()
                raise reply
        return connection

