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

{{- define "tokengate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
A gateway duration ("500ms", "20s", "5m", "1h") in whole seconds, rounded up.
The schema only lets such single-unit durations through.
*/}}
{{- define "tokengate.durationSeconds" -}}
{{- $d := toString . }}
{{- $n := regexFind "^[0-9]+" $d | int64 }}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $d) $d }}
{{- if eq $unit "ms" }}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "s" }}{{ $n }}
{{- else if eq $unit "m" }}{{ mul $n 60 }}
{{- else if eq $unit "h" }}{{ mul $n 3600 }}
{{- else }}{{ fail (printf "not a duration: %q (use e.g. 500ms, 20s, 5m, 1h)" $d) }}
{{- end }}
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

{{/*
The gateway's config file. Keys follow the order of the gateway's documentation;
each section is passed through toYaml as written in values.
*/}}
{{- define "tokengate.config" -}}
{{- $g := .Values.gateway -}}
listen: {{ printf "%s:%d" .Values.listenHost (.Values.ports.http | int) | quote }}
admin_listen: {{ printf "%s:%d" .Values.listenHost (.Values.ports.admin | int) | quote }}
{{- if .Values.decision.enabled }}
decision_listen: {{ printf "%s:%d" .Values.listenHost (.Values.ports.decision | int) | quote }}
{{- end }}
workers: {{ $g.workers | int }}
shutdown_grace: {{ $g.shutdown_grace | quote }}
{{ dict "trusted_proxies" ($g.trusted_proxies | default list) | toYaml }}
max_body_size: {{ $g.max_body_size | int64 }}
{{ dict "issuers" ($g.issuers | default list) | toYaml }}
{{ dict "upstreams" ($g.upstreams | default dict) | toYaml }}
{{ dict "routes" ($g.routes | default list) | toYaml }}
{{ dict "audit" $g.audit | toYaml }}
{{- $rev := deepCopy ($g.revocation | default dict) }}
{{- if .Values.redis.enabled }}
{{- $_ := set $rev "redis_url" "${REDIS_URL}" }}
{{- end }}
{{ dict "revocation" $rev | toYaml }}
{{- end }}

{{/* PromQL label matchers for this release's series. */}}
{{- define "tokengate.promSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "tokengate.adminServiceName" .) }}
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
