#!/usr/bin/env python3
"""Validate rendered tokengate manifests offline.

usage: validate_manifests.py [--kube-version 1.30.0] [--dump-configs DIR] [--dump-rules DIR]
                             [--values-schema charts/tokengate/values.schema.json] FILE...
       validate_manifests.py --against-models --values-schema charts/tokengate/values.schema.json

Each FILE is one `helm template` output. Three kinds of checks, each printed as
"ok" or "FAIL", then one closing line "manifests: N passed, N failed":

1. Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are
   errors). An apiVersion/kind with no schema for the Kubernetes version (a
   removed API such as policy/v1beta1) is an error too, except the Prometheus
   Operator kinds, which are checked with the cloudcoil pydantic models, and the
   Gateway API HTTPRoute, checked against the CRD's own OpenAPI schema
   (tools/schemas/httproute-v1.json, strict; its CEL rules are not evaluated).
2. The chart's own rules: the hardening the chart promises (non-root, read-only
   root filesystem, no privilege escalation, capabilities dropped, seccomp), the
   probes, the grace period against shutdown_grace, the config file against the
   values schema's gateway section (with the keys the chart sets itself) and its
   listen ports against the container ports, and that every selector and port
   name refers to something that exists in the same render.
3. The Grafana dashboard JSON and the metric names used by alerts and panels.

--against-models (no FILE) compares the values schema's `gateway:` section with the
gateway's config models (gateway/config.py), walking both trees: every model's keys
and every Literal's values must be what the schema allows, so neither can drift from
the other. It needs a Python that imports the gateway package (the project's .venv);
kubernetes-validate is not needed for it.

--dump-configs DIR writes each rendered gateway.yaml to DIR (as
<render>.gateway.yaml), for `gateway check-config`; --dump-rules DIR writes each
PrometheusRule's groups as a Prometheus rule file (<render>.rules.yaml), for
`promtool check rules` and `promtool test rules`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")
HTTPROUTE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "httproute-v1.json"

# Keys of the gateway's config file that the chart writes itself (from ports, decision and
# redis): absent from the values schema's gateway section, present in every render.
CHART_OWNED = {"gateway": {"listen", "admin_listen", "decision_listen"}, "gateway.revocation": {"redis_url"}}
CONFIG_REQUIRED = {"listen", "admin_listen", "upstreams", "routes"}

# Metrics the gateway exports (gateway/metrics.py; histograms add _bucket, _sum, _count).
# CORE ones are those the alerts and the dashboard must cover.
CORE_METRICS = {
    "gateway_requests_total", "gateway_request_duration_seconds", "gateway_upstream_duration_seconds",
    "gateway_token_validations_total", "gateway_jwks_refresh_total", "gateway_revocation_redis_up",
    "gateway_revocation_notification_lag_seconds", "gateway_revocation_entries",
    "gateway_config_reload_total", "gateway_suspicious_token_use_total",
}
METRICS = CORE_METRICS | {
    "gateway_token_cache_total", "gateway_introspection_requests_total", "gateway_introspection_duration_seconds",
    "gateway_revocation_resyncs_total", "gateway_revocation_redis_errors_total", "gateway_audit_write_errors_total",
    "gateway_audit_records_dropped_total", "gateway_audit_records_unserialisable_total",
    "gateway_audit_writer_heartbeat_timestamp_seconds", "gateway_introspection_coalesced_total",
}
HISTOGRAMS = {
    "gateway_request_duration_seconds", "gateway_upstream_duration_seconds", "gateway_introspection_duration_seconds",
}
REQUIRED_ALERTS = {
    "TokengateInvalidTokenRateHigh", "TokengateInsufficientScopeSpike", "TokengateJWKSRefreshFailing",
    "TokengateUpstream5xxRatioHigh",
}
REDIS_ALERTS = {"TokengateRevocationRedisDown", "TokengateRevocationNotificationLag"}
UID = 10001


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, what: str, note: str = "") -> None:
        self.passed += 1
        print(f"ok   {what}{': ' + note if note else ''}")

    def fail(self, what: str, why: str) -> None:
        self.failed += 1
        print(f"FAIL {what}: {why}")

    def check(self, what: str, fn: Callable[[], None]) -> None:
        """Run fn; an AssertionError (or any error) is a failure with its message."""
        try:
            fn()
        except AssertionError as e:
            self.fail(what, str(e) or "assertion failed")
        except Exception as e:
            self.fail(what, f"{type(e).__name__}: {e}")
        else:
            self.ok(what)


def duration_seconds(value: Any) -> float:
    """The gateway's duration forms: 250ms, 1.5s, 20s, 5m, 1h, 2d, or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    assert m, f"not a duration: {value!r}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def port_of(listen: str) -> int:
    return int(str(listen).rsplit(":", 1)[1])


def check_crd(doc: dict[str, Any]) -> str:
    try:
        from cloudcoil.models.prometheus_operator import v1 as mon
    except ImportError:
        return "skipped (no CRD models installed)"
    getattr(mon, doc["kind"]).model_validate(doc)
    return "ok (prometheus-operator models)"


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def strict(schema: Any) -> Any:
    """A CRD schema as the API server prunes it, made strict: unknown fields are errors."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def check_http_route(doc: dict[str, Any]) -> str:
    """An HTTPRoute against the Gateway API CRD's schema (CEL rules aside)."""
    import jsonschema

    with open(HTTPROUTE_SCHEMA) as f:
        schema = strict(json.load(f))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:5])
    return "ok (Gateway API v1.6.1 CRD schema, strict; CEL rules not evaluated)"


def config_schema(values_schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a rendered gateway.yaml: the values' gateway section plus what the chart sets."""
    gateway = copy.deepcopy(values_schema["properties"]["gateway"])
    listen = {"type": "string", "pattern": "^(\\[[0-9A-Fa-f:]+\\]|[^:\\s]+):[0-9]+$"}
    for key in CHART_OWNED["gateway"]:
        gateway["properties"][key] = listen
    gateway["properties"]["revocation"]["properties"]["redis_url"] = {"type": "string", "const": "${REDIS_URL}"}
    gateway["required"] = sorted(set(gateway.get("required", [])) | CONFIG_REQUIRED)
    return {"definitions": values_schema.get("definitions", {}), **gateway}


class Render:
    """One `helm template` output and the chart rules that apply to it."""

    def __init__(self, path: str, docs: list[dict[str, Any]], values_schema: dict[str, Any] | None = None) -> None:
        self.path = path
        self.docs = docs
        self.values_schema = values_schema

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        return (d for d in self.docs if d.get("kind") == kind)

    def one(self, kind: str, pred: Callable[[dict[str, Any]], bool] = lambda d: True) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if pred(d)]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    # --- the pieces the rules look at -------------------------------------------
    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        template: dict[str, Any] = self.deployment["spec"]["template"]
        return template

    @property
    def gateway_container(self) -> dict[str, Any]:
        return next(c for c in self.pod["spec"]["containers"] if c["name"] == "gateway")

    @property
    def config_volume(self) -> dict[str, Any]:
        mount = next((m for m in self.gateway_container.get("volumeMounts", []) if m["mountPath"] == "/etc/gateway"), None)
        assert mount, "nothing mounted at /etc/gateway"
        return next(v for v in self.pod["spec"]["volumes"] if v["name"] == mount["name"])

    @property
    def config_key(self) -> str:
        """The ConfigMap key that becomes /etc/gateway/gateway.yaml."""
        items = self.config_volume.get("configMap", {}).get("items") or []
        return next((i["key"] for i in items if i["path"] == "gateway.yaml"), "gateway.yaml")

    @property
    def config_map(self) -> dict[str, Any] | None:
        """The mounted ConfigMap, or None when it is not part of the render (config.existingConfigMap)."""
        name = self.config_volume.get("configMap", {}).get("name")
        found = [d for d in self.of_kind("ConfigMap") if d["metadata"]["name"] == name]
        return found[0] if found else None

    @property
    def config(self) -> dict[str, Any]:
        cm = self.config_map
        assert cm is not None, "the gateway's ConfigMap is not in this render"
        assert self.config_key in (cm.get("data") or {}), f"ConfigMap {cm['metadata']['name']} has no key {self.config_key}"
        config = yaml.safe_load(cm["data"][self.config_key])
        assert isinstance(config, dict), "gateway.yaml is not a mapping"
        return config

    # --- rules ---------------------------------------------------------------------
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

    def rule_pod_security(self) -> None:
        sc = self.pod["spec"].get("securityContext") or {}
        assert sc.get("runAsNonRoot") is True, "runAsNonRoot is not true"
        assert sc.get("runAsUser") == UID, f"runAsUser is {sc.get('runAsUser')}, want {UID}"
        assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "seccompProfile is not RuntimeDefault"

    def rule_container_security(self) -> None:
        for c in self.pod["spec"]["containers"] + self.pod["spec"].get("initContainers", []):
            sc = c.get("securityContext") or {}
            n = c["name"]
            assert sc.get("readOnlyRootFilesystem") is True, f"{n}: readOnlyRootFilesystem is not true"
            assert sc.get("allowPrivilegeEscalation") is False, f"{n}: allowPrivilegeEscalation is not false"
            assert "ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{n}: capabilities.drop lacks ALL"
            assert sc.get("runAsNonRoot", True) is True, f"{n}: runAsNonRoot is false"
        sc = self.gateway_container["securityContext"]
        assert sc.get("runAsUser") == UID, f"gateway: runAsUser is {sc.get('runAsUser')}"
        assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "gateway: seccompProfile"

    def rule_probes(self) -> None:
        c = self.gateway_container
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            assert get.get("path") == path, f"{probe} path is {get.get('path')}, want {path}"
            assert get.get("port") == "admin", f"{probe} port is {get.get('port')}, want admin"

    def rule_resources(self) -> None:
        for c in self.pod["spec"]["containers"]:
            res = c.get("resources") or {}
            assert (res.get("requests") or {}).get("memory"), f"{c['name']}: no memory request"
            assert (res.get("limits") or {}).get("memory"), f"{c['name']}: no memory limit"
        assert (self.gateway_container["resources"]["requests"]).get("cpu"), "gateway: no cpu request"

    def rule_grace(self) -> None:
        grace = duration_seconds(self.config.get("shutdown_grace", "20s"))
        pre = 0
        cmd = ((self.gateway_container.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command")
        if cmd and cmd[0] == "sleep":
            pre = int(cmd[1])
        tgps = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        assert tgps > pre + grace, f"terminationGracePeriodSeconds {tgps} <= preStop {pre}s + shutdown_grace {grace}s"

    def rule_volumes(self) -> None:
        vols = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in self.gateway_container.get("volumeMounts", [])}
        assert "/tmp" in mounts and "emptyDir" in vols[mounts["/tmp"]], "/tmp is not an emptyDir"
        env = {e["name"]: e.get("value") for e in self.gateway_container.get("env", [])}
        if int(self.config.get("workers", 1)) > 1:
            d = env.get("PROMETHEUS_MULTIPROC_DIR")
            assert d, "workers > 1 but PROMETHEUS_MULTIPROC_DIR is not set"
            assert any(d == p or d.startswith(p.rstrip("/") + "/") for p, n in mounts.items() if "emptyDir" in vols[n]), \
                f"PROMETHEUS_MULTIPROC_DIR {d} is not on an emptyDir"
        audit = self.config.get("audit") or {}
        if audit.get("sink") == "file":
            d = os.path.dirname(audit["path"])
            assert any(d == p or d.startswith(p.rstrip("/") + "/") for p, n in mounts.items() if "emptyDir" in vols[n]), \
                f"audit path {audit['path']} is not on an emptyDir"

    def rule_config_mount(self) -> None:
        mounts = {m["mountPath"]: m for m in self.gateway_container.get("volumeMounts", [])}
        m = mounts.get("/etc/gateway")
        assert m, "nothing mounted at /etc/gateway"
        assert "subPath" not in m, "subPath mounts never see ConfigMap updates (no hot reload)"
        assert self.config_volume.get("configMap", {}).get("name"), "/etc/gateway is not a ConfigMap volume"
        if self.config_map is None:  # bring-your-own: the chart must not render a config of its own
            assert not any("gateway.yaml" in (d.get("data") or {}) for d in self.of_kind("ConfigMap")), \
                "a gateway.yaml ConfigMap is rendered but another one is mounted"
        args = self.gateway_container.get("args") or []
        assert args[:1] == ["serve"] and "/etc/gateway/gateway.yaml" in args, f"args {args}"

    def rule_secret_env(self) -> None:
        env = {e["name"]: e for e in self.gateway_container.get("env", [])}
        text = yaml.safe_dump(self.config)
        # ${VAR:-default} works without VAR, so only ${VAR} is looked for
        for var in sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))):
            assert var in env, f"the config refers to ${{{var}}} but the container has no such variable"
        rev = self.config.get("revocation") or {}
        if "redis_url" in rev:
            assert rev["redis_url"] == "${REDIS_URL}", "redis_url is written into the ConfigMap"
            e = env["REDIS_URL"]
            assert "secretKeyRef" in (e.get("valueFrom") or {}) or "redis://" in str(e.get("value")), "REDIS_URL"
        for issuer in self.config.get("issuers") or []:
            secret = (issuer.get("introspection") or {}).get("client_secret")
            if secret is not None:
                m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", str(secret))
                assert m, f"{issuer['issuer']}: client_secret is a literal in the ConfigMap, not ${{VAR}}"
                assert "secretKeyRef" in (env[m.group(1)].get("valueFrom") or {}), f"{m.group(1)} is not from a Secret"

    def rule_service_account(self) -> None:
        assert self.pod["spec"].get("automountServiceAccountToken") is False, "pod automountServiceAccountToken"
        for sa in self.of_kind("ServiceAccount"):
            assert sa.get("automountServiceAccountToken") is False, "ServiceAccount automountServiceAccountToken"

    def rule_topology_spread(self) -> None:
        tsc = self.pod["spec"].get("topologySpreadConstraints") or []  # absent: topologySpread.enabled=false
        labels = self.pod["metadata"]["labels"]
        for t in tsc:
            assert matches(t["labelSelector"]["matchLabels"], labels), f"{t['topologyKey']}: selector misses the pods"

    def rule_config_shape(self) -> None:
        """The rendered gateway.yaml against the values schema's gateway section.

        That section is itself compared with the gateway's config models (--against-models), and
        `gateway check-config` reads every rendered file: this catches a chart that writes a key or
        a value the gateway would refuse, in the tools' Python where the gateway is not installed.
        """
        cfg = self.config
        missing = CONFIG_REQUIRED - set(cfg)
        assert not missing, f"gateway.yaml lacks {sorted(missing)}"
        assert cfg["routes"] and cfg["upstreams"], "the gateway needs at least one route and one upstream"
        assert self.values_schema is not None, "no --values-schema to check the config against"
        import jsonschema

        validator = jsonschema.Draft7Validator(config_schema(self.values_schema))
        errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.path))
        assert not errors, "; ".join(f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors[:5])

    def rule_listen_ports(self) -> None:
        cfg = self.config
        ports = {p["name"]: p["containerPort"] for p in self.gateway_container["ports"]}
        assert port_of(cfg["listen"]) == ports["http"], "listen != container port http"
        assert port_of(cfg["admin_listen"]) == ports["admin"], "admin_listen != container port admin"
        if "decision_listen" in cfg:
            assert port_of(cfg["decision_listen"]) == ports.get("decision"), "decision_listen != container port decision"
        else:
            assert "decision" not in ports, "decision port open but no decision_listen"

    def rule_routes_upstreams(self) -> None:
        cfg = self.config
        names = [r["name"] for r in cfg["routes"]]
        assert len(names) == len(set(names)), f"duplicate route names: {names}"
        for r in cfg["routes"]:
            assert r["upstream"] in cfg["upstreams"], f"route {r['name']}: unknown upstream {r['upstream']}"

    def rule_checksum(self) -> None:
        ann = self.pod["metadata"].get("annotations") or {}
        if "checksum/config" in ann:
            assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/config"]), "checksum/config is not a sha256"

    def rule_services(self) -> None:
        cport_names = {p["name"] for p in self.gateway_container["ports"]}
        labels = self.pod["metadata"]["labels"]
        seen: set[str] = set()
        for svc in self.of_kind("Service"):
            assert matches(svc["spec"]["selector"], labels), f"{svc['metadata']['name']}: selector misses the pods"
            for p in svc["spec"]["ports"]:
                assert p["targetPort"] in cport_names, f"{svc['metadata']['name']}: targetPort {p['targetPort']} unknown"
                seen.add(p["targetPort"])
            if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
                names = {p["name"] for p in svc["spec"]["ports"]}
                assert not names & {"admin", "decision"}, f"{svc['metadata']['name']}: admin/decision on a {svc['spec']['type']}"
        assert cport_names <= seen, f"container ports without a Service port: {sorted(cport_names - seen)}"

    def rule_test_pod(self) -> None:
        pod = self.one("Pod")
        annotations = pod["metadata"].get("annotations") or {}
        assert annotations.get("helm.sh/hook") == "test", "the Pod is not a helm test hook"
        spec = pod["spec"]
        assert spec.get("restartPolicy") == "Never", "a test pod must not restart"
        assert spec.get("automountServiceAccountToken") is False, "service account token mounted"
        assert spec.get("securityContext") == self.pod["spec"]["securityContext"], "pod security context differs"
        (container,) = spec["containers"]
        assert container["image"] == self.gateway_container["image"], "not the gateway's image"
        assert container.get("securityContext") == self.gateway_container.get("securityContext"), \
            "container security context differs from the gateway's"
        ready, public, _host = container["args"][1:4]
        services = {s["metadata"]["name"]: {p["name"]: p["port"] for p in s["spec"]["ports"]}
                    for s in self.of_kind("Service")}
        admin = next((f"http://{n}:{p['admin']}/readyz" for n, p in services.items() if "admin" in p), None)
        assert ready == admin, f"{ready} is not the admin Service's /readyz ({admin})"
        assert any(public.startswith(f"http://{n}:{p['http']}/") for n, p in services.items() if "http" in p), \
            f"{public} is not the public Service"
        for np_ in self.of_kind("NetworkPolicy"):
            admin_rules = [r for r in np_["spec"]["ingress"] if "admin" in {p["port"] for p in r.get("ports", [])}]
            assert any(matches((f.get("podSelector") or {}).get("matchLabels") or {"-": "-"}, pod["metadata"]["labels"])
                       and "namespaceSelector" not in f for rule in admin_rules for f in rule.get("from", [])), \
                "the NetworkPolicy keeps the test pod from the admin port"

    def rule_hpa(self) -> None:
        hpa = self.one("HorizontalPodAutoscaler")
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", self.deployment["metadata"]["name"]), f"targets {ref}"
        assert "replicas" not in self.deployment["spec"], "Deployment sets replicas while an HPA manages it"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], "minReplicas > maxReplicas"

    def rule_pdb(self) -> None:
        pdb = self.one("PodDisruptionBudget")
        assert matches(pdb["spec"]["selector"]["matchLabels"], self.pod["metadata"]["labels"]), "selector misses the pods"
        spec = pdb["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), "set exactly one of minAvailable/maxUnavailable"
        replicas = self.deployment["spec"].get("replicas")
        if replicas is None:
            replicas = self.one("HorizontalPodAutoscaler")["spec"]["minReplicas"]
        if isinstance(spec.get("minAvailable"), int):
            assert spec["minAvailable"] < replicas, f"minAvailable {spec['minAvailable']} blocks every drain at {replicas} replicas"

    def rule_network_policy(self) -> None:
        np_ = self.one("NetworkPolicy")
        assert matches(np_["spec"]["podSelector"]["matchLabels"], self.pod["metadata"]["labels"]), "podSelector misses the pods"
        cport_names = {p["name"] for p in self.gateway_container["ports"]}
        covered = set()
        for rule in np_["spec"].get("ingress", []):
            names = {p["port"] for p in rule.get("ports", [])}
            assert names, "an ingress rule without ports opens every port"
            assert names <= cport_names, f"ingress names unknown ports {sorted(names - cport_names)}"
            covered |= names
            if "admin" in names:
                assert rule.get("from"), "admin port open to everyone"
        assert covered == cport_names, f"ports without an ingress rule: {sorted(cport_names - covered)}"
        if "Egress" in np_["spec"]["policyTypes"]:
            dns = [r for r in np_["spec"].get("egress", []) if any(p.get("port") == 53 for p in r.get("ports", []))]
            assert dns or any(not r.get("ports") for r in np_["spec"]["egress"]), "egress restricted but DNS not allowed"

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

    def rule_ingress(self) -> None:
        """Backends on this release's Services use the public port; others (ingress.extraPaths) are the user's."""
        public = self.public_service
        ours = {s["metadata"]["name"] for s in self.of_kind("Service")}
        seen = False
        for ing in self.of_kind("Ingress"):
            for rule in ing["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    b = (p["backend"].get("service") or {})
                    if b.get("name") not in ours:
                        continue
                    seen = True
                    assert b["name"] == public["metadata"]["name"], f"backend {b} is not the public Service"
                    assert b["port"].get("name") == "http", f"backend {b} is not the public port"
        assert seen, "no Ingress path leads to the gateway"

    @property
    def public_service(self) -> dict[str, Any]:
        return self.one("Service", lambda s: "http" in {p["name"] for p in s["spec"]["ports"]})

    def rule_http_route(self) -> None:
        public = self.public_service
        port = next(p["port"] for p in public["spec"]["ports"] if p["name"] == "http")
        for route in self.of_kind("HTTPRoute"):
            assert route["spec"].get("parentRefs"), "no parentRefs: the route attaches to no Gateway"
            assert route["metadata"].get("namespace") == public["metadata"]["namespace"], "not in the Service's namespace"
            for rule in route["spec"]["rules"]:
                refs = rule.get("backendRefs") or []
                assert refs, f"a rule without backendRefs: {rule}"
                for ref in refs:
                    assert ref.get("kind", "Service") == "Service" and ref.get("group", "") == "", f"{ref} is not a Service"
                    assert (ref["name"], ref.get("port")) == (public["metadata"]["name"], port), \
                        f"{ref} is not {public['metadata']['name']}:{port} (the public port)"

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


# --- the values schema against the gateway's config models ---------------------------------------


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def branches(node: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """A schema node and every alternative it allows (oneOf/anyOf/allOf), $refs resolved."""
    node = resolve(node, root)
    found = [node]
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(key, []):
            found += branches(sub, root)
    return found


def type_arms(annotation: Any) -> list[Any]:
    """The alternatives of a field's type, without None and Annotated's metadata."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_arms(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [arm for a in get_args(annotation) if a is not type(None) for arm in type_arms(a)]
    return [annotation]


class ModelWalk:
    """Walks a pydantic model tree beside the JSON schema that should accept the same documents.

    Each model met (GatewayConfig, and every nested one: issuers[], routes[].rules[], tls...)
    becomes one result: the keys the schema lacks or has in excess (less CHART_OWNED), and
    the Literal fields whose enum differs. A model added to gateway/config.py is found here
    without anyone listing it.
    """

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.results: list[tuple[str, str, list[str]]] = []

    def model(self, model: Any, node: dict[str, Any], where: str) -> None:
        problems: list[str] = []
        objects = [b for b in branches(node, self.root) if "properties" in b]
        if not objects:
            self.results.append((where, model.__name__, ["the schema has no object with properties here"]))
            return
        obj = objects[0]
        if obj.get("additionalProperties") is not False:
            problems.append("not closed (additionalProperties: false): a typo would pass the schema")
        in_schema = set(obj["properties"])
        in_model = set(model.model_fields) - CHART_OWNED.get(where, set())
        if in_model - in_schema:
            problems.append(f"schema lacks {sorted(in_model - in_schema)}")
        if in_schema - in_model:
            problems.append(f"schema has keys the gateway refuses: {sorted(in_schema - in_model)}")
        self.results.append((where, model.__name__, problems))
        for name, field in model.model_fields.items():
            if name in obj["properties"]:
                self.value(field.annotation, obj["properties"][name], f"{where}.{name}", problems)

    def value(self, annotation: Any, node: dict[str, Any], where: str, problems: list[str]) -> None:
        from pydantic import BaseModel

        for arm in type_arms(annotation):
            origin = get_origin(arm)
            alternatives = branches(node, self.root)
            if isinstance(arm, type) and issubclass(arm, BaseModel):
                self.model(arm, node, where)
            elif origin is list:
                items = [b["items"] for b in alternatives if isinstance(b.get("items"), dict)]
                if not items:
                    problems.append(f"{where}: a list for the gateway, no array items in the schema")
                else:
                    self.value(get_args(arm)[0], items[0], f"{where}[]", problems)
            elif origin is dict:
                values = [b["additionalProperties"] for b in alternatives if isinstance(b.get("additionalProperties"), dict)]
                if not values:
                    problems.append(f"{where}: a mapping for the gateway, no additionalProperties schema")
                else:
                    self.value(get_args(arm)[1], values[0], f"{where}.*", problems)
            elif origin is Literal:
                want = {str(v) for v in get_args(arm)}
                allowed = {str(v) for b in alternatives for v in b.get("enum", [b["const"]] if "const" in b else [])
                           if v is not None}
                if allowed != want:
                    problems.append(f"{where}: the schema allows {sorted(allowed)}, the gateway {sorted(want)}")


def check_schema_against_models(rep: Report, schema_path: str) -> None:
    """The values schema's gateway section against the gateway's pydantic models, tree against tree."""
    try:
        from gateway import config as models
    except Exception as e:  # reported, never skipped: this is how the two drifted apart before
        rep.fail("values schema vs gateway config models",
                 f"cannot import gateway.config ({type(e).__name__}: {e}); run with the project's .venv python")
        return
    with open(schema_path) as f:
        schema = json.load(f)
    walk = ModelWalk(schema)
    walk.model(models.GatewayConfig, schema["properties"]["gateway"], "gateway")
    for where, name, problems in walk.results:
        what = f"values schema matches the gateway's {name} at {where}"
        if problems:
            rep.fail(what, "; ".join(problems))
        else:
            rep.ok(what)


def validate_object(d: dict[str, Any], kube_version: str) -> str:
    """One object against its schema; returns a note, raises on a problem."""
    import kubernetes_validate as kv

    if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS:
        return check_crd(d)
    if (d.get("apiVersion"), d.get("kind")) == HTTPROUTE:
        return check_http_route(d)
    try:
        kv.validate(d, kube_version, strict=True)
    except kv.SchemaNotFoundError:
        raise AssertionError(f"no schema for this apiVersion/kind in Kubernetes {kube_version}") from None
    except kv.ValidationError as e:
        raise AssertionError(f"{'.'.join(map(str, e.path))}: {e.message}") from None
    return ""


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--kube-version", default="1.30.0")
    p.add_argument("--dump-configs", metavar="DIR")
    p.add_argument("--dump-rules", metavar="DIR")
    p.add_argument("--values-schema", metavar="FILE")
    p.add_argument("--against-models", action="store_true",
                   help="compare --values-schema with gateway/config.py (needs the gateway importable)")
    p.add_argument("files", nargs="*")
    a = p.parse_args()
    if a.against_models:
        if not a.values_schema or a.files:
            p.error("--against-models takes --values-schema and no FILE")
        rep = Report()
        check_schema_against_models(rep, a.values_schema)
        print(f"values-schema: {rep.passed} passed, {rep.failed} failed")
        return 1 if rep.failed else 0
    if not a.files:
        p.error("no FILE to validate")
    values_schema = None
    if a.values_schema:
        with open(a.values_schema) as f:
            values_schema = json.load(f)
    rep = Report()
    for path in a.files:
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d]
        except yaml.YAMLError as e:
            rep.fail(path, f"YAML: {e}")
            continue
        # 1. Kubernetes schemas
        for d in docs:
            name = f"{path}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')} ({d.get('apiVersion')})"
            try:
                note = validate_object(d, a.kube_version)
            except AssertionError as e:
                rep.fail(name, str(e))
            except Exception as e:  # pydantic's ValidationError and the like
                rep.fail(name, f"{type(e).__name__}: {e}")
            else:
                rep.ok(name, note)
        # 2. and 3. the chart's rules
        render = Render(path, docs, values_schema)
        for what, fn in render.rules():
            rep.check(f"{path}: {what}", fn)
        stem = os.path.splitext(os.path.basename(path))[0]
        if a.dump_configs and render.config_map is not None:
            os.makedirs(a.dump_configs, exist_ok=True)
            with open(os.path.join(a.dump_configs, f"{stem}.gateway.yaml"), "w") as f:
                f.write(render.config_map["data"][render.config_key])
        if a.dump_rules:
            for pr in render.of_kind("PrometheusRule"):
                os.makedirs(a.dump_rules, exist_ok=True)
                with open(os.path.join(a.dump_rules, f"{stem}.rules.yaml"), "w") as f:
                    yaml.safe_dump({"groups": pr["spec"]["groups"]}, f, sort_keys=False)
    print(f"manifests: {rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
