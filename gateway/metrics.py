"""Prometheus metrics, served on the admin port.

Labels use the shared decision reasons (``gateway.reasons.Reason``) so a metric, an audit
record and an error response always agree. With ``PROMETHEUS_MULTIPROC_DIR`` set (several
workers), prometheus-client's multiprocess mode aggregates the workers' values.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "gateway_requests_total", "Requests by route, method, status, decision and reason",
    ["route", "method", "status", "decision", "reason"],
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds", "Time from request head to the end of the response", ["route"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_duration_seconds", "Time until the upstream answered with its head", ["upstream"],
    buckets=_LATENCY_BUCKETS,
)
TOKEN_VALIDATIONS = Counter(
    "gateway_token_validations_total", "Token validations (cache misses) by issuer and result", ["issuer", "result"],
)
JWKS_REFRESH = Counter("gateway_jwks_refresh_total", "JWKS fetches by issuer and result", ["issuer", "result"])
TOKEN_CACHE = Counter(
    "gateway_token_cache_total", "Verified-token and introspection cache lookups", ["cache", "result"],
)
INTROSPECTION_CALLS = Counter(
    "gateway_introspection_requests_total", "Introspection calls by issuer and result", ["issuer", "result"],
)
INTROSPECTION_DURATION = Histogram(
    "gateway_introspection_duration_seconds", "Introspection call latency", ["issuer"], buckets=_LATENCY_BUCKETS,
)
INTROSPECTION_COALESCED = Counter(
    "gateway_introspection_coalesced_total", "Requests that waited for an introspection call already in flight",
    ["issuer"],
)
REVOCATION_ENTRIES = Gauge(
    "gateway_revocation_entries", "Entries in the local copy of the revocation list", multiprocess_mode="livemax",
)
REVOCATION_REDIS_UP = Gauge(
    "gateway_revocation_redis_up", "1 while the revocation feed from Redis is connected", multiprocess_mode="livemin",
)
REVOCATION_LAG = Gauge(
    "gateway_revocation_notification_lag_seconds", "Delay between a revocation write and its notification here",
    multiprocess_mode="livemax",
)
REVOCATION_RESYNCS = Counter("gateway_revocation_resyncs_total", "Full reloads of the revocation list", ["cause"])
REVOCATION_REDIS_ERRORS = Counter("gateway_revocation_redis_errors_total", "Redis errors in the revocation feed")
CONFIG_RELOADS = Counter("gateway_config_reload_total", "Configuration reloads by result", ["result"])
SUSPICIOUS = Counter("gateway_suspicious_token_use_total", "Suspicious token uses detected", ["reason"])
AUDIT_DROPPED = Counter("gateway_audit_write_errors_total", "Audit batches that could not be written")


def render_latest() -> tuple[bytes, str]:
    """The exposition text, aggregated over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
