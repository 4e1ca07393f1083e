"""Chart rules about the gateway's pod: hardening, probes, resources, the mounted config and its shape."""

from __future__ import annotations

import os
import re

import yaml

from gateway.durations import parse_duration

from .known import CONFIG_REQUIRED, UID
from .pieces import Pieces, config_schema, matches, port_of


class PodRules(Pieces):
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
        grace = parse_duration(self.config.get("shutdown_grace", "20s"))
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

