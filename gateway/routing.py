"""Host and raw request-target checks, normalisation, and the compiled route table.

The gateway matches, authorises and forwards one and the same normalised path, so an
upstream can never see a path that differs from the one that was authorised
(``/public/health/../../orders``, ``%2e%2e``, ``..%2f`` and friends).

Some upstreams normalise further in ways the gateway cannot undo for them: they drop path
parameters (``/admin;x`` is ``/admin`` to a servlet container), trailing dots and spaces
(``/admin.`` is ``/admin`` to IIS), a trailing slash, or everything after a decoded ``?``.
The route table therefore also matches the path as such an upstream would see it, and a
request whose two readings land on different routes is refused rather than guessed
(``RouteMatch.refused``, answered 400 ``bad_path``).

A route matches by ``path`` (exact, or ``{param}`` segments), ``path_prefix`` (at a segment
boundary), ``path_regex`` or ``path_glob`` (RE2 programs compiled at load: path_patterns.py);
every kind sees the same normalised path, never the query.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_to_bytes

from .config import HTTP_METHODS, RouteConfig, compiled_rule
from .path_patterns import PathPattern, compile_glob, compile_regex
from .rules import Rule, path_parameter_names
from .stepup import StepUpPolicy

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# allowed raw in a path: unreserved, sub-delims, ":" "@" "/" and "%" (checked separately)
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
# encoded forms that change how a path splits or ends: "/", "\", NUL, and "%" itself (double encoding)
_FORBIDDEN_ENCODED = frozenset({"2F", "5C", "00", "25"})


class BadTarget(ValueError):
    """The request target is malformed or ambiguous; answered with 400."""


# --- Host (RFC 9112 3.2, RFC 3986 3.2.2) ---------------------------------------------------

# Stricter than RFC 3986 reg-name on purpose: DNS-style labels only. Sub-delims ("a,b" splits an
# X-Forwarded-Host list), percent-encoding (decoded differently downstream), userinfo and
# whitespace have no place in a Host an upstream may read as its virtual host.
_HOST = re.compile(
    r"(?:(?P<name>(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?"
)
_HOST_NAME_MAX = 254  # RFC 1035: 253 characters, plus a trailing dot


def valid_host(host: str) -> bool:
    """Whether ``host`` is a Host header value the gateway routes on: a DNS name, an IPv4 address or a
    bracketed IPv6 address, and optionally a port from 1 to 65535. An empty or missing Host is not."""
    if host in _VALID_HOSTS:  # a deployment sees a handful of hosts: checked once each
        return True
    if not _check_host(host):
        return False
    if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS.add(host)
    return True


_VALID_HOSTS: set[str] = set()  # bounded: emptied when full
_VALID_HOSTS_MAX = 1024


def _check_host(host: str) -> bool:
    if len(host) > _HOST_NAME_MAX + 6:  # the longest name and ":65535"; also spares the regex long input
        return False
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        return False
    name = match.group("name")
    if name is not None:
        return len(name) <= _HOST_NAME_MAX
    try:
        ipaddress.IPv6Address(match.group("ipv6"))
    except ValueError:
        return False
    return True


def host_key(host: str) -> str:
    """The host as routes are matched on it: no port, lower case, no trailing dot
    (``Admin.Example.:443`` is the virtual host ``admin.example`` to DNS and to upstreams)."""
    host = host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].removesuffix(".")


# --- request target ------------------------------------------------------------------------


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


def _utf8(segment: str) -> bool:
    """Whether the percent-encoded bytes of a segment decode as UTF-8: overlong forms (``%C0%AF``),
    lone continuation bytes and encoded surrogates are what lenient decoders turn into ``/`` or ``.``."""
    try:
        unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# a path parameter starts at ";" (RFC 3986 3.3), and at "%3B" for upstreams that decode before they split
_PARAMETERS = re.compile(r";|%3B")


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
        if (";" in decoded or "%3B" in decoded) and _PARAMETERS.split(decoded, 1)[0] in (".", "..", ""):
            raise BadTarget("path parameters on a dot or empty segment")  # Tomcat-style "..;/"
        if "%" in decoded and not _utf8(decoded):
            raise BadTarget("percent-encoded bytes that are not UTF-8")
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
NO_STEP_UP = StepUpPolicy()


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
    allow_path_parameters: bool = False
    case_insensitive: bool = False  # the patterns below are then folded (``fold``)
    exact: str | None = None
    prefix: str | None = None
    segments: tuple[str | None, ...] | None = None  # None marks a {param} segment
    pattern: PathPattern | None = None  # path_regex / path_glob (RE2: linear in the path)
    config: RouteConfig | None = field(default=None, compare=False, repr=False)
    sender_constraint: str | None = None  # overrides the token issuer's (binding.py)
    rules: tuple[Rule, ...] = ()  # compiled CEL claims rules, in order
    step_up: StepUpPolicy = NO_STEP_UP  # RFC 9470 acr_values / max_age
    parameter_names: tuple[str | None, ...] = ()  # per segment of ``path``: the {name}, for the rules' ``path``
    checks_claims: bool = False  # rules or step-up to evaluate (one flag read on the hot path)
    token_cookie: str | None = None  # token_source: the cookie that may carry the token
    token_header: str | None = None  # token_source: the header that may carry the token

    def matches_path(self, path: str, parts: list[str]) -> bool:
        """``path`` and ``parts`` are folded already when the route is case-insensitive."""
        if self.exact is not None:
            return path == self.exact
        if self.prefix is not None:
            return path.startswith(self.prefix) or path + "/" == self.prefix
        if self.pattern is not None:
            return self.pattern.matches(path)
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
        auth_required=config.auth == "bearer", host=config.host.lower().removesuffix(".") if config.host else None,
        issuers=frozenset(config.issuers) if config.issuers is not None else None,
        allow_query_token=config.allow_query_token, max_body_size=config.max_body_size, config=config,
        allow_path_parameters=config.allow_path_parameters, case_insensitive=config.case_insensitive,
        sender_constraint=config.sender_constraint,
        rules=tuple(compiled_rule(rule.name, rule.expression) for rule in config.rules),
        step_up=StepUpPolicy.of(config.acr_values, config.max_age),
        checks_claims=bool(config.rules or config.acr_values or config.max_age is not None),
        parameter_names=path_parameter_names(config.path) if config.path is not None and config.rules else (),
        token_cookie=config.token_source.cookie if config.token_source is not None else None,
        token_header=config.token_source.header if config.token_source is not None else None,
    )
    if config.path_regex is not None:  # case_insensitive is refused with it: (?i) says it in the expression
        return Route(pattern=compile_regex(config.path_regex), **common)  # type: ignore[arg-type]
    if config.path_glob is not None:
        folding = fold if config.case_insensitive else None
        return Route(pattern=compile_glob(config.path_glob, folding), **common)  # type: ignore[arg-type]
    pattern = fold if config.case_insensitive else str
    if config.path_prefix is not None:
        prefix = config.path_prefix if config.path_prefix.endswith("/") else config.path_prefix + "/"
        return Route(prefix=pattern(prefix), **common)  # type: ignore[arg-type]
    assert config.path is not None
    parts = config.path.strip("/").split("/")
    if not any(_PARAM.match(p) for p in parts):
        return Route(exact=pattern(config.path), **common)  # type: ignore[arg-type]
    segments = tuple(None if _PARAM.match(p) else pattern(p) for p in parts)
    return Route(segments=segments, **common)  # type: ignore[arg-type]


def fold(path: str) -> str:
    """A path compared without case (``case_insensitive`` routes): decoded (it is valid UTF-8 once
    normalised), then Unicode case-folded, so ``/ADMIN``, ``/Admin`` and ``/CAF%C3%89`` (``/CAFÉ``)
    compare like ``/admin`` and ``/caf%C3%A9``, and the Kelvin sign like a ``k``."""
    return unquote(path).casefold()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route | None
    allowed_methods: frozenset[str] = frozenset()  # for 405 when the path matched but not the method
    refused: bool = False  # path parameters the route does not allow, or a variant routed elsewhere: 400


_REFUSED = RouteMatch(None, refused=True)


def without_parameters(path: str) -> str | None:
    """The path with every segment's parameters (``;...``, ``%3B...``) removed, as servlet
    containers and JAX-RS route it; None when it has none."""
    if ";" not in path and "%3B" not in path:
        return None
    return "/".join(_PARAMETERS.split(segment, 1)[0] for segment in path.split("/"))


# what trimming upstreams drop: trailing dots (Windows, IIS), and whitespace at either end of a
# segment, encoded (C0 controls and space: Java's String.trim; Unicode spaces: .NET's Trim)
_SPACES = frozenset(
    {f"%{byte:02X}" for byte in range(0x01, 0x21)}
    | {"%C2%85", "%C2%A0", "%E1%9A%80", "%E2%80%A8", "%E2%80%A9", "%E2%80%AF", "%E2%81%9F", "%E3%80%80"}
    | {f"%E2%80%8{digit}" for digit in "0123456789A"}
)
_SPACE_LENGTHS = (3, 6, 9)  # one, two or three encoded bytes
# a decoded "?" or "#" ends the path for an upstream that decodes before it parses
_ENDS_PATH = re.compile(r"%3F|%23")


def trimmed(path: str) -> str | None:
    """The path as an upstream that trims would route it; None when that is the path itself,
    "" when a segment would vanish altogether (``/...``, ``/%20``): nothing sensible to route."""
    if "." not in path and "%" not in path and not path.endswith("/"):
        return None  # the common case
    out = _ENDS_PATH.split(path, 1)[0]
    segments = []
    for segment in out.split("/"):
        if segment:
            segment = _trim(segment)
            if not segment:
                return ""
        segments.append(segment)
    out = "/".join(segments)
    if len(out) > 1 and out.endswith("/"):
        out = out[:-1]
    return out if out != path else None


def _trim(segment: str) -> str:
    """The segment without trailing dots and spaces and leading spaces; a loop, not a regex
    anchored at ``$``, which would be quadratic on a long run of them."""
    start, end = 0, len(segment)
    while end > start:
        if segment[end - 1] == ".":
            end -= 1
            continue
        cut = next((n for n in _SPACE_LENGTHS if end - n >= start and segment[end - n : end] in _SPACES), 0)
        if not cut:
            break
        end -= cut
    while start < end:
        cut = next((n for n in _SPACE_LENGTHS if start + n <= end and segment[start : start + n] in _SPACES), 0)
        if not cut:
            break
        start += cut
    return segment[start:end]


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
        host = host_key(host)
        bare = without_parameters(path)
        path = path if bare is None else bare  # routed as the upstream that drops parameters sees it
        found = self._first(host, method, path)
        if bare is not None and (found.route is None or not found.route.allow_path_parameters):
            return _REFUSED
        variant = trimmed(path)
        if variant is not None and (not variant or self._first(host, method, variant).route is not found.route):
            return _REFUSED  # "/api/admin." and "/api/admin" must not be told apart by the routes
        return found

    def _first(self, host: str, method: str, path: str) -> RouteMatch:
        parts = path.strip("/").split("/")
        folded: tuple[str, list[str]] | None = None
        allowed: set[str] = set()
        for route in self.routes:
            if not route.matches_host(host):
                continue
            if route.case_insensitive:
                if folded is None:
                    folded_path = fold(path)
                    folded = (folded_path, folded_path.strip("/").split("/"))
                if not route.matches_path(*folded):
                    continue
            elif not route.matches_path(path, parts):
                continue
            if method in route.methods:
                return RouteMatch(route)
            allowed |= route.methods
        return RouteMatch(None, frozenset(allowed))
