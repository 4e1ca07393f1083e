"""An upstream's connections are a bounded resource (``max_connections`` per worker): a request
never waits for a free one for ever, and a client that stops reading a streamed answer does not
hold one for ever. Real sockets on 127.0.0.1, both upstream clients (the lean one for a bodiless
GET, aiohttp's for a POST)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import GatewayFactory, raw_request
from tests.scripted_upstream import config, ok

pytestmark = pytest.mark.timeout(60)

BIG = 8 * 1024 * 1024  # far more than the socket buffers on both sides hold


def slow_first(number: int, index: int, head: bytes) -> bytes | None:
    return ok(b"late") if number == 1 else ok(b"fine")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_request_waits_for_a_free_connection_only_as_long_as_connect_timeout(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], method: str
) -> None:
    """One connection allowed and busy for 3 s: the next request is a 504 after the connect timeout
    (it used to wait for the slot with no bound, however many requests piled up)."""
    upstream = await scripted(slow_first, delay=3.0)
    gw = await make_gateway(**config(upstream, max_connections=1, connect_timeout="300ms", timeout="10s"))
    body = b"x" if method == "POST" else b""
    busy = asyncio.create_task(raw_request(gw.url, "/first", method=method, body=body, timeout=10))
    await asyncio.sleep(0.3)  # the only connection is taken
    started = time.monotonic()
    waiting = await raw_request(gw.url, "/second", method=method, body=body, timeout=10)
    waited = time.monotonic() - started
    assert waiting.status == 504 and waited < 2.0, (waiting.status, waited)
    assert (await busy).status == 200  # the request holding the connection is not disturbed
    records = await gw.audit_records()
    assert any(r["path"] == "/second" and r["reason"] == "upstream_timeout" for r in records), records


async def test_a_slot_freed_in_time_serves_the_waiting_request(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    upstream = await scripted(lambda *_: ok(b"fine"), delay=0.2)
    gw = await make_gateway(**config(upstream, max_connections=1, connect_timeout="2s"))
    answers = await asyncio.gather(*(raw_request(gw.url, f"/{n}") for n in range(3)))
    assert [a.status for a in answers] == [200, 200, 200]


async def stalled_reader(url: str, target: str) -> socket.socket:
    """A client that sends a request and never reads: a tiny receive buffer, left full."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    await asyncio.get_running_loop().sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def test_a_client_that_stops_reading_is_cut_and_frees_its_upstream_connection(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    """nginx's send_timeout: ``client_send_timeout`` without the client taking a piece ends the
    exchange (``client_too_slow`` in the audit record), and the pool slot serves the next request."""
    upstream = await scripted(lambda *_: ok(b"y" * BIG))
    gw = await make_gateway(**config(upstream, max_connections=1, client_send_timeout="1s", connect_timeout="20s"))
    stalled = await stalled_reader(gw.url, "/stalled")
    try:
        started = time.monotonic()
        nxt = await raw_request(gw.url, "/next", timeout=20)  # waits for the stalled client's slot
        assert nxt.status == 200 and len(nxt.body) == BIG
        assert time.monotonic() - started < 10.0
    finally:
        with contextlib.suppress(OSError):
            stalled.close()
    await asyncio.sleep(0.1)
    records = {r["path"]: r for r in await gw.audit_records()}
    assert records["/stalled"]["reason"] == "client_too_slow", records["/stalled"]
    assert records["/stalled"]["bytes_out"] < BIG
    assert records["/next"]["reason"] == "public_route"
