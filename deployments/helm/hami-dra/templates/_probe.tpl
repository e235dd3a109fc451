{{/*
The exec probe of the plugin's sockets, as a JSON list (see kubeletplugin.yaml).
*/}}
{{- define "hami-dra.socketProbe" -}}
{{- $cmd := printf "exec /usr/bin/vgpu-kubelet-plugin probe --driver-name=%s --registrar-dir=%s --plugin-data-dir=%s" .Values.driverName (include "hami-dra.registrarDir" .) (include "hami-dra.pluginDataDir" .) }}
{{- if .Values.kubeletPlugin.rollingUpdate.enabled }}{{ $cmd = printf "%s --pod-uid=\"$POD_UID\"" $cmd }}{{ end }}
{{- toJson (list "/bin/sh" "-c" $cmd) }}
{{- end }}
