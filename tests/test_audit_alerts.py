"""The chart's alerts on the audit writer fire with Prometheus's own evaluator.

The chart is rendered with the real Helm, its PrometheusRule turned into a rule file, and
``promtool test rules`` replays synthetic series: a pod whose writer heartbeat stops is
alerted on, a healthy one and a pod without an audit sink are not; lost or unserialisable
records are alerted on. Helm and promtool are the binaries ``ci/k8s-checks.sh`` installs
(``$K8S_TOOLS_DIR``, by default ``~/.cache/k8s-tools``) or any on PATH; without them the
test is skipped (``make k8s-check`` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("K8S_TOOLS_DIR", Path.home() / ".cache" / "k8s-tools"))


def tool(name: str) -> str:
    found = TOOLS / name if (TOOLS / name).is_file() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not found in {TOOLS} or on PATH (ci/k8s-checks.sh installs it)")
    return str(found)


def render_rules(*sets: str) -> dict[str, Any]:
    """The chart's PrometheusRule as a Prometheus rule file (its ``groups``)."""
    args = [tool("helm"), "template", "gw", str(ROOT / "charts" / "tokengate"), "--namespace", "ci",
            "--api-versions", "monitoring.coreos.com/v1", "--set", "prometheusRule.enabled=true"]
    for value in sets:
        args += ["--set", value]
    rendered = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    rules = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "PrometheusRule"]
    assert len(rules) == 1
    return {"groups": rules[0]["spec"]["groups"]}


def alert_names(rules: dict[str, Any]) -> set[str]:
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


SERIES = 'namespace="ci", job="gw-tokengate"'  # what the default render selects

TESTS = f"""
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - name: a writer whose heartbeat stops is alerted on; a healthy one and one without a sink are not
    interval: 1m
    input_series:
      # the gauge holds the Unix time of the last turn: promtool's clock starts at 0
      - series: 'gateway_audit_writer_heartbeat_timestamp_seconds{{{SERIES}, pod="healthy"}}'
        values: '0+60x20'
      - series: 'gateway_audit_writer_heartbeat_timestamp_seconds{{{SERIES}, pod="stuck"}}'
        values: '0+60x4 240x16'
      - series: 'gateway_audit_writer_heartbeat_timestamp_seconds{{{SERIES}, pod="no-sink"}}'
        values: '0x20'
    promql_expr_test:
      - expr: ALERTS{{alertname="TokengateAuditWriterStalled", alertstate="firing"}}
        eval_time: 5m
        exp_samples: []
      - expr: ALERTS{{alertname="TokengateAuditWriterStalled", alertstate="firing"}}
        eval_time: 9m
        exp_samples:
          - labels: 'ALERTS{{alertname="TokengateAuditWriterStalled", alertstate="firing", {SERIES}, pod="stuck",
              severity="critical"}}'
            value: 1
  - name: records dropped, failed or unserialisable are alerted on
    interval: 1m
    input_series:
      - series: 'gateway_audit_records_unserialisable_total{{{SERIES}, pod="p1"}}'
        values: '0 0 0 1 1 1'
      - series: 'gateway_audit_records_dropped_total{{{SERIES}, pod="p1"}}'
        values: '0x5'
      - series: 'gateway_audit_records_dropped_total{{{SERIES}, pod="p2"}}'
        values: '0x5'
      - series: 'gateway_audit_write_errors_total{{{SERIES}, pod="p2"}}'
        values: '0x5'
    promql_expr_test:
      - expr: ALERTS{{alertname="TokengateAuditRecordsLost", alertstate="firing"}}
        eval_time: 2m
        exp_samples: []
      - expr: ALERTS{{alertname="TokengateAuditRecordsLost", alertstate="firing"}}
        eval_time: 4m
        exp_samples:
          - labels: 'ALERTS{{alertname="TokengateAuditRecordsLost", alertstate="firing", {SERIES}, pod="p1",
              severity="critical"}}'
            value: 1
"""


def test_audit_alerts_fire_on_a_stalled_writer_and_lost_records(tmp_path: Path) -> None:
    promtool = tool("promtool")
    rules = render_rules()
    assert {"TokengateAuditWriterStalled", "TokengateAuditRecordsLost"} <= alert_names(rules)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "tests.yaml").write_text(TESTS)
    checked = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_no_audit_alerts_without_an_audit_sink() -> None:
    assert not {"TokengateAuditWriterStalled", "TokengateAuditRecordsLost"} & alert_names(
        render_rules("gateway.audit.sink=none"))
