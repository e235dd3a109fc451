{{/*
Checks against the live cluster. `lookup` returns nothing under
`helm template` and client-side dry runs, so these checks only act on
`helm install` and `helm upgrade`.
*/}}

{{/*
"true" when a Node (.node, as lookup returns it) is one the plugin's
DaemonSet would run on: every kubeletPlugin.nodeSelector label, and one of
the required node affinity terms (when there are any). matchFields and
operators other than In, NotIn, Exists, DoesNotExist, Gt and Lt count as
matching: this estimate must not hide a node the scheduler would pick.
Taints are not evaluated.
*/}}
{{- define "hami-dra.nodeMatches" -}}
{{- $labels := .node.metadata.labels | default dict }}
{{- $ok := true }}
{{- range $k, $v := (.root.Values.kubeletPlugin.nodeSelector | default dict) }}
{{- if not (kindIs "invalid" $v) }}
{{- if or (not (hasKey $labels $k)) (ne (toString (get $labels $k)) (toString $v)) }}{{ $ok = false }}{{ end }}
{{- end }}
{{- end }}
{{- $terms := dig "nodeAffinity" "requiredDuringSchedulingIgnoredDuringExecution" "nodeSelectorTerms" list (.root.Values.kubeletPlugin.affinity | default dict) }}
{{- if and $ok $terms }}
{{- $any := false }}
{{- range $term := $terms }}
{{- $all := true }}
{{- range $e := ($term.matchExpressions | default list) }}
{{- $has := hasKey $labels $e.key }}
{{- $val := toString (get $labels $e.key) }}
{{- $values := list }}
{{- range ($e.values | default list) }}{{ $values = append $values (toString .) }}{{ end }}
{{- if eq $e.operator "In" }}{{ if not (and $has (has $val $values)) }}{{ $all = false }}{{ end }}
{{- else if eq $e.operator "NotIn" }}{{ if and $has (has $val $values) }}{{ $all = false }}{{ end }}
{{- else if eq $e.operator "Exists" }}{{ if not $has }}{{ $all = false }}{{ end }}
{{- else if eq $e.operator "DoesNotExist" }}{{ if $has }}{{ $all = false }}{{ end }}
{{- else if or (eq $e.operator "Gt") (eq $e.operator "Lt") }}
{{- if not (and $has (regexMatch "^-?[0-9]+$" $val)) }}{{ $all = false }}
{{- else if and (eq $e.operator "Gt") (le (atoi $val) (atoi (first $values))) }}{{ $all = false }}
{{- else if and (eq $e.operator "Lt") (ge (atoi $val) (atoi (first $values))) }}{{ $all = false }}
{{- end }}
{{- end }}
{{- end }}
{{- if $all }}{{ $any = true }}{{ end }}
{{- end }}
{{- $ok = $any }}
{{- end }}
{{- if $ok }}true{{ end }}
{{- end }}

{{/*
Names of the cluster's Nodes the plugin would run on, as a JSON list; "null"
when the cluster cannot be read (helm template).
*/}}
{{- define "hami-dra.gpuNodeNames" -}}
{{- $nodes := lookup "v1" "Node" "" "" }}
{{- if not $nodes }}null{{ else }}
{{- $names := list }}
{{- range ($nodes.items | default list) }}
{{- if eq (include "hami-dra.nodeMatches" (dict "root" $ "node" .)) "true" }}{{ $names = append $names .metadata.name }}{{ end }}
{{- end }}
{{- toJson $names }}
{{- end }}
{{- end }}

{{/*
Refuses to install next to NVIDIA's device plugin: both would hand out the
same GPUs, the device plugin as whole `nvidia.com/gpu`, this driver as
shares, and neither knows of the other's pods. Looks for the device plugin's
DaemonSets (NVIDIA's chart, the GPU Operator's, GKE's) with pods to run, and
for nodes the plugin would run on that advertise nvidia.com/gpu.
*/}}
{{- define "hami-dra.devicePluginCheck" -}}
{{- if not .Values.nvidiaDevicePlugin.coexist }}
{{- $found := list }}
{{- $dss := lookup "apps/v1" "DaemonSet" "" "" }}
{{- range ($dss.items | default list) }}
{{- $labels := .metadata.labels | default dict }}
{{- $isDevicePlugin := or (contains "nvidia-device-plugin" .metadata.name) (contains "nvidia-gpu-device-plugin" .metadata.name) (eq (toString (get $labels "app.kubernetes.io/name")) "nvidia-device-plugin") (eq (toString (get $labels "k8s-app")) "nvidia-gpu-device-plugin") }}
{{- $desired := int64 (dig "status" "desiredNumberScheduled" 0 .) }}
{{- if and $isDevicePlugin (gt $desired 0) }}
{{- $found = append $found (printf "DaemonSet %s/%s (%d pods)" .metadata.namespace .metadata.name $desired) }}
{{- end }}
{{- end }}
{{- $nodes := lookup "v1" "Node" "" "" }}
{{- range ($nodes.items | default list) }}
{{- $gpus := toString (dig "status" "allocatable" "nvidia.com/gpu" "0" .) }}
{{- if and (ne $gpus "0") (eq (include "hami-dra.nodeMatches" (dict "root" $ "node" .)) "true") }}
{{- $found = append $found (printf "node %s advertises nvidia.com/gpu: %s" .metadata.name $gpus) }}
{{- end }}
{{- end }}
{{- if $found }}
{{- fail (printf `

hami-dra refuses to install: NVIDIA's device plugin hands out GPUs in this cluster (%s). Next to this driver both would give the same GPUs to different pods.
Disable the device plugin on the nodes hami-dra runs on:
  - GPU Operator: helm upgrade <release> nvidia/gpu-operator -n <namespace> --reuse-values --set devicePlugin.enabled=false
  - NVIDIA's k8s-device-plugin chart: helm uninstall it, or restrict it to other nodes (its nodeSelector/affinity)
  - GKE: create the GPU node pool with --accelerator=type=...,gpu-driver-version=disabled and --node-labels=gke-no-default-nvidia-gpu-device-plugin=true (then install the driver yourself)
If the device plugin only runs on nodes hami-dra does not use, install with --set nvidiaDevicePlugin.coexist=true.` (join "; " $found)) }}
{{- end }}
{{- end }}
{{- end }}

