#!/usr/bin/env bash
# Opt-in (not part of .ci/run): build ./Dockerfile without a Docker daemon (buildah, chroot
# isolation) and run the image once: `gateway serve` must answer /healthz on its admin port.
# Docker Hub is unreachable on these machines, so FROM python:3.11-slim is satisfied by a local
# STAND-IN (Debian bookworm + its python3 3.11) tagged with that name: this proves the Dockerfile
# builds and runs, not that it does so on the real python:3.11-slim. See ../shared/k8s-checks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${IMAGE_WORK_DIR:-$HOME/.cache/image-ci}; mkdir -p "$W"
export DEBIAN_FRONTEND=noninteractive
command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || {
  apt-get update -qq; apt-get install -y -qq --no-install-recommends buildah mmdebstrap >/dev/null; }
B=(buildah --root "$W/root" --runroot "$W/run" --storage-driver overlay)

if ! "${B[@]}" inspect --type image docker.io/library/python:3.11-slim >/dev/null 2>&1; then
  mmdebstrap --quiet --variant=minbase --format=tar \
    --include=ca-certificates,netbase,tzdata,python3,python3-pip,python3-venv,python-is-python3 \
    bookworm "$W/rootfs.tar" "$(grep -hoE '^URIs: +[^ ]+/debian$' /etc/apt/sources.list.d/*.sources | head -1 | awk '{print $2}')"
  c=$("${B[@]}" from scratch)
  "${B[@]}" add "$c" "$W/rootfs.tar" /
  "${B[@]}" copy "$c" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
  "${B[@]}" run --isolation chroot "$c" -- sh -c 'rm -f /usr/lib/python3*/EXTERNALLY-MANAGED'
  "${B[@]}" config --env LANG=C.UTF-8 --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --cmd python3 "$c"
  "${B[@]}" commit -q "$c" docker.io/library/python:3.11-slim >/dev/null
  "${B[@]}" rm "$c" >/dev/null
fi
"${B[@]}" bud --isolation chroot --network host --pull-never --format docker -t localhost/tokengate:ci -f Dockerfile .

# smoke: the image's own entrypoint and command, a config mounted where the chart mounts it
cfg=$(mktemp -d)
cat > "$cfg/gateway.yaml" <<'YAML'
listen: 127.0.0.1:18080
admin_listen: 127.0.0.1:19090
issuers: [{issuer: "http://127.0.0.1:9", audiences: [https://api.example]}]
upstreams: {svc: {url: "http://127.0.0.1:9"}}
routes: [{name: r, path: /r, upstream: svc, scopes: [s]}]
audit: {sink: stdout}
YAML
c=$("${B[@]}" from localhost/tokengate:ci)
timeout 60 "${B[@]}" run --isolation chroot --network host --user 10001:10001 \
  --volume "$cfg/gateway.yaml:/etc/gateway/gateway.yaml:ro" "$c" -- gateway serve --config /etc/gateway/gateway.yaml &
pid=$!
ok=0; for _ in $(seq 1 60); do curl -fsS http://127.0.0.1:19090/healthz && { ok=1; break; }; sleep 0.5; done
denied=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/r || true)
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
"${B[@]}" rm "$c" >/dev/null; rm -rf "$cfg"
[ "$ok" = 1 ] && [ "$denied" = 401 ] || { echo "image smoke test FAILED (healthz ok=$ok, /r -> $denied)"; exit 1; }
echo; echo "image smoke test ok: /healthz 200, /r without a token 401"
