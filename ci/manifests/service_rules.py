"""Chart rules about what reaches the pod: Services, Ingress, HTTPRoute, NetworkPolicy, HPA, PDB, test pod."""

from __future__ import annotations

from .pieces import Pieces, matches


class ServiceRules(Pieces):
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

