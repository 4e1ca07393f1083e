"""Raw request-target normalisation and the compiled route table.

The gateway matches, authorises and forwards one and the same normalised path, so an
upstream can never see a path that differs from the one that was authorised
(``/public/health/../../orders``, ``%2e%2e``, ``..%2f`` and friends).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import HTTP_METHODS, RouteConfig

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# allowed raw in a path: unreserved, sub-delims, ":" "@" "/" and "%" (checked separately)
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
# encoded forms that change how a path splits or ends: "/", "\", NUL, and "%" itself (double encoding)
_FORBIDDEN_ENCODED = frozenset({"2F", "5C", "00", "25"})


class BadTarget(ValueError):
    """The request target is malformed or ambiguous; answered with 400."""


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised request target: the path that is matched, authorised and forwarded."""

    path: str
    query: str

    @property
    def forward(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def _decode_unreserved(segment: str) -> str:
    """Percent-decode unreserved characters, upper-case the hex of the rest (RFC 3986 6.2.2)."""
    if "%" not in segment:
        return segment
    out: list[str] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        code = segment[i + 1 : i + 3]
        if len(code) != 2 or not set(code) <= _HEX:
            raise BadTarget("invalid percent-encoding")
        code = code.upper()
        if code in _FORBIDDEN_ENCODED:
            raise BadTarget("encoded slash, backslash, NUL or percent")
        decoded = chr(int(code, 16))
        out.append(decoded if decoded in _UNRESERVED else f"%{code}")
        i += 3
    return "".join(out)


def remove_dot_segments(segments: list[str]) -> list[str]:
    """RFC 3986 5.2.4 on a split path; ``..`` above the root stays at the root."""
    out: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return out


# raw path -> normalised path, for paths already seen (bounded: emptied when full)
_NORMALISED: dict[str, str] = {}
_NORMALISED_MAX = 4096
# only short keys are cached: a few MiB at most, and long made-up paths cannot push out the real ones
_CACHED_KEY_MAX = 256


def _query_ok(query: str) -> bool:
    """Only visible ASCII (0x21-0x7E) in the query."""
    return query.isascii() and query.isprintable() and " " not in query


def normalise_target(raw_target: str) -> Target:
    """Normalise the raw request target as the client sent it (origin-form only)."""
    path, _, query = raw_target.partition("?")
    normalised = _NORMALISED.get(path)
    if normalised is not None:  # the path passed every check below before; the query has not
        if "#" in query:
            raise BadTarget("the request target must be an absolute path")
        if not _query_ok(query):
            raise BadTarget("the query holds control or non-ASCII characters")
        return Target(normalised, query)
    if not path.startswith("/") or "#" in raw_target:
        raise BadTarget("the request target must be an absolute path")
    if not set(path) <= _PATH_CHARS:
        raise BadTarget("the path holds characters that must be percent-encoded")
    if not _query_ok(query):
        raise BadTarget("the query holds control or non-ASCII characters")
    ends_with_slash = False  # judged on the decoded last segment: "/a/%2e%2e" is "/a/.." (RFC 3986 6.2.2)
    segments = []
    for segment in path.split("/"):
        decoded = _decode_unreserved(segment)
        ends_with_slash = decoded in ("", ".", "..")
        base = decoded.split(";", 1)[0]
        if ";" in decoded and base in (".", "..", ""):
            raise BadTarget("path parameters on a dot or empty segment")  # Tomcat-style "..;/"
        if decoded:  # empty segments ("//") collapse
            segments.append(decoded)
    segments = remove_dot_segments(segments)
    normalised = "/" + "/".join(segments)
    if ends_with_slash and segments:
        normalised += "/"
    if len(path) <= _CACHED_KEY_MAX:
        if len(_NORMALISED) >= _NORMALISED_MAX:
            _NORMALISED.clear()
        _NORMALISED[path] = normalised
    return Target(normalised, query)


# --- routes --------------------------------------------------------------------------------

_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: its matcher plus what the policy needs."""

    name: str
    upstream: str
    methods: frozenset[str]
    scopes: frozenset[str]
    any_scopes: frozenset[str]
    auth_required: bool
    host: str | None
    issuers: frozenset[str] | None
    allow_query_token: bool
    max_body_size: int | None
    exact: str | None = None
    prefix: str | None = None
    segments: tuple[str | None, ...] | None = None  # None marks a {param} segment
    config: RouteConfig | None = field(default=None, compare=False, repr=False)

    def matches_path(self, path: str, parts: list[str]) -> bool:
        if self.exact is not None:
            return path == self.exact
        if self.prefix is not None:
            return path.startswith(self.prefix) or path + "/" == self.prefix
        assert self.segments is not None
        return len(parts) == len(self.segments) and all(
            want is None or want == got for want, got in zip(self.segments, parts, strict=True)
        )

    def matches_host(self, host: str) -> bool:
        if self.host is None:
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and host != self.host[2:]
        return host == self.host


def compile_route(config: RouteConfig) -> Route:
    methods: set[str] = {m for m in config.methods if m != "*"}
    if "*" in config.methods:
        methods = set(HTTP_METHODS)
    if "GET" in methods:
        methods.add("HEAD")  # HEAD is GET without the body (RFC 9110 9.3.2)
    common = dict(
        name=config.name, upstream=config.upstream, methods=frozenset(methods),
        scopes=frozenset(config.scopes), any_scopes=frozenset(config.any_scopes),
        auth_required=config.auth == "bearer", host=config.host.lower() if config.host else None,
        issuers=frozenset(config.issuers) if config.issuers is not None else None,
        allow_query_token=config.allow_query_token, max_body_size=config.max_body_size, config=config,
    )
    if config.path_prefix is not None:
        prefix = config.path_prefix if config.path_prefix.endswith("/") else config.path_prefix + "/"
        return Route(prefix=prefix, **common)  # type: ignore[arg-type]
    assert config.path is not None
    parts = config.path.strip("/").split("/")
    if not any(_PARAM.match(p) for p in parts):
        return Route(exact=config.path, **common)  # type: ignore[arg-type]
    segments = tuple(None if _PARAM.match(p) else p for p in parts)
    return Route(segments=segments, **common)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route | None
    allowed_methods: frozenset[str] = frozenset()  # for 405 when the path matched but not the method


_MATCHES_MAX = 4096


class RouteTable:
    """Routes in configured order: the first route matching host, path and method wins."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.routes = [compile_route(r) for r in routes]
        self._matches: dict[tuple[str, str, str], RouteMatch] = {}  # bounded: emptied when full

    def match(self, host: str, method: str, path: str) -> RouteMatch:
        key = (host, method, path)
        found = self._matches.get(key)
        if found is None:
            found = self._match(host, method, path)
            if len(path) + len(host) <= _CACHED_KEY_MAX:
                if len(self._matches) >= _MATCHES_MAX:
                    self._matches.clear()
                self._matches[key] = found
        return found

    def _match(self, host: str, method: str, path: str) -> RouteMatch:
        host = host.rsplit(":", 1)[0].lower() if not host.endswith("]") else host.lower()
        parts = path.strip("/").split("/")
        allowed: set[str] = set()
        for route in self.routes:
            if not route.matches_host(host) or not route.matches_path(path, parts):
                continue
            if method in route.methods:
                return RouteMatch(route)
            allowed |= route.methods
        return RouteMatch(None, frozenset(allowed))
