"""The request header rules (per request, compiled once per configuration): hop-by-hop headers
(RFC 9110 7.6.1), the headers the gateway sets itself, and the ``strip_request_headers`` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from ..claim_headers import claim_header_names
from ..config import DEFAULT_STRIP_REQUEST_HEADERS, STRIP_DEFAULTS
from ..token_source import without_cookie

if TYPE_CHECKING:
    from ..config import GatewayConfig, RouteConfig

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


def header_key(name: str) -> str:
    """A header name as upstreams may read it: CGI, PHP and nginx's underscores_in_headers treat
    ``X_Auth_Subject`` as ``X-Auth-Subject``, so both spellings are dropped alike."""
    return name.lower().replace("_", "-")


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
    front = _BY_ROUTE.get(id(route))
    if front is not None and front[0] is route and front[1] is config:  # frozen: the same objects, the same rule
        return front[2]
    rule = _strip_rule(route, config)
    if len(_BY_ROUTE) >= 1024:
        _BY_ROUTE.clear()
    _BY_ROUTE[id(route)] = (route, config, rule)  # both kept: their ids are never reused meanwhile
    return rule


def _strip_rule(route: RouteConfig | None, config: GatewayConfig) -> HeaderStrip:
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


# by id of the route's configuration (None: the middleware without a route), with the gateway's (bounded)
_BY_ROUTE: dict[int, tuple[RouteConfig | None, GatewayConfig, HeaderStrip]] = {}
_Added = tuple[str | None, tuple[str, ...], str | None, str | None]
# by id of the configured list and what is added to it (bounded)
_STRIP_RULES: dict[tuple[int, _Added], tuple[Sequence[str], HeaderStrip]] = {}
NO_STRIP = HeaderStrip(frozenset(), ())


def drop_cookies(headers: CIMultiDict[str], names: frozenset[str]) -> None:
    """Remove the cookies ``names`` from every ``Cookie`` line (a line left empty goes too)."""
    lines = [without_cookie(line, names) for line in headers.getall("Cookie")]
    del headers["Cookie"]
    for line in lines:
        if line:
            headers.add("Cookie", line)
