"""What the checks know of the gateway: its metric names (read from its source), the config keys
the chart writes itself, the alerts the chart must ship.

The metric names are read from ``gateway/`` with ``ast``, not imported: the tools' Python has
no prometheus_client, and a metric added to the gateway is known here without anyone listing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY_SOURCE = Path(__file__).resolve().parents[2] / "gateway"
_METRIC_CLASSES = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")

# Keys of the gateway's config file that the chart writes itself (from ports, decision and
# redis): absent from the values schema's gateway section, present in every render.
# tests/test_validate_manifests.py holds them to the gateway's config models.
CHART_OWNED = {"gateway": {"listen", "admin_listen", "decision_listen"}, "gateway.revocation": {"redis_url"}}
CONFIG_REQUIRED = {"listen", "admin_listen", "upstreams", "routes"}


def metric_kinds(source: Path = GATEWAY_SOURCE) -> dict[str, str]:
    """Every metric the gateway's source declares -> its kind (counter, gauge, histogram, summary).

    A declaration is a call of a prometheus_client class (or a subclass named after it, such as
    ``_FoldingHistogram``) whose first argument is a ``gateway_...`` string literal.
    """
    found: dict[str, str] = {}
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            name = node.args[0].value
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            kind = next((k for cls, k in _METRIC_CLASSES.items() if callee.endswith(cls)), None)
            if kind is not None and isinstance(name, str) and name.startswith("gateway_"):
                found[name] = kind
    return found


# Metrics the gateway exports (histograms add _bucket, _sum, _count).
METRIC_KINDS = metric_kinds()
METRICS = set(METRIC_KINDS)
HISTOGRAMS = {name for name, kind in METRIC_KINDS.items() if kind == "histogram"}
# CORE ones are those the alerts and the dashboard must cover: a choice, so listed here.
CORE_METRICS = {
    "gateway_requests_total", "gateway_request_duration_seconds", "gateway_upstream_duration_seconds",
    "gateway_token_validations_total", "gateway_jwks_refresh_total", "gateway_revocation_redis_up",
    "gateway_revocation_notification_lag_seconds", "gateway_revocation_entries",
    "gateway_config_reload_total", "gateway_suspicious_token_use_total",
}
REQUIRED_ALERTS = {
    "TokengateInvalidTokenRateHigh", "TokengateInsufficientScopeSpike", "TokengateJWKSRefreshFailing",
    "TokengateUpstream5xxRatioHigh",
}
REDIS_ALERTS = {"TokengateRevocationRedisDown", "TokengateRevocationNotificationLag"}
UID = 10001
