"""Long streamed answers (server-sent events and the like) relayed as they come until they end or are cut;
per connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ..proxy import StreamAborted
from ..reasons import Reason
from .connection import LiveConnection

if TYPE_CHECKING:
    from ..proxy.lean import Answer


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
    request: web.BaseRequest, upstream_response: Answer, live: LiveConnection,
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
