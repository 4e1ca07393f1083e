"""WebSocket and SSE proxying and the live-connection registry (gateway/websocket/).

A real aiohttp WebSocket/SSE upstream and a tiny aiohttp app using the module run on
127.0.0.1; clients are aiohttp's WebSocket and HTTP clients. The app authorises by looking the
presented token up in a table the test fills (token validation itself is tested elsewhere).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.proxy import UpstreamFailure
from gateway.reasons import Reason
from gateway.revocation.entries import Entry, Kind, Match
from gateway.tokens.token import ValidatedToken
from gateway.websocket import (
    HandshakeError,
    LiveConnection,
    LiveConnections,
    ProtocolTokenError,
    UpstreamRefused,
    WebSocketSettings,
    encode_protocol_token,
    is_websocket_upgrade,
    protocol_token,
    proxy_websocket,
    relay_stream,
    sendable,
)
from tests.helpers import metric

PREFIX = "base64url.bearer."


# --- the upstream ---------------------------------------------------------------------------------


@dataclass
class UpstreamState:
    headers: list[dict[str, str]] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)  # what each socket got from the gateway
    sse_ended: asyncio.Event = field(default_factory=asyncio.Event)


async def start_upstream(state: UpstreamState) -> tuple[web.AppRunner, str]:
    async def ws(request: web.Request) -> web.StreamResponse:
        state.headers.append(dict(request.headers))
        sock = web.WebSocketResponse(protocols=("chat.v2", "chat.v1"), autoclose=True, autoping=True)
        await sock.prepare(request)
        await sock.send_str("hello")
        while True:
            msg = await sock.receive()
            if msg.type is WSMsgType.TEXT:
                text = msg.data
                if text.startswith("close:"):
                    _, code, reason = text.split(":", 2)
                    await sock.close(code=int(code), message=reason.encode())
                    state.closes.append((int(code), "upstream closed"))
                    break
                if text == "die":  # the upstream vanishes without a close frame
                    assert request.transport is not None
                    request.transport.abort()
                    break
                if text == "ping-me":
                    await sock.ping(b"from-upstream")
                elif text.startswith("big:"):
                    await sock.send_bytes(b"x" * int(text[4:]))
                else:
                    await sock.send_str("echo:" + text)
            elif msg.type is WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
            elif msg.type is WSMsgType.CLOSE:
                state.closes.append((int(msg.data), str(msg.extra)))
                break
            else:
                state.closes.append((-1, str(msg.type)))
                break
        return sock

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    async def sse(request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await stream.prepare(request)
        try:
            for n in range(400):
                await stream.write(f"id: {n}\ndata: event {n}\n\n".encode())
                await asyncio.sleep(0.025)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            state.sse_ended.set()
        return stream

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/refuse", refuse)
    app.router.add_get("/sse", sse)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


# --- the gateway under test --------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    registry: LiveConnections
    upstream: UpstreamState
    tokens: dict[str, ValidatedToken]
    connections: list[LiveConnection]

    def token(self, subject: str = "alice", expires_in: float = 300, **claims: Any) -> str:
        raw = "tok-" + uuid.uuid4().hex
        self.tokens[raw] = ValidatedToken(
            issuer="https://as.example", subject=subject, client_id=claims.pop("client_id", "web"),
            scopes=frozenset({"live"}), expires_at=time.time() + expires_in, fingerprint=uuid.uuid4().hex * 2,
            jti=claims.pop("jti", None), issued_at=claims.pop("iat", time.time() - 10), claims=claims,
        )
        return raw


def authorise(request: web.Request, tokens: dict[str, ValidatedToken]) -> tuple[ValidatedToken, list[str]]:
    """What the decision path does for a WebSocket route with a token protocol prefix."""
    from_protocol, protocols = protocol_token(request.headers, PREFIX)
    header = request.headers.get("Authorization", "")
    raw = from_protocol or (header[7:] if header.startswith("Bearer ") else None)
    if raw is None or raw not in tokens:
        raise web.HTTPUnauthorized(text="no valid token")
    return tokens[raw], protocols


def forwarded_headers(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in ("host", "authorization")}


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    state = UpstreamState()
    upstream_runner, upstream_url = await start_upstream(state)
    registry = LiveConnections()
    tokens: dict[str, ValidatedToken] = {}
    connections: list[LiveConnection] = []
    session = aiohttp.ClientSession()
    settings = WebSocketSettings(max_message_size=64 * 1024, close_timeout=2.0)

    async def ws(request: web.Request) -> web.StreamResponse:
        if not is_websocket_upgrade(request):
            raise web.HTTPBadRequest(text="upgrade required")
        try:
            tok, protocols = authorise(request, tokens)
        except ProtocolTokenError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        path = request.match_info["path"]
        with registry.open("live", "websocket", tok) as live:
            connections.append(live)
            try:
                return await proxy_websocket(
                    request, session, f"{upstream_url}/{path}", headers=forwarded_headers(request),
                    protocols=protocols, live=live, settings=settings,
                )
            except UpstreamRefused as exc:
                raise web.HTTPBadGateway(text=f"upstream answered {exc.status}") from None
            except UpstreamFailure as exc:
                raise web.HTTPBadGateway(text=exc.reason.value) from None
            except HandshakeError:
                raise web.HTTPBadRequest(text="bad handshake") from None

    async def events(request: web.Request) -> web.StreamResponse:
        tok, _ = authorise(request, tokens)
        async with session.get(f"{upstream_url}/sse") as upstream_response:
            with registry.open("events", "stream", tok) as live:
                connections.append(live)
                return await relay_stream(
                    request, upstream_response, live,
                    headers=[("Content-Type", upstream_response.headers["Content-Type"])],
                )

    app = web.Application()
    app.router.add_get("/ws/{path}", ws)
    app.router.add_get("/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield Gateway(url, registry, state, tokens, connections)
    await runner.cleanup()
    await session.close()
    await upstream_runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


async def until(condition: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def connect(
    client: aiohttp.ClientSession, gw: Gateway, raw: str, **kwargs: Any
) -> aiohttp.ClientWebSocketResponse:
    sock: aiohttp.ClientWebSocketResponse = await client.ws_connect(f"{gw.url}/ws/ws", headers=bearer(raw), **kwargs)
    hello = await sock.receive(timeout=3)
    assert (hello.type, hello.data) == (WSMsgType.TEXT, "hello")
    return sock


# --- messages -----------------------------------------------------------------------------------


async def test_text_and_binary_messages_pass_both_ways_and_are_counted(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    sock = await connect(client, gateway, gateway.token())
    await sock.send_str("héllo")
    assert (await sock.receive(timeout=3)).data == "echo:héllo"
    await sock.send_bytes(b"\x00\x01\xff")
    reply = await sock.receive(timeout=3)
    assert (reply.type, reply.data) == (WSMsgType.BINARY, b"\xff\x01\x00")
    await sock.close()
    live = gateway.connections[0]
    await until(lambda: live.closed_by != "")
    assert (live.bytes_in, live.messages_in) == (len("héllo".encode()) + 3, 2)
    assert (live.bytes_out, live.messages_out) == (len(b"hello") + len("echo:héllo".encode()) + 3, 3)
    assert live.closed_by == "client" and live.close_code == 1000


async def test_ping_and_pong_pass_through_in_both_directions(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    sock = await connect(client, gateway, gateway.token(), autoping=False)
    await sock.ping(b"from-client")
    pong = await sock.receive(timeout=3)  # answered by the upstream, not by the gateway
    assert (pong.type, pong.data) == (WSMsgType.PONG, b"from-client")
    await sock.send_str("ping-me")
    ping = await sock.receive(timeout=3)
    assert (ping.type, ping.data) == (WSMsgType.PING, b"from-upstream")
    await sock.close()


async def test_the_chosen_subprotocol_passes_and_the_token_protocol_never_reaches_the_upstream(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    raw = gateway.token()
    carrying = encode_protocol_token(raw, PREFIX)
    sock = await client.ws_connect(f"{gateway.url}/ws/ws", protocols=("chat.v2", carrying))
    assert (await sock.receive(timeout=3)).data == "hello"
    assert sock.protocol == "chat.v2"
    seen = gateway.upstream.headers[0]
    assert seen["Sec-WebSocket-Protocol"] == "chat.v2"
    assert not any(raw in v or carrying in v for v in seen.values())
    await sock.close()
    # no token anywhere: refused before any upgrade
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"{gateway.url}/ws/ws", protocols=("chat.v2",))
    assert refused.value.status == 401


async def test_close_codes_and_reasons_pass_through_both_ways(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    sock = await connect(client, gateway, gateway.token())
    await sock.close(code=4000, message=b"bye now")
    await until(lambda: gateway.upstream.closes)
    assert gateway.upstream.closes[0] == (4000, "bye now")
    assert sock.close_code == 4000  # the upstream's echo came back through

    sock = await connect(client, gateway, gateway.token())
    await sock.send_str("close:4123:done here")
    closing = await sock.receive(timeout=3)
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4123, "done here")
    await until(lambda: gateway.connections[1].closed_by != "")
    assert gateway.connections[1].closed_by == "upstream" and gateway.connections[1].close_code == 4123


async def test_messages_above_the_size_limit_close_that_side(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    sock = await connect(client, gateway, gateway.token())
    await sock.send_bytes(b"x" * (64 * 1024 + 1))
    msg = await sock.receive(timeout=3)
    assert msg.type is WSMsgType.CLOSE and msg.data == 1009
    await until(lambda: gateway.upstream.closes)
    assert gateway.upstream.closes[0][0] == 1001  # for the upstream the client went away

    sock = await connect(client, gateway, gateway.token())
    await sock.send_str("big:70000")  # the upstream's message is the one too big
    msg = await sock.receive(timeout=3)
    assert msg.type is WSMsgType.CLOSE and msg.data == 1014


async def test_an_upstream_refusing_the_handshake_is_an_http_answer(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"{gateway.url}/ws/refuse", headers=bearer(gateway.token()))
    assert refused.value.status == 502
    async with client.get(f"{gateway.url}/ws/ws", headers=bearer(gateway.token())) as plain:
        assert plain.status == 400  # no upgrade asked


async def test_a_vanished_upstream_closes_the_client_with_1014(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    sock = await connect(client, gateway, gateway.token())
    await sock.send_str("die")
    msg = await sock.receive(timeout=3)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1014)
    await until(lambda: gateway.connections[0].closed_by != "")
    assert gateway.connections[0].closed_by == "upstream"


async def test_a_vanished_client_closes_the_upstream_with_1001(gateway: Gateway) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /ws/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {gateway.token()}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101")
    assert await asyncio.wait_for(reader.readexactly(7), 3) == b"\x81\x05hello"
    writer.transport.abort()  # no close frame, just gone
    await until(lambda: gateway.upstream.closes)
    assert gateway.upstream.closes[0] == (1001, "client went away")
    await until(lambda: gateway.connections[0].closed_by != "")
    assert gateway.connections[0].closed_by == "client"


async def test_a_malformed_upgrade_is_refused_before_the_upstream_is_asked(gateway: Gateway) -> None:
    from tests.helpers import raw_request

    response = await raw_request(gateway.url, "/ws/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",  # no key
        "Authorization": f"Bearer {gateway.token()}",
    })
    assert response.status == 400 and response.body == b"bad handshake"
    assert gateway.upstream.headers == []


# --- the token in Sec-WebSocket-Protocol ------------------------------------------------------------


def headers_with(*lines: str) -> Any:
    from multidict import CIMultiDict

    return CIMultiDict([("Sec-WebSocket-Protocol", line) for line in lines])


def test_protocol_token_is_decoded_and_removed_from_the_offer() -> None:
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_"
    value = encode_protocol_token(jwt_like, PREFIX)
    assert "=" not in value
    assert protocol_token(headers_with(f"chat.v2, {value}", "chat.v1"), PREFIX) == (jwt_like, ["chat.v2", "chat.v1"])
    assert protocol_token(headers_with("chat.v2, chat.v1"), PREFIX) == (None, ["chat.v2", "chat.v1"])
    assert protocol_token(headers_with(), PREFIX) == (None, [])


@pytest.mark.parametrize("offer", [
    f"{PREFIX}YWJj, {PREFIX}ZGVm",  # two tokens: which one counts would be a guess
    f"{PREFIX}",  # empty
    f"{PREFIX}YWJj=",  # padding is no token character
    f"{PREFIX}YW+j",  # base64, not base64url
    f"{PREFIX}YWJjZ",  # a length no base64 has
    f"{PREFIX}w6k",  # decodes to non-ASCII (é)
    f"{PREFIX}YQph",  # decodes to "a\na"
    f"{PREFIX}YSBi",  # decodes to "a b"
])
def test_malformed_protocol_tokens_are_refused(offer: str) -> None:
    with pytest.raises(ProtocolTokenError):
        protocol_token(headers_with("chat.v2", offer), PREFIX)


def test_close_codes_that_cannot_be_sent_become_normal() -> None:
    assert [sendable(c) for c in (1000, 1001, 1008, 1011, 1014, 3000, 4401, 4999)] == [
        1000, 1001, 1008, 1011, 1014, 3000, 4401, 4999]
    assert {sendable(c) for c in (None, 0, 1004, 1005, 1006, 1015, 2000, 5000)} == {1000}


# --- closing from outside: revocation, expiry, shutdown ---------------------------------------------


async def test_revoking_a_subject_closes_its_sockets_with_4401_and_spares_others(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    alice = await connect(client, gateway, gateway.token("alice"))
    bob = await connect(client, gateway, gateway.token("bob"))
    before = metric("gateway_long_connection_closes_total", route="live", kind="websocket", reason="revoked_subject")
    assert metric("gateway_long_connections", route="live", kind="websocket") >= 2
    now = time.time()
    assert gateway.registry.revoked(Entry(Kind.SUBJECT, "alice", expires_at=now + 600, not_before=now)) == 1
    closing = await alice.receive(timeout=3)
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4401, "token revoked")
    await bob.send_str("still here")
    assert (await bob.receive(timeout=3)).data == "echo:still here"
    await until(lambda: gateway.upstream.closes)
    assert gateway.upstream.closes[0] == (1001, "token revoked")
    live = gateway.connections[0]
    await until(lambda: live.closed_by != "")
    assert (live.closed_by, live.cut_reason, live.close_code) == ("gateway", Reason.REVOKED_SUBJECT, 4401)
    assert metric("gateway_long_connection_closes_total", route="live", kind="websocket",
                  reason="revoked_subject") == before + 1
    assert len(gateway.registry) == 1
    await bob.close()


async def test_revocations_match_as_the_revocation_list_does(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    now = time.time()
    later = gateway.token("dave", iat=now + 5)  # issued after the subject cut-off: spared
    family = gateway.token("erin", sid="fam-1")
    by_jti = gateway.token("frank", jti="jti-42")
    by_fingerprint = gateway.token("gina")
    other_issuer = gateway.token("hank", jti="jti-99")
    socks = {raw: await connect(client, gateway, raw) for raw in (later, family, by_jti, by_fingerprint, other_issuer)}
    registry, fp = gateway.registry, gateway.tokens[by_fingerprint].fingerprint
    assert registry.revoked(Entry(Kind.SUBJECT, "dave", expires_at=now + 600, not_before=now)) == 0
    assert registry.revoked(Entry(Kind.FAMILY, "fam-1", expires_at=now + 600)) == 1
    assert registry.revoked(Entry(Kind.TOKEN, "jti-42", expires_at=now + 600, match=Match.JTI)) == 1
    assert registry.revoked(Entry(Kind.TOKEN, fp[:32].upper(), expires_at=now + 600, match=Match.FINGERPRINT)) == 1
    assert registry.revoked(Entry(Kind.TOKEN, "jti-99", expires_at=now + 600, issuer="https://else",
                                  match=Match.JTI)) == 0
    for raw in (family, by_jti, by_fingerprint):
        assert (await socks[raw].receive(timeout=3)).data == 4401
    for raw in (later, other_issuer):
        await socks[raw].send_str("alive?")
        assert (await socks[raw].receive(timeout=3)).data == "echo:alive?"
        await socks[raw].close()


async def test_a_socket_is_closed_when_its_token_expires(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    sock = await connect(client, gateway, gateway.token(expires_in=0.6))
    opened = time.monotonic()
    closing = await sock.receive(timeout=3)
    elapsed = time.monotonic() - opened
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4401, "token expired")
    assert 0.45 < elapsed < 1.5
    await until(lambda: gateway.connections[0].closed_by != "")
    assert gateway.connections[0].cut_reason is Reason.TOKEN_EXPIRED


async def test_the_close_code_is_configurable_and_shutdown_says_going_away(client: aiohttp.ClientSession) -> None:
    registry = LiveConnections(close_code=1008)
    tok = ValidatedToken(issuer="i", subject="s", client_id=None, scopes=frozenset(), expires_at=0.0,
                         fingerprint="ab" * 32)
    with registry.open("r", "websocket", tok) as first, registry.open("r", "stream", None) as second:
        assert registry.cut_where(lambda t: t.subject == "s", Reason.REVOKED_SUBJECT) == 1
        assert first.cut_code == 1008
        assert registry.cut_all() == 1  # the first was cut already
        assert (second.cut_reason, second.cut_code) == (Reason.SHUTTING_DOWN, 1001)
        assert first._timer is None  # no exp, no timer
    assert len(registry) == 0 and await registry.wait_closed(0.1)


async def test_shutdown_closes_open_sockets_with_1001(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    sock = await connect(client, gateway, gateway.token())
    assert gateway.registry.cut_all() == 1
    closing = await sock.receive(timeout=3)
    assert (closing.data, closing.extra) == (1001, "the gateway is shutting down")
    assert await gateway.registry.wait_closed(3)


# --- long streams ---------------------------------------------------------------------------------


async def read_first_event(response: aiohttp.ClientResponse) -> bytes:
    data = b""
    while b"\n\n" not in data:
        data += await response.content.readany()
    return data


async def test_an_event_stream_flows_unbuffered_and_is_cut_by_revocation(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    raw = gateway.token("ivan")
    started = time.monotonic()
    async with client.get(f"{gateway.url}/events", headers=bearer(raw)) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(read_first_event(response), 3)
        assert first.startswith(b"id: 0\ndata: event 0\n\n")
        assert time.monotonic() - started < 1.0  # long before the upstream's 10 s stream ends
        await asyncio.sleep(0.1)
        cut_at = time.monotonic()
        now = time.time()
        assert gateway.registry.revoked(Entry(Kind.SUBJECT, "ivan", expires_at=now + 600, not_before=now)) == 1
        rest = await asyncio.wait_for(response.content.read(), 3)  # ends cleanly: no payload error
        assert time.monotonic() - cut_at < 0.5
    assert rest.endswith(b"\n\n")  # cut between the upstream's writes, whole events only
    live = gateway.connections[0]
    await until(lambda: live.closed_by != "")
    assert (live.closed_by, live.cut_reason) == ("gateway", Reason.REVOKED_SUBJECT)
    assert live.bytes_out == len(first) + len(rest)
    await asyncio.wait_for(gateway.upstream.sse_ended.wait(), 3)  # the upstream stream was closed too


async def test_an_event_stream_ends_when_its_token_expires(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    raw = gateway.token("judy", expires_in=0.5)
    async with client.get(f"{gateway.url}/events", headers=bearer(raw)) as response:
        started = time.monotonic()
        body = await asyncio.wait_for(response.content.read(), 3)
        assert 0.3 < time.monotonic() - started < 1.5
    assert body.count(b"\n\n") >= 5
    await until(lambda: gateway.connections[0].closed_by != "")
    assert gateway.connections[0].cut_reason is Reason.TOKEN_EXPIRED
