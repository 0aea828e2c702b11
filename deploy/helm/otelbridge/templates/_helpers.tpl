{{/* Names, labels and the settings derived from values. */}}

{{- define "otelbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otelbridge.fullname" -}}
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

{{- define "otelbridge.adminServiceName" -}}
{{- printf "%s-admin" (include "otelbridge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otelbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otelbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "otelbridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "otelbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "otelbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otelbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "otelbridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret named for the webhook secret: the one given, else "<fullname>-webhook". */}}
{{- define "otelbridge.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "otelbridge.fullname" .)) .Values.webhook.secret.existingSecret }}
{{- end }}

{{/* Where the image keeps its state (Dockerfile: WORKDIR, VOLUME) and where secrets are mounted. */}}
{{- define "otelbridge.stateDir" -}}/var/lib/otelbridge{{- end }}
{{- define "otelbridge.webhookSecretDir" -}}/etc/otelbridge/webhook{{- end }}
{{- define "otelbridge.cartesiaKeyDir" -}}/etc/otelbridge/cartesia{{- end }}
{{- define "otelbridge.otlpTlsDir" -}}/etc/otelbridge/otlp-tls{{- end }}

{{/*
terminationGracePeriodSeconds: the value given, else shutdownTimeout + 20. The drain needs the
shutdown timeout for the flush plus time to process stored events and exit; a value that leaves
less than 5 s of that margin would have Kubernetes SIGKILL the daemon mid-flush.
*/}}
{{- define "otelbridge.terminationGracePeriodSeconds" -}}
{{- $drain := .Values.shutdownTimeout | float64 | ceil | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain 20 }}
{{- else }}
{{- $grace := .Values.terminationGracePeriodSeconds | int }}
{{- if lt $grace (add $drain 5 | int) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least shutdownTimeout + 5 (%d): Kubernetes would kill otelbridge before its drain ends. Raise it or leave it empty (shutdownTimeout + 20)." $grace (add $drain 5 | int)) }}
{{- end }}
{{- $grace }}
{{- end }}
{{- end }}

{{/*
Variables that hold secrets: extraEnv may set them only through valueFrom (a Secret), never as
a plain value that would sit in the StatefulSet's spec for anyone who can read it.
*/}}
{{- define "otelbridge.checkExtraEnv" -}}
{{- $secretNames := list "OTELBRIDGE_WEBHOOK_SECRET" "OTELBRIDGE_CARTESIA_API_KEY" "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS" "OTEL_EXPORTER_OTLP_METRICS_HEADERS" }}
{{- range .Values.extraEnv }}
{{- if and (has .name $secretNames) (hasKey . "value") }}
{{- fail (printf "extraEnv %s holds a secret: give it as valueFrom.secretKeyRef (a Secret you create), never as a plain value" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A value as an environment variable's text. Values arrive as JSON numbers (float64): whole
numbers are printed as integers, since "%v" would turn 1073741824 into 1.073741824e+09, which
the daemon's integer settings refuse.
*/}}
{{- define "otelbridge.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- . | int64 }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The ConfigMap's data: every non-secret setting, OTELBRIDGE_* and OTEL_*. */}}
{{- /* Without persistence the state lives in a subdirectory that otelbridge creates 0700: an
emptyDir's root is world-writable (0777), which otelbridge refuses for its state. */}}
{{- define "otelbridge.configData" -}}
{{- $env := dict
  "OTELBRIDGE_LISTEN_HOST" "0.0.0.0"
  "OTELBRIDGE_LISTEN_PORT" (include "otelbridge.envValue" .Values.webhook.port)
  "OTELBRIDGE_ADMIN_HOST" "0.0.0.0"
  "OTELBRIDGE_ADMIN_PORT" (include "otelbridge.envValue" .Values.admin.port)
  "OTELBRIDGE_STATE_DIR" (ternary (include "otelbridge.stateDir" .) (printf "%s/state" (include "otelbridge.stateDir" .)) .Values.persistence.enabled)
  "OTELBRIDGE_SHUTDOWN_TIMEOUT" (include "otelbridge.envValue" .Values.shutdownTimeout)
}}
{{- if .Values.webhook.allowUnauthenticated }}
{{- $_ := set $env "OTELBRIDGE_ALLOW_UNAUTHENTICATED" "true" }}
{{- else }}
{{- /* A path, not the secret: the file is the mounted Secret key. */}}
{{- $_ := set $env "OTELBRIDGE_WEBHOOK_SECRET_FILE" (printf "%s/secret" (include "otelbridge.webhookSecretDir" .)) }}
{{- end }}
{{- if .Values.cartesia.apiKey.existingSecret }}
{{- $_ := set $env "OTELBRIDGE_CARTESIA_API_KEY_FILE" (printf "%s/api-key" (include "otelbridge.cartesiaKeyDir" .)) }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- $_ := set $env (printf "OTELBRIDGE_%s" ($key | snakecase | upper)) (include "otelbridge.envValue" $value) }}
{{- end }}
{{- $otlp := .Values.otlp }}
{{- $names := dict
  "endpoint" "OTEL_EXPORTER_OTLP_ENDPOINT"
  "tracesEndpoint" "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
  "metricsEndpoint" "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
  "protocol" "OTEL_EXPORTER_OTLP_PROTOCOL"
  "compression" "OTEL_EXPORTER_OTLP_COMPRESSION"
  "timeout" "OTEL_EXPORTER_OTLP_TIMEOUT"
  "insecure" "OTEL_EXPORTER_OTLP_INSECURE"
  "metricsExporter" "OTEL_METRICS_EXPORTER"
  "metricExportInterval" "OTEL_METRIC_EXPORT_INTERVAL"
  "metricsTemporalityPreference" "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
  "serviceName" "OTEL_SERVICE_NAME"
  "resourceAttributes" "OTEL_RESOURCE_ATTRIBUTES"
}}
{{- range $key, $name := $names }}
{{- $value := get $otlp $key }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{- $_ := set $env $name (include "otelbridge.envValue" $value) }}
{{- end }}
{{- end }}
{{- with .Values.otlp.tls }}
{{- if .existingSecret }}
{{- $dir := include "otelbridge.otlpTlsDir" $ }}
{{- if .caKey }}{{ $_ := set $env "OTEL_EXPORTER_OTLP_CERTIFICATE" (printf "%s/%s" $dir .caKey) }}{{ end }}
{{- if .certKey }}{{ $_ := set $env "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" (printf "%s/%s" $dir .certKey) }}{{ end }}
{{- if .keyKey }}{{ $_ := set $env "OTEL_EXPORTER_OTLP_CLIENT_KEY" (printf "%s/%s" $dir .keyKey) }}{{ end }}
{{- end }}
{{- end }}
{{- range $name, $value := $env }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end }}
