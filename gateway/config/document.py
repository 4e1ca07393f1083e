"""The whole configuration file as one typed, frozen model: ``GatewayConfig``.

Built when the file loads (``loader.py``); the running gateway reads it, a reload swaps it whole.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field

from ..ratelimit.config import RateLimitingConfig
from ..tokens.issuer_pattern import issuer_map, templated
from .connections import DPoPConfig, RevocationConfig, UpstreamConfig
from .headers import (
    DEFAULT_STRIP_REQUEST_HEADERS,
    ClaimHeaders,
    ClaimSeparator,
    ClientCertificatesConfig,
    IdentityHeaders,
    StripHeaderName,
)
from .issuers import IssuerConfig
from .routes import RouteConfig
from .sections import AdminAuthConfig, AuditConfig, DetectionConfig, LongConnectionsConfig, TLSConfig, TracingConfig
from .values import Address, Duration, ListenAddress, Model, Size


class GatewayConfig(Model):
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
            found = issuer_map(self.issuers, lambda i: i).get(name) if not templated(name) else None
        return found

