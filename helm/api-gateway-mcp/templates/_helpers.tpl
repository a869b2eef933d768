{{/* Names and labels. */}}
{{- define "agm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agm.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agm.labels" -}}
{{ include "agm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* gateway.toml: [server] from ports, mode, server and tls; then the user's config. */}}
{{- define "agm.config" -}}
{{- $host := ternary "127.0.0.1" "0.0.0.0" (eq .Values.mode "sidecar") -}}
[server]
mcp_listen = "{{ $host }}:{{ .Values.ports.mcp }}"
proxy_listen = "{{ $host }}:{{ .Values.ports.proxy }}"
admin_listen = "0.0.0.0:{{ .Values.ports.admin }}"
{{- with .Values.server }}
{{- if .threads }}
threads = {{ int .threads }}
{{- end }}
{{- if .gracePeriod }}
grace_period = {{ .gracePeriod | quote }}
{{- end }}
{{- if and .drainDelay (ne $.Values.mode "sidecar") }}
drain_delay = {{ .drainDelay | quote }}
{{- end }}
{{- if hasKey . "watchConfig" }}
watch_config = {{ .watchConfig }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}

[server.tls]
cert_file = "/etc/api-gateway-mcp/tls/tls.crt"
key_file = "/etc/api-gateway-mcp/tls/tls.key"
{{- if .Values.tls.clientAuth }}
client_ca_file = "/etc/api-gateway-mcp/tls/ca.crt"
client_auth = {{ .Values.tls.clientAuth | quote }}
{{- end }}
{{- end }}

{{ .Values.config }}
{{- end -}}

{{/* The gateway container: the Deployment's, and the one to inject in sidecar mode. */}}
{{- define "agm.container" -}}
- name: api-gateway-mcp
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve", "--config", "/etc/api-gateway-mcp/gateway.toml"]
  {{- with .Values.existingSecrets }}
  envFrom:
    {{- range . }}
    - secretRef:
        name: {{ .name }}
        {{- if .optional }}
        optional: true
        {{- end }}
    {{- end }}
  {{- end }}
  {{- with .Values.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- if ne .Values.mode "sidecar" }}
    - name: mcp
      containerPort: {{ .Values.ports.mcp }}
    - name: proxy
      containerPort: {{ .Values.ports.proxy }}
    {{- end }}
    - name: admin
      containerPort: {{ .Values.ports.admin }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 10
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
  volumeMounts:
    - name: api-gateway-mcp-config
      mountPath: /etc/api-gateway-mcp
      readOnly: true
    {{- if .Values.tls.enabled }}
    - name: api-gateway-mcp-tls
      mountPath: /etc/api-gateway-mcp/tls
      readOnly: true
    {{- end }}
{{- end -}}

{{/* The volumes the container mounts. */}}
{{- define "agm.volumes" -}}
- name: api-gateway-mcp-config
  configMap:
    name: {{ include "agm.fullname" . }}
{{- if .Values.tls.enabled }}
- name: api-gateway-mcp-tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- end -}}
