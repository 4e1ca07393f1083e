"""The hot path's HTTP/1.1 client (gateway/proxy/lean.py) against a scripted upstream on 127.0.0.1.

Bodiless GET/OPTIONS/DELETE requests to a plain-http upstream go through it; a POST with a body
goes through aiohttp's client. Where both can see the same answer, the tests ask both and
compare: the two paths must behave alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import GatewayFactory, RawResponse, raw_request
from tests.scripted_upstream import ScriptedUpstream, config, ok


async def both(url: str, path: str = "/") -> tuple[RawResponse, RawResponse]:
    """The same path through the lean client (GET) and through aiohttp's (POST with a body)."""
    return await raw_request(url, path), await raw_request(url, path, method="POST", body=b"x")


async def test_a_kept_alive_connection_found_closed_is_retried_once_on_a_new_one(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    # the first connection answers once, then closes on the next request without a byte: the race
    # of an upstream closing an idle connection just as the gateway reuses it
    upstream = await scripted(lambda conn, index, _: ok(b"one") if (conn, index) == (1, 0) else
                              None if conn == 1 else ok(b"two"))
    gw = await make_gateway(**config(upstream))
    assert (await raw_request(gw.url, "/a")).body == b"one"
    second = await raw_request(gw.url, "/b")
    assert (second.status, second.body) == (200, b"two")
    assert upstream.connections == 2
    assert [head.split(b" ")[1] for head in upstream.requests] == [b"/a", b"/b", b"/b"]


async def test_a_new_connection_closed_without_an_answer_is_not_retried(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    upstream = await scripted(lambda *_: None)
    gw = await make_gateway(**config(upstream))
    response = await raw_request(gw.url, "/gone")
    assert response.status == 502
    assert len(upstream.requests) == 1
    records = await gw.audit_records()
    assert records[-1]["reason"] == "upstream_unavailable"


async def test_informational_answers_are_skipped(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    upstream = await scripted(lambda *_: early + ok(b"final", "X-Final: yes\r\n"))
    gw = await make_gateway(**config(upstream))
    lean, generic = await both(gw.url)
    for response in (lean, generic):
        assert (response.status, response.body) == (200, b"final")
        assert response.headers["X-Final"] == "yes"
        assert "Link" not in response.headers


async def test_an_answer_without_a_length_ends_when_the_upstream_closes(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    body = b"y" * 200_000
    upstream = await scripted(lambda *_: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, close_after=True)
    gw = await make_gateway(**config(upstream))
    lean, generic = await both(gw.url)
    assert (lean.status, lean.body) == (200, body)
    assert (generic.status, generic.body) == (200, body)
    # and the connection is not reused: a second request opens another
    await raw_request(gw.url, "/again")
    assert upstream.connections == 3


async def test_an_answer_cut_short_is_an_error_not_a_short_body(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    # a Content-Length of 100 with ten bytes, then the upstream closes: a 502, never 200 with ten bytes
    upstream = await scripted(lambda *_: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", close_after=True)
    gw = await make_gateway(**config(upstream))
    lean, generic = await both(gw.url)
    assert (lean.status, generic.status) == (502, 502)
    records = await gw.audit_records()
    assert [record["reason"] for record in records[-2:]] == ["upstream_unavailable"] * 2


async def test_an_invalid_answer_is_a_502(make_gateway: GatewayFactory, scripted: Callable[..., Any]) -> None:
    # two different lengths: request smuggling's raw material; refused by both parsers
    upstream = await scripted(lambda *_: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokxyz")
    gw = await make_gateway(**config(upstream))
    lean, generic = await both(gw.url)
    assert (lean.status, generic.status) == (502, 502)


async def test_a_connection_the_upstream_closes_is_not_reused(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    upstream = await scripted(lambda *_: ok(extra="Connection: close\r\n"), close_after=True)
    gw = await make_gateway(**config(upstream))
    for _ in range(3):
        assert (await raw_request(gw.url, "/")).status == 200
    assert upstream.connections == 3


async def test_kept_alive_connections_are_reused(make_gateway: GatewayFactory, scripted: Callable[..., Any]) -> None:
    upstream = await scripted(lambda *_: ok())
    gw = await make_gateway(**config(upstream))
    for method in ("GET", "OPTIONS", "DELETE", "GET"):
        assert (await raw_request(gw.url, "/", method=method)).status == 200
    assert upstream.connections == 1
    assert [head.split(b" ")[0] for head in upstream.requests] == [b"GET", b"OPTIONS", b"DELETE", b"GET"]


async def test_max_connections_bounds_the_pool(make_gateway: GatewayFactory, scripted: Callable[..., Any]) -> None:
    upstream = await scripted(lambda *_: ok(), delay=0.05)
    gw = await make_gateway(**config(upstream, max_connections=2))
    answers = await asyncio.gather(*(raw_request(gw.url, f"/{n}") for n in range(8)))
    assert [answer.status for answer in answers] == [200] * 8
    assert upstream.most_open <= 2
    assert len(upstream.requests) == 8


async def test_the_read_timeout_is_a_504_before_the_head(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    upstream = await scripted(lambda *_: ok(), delay=1.5)
    gw = await make_gateway(**config(upstream, timeout="300ms"))
    started = asyncio.get_running_loop().time()
    response = await raw_request(gw.url, "/slow")
    assert response.status == 504
    assert asyncio.get_running_loop().time() - started < 1.2


async def test_a_stall_mid_answer_cuts_the_client_connection(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    # a chunked answer whose first chunk arrives, then nothing: the head is out, so the client's
    # connection is cut (it must not mistake a short body for a whole one) and the audit says why
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"10000\r\n" + b"z" * 0x10000 + b"\r\n"
    upstream = await scripted(lambda *_: head)
    gw = await make_gateway(**config(upstream, timeout="300ms"))
    response = await raw_request(gw.url, "/stall", timeout=5)
    assert response.status == 200
    assert b"0\r\n\r\n" not in response.body  # no last chunk: the client can tell it was cut
    records = await gw.audit_records()
    assert records[-1]["reason"] == "upstream_unavailable"


async def test_the_upstream_sees_the_request_as_the_generic_client_sends_it(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    upstream = await scripted(lambda *_: ok())
    gw = await make_gateway(**config(upstream))
    await raw_request(gw.url, "/p%20q/r?a=1&b=%2F", headers={"X-Keep": "1", "Connection": "X-Drop", "X-Drop": "2"})
    head = upstream.requests[-1].decode()
    assert head.startswith("GET /p%20q/r?a=1&b=%2F HTTP/1.1\r\n")
    lines = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:] if line}
    assert lines["x-keep"] == "1"
    assert "x-drop" not in lines and "connection" not in lines
    assert lines["host"] == upstream.url.split("://")[1]
    assert lines["x-forwarded-for"] == "127.0.0.1"
    assert "content-length" not in lines and "transfer-encoding" not in lines


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bytes: caf\xc3\xa9 \x01\r\n\r\nok",  # a control byte in a value
    b"HTTP/1.1 200 O\x1bK\r\nContent-Length: 2\r\n\r\nok",  # an escape in the reason
])
async def test_an_answer_the_gateway_could_not_send_on_is_a_502_on_both_clients(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], answer: bytes
) -> None:
    """Before: aiohttp's client passed the byte on and its server refused to write it, so the client's
    connection closed with no answer at all."""
    upstream = await scripted(lambda *_: answer)
    gw = await make_gateway(**config(upstream))
    lean, generic = await both(gw.url)
    assert (lean.status, generic.status) == (502, 502)
    records = await gw.audit_records()
    assert [record["status"] for record in records[-2:]] == [502, 502]


async def test_the_upstreams_request_id_never_reaches_the_client(
    make_gateway: GatewayFactory, scripted: Callable[..., Any]
) -> None:
    upstream = await scripted(lambda *_: ok(extra="X-Request-Id: forged\r\n"))
    gw = await make_gateway(**config(upstream))
    for response in await both(gw.url):
        assert response.status == 200
        assert response.headers.getall("X-Request-Id") != ["forged"]
        assert len(response.headers.getall("X-Request-Id")) == 1


def test_the_pool_runs_on_uvloop_as_the_workers_do() -> None:
    """``gateway serve`` workers run on uvloop, whose transports are not asyncio's classes."""
    import uvloop
    from multidict import CIMultiDict

    from gateway.proxy.lean import LeanPool, request_head

    async def main() -> list[tuple[int, bytes]]:
        upstream = ScriptedUpstream(lambda *_: ok(b"uv"))
        await upstream.start()
        pool = LeanPool("127.0.0.1", int(upstream.url.rsplit(":", 1)[1]), 4, 1.0, 1.0)
        answers = []
        for _ in range(3):
            answer = await pool.request(request_head("GET", "/", CIMultiDict(Host="upstream")))
            answers.append((answer.status, await answer.read()))
            answer.release()
        pool.close()
        await upstream.stop()
        assert upstream.connections == 1
        return answers

    assert uvloop.run(main()) == [(200, b"uv")] * 3


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",  # asked by nobody
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",  # a name that is not a token
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX Spaced: 1\r\n\r\nok",
], ids=["unasked-101", "space-before-colon", "space-in-name"])
async def test_answers_a_lenient_parser_behind_us_could_misread_are_502_on_both_clients(
    make_gateway: GatewayFactory, scripted: Callable[..., Any], answer: bytes
) -> None:
    """Before, aiohttp's path relayed these (``Content-Length : 2`` beside its own framing; a 101 to
    a plain GET): the client, or a CDN in front, would read another message than the upstream sent."""
    upstream = await scripted(lambda *_: answer, close_after=True)
    gw = await make_gateway(**config(upstream))
    lean, generic = await both(gw.url)
    assert (lean.status, generic.status) == (502, 502)
