"""The demo's echo upstream: answers every request with what it received. Used by ``gateway demo`` and tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import orjson
from aiohttp import web


class EchoUpstream:
    """An upstream that answers with what it received (bodies hashed while streaming in)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Echo the request; ``/slow/<s>`` waits first, ``/download/<n>`` streams ``n`` random bytes."""
        if request.path.startswith("/slow/"):
            await asyncio.sleep(float(request.path.rsplit("/", 1)[1]))
        if request.path.startswith("/download/"):
            return await self._download(request, int(request.path.rsplit("/", 1)[1]))
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        seen = {
            "method": request.method, "path": request.raw_path,
            "headers": {str(k): v for k, v in request.headers.items()},
            "body_bytes": size, "body_sha256": digest.hexdigest(),
        }
        self.requests.append(seen)
        return web.Response(body=orjson.dumps(seen), content_type="application/json")

    async def _download(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = os.urandom(65536)
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port``; the base URL."""
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """Stop serving (nothing to do when never started)."""
        if self._runner is not None:
            await self._runner.cleanup()
