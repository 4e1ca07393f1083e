"""Second review of the lean client (gateway/proxy/lean.py, lean_answer.py) at 6fe8365.

Real sockets on 127.0.0.1 only; every test is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest
import uvloop
from multidict import CIMultiDict

from gateway.proxy import lean
from gateway.proxy.lean import LeanPool, request_head
from tests.helpers import GatewayFactory, raw_request
from tests.scripted_upstream import config, ok

pytestmark = pytest.mark.timeout(90)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def head_for(path: str) -> bytes:
    return request_head("GET", path, CIMultiDict(Host="upstream"))


def sockets_to(port: int) -> int:
    """Our process's TCP sockets connected to ``port`` (the real number, from the kernel)."""
    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status in ("ESTABLISHED", "CLOSE_WAIT", "SYN_SENT"))


# --- a hostile, random upstream for the pool hammer ------------------------------------------------


class ChaosUpstream:
    """Answers by the action named in the path (/x/<action>/<n>); also closes idle kept-alive
    connections at random (the upstream's keep-alive timeout racing the gateway's reuse) and
    sometimes closes just after reading a request (the stale path)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.open = 0
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.open += 1
        self.connections += 1
        rng = self.rng
        try:
            while True:
                if rng.random() < 0.15:  # idle close racing reuse
                    try:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), rng.random() * 0.02)
                    except TimeoutError:
                        return
                else:
                    head = await reader.readuntil(b"\r\n\r\n")
                if rng.random() < 0.05:
                    return  # closes after reading the request, no byte of answer
                action = head.split(b" ", 2)[1].split(b"/")[2].decode()
                if not await self._answer(action, writer):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, RuntimeError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.open -= 1
            self.tasks.discard(task)
            writer.close()

    async def _answer(self, action: str, writer: asyncio.StreamWriter) -> bool:
        rng = self.rng
        if action == "ok":
            writer.write(ok(b"x" * rng.randrange(0, 3000)))
        elif action == "close":
            writer.write(ok(extra="Connection: close\r\n"))
            return False
        elif action == "drop":
            return False
        elif action == "cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes.")
            return False
        elif action == "slow":
            await asyncio.sleep(rng.random() * 0.2)
            writer.write(ok())
        elif action == "eof":
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"e" * rng.randrange(0, 100_000))
            return False
        elif action == "big":
            writer.write(ok(b"b" * 700_000))
        elif action == "stall":
            await asyncio.sleep(5)
            return False
        elif action == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(rng.randrange(1, 5)):
                await writer.drain()
                await asyncio.sleep(rng.random() * 0.01)
                writer.write(b"100\r\n" + b"c" * 256 + b"\r\n")
            writer.write(b"0\r\n\r\n")
        elif action == "stray":
            writer.write(ok(b"s") + b"HTTP/1.1 302 Found\r\nLocation: /evil\r\n")
        elif action == "early":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.005)
            writer.write(ok(b"after 103"))
        elif action == "http10":
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return False
        else:
            raise AssertionError(action)
        return True


ACTIONS = ["ok"] * 10 + ["close", "drop", "cut", "slow", "slow", "eof", "big", "stall", "chunked", "stray",
                         "early", "http10"]


async def hammer(seed: int, requests: int = 400, limit: int = 4, cancel_rate: float = 0.2,
                 cancel_window: float = 0.2) -> None:
    """Many concurrent requests through one pool, random upstream behaviour and random client
    cancellations; no request may hang, nothing may raise inside the loop's callbacks, and ``open``
    must equal the sockets really open."""
    loop = asyncio.get_running_loop()
    callback_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: callback_errors.append(context))
    upstream = ChaosUpstream(seed)
    await upstream.start()
    pool = LeanPool("127.0.0.1", upstream.port, limit, 1.0, 0.3)
    rng = random.Random(seed + 1)
    durations: list[float] = []
    outcomes: dict[str, int] = {}
    unexpected: list[BaseException] = []

    async def one(n: int) -> None:
        started = loop.time()
        action = rng.choice(ACTIONS)
        try:
            answer = await pool.request(head_for(f"/x/{action}/{n}"))
            try:
                style = rng.random()
                if style < 0.6:
                    await answer.read()
                elif style < 0.8:
                    async for _ in answer.iter_any():
                        await asyncio.sleep(rng.random() * 0.01)
                elif style < 0.9:
                    await answer.content._next()  # part of it, then released
            finally:
                answer.release()
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except asyncio.CancelledError:
            outcomes["cancelled"] = outcomes.get("cancelled", 0) + 1
            raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        except BaseException as exc:
            unexpected.append(exc)
        finally:
            durations.append(loop.time() - started)

    tasks = []
    for n in range(requests):
        task = asyncio.create_task(one(n))
        tasks.append(task)
        if rng.random() < cancel_rate:
            loop.call_later(rng.random() * cancel_window, task.cancel)
        if n % 20 == 0:
            await asyncio.sleep(rng.random() * 0.02)
    _, pending = await asyncio.wait(tasks, timeout=40)
    assert not pending, f"{len(pending)} requests hang; open={pool.open} waiters={len(pool._waiters)} {outcomes}"
    assert not unexpected, unexpected[:3]
    for _ in range(50):  # let the last connection_lost callbacks run
        await asyncio.sleep(0.02)
    live_idle = [c for c in pool._idle if not c.closed]
    real = sockets_to(upstream.port)
    try:
        assert not callback_errors, [(c.get("message"), repr(c.get("exception"))) for c in callback_errors[:5]]
        assert all(w.done() for w in pool._waiters)
        assert (pool.open, real) == (len(live_idle), len(live_idle)), (pool.open, real, len(live_idle), outcomes)
        assert pool.open <= limit
        assert max(durations) < 15, max(durations)
    finally:
        pool.close()
        await asyncio.sleep(0.2)
        await upstream.stop()
    assert sockets_to(upstream.port) == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_pool_hammer_asyncio(seed: int) -> None:
    await hammer(seed)


@pytest.mark.parametrize("seed", [4, 5])
def test_pool_hammer_uvloop(seed: int) -> None:
    uvloop.run(hammer(seed))


# --- timeout: 0 / connect_timeout: 0 (the config accepts them: Duration is ge=0) -------------------


@pytest.mark.parametrize("setting", ["timeout", "connect_timeout"])
async def test_a_zero_timeout_means_none_on_both_clients(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], setting: str
) -> None:
    """aiohttp's client reads 0 as "no timeout" (sock_read: ``if timeout:``, sock_connect:
    ceil_timeout's ``delay <= 0``), so ``timeout: 0`` worked before the lean client. The lean client
    fails every GET/OPTIONS/DELETE at once (504): the read timer is due as soon as it is armed, and
    asyncio.timeout(0) expires before the connect."""
    upstream = await scripted(lambda *_: ok(b"fine"), delay=0.05)
    gw = await make_gateway(**config(upstream, **{setting: 0}))
    generic = await raw_request(gw.url, "/", method="POST", body=b"x")
    lean_answer = await raw_request(gw.url, "/")
    assert (generic.status, generic.body) == (200, b"fine")
    assert (lean_answer.status, lean_answer.body) == (200, b"fine")


async def test_a_zero_read_timeout_does_not_spin_the_loop(scripted: Callable[..., Any]) -> None:
    """With read_timeout 0 the timer re-arms itself at ``now + 0`` while the connection is idle:
    a callback every loop iteration, 100% CPU for as long as the connection lives."""
    upstream = await scripted(lambda *_: ok())
    pool = LeanPool("127.0.0.1", port_of(upstream.url), 4, 1.0, 0.0)
    with contextlib.suppress(TimeoutError):  # (the request itself fails: see the test above)
        answer = await pool.request(head_for("/"))
        await answer.read()
        answer.release()
    connection = await pool._acquire()  # a connection of the pool, idle, before its request
    cpu = time.process_time()
    await asyncio.sleep(1.0)
    cpu = time.process_time() - cpu
    connection.close()
    pool.close()
    assert cpu < 0.3, f"{cpu:.2f}s CPU in 1s of idling"


# --- trailers: a header that never ends, after the head --------------------------------------------


class EndlessTrailer:
    """A chunked answer whose body ends at once, followed by a trailer field that never ends."""

    def __init__(self, offer: int) -> None:
        self.offer = offer
        self.accepted: list[int] = []
        self.url = ""
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"POST"):
                await reader.readexactly(1)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: ")
            piece = b"a" * 65536
            while sent < self.offer:
                writer.write(piece)
                await asyncio.wait_for(writer.drain(), 3)
                sent += len(piece)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self.accepted.append(sent)
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("method", ["POST", "GET"], ids=["aiohttp", "lean"])
async def test_a_trailer_field_is_bounded_as_a_head_field_is(make_gateway: GatewayFactory, method: str) -> None:
    """The head is bounded (8190 per field, 64 KiB in all) but a trailer is not: once the head is
    done, data_received no longer counts head_bytes, and httptools accumulates a field's value
    (``bytes +=``, quadratic) until the field ends, before on_header can refuse it. A hostile
    upstream streams one endless trailer value: the gateway's memory grows by every byte (and the
    copies cost quadratic CPU on the shared loop), for as long as it keeps sending within the read
    timeout. aiohttp's client refuses the value past 8190 bytes (LineTooLong)."""
    offer = 24 * 1024 * 1024
    upstream = EndlessTrailer(offer)
    await upstream.start()
    try:
        gw = await make_gateway(**config(upstream, timeout="2s"))
        rss = psutil.Process().memory_info().rss
        with contextlib.suppress(Exception):
            await raw_request(gw.url, "/", method=method, body=b"x" if method == "POST" else b"", timeout=20)
        grown = psutil.Process().memory_info().rss - rss
        for _ in range(100):
            if upstream.accepted:
                break
            await asyncio.sleep(0.05)
    finally:
        await upstream.stop()
    assert upstream.accepted and upstream.accepted[0] < offer // 3, (upstream.accepted, f"RSS +{grown >> 20} MiB")


# --- the timer and a connection handed straight to a waiter ----------------------------------------


async def test_a_connection_handed_to_a_waiter_is_not_closed_as_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """give_back hands a connection to a waiter without setting idle_since (only the idle list's
    path sets it). Until the waiter's task runs, response and head are None, so a timer firing in
    that gap (it runs after the task steps of the same loop iteration, i.e. right after the release)
    takes the idle branch with idle_since = the connect time (or its last stay in the idle list)
    and closes a busy, healthy connection: the waiter gets _Stale, reconnects, and goes to the back
    of the waiter queue. Any connection older than the keep-alive time, in a pool at its limit."""
    monkeypatch.setattr(lean, "_KEEPALIVE", 0.05)  # shortened, as in test_lean_review
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections  # (ScriptedUpstream closes after 1000 requests: this one never does)
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(ok())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = LeanPool("127.0.0.1", server.sockets[0].getsockname()[1], 1, 1.0, 0.05)
    loop = asyncio.get_running_loop()
    stop = loop.time() + 2.0
    served = 0

    async def worker() -> None:
        nonlocal served
        while loop.time() < stop:
            answer = await pool.request(head_for("/"))
            await answer.read()
            answer.release()
            served += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(3))), 20)
    pool.close()
    server.close()
    assert connections == 1, f"{connections} connections for {served} requests on a healthy upstream"


# --- checks that pass (kept as regression guards) --------------------------------------------------


async def test_the_stale_retry_at_the_pool_limit_does_not_deadlock(scripted: Callable[..., Any]) -> None:
    """limit 1, the kept-alive connection closes on the next request without a byte, and another
    request already waits for the only slot: connection_lost frees the slot before _Stale is raised,
    the waiter connects, the retry waits behind it and is served."""
    upstream = await scripted(lambda conn, index, _: None if (conn, index) == (1, 1) else ok(b"fine"), delay=0.05)
    pool = LeanPool("127.0.0.1", port_of(upstream.url), 1, 1.0, 2.0)

    async def fetch() -> bytes:
        answer = await pool.request(head_for("/"))
        try:
            return await answer.read()
        finally:
            answer.release()

    assert await fetch() == b"fine"
    results = await asyncio.wait_for(asyncio.gather(fetch(), fetch(), fetch()), 5)
    await asyncio.sleep(0.1)
    assert list(results) == [b"fine"] * 3
    assert (pool.open, sockets_to(port_of(upstream.url))) == (1, 1)
    pool.close()
