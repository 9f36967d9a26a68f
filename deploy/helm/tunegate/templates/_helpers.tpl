{{- define "tunegate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "tunegate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tunegate.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tunegate.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "tunegate.fullname" .)) -}}
{{- end -}}

{{/* a DNS-safe name for a base model's engine StatefulSet: <fullname>-engine-<index> */}}
{{- define "tunegate.engineName" -}}
{{- printf "%s-engine-%d" (include "tunegate.fullname" .root) .index | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* TUNEGATE_BASE_MODELS for gateways and workers: each model with its engine replicas' stable URLs */}}
{{- define "tunegate.baseModels" -}}
{{- $root := . -}}
{{- $models := dict -}}
{{- range $i, $id := keys .Values.baseModels | sortAlpha -}}
{{- $m := index $root.Values.baseModels $id -}}
{{- $name := include "tunegate.engineName" (dict "root" $root "index" $i) -}}
{{- $urls := list -}}
{{- range $r := until (int ($m.engineReplicas | default 1)) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:%d" $name $r $name $root.Release.Namespace (int $root.Values.engine.port)) -}}
{{- end -}}
{{- $spec := omit $m "engineReplicas" -}}
{{- $_ := set $spec "engine_urls" $urls -}}
{{- $_ := set $models $id $spec -}}
{{- end -}}
{{- toJson $models -}}
{{- end -}}

{{/* the environment of gateways and workers */}}
{{- define "tunegate.env" -}}
- name: TUNEGATE_CONFIG
  value: /etc/tunegate/tunegate.toml
- name: TUNEGATE_DATA_DIR
  value: /data
- name: TUNEGATE_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "tunegate.secretName" . }}, key: database-url}}
- name: TUNEGATE_ADMIN_KEY
  valueFrom: {secretKeyRef: {name: {{ include "tunegate.secretName" . }}, key: admin-key}}
- name: TUNEGATE_BASE_MODELS
  valueFrom: {secretKeyRef: {name: {{ include "tunegate.fullname" . }}-engines, key: base-models}}
- name: TUNEGATE_WORKER__EMBEDDED
  value: "false"
- name: TUNEGATE_SERVING__LOCAL_ENGINES
  value: "false"
{{- with .Values.redisUrl }}
- name: TUNEGATE_REDIS_URL
  value: {{ . | quote }}
{{- end }}
{{- include "tunegate.objectStoreEnv" . }}
{{- end -}}

{{- define "tunegate.objectStoreEnv" -}}
{{- with .Values.objectStore }}
{{- if .blobUrl }}
- name: TUNEGATE_BLOB_URL
  value: {{ .blobUrl | quote }}
- name: TUNEGATE_S3__REGION
  value: {{ .region | quote }}
- name: TUNEGATE_S3__ADDRESSING_STYLE
  value: {{ .addressingStyle | quote }}
{{- if .endpointUrl }}
- name: TUNEGATE_S3__ENDPOINT_URL
  value: {{ .endpointUrl | quote }}
{{- end }}
- name: TUNEGATE_S3__ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ include "tunegate.secretName" $ }}, key: s3-access-key-id, optional: true}}
- name: TUNEGATE_S3__SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ include "tunegate.secretName" $ }}, key: s3-secret-access-key, optional: true}}
{{- end }}
{{- end }}
{{- end -}}
