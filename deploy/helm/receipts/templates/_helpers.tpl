{{/* Names, labels and the checks every template relies on. */}}

{{- define "receipts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "receipts.fullname" -}}
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

{{- define "receipts.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "receipts.selectorLabels" -}}
app.kubernetes.io/name: {{ include "receipts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "receipts.labels" -}}
helm.sh/chart: {{ include "receipts.chart" . }}
{{ include "receipts.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: receipts
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "receipts.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "receipts.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "receipts.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* "true" when the embedded store is chosen (one process, a local data directory). */}}
{{- define "receipts.embedded" -}}
{{- if eq (toString (.Values.config.store | default "embedded")) "embedded" }}true{{ end }}
{{- end }}

{{/* The Secret that envFrom loads, if any. */}}
{{- define "receipts.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if or .Values.secrets.jwtSecret .Values.secrets.redisPassword .Values.secrets.scyllaPassword }}
{{- printf "%s-secrets" (include "receipts.fullname" .) }}
{{- end }}
{{- end }}

{{/* ceil(shutdownGraceMs / 1000): the drain in whole seconds. */}}
{{- define "receipts.shutdownGraceSeconds" -}}
{{- div (add (int64 .Values.shutdownGraceMs) 999) 1000 }}
{{- end }}

{{- define "receipts.terminationGracePeriodSeconds" -}}
{{- add (int64 .Values.preStopSleepSeconds) (include "receipts.shutdownGraceSeconds" . | int64) (int64 .Values.terminationMarginSeconds) }}
{{- end }}

{{/* A config value as an environment value: lists joined by commas, integers without an exponent. */}}
{{- define "receipts.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- join "," $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
{{- int64 $v }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
Everything that cannot work, refused at render time (helm template / install / upgrade fail
with the reason), before anything reaches the cluster.
*/}}
{{- define "receipts.validate" -}}
{{- $managed := dict "listen" "the chart listens on 0.0.0.0:<service.port>" "metrics-listen" "set metrics.enabled / metrics.port" "shutdown-grace-ms" "set shutdownGraceMs (terminationGracePeriodSeconds follows it)" "data-dir" "the embedded store's data directory is /data (see persistence)" "tls-cert" "set tls.enabled and tls.secretName" "tls-key" "set tls.enabled and tls.secretName" "tls-client-ca" "set tls.clientCA" "jwt-public-key-file" "set jwtPublicKey.secretName" "jwt-secret" "secrets go in secrets.jwtSecret or secrets.existingSecret" "redis-password" "secrets go in secrets.redisPassword or secrets.existingSecret" "scylla-password" "secrets go in secrets.scyllaPassword or secrets.existingSecret" "dev-mode" "dev mode trusts a plain header and only listens on loopback; it has no place in a cluster" "config" "the chart configures receiptd through the environment" }}
{{- range $key, $why := $managed }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart: %s" $key $why) }}
{{- end }}
{{- end }}
{{- if include "receipts.embedded" . }}
{{- if gt (int64 .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %v, but config.store is embedded: the embedded store is one process with a local data directory, so it runs exactly one replica. Use config.store: redis-scylla to run several nodes." .Values.replicaCount) }}
{{- end }}
{{- else if ne (toString .Values.config.store) "redis-scylla" }}
{{- fail (printf "config.store must be embedded or redis-scylla, not %v" .Values.config.store) }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a Secret of type kubernetes.io/tls (tls.crt, tls.key)" }}
{{- end }}
{{- if and .Values.tls.clientCA.enabled (not .Values.tls.enabled) }}
{{- fail "tls.clientCA.enabled needs tls.enabled: client certificates are checked during the TLS handshake" }}
{{- end }}
{{- if and .Values.secrets.jwtSecret (lt (len .Values.secrets.jwtSecret) 16) }}
{{- fail "secrets.jwtSecret must be at least 16 bytes" }}
{{- end }}
{{- if not (or .Values.secrets.existingSecret .Values.secrets.jwtSecret .Values.jwtPublicKey.secretName) }}
{{- fail "receiptd verifies bearer tokens: set secrets.jwtSecret, secrets.existingSecret (with RECEIPTS_JWT_SECRET) or jwtPublicKey.secretName" }}
{{- end }}
{{- if and .Values.secrets.existingSecret (or .Values.secrets.jwtSecret .Values.secrets.redisPassword .Values.secrets.scyllaPassword) }}
{{- fail "set either secrets.existingSecret or the chart-created secrets.jwtSecret / redisPassword / scyllaPassword, not both" }}
{{- end }}
{{- if lt (int64 .Values.shutdownGraceMs) 0 }}
{{- fail "shutdownGraceMs must not be negative" }}
{{- end }}
{{- end }}

{{/*
The probe action: the kubelet's grpc probe without TLS, `receiptd health` with TLS.
Takes (dict "Values" .Values "timeoutMs" N): the command gives up before the kubelet does.
*/}}
{{- define "receipts.healthProbeAction" -}}
{{- if .Values.tls.enabled -}}
exec:
  # Reads the container's RECEIPTS_* settings: asks 127.0.0.1:<port> over TLS, trusting exactly
  # the certificate in RECEIPTS_TLS_CERT.
  command:
    - /usr/local/bin/receiptd
    - health
    - --service={{ .Values.probes.service }}
    - --timeout-ms={{ .timeoutMs }}
    {{- if .Values.tls.clientCA.enabled }}
    - --client-cert=/etc/receipts/probe-client/tls.crt
    - --client-key=/etc/receipts/probe-client/tls.key
    {{- end }}
{{- else -}}
grpc:
  port: {{ .Values.service.port }}
  service: {{ .Values.probes.service | quote }}
{{- end }}
{{- end }}
