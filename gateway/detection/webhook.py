"""The detection webhook: notices queued by the detector and POSTed by a background task, with retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp

from ..background import cancel_and_wait

log = logging.getLogger("gateway.detection")

WEBHOOK_QUEUE = 1000
WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT = 5.0
DRAIN_TIMEOUT = 2.0  # seconds stop() lets queued notices go out


class WebhookSender:
    """One queue and one sending task: a slow receiver never holds a request back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failed = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(WEBHOOK_QUEUE)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the HTTP session and start sending (on the running loop)."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT), cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._task = asyncio.get_running_loop().create_task(self._worker(self._session), name="detection-webhook")

    async def stop(self) -> None:
        """Let queued notices go out (bounded), then stop sending."""
        if not self._queue.empty():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT)
        await cancel_and_wait(self._task)
        if self._session is not None:
            await self._session.close()

    def post(self, notice: dict[str, Any]) -> None:
        """Queue ``notice``; dropped (and counted as failed) when the queue is full."""
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.failed += 1
            log.error("detection webhook queue full: notice dropped", extra={"reasons": notice.get("reasons")})

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            notice = await self._queue.get()
            try:
                await self._send(session, notice)
            finally:
                self._queue.task_done()

    async def _send(self, session: aiohttp.ClientSession, notice: dict[str, Any]) -> None:
        delay = 0.25
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                async with session.post(self.url, json=notice, allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        self.sent += 1
                        return
                    retry = response.status >= 500 or response.status in (408, 429)
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                retry, problem = True, type(exc).__name__
            if not retry or attempt == WEBHOOK_ATTEMPTS:
                self.failed += 1
                log.error("detection webhook failed", extra={"attempts": attempt, "error": problem,
                                                             "reasons": notice.get("reasons")})
                return
            await asyncio.sleep(delay)
            delay *= 2
