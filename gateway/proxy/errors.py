"""The exceptions of the forwarder (per request): what went wrong upstream or with the body."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from ..reasons import Reason


class UpstreamFailure(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class BodyTooLarge(Exception):
    pass


class StreamAborted(Exception):
    """The response head was already sent when the exchange failed: the response stays as it is."""

    def __init__(self, reason: Reason, response: web.StreamResponse) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.response = response
