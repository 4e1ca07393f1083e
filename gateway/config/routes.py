"""The ``routes:`` section: where a route matches and what a token needs to pass it.

Checked when the file loads (path patterns and CEL rules compile here); the route table is built from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from ..path_patterns import compile_glob, compile_regex
from ..ratelimit.config import RateLimitConfig
from ..rules import RULE_NAME, Rule, compile_rule
from ..stepup import StepUpPolicy
from ..ws_upgrade import check_protocol_prefix
from .headers import ClaimHeaders, ClaimSeparator, StripHeaderName, TokenSourceConfig
from .issuers import SenderConstraint
from .values import Duration, Method, Model, Size

# one compiled program per (name, expression): the loader checks a rule and the route table reuses it
compiled_rule: Callable[[str, str], Rule] = functools.lru_cache(maxsize=4096)(compile_rule)


class RuleConfig(Model):
    """A claims rule of a route: a CEL expression that must be true (gateway/rules.py)."""

    name: str
    expression: str

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not RULE_NAME.match(name):
            raise ValueError(
                f"rule name {name!r} must be 1-64 characters of letters, digits, '_', '.', ':' or '-' "
                "(it is used as a metric label)"
            )
        return name

    @field_validator("expression")
    @classmethod
    def _compiles(cls, expression: str, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if name is not None:  # a bad name is reported on its own key
            compiled_rule(name, expression)  # ValueError: reported on this key's line
        return expression


def _acr_values(values: list[str]) -> list[str]:
    StepUpPolicy(tuple(values))  # ValueError for a value that cannot go into a challenge
    return values


def _path_regex(value: str | None) -> str | None:
    if value is not None:
        compile_regex(value)  # PatternError (a ValueError): reported on this key's line
    return value


def _path_glob(value: str | None) -> str | None:
    if value is not None:
        compile_glob(value)
    return value


class RouteConfig(Model):
    """One route of the policy: where it matches and what a token needs to pass."""

    name: str = Field(min_length=1)
    path: str | None = None
    path_prefix: str | None = None
    host: str | None = None
    methods: list[Method] = Field(default=["GET", "HEAD"], min_length=1)
    upstream: str
    scopes: list[str] = []
    any_scopes: list[str] = []
    auth: Literal["bearer", "none"] = "bearer"
    issuers: list[str] | None = None
    allow_query_token: bool = False
    allow_path_parameters: bool = False  # ";" in a segment: 400 unless set; matched without, forwarded as sent
    case_insensitive: bool = False  # match the path without case (for upstreams that ignore it)
    max_body_size: Size | None = None
    strip_request_headers: list[StripHeaderName] | None = None  # replaces the top-level list for this route
    sender_constraint: SenderConstraint | None = None  # overrides the token issuer's
    rules: list[RuleConfig] = []  # CEL, evaluated after the scopes; all must be true
    acr_values: Annotated[list[str], AfterValidator(_acr_values)] = []  # RFC 9470 step-up: acr one of these
    max_age: Duration | None = None  # RFC 9470 step-up: auth_time at most this long ago
    path_regex: Annotated[str | None, AfterValidator(_path_regex)] = None  # RE2, the whole normalised path
    path_glob: Annotated[str | None, AfterValidator(_path_glob)] = None  # *, ? and ** segments
    claim_headers: ClaimHeaders | None = None  # replaces the top-level claim_headers for this route
    claim_header_separator: ClaimSeparator | None = None  # joins array claims; default: the top-level one
    token_source: TokenSourceConfig | None = None  # a cookie or header that may carry the token instead
    rate_limits: list[RateLimitConfig] = []  # docs/traffic-control.md
    websocket: bool = False  # proxy Upgrade: websocket requests; other routes refuse them (400)
    # the token may come as one Sec-WebSocket-Protocol value: <prefix><base64url(token)>
    websocket_token_protocol_prefix: Annotated[str | None, AfterValidator(check_protocol_prefix)] = None

    @model_validator(mode="after")
    def _websocket_token(self) -> RouteConfig:
        if self.websocket_token_protocol_prefix is not None and not self.websocket:
            raise ValueError("websocket_token_protocol_prefix needs websocket: true")
        if self.websocket_token_protocol_prefix is not None and self.auth == "none":
            raise ValueError("a route with auth: none reads no token, so no websocket_token_protocol_prefix")
        return self

    @model_validator(mode="after")
    def _one_path(self) -> RouteConfig:
        kinds = [self.path, self.path_prefix, self.path_regex, self.path_glob]
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError("a route needs exactly one of path, path_prefix, path_regex or path_glob")
        pattern = self.path if self.path is not None else self.path_prefix
        if pattern is not None and not pattern.startswith("/"):
            raise ValueError("path and path_prefix must start with /")
        if self.path_regex is not None and self.case_insensitive:
            raise ValueError("case_insensitive does not apply to path_regex: write (?i) at its start instead")
        if self.auth == "none" and self.token_source is not None:
            raise ValueError("a route with auth: none reads no token, so no token_source")
        if self.auth == "none" and (self.scopes or self.any_scopes):
            raise ValueError("a route with auth: none cannot require scopes")
        if self.auth == "none" and (self.rules or self.acr_values or self.max_age is not None
                                    or self.sender_constraint is not None):
            raise ValueError("a route with auth: none has no token for rules, acr_values, max_age or sender_constraint")
        return self

