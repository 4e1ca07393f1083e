{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "tokengate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, plus the chart name unless the release name already contains it. */}}
{{- define "tokengate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The namespace of every object: namespaceOverride, else the release's. */}}
{{- define "tokengate.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokengate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokengate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokengate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokengate.labels" -}}
helm.sh/chart: {{ include "tokengate.chart" . }}
{{ include "tokengate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: tokengate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tokengate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokengate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image: [registry/]repository, then @digest or :tag. global.imageRegistry wins over
image.registry (the convention of the common charts, for mirrors and air-gapped installs).
*/}}
{{- define "tokengate.image" -}}
{{- $registry := (.Values.global | default dict).imageRegistry | default .Values.image.registry | trimSuffix "/" }}
{{- $repository := .Values.image.repository }}
{{- if $registry }}{{ $repository = printf "%s/%s" $registry $repository }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding gateway.yaml: the chart's own, or config.existingConfigMap (templated). */}}
{{- define "tokengate.configMapName" -}}
{{- if .Values.config.existingConfigMap }}
{{- tpl .Values.config.existingConfigMap . }}
{{- else }}
{{- include "tokengate.fullname" . }}
{{- end }}
{{- end }}

{{/*
A NetworkPolicy peer list in words, for the rendered policy's annotations and NOTES.txt:
"anywhere" for an empty list.
*/}}
{{- define "tokengate.peersInWords" -}}
{{- $out := list }}
{{- range . }}
{{- $parts := list }}
{{- with .namespaceSelector }}
{{- $sel := list }}
{{- range $k, $v := (.matchLabels | default dict) }}{{ $sel = append $sel (printf "%s=%s" $k $v) }}{{ end }}
{{- $parts = append $parts (ternary "every namespace" (printf "namespaces %s" (join "," $sel)) (empty $sel)) }}
{{- end }}
{{- with .podSelector }}
{{- $sel := list }}
{{- range $k, $v := (.matchLabels | default dict) }}{{ $sel = append $sel (printf "%s=%s" $k $v) }}{{ end }}
{{- $parts = append $parts (ternary "every pod" (printf "pods %s" (join "," $sel)) (empty $sel)) }}
{{- end }}
{{- with .ipBlock }}
{{- $parts = append $parts (printf "addresses %s" .cidr) }}
{{- end }}
{{- $out = append $out (join " and " $parts) }}
{{- end }}
{{- ternary "anywhere" (join "; " $out) (empty $out) }}
{{- end }}

{{/*
A gateway duration ("250ms", "1.5s", "20s", "5m", "1h", "2d", or a number of
seconds) in whole seconds, rounded up. The schema lets only these forms through.
*/}}
{{- define "tokengate.durationSeconds" -}}
{{- $d := toString . | trim }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $d }}
{{- $unit := trimPrefix $num $d }}
{{- $mult := dict "" 1.0 "s" 1.0 "ms" 0.001 "m" 60.0 "h" 3600.0 "d" 86400.0 }}
{{- if or (not $num) (not (hasKey $mult $unit)) }}
{{- fail (printf "not a duration: %q (use e.g. 500ms, 20s, 5m, 1h)" $d) }}
{{- end }}
{{- mulf (float64 $num) (get $mult $unit) | ceil | int64 }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep plus the gateway's drain
(shutdown_grace) must fit inside it, or the kubelet kills in-flight requests.
*/}}
{{- define "tokengate.terminationGracePeriodSeconds" -}}
{{- $grace := include "tokengate.durationSeconds" .Values.gateway.shutdown_grace | int64 }}
{{- $needed := add $grace (.Values.preStopSleepSeconds | int64) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else if le (.Values.terminationGracePeriodSeconds | int64) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds + gateway.shutdown_grace (%d)" (.Values.terminationGracePeriodSeconds | int64) $needed) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int64 }}
{{- end }}
{{- end }}

{{/* Where the audit file's directory is mounted, or "" when it needs no volume of its own. */}}
{{- define "tokengate.auditDir" -}}
{{- $a := .Values.gateway.audit }}
{{- if and (eq $a.sink "file") $a.path }}
{{- $dir := dir $a.path }}
{{- if not (or (eq $dir "/tmp") (hasPrefix "/tmp/" $dir)) }}{{ $dir }}{{ end }}
{{- end }}
{{- end }}

{{/* True ("true") when the revocation list lives in Redis: a URL or Sentinel. */}}
{{- define "tokengate.redisInUse" -}}
{{- if or .Values.redis.enabled ((.Values.gateway.revocation | default dict).sentinel) }}true{{ end }}
{{- end }}

{{/*
The gateway's config file. The listen addresses come first, then the sections in
the order of the gateway's documentation, then any other key, each passed through
toYaml as written in values. With no routes and no upstreams, a placeholder that
trusts no real issuer keeps the config valid: pods start, never become ready, and
forward nothing.
*/}}
{{- define "tokengate.config" -}}
{{- $g := deepCopy .Values.gateway -}}
{{- if and (not $g.routes) (not $g.upstreams) }}
{{- if not $g.issuers }}
{{- $_ := set $g "issuers" (list (dict "issuer" "https://unconfigured.invalid" "audiences" (list "unconfigured"))) }}
{{- end }}
{{- $_ := set $g "upstreams" (dict "unconfigured" (dict "url" "http://unconfigured.invalid")) }}
{{- $_ := set $g "routes" (list (dict "name" "unconfigured" "path_prefix" "/" "upstream" "unconfigured")) }}
{{- end }}
{{- $rev := deepCopy ($g.revocation | default dict) }}
{{- if .Values.redis.enabled }}
{{- $_ := set $rev "redis_url" "${REDIS_URL}" }}
{{- end }}
{{- $_ := set $g "revocation" $rev -}}
listen: {{ printf "%s:%d" .Values.listenHost (.Values.ports.http | int) | quote }}
admin_listen: {{ printf "%s:%d" .Values.listenHost (.Values.ports.admin | int) | quote }}
{{- if .Values.decision.enabled }}
decision_listen: {{ printf "%s:%d" .Values.listenHost (.Values.ports.decision | int) | quote }}
{{- end }}
{{- $order := list "workers" "shutdown_grace" "trusted_proxies" "max_body_size" "log_level" "issuers" "upstreams" "routes" "audit" "revocation" }}
{{- range $order }}
{{- if hasKey $g . }}
{{ dict . (get $g .) | toYaml }}
{{- end }}
{{- end }}
{{- $rest := dict }}
{{- range $k, $v := $g }}
{{- if not (has $k $order) }}{{ $_ := set $rest $k $v }}{{ end }}
{{- end }}
{{- with $rest }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* PromQL label matchers for this release's series. */}}
{{- define "tokengate.promSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=%q, job=%q" (include "tokengate.namespace" .) (include "tokengate.adminServiceName" .) }}
{{- end }}
{{- end }}

{{/* The Service that carries the admin port (and the decision port). */}}
{{- define "tokengate.adminServiceName" -}}
{{- if eq .Values.service.type "ClusterIP" }}
{{- include "tokengate.fullname" . }}
{{- else }}
{{- printf "%s-internal" (include "tokengate.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tokengate.internalServicePorts" -}}
- name: admin
  port: {{ .Values.service.adminPort }}
  targetPort: admin
  protocol: TCP
  appProtocol: http
{{- if .Values.decision.enabled }}
- name: decision
  port: {{ .Values.service.decisionPort }}
  targetPort: decision
  protocol: TCP
  appProtocol: http
{{- end }}
{{- end }}

{{/* One NetworkPolicy egress rule from {to, ports}: an empty list means "any". */}}
{{- define "tokengate.egressRule" -}}
{{- $r := dict }}
{{- with .rule.to }}{{ $_ := set $r "to" . }}{{ end }}
{{- with .rule.ports }}{{ $_ := set $r "ports" . }}{{ end -}}
# {{ .comment }}
{{ list $r | toYaml }}
{{- end }}

{{/*
topologySpreadConstraints as written in values, each completed with what the chart knows:
a labelSelector for this release's pods and matchLabelKeys [pod-template-hash] (so a rollout's
new pods are spread among themselves), unless the constraint sets them.
*/}}
{{- define "tokengate.topologySpreadConstraints" -}}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "tokengate.selectorLabels" $.root | fromYaml)) }}
{{- end }}
{{- if not (hasKey $c "matchLabelKeys") }}
{{- $_ := set $c "matchLabelKeys" (list "pod-template-hash") }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Values this chart used to read. The schema lets unknown top-level keys through, so an old
values file would otherwise lose its settings without a word: refuse it, naming the new key.
*/}}
{{- define "tokengate.removedValues" -}}
{{- $removed := dict
    "probes" "startupProbe, readinessProbe and livenessProbe (raw Kubernetes probes; see values.yaml)"
    "topologySpread" "topologySpreadConstraints (raw Kubernetes constraints; the label selector is filled in)" }}
{{- range $old, $new := $removed }}
{{- if hasKey $.Values $old }}
{{- fail (printf "values: %s was replaced by %s" $old $new) }}
{{- end }}
{{- end }}
{{- if and .Values.config.existingConfigMap .Values.helmTest.enabled (not .Values.helmTest.path) }}
{{- fail "config.existingConfigMap: the chart cannot see your routes; set helmTest.path to a route that needs a token (or helmTest.enabled=false)" }}
{{- end }}
{{- end }}
