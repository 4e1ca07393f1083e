"""Chart rules about monitoring: the ServiceMonitor, the alerts and the Grafana dashboard's metric names."""

from __future__ import annotations

import json
import re

from .known import CORE_METRICS, HISTOGRAMS, METRICS, REDIS_ALERTS, REQUIRED_ALERTS
from .pieces import Pieces, matches


class MonitoringRules(Pieces):
    def rule_service_monitor(self) -> None:
        sm = self.one("ServiceMonitor")
        sel = sm["spec"]["selector"]["matchLabels"]
        hits = [s for s in self.of_kind("Service") if matches(sel, s["metadata"]["labels"])]
        assert len(hits) == 1, f"selector matches {len(hits)} Services, want 1"
        names = {p["name"] for p in hits[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in names, f"endpoint port {ep['port']} not on Service {hits[0]['metadata']['name']}"
            assert ep.get("path", "/metrics") == "/metrics"

    def rule_prometheus_rule(self) -> None:
        pr = self.one("PrometheusRule")
        rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
        alerts = {r["alert"] for r in rules if "alert" in r}
        rev = self.config.get("revocation") or {}
        want = REQUIRED_ALERTS | (REDIS_ALERTS if "redis_url" in rev or "sentinel" in rev else set())
        assert want <= alerts, f"missing alerts: {sorted(want - alerts)}"
        for r in rules:
            expr = r["expr"]
            assert expr.count("(") == expr.count(")"), f"{r.get('alert') or r.get('record')}: unbalanced parentheses"
            assert expr.count("{") == expr.count("}"), f"{r.get('alert') or r.get('record')}: unbalanced braces"
            for m in re.findall(r"\bgateway_[a-z_]+\b", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", m) if m.endswith(("_bucket", "_sum", "_count")) else m
                assert m in METRICS or base in HISTOGRAMS, f"{r.get('alert')}: unknown metric {m}"
            if "alert" in r:
                ann = r.get("annotations") or {}
                assert ann.get("summary") and ann.get("description"), f"{r['alert']}: summary/description missing"
                assert (r.get("labels") or {}).get("severity"), f"{r['alert']}: no severity"

    def rule_dashboard(self) -> None:
        cm = next(d for d in self.of_kind("ConfigMap") if "grafana_dashboard" in d["metadata"].get("labels", {}))
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", "label grafana_dashboard is not \"1\""
        (name, text), = cm["data"].items()
        assert name.endswith(".json"), f"{name} is not a .json key"
        dash = json.loads(text)
        assert dash.get("uid") and dash.get("title"), "no uid/title"
        panels = [p for p in dash["panels"] if p["type"] != "row"]
        assert len(panels) >= 8, f"only {len(panels)} panels"
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), "duplicate panel ids"
        used = set()
        for p in panels:
            assert p.get("targets"), f"panel {p['title']!r} has no query"
            for t in p["targets"]:
                for m in re.findall(r"\bgateway_[a-z_]+\b", t["expr"]):
                    base = re.sub(r"_(bucket|sum|count)$", "", m)
                    assert m in METRICS or base in HISTOGRAMS, f"panel {p['title']!r}: unknown metric {m}"
                    used.add(base if base in HISTOGRAMS else m)
        assert used >= CORE_METRICS, f"metrics with no panel: {sorted(CORE_METRICS - used)}"

