"""One open WebSocket or long stream (``LiveConnection``) and the close codes it may end with; per connection."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any, Literal

from ..reasons import Reason
from ..tokens.token import ValidatedToken

if TYPE_CHECKING:
    from .registry import LiveConnections

UNAUTHORIZED_CLOSE = 4401  # the 4000-4999 private range, mirroring HTTP 401 (as graphql-ws uses it)
POLICY_VIOLATION = 1008
GOING_AWAY = 1001
SERVICE_RESTART = 1012  # RFC 6455 registry: the server is restarting, a client may reconnect
BAD_GATEWAY = 1014  # RFC 6455 registry: a gateway got an invalid response from the upstream
MESSAGE_TOO_BIG = 1009
NORMAL = 1000

ConnectionKind = Literal["websocket", "stream"]


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
        """Seconds since it was opened."""
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
