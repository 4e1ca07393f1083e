"""The chart rules that apply to one render."""

from __future__ import annotations

from collections.abc import Callable

from .monitoring_rules import MonitoringRules
from .pod_rules import PodRules
from .service_rules import ServiceRules


class Render(PodRules, ServiceRules, MonitoringRules):
    """One `helm template` output and the chart rules that apply to it."""

    def rules(self) -> list[tuple[str, Callable[[], None]]]:
        r = [
            ("pod security context", self.rule_pod_security),
            ("container security context", self.rule_container_security),
            ("probes on the admin port", self.rule_probes),
            ("resources set", self.rule_resources),
            ("config mounted at /etc/gateway", self.rule_config_mount),
            ("service account token not mounted", self.rule_service_account),
            ("topology spread", self.rule_topology_spread),
            ("checksum annotation", self.rule_checksum),
            ("Service ports and selector", self.rule_services),
        ]
        if self.config_map is not None:  # else config.existingConfigMap names one made elsewhere
            r += [
                ("grace period > preStop + shutdown_grace", self.rule_grace),
                ("writable paths are emptyDirs", self.rule_volumes),
                ("secrets come from Secret references", self.rule_secret_env),
                ("gateway.yaml shape (values schema + what the chart sets)", self.rule_config_shape),
                ("listen ports = container ports", self.rule_listen_ports),
                ("routes name known upstreams", self.rule_routes_upstreams),
            ]
        kinds = {d["kind"] for d in self.docs}
        if "HTTPRoute" in kinds:
            r.append(("HTTPRoute sends to the public Service port", self.rule_http_route))
        if "HorizontalPodAutoscaler" in kinds:
            r.append(("HPA targets the Deployment", self.rule_hpa))
        if "PodDisruptionBudget" in kinds:
            r.append(("PDB selects the pods", self.rule_pdb))
        if "NetworkPolicy" in kinds:
            r.append(("NetworkPolicy selects the pods, admin port restricted", self.rule_network_policy))
        if "ServiceMonitor" in kinds:
            r.append(("ServiceMonitor selects the admin Service", self.rule_service_monitor))
        if "PrometheusRule" in kinds:
            r.append(("PrometheusRule alerts and metric names", self.rule_prometheus_rule))
        if "Ingress" in kinds:
            r.append(("Ingress backends exist", self.rule_ingress))
        if "Pod" in kinds:
            r.append(("helm test pod: hardened, reaches /readyz and a route", self.rule_test_pod))
        if any(d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {}) for d in self.docs):
            r.append(("Grafana dashboard", self.rule_dashboard))
        return r

