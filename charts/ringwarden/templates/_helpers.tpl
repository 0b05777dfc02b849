{{/* Names, labels and checks shared by the templates. */}}

{{- define "ringwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names derive from this; suffixes ("-agent-config") need room. */}}
{{- define "ringwarden.fullname" -}}
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

{{- define "ringwarden.operatorName" -}}
{{- printf "%s-operator" (include "ringwarden.fullname" .) }}
{{- end }}

{{/* The agent DaemonSet and its ServiceAccount share this name. */}}
{{- define "ringwarden.agentName" -}}
{{- printf "%s-agent" (include "ringwarden.fullname" .) }}
{{- end }}

{{- define "ringwarden.agentConfigMapName" -}}
{{- printf "%s-agent-config" (include "ringwarden.fullname" .) }}
{{- end }}

{{/* The operator's own CA and serving certificate (tls.source operator). */}}
{{- define "ringwarden.tlsSecretName" -}}
{{- printf "%s-tls" (include "ringwarden.operatorName" .) }}
{{- end }}

{{/* The CA agents pin, published by the operator. */}}
{{- define "ringwarden.caConfigMapName" -}}
{{- printf "%s-ca" (include "ringwarden.operatorName" .) }}
{{- end }}

{{- define "ringwarden.leaseName" -}}
{{- default (include "ringwarden.operatorName" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "ringwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ringwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ringwarden
{{- end }}

{{- define "ringwarden.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ringwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ringwarden.operatorLabels" -}}
{{ include "ringwarden.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The agent pods' labels are set by the operator (operator/src/render.rs):
name "ringwarden-agent" and instance = the DaemonSet's name.
*/}}
{{- define "ringwarden.agentSelectorLabels" -}}
app.kubernetes.io/name: ringwarden-agent
app.kubernetes.io/instance: {{ include "ringwarden.agentName" . }}
{{- end }}

{{/* repository:tag, or repository@digest; the tag defaults to v<appVersion>. */}}
{{- define "ringwarden.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default (printf "v%s" $root.Chart.AppVersion) $image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's configuration file (operator/src/config.rs; unknown fields
are refused there, so only its fields appear).
*/}}
{{- define "ringwarden.operatorConfig" -}}
agent:
  name: {{ include "ringwarden.agentName" . }}
  configMapName: {{ include "ringwarden.agentConfigMapName" . }}
  serviceAccountName: {{ include "ringwarden.agentName" . }}
  image: {{ include "ringwarden.image" (list .Values.agent.image .) }}
  imagePullPolicy: {{ .Values.agent.image.pullPolicy }}
  resources:
    {{- toYaml .Values.agent.resources | nindent 4 }}
  nodeBudget: {{ .Values.agent.nodeBudget | quote }}
  workingSetMemory: {{ .Values.agent.workingSetMemory | quote }}
  tolerations:
    {{- toYaml .Values.agent.tolerations | nindent 4 }}
  {{- with .Values.agent.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  metricsPort: {{ .Values.agent.metricsPort }}
  metricsAddressLabels: {{ .Values.agent.metricsAddressLabels }}
  nodeSelectorLabels: {{ .Values.agent.nodeSelectorLabels }}
  uprobes:
    enabled: {{ .Values.agent.uprobes.enabled }}
  # The operator's Service, whatever the release is called.
  operatorAddress: {{ printf "%s://%s.%s.svc:%d" (ternary "http" "https" .Values.tls.insecurePlaintextForLocalDevelopment) (include "ringwarden.operatorName" .) .Release.Namespace (int .Values.service.agentPort) }}
{{- end }}

{{/*
Checks across values, which the JSON schema cannot express clearly.
*/}}
{{- define "ringwarden.validate" -}}
{{- $op := .Values.operator }}
{{- if and (gt (int $op.replicas) 1) (not $op.leaderElection.enabled) }}
{{- fail (printf "operator.replicas is %d but operator.leaderElection.enabled is false: without leader election every replica would write; set replicas to 1 or enable leader election" (int $op.replicas)) }}
{{- end }}
{{- if eq (int .Values.service.metricsPort) (int .Values.service.agentPort) }}
{{- fail (printf "service.metricsPort and service.agentPort are both %d; give them different ports" (int .Values.service.metricsPort)) }}
{{- end }}
{{- range $key := list "metricsPort" "agentPort" }}
{{- if eq (int (get $.Values.service $key)) 9441 }}
{{- fail (printf "service.%s is 9441, the port of the operator's loopback query service; choose another" $key) }}
{{- end }}
{{- end }}
{{- with .Values.agent.resources.limits }}
{{- if hasKey . "memory" }}
{{- fail "agent.resources.limits.memory is derived, not set: the operator makes it agent.nodeBudget + agent.workingSetMemory, because BPF maps are charged to the agent's memory cgroup; remove it and set those two instead" }}
{{- end }}
{{- end }}
{{- if not (has .Values.tls.source (list "operator" "certManager")) }}
{{- fail (printf "tls.source is %q; use operator (the operator keeps its own CA) or certManager" .Values.tls.source) }}
{{- end }}
{{- range .Values.monitoring.prometheusRule.burnRateAlerts }}
{{- if eq .longWindow .shortWindow }}
{{- fail (printf "monitoring.prometheusRule.burnRateAlerts: longWindow and shortWindow are both %s; the short window must be shorter (about 1/12 of the long one)" .longWindow) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Target relabeling that adds cluster="<clusterName>" to every series. */}}
{{- define "ringwarden.clusterRelabeling" -}}
{{- if .Values.clusterName }}
relabelings:
  - targetLabel: cluster
    replacement: {{ .Values.clusterName | quote }}
    action: replace
{{- end }}
{{- end }}
