"""Typed models of the gateway YAML and its loader; read when the file loads, never per request.

One concept per module: ``values`` (durations, sizes, addresses), ``headers``, ``issuers``,
``routes``, ``connections`` (upstreams, Redis), ``sections`` (the rest), ``document`` (the whole
file), ``yaml_source`` (line numbers, ``${ENV}``), ``errors`` (``file:line: key: sentence``),
``checks``/``policy_checks``/``files`` (between keys, and the files keys name), ``loader``.
The package imports nothing of the gateway but leaf modules: everything else may import it.
"""

from .connections import (
    DPoPConfig,
    RevocationConfig,
    RevocationSnapshotConfig,
    SentinelConfig,
    UpstreamConfig,
    UpstreamTLSConfig,
)
from .document import GatewayConfig
from .errors import ConfigError, Problem
from .files import tls_settings
from .headers import (
    DEFAULT_STRIP_REQUEST_HEADERS,
    STRIP_DEFAULTS,
    ClaimHeaderName,
    ClaimHeaders,
    ClaimName,
    ClaimSeparator,
    ClientCertificatesConfig,
    IdentityHeaderName,
    IdentityHeaders,
    StripHeaderName,
    TokenSourceConfig,
)
from .issuers import IntrospectionConfig, IssuerConfig, IssuerDPoPConfig, SenderConstraint
from .loader import load_config, parse_config
from .routes import RouteConfig, RuleConfig, compiled_rule
from .sections import (
    AdminAuthConfig,
    AuditConfig,
    DetectionConfig,
    LongConnectionsConfig,
    TLSConfig,
    TracingConfig,
    check_export_headers,
    check_trace_url_template,
)
from .values import (
    HTTP_METHODS,
    Address,
    Algorithm,
    Duration,
    HttpUrl,
    ListenAddress,
    Method,
    Size,
    parse_address,
    parse_duration,
    parse_size,
)

__all__ = [
    "DEFAULT_STRIP_REQUEST_HEADERS", "HTTP_METHODS", "STRIP_DEFAULTS", "Address", "AdminAuthConfig", "Algorithm",
    "AuditConfig", "ClaimHeaderName", "ClaimHeaders", "ClaimName", "ClaimSeparator", "ClientCertificatesConfig",
    "ConfigError", "DPoPConfig", "DetectionConfig", "Duration", "GatewayConfig", "HttpUrl", "IdentityHeaderName",
    "IdentityHeaders", "IntrospectionConfig", "IssuerConfig", "IssuerDPoPConfig", "ListenAddress",
    "LongConnectionsConfig", "Method", "Problem", "RevocationConfig", "RevocationSnapshotConfig", "RouteConfig",
    "RuleConfig", "SenderConstraint", "SentinelConfig", "Size", "StripHeaderName", "TLSConfig", "TokenSourceConfig",
    "TracingConfig", "UpstreamConfig", "UpstreamTLSConfig", "check_export_headers", "check_trace_url_template",
    "compiled_rule", "load_config", "parse_address", "parse_config", "parse_duration", "parse_size", "tls_settings",
]
