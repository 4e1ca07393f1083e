"""A compiled route and how it matches a host and a path (compiled at load, matched per request)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ..config import HTTP_METHODS, compiled_rule
from ..path_patterns import PathPattern, compile_glob, compile_regex
from ..rules import Rule, path_parameter_names
from ..stepup import StepUpPolicy

if TYPE_CHECKING:
    from ..config import RouteConfig

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
