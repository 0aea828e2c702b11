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
{{- define "otelbridge.databaseDir" -}}/etc/otelbridge/database{{- end }}

{{/*
"true" when the state is in PostgreSQL (database.existingSecret names the Secret holding its
URI), else empty: the mode that decides the workload (Deployment or StatefulSet), the default
of replicas, the PodDisruptionBudget and the state volume.
*/}}
{{- define "otelbridge.database" -}}
{{- if .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/*
"true" when the state directory is a PersistentVolumeClaim of the StatefulSet: SQLite with
persistence.enabled. With a database the directory holds no data (an emptyDir), whatever
persistence says.
*/}}
{{- define "otelbridge.stateClaim" -}}
{{- if and .Values.persistence.enabled (not (include "otelbridge.database" .)) }}true{{ end }}
{{- end }}

{{/*
The number of replicas: the value given, else 2 with a database and 1 without. The schema
refuses more than one without a database; this repeats it for a render that skips the schema
(--skip-schema-validation): SQLite replicas would each export what they receive, twice.
*/}}
{{- define "otelbridge.replicas" -}}
{{- $database := include "otelbridge.database" . }}
{{- if kindIs "invalid" .Values.replicas }}
{{- ternary 2 1 (eq $database "true") }}
{{- else }}
{{- $replicas := .Values.replicas | int }}
{{- if and (not $database) (ne $replicas 1) }}
{{- fail (printf "replicas is %d but database.existingSecret is empty: without a database the state is SQLite on the pod's volume and only 1 replica is possible. Set database.existingSecret (a Secret holding a PostgreSQL URI) to run several, or leave replicas empty." $replicas) }}
{{- end }}
{{- $replicas }}
{{- end }}
{{- end }}

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
a plain value that would sit in the workload's spec for anyone who can read it.
*/}}
{{- define "otelbridge.checkExtraEnv" -}}
{{- $secretNames := list "OTELBRIDGE_WEBHOOK_SECRET" "OTELBRIDGE_CARTESIA_API_KEY" "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS" "OTEL_EXPORTER_OTLP_METRICS_HEADERS" }}
{{- range .Values.extraEnv }}
{{- if has .name (list "OTELBRIDGE_DATABASE_URL" "OTELBRIDGE_DATABASE_URL_FILE") }}
{{- fail (printf "extraEnv %s: the database is chosen by database.existingSecret (and database.secretKey), which also makes the workload a Deployment of several replicas; set those instead" .name) }}
{{- end }}
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
{{- /* Without a claim (persistence off, or a database) the state directory is a subdirectory that
otelbridge creates 0700: an emptyDir's root is world-writable (0777), which otelbridge refuses for its state. */}}
{{- define "otelbridge.configData" -}}
{{- $env := dict
  "OTELBRIDGE_LISTEN_HOST" "0.0.0.0"
  "OTELBRIDGE_LISTEN_PORT" (include "otelbridge.envValue" .Values.webhook.port)
  "OTELBRIDGE_ADMIN_HOST" "0.0.0.0"
  "OTELBRIDGE_ADMIN_PORT" (include "otelbridge.envValue" .Values.admin.port)
  "OTELBRIDGE_STATE_DIR" (ternary (include "otelbridge.stateDir" .) (printf "%s/state" (include "otelbridge.stateDir" .)) (eq (include "otelbridge.stateClaim" .) "true"))
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
{{- if include "otelbridge.database" . }}
{{- /* The path of the mounted key; the URI itself holds the password and stays in the Secret. */}}
{{- $_ := set $env "OTELBRIDGE_DATABASE_URL_FILE" (printf "%s/uri" (include "otelbridge.databaseDir" .)) }}
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

{{/*
The pod, one definition for both workloads: the StatefulSet (SQLite, one replica) and the
Deployment (PostgreSQL, several). They differ only where the mode must: the state directory is
the StatefulSet's claim or an emptyDir, the database URI is mounted with a database, and
replicas sharing one are spread across nodes.
*/}}
{{- define "otelbridge.podTemplate" -}}
metadata:
  labels:
    {{- include "otelbridge.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A settings change rolls the pod (environment from a ConfigMap is read at start only).
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "otelbridge.serviceAccountName" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Above OTELBRIDGE_SHUTDOWN_TIMEOUT, so SIGKILL never cuts the drain short.
  terminationGracePeriodSeconds: {{ include "otelbridge.terminationGracePeriodSeconds" . }}
  # The image's user (Dockerfile: USER 10001:10001); fsGroup makes the state volume and
  # the secret files readable and writable by it.
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    fsGroupChangePolicy: OnRootMismatch
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: otelbridge
      image: {{ include "otelbridge.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve"]
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        privileged: false
        capabilities:
          drop: ["ALL"]
        seccompProfile:
          type: RuntimeDefault
      ports:
        - name: webhook
          containerPort: {{ .Values.webhook.port }}
          protocol: TCP
        - name: admin
          containerPort: {{ .Values.admin.port }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "otelbridge.fullname" . }}
      {{- $headers := list (list "OTEL_EXPORTER_OTLP_HEADERS" .Values.otlp.headers) (list "OTEL_EXPORTER_OTLP_TRACES_HEADERS" .Values.otlp.tracesHeaders) (list "OTEL_EXPORTER_OTLP_METRICS_HEADERS" .Values.otlp.metricsHeaders) }}
      {{- $secretEnv := list }}
      {{- range $headers }}
      {{- if (index . 1).existingSecret }}
      {{- $secretEnv = append $secretEnv . }}
      {{- end }}
      {{- end }}
      {{- if or $secretEnv .Values.extraEnv }}
      env:
        {{- range $secretEnv }}
        # OTLP headers hold API keys: straight from the Secret, never in the ConfigMap.
        - name: {{ index . 0 }}
          valueFrom:
            secretKeyRef:
              name: {{ (index . 1).existingSecret }}
              key: {{ (index . 1).key }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: state
          mountPath: {{ include "otelbridge.stateDir" . }}
        # The root filesystem is read-only: a writable /tmp for anything that wants one.
        - name: tmp
          mountPath: /tmp
        {{- if not .Values.webhook.allowUnauthenticated }}
        - name: webhook-secret
          mountPath: {{ include "otelbridge.webhookSecretDir" . }}
          readOnly: true
        {{- end }}
        {{- if .Values.cartesia.apiKey.existingSecret }}
        - name: cartesia-api-key
          mountPath: {{ include "otelbridge.cartesiaKeyDir" . }}
          readOnly: true
        {{- end }}
        {{- if include "otelbridge.database" . }}
        - name: database-url
          mountPath: {{ include "otelbridge.databaseDir" . }}
          readOnly: true
        {{- end }}
        {{- if .Values.otlp.tls.existingSecret }}
        - name: otlp-tls
          mountPath: {{ include "otelbridge.otlpTlsDir" . }}
          readOnly: true
        {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if include "otelbridge.database" . }}
  # Replicas on different nodes where the scheduler can (soft: never leaves a pod pending), so
  # that one node going down leaves another replica receiving and taking over the lease.
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "otelbridge.selectorLabels" . | nindent 10 }}
  {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if not (include "otelbridge.stateClaim" .) }}
    {{- if include "otelbridge.database" . }}
    # The state is in PostgreSQL: the state directory holds no data, only the working directory.
    {{- else }}
    # persistence.enabled=false: the state lives and dies with the pod (see values.yaml).
    {{- end }}
    - name: state
      emptyDir:
        sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
    {{- end }}
    {{- if not .Values.webhook.allowUnauthenticated }}
    # Secret files, not variables: only the one key is projected, readable by the group.
    - name: webhook-secret
      secret:
        secretName: {{ include "otelbridge.webhookSecretName" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.webhook.secret.key }}
            path: secret
    {{- end }}
    {{- if .Values.cartesia.apiKey.existingSecret }}
    - name: cartesia-api-key
      secret:
        secretName: {{ .Values.cartesia.apiKey.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.cartesia.apiKey.key }}
            path: api-key
    {{- end }}
    {{- if include "otelbridge.database" . }}
    # The PostgreSQL URI holds the database password: a file from the Secret too.
    - name: database-url
      secret:
        secretName: {{ .Values.database.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.database.secretKey }}
            path: uri
    {{- end }}
    {{- with .Values.otlp.tls }}
    {{- if .existingSecret }}
    {{- if not (or .caKey .certKey .keyKey) }}
    {{- fail "otlp.tls.existingSecret is set but none of otlp.tls.caKey, certKey, keyKey: name the keys of the Secret to mount" }}
    {{- end }}
    - name: otlp-tls
      secret:
        secretName: {{ .existingSecret }}
        defaultMode: 0440
        items:
          {{- range (list .caKey .certKey .keyKey) }}
          {{- if . }}
          - key: {{ . }}
            path: {{ . }}
          {{- end }}
          {{- end }}
    {{- end }}
    {{- end }}
{{- end }}
