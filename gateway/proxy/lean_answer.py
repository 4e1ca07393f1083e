"""The lean client's request head and answer (per request): what forwarder._relay and
streams.relay_stream read of an upstream answer, from either client (lean.py has the connections).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import ClientResponse
from multidict import CIMultiDict, CIMultiDictProxy

_HIGH_WATER = 256 * 1024  # buffered answer bytes past which the upstream socket stops being read


class Carrier(Protocol):
    """What an answer asks of the connection it arrives on (lean._Connection)."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def finished(self, response: LeanResponse) -> None: ...
    def close(self) -> None: ...


def request_head(method: str, path: str, headers: CIMultiDict[str]) -> bytes:
    """The request line and headers in one buffer; ValueError for a CR or LF inside a value (as aiohttp)."""
    lines = [f"{method} {path} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    # what aiohttp's client adds, so that the upstream sees the same head from either client
    if "Accept" not in headers:
        lines.append("Accept: */*")
    if method == "DELETE" and "Content-Length" not in headers:
        lines.append("Content-Length: 0")
    text = "\r\n".join(lines) + "\r\n\r\n"
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
        raise ValueError("Newline or carriage return character detected in HTTP status line or headers")
    return text.encode("utf-8", "surrogateescape")


class LeanResponse:
    """One upstream answer, read as it arrives; what forwarder._relay and streams.relay_stream use."""

    def __init__(self, connection: Carrier) -> None:
        self._connection = connection
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content_length: int | None = None
        self.content = self  # aiohttp's answer reads its body through .content
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    def _set_head(self, status: int, reason: str, raw: list[tuple[bytes, bytes]]) -> None:
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(CIMultiDict(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape").strip(" \t"))
            for name, value in raw
        ))
        length = self.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER:
            self._connection.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done, self._error = True, error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _next(self) -> bytes | None:
        """The next chunk, or None at the end; raises what ended the answer early."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered <= _HIGH_WATER // 2:
            self._connection.resume()
        return chunk

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while (chunk := await self._next()) is not None:
            yield chunk

    def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        return self.iter_any()  # chunks arrive at most as large as a socket read: no need to split

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if it was read to its end."""
        self._connection.finished(self)

    def close(self) -> None:
        self._connection.close()


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
Answer = ClientResponse | LeanResponse  # an upstream answer, from either client
