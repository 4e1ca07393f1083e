"""The headers of the upstream request (per request): the client's, filtered, plus the gateway's own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from ..addresses import forwarded_for
from .headers import (
    CLIENT_ADDRESS_HEADERS,
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    NO_STRIP,
    HeaderStrip,
    drop_cookies,
    header_key,
    hop_by_hop,
)
from .identity import identity_values

if TYPE_CHECKING:
    from ..config import IdentityHeaders
    from ..tokens.token import ValidatedToken
    from .upstream import Upstream


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
    # the scheme the decision used (ours when we terminate TLS, else a trusted proxy's http/https), never
    # a trusted proxy's raw value: the upstream sees what was authorised (a DPoP proof's htu, say)
    headers["X-Forwarded-Proto"] = context.scheme
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
