"""The lean client under a review's attacks (gateway/proxy/lean.py): each test showed a defect of its
first version (a713193) and fails on it.

Real sockets on 127.0.0.1 only. The scripted upstream and helpers come from test_lean_client.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.proxy import lean
from gateway.proxy.lean import LeanPool, request_head
from tests.helpers import GatewayFactory, raw_request
from tests.scripted_upstream import ScriptedUpstream, config, ok


def port_of(upstream: ScriptedUpstream) -> int:
    return int(upstream.url.rsplit(":", 1)[1])


HEAD = request_head("GET", "/", CIMultiDict(Host="upstream"))


async def raw_bytes(url: str, method: str = "GET", body: bytes = b"", timeout: float = 5.0) -> bytes:
    """One request, the answer's bytes exactly as the gateway wrote them."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    writer.write(f"{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{length}\r\n".encode() + body)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


# --- 1. bytes after a complete answer: parsed into the same answer, or left in a pooled connection ---------


async def test_a_second_answer_in_the_same_read_is_not_merged_into_the_first(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    """One request, two answers in one write. aiohttp's client relays the first and drops the
    connection; the lean client re-runs _set_head for the second (status, reason, headers
    overwritten after the head future resolved, raw_headers of both) and appends its body: the
    gateway then writes Content-Length: 1 AND Content-Length: 6 with a 7-byte body to the client,
    a split response for any proxy/CDN in front of the gateway."""
    upstream = await scripted(lambda *_: ok(b"A") + ok(b"SECOND", "X-Second: 1\r\n"))
    gw = await make_gateway(**config(upstream))
    lean_answer = await raw_bytes(gw.url)
    generic = await raw_bytes(gw.url, "POST", b"x")
    assert generic.startswith(b"HTTP/1.1 200 OK\r\n") and generic.endswith(b"\r\n\r\nA")
    assert lean_answer.count(b"Content-Length:") == 1, lean_answer
    assert b"X-Second" not in lean_answer
    assert lean_answer.startswith(b"HTTP/1.1 200 OK\r\n") and lean_answer.endswith(b"\r\n\r\nA"), lean_answer


@pytest.mark.parametrize("first_answer", [
    ok(b"A"),  # an answer followed by stray bytes (say a Content-Length counted in characters, not bytes)
    b"HTTP/1.1 204 No Content\r\nContent-Length: 52\r\n\r\n",  # a 204 whose (ignored) body follows
], ids=["after-a-200", "body-of-a-204"])
async def test_leftover_bytes_of_one_answer_never_reach_the_next_request(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], first_answer: bytes
) -> None:
    """Response-queue poisoning: the first answer is followed, in the same write, by the start of a
    forged head. The connection goes back to the pool with llhttp in the middle of that head; the
    next request (another user's) on it is answered 302 with the forged Location, the upstream's real
    status line swallowed into the Location value."""
    forged = b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/?"
    assert len(forged) == 52

    def script(conn: int, index: int, _: bytes) -> bytes:
        if (conn, index) == (1, 0):
            return first_answer + forged
        return ok(b"B")

    upstream = await scripted(script)
    gw = await make_gateway(**config(upstream))
    first = await raw_request(gw.url, "/user-a")
    assert first.status in (200, 204)
    second = await raw_request(gw.url, "/user-b")
    assert "Location" not in second.headers, (second.status, dict(second.headers))
    assert (second.status, second.body) == (200, b"B")


async def test_leftover_bytes_cannot_hang_the_next_request_and_its_pool_slot_forever(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    """The leftover is a whole head whose Content-Length equals the next real answer's size: the
    next answer is eaten as its body, on_message_complete ends the new LeanResponse (and disarms
    the read timer) without its head future ever resolving. The request waits forever, holding the
    pool's only slot: every later request waits forever too (waiters have no timeout)."""
    honest = ok(b"B")
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(honest)
    upstream = await scripted(lambda conn, index, _: ok(b"A") + stray if (conn, index) == (1, 0) else honest)
    gw = await make_gateway(**config(upstream, timeout="300ms", max_connections=1), shutdown_grace="1s")
    assert (await raw_request(gw.url, "/a")).status == 200
    outcomes: list[int | str] = []
    for path in ("/b", "/c"):
        try:
            outcomes.append((await raw_request(gw.url, path, timeout=2)).status)
        except TimeoutError:
            outcomes.append("no answer after 2s (read timeout is 300ms)")
    assert outcomes == [200, 200]


# --- 2. no bound on the upstream's head ------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000)) + b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 " + b"R" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok",
], ids=["100kB-header-value", "20000-headers", "100kB-reason"])
async def test_the_upstreams_head_is_bounded_as_on_the_generic_client(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], answer: bytes
) -> None:
    """aiohttp's client refuses a line/field over 8190 bytes (502); llhttp has no limit, and
    on_status/on_header accumulate without one: a hostile upstream makes the gateway buffer a head
    of any size (bounded only by the time between reads) and relays it to the client."""
    upstream = await scripted(lambda *_: answer)
    gw = await make_gateway(**config(upstream))
    generic = await raw_request(gw.url, "/", method="POST", body=b"x")
    lean_answer = await raw_request(gw.url, "/")
    assert (lean_answer.status, generic.status) == (502, 502)


# --- 3. flow control vs the read timer -------------------------------------------------------------


async def _slow_reader(url: str, method: str, pause: float) -> tuple[float, bytes]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
    body = b"x" if method == "POST" else b""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    writer.write(f"{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{length}\r\n".encode() + body)
    first = await reader.read(1024)
    cpu = time.process_time()
    await asyncio.sleep(pause)  # the client reads nothing: the gateway must pause the upstream, and idle
    cpu = time.process_time() - cpu
    data = first + await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return cpu, data


@pytest.mark.parametrize("method", ["GET", "POST"], ids=["lean", "aiohttp"])
async def test_a_slow_client_neither_spins_the_loop_nor_loses_the_answer(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], method: str
) -> None:
    """While paused, _check_timeout re-arms itself at last_read + timeout, a time in the past: the
    loop spins at 100% CPU for as long as the client is slow. On resume, last_read is still old, so
    the next check fails the answer with TimeoutError: the client's download is cut. aiohttp's client
    drops the read timeout while paused and restarts it on resume."""
    body = b"z" * (16 * 1024 * 1024)
    upstream = await scripted(lambda *_: ok(body))
    gw = await make_gateway(**config(upstream, timeout="300ms"))
    cpu, data = await _slow_reader(gw.url, method, 2.0)
    received = len(data.partition(b"\r\n\r\n")[2])
    assert (received, cpu < 0.5) == (len(body), True), f"{received} of {len(body)} bytes, {cpu:.2f}s CPU while paused"


# --- 4. pool accounting ----------------------------------------------------------------------------


async def test_max_connections_holds_when_a_new_request_comes_as_a_slot_is_handed_to_a_waiter(
    scripted: Callable[..., Any],
) -> None:
    """_freed wakes a waiter with None ("open one") but does not reserve the slot: a request arriving
    before the waiter runs sees open < limit and connects too; then the waiter connects: 2 > 1."""
    upstream = await scripted(lambda *_: ok(extra="Connection: close\r\n"), delay=0.2)
    pool = LeanPool("127.0.0.1", port_of(upstream), 1, 1.0, 5.0)
    most = 0

    async def fetch() -> None:
        nonlocal most
        answer = await pool.request(HEAD)
        most = max(most, pool.open)
        await answer.read()
        answer.release()

    first = await pool.request(HEAD)
    waiting = asyncio.create_task(fetch())
    await asyncio.sleep(0.01)
    assert len(pool._waiters) == 1
    await first.read()
    first.release()  # Connection: close: the connection closes, connection_lost frees the slot
    while pool.open:
        await asyncio.sleep(0)
    await fetch()  # a new request that arrives just as the slot frees (before the waiter runs)
    await waiting
    pool.close()
    assert (most, upstream.most_open) == (1, 1)


async def test_a_request_cancelled_while_connecting_gives_its_slot_back() -> None:
    """_connect counts the connection before create_connection and uncounts it only on TimeoutError
    or OSError: a CancelledError (task cancelled while the SYN is unanswered) leaks the slot for good,
    and after ``limit`` of them every request waits forever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the accept queue is full: connects hang
    try:
        pool = LeanPool("127.0.0.1", port, 1, 10.0, 10.0)
        task = asyncio.create_task(pool.request(HEAD))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.open == 0
    finally:
        filler.close()
        listener.close()


async def test_a_connection_that_comes_back_after_stop_is_closed(scripted: Callable[..., Any]) -> None:
    """Upstream.stop closes only idle connections; one in flight goes back into the stopped pool's idle
    list and stays open until the upstream closes it (after a reload: one socket leaked per connection)."""
    upstream = await scripted(lambda *_: ok(), delay=0.2)
    pool = LeanPool("127.0.0.1", port_of(upstream), 4, 1.0, 5.0)
    answer_task = asyncio.create_task(pool.request(HEAD))
    await asyncio.sleep(0.05)
    pool.close()  # Upstream.stop while the request is in flight
    answer = await answer_task
    await answer.read()
    answer.release()
    await asyncio.sleep(0.2)
    assert upstream.open == 0, "the connection is still open to the upstream"


async def test_idle_connections_are_closed_after_the_keepalive_time(
    scripted: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's connector closes a connection idle for keepalive_timeout (30 s); the lean pool only
    checks the age when it pops one, newest first, so after a burst the older idle ones stay open
    indefinitely (until the upstream closes them)."""
    monkeypatch.setattr(lean, "_KEEPALIVE", 0.2)  # the constant, shortened for the test
    upstream = await scripted(lambda *_: ok())
    pool = LeanPool("127.0.0.1", port_of(upstream), 4, 1.0, 5.0)
    answer = await pool.request(HEAD)
    await answer.read()
    answer.release()
    await asyncio.sleep(0.8)
    still_open = upstream.open
    pool.close()
    assert still_open == 0


# --- 5. what users notice: differences from the aiohttp path -----------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_the_upstream_sees_the_same_head_on_both_clients(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], method: str
) -> None:
    """aiohttp's client adds Accept: */* (every method) and Content-Length: 0 (DELETE); the lean
    client sends neither: content negotiation defaults or DELETE handling can change upstream."""
    upstream = await scripted(lambda *_: ok())
    gw = await make_gateway(**config(upstream))
    await raw_request(gw.url, "/", method=method)
    head = upstream.requests[-1].decode().lower()
    assert "\r\naccept: */*\r\n" in head
    if method == "DELETE":
        assert "\r\ncontent-length: 0\r\n" in head


async def test_a_utf8_reason_is_relayed_as_the_generic_client_does(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    """The reason is decoded as latin-1 (aiohttp: utf-8 surrogateescape), then written as UTF-8: mojibake."""
    upstream = await scripted(lambda *_: "HTTP/1.1 200 Ōk\r\nContent-Length: 2\r\n\r\nok".encode())
    gw = await make_gateway(**config(upstream))
    lean_line = (await raw_bytes(gw.url)).split(b"\r\n", 1)[0]
    generic_line = (await raw_bytes(gw.url, "POST", b"x")).split(b"\r\n", 1)[0]
    assert lean_line == generic_line == "HTTP/1.1 200 Ōk".encode()


async def test_a_close_delimited_answer_whose_last_coding_is_not_chunked_is_whole(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    """Transfer-Encoding: chunked, gzip (chunked not last) is read until close (RFC 9112 6.3; llhttp
    does so), but connection_lost's substring test ``"chunked" in ...`` calls its end an error."""
    upstream = await scripted(lambda *_: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
                              close_after=True)
    gw = await make_gateway(**config(upstream))
    generic = await raw_bytes(gw.url, "POST", b"x")
    lean_answer = await raw_bytes(gw.url)
    assert generic.endswith(b"0\r\n\r\n")  # aiohttp's path: a complete chunked answer
    assert lean_answer.endswith(b"0\r\n\r\n"), lean_answer  # lean: cut, no last chunk
    records = await gw.audit_records()
    assert records[-1]["reason"] != "upstream_unavailable"
