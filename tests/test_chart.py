"""The Helm chart (charts/tokengate), rendered by the real Helm: one test per value it offers.

Helm is the binary ci/k8s-checks.sh installs (~/.cache/k8s-tools/helm) or any on PATH; without
it these tests are skipped. ci/k8s-checks.sh additionally validates the renders of
ci/values-*.yaml against the Kubernetes schemas; here each value's effect is pinned down.
Also tested: the values-table generator (tools/chart_values_doc.py) and the comparison of the
values schema with the gateway's config models (python -m ci.manifests --against-models).
"""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.test_audit_alerts import tool

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "tokengate"
ROUTED = {  # a minimal real config: one upstream, one route that needs a token
    "gateway": {
        "issuers": [{"issuer": "https://auth.example.com", "audiences": ["orders"]}],
        "upstreams": {"orders": {"url": "http://orders.shop.svc:8080"}},
        "routes": [{"name": "orders", "path": "/orders", "upstream": "orders", "scopes": ["orders:read"]}],
    }
}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out = _merge(out, layer)
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def helm(args: list[str], values: dict[str, Any] | None = None,
         chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        return subprocess.run([tool("helm"), *args[:1], *(["gw"] if args[0] == "template" else []), str(chart),
                               *args[1:], "-f", f.name], capture_output=True, text=True, timeout=120)


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    out = helm(["template", "--namespace", "ci", "--api-versions", "monitoring.coreos.com/v1"], values, chart)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def refused(values: dict[str, Any]) -> str:
    out = helm(["template", "--namespace", "ci"], values)
    assert out.returncode != 0, "rendered, but should have been refused"
    return out.stderr


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "gateway")


# --- image, names, namespace -------------------------------------------------------------


def test_image_registry_is_prepended_and_global_image_registry_wins() -> None:
    assert gateway_container(render())["image"] == "tokengate:0.1.0"
    assert gateway_container(render({"image": {"registry": "registry.example.com/", "repository": "platform/tg"}}))[
        "image"] == "registry.example.com/platform/tg:0.1.0"
    docs = render({"global": {"imageRegistry": "mirror.example.com"},
                   "image": {"registry": "registry.example.com", "digest": "sha256:" + "a" * 64}})
    assert gateway_container(docs)["image"] == "mirror.example.com/tokengate@sha256:" + "a" * 64
    # the helm test pod runs the same image
    assert one(docs, "Pod")["spec"]["containers"][0]["image"] == gateway_container(docs)["image"]


def test_namespace_override_moves_every_object_and_what_points_at_them() -> None:
    values = {"namespaceOverride": "tokengate-system", "serviceMonitor": {"enabled": True},
              "prometheusRule": {"enabled": True}, "ingress": {"enabled": True, "hosts": [
                  {"host": "api.example.com", "paths": [{"path": "/"}]}]}}
    docs = render(values)
    assert {d["metadata"]["namespace"] for d in docs} == {"tokengate-system"}
    assert one(docs, "ServiceMonitor")["spec"]["namespaceSelector"]["matchNames"] == ["tokengate-system"]
    expr = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["expr"]
    assert 'namespace="tokengate-system"' in expr
    # without it: the release's namespace
    assert {d["metadata"]["namespace"] for d in render()} == {"ci"}
    assert "namespaceOverride: Does not match pattern" in refused({"namespaceOverride": "Not_A_Namespace"})


# --- the Deployment and its pods ------------------------------------------------------------


def test_deployment_annotations_and_labels_go_on_the_deployment_only() -> None:
    docs = render({"deploymentAnnotations": {"reloader.example.com/watch": "false"},
                   "deploymentLabels": {"cost-center": "security"}})
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["annotations"] == {"reloader.example.com/watch": "false"}
    assert deployment["metadata"]["labels"]["cost-center"] == "security"
    template = deployment["spec"]["template"]["metadata"]
    assert "cost-center" not in template["labels"]
    assert "reloader.example.com/watch" not in (template.get("annotations") or {})
    assert "annotations" not in one(render(), "Deployment")["metadata"]


def test_host_aliases_reach_the_pod() -> None:
    aliases = [{"ip": "10.1.2.3", "hostnames": ["idp.internal.example"]}]
    assert pod_spec(render({"hostAliases": aliases}))["hostAliases"] == aliases
    assert "hostAliases" not in pod_spec(render())
    assert "hostnames is required" in refused({"hostAliases": [{"ip": "10.1.2.3"}]})


def test_env_from_reaches_the_gateway_container() -> None:
    env_from = [{"secretRef": {"name": "tg-secrets"}}, {"configMapRef": {"name": "proxy-env"}, "prefix": "P_"}]
    assert gateway_container(render({"envFrom": env_from}))["envFrom"] == env_from
    assert "envFrom" not in gateway_container(render())


def test_extra_init_containers_run_before_the_gateway() -> None:
    init = [{"name": "wait", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}]
    spec = pod_spec(render({"extraInitContainers": init}))
    assert spec["initContainers"] == init
    assert [c["name"] for c in spec["containers"]] == ["gateway"]
    assert "initContainers" not in pod_spec(render())
    assert "image is required" in refused({"extraInitContainers": [{"name": "wait"}]})


def test_probes_are_raw_kubernetes_probes() -> None:
    container = gateway_container(render())
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["startupProbe"]["failureThreshold"] == 60
    # another handler: null the default one (Helm merges maps); a field Kubernetes has but the chart never named
    container = gateway_container(render({
        "livenessProbe": {"httpGet": None, "tcpSocket": {"port": "admin"}, "terminationGracePeriodSeconds": 15},
        "startupProbe": None,
    }))
    assert container["livenessProbe"] == {"tcpSocket": {"port": "admin"}, "terminationGracePeriodSeconds": 15,
                                          "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3}
    assert "startupProbe" not in container
    assert "readinessProbe: Invalid type" in refused({"readinessProbe": "yes"})


def test_topology_spread_constraints_are_raw_and_completed() -> None:
    default = pod_spec(render())["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in default] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    selector = {"app.kubernetes.io/name": "tokengate", "app.kubernetes.io/instance": "gw"}
    assert all(c["labelSelector"] == {"matchLabels": selector} and c["matchLabelKeys"] == ["pod-template-hash"]
               for c in default)
    own = {"topologyKey": "kubernetes.io/hostname", "maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule",
           "minDomains": 3, "labelSelector": {"matchLabels": {"team": "x"}}, "matchLabelKeys": []}
    assert pod_spec(render({"topologySpreadConstraints": [own]}))["topologySpreadConstraints"] == [own]
    assert "topologySpreadConstraints" not in pod_spec(render({"topologySpreadConstraints": []}))


def test_removed_values_fail_naming_their_replacement() -> None:
    assert "probes was replaced by startupProbe, readinessProbe and livenessProbe" in refused(
        {"probes": {"readiness": {"periodSeconds": 5}}})
    assert "topologySpread was replaced by topologySpreadConstraints" in refused({"topologySpread": {"enabled": False}})


# --- Service, Ingress, HTTPRoute ---------------------------------------------------------------


def test_service_internal_traffic_policy() -> None:
    service = one(render({"service": {"internalTrafficPolicy": "Local"}}), "Service")
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert "internalTrafficPolicy" not in one(render(), "Service")["spec"]
    assert "internalTrafficPolicy: service.internalTrafficPolicy must be one of" in refused(
        {"service": {"internalTrafficPolicy": "Nearby"}})


def test_ingress_labels_and_extra_paths_before_each_hosts_paths() -> None:
    extra = {"path": "/.well-known/acme-challenge", "pathType": "Prefix",
             "backend": {"service": {"name": "acme-solver", "port": {"number": 8089}}}}
    docs = render({"ingress": {"enabled": True, "labels": {"exposure": "public"}, "extraPaths": [extra],
                               "hosts": [{"host": "a.example", "paths": [{"path": "/"}]},
                                         {"host": "b.example", "paths": [{"path": "/api"}]}]}})
    ingress = one(docs, "Ingress")
    assert ingress["metadata"]["labels"]["exposure"] == "public"
    for rule in ingress["spec"]["rules"]:
        paths = rule["http"]["paths"]
        assert paths[0] == extra
        assert paths[1]["backend"]["service"] == {"name": "gw-tokengate", "port": {"name": "http"}}


def test_http_route_sends_every_rule_to_the_public_service_port() -> None:
    assert not [d for d in render() if d["kind"] == "HTTPRoute"]
    docs = render({"service": {"port": 8000}, "httpRoute": {
        "enabled": True, "labels": {"exposure": "public"}, "annotations": {"note": "x"},
        "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
        "hostnames": ["{{ .Release.Name }}.example.com"],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}], "timeouts": {"request": "30s"}},
                  {"matches": [{"path": {"type": "Exact", "value": "/health"}}]}]}})
    route = one(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["labels"]["exposure"] == "public" and route["metadata"]["annotations"] == {"note": "x"}
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["gw.example.com"]  # templated
    assert [r["backendRefs"] for r in route["spec"]["rules"]] == [[{"name": "gw-tokengate", "port": 8000}]] * 2
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "30s"}


def test_http_route_needs_parent_refs_and_owns_the_backend_refs() -> None:
    assert "parentRefs: Array must have at least 1" in refused({"httpRoute": {"enabled": True}})
    assert "rules.0: Must not validate the schema" in refused({"httpRoute": {
        "enabled": True, "parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "elsewhere"}]}]}})


# --- config and extra objects -------------------------------------------------------------------


def test_existing_config_map_is_mounted_instead_of_a_rendered_one() -> None:
    docs = render({"config": {"existingConfigMap": "{{ .Release.Name }}-own", "existingConfigMapKey": "config.yaml"},
                   "helmTest": {"path": "/orders"}})
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "config")
    assert volume["configMap"] == {"name": "gw-own", "items": [{"key": "config.yaml", "path": "gateway.yaml"}]}
    template = one(docs, "Deployment")["spec"]["template"]["metadata"]
    assert "checksum/config" not in (template.get("annotations") or {})  # nothing rendered to checksum
    # the chart cannot see the routes, so helm test needs a path
    assert "set helmTest.path" in refused({"config": {"existingConfigMap": "own"}})
    # the default: the chart's own ConfigMap, with a checksum
    docs = render(ROUTED)
    assert next(v for v in pod_spec(docs)["volumes"] if v["name"] == "config")["configMap"] == {"name": "gw-tokengate"}
    assert "checksum/config" in one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]


def test_extra_objects_are_rendered_as_templates_in_both_forms() -> None:
    docs = render({"extraObjects": [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": '{{ include "tokengate.fullname" . }}-extra'},
         "data": {"release": "{{ .Release.Name }}"}},
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-s\n"
        "stringData:\n  port: {{ .Values.ports.admin | quote }}\n",
    ]})
    assert one(docs, "ConfigMap", "gw-tokengate-extra")["data"] == {"release": "gw"}
    assert one(docs, "Secret", "gw-s")["stringData"] == {"port": "9090"}


# --- monitoring and network policy -----------------------------------------------------------


def test_service_monitor_scheme_tls_config_and_annotations() -> None:
    tls = {"caFile": "/etc/prom-certs/root-cert.pem", "insecureSkipVerify": True}
    monitor = one(render({"serviceMonitor": {"enabled": True, "scheme": "https", "tlsConfig": tls,
                                             "annotations": {"owner": "platform"}}}), "ServiceMonitor")
    assert monitor["metadata"]["annotations"] == {"owner": "platform"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["scheme"], endpoint["tlsConfig"], endpoint["port"]) == ("https", tls, "admin")
    (endpoint,) = one(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "http" and "tlsConfig" not in endpoint
    assert "scheme: serviceMonitor.scheme must be one of" in refused({"serviceMonitor": {"scheme": "ftp"}})


def notes(values: dict[str, Any], tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` leaves it out): included by a wrapper template."""
    chart = tmp_path / "tokengate"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n'
        '{{ include (print $.Template.BasePath "/NOTES.txt") . | indent 4 }}\n')
    text: str = one(render(values, chart), "ConfigMap", "notes")["data"]["notes"]
    return text


def test_network_policy_is_on_by_default_and_names_where_metrics_may_be_scraped_from(tmp_path: Path) -> None:
    policy = one(render(), "NetworkPolicy")
    assert policy["metadata"]["annotations"] == {
        "tokengate.io/proxy-port-from": "anywhere",
        "tokengate.io/metrics-from": "namespaces kubernetes.io/metadata.name=monitoring",
    }
    text = notes({}, tmp_path)
    assert "admin port 9090 (metrics at /metrics): from namespaces kubernetes.io/metadata.name=monitoring" in text
    assert "proxy port 8080: from anywhere" in text and "Egress is not restricted" in text
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
                   "podSelector": {"matchLabels": {"app": "prometheus"}}}]
    policy = one(render({"networkPolicy": {"ingress": {"admin": {"from": prometheus}}}}), "NetworkPolicy")
    assert policy["metadata"]["annotations"]["tokengate.io/metrics-from"] == \
        "namespaces kubernetes.io/metadata.name=observability and pods app=prometheus"
    assert not [d for d in render({"networkPolicy": {"enabled": False}}) if d["kind"] == "NetworkPolicy"]
    assert "networkPolicy.enabled is false" in notes({"networkPolicy": {"enabled": False}}, tmp_path / "off")


def test_notes_with_an_existing_config_map_show_its_key(tmp_path: Path) -> None:
    text = notes({"config": {"existingConfigMap": "own", "existingConfigMapKey": "config.yaml"},
                  "helmTest": {"path": "/orders"}}, tmp_path)
    assert "get configmap own -o jsonpath='{.data.config\\.yaml}'" in text
    assert "must be 0.0.0.0:8080, 0.0.0.0:9090" in text and "WARNING" not in text


# --- the values schema ----------------------------------------------------------------------------


def test_unknown_top_level_keys_pass_without_a_warning_and_modelled_sections_stay_closed() -> None:
    values = {"someOtherTool": {"enabled": True}, "nosuchkey": 1}
    lint = helm(["lint", "--strict"], values)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "[WARNING]" not in lint.stdout and "[INFO]" not in lint.stdout
    render(values)
    assert "service: Additional property tpye is not allowed" in refused({"service": {"tpye": "LoadBalancer"}})
    assert "gateway: Additional property nosuchkey is not allowed" in refused({"gateway": {"nosuchkey": 1}})


def test_new_gateway_keys_render_into_the_config() -> None:
    gateway = {
        "claim_headers": {"X-Tenant": "tenant"},
        "rate_limiting": {"default_limits": [{"key": "client", "rate": "100/s"}]},
        "tracing": {"enabled": False, "service_name": "tokengate"},
        "routes": [{"name": "events", "path_glob": "/orders/*/events", "upstream": "orders", "websocket": True,
                    "token_source": {"cookie": "at"}, "rate_limits": [{"key": "subject", "rate": "10/s"}]}],
    }
    docs = render(merged(ROUTED, {"gateway": gateway}))
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["gateway.yaml"])
    for key in ("claim_headers", "rate_limiting", "tracing", "routes"):
        assert config[key] == gateway[key]
    # the helm test pod asks a concrete path of a glob route (a regex route offers none)
    assert one(docs, "Pod")["spec"]["containers"][0]["args"][2] == "http://gw-tokengate:80/orders/x/events"
    regex_route = {"name": "r", "path_regex": "^/v[0-9]+/.*$", "upstream": "orders"}
    regex_only = merged(ROUTED, {"gateway": {"routes": [regex_route]}})
    assert one(render(regex_only), "Pod")["spec"]["containers"][0]["args"][2] == "http://gw-tokengate:80/"
    assert "Must validate one and only one" in refused(merged(ROUTED, {"gateway": {"routes": [
        {"name": "x", "path": "/x", "path_glob": "/x/*", "upstream": "orders"}]}}))


# --- the README's values table and the schema against the models ---------------------------------


def values_doc(chart: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "chart_values_doc.py"), "--chart", str(chart), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_chart_readme_values_table_is_current() -> None:
    out = values_doc(CHART, "--check")
    assert out.returncode == 0, out.stderr
    readme = (CHART / "README.md").read_text()
    for key in ("image.registry", "global.imageRegistry", "namespaceOverride", "envFrom", "extraInitContainers",
                "extraObjects", "hostAliases", "ingress.extraPaths", "httpRoute.parentRefs", "serviceMonitor.tlsConfig",
                "service.internalTrafficPolicy", "config.existingConfigMap", "livenessProbe",
                "topologySpreadConstraints", "networkPolicy.ingress.admin.from"):
        assert f"| `{key}` |" in readme, key


def test_the_values_table_generator_notices_a_stale_table_and_undocumented_keys(tmp_path: Path) -> None:
    chart = tmp_path / "tokengate"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("# -- Pod priority class.", "# -- The pod's PriorityClass."))
    out = values_doc(chart, "--check")
    assert out.returncode == 1 and "out of date" in out.stderr
    assert values_doc(chart).returncode == 0  # writes it
    assert "| `priorityClassName` | string | `\"\"` | The pod's PriorityClass. |" in (chart / "README.md").read_text()
    assert values_doc(chart, "--check").returncode == 0
    values.write_text(values.read_text() + "\nundocumented: 1\n")
    out = values_doc(chart, "--check")
    assert out.returncode == 1 and "top-level key 'undocumented' has no '# --' description" in out.stderr


def test_values_schema_matches_the_gateway_config_models() -> None:
    validate = importlib.import_module("ci.manifests")
    schema = json.loads((CHART / "values.schema.json").read_text())
    rep = validate.Report()
    validate.check_schema_against_models(rep, str(CHART / "values.schema.json"))
    assert rep.failed == 0 and rep.passed >= 20
    # and it notices drift: a key the gateway gained, one it lost, a changed enum, a section left open
    from gateway import config as models

    tampered = copy.deepcopy(schema)
    route = tampered["definitions"]["route"]["properties"]
    del route["websocket"]
    route["retired_key"] = {"type": "boolean"}
    tampered["definitions"]["issuer"]["properties"]["sender_constraint"]["enum"].remove("mtls")
    tampered["properties"]["gateway"]["properties"]["tracing"].pop("additionalProperties")
    walk = validate.ModelWalk(tampered)
    walk.model(models.GatewayConfig, tampered["properties"]["gateway"], "gateway")
    problems = {where: "; ".join(p) for where, _, p in walk.results if p}
    assert set(problems) == {"gateway.routes[]", "gateway.issuers[]", "gateway.tracing"}
    assert "schema lacks ['websocket']" in problems["gateway.routes[]"]
    assert "keys the gateway refuses: ['retired_key']" in problems["gateway.routes[]"]
    assert "sender_constraint: the schema allows ['any', 'dpop', 'none', 'optional']" in problems["gateway.issuers[]"]
    assert "not closed" in problems["gateway.tracing"]
