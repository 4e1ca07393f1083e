"""The chart checker (ci/manifests) knows every metric and configuration key the gateway has.

Its lists are derived from the gateway (metric names read from ``gateway/``, config keys walked
from the pydantic models against the values schema): these tests fail when that derivation
misses one, or when a name the checker lists itself is no longer the gateway's.
"""

from __future__ import annotations

import json
from pathlib import Path

import prometheus_client

from ci.manifests import ModelWalk, config_schema
from ci.manifests.known import CHART_OWNED, CONFIG_REQUIRED, CORE_METRICS, HISTOGRAMS, METRIC_KINDS, METRICS
from gateway import metrics
from gateway.config import GatewayConfig

ROOT = Path(__file__).resolve().parent.parent
VALUES_SCHEMA = ROOT / "charts" / "tokengate" / "values.schema.json"


def registered_metrics() -> dict[str, str]:
    """What gateway.metrics registers, by exposed name (a counter's with ``_total``) -> kind."""
    found: dict[str, str] = {}
    for value in vars(metrics).values():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            for family in value.describe():
                found[family.name + ("_total" if family.type == "counter" else "")] = family.type
    return found


def test_the_checker_knows_every_metric_the_gateway_registers() -> None:
    registered = registered_metrics()
    assert len(registered) >= 20
    assert set(registered) - METRICS == set(), "metrics the chart checker does not know"
    assert METRICS - set(registered) == set(), "metrics the chart checker knows but the gateway does not register"
    assert {name for name, kind in registered.items() if kind == "histogram"} == HISTOGRAMS
    assert registered == METRIC_KINDS
    # the ones named before the derivation were added by hand and had drifted
    assert {"gateway_introspection_coalesced_total", "gateway_audit_records_dropped_total"} <= METRICS
    assert CORE_METRICS <= METRICS


def test_the_keys_the_chart_writes_itself_are_gateway_keys() -> None:
    for where, keys in CHART_OWNED.items():
        model = GatewayConfig
        for part in where.split(".")[1:]:
            model = model.model_fields[part].annotation  # type: ignore[assignment]
        assert keys <= set(model.model_fields), (where, keys - set(model.model_fields))
    assert set(CONFIG_REQUIRED) <= set(GatewayConfig.model_fields)


def test_the_rendered_config_schema_knows_every_gateway_key() -> None:
    """What the checker holds a rendered gateway.yaml to (values schema + the chart's own keys)
    has every key of every config model: none is missing, none is extra."""
    schema = config_schema(json.loads(VALUES_SCHEMA.read_text()))
    walk = ModelWalk(schema)
    walk.model(GatewayConfig, schema, "rendered")
    problems = {where: p for where, _, p in walk.results if any("schema lacks" in x or "refuses" in x for x in p)}
    assert problems == {}
    walked = {where for where, _, _ in walk.results}
    for key in ("rendered.decision_sources", "rendered.issuers[].introspection", "rendered.audit"):
        assert key in walked or key.rsplit(".", 1)[0] in walked, key


def test_a_key_missing_from_the_schema_is_noticed() -> None:
    schema = config_schema(json.loads(VALUES_SCHEMA.read_text()))
    del schema["properties"]["audit"]["properties"]["max_pending"]
    walk = ModelWalk(schema)
    walk.model(GatewayConfig, schema, "rendered")
    problems = {where: "; ".join(p) for where, _, p in walk.results if p}
    assert "schema lacks ['max_pending']" in problems["rendered.audit"]
