{{/*
Names, labels, and the shape of the deployment: which processes run in each mode, whom each calls.
*/}}

{{- define "currencyex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, short enough for the longest suffix a resource adds
("-wallet-worker", "-migrate"...) to keep every name within 63 characters.
*/}}
{{- define "currencyex.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "currencyex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "currencyex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "currencyex.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "currencyex.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: currencyex
{{- end }}

{{/* Labels of one component's resources; call with (dict "root" $ "component" $component). */}}
{{- define "currencyex.componentLabels" -}}
{{ include "currencyex.labels" .root }}
app.kubernetes.io/component: {{ .component.name }}
{{- end }}

{{- define "currencyex.componentSelector" -}}
{{ include "currencyex.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component.name }}
{{- end }}

{{- define "currencyex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "currencyex.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "currencyex.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "currencyex.secretName" -}}
{{- default (include "currencyex.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "currencyex.jwtKeysSecretName" -}}
{{- default (printf "%s-jwt-keys" (include "currencyex.fullname" .)) .Values.jwtKeys.existingSecret }}
{{- end }}

{{/*
Whom each process of a split deployment calls over HTTP: config.CALLS in the code
(src/currencyex/config.py). tests/deploy/test_chart.py holds the rendered NetworkPolicies and
CURRENCYEX_UPSTREAMS to that table, so the two cannot drift apart.
*/}}
{{- define "currencyex.calls" -}}
{{- toJson (dict
  "gateway" (list "auth" "wallet" "rates" "remit" "docs" "ws")
  "auth" (list)
  "wallet" (list "auth" "rates")
  "rates" (list)
  "remit" (list "wallet" "rates")
  "docs" (list "auth")
  "ws" (list "auth")
) }}
{{- end }}

{{/* The services that have event consumers and periodic jobs: bootstrap.WORKERS. */}}
{{- define "currencyex.workerServices" -}}
{{- toJson (list "auth" "wallet" "docs" "remit") }}
{{- end }}

{{/* Whether consumers run inside the serving pods (see `workers` in values.yaml). */}}
{{- define "currencyex.workersInProcess" -}}
{{- if or .Values.workers.inProcess (not .Values.nats.url) }}true{{ end }}
{{- end }}

{{/*
The processes of the release, as a JSON list of components:
  name     the component label and the suffix of its Deployment, Service, HPA, PDB, policy
  service  what it runs: CURRENCYEX_SERVICE (all, gateway, or a service)
  worker   true for `currencyex worker`, false for `currencyex serve`
  public   true for the one reached from outside (the Ingress' backend)
  calls    the services it calls over HTTP (CURRENCYEX_UPSTREAMS)
  runsWorkers  whether a serving process also runs its consumers in-process
*/}}
{{- define "currencyex.components" -}}
{{- $calls := include "currencyex.calls" . | fromJson }}
{{- $workerServices := include "currencyex.workerServices" . | fromJsonArray }}
{{- $inProcess := include "currencyex.workersInProcess" . | eq "true" }}
{{- $components := list }}
{{- if eq .Values.mode "all" }}
{{- $components = append $components (dict "name" "api" "service" "all" "worker" false "public" true "calls" (list) "runsWorkers" $inProcess) }}
{{- if not $inProcess }}
{{- $components = append $components (dict "name" "worker" "service" "all" "worker" true "public" false "calls" (list) "runsWorkers" true) }}
{{- end }}
{{- else }}
{{- range $service := list "gateway" "auth" "wallet" "rates" "remit" "docs" "ws" }}
{{- $runs := and $inProcess (has $service $workerServices) }}
{{- $components = append $components (dict "name" $service "service" $service "worker" false "public" (eq $service "gateway") "calls" (get $calls $service) "runsWorkers" $runs) }}
{{- end }}
{{- if not $inProcess }}
{{- range $service := $workerServices }}
{{- $components = append $components (dict "name" (printf "%s-worker" $service) "service" $service "worker" true "public" false "calls" (get $calls $service) "runsWorkers" true) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $components }}
{{- end }}

{{/*
One component's settings: the top-level values (the seed's), then `workers` for a worker, then
its own entry of `split` or `workers.split` in mode split, each merged over the one before.
Call with (dict "root" $ "component" $component); returns JSON.
*/}}
{{- define "currencyex.settings" -}}
{{- $v := .root.Values }}
{{- $settings := deepCopy (pick $v "replicaCount" "autoscaling" "resources" "livenessProbe" "readinessProbe" "startupProbe" "podAnnotations" "nodeSelector" "tolerations" "affinity") }}
{{- $_ := set $settings "env" dict }}
{{- if .component.worker }}
{{- $settings = mergeOverwrite $settings (deepCopy (omit $v.workers "inProcess" "split")) }}
{{- if ne $v.mode "all" }}
{{- $settings = mergeOverwrite $settings (deepCopy (index $v.workers.split .component.service | default dict)) }}
{{- end }}
{{- else if ne $v.mode "all" }}
{{- $settings = mergeOverwrite $settings (deepCopy (index $v.split .component.service | default dict)) }}
{{- end }}
{{- toJson $settings }}
{{- end }}

{{/* The URL links start with: publicUrl, else the Ingress' first host. */}}
{{- define "currencyex.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- .Values.publicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- printf "%s://%s" (ternary "https" "http" (gt (len .Values.ingress.tls) 0)) $host }}
{{- end }}
{{- end }}

{{/* Refuse values that would render a deployment that cannot run, saying what to set. */}}
{{- define "currencyex.validate" -}}
{{- if and (eq .Values.mode "split") (not .Values.nats.url) }}
{{- fail "mode split needs NATS: events cross processes only through it. Set nats.url (nats://host:4222)." }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- if not .Values.database.url }}
{{- fail "set database.url (postgresql://user:password@host:5432/db) or secrets.existingSecret" }}
{{- end }}
{{- if not .Values.redis.url }}
{{- fail "set redis.url (redis://host:6379/0): every pod shares quotes, caches and rate limits through it" }}
{{- end }}
{{- with .Values.secrets.internalKey }}
{{- if lt (len .) 32 }}
{{- fail "secrets.internalKey must be at least 32 characters (or empty: one is generated)" }}
{{- end }}
{{- end }}
{{- with .Values.secrets.storageSigningKey }}
{{- if lt (len .) 32 }}
{{- fail "secrets.storageSigningKey must be at least 32 characters" }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one entry in ingress.hosts" }}
{{- end }}
{{- end }}

{{/*
The secret settings, each read from the Secret by name (the chart's or secrets.existingSecret):
a required one missing from an existing Secret stops the pod with a clear event rather than
starting it on a default (an empty URL would pick an in-memory adapter).
*/}}
{{- define "currencyex.secretEnv" -}}
{{- $secret := include "currencyex.secretName" . }}
{{- $required := list "CURRENCYEX_DATABASE_URL" "CURRENCYEX_REDIS_URL" }}
{{- if .Values.nats.url }}
{{- $required = append $required "CURRENCYEX_NATS_URL" }}
{{- end }}
{{- $optional := list "CURRENCYEX_S3_SECRET_ACCESS_KEY" "CURRENCYEX_STORAGE_SIGNING_KEY" "CURRENCYEX_SMTP_PASSWORD" }}
{{- if eq .Values.mode "split" }}
{{- $required = append $required "CURRENCYEX_INTERNAL_KEY" }}
{{- else }}
{{- $optional = prepend $optional "CURRENCYEX_INTERNAL_KEY" }}
{{- end }}
{{- range $key := $required }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- range $key := $optional }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
