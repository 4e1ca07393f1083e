"""The streaming forwarder and its header rules.

Bodies stream both ways in chunks (nothing is held whole in memory), hop-by-hop headers
(RFC 9110 7.6.1, including those named in ``Connection``) are dropped, and the identity
headers the upstream trusts are always set by the gateway, never passed from the client.
Other headers upstreams are known to trust for the user, the client or the URL and method
(``strip_request_headers``) are dropped whoever sent them; client-address headers pass
only from a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .audit.record import Exchange
from .claim_headers import claim_header_names
from .config import (
    DEFAULT_STRIP_REQUEST_HEADERS,
    STRIP_DEFAULTS,
    ConfigError,
    GatewayConfig,
    IdentityHeaders,
    RouteConfig,
    UpstreamConfig,
)
from .reasons import Reason
from .token_source import without_cookie
from .tokens.token import ValidatedToken, header_safe, scope_token
from .upstream_tls import TLSFileProblem, report_failure, server_name, upstream_context

HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
              "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Expect")
)
# set by the gateway for the upstream; whatever the client sent under these names is dropped
FORWARDING_HEADERS = frozenset(
    {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-request-id",
     # what forward-auth hosts send to describe the original request: meaningless to an upstream
     "x-original-uri", "x-original-url", "x-original-method", "x-forwarded-uri", "x-forwarded-method"}
)
# client-address and scheme headers some upstreams believe, set by the proxies and CDNs that may
# stand in front of the gateway: passed on only from a trusted proxy
CLIENT_ADDRESS_HEADERS = frozenset(
    {"x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server", "x-client-ip",
     "true-client-ip", "cf-connecting-ip", "cf-connecting-ipv6", "fastly-client-ip", "x-envoy-external-address",
     "x-forwarded-scheme", "x-forwarded-protocol", "x-forwarded-ssl", "x-url-scheme", "front-end-https"}
)
_CHUNK = 64 * 1024
_SMALL_BODY = 64 * 1024
# streamed answers that stay open (server-sent events, NDJSON feeds): relayed by ``live`` when given,
# so that they end with their token (websocket.serve_stream)
LIVE_STREAM_TYPES = frozenset({"text/event-stream", "application/x-ndjson"})
LiveRelay = Callable[[web.BaseRequest, aiohttp.ClientResponse, list[tuple[str, str]]], Awaitable[web.StreamResponse]]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Fixed hop-by-hop headers plus every header named in ``Connection``."""
    values = headers.getall("Connection", ())
    if not values:
        return HOP_BY_HOP
    single = values[0] if len(values) == 1 else None
    if single is not None and single in _HOP_BY_HOP_OF:
        return _HOP_BY_HOP_OF[single]  # "keep-alive", "close"...: the same few values on every request
    named = {token.strip().lower() for value in values for token in value.split(",") if token.strip()}
    result = HOP_BY_HOP | named if named else HOP_BY_HOP
    if single is not None and len(_HOP_BY_HOP_OF) < 256:
        _HOP_BY_HOP_OF[single] = result
    return result


_HOP_BY_HOP_OF: dict[str, frozenset[str]] = {}  # by the value of a lone Connection header (bounded)


def forwarded_for(headers: CIMultiDictProxy[str]) -> str | None:
    """Every X-Forwarded-For line as one chain: a proxy may add its own line instead of appending."""
    lines = headers.getall("X-Forwarded-For", ())
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ", ".join(lines)


def header_key(name: str) -> str:
    """A header name as upstreams may read it: CGI, PHP and nginx's underscores_in_headers treat
    ``X_Auth_Subject`` as ``X-Auth-Subject``, so both spellings are dropped alike."""
    return name.lower().replace("_", "-")


class UnsafeIdentity(ValueError):
    """A token value cannot be sent as an identity header as it is (answered ``invalid_claim``).

    Tokens built from claims never get here (``token_from_claims`` refuses them); this is the
    last check before a value would reach the HTTP writer, which would fail with a 500 or, worse,
    a lenient one would split the header.
    """


def identity_values(token: ValidatedToken | None, names: IdentityHeaders) -> list[tuple[str, str]]:
    """The identity headers describing ``token`` (empty values for a public route).

    Raises UnsafeIdentity when a value of the token cannot be a header value.
    """
    if token is None:
        return [(names.subject, ""), (names.client_id, ""), (names.scopes, "")]
    subject, client_id = token.subject or "", token.client_id or ""
    if not (header_safe(subject) and header_safe(client_id)):
        raise UnsafeIdentity("the subject or client id cannot be a header value")
    return [(names.subject, subject), (names.client_id, client_id), (names.scopes, _scope_header(token.scopes))]


@dataclass(frozen=True, slots=True)
class HeaderStrip:
    """A compiled ``strip_request_headers`` list, in ``header_key`` form."""

    names: frozenset[str]
    prefixes: tuple[str, ...]  # from "Name-*" entries
    cookies: frozenset[str] = frozenset()  # a token_source cookie: removed from Cookie, the others kept


def compile_strip(names: Sequence[str]) -> HeaderStrip:
    """``@defaults`` stands for the default list; ``Name-*`` is a prefix; ``_``, ``-`` and case are alike."""
    if STRIP_DEFAULTS in names:
        names = [*DEFAULT_STRIP_REQUEST_HEADERS, *(n for n in names if n != STRIP_DEFAULTS)]
    keys = [header_key(name) for name in names]
    return HeaderStrip(
        frozenset(k for k in keys if not k.endswith("*")), tuple(sorted({k[:-1] for k in keys if k.endswith("*")}))
    )


def strip_rule(route: RouteConfig | None, config: GatewayConfig) -> HeaderStrip:
    """The route's ``strip_request_headers``, else the top-level list; compiled once per list.

    Always added: the ``client_certificates.header`` (a certificate the gateway read, or ignored
    from an untrusted peer, must not reach an upstream that would believe it), every configured
    claim header name (only the gateway's values reach the upstream), and the route's
    ``token_source`` header or cookie (the token stays at the gateway, as with a query token).
    """
    names = route.strip_request_headers if route is not None and route.strip_request_headers is not None else None
    if names is None:
        names = config.strip_request_headers
    certificate = config.client_certificates.header if config.client_certificates is not None else None
    source = route.token_source if route is not None else None
    added = (certificate, claim_header_names(config), source.header if source else None,
             source.cookie if source else None)
    key = (id(names), added)
    entry = _STRIP_RULES.get(key)
    if entry is None or entry[0] is not names:  # the list itself is kept, so its id is never reused meanwhile
        if len(_STRIP_RULES) >= 1024:
            _STRIP_RULES.clear()
        extra = [name for name in (certificate, *added[1], added[2]) if name]
        compiled = compile_strip([*names, *extra])
        if added[3]:
            compiled = HeaderStrip(compiled.names, compiled.prefixes, frozenset({added[3]}))
        entry = _STRIP_RULES[key] = (names, compiled)
    return entry[1]


_Added = tuple[str | None, tuple[str, ...], str | None, str | None]
# by id of the configured list and what is added to it (bounded)
_STRIP_RULES: dict[tuple[int, _Added], tuple[Sequence[str], HeaderStrip]] = {}
NO_STRIP = HeaderStrip(frozenset(), ())


def client_address(peer: str, forwarded_for: str | None, trusted: list[IPNetwork]) -> str:
    """The client IP: the peer, or the last untrusted hop of X-Forwarded-For when the peer is trusted."""
    if not trusted or not forwarded_for or not is_trusted(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not is_trusted(hop, trusted):
            return hop if _is_ip(hop) else peer
    return peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_trusted(address: str, trusted: list[IPNetwork]) -> bool:
    if not trusted:  # the common case: no address to parse
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


@dataclass(frozen=True, slots=True)
class ForwardContext:
    """Per-request facts the header rules need."""

    client_ip: str
    peer: str
    peer_trusted: bool
    scheme: str
    host: str
    request_id: str


def upstream_headers(
    incoming: CIMultiDictProxy[str], context: ForwardContext, upstream: Upstream,
    token: ValidatedToken | None, identity: IdentityHeaders, strip: HeaderStrip = NO_STRIP,
    claims: Sequence[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    """Headers for the upstream request; UnsafeIdentity when the token's values cannot be headers.

    ``claims`` are the route's claim headers (``Decision.claim_headers``), set after every client
    header of those names was dropped (``strip``)."""
    identity_headers = identity_values(token, identity) if token is not None else None  # may raise: do it first
    forward_authorization = upstream.config.forward_authorization
    key = (identity.subject, identity.client_id, identity.scopes, forward_authorization, context.peer_trusted, strip)
    rule = _DROPPED.get(key)
    if rule is None:
        dropped = HOP_BY_HOP | FORWARDING_HEADERS | {header_key(n) for n in identity.names()} | strip.names
        if not forward_authorization:
            dropped |= {"authorization"}
        if not context.peer_trusted:
            dropped |= CLIENT_ADDRESS_HEADERS
        if len(_DROPPED) >= 1024:
            _DROPPED.clear()
        rule = _DROPPED[key] = _HeaderFilter(dropped, strip.prefixes)
    known, learn = rule.kept.get, rule.learn
    if "Connection" in incoming:
        named = hop_by_hop(incoming)
        kept = [(n, v) for n, v in incoming.items() if (known(n) or learn(n)) and header_key(n) not in named]
    else:
        kept = [(n, v) for n, v in incoming.items() if known(n) or learn(n)]
    headers: CIMultiDict[str] = CIMultiDict(kept)
    # a trusted proxy's chain is kept and its own address added; otherwise the chain starts here
    prior = forwarded_for(incoming) if context.peer_trusted else None
    headers["X-Forwarded-For"] = f"{prior}, {context.peer}" if prior else context.peer
    headers["X-Forwarded-Proto"] = (context.peer_trusted and incoming.get("X-Forwarded-Proto")) or context.scheme
    # the host the route was matched on, never another one a proxy named: the upstream acts on what was authorised
    headers["X-Forwarded-Host"] = context.host
    headers["X-Request-Id"] = context.request_id
    headers["Host"] = context.host if upstream.config.preserve_host else upstream.host_header
    if identity_headers is not None:
        headers.extend(identity_headers)
    if claims:
        headers.extend(claims)
    if strip.cookies and "Cookie" in headers:
        drop_cookies(headers, strip.cookies)
    return headers


def drop_cookies(headers: CIMultiDict[str], names: frozenset[str]) -> None:
    """Remove the cookies ``names`` from every ``Cookie`` line (a line left empty goes too)."""
    lines = [without_cookie(line, names) for line in headers.getall("Cookie")]
    del headers["Cookie"]
    for line in lines:
        if line:
            headers.add("Cookie", line)


class _HeaderFilter:
    """Which request headers pass, decided once per header name as sent and then looked up:
    the same few dozen names arrive on every request."""

    __slots__ = ("dropped", "kept", "prefixes")

    def __init__(self, dropped: frozenset[str], prefixes: tuple[str, ...]) -> None:
        self.dropped = dropped
        self.prefixes = prefixes
        self.kept: dict[str, bool] = {}  # header name as sent -> passes (bounded: names a client makes up)

    def learn(self, name: str) -> bool:
        if name in self.kept:
            return False  # known, and dropped: ``kept.get`` answered False already
        lowered = header_key(name)
        passes = lowered not in self.dropped and not lowered.startswith(self.prefixes)
        if len(self.kept) < 1024 and len(name) <= 64:
            self.kept[name] = passes
        return passes


# what upstream_headers drops, by identity header names, forward_authorization, peer trust and
# strip rule (bounded: emptied when full)
_DROPPED: dict[tuple[str, str, str, bool, bool, HeaderStrip], _HeaderFilter] = {}
_SCOPE_HEADERS: dict[frozenset[str], str] = {}  # bounded: emptied when full


def _scope_header(scopes: frozenset[str]) -> str:
    """The scopes as one space-separated, sorted header value (computed once per scope set).

    Each scope must be an RFC 6749 scope-token: one holding a space would reach the upstream
    as two scopes the token does not have.
    """
    value = _SCOPE_HEADERS.get(scopes)
    if value is None:
        if not all(scope_token(scope) for scope in scopes):
            raise UnsafeIdentity("a scope is not a scope-token")
        if len(_SCOPE_HEADERS) >= 4096:
            _SCOPE_HEADERS.clear()
        value = _SCOPE_HEADERS[scopes] = " ".join(sorted(scopes))
    return value


class Upstream:
    """One upstream service: its base URL and its keep-alive connection pool."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.base = URL(config.url)
        self.host_header = self.base.raw_host or ""
        if self.base.port is not None and not self.base.is_default_port():
            self.host_header += f":{self.base.port}"
        self._base_path = self.base.raw_path.rstrip("/")
        self.server_name = server_name(config)  # SNI and certificate name instead of the URL's host (https)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        try:
            tls = upstream_context(self.config)  # https: verified, with ca_file and a client certificate if set
        except TLSFileProblem as exc:  # the loader checked the files: one went missing since
            raise ConfigError([f"upstreams.{self.name}.tls.{exc.key}: {exc}"]) from None
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections, limit_per_host=self.config.max_connections,
            keepalive_timeout=30, enable_cleanup_closed=False, ssl=tls if tls is not None else True,
        )
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.config.connect_timeout, sock_read=self.config.timeout
            ),
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    def url(self, forward_target: str) -> URL:
        return URL(f"{self.base.scheme}://{self.base.raw_authority}{self._base_path}{forward_target}", encoded=True)


class Upstreams:
    def __init__(self, config: GatewayConfig) -> None:
        self.by_name = {name: Upstream(name, c) for name, c in config.upstreams.items()}

    def __getitem__(self, name: str) -> Upstream:
        return self.by_name[name]

    async def start(self) -> None:
        for upstream in self.by_name.values():
            await upstream.start()

    async def stop(self) -> None:
        for upstream in self.by_name.values():
            await upstream.stop()


async def _body(request: web.BaseRequest, exchange: Exchange, limit: int) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        exchange.bytes_in += len(chunk)
        if exchange.bytes_in > limit:
            raise BodyTooLarge
        yield chunk


def has_body(request: web.BaseRequest) -> bool:
    """Whether the request carries a body (Content-Length > 0 or chunked, as aiohttp's parser saw it)."""
    return request.body_exists


async def forward(
    request: web.BaseRequest, target: str, upstream: Upstream, headers: CIMultiDict[str],
    exchange: Exchange, body_limit: int, own_headers: Sequence[tuple[str, str]] = (),
    live: LiveRelay | None = None,
) -> web.StreamResponse:
    """Send the request upstream and stream the answer back to the client.

    ``own_headers`` are the gateway's (``DPoP-Nonce``, RateLimit): they replace the upstream's of the
    same name. ``live`` relays an answer of ``LIVE_STREAM_TYPES`` instead (it is not buffered either).
    """
    assert upstream.session is not None
    data = _body(request, exchange, body_limit) if has_body(request) else None
    started = time.monotonic()
    try:
        upstream_response = await upstream.session.request(
            request.method, upstream.url(target), headers=headers, data=data, allow_redirects=False,
            compress=None, chunked=None, server_hostname=upstream.server_name,
        )
    except BodyTooLarge:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamFailure(Reason.UPSTREAM_TIMEOUT) from None
    except aiohttp.ClientSSLError as exc:  # an unverifiable certificate, a refused client certificate
        report_failure(upstream.name, exc)
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE) from None
    except aiohttp.ClientError:
        if exchange.bytes_in > body_limit:  # aiohttp wraps the BodyTooLarge of _body in a ClientConnectionError
            raise BodyTooLarge from None
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE) from None
    exchange.upstream_ms = (time.monotonic() - started) * 1000
    try:
        return await _relay(request, upstream_response, exchange, own_headers, live)
    finally:
        upstream_response.release()


async def _relay(
    request: web.BaseRequest, upstream_response: aiohttp.ClientResponse, exchange: Exchange,
    own_headers: Sequence[tuple[str, str]] = (), live: LiveRelay | None = None,
) -> web.StreamResponse:
    # a list: web.Response copies it into its own CIMultiDict, no need to build one first
    dropped = hop_by_hop(upstream_response.headers)
    if own_headers:
        dropped = dropped | {name.lower() for name, _ in own_headers}
    headers = [
        (name, value) for name, value in upstream_response.headers.items()
        if (lowered := name.lower()) not in dropped and lowered != "x-request-id"
    ]
    headers.extend(own_headers)
    headers.append(("X-Request-Id", exchange.request_id))
    length = upstream_response.content_length
    if request.method == "HEAD" or (length is not None and length <= _SMALL_BODY):
        # small answers go out in one write: head and body together
        body = b"" if request.method == "HEAD" else await _read_small(upstream_response)
        exchange.bytes_out = len(body)
        response = web.Response(status=upstream_response.status, reason=upstream_response.reason, headers=headers)
        if request.method != "HEAD":
            response.body = body
        return response
    if live is not None and upstream_response.content_type in LIVE_STREAM_TYPES:
        return await live(request, upstream_response, headers)
    stream = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason, headers=headers)
    try:
        await stream.prepare(request)
        async for chunk in _upstream_chunks(request, upstream_response, stream):
            await stream.write(chunk)
            exchange.bytes_out += len(chunk)
        await stream.write_eof()
    except ConnectionResetError:  # the client went away: normal traffic, not an error
        raise StreamAborted(Reason.CLIENT_DISCONNECTED, stream) from None
    return stream


async def _upstream_chunks(
    request: web.BaseRequest, upstream_response: aiohttp.ClientResponse, stream: web.StreamResponse
) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream_response.content.iter_chunked(_CHUNK):
            yield chunk
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        # the head is already out: the only honest signal left is to cut the connection
        if request.transport is not None:
            request.transport.close()
        raise StreamAborted(Reason.UPSTREAM_UNAVAILABLE, stream) from None


async def _read_small(upstream_response: aiohttp.ClientResponse) -> bytes:
    try:
        return await upstream_response.read()
    except TimeoutError:
        raise UpstreamFailure(Reason.UPSTREAM_TIMEOUT) from None
    except aiohttp.ClientError:
        raise UpstreamFailure(Reason.UPSTREAM_UNAVAILABLE) from None
