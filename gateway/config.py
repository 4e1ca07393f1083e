"""Typed models of the gateway YAML and its loader.

The schema is declared with pydantic; the loader keeps the YAML node tree so that every
error names the file, the line and the key (``gateway.yaml:14: routes[1].upstream: ...``).
``${ENV_VAR}`` is substituted inside string values after parsing, so a secret can never
change the structure of the document.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config_errors import data_loc, describe, key_path, plain_message, yaml_syntax_problem
from .path_patterns import compile_glob, compile_regex
from .ratelimit import RateLimitConfig, RateLimitingConfig, compile_limits
from .rules import RULE_NAME, Rule, compile_rule
from .stepup import StepUpPolicy
from .tokens.issuer_pattern import TENANT_NAME, check_template, templated
from .tracing import check_export_headers, check_trace_url_template
from .traffic import check_protocol_prefix

if TYPE_CHECKING:
    from .tokens.certificates import TLSSettings

# --- value types ---------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def parse_duration(value: Any) -> float:
    """``30s``, ``5m``, ``250ms``, ``1h``, ``2d`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like 30s, 5m or 1h is expected")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m or 1h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: Any) -> int:
    """``10MiB``, ``512KB`` or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size like 10MiB or 1048576")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


@dataclass(frozen=True)
class Address:
    """A ``host:port`` listen address (``[::1]:8080`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not a host:port address")
    return Address(host.strip("[]") or "0.0.0.0", int(port))


def _absolute_http_url(value: Any) -> str:
    text = str(value)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an absolute http(s) URL")
    return text.rstrip("/") if text.count("/") > 2 else text


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
ListenAddress = Annotated[Address, BeforeValidator(parse_address)]
HttpUrl = Annotated[str, BeforeValidator(_absolute_http_url)]
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
Method = Annotated[
    Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"],
    BeforeValidator(lambda v: str(v).upper()),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections ------------------------------------------------------------------------------


class IntrospectionConfig(_Model):
    """RFC 7662 token introspection for one issuer."""

    endpoint: HttpUrl | None = None
    client_id: str
    client_secret: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = "client_secret_basic"
    private_key_file: str | None = None
    private_key_algorithm: Algorithm = "RS256"
    cache_ttl: Duration = 60.0
    negative_cache_ttl: Duration = 10.0
    cache_size: int = Field(default=100_000, ge=1)
    timeout: Duration = 2.0
    token_prefix: str | None = None
    shared_cache: bool = False
    redis_url: str | None = None  # the shared second-level cache (with shared_cache: true)
    # /readyz turns 503 once every call (and probe) has failed for this long: one blip drains no pod
    readiness_grace: Duration = 30.0

    @model_validator(mode="after")
    def _credentials_match_method(self) -> IntrospectionConfig:
        if self.shared_cache and not self.redis_url:
            raise ValueError("shared_cache: true needs redis_url")
        if self.auth_method == "private_key_jwt" and not self.private_key_file:
            raise ValueError("auth_method private_key_jwt needs private_key_file")
        if self.auth_method != "private_key_jwt" and not self.client_secret:
            raise ValueError(f"auth_method {self.auth_method} needs client_secret")
        return self


def _not_any_issuer(value: str) -> str:
    if value == "*":  # "*" names every issuer in revocation entries
        raise ValueError("'*' is reserved for revocation entries that cover every issuer")
    if templated(value):
        check_template(value)  # ValueError: reported on the issuer key
    return value


def _tenant_name(value: str) -> str:
    if not TENANT_NAME.fullmatch(value):
        raise ValueError(f"tenant {value[:80]!r} must be 1-128 letters, digits, '.', '_', '~' or '-', starting with a "
                         "letter or digit")
    return value


# what a token must be bound to (docs/sender-constrained.md): ``none`` and ``optional`` accept unbound tokens
# (``none`` advertises Bearer only); a bound token needs its proof under every value
SenderConstraint = Literal["none", "optional", "dpop", "mtls", "any"]


class IssuerDPoPConfig(_Model):
    """How DPoP proofs (RFC 9449) sent with this issuer's tokens are checked."""

    algorithms: list[Algorithm] = Field(default=["ES256", "RS256", "PS256", "EdDSA"], min_length=1)
    max_age: Duration = Field(default=60.0, gt=0)  # a proof's iat may be this old
    leeway: Duration = 5.0  # ... and this far in the future (the client's clock runs ahead)
    nonce: bool = False  # require the gateway's DPoP-Nonce in every proof (RFC 9449 section 8)


class IssuerConfig(_Model):
    """A trusted authorization server and how its tokens are checked."""

    issuer: Annotated[str, AfterValidator(_not_any_issuer)] = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)
    algorithms: list[Algorithm] = Field(default=["RS256", "ES256"], min_length=1)
    leeway: Duration = 30.0
    jwks_uri: HttpUrl | None = None
    require_typ: str | None = None
    required_claims: list[Annotated[str, Field(min_length=1)]] = []  # beyond exp/iss/aud (and RFC 9068's with at+jwt)
    validation: Literal["jwt", "introspection"] = "jwt"
    introspection: IntrospectionConfig | None = None
    jwks_refresh_interval: Duration = 300.0
    jwks_min_refresh_interval: Duration = 30.0
    jwks_refetch_burst: int = Field(default=3, ge=0)  # unknown-kid refetches allowed at once (a token bucket)
    http_timeout: Duration = 5.0
    max_token_lifetime: Duration = 86400.0
    sender_constraint: SenderConstraint = "optional"
    dpop: IssuerDPoPConfig = IssuerDPoPConfig()
    # a templated issuer ({tenant} in issuer; docs/issuers.md): the tenants trusted, and/or the claim naming it
    tenants: list[Annotated[str, AfterValidator(_tenant_name)]] | None = Field(default=None, min_length=1)
    tenant_claim: str | None = Field(default=None, min_length=1)
    max_tenants: int = Field(default=1000, ge=1)  # tenants whose keys are kept at once (least recently used go)

    @model_validator(mode="after")
    def _introspection_configured(self) -> IssuerConfig:
        if self.validation == "introspection" and self.introspection is None:
            raise ValueError("validation: introspection needs an introspection: section")
        return self

    @model_validator(mode="after")
    def _tenants_with_template(self) -> IssuerConfig:
        if not templated(self.issuer):
            if self.tenants is not None or self.tenant_claim is not None:
                raise ValueError("tenants and tenant_claim need a templated issuer (with {tenant} in issuer)")
            if self.jwks_uri is not None and "{tenant}" in self.jwks_uri:
                raise ValueError("jwks_uri may name {tenant} only for a templated issuer")
            return self
        if self.tenants is None and self.tenant_claim is None:
            raise ValueError("a templated issuer needs tenants (the allow-list) or tenant_claim (the claim naming "
                             "the tenant), or both: which tenants to trust must be said")
        if self.validation != "jwt" or self.introspection is not None:
            raise ValueError("a templated issuer validates JWTs with each tenant's keys: introspection is not "
                             "supported")
        return self

    @property
    def templated(self) -> bool:
        return templated(self.issuer)


def _verify_on(value: bool) -> bool:
    if value is not True:
        raise ValueError("certificate verification cannot be turned off: give the upstream's CA bundle in ca_file "
                         "(or its self-signed certificate), and server_name when it names another host")
    return value


class UpstreamTLSConfig(_Model):
    """TLS to an https:// upstream (gateway/upstream_tls.py): always verified."""

    ca_file: str | None = Field(default=None, min_length=1)  # PEM bundle; none: the system's trust store
    certificate: str | None = Field(default=None, min_length=1)  # client certificate (PEM, chain after it): mTLS
    key: str | None = Field(default=None, min_length=1)  # its private key (PEM, unencrypted)
    server_name: str | None = Field(default=None, min_length=1)  # SNI, and the name the certificate must carry
    minimum_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(str)] = "1.2"
    verify: Annotated[bool, AfterValidator(_verify_on)] = True

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTLSConfig:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("a client certificate needs both certificate and key")
        return self


class UpstreamConfig(_Model):
    url: HttpUrl
    timeout: Duration = 30.0
    connect_timeout: Duration = 5.0
    max_connections: int = Field(default=256, ge=1)
    preserve_host: bool = False
    forward_authorization: bool = True
    tls: UpstreamTLSConfig | None = None  # for an https:// url; without it: verified against the system's CAs

    @model_validator(mode="after")
    def _tls_for_https(self) -> UpstreamConfig:
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls: applies to an https:// url only")
        return self


# Request headers that upstream frameworks and authenticating proxies trust for the user, the
# client or the URL, host and method to act on (README "Headers the upstream trusts"). A client
# must never be able to send them through: dropped from every request before it is forwarded,
# whoever the peer is. "Name-*" drops every header whose name starts with "Name-"; "_" and "-"
# and letter case do not matter. Client-address headers a trusted proxy sets itself (X-Real-IP,
# True-Client-IP...) are a separate, fixed rule: they pass from trusted_proxies only (proxy.py).
DEFAULT_STRIP_REQUEST_HEADERS = (
    # the user, as authenticating proxies (oauth2-proxy, Kong, Grafana auth proxy, the Kubernetes
    # front proxy, cloud load balancers and identity-aware proxies) tell the application
    "X-User", "X-User-*", "X-Username", "X-Email", "Remote-User", "X-Remote-User", "X-Remote-Group",
    "X-Remote-Extra-*", "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups", "X-Forwarded-Access-Token", "X-Auth-Request-*", "X-Auth-User", "X-Auth-Userid",
    "X-Auth-Email", "X-Authenticated-*", "X-Consumer-*", "X-Credential-Identifier", "X-Anonymous-Consumer",
    "X-WebAuth-*", "X-Ms-Client-Principal", "X-Ms-Client-Principal-*", "X-Goog-Authenticated-User-*",
    "X-Amzn-Oidc-*", "Cf-Access-Authenticated-User-Email", "Impersonate-*",
    # client certificates, as TLS-terminating proxies pass them on
    "X-Forwarded-Client-Cert", "X-Client-Cert", "X-Client-Verify", "X-Client-DN", "X-SSL-Client-*",
    "SSL-Client-*", "X-SSL-Cert",
    # client addresses no proxy in front of the gateway sets
    "X-Originating-IP", "Client-IP", "X-Cluster-Client-IP", "X-Remote-IP", "X-Remote-Addr", "X-ProxyUser-IP",
    "X-Forwarded", "Forwarded-For",
    # the URL, host and method the application acts on instead of the request's own
    "X-Original-URL", "X-Original-URI", "X-Rewrite-URL", "X-Override-URL", "X-Forwarded-Path", "X-Forwarded-Uri",
    "X-Envoy-Original-Path", "X-Original-Host", "X-Host", "X-HTTP-Host-Override", "X-HTTP-Method-Override",
    "X-HTTP-Method", "X-Method-Override", "X-Original-Method", "X-Forwarded-Method",
)
STRIP_DEFAULTS = "@defaults"  # in a strip_request_headers list: the whole default list ("@" is no header name)
_STRIP_NAME = re.compile(r"^[A-Za-z0-9!#$%&'+.^_`|~-]+(\*)?$")  # an RFC 9110 token, "*" only at the end
# what the gateway needs to forward a request at all: never stripped
_NEVER_STRIPPED = ("host", "content-length", "transfer-encoding")


def _strip_header(value: Any) -> str:
    name = str(value)
    if name == STRIP_DEFAULTS:
        return name
    if not _STRIP_NAME.match(name):
        raise ValueError(f"{name!r} is not a header name (or a name ending in * to match a prefix)")
    key = name.lower().replace("_", "-")
    if key.endswith("*"):
        matched = [n for n in _NEVER_STRIPPED if n.startswith(key[:-1])]
    else:
        matched = [key] if key in _NEVER_STRIPPED else []
    if matched:
        raise ValueError(f"{name} would strip {matched[0]}, which the gateway needs to forward a request")
    return name


StripHeaderName = Annotated[str, BeforeValidator(_strip_header)]

# one compiled program per (name, expression): the loader checks a rule and the route table reuses it
compiled_rule: Callable[[str, str], Rule] = functools.lru_cache(maxsize=4096)(compile_rule)


class RuleConfig(_Model):
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


# what a claim header may not be called: hop-by-hop, Host, Authorization, what the gateway sets or
# strips itself (the identity headers are checked against their configured names when the file loads)
_CLAIM_HEADER_RESERVED = frozenset(
    {"proxy-connection", "dpop", "dpop-nonce", "set-cookie", "x-original-uri", "x-original-url",
     "x-original-method", "x-forwarded-uri", "x-forwarded-method"}
)


def _claim_header(value: Any) -> str:
    name = str(value)
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name[:80]!r} is not a valid header name")
    key = name.lower().replace("_", "-")
    if key in _RESERVED_HEADERS or key in _CLAIM_HEADER_RESERVED:
        raise ValueError(f"{name} is hop-by-hop, Host, Authorization or set by the gateway itself: it cannot carry "
                         "a claim")
    return name


def _claim_name(value: str) -> str:
    if not value or len(value) > 256 or not value.isprintable():
        raise ValueError("a claim name is 1-256 printable characters (a.b reads claim b inside claim a)")
    return value


def _separator(value: str) -> str:
    if not 1 <= len(value) <= 8 or not value.isascii() or not value.isprintable():
        raise ValueError("claim_header_separator is 1-8 printable ASCII characters, e.g. ',' or ', '")
    return value


ClaimHeaderName = Annotated[str, BeforeValidator(_claim_header)]
ClaimName = Annotated[str, AfterValidator(_claim_name)]
ClaimHeaders = dict[ClaimHeaderName, ClaimName]  # upstream header -> claim (docs/routes.md)
ClaimSeparator = Annotated[str, AfterValidator(_separator)]
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")  # RFC 6265 cookie-name: an RFC 9110 token


def _cookie_name(value: str) -> str:
    if not _COOKIE_NAME.match(value):
        raise ValueError(f"{value[:80]!r} is not a cookie name (an RFC 6265 token)")
    return value


def _token_header(value: Any) -> str:
    name = str(value)
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name[:80]!r} is not a valid header name")
    key = name.lower().replace("_", "-")
    if key == "authorization":
        raise ValueError("Authorization is where tokens come from anyway: leave token_source out")
    if key in _RESERVED_HEADERS or key in _CLAIM_HEADER_RESERVED:
        raise ValueError(f"{name} is set or read by the gateway itself and cannot carry the token (use cookie: for "
                         "a cookie)")
    return name


class TokenSourceConfig(_Model):
    """Where a route also takes its access token from, besides Authorization: one cookie or one header."""

    cookie: Annotated[str | None, AfterValidator(_cookie_name)] = None
    header: Annotated[str | None, BeforeValidator(_token_header)] = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenSourceConfig:
        if (self.cookie is None) == (self.header is None):
            raise ValueError("token_source names exactly one of cookie or header")
        return self


def _path_regex(value: str | None) -> str | None:
    if value is not None:
        compile_regex(value)  # PatternError (a ValueError): reported on this key's line
    return value


def _path_glob(value: str | None) -> str | None:
    if value is not None:
        compile_glob(value)
    return value


class RouteConfig(_Model):
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


class AuditConfig(_Model):
    sink: Literal["file", "stdout", "none"] = "stdout"
    path: str | None = None
    flush_interval: Duration = 0.05
    max_batch: int = Field(default=1024, ge=1)
    max_pending: int = Field(default=200_000, ge=1)
    # a write to the sink taking longer than this: the writer counts as stuck (/readyz 503)
    stall_timeout: Duration = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _file_needs_path(self) -> AuditConfig:
        if self.sink == "file" and not self.path:
            raise ValueError("audit sink: file needs path")
        return self


class SentinelConfig(_Model):
    hosts: list[str] = Field(min_length=1)
    service_name: str
    password: str | None = None


class RevocationConfig(_Model):
    """Where the revocation list lives; no redis_url means an in-memory list (one instance)."""

    redis_url: str | None = None
    sentinel: SentinelConfig | None = None
    cluster: bool = False
    key_prefix: str = "gateway:revoked:"
    family_claim: str = "sid"
    max_staleness: Duration = 10.0
    default_ttl: Duration = 86400.0
    resync_interval: Duration = 30.0


class DetectionConfig(_Model):
    new_network_after_first_use: bool = False
    max_ips_per_token: int | None = Field(default=None, ge=1)
    window: Duration = 600.0
    insufficient_scope_burst: int | None = Field(default=None, ge=1)
    # proof failures (binding not proven: DPoP proof or client certificate) by one token within window
    proof_failures_per_token: int | None = Field(default=None, ge=1)
    geoip_database: str | None = None
    on_detect: list[Literal["audit", "metric", "revoke_family", "webhook"]] = ["audit", "metric"]
    webhook_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> DetectionConfig:
        if "webhook" in self.on_detect and self.webhook_url is None:
            raise ValueError("on_detect: webhook needs webhook_url")
        return self


class AdminAuthConfig(_Model):
    """Who may call the admin revocation endpoints."""

    scope: str = "gateway:admin"
    shared_secret_env: str | None = "GATEWAY_ADMIN_SECRET"
    # an admin token acts for its own issuer only; with this scope too, for any issuer and for '*'
    any_issuer_scope: str | None = None
    # when set, an admin token must carry one of these in aud (and no issuer may accept them for the API)
    audiences: list[Annotated[str, Field(min_length=1)]] = []


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an RFC 9110 token
# names the gateway sets or strips for its own reasons; an identity header under one of them would vanish
_RESERVED_HEADERS = frozenset(
    {"authorization", "host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
     "expect", "content-length", "content-type", "cookie", "forwarded", "x-forwarded-for", "x-forwarded-proto",
     "x-forwarded-host", "x-request-id", "proxy-authorization", "proxy-authenticate", "www-authenticate"}
)


def _identity_header(value: Any) -> str:
    name = str(value)
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower().replace("_", "-") in _RESERVED_HEADERS:
        raise ValueError(f"{name} is set or removed by the gateway itself and cannot carry identity")
    return name


IdentityHeaderName = Annotated[str, BeforeValidator(_identity_header)]


def _certificate_header(value: Any) -> str:
    name = str(value)
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower().replace("_", "-") in _RESERVED_HEADERS | {"dpop"}:
        raise ValueError(f"{name} is set or read by the gateway itself and cannot carry a client certificate")
    return name


class ClientCertificatesConfig(_Model):
    """A client certificate forwarded by a TLS-terminating ingress (RFC 8705 behind a proxy).

    Believed only from ``trusted_proxies``; the header is removed from every forwarded request.
    """

    header: Annotated[str, BeforeValidator(_certificate_header)] = "ssl-client-cert"
    format: Literal["pem-urlencoded", "xfcc"] = "pem-urlencoded"


class TLSConfig(_Model):
    """TLS on the proxy listener (the gateway terminates TLS and sees client certificates itself)."""

    certificate: str = Field(min_length=1)  # PEM, the chain after the leaf
    key: str = Field(min_length=1)
    client_ca: str | None = None  # PEM bundle the client certificates must chain to
    client_certificates: Literal["none", "optional", "required"] = "none"
    minimum_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(str)] = "1.2"

    @model_validator(mode="after")
    def _client_ca_when_asking(self) -> TLSConfig:
        if self.client_certificates != "none" and not self.client_ca:
            raise ValueError(f"client_certificates: {self.client_certificates} needs client_ca (a CA bundle file)")
        return self


def _replay_url(value: str | None) -> str | None:
    if value is not None and value != "none" and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{value!r} is not a redis://, rediss:// or unix:// URL (or none: in memory)")
    return value


class DPoPConfig(_Model):
    """Where DPoP proofs are remembered (replay) and how the gateway's nonces are made."""

    # the jti replay cache; none given: the revocation list's Redis (else in memory); "none": in memory
    redis_url: Annotated[str | None, AfterValidator(_replay_url)] = None
    key_prefix: str = Field(default="gateway:dpop:jti:", min_length=1)
    timeout: Duration = Field(default=1.0, gt=0)  # waiting for Redis before a proof is refused (503)
    max_outage: Duration = 0.0  # how long this process's own memory stands in for an unreachable Redis
    max_entries: int = Field(default=100_000, ge=1)  # the in-memory cache (and the local copy beside Redis)
    nonce_secret_env: str | None = "GATEWAY_DPOP_NONCE_SECRET"  # shared by replicas; unset: per process
    nonce_period: Duration = Field(default=60.0, gt=0)  # a nonce is accepted for one to two periods


class LongConnectionsConfig(_Model):
    """WebSockets and streamed answers (server-sent events) that stay open: docs/traffic-control.md."""

    close_code: Literal[4401, 1008] = 4401  # sent when the token expires or is revoked
    max_message_size: Size = 4 * 2**20  # per WebSocket message, both directions; 0: unlimited
    close_timeout: Duration = Field(default=5.0, gt=0)  # how long a close handshake may take at each end
    compress: bool = True  # permessage-deflate with the client when it offers it


class TracingConfig(_Model):
    """OpenTelemetry traces (docs/tracing.md). Unset keys fall back to the standard OTEL_* variables."""

    enabled: bool = False  # off: nothing is imported and no request does any tracing work
    endpoint: HttpUrl | None = None  # OTLP receiver; http/protobuf adds /v1/traces to a URL without a path
    protocol: Literal["http/protobuf", "grpc"] | None = None  # else OTEL_EXPORTER_OTLP_PROTOCOL, http/protobuf
    sample_ratio: float | None = Field(default=None, ge=0, le=1)  # of new traces; a trusted caller's choice wins
    service_name: str | None = Field(default=None, min_length=1)  # else OTEL_SERVICE_NAME, else tokengate
    headers: Annotated[dict[str, str], BeforeValidator(check_export_headers)] = {}  # sent with every export
    trust_incoming: bool = False  # continue any caller's traceparent, not only trusted_proxies'
    include_subject: bool = False  # put the token's sub on the decision span (enduser.id)
    # the trace viewer: the incident report links each call's trace (Tempo, Jaeger: .../trace/{trace_id})
    trace_url_template: Annotated[str, AfterValidator(check_trace_url_template)] | None = None


class IdentityHeaders(_Model):
    subject: IdentityHeaderName = "X-Auth-Subject"
    client_id: IdentityHeaderName = "X-Auth-Client-Id"
    scopes: IdentityHeaderName = "X-Auth-Scopes"

    @model_validator(mode="after")
    def _distinct(self) -> IdentityHeaders:
        if len({n.lower().replace("_", "-") for n in self.names()}) != 3:
            raise ValueError("the three identity headers need three different names")
        return self

    def names(self) -> tuple[str, str, str]:
        return (self.subject, self.client_id, self.scopes)


class GatewayConfig(_Model):
    """The whole gateway configuration file."""

    listen: ListenAddress = Address("127.0.0.1", 8080)
    admin_listen: ListenAddress = Address("127.0.0.1", 9090)
    decision_listen: ListenAddress | None = None
    decision_path_prefix: str = ""
    # how the decision endpoint learns the original request: required with decision_listen, since
    # each ingress passes client headers that another one would believe (docs/forward-auth.md)
    decision_sources: list[Literal["nginx", "traefik", "envoy"]] | None = Field(default=None, min_length=1)
    workers: int = Field(default=1, ge=1, le=64)
    shutdown_grace: Duration = 20.0
    watch_config: bool = True
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    max_body_size: Size = 10 * 2**20
    realm: str = "tokengate"
    verified_token_cache_size: int = Field(default=100_000, ge=0)
    identity_headers: IdentityHeaders = IdentityHeaders()
    # claims sent upstream as headers on every route without its own claim_headers (docs/routes.md)
    claim_headers: ClaimHeaders = {}
    claim_header_separator: ClaimSeparator = ","
    strip_request_headers: list[StripHeaderName] = list(DEFAULT_STRIP_REQUEST_HEADERS)
    issuers: list[IssuerConfig] = []
    upstreams: dict[str, UpstreamConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(min_length=1)
    audit: AuditConfig = AuditConfig()
    revocation: RevocationConfig = RevocationConfig()
    detection: DetectionConfig = DetectionConfig()
    admin: AdminAuthConfig = AdminAuthConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tls: TLSConfig | None = None
    client_certificates: ClientCertificatesConfig | None = None
    dpop: DPoPConfig = DPoPConfig()
    rate_limiting: RateLimitingConfig = RateLimitingConfig()
    long_connections: LongConnectionsConfig = LongConnectionsConfig()
    tracing: TracingConfig = TracingConfig()

    def issuer(self, name: str) -> IssuerConfig | None:
        """The entry of issuer ``name``: its own, else the templated one it is a trusted tenant of."""
        found = next((i for i in self.issuers if i.issuer == name), None)
        if found is None and any(i.templated for i in self.issuers):
            from .tokens.issuer_pattern import issuer_map

            found = issuer_map(self.issuers, lambda i: i).get(name) if not templated(name) else None
        return found


# --- loading -------------------------------------------------------------------------------


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator (file:line: key: message)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Loader(yaml.SafeLoader):
    """A safe loader that substitutes ``${VAR}`` in strings and refuses duplicate keys.

    Both are collected, not raised: every unset variable and duplicate key of the file is
    reported at once, with the schema's problems on the other lines.
    """

    source = "<config>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[str] = []
        self.unset_lines: set[int] = set()  # lines whose value lacks a variable: their schema errors follow from it


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    text = str(loader.construct_scalar(node))

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if not value and default is not None:  # as in the shell: ${VAR:-default} when unset or empty
            return default
        if value is None:
            line = node.start_mark.line + 1
            loader.unset_lines.add(line)
            loader.problems.append(f"{loader.source}:{line}: environment variable {name} is not set "
                                   f"(set it, or give a default: ${{{name}:-value}})")
            return match.group(0)  # left as written: a stand-in that fails no check an empty value would
        return value

    return _ENV_REF.sub(replace, text)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool | None):  # a list as a key: PyYAML refuses it next
            continue
        if key in seen:
            loader.problems.append(f"{loader.source}:{key_node.start_mark.line + 1}: {key}: duplicate key "
                                   "(each key may appear once in a section)")
        seen.add(key)
    return dict(loader.construct_mapping(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _line_of(root: yaml.Node | None, loc: Sequence[str | int]) -> int:
    """The 1-based line of the deepest YAML node that ``loc`` reaches."""
    node, line = root, (root.start_mark.line + 1 if root else 1)
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    child, line = value_node, key_node.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


_key_path = key_path


def _validation_problems(source: str, root: yaml.Node | None, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        loc = data_loc(item)  # pydantic adds union members and validators to loc: only data keys stay
        message = plain_message(GatewayConfig, item, root)
        problems.append(f"{source}:{_line_of(root, loc)}: {key_path(loc)}: {message}")
    return list(dict.fromkeys(problems))  # the members of a union (IPv4/IPv6 network) fail alike: said once


def _cross_reference_problems(
    source: str, root: yaml.Node | None, config: GatewayConfig | None, data: dict[Any, Any]
) -> list[str]:
    """Problems between keys. The names (upstreams, issuers, routes) are checked on the document
    itself, so they are reported with the schema's problems; the rest needs a valid ``config``."""
    problems: list[str] = []

    def problem(loc: list[str | int], message: str) -> None:
        problems.append(f"{source}:{_line_of(root, loc)}: {key_path(loc)}: {message}")

    _check_names(data, problem)
    if config is None:
        return problems
    for index, route in enumerate(config.routes):
        _check_rule_names(index, route, problem)
    _check_decision_sources(config, problem)
    _check_tls(config.tls, problem)
    _check_introspection_keys(config, problem)
    _check_admin_audiences(config, problem)
    _check_redis_urls(config, problem)
    _check_sender_inputs(config, problem)
    _check_rate_limits(config, problem)
    _check_policy_conveniences(config, problem)
    return problems


Problem = Callable[[list[str | int], str], None]


def _items(data: dict[Any, Any], key: str) -> list[tuple[int, dict[Any, Any]]]:
    """The sections of a list in the document (a malformed list or item is the schema's to report)."""
    value = data.get(key)
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)] if isinstance(value, list) else []


def _check_names(data: dict[Any, Any], problem: Problem) -> None:
    """Routes name known upstreams and issuers; route names and issuers are unique. Read from
    the document, so a name that is not text (the schema's to report) is passed over."""
    upstreams = data.get("upstreams")
    known_upstreams = {str(name) for name in upstreams} if isinstance(upstreams, dict) else None
    issuers = [(index, issuer.get("issuer")) for index, issuer in _items(data, "issuers")]
    known_issuers = {name for _, name in issuers if isinstance(name, str)}
    names: set[str] = set()
    for index, route in _items(data, "routes"):
        upstream = route.get("upstream")
        if known_upstreams is not None and isinstance(upstream, str) and upstream not in known_upstreams:
            problem(["routes", index, "upstream"], _unknown_name("upstream", upstream, known_upstreams))
        name = route.get("name")
        if isinstance(name, str) and name in names:
            problem(["routes", index, "name"], f"duplicate route name {name!r}")
        names.add(name if isinstance(name, str) else "")
        route_issuers = route.get("issuers")
        for issuer in route_issuers if isinstance(route_issuers, list) else []:
            if isinstance(issuer, str) and issuer not in known_issuers and not _tenant_issuer(issuer, data):
                problem(["routes", index, "issuers"], _unknown_name("issuer", issuer, known_issuers))
        if route.get("auth", "bearer") == "bearer" and data.get("issuers", []) == []:
            problem(["routes", index, "auth"], "route needs a token but no issuers are configured")
    seen: set[str] = set()
    for index, name in issuers:
        if isinstance(name, str) and name in seen:
            problem(["issuers", index, "issuer"], f"duplicate issuer {name!r}")
        seen.add(name if isinstance(name, str) else "")


def _tenant_issuer(issuer: str, data: dict[Any, Any]) -> bool:
    """Whether a route's ``issuers`` entry is a tenant a templated issuer trusts (docs/issuers.md)."""
    from .policy_checks import tenant_of_document

    return tenant_of_document(issuer, [item for _, item in _items(data, "issuers")])


def _check_policy_conveniences(config: GatewayConfig, problem: Problem) -> None:
    """Claim and token-source header names, templated issuers, upstream TLS files (gateway/policy_checks.py)."""
    from .policy_checks import check_all

    check_all(config, problem)


def _unknown_name(kind: str, name: str, known: set[str]) -> str:
    """``unknown upstream 'order'; did you mean orders?`` (or the names there are)."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f"unknown {kind} {name!r}; did you mean {close[0]}?"
    if not names:
        return f"unknown {kind} {name!r}: no {kind}s are configured"
    if len(names) == 1:
        return f"unknown {kind} {name!r} (the only {kind} is {names[0]})"
    return f"unknown {kind} {name!r} (the {kind}s are {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"


def _check_rule_names(index: int, route: RouteConfig, problem: Problem) -> None:
    seen: set[str] = set()
    for position, rule in enumerate(route.rules):
        if rule.name in seen:
            problem(["routes", index, "rules", position, "name"], f"rule name {rule.name!r} is used twice")
        seen.add(rule.name)


def _check_tls(tls: TLSConfig | None, problem: Problem) -> None:
    """The files must exist and load now: a bad certificate or key is a configuration error, not a crash."""
    if tls is None:
        return
    from .tokens.certificates import server_ssl_context

    unreadable = False
    for key in ("certificate", "key", "client_ca"):
        path = getattr(tls, key)
        if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            problem(["tls", key], f"cannot read {path}")
            unreadable = True
    if unreadable:
        return
    try:
        server_ssl_context(tls_settings(tls))
    except ValueError as exc:
        message = str(exc).removeprefix("tls: ")
        problem(["tls", "client_ca" if message.startswith("cannot load client_ca") else "certificate"], message)


def _check_introspection_keys(config: GatewayConfig, problem: Problem) -> None:
    """A private_key_jwt key must load and suit its algorithm now, as serve will need it."""
    for index, issuer in enumerate(config.issuers):
        settings = issuer.introspection
        if settings is None or settings.auth_method != "private_key_jwt" or settings.private_key_file is None:
            continue
        from .tokens.introspection import KeyProblem, signing_key

        try:
            signing_key(settings.private_key_file, settings.private_key_algorithm)
        except KeyProblem as exc:
            problem(["issuers", index, "introspection", exc.field], str(exc))


def _check_redis_urls(config: GatewayConfig, problem: Problem) -> None:
    """Redis URLs parse as redis-py will parse them at start (scheme, port)."""
    from redis import connection

    parse_url = cast(Callable[[str], object], connection.parse_url)  # redis-py leaves it unannotated
    urls: list[tuple[list[str | int], str | None]] = [(["revocation", "redis_url"], config.revocation.redis_url),
                                                     (["rate_limiting", "redis_url"], config.rate_limiting.redis_url)]
    urls += [(["issuers", index, "introspection", "redis_url"], issuer.introspection.redis_url)
             for index, issuer in enumerate(config.issuers) if issuer.introspection is not None]
    for loc, url in urls:
        if url is None:
            continue
        try:
            parse_url(url)
        except ValueError as exc:
            problem(loc, str(exc))


def _check_rate_limits(config: GatewayConfig, problem: Problem) -> None:
    """An override naming a route or a limit that does not exist would never apply: a typo, refused."""
    routes = {route.name for route in config.routes}
    limits = {limit.name for limit in compile_limits(config.rate_limiting.default_limits, "*")}
    for route in config.routes:
        limits |= {limit.name for limit in compile_limits(route.rate_limits, route.name)}
    for index, override in enumerate(config.rate_limiting.overrides):
        for route_name in sorted(set(override.routes or ()) - routes):
            problem(["rate_limiting", "overrides", index, "routes"], f"unknown route {route_name!r}")
        for limit_name in sorted(set(override.limits or ()) - limits):
            problem(["rate_limiting", "overrides", index, "limits"], f"no limit is named {limit_name!r}")


def _check_admin_audiences(config: GatewayConfig, problem: Problem) -> None:
    """An admin audience that an issuer also accepts would make every admin token an API token too."""
    admin = set(config.admin.audiences)
    for index, issuer in enumerate(config.issuers):
        shared = sorted(admin.intersection(issuer.audiences))
        if shared:
            problem(["admin", "audiences"], f"{', '.join(shared)} is also an audience of issuer {issuer.issuer} "
                    f"(issuers[{index}].audiences): admin tokens must have an audience of their own")


def tls_settings(tls: TLSConfig) -> TLSSettings:
    """The ``certificates.TLSSettings`` of a ``tls:`` section (imported late: config loads first)."""
    from .tokens.certificates import TLSSettings

    return TLSSettings(tls.certificate, tls.key, tls.client_ca, tls.client_certificates, tls.minimum_version)


def _check_sender_inputs(config: GatewayConfig, problem: Problem) -> None:
    certificates = config.client_certificates
    if certificates is not None:
        header = certificates.header.lower().replace("_", "-")
        if header in {n.lower().replace("_", "-") for n in config.identity_headers.names()}:
            problem(["client_certificates", "header"], f"{certificates.header} is also an identity header")
    name = config.dpop.nonce_secret_env
    secret = os.environ.get(name) if name else None
    if secret is not None and len(secret.encode()) < 16:
        problem(["dpop", "nonce_secret_env"], f"the secret in {name} must be at least 16 bytes long")


def _check_decision_sources(config: GatewayConfig, problem: Problem) -> None:
    """The decision endpoint must be told which ingress asks: each one passes client headers
    that another ingress's shape would believe (docs/forward-auth.md, "decision_sources")."""
    sources = config.decision_sources
    if config.decision_listen is not None and sources is None:
        problem(["decision_listen"], "decision_sources is required with decision_listen: name the ingress that "
                "sends the checks (nginx, traefik or envoy; docs/forward-auth.md)")
    elif sources is not None and "envoy" in sources and len(set(sources)) > 1:
        problem(["decision_sources"], "envoy cannot be combined with another source: Envoy passes the client's "
                "headers, so a client could name another target with nginx's or Traefik's headers")


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Parse and validate configuration text; raise ConfigError naming file, line and key.

    Every problem of the file is reported at once, in the order of its lines: unset
    variables, duplicate keys, the schema's errors and the names that refer to nothing.
    A YAML syntax error stops the reading, so it is reported alone, on the line to fix.
    """
    try:
        loader = _Loader(text)  # reads the whole text: a character YAML refuses is found here
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError([f"{source}:{line}: YAML syntax error: the control character U+{exc.character:04X} is not "
                           'allowed (write it as an escape in a double-quoted value, e.g. "\\x01")']) from None
    loader.source = source
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([yaml_syntax_problem(source, exc)]) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError([f"{source}:1: the configuration is empty (it needs at least upstreams and routes)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the configuration must be a YAML mapping (key: value lines), "
                           f"not {describe(data)}"])
    found: list[str] = []
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        found = _validation_problems(source, root, exc)
    found += _cross_reference_problems(source, root, config, data)
    # a value left empty by an unset variable fails other checks too: that follows, it is not news
    problems = loader.problems + [p for p in found if _line(source, p) not in loader.unset_lines]
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: _line(source, p)))
    assert config is not None  # no problem: validated
    return config


def _line(source: str, problem: str) -> int:
    """The line a ``source:line: ...`` problem names (0 when it names none)."""
    number = problem[len(source) + 1:].partition(":")[0]
    return int(number) if number.isdigit() else 0


def load_config(path: str | Path) -> GatewayConfig:
    """Read, parse and validate a configuration file."""
    if os.path.isdir(path):
        raise ConfigError([f"{path}: is a directory, not a configuration file"])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: the file is not valid UTF-8"]) from None
    return parse_config(text, str(path))
