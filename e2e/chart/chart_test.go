package chart

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// fullValues sets every value of the chart to something other than its
// default: the chart's ci/full-values.yaml.
func fullValues() map[string]any {
	dir, err := Dir()
	if err != nil {
		panic(err)
	}
	vals, err := common.ReadValuesFile(filepath.Join(dir, "ci", "full-values.yaml"))
	if err != nil {
		panic(err)
	}
	return vals.AsMap()
}

func mustRender(t *testing.T, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	objs, err := Render(values)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	if len(objs) == 0 {
		t.Fatal("render produced no objects")
	}
	return objs
}

func kindsOf(objs []*unstructured.Unstructured) []string {
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
	}
	return kinds
}

func pluginContainer(t *testing.T, objs []*unstructured.Unstructured) (ds *unstructured.Unstructured, plugin, install map[string]any) {
	t.Helper()
	dss := SelectKinds(objs, KindDaemonSet)
	if len(dss) != 1 {
		t.Fatalf("want one DaemonSet, got %v", kindsOf(dss))
	}
	ds = dss[0]
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	inits, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "initContainers")
	for _, c := range containers {
		if c.(map[string]any)["name"] == "plugin" {
			plugin = c.(map[string]any)
		}
	}
	for _, c := range inits {
		if c.(map[string]any)["name"] == "install-libvgpu" {
			install = c.(map[string]any)
		}
	}
	if plugin == nil || install == nil {
		t.Fatalf("DaemonSet lacks the plugin or install-libvgpu container")
	}
	return ds, plugin, install
}

func initNames(ds *unstructured.Unstructured) []string {
	inits, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "initContainers")
	var names []string
	for _, c := range inits {
		names = append(names, c.(map[string]any)["name"].(string))
	}
	return names
}

func stringsOf(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

func TestRenderDefaults(t *testing.T) {
	objs := mustRender(t, nil)
	t.Logf("rendered: %v", kindsOf(objs))
	for _, want := range []string{
		"ServiceAccount/hami-dra", "ClusterRole/hami-dra-kubelet-plugin", "ClusterRoleBinding/hami-dra-kubelet-plugin",
		"ValidatingAdmissionPolicy/hami-dra-resourceslices", "ValidatingAdmissionPolicyBinding/hami-dra-resourceslices",
		"DeviceClass/vgpu.hami.io", "DeviceClass/a100.vgpu.hami.io", "DeviceClass/h100.vgpu.hami.io",
		"DaemonSet/hami-dra-kubelet-plugin",
	} {
		if !slices.Contains(kindsOf(objs), want) {
			t.Errorf("missing %s in %v", want, kindsOf(objs))
		}
	}

	ds, plugin, install := pluginContainer(t, objs)
	args := stringsOf(plugin["args"])
	wantArgs := []string{
		"--driver-name=vgpu.hami.io",
		"--node-name=$(NODE_NAME)",
		"--pod-uid=$(POD_UID)",
		"--registrar-dir=/var/lib/kubelet/plugins_registry",
		"--plugin-data-dir=/var/lib/kubelet/plugins/vgpu.hami.io",
		"--cdi-root=/var/run/cdi",
		"--state-dir=/var/lib/hami-dra",
		"--libvgpu-path=/usr/local/hami-dra/0.1.0/libvgpu.so",
		"--nvml-library-path=/run/hami-dra-nvml/libnvidia-ml.so.1",
		"--driver-root=/",
		"--container-driver-root=/driver-root",
		"--nvidia-cdi-hook-path=/usr/bin/nvidia-cdi-hook",
		"--compose-nvidia-cdi=false",
		"--nvidia-cdi-kind=nvidia.com/gpu",
		"--metrics-port=8080",
		"--metrics-pod-labels=true",
		"--health-port=8081",
		"-v=2",
		"--audit-interval=10s",
		"--audit-memory-margin=256Mi",
		"--audit-grace-period=30s",
		"--audit-compute-margin=10",
		"--audit-compute-window=60s",
	}
	if !slices.Equal(args, wantArgs) {
		t.Errorf("plugin args:\n got %q\nwant %q", args, wantArgs)
	}
	// The node audit reads host PIDs' cgroups and signals them.
	if hostPID, _, _ := unstructured.NestedBool(ds.Object, "spec", "template", "spec", "hostPID"); !hostPID {
		t.Error("the audit is on by default but the plugin does not run in the host's PID namespace")
	}
	strategy, _, _ := unstructured.NestedMap(ds.Object, "spec", "updateStrategy", "rollingUpdate")
	if strategy["maxUnavailable"] != int64(0) || strategy["maxSurge"] != int64(1) {
		t.Errorf("rolling update strategy %v, want maxUnavailable 0 maxSurge 1", strategy)
	}
	spec, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	if spec["priorityClassName"] != "system-node-critical" {
		t.Errorf("priorityClassName %v", spec["priorityClassName"])
	}
	// NVIDIA GPU nodes by NFD's PCI vendor label OR GPU Feature
	// Discovery's label: two node selector terms, no nodeSelector.
	if _, found := spec["nodeSelector"]; found {
		t.Errorf("nodeSelector %v, want none by default", spec["nodeSelector"])
	}
	terms, _, _ := unstructured.NestedSlice(spec, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
	var termKeys []string
	for _, term := range terms {
		exprs := term.(map[string]any)["matchExpressions"].([]any)
		for _, e := range exprs {
			em := e.(map[string]any)
			termKeys = append(termKeys, fmt.Sprintf("%s %s %v", em["key"], em["operator"], em["values"]))
		}
		if len(exprs) != 1 {
			t.Errorf("term %v: want one expression per term (terms are ORed)", term)
		}
	}
	if want := []string{"feature.node.kubernetes.io/pci-10de.present In [true]", "nvidia.com/gpu.present In [true]"}; !slices.Equal(termKeys, want) {
		t.Errorf("node affinity terms %q, want %q", termKeys, want)
	}
	if priv, _, _ := unstructured.NestedBool(plugin, "securityContext", "privileged"); !priv {
		t.Error("plugin container is not privileged")
	}
	if priv, _, _ := unstructured.NestedBool(install, "securityContext", "privileged"); priv {
		t.Error("install-libvgpu container must not be privileged")
	}
	// Liveness and startup dial the sockets (the probe subcommand);
	// readiness is the plugin's own /readyz.
	for _, probe := range []string{"livenessProbe", "startupProbe"} {
		cmd, _, _ := unstructured.NestedStringSlice(plugin, probe, "exec", "command")
		want := []string{"/bin/sh", "-c", `exec /usr/bin/vgpu-kubelet-plugin probe --driver-name=vgpu.hami.io --registrar-dir=/var/lib/kubelet/plugins_registry --plugin-data-dir=/var/lib/kubelet/plugins/vgpu.hami.io --pod-uid="$POD_UID"`}
		if !slices.Equal(cmd, want) {
			t.Errorf("%s command\n got %q\nwant %q", probe, cmd, want)
		}
	}
	if path, _, _ := unstructured.NestedString(plugin, "readinessProbe", "httpGet", "path"); path != "/readyz" {
		t.Errorf("readinessProbe path %q", path)
	}
	hostPaths := map[string]string{}
	vols, _, _ := unstructured.NestedSlice(spec, "volumes")
	for _, v := range vols {
		vm := v.(map[string]any)
		if hp, ok := vm["hostPath"].(map[string]any); ok {
			hostPaths[vm["name"].(string)] = hp["path"].(string)
		}
	}
	for name, path := range map[string]string{
		"plugins-registry": "/var/lib/kubelet/plugins_registry",
		"plugin-data":      "/var/lib/kubelet/plugins/vgpu.hami.io",
		"cdi":              "/var/run/cdi",
		"dev":              "/dev",
		"state":            "/var/lib/hami-dra",
		"libvgpu":          "/usr/local/hami-dra",
		"driver-root":      "/",
	} {
		if hostPaths[name] != path {
			t.Errorf("hostPath volume %s = %q, want %q", name, hostPaths[name], path)
		}
	}
	// Each host path is mounted at the same path inside (CDI specs and
	// sockets name host paths), except /driver-root.
	mounts, _, _ := unstructured.NestedSlice(plugin, "volumeMounts")
	for _, m := range mounts {
		mm := m.(map[string]any)
		name := mm["name"].(string)
		if _, isHost := hostPaths[name]; !isHost || name == "driver-root" {
			continue
		}
		if mm["mountPath"] != hostPaths[name] {
			t.Errorf("mount %s at %v, host path %s", name, mm["mountPath"], hostPaths[name])
		}
		if name == "libvgpu" && mm["readOnly"] != true {
			t.Error("the plugin must mount the libvgpu directory read-only")
		}
	}
	envs := map[string]any{}
	ie, _, _ := unstructured.NestedSlice(install, "env")
	for _, e := range ie {
		em := e.(map[string]any)
		envs[em["name"].(string)] = em["value"]
	}
	if envs["LIBVGPU_VERSION"] != "0.1.0" || envs["LIBVGPU_HOST_DIR"] != "/usr/local/hami-dra" {
		t.Errorf("install-libvgpu env %v", envs)
	}
	if got := initNames(ds); !slices.Equal(got, []string{"install-libvgpu", "wait-for-driver", "find-nvml"}) {
		t.Errorf("init containers %v", got)
	}

	// DeviceClasses: CEL selectors and the cluster default config.
	all := Find(objs, KindDeviceClass, "vgpu.hami.io")
	expr := celOf(t, all)
	if expr != `device.driver == "vgpu.hami.io"` {
		t.Errorf("default class selector %q", expr)
	}
	if _, found, _ := unstructured.NestedString(all.Object, "spec", "extendedResourceName"); found {
		t.Error("default class must not map an extended resource unless asked")
	}
	params := classParams(t, all)
	if params["kind"] != "VgpuConfig" || params["apiVersion"] != "vgpu.hami.io/v1alpha1" || params["computePolicy"] != "HardCap" {
		t.Errorf("default class config %v", params)
	}
	if _, ok := params["logLevel"]; ok {
		t.Errorf("libvgpuLogLevel null must not set logLevel: %v", params)
	}
	h100 := Find(objs, KindDeviceClass, "h100.vgpu.hami.io")
	if got, want := celOf(t, h100), `device.driver == "vgpu.hami.io" && device.attributes["vgpu.hami.io"].family == "h100"`; got != want {
		t.Errorf("h100 selector\n got %s\nwant %s", got, want)
	}

	// RBAC: exactly the verbs the plugin needs.
	role := Find(objs, KindClusterRole, "hami-dra-kubelet-plugin")
	rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
	got := map[string][]string{}
	for _, r := range rules {
		rm := r.(map[string]any)
		for _, res := range stringsOf(rm["resources"]) {
			got[res] = append(got[res], stringsOf(rm["verbs"])...)
		}
	}
	want := map[string][]string{
		"resourceclaims": {"get", "list", "watch"},
		"nodes":          {"get"},
		"resourceslices": {"get", "list", "watch", "create", "update", "patch", "delete"},
		// the node's pods (the audit, the metrics' pod labels), and the
		// audit's events on pods and claims
		"pods":   {"get", "list", "watch"},
		"events": {"create", "patch"},
	}
	for res, verbs := range want {
		if !slices.Equal(got[res], verbs) {
			t.Errorf("ClusterRole %s verbs %v, want %v", res, got[res], verbs)
		}
	}
	if len(got) != len(want) {
		t.Errorf("ClusterRole grants %v, want only %v", got, want)
	}
	ns, sa, err := ServiceAccount(objs)
	if err != nil || ns != DefaultNamespace || sa != "hami-dra" {
		t.Errorf("ServiceAccount() = %s/%s, %v", ns, sa, err)
	}
	vap := Find(objs, KindValidatingAdmissionPolicy, "hami-dra-resourceslices")
	conds, _, _ := unstructured.NestedSlice(vap.Object, "spec", "matchConditions")
	if len(conds) != 1 || !strings.Contains(conds[0].(map[string]any)["expression"].(string), `"system:serviceaccount:hami-dra:hami-dra"`) {
		t.Errorf("admission policy match conditions %v", conds)
	}

	notes, err := RenderNotes(Options{}, nil)
	if err != nil || !strings.Contains(notes, "/usr/local/hami-dra/0.1.0/libvgpu.so") {
		t.Errorf("NOTES: %v\n%s", err, notes)
	}
}

func celOf(t *testing.T, class *unstructured.Unstructured) string {
	t.Helper()
	if class == nil {
		t.Fatal("DeviceClass not rendered")
	}
	sels, _, _ := unstructured.NestedSlice(class.Object, "spec", "selectors")
	if len(sels) != 1 {
		t.Fatalf("%s: want one selector, got %v", class.GetName(), sels)
	}
	expr, _, _ := unstructured.NestedString(sels[0].(map[string]any), "cel", "expression")
	return expr
}

func classParams(t *testing.T, class *unstructured.Unstructured) map[string]any {
	t.Helper()
	cfg, _, _ := unstructured.NestedSlice(class.Object, "spec", "config")
	if len(cfg) != 1 {
		t.Fatalf("%s: want one config, got %v", class.GetName(), cfg)
	}
	driver, _, _ := unstructured.NestedString(cfg[0].(map[string]any), "opaque", "driver")
	if driver != "vgpu.hami.io" {
		t.Errorf("%s: config driver %q", class.GetName(), driver)
	}
	params, _, _ := unstructured.NestedMap(cfg[0].(map[string]any), "opaque", "parameters")
	return params
}

func TestRenderFullValues(t *testing.T) {
	objs := mustRender(t, fullValues())
	t.Logf("rendered: %v", kindsOf(objs))
	ds, plugin, install := pluginContainer(t, objs)
	if ds.GetName() != "hami-kubelet-plugin" {
		t.Errorf("DaemonSet name %s", ds.GetName())
	}
	img := plugin["image"].(string)
	if img != "registry.example.com/hami/hami-dra@sha256:"+strings.Repeat("ab", 32) || install["image"] != img {
		t.Errorf("image %s / %v", img, install["image"])
	}
	args := stringsOf(plugin["args"])
	for _, want := range []string{
		"--registrar-dir=/var/snap/microk8s/common/var/lib/kubelet/plugins_registry",
		"--plugin-data-dir=/var/snap/microk8s/common/var/lib/kubelet/plugins/vgpu.hami.io",
		"--cdi-root=/etc/cdi",
		"--state-dir=/var/lib/hami",
		"--libvgpu-path=/opt/hami-dra-host/0.1.0-rc.1/libvgpu.so",
		"--nvml-library-path=/driver-root/usr/lib64/libnvidia-ml.so.1",
		"--driver-root=/run/nvidia/driver",
		"--nvidia-cdi-hook-path=/usr/local/nvidia/toolkit/nvidia-cdi-hook",
		"--compose-nvidia-cdi=true",
		"--metrics-port=9400",
		"--health-port=9401",
		"-v=5",
		"--cleanup-interval=30s",
	} {
		if !slices.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if got := initNames(ds); !slices.Equal(got, []string{"selinux-label", "install-libvgpu", "wait-for-driver"}) {
		t.Errorf("init containers %v: an explicit nvmlLibraryPath needs no search", got)
	}
	if slices.ContainsFunc(args, func(s string) bool { return strings.HasPrefix(s, "--pod-uid") }) {
		t.Error("--pod-uid passed with rolling updates disabled")
	}
	strategy, _, _ := unstructured.NestedMap(ds.Object, "spec", "updateStrategy", "rollingUpdate")
	if strategy["maxUnavailable"] != int64(1) || strategy["maxSurge"] != int64(0) {
		t.Errorf("strategy %v", strategy)
	}
	if _, sa, _ := ServiceAccount(objs); sa != "hami-plugin" {
		t.Errorf("service account %s", sa)
	}

	def := Find(objs, KindDeviceClass, "gpu.vgpu.hami.io")
	if ern, _, _ := unstructured.NestedString(def.Object, "spec", "extendedResourceName"); ern != "hami.io/gpu" {
		t.Errorf("extendedResourceName %q", ern)
	}
	if p := classParams(t, def); p["computePolicy"] != "BestEffort" || p["logLevel"] != int64(2) {
		t.Errorf("default class params %v", p)
	}
	h100 := Find(objs, KindDeviceClass, "h100.vgpu.hami.io")
	if got := celOf(t, h100); !strings.HasSuffix(got, `&& device.capacity["vgpu.hami.io"].memory.compareTo(quantity("70Gi")) >= 0`) {
		t.Errorf("h100 selector %s", got)
	}
	if p := classParams(t, h100); p["computePolicy"] != "HardCap" || p["logLevel"] != int64(2) {
		t.Errorf("h100 params %v", p)
	}
	if p := classParams(t, Find(objs, KindDeviceClass, "l4.vgpu.hami.io")); p["computePolicy"] != "BestEffort" || p["logLevel"] != int64(3) {
		t.Errorf("l4 params %v", p)
	}
	if got := celOf(t, Find(objs, KindDeviceClass, "a100-40g.vgpu.hami.io")); !strings.Contains(got, `quantity("40000000000")`) {
		t.Errorf("a100-40g selector %s", got)
	}
}

func TestRenderOptional(t *testing.T) {
	objs := mustRender(t, map[string]any{
		"rbac":           map[string]any{"create": false, "nodeRestriction": false},
		"serviceAccount": map[string]any{"create": false, "name": "existing"},
		"defaults":       map[string]any{"computePolicy": ""},
		"deviceClasses":  map[string]any{"default": map[string]any{"enabled": false}, "models": []any{}},
	})
	if got := kindsOf(objs); !slices.Equal(got, []string{"DaemonSet/hami-dra-kubelet-plugin"}) {
		t.Errorf("rendered %v, want only the DaemonSet", got)
	}
	// Simulated GPUs: no NVML, no toolkit CDI devices.
	objs = mustRender(t, map[string]any{"kubeletPlugin": map[string]any{"simulate": "4xA100-80GB,2xL4", "affinity": nil}})
	ds, plugin, _ := pluginContainer(t, objs)
	args := stringsOf(plugin["args"])
	if !slices.Contains(args, "--simulate=4xA100-80GB,2xL4") || !slices.Contains(args, "--compose-nvidia-cdi=false") ||
		slices.ContainsFunc(args, func(s string) bool { return strings.HasPrefix(s, "--nvml-library-path") }) ||
		slices.ContainsFunc(args, func(s string) bool { return strings.HasPrefix(s, "--driver-root") }) {
		t.Errorf("simulated args %q", args)
	}
	if got := initNames(ds); !slices.Equal(got, []string{"install-libvgpu"}) {
		t.Errorf("simulated init containers %v", got)
	}
	for _, field := range []string{"nodeSelector", "affinity"} {
		if v, found, _ := unstructured.NestedFieldNoCopy(ds.Object, "spec", "template", "spec", field); found {
			t.Errorf("empty %s rendered as %v", field, v)
		}
	}
	objs = mustRender(t, map[string]any{"defaults": map[string]any{"computePolicy": ""}})
	if cfg, found, _ := unstructured.NestedSlice(Find(objs, KindDeviceClass, "vgpu.hami.io").Object, "spec", "config"); found {
		t.Errorf("no defaults must render no class config, got %v", cfg)
	}
}

// TestSchemaRejects checks that bad values fail with the schema's message
// naming the key.
func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []string
	}{
		{"compute policy", map[string]any{"defaults": map[string]any{"computePolicy": "Hard"}}, []string{"/defaults/computePolicy", "HardCap", "BestEffort"}},
		{"unknown key", map[string]any{"nodeSelector": map[string]any{"a": "b"}}, []string{"additional properties 'nodeSelector' not allowed"}},
		{"driver name", map[string]any{"driverName": "VGPU_hami"}, []string{"/driverName", "does not match pattern"}},
		{"port type", map[string]any{"kubeletPlugin": map[string]any{"metricsPort": "8080"}}, []string{"/kubeletPlugin/metricsPort", "want integer"}},
		{"port range", map[string]any{"kubeletPlugin": map[string]any{"healthPort": 70000}}, []string{"/kubeletPlugin/healthPort", "maximum"}},
		{"relative host dir", map[string]any{"libvgpu": map[string]any{"hostDir": "usr/local/hami"}}, []string{"/libvgpu/hostDir", "does not match pattern"}},
		{"root host dir", map[string]any{"libvgpu": map[string]any{"hostDir": "/"}}, []string{"/libvgpu/hostDir", "does not match pattern"}},
		{"log level", map[string]any{"logLevel": 11}, []string{"/logLevel", "maximum"}},
		{"libvgpu log level", map[string]any{"defaults": map[string]any{"libvgpuLogLevel": 9}}, []string{"/defaults/libvgpuLogLevel"}},
		{"model name", map[string]any{"deviceClasses": map[string]any{"models": []any{map[string]any{"name": "H100", "family": "h100"}}}}, []string{"/deviceClasses/models/0/name"}},
		{"family not normalised", map[string]any{"deviceClasses": map[string]any{"models": []any{map[string]any{"name": "h100", "family": "H100"}}}}, []string{"/deviceClasses/models/0/family"}},
		{"model not normalised", map[string]any{"deviceClasses": map[string]any{"models": []any{map[string]any{"name": "h100", "model": "NVIDIA H100 80GB HBM3"}}}}, []string{"/deviceClasses/models/0/model"}},
		{"extended resource without domain", map[string]any{"deviceClasses": map[string]any{"default": map[string]any{"extendedResourceName": "gpu"}}}, []string{"/deviceClasses/default/extendedResourceName"}},
		{"digest", map[string]any{"image": map[string]any{"digest": "latest"}}, []string{"/image/digest"}},
		{"min memory", map[string]any{"deviceClasses": map[string]any{"models": []any{map[string]any{"name": "h100", "family": "h100", "minMemory": "80 GB"}}}}, []string{"/deviceClasses/models/0/minMemory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.values)
			if err == nil {
				t.Fatal("bad values accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, "values don't meet the specifications of the schema") {
				t.Errorf("not a schema error: %s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message lacks %q:\n%s", w, msg)
				}
			}
			t.Logf("%s", msg)
		})
	}
}

// TestTemplateRejects covers what JSON schema cannot express.
func TestTemplateRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"duplicate extended resource", map[string]any{"deviceClasses": map[string]any{
			"default": map[string]any{"extendedResourceName": "hami.io/gpu"},
			"models":  []any{map[string]any{"name": "h100", "family": "h100", "extendedResourceName": "hami.io/gpu"}},
		}}, `extendedResourceName "hami.io/gpu" is used by both`},
		{"duplicate class", map[string]any{"deviceClasses": map[string]any{
			"models": []any{map[string]any{"name": "h100", "family": "h100"}, map[string]any{"name": "h100", "model": "h100-nvl"}},
		}}, `two DeviceClasses are named "h100.vgpu.hami.io"`},
		{"substring product name", map[string]any{"deviceClasses": map[string]any{
			"models": []any{map[string]any{"name": "h20", "productName": "H20"}},
		}}, `productName (a substring of the product name, which cannot tell A10 from A100 or H20 from H200) is no longer supported: use family`},
		{"model without family or model", map[string]any{"deviceClasses": map[string]any{
			"models": []any{map[string]any{"name": "h100"}},
		}}, `deviceClasses.models "h100": set family (e.g. h100) or model`},
		{"family and model", map[string]any{"deviceClasses": map[string]any{
			"models": []any{map[string]any{"name": "h100", "family": "h100", "model": "h100-nvl"}},
		}}, `set family or model, not both`},
		{"extended resource under kubernetes.io", map[string]any{"deviceClasses": map[string]any{"default": map[string]any{"extendedResourceName": "example.kubernetes.io/gpu"}}}, `extendedResourceName "example.kubernetes.io/gpu" of "vgpu.hami.io" is reserved`},
		{"bad version from tag", map[string]any{"image": map[string]any{"tag": "-dev"}}, "/image/tag"},
		{"existing service account needs a name", map[string]any{"serviceAccount": map[string]any{"create": false}}, "serviceAccount.name is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestKubeVersion(t *testing.T) {
	if _, err := RenderWithOptions(Options{KubeVersion: "v1.33.4"}, nil); err == nil || !strings.Contains(err.Error(), "kubeVersion") {
		t.Errorf("rendering for Kubernetes 1.33: %v", err)
	}
	for _, v := range []string{"v1.34.0", "v1.36.2", "v1.37.1"} {
		if _, err := RenderWithOptions(Options{KubeVersion: v}, nil); err != nil {
			t.Errorf("rendering for %s: %v", v, err)
		}
	}
}

func TestLint(t *testing.T) {
	for name, values := range map[string]map[string]any{"defaults": nil, "full": fullValues()} {
		t.Run(name, func(t *testing.T) {
			if err := Lint(Options{}, values); err != nil {
				t.Errorf("lint:\n%v", err)
			}
		})
	}
	t.Run("bad values", func(t *testing.T) {
		err := Lint(Options{}, map[string]any{"defaults": map[string]any{"computePolicy": "Hard"}})
		if err == nil || !strings.Contains(err.Error(), "/defaults/computePolicy") {
			t.Errorf("lint of bad values: %v", err)
		}
	})
}

// TestInstallLibvgpu runs the init container's script against temporary
// directories: first install, idempotent re-run, refusal to overwrite a
// different library, and a clear error for a version the image lacks.
func TestInstallLibvgpu(t *testing.T) {
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "files", "install-libvgpu.sh")
	tmp := t.TempDir()
	src, host := filepath.Join(tmp, "src"), filepath.Join(tmp, "host")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(content string) {
		if err := os.WriteFile(filepath.Join(src, "libvgpu.so.1.2.3"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(version string) (string, error) {
		cmd := exec.Command("/bin/sh", script)
		cmd.Env = append(os.Environ(), "LIBVGPU_VERSION="+version, "LIBVGPU_HOST_DIR="+host, "LIBVGPU_SRC_DIR="+src)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	dst := filepath.Join(host, "1.2.3", "libvgpu.so")

	write("library one")
	if out, err := run("1.2.3"); err != nil {
		t.Fatalf("first install: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(dst)
	if string(got) != "library one" {
		t.Fatalf("installed %q", got)
	}
	st, _ := os.Stat(dst)
	if st.Mode().Perm() != 0o444 {
		t.Errorf("installed mode %v, want read-only", st.Mode())
	}
	before := st.ModTime()
	if out, err := run("1.2.3"); err != nil || !strings.Contains(out, "already installed") {
		t.Fatalf("re-run: %v\n%s", err, out)
	}
	write("library two")
	out, err := run("1.2.3")
	if err == nil || !strings.Contains(out, "refusing to overwrite") {
		t.Fatalf("different library with the same version: %v\n%s", err, out)
	}
	got, _ = os.ReadFile(dst)
	st, _ = os.Stat(dst)
	if string(got) != "library one" || !st.ModTime().Equal(before) {
		t.Fatal("the installed library was touched")
	}
	if out, err := run("9.9.9"); err == nil || !strings.Contains(out, "no libvgpu.so.9.9.9") || !strings.Contains(out, "libvgpu.so.1.2.3") {
		t.Fatalf("missing version: %v\n%s", err, out)
	}
	entries, _ := os.ReadDir(filepath.Join(host, "1.2.3"))
	if len(entries) != 1 {
		t.Errorf("leftover files next to the library: %v", entries)
	}
}

// TestFindNVML runs the find-nvml init container's script against a fake
// driver root.
func TestFindNVML(t *testing.T) {
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "files", "find-nvml.sh")
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	lib := filepath.Join(root, "usr", "lib", "x86_64-linux-gnu")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lib, "libnvidia-ml.so.580.82.07"), []byte("nvml"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("libnvidia-ml.so.580.82.07", filepath.Join(lib, "libnvidia-ml.so.1")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(tmp, "nvml", "libnvidia-ml.so.1")
	run := func(root string) (string, error) {
		cmd := exec.Command("/bin/sh", script)
		// a missing driver is waited for (TestWaitForDriver): give up after 2 s here
		cmd.Env = append(os.Environ(), "NVIDIA_DRIVER_ROOT="+root, "NVML_LINK="+link, "WAIT_TIMEOUT=2", "WAIT_INTERVAL=1")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for i := 0; i < 2; i++ { // idempotent: a restarted pod runs it again
		if out, err := run(root); err != nil {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
	}
	if data, err := os.ReadFile(link); err != nil || string(data) != "nvml" {
		t.Fatalf("link resolves to %q, %v", data, err)
	}
	if out, err := run(filepath.Join(tmp, "empty")); err == nil || !strings.Contains(out, "no libnvidia-ml.so.1") {
		t.Fatalf("missing driver: %v\n%s", err, out)
	}
}

// TestDockerfileMatchesChart checks the paths the chart relies on against
// the image's Dockerfile (which cannot be built here).
func TestDockerfileMatchesChart(t *testing.T) {
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "..", "..", "container", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	_, plugin, install := pluginContainer(t, mustRender(t, nil))
	if cmd := stringsOf(plugin["command"]); !strings.Contains(df, "COPY --from=plugin /out/vgpu-kubelet-plugin "+cmd[0]+"\n") {
		t.Errorf("the image does not install the plugin at %s", cmd[0])
	}
	var src string
	ie, _, _ := unstructured.NestedSlice(install, "env")
	for _, e := range ie {
		if em := e.(map[string]any); em["name"] == "LIBVGPU_SRC_DIR" {
			src = em["value"].(string)
		}
	}
	if !strings.Contains(df, " "+src+"/libvgpu.so.${VERSION}\n") {
		t.Errorf("the image does not carry %s/libvgpu.so.${VERSION}", src)
	}
	for _, want := range []string{"-trimpath", "SOURCE_DATE_EPOCH", "CGO_ENABLED=1", "make -C vgpu-core lib", "vgpu-core/build/libvgpu.so"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// TestDockerfileParses runs BuildKit's Dockerfile front end (parser,
// instruction checks and linter, through deployments/container/dockerfilecheck)
// over the image's Dockerfile: no container engine is needed for that.
func TestDockerfileParses(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the BuildKit parser")
	}
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	container := filepath.Join(dir, "..", "..", "container")
	cmd := exec.Command("go", "run", ".", filepath.Join(container, "Dockerfile"))
	cmd.Dir = filepath.Join(container, "dockerfilecheck")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("Dockerfile check: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// TestReadmeExampleMatches keeps the workload shown in deployments/README.md
// equal to examples/memory-share.yaml.
func TestReadmeExampleMatches(t *testing.T) {
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(dir, "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	i := strings.Index(text, "## A first workload")
	if i < 0 {
		t.Fatal("README has no first workload section")
	}
	text = text[i:]
	start := strings.Index(text, "```yaml\n")
	end := strings.Index(text[start+8:], "```")
	if start < 0 || end < 0 {
		t.Fatal("no yaml block in the first workload section")
	}
	shown, err := decodeManifest("README.md", text[start+8:start+8+end])
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(filepath.Join(dir, "..", "..", "examples", "memory-share.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := decodeManifest("memory-share.yaml", string(file))
	if err != nil {
		t.Fatal(err)
	}
	if len(shown) != len(want) {
		t.Fatalf("README shows %d objects, the example has %d", len(shown), len(want))
	}
	for i := range want {
		delete(want[i].Object["spec"].(map[string]any), "restartPolicy")
		delete(shown[i].Object["spec"].(map[string]any), "restartPolicy")
		a, _ := yaml.Marshal(shown[i].Object)
		b, _ := yaml.Marshal(want[i].Object)
		if string(a) != string(b) {
			t.Errorf("README object %d differs from the example:\n%s\n---\n%s", i, a, b)
		}
	}
}

// TestExamplesParse checks every example is well-formed YAML with kinds the
// API server knows (TestAPIServer applies them).
func TestExamplesParse(t *testing.T) {
	objs := examples(t)
	if len(objs) < 13 {
		t.Errorf("only %d example objects", len(objs))
	}
}

func examples(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "..", "..", "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		decoded, err := decodeManifest(filepath.Base(f), string(data))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range decoded {
			if _, err := yaml.Marshal(o.Object); err != nil {
				t.Fatal(err)
			}
		}
		objs = append(objs, decoded...)
	}
	return objs
}

// TestAuditOff: without the node audit (or with simulated GPUs, which have
// no processes) the plugin gets neither the host's PID namespace nor the
// event permission; with the metrics' pod labels off too, not pods either.
func TestAuditOff(t *testing.T) {
	noPodLabels := map[string]any{"podLabels": false}
	for _, values := range []map[string]any{
		{"audit": map[string]any{"enabled": false}, "monitoring": noPodLabels},
		{"kubeletPlugin": map[string]any{"simulate": "2xL4"}, "monitoring": noPodLabels},
		{"audit": map[string]any{"enabled": false}},
	} {
		podLabels := values["monitoring"] == nil
		objs := mustRender(t, values)
		ds, plugin, _ := pluginContainer(t, objs)
		if _, found, _ := unstructured.NestedFieldNoCopy(ds.Object, "spec", "template", "spec", "hostPID"); found {
			t.Errorf("%v: hostPID set", values)
		}
		if slices.ContainsFunc(stringsOf(plugin["args"]), func(a string) bool { return strings.HasPrefix(a, "--audit-") }) {
			t.Errorf("%v: audit flags %q", values, stringsOf(plugin["args"]))
		}
		role := Find(objs, KindClusterRole, "hami-dra-kubelet-plugin")
		rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
		granted := map[string]bool{}
		for _, r := range rules {
			for _, res := range stringsOf(r.(map[string]any)["resources"]) {
				granted[res] = true
			}
		}
		if granted["events"] || granted["pods"] != podLabels {
			t.Errorf("%v: ClusterRole grants events %v, pods %v; want no events, pods only for the pod labels", values, granted["events"], granted["pods"])
		}
		if want := fmt.Sprintf("--metrics-pod-labels=%v", podLabels); !slices.Contains(stringsOf(plugin["args"]), want) {
			t.Errorf("%v: plugin args %q lack %s", values, stringsOf(plugin["args"]), want)
		}
	}
	objs := mustRender(t, map[string]any{"defaults": map[string]any{"memoryAuditAction": "Warn"}})
	if got := classParams(t, Find(objs, KindDeviceClass, "vgpu.hami.io")); got["memoryAuditAction"] != "Warn" {
		t.Errorf("defaults.memoryAuditAction Warn: class config %v", got)
	}
	if _, err := Render(map[string]any{"defaults": map[string]any{"memoryAuditAction": "Ignore"}}); err == nil || !strings.Contains(err.Error(), "memoryAuditAction") {
		t.Errorf("memoryAuditAction Ignore: %v", err)
	}
	if _, err := Render(map[string]any{"audit": map[string]any{"interval": "10"}}); err == nil || !strings.Contains(err.Error(), "/audit/interval") {
		t.Errorf("a duration without unit: %v", err)
	}
}
