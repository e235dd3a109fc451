{{/* Chart name, truncated to fit a DNS label. */}}
{{- define "hami-dra.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-qualified unless the release name already contains the chart name. */}}
{{- define "hami-dra.fullname" -}}
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

{{- define "hami-dra.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hami-dra.labels" -}}
helm.sh/chart: {{ include "hami-dra.chart" . }}
{{ include "hami-dra.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hami-dra.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hami-dra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hami-dra.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hami-dra.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "hami-dra.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "hami-dra.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "hami-dra.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The libvgpu version: libvgpu.version, else the image tag. */}}
{{- define "hami-dra.libvgpuVersion" -}}
{{- $v := default (include "hami-dra.imageTag" .) .Values.libvgpu.version }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._+-]*$" $v) }}
{{- fail (printf "libvgpu.version %q (or the image tag it defaults to) must be a plain version string: letters, digits, '.', '_', '+', '-'" $v) }}
{{- end }}
{{- $v }}
{{- end }}

{{/* Host directory of this libvgpu version; never rewritten once installed. */}}
{{- define "hami-dra.libvgpuHostVersionDir" -}}
{{- printf "%s/%s" (.Values.libvgpu.hostDir | trimSuffix "/") (include "hami-dra.libvgpuVersion" .) }}
{{- end }}

{{- define "hami-dra.libvgpuHostPath" -}}
{{- printf "%s/libvgpu.so" (include "hami-dra.libvgpuHostVersionDir" .) }}
{{- end }}

{{- define "hami-dra.kubeletDir" -}}
{{- .Values.kubeletDir | trimSuffix "/" }}
{{- end }}

{{- define "hami-dra.registrarDir" -}}
{{- printf "%s/plugins_registry" (include "hami-dra.kubeletDir" .) }}
{{- end }}

{{- define "hami-dra.pluginDataDir" -}}
{{- printf "%s/plugins/%s" (include "hami-dra.kubeletDir" .) .Values.driverName }}
{{- end }}

{{/*
The opaque VgpuConfig of a DeviceClass: the cluster defaults merged with the
class's own overrides (a dict passed as "overrides"). Empty and null fields are
dropped, so the plugin's own defaults apply to them. Prints nothing when no
field is left.
*/}}
{{- define "hami-dra.classConfig" -}}
{{- $root := .root }}
{{- $fields := dict }}
{{- with $root.Values.defaults.computePolicy }}{{ $_ := set $fields "computePolicy" . }}{{ end }}
{{- if not (kindIs "invalid" $root.Values.defaults.libvgpuLogLevel) }}{{ $_ := set $fields "logLevel" (int $root.Values.defaults.libvgpuLogLevel) }}{{ end }}
{{- with $root.Values.defaults.memoryAuditAction }}{{ $_ := set $fields "memoryAuditAction" . }}{{ end }}
{{- range $k, $v := (.overrides | default dict) }}
{{- if kindIs "invalid" $v }}{{ $_ := unset $fields $k }}{{ else if eq (toString $v) "" }}{{ $_ := unset $fields $k }}{{ else }}{{ $_ := set $fields $k $v }}{{ end }}
{{- end }}
{{- if $fields }}
config:
  - opaque:
      driver: {{ $root.Values.driverName }}
      parameters:
        apiVersion: vgpu.hami.io/v1alpha1
        kind: VgpuConfig
        {{- toYaml $fields | nindent 8 }}
{{- end }}
{{- end }}
