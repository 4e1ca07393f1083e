"""The sections about the gateway itself: audit, detection, admin access, listener TLS, long connections, tracing.

Checked when the file loads, never per request.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .headers import HEADER_NAME
from .values import Duration, HttpUrl, Model, Size


class AuditConfig(Model):
    """Where audit records go, and how the writer batches them and notices a stuck sink."""

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


class DetectionConfig(Model):
    """Live detection of suspicious token use (gateway/detection/), and what to do about it."""

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


class AdminAuthConfig(Model):
    """Who may call the admin revocation endpoints."""

    scope: str = "gateway:admin"
    shared_secret_env: str | None = "GATEWAY_ADMIN_SECRET"
    # an admin token acts for its own issuer only; with this scope too, for any issuer and for '*'
    any_issuer_scope: str | None = None
    # when set, an admin token must carry one of these in aud (and no issuer may accept them for the API)
    audiences: list[Annotated[str, Field(min_length=1)]] = []


class TLSConfig(Model):
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


class LongConnectionsConfig(Model):
    """WebSockets and streamed answers (server-sent events) that stay open: docs/traffic-control.md."""

    close_code: Literal[4401, 1008] = 4401  # sent when the token expires or is revoked
    max_message_size: Size = 4 * 2**20  # per WebSocket message, both directions; 0: unlimited
    close_timeout: Duration = Field(default=5.0, gt=0)  # how long a close handshake may take at each end
    compress: bool = True  # permessage-deflate with the client when it offers it


def check_trace_url_template(value: Any) -> str:
    """``https://tempo.example/trace/{trace_id}``: an absolute http(s) URL naming ``{trace_id}``."""
    text = str(value)
    if not re.match(r"^https?://[^/\s?#{}]+", text):
        raise ValueError(f"{text!r} is not an absolute http(s) URL")
    if "{trace_id}" not in text:
        raise ValueError("the template must contain {trace_id}")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("the template must not contain spaces or control characters")
    return text


def check_export_headers(value: Any) -> dict[str, str]:
    """Headers sent with every export (an API key): names are header tokens, values single lines."""
    if not isinstance(value, dict):
        raise ValueError("headers is a mapping of header names to values")
    headers: dict[str, str] = {}
    for name, item in value.items():
        if not HEADER_NAME.match(str(name)):
            raise ValueError(f"{name!r} is not a valid header name")
        text = str(item)
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"the value of {name} must be one line")
        headers[str(name).lower()] = text  # gRPC metadata keys must be lowercase
    return headers


class TracingConfig(Model):
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

