"""A raw HTTP/1.1 upstream on 127.0.0.1 that answers with scripted bytes (tests of the upstream clients)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from tests.helpers import HasUrl

Script = Callable[[int, int, bytes], bytes | None]  # (connection no., request no. on it, head) -> answer


class ScriptedUpstream:
    """A raw HTTP/1.1 server: each request's answer comes from ``script`` verbatim; None closes the
    connection without answering. Counts connections and requests, and the most at once."""

    def __init__(self, script: Script, delay: float = 0.0, close_after: bool = False) -> None:
        self.script = script
        self.delay = delay
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.open = 0
        self.most_open = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, self.open = self.connections, self.open + 1
        self.most_open = max(self.most_open, self.open)
        try:
            for index in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = self.script(number, index, head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


def config(upstream: HasUrl, **settings: Any) -> dict[str, Any]:
    return {
        "upstreams": {"scripted": {"url": upstream.url, **settings}},
        "routes": [{"name": "any", "path_prefix": "/", "methods": ["GET", "POST", "DELETE", "OPTIONS"],
                    "upstream": "scripted", "auth": "none"}],
    }


def ok(body: bytes = b"ok", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


