package chart

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// documentedPlatforms are the platforms deployments/README.md has a section
// for; each has a values file in the chart's platforms/ directory.
var documentedPlatforms = []string{"aks", "eks", "gke", "gpu-operator", "openshift", "toolkit"}

func hostPathOf(t *testing.T, ds *unstructured.Unstructured, volume string) (path, typ string) {
	t.Helper()
	vols, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "volumes")
	for _, v := range vols {
		vm := v.(map[string]any)
		if vm["name"] == volume {
			path, _, _ = unstructured.NestedString(vm, "hostPath", "path")
			typ, _, _ = unstructured.NestedString(vm, "hostPath", "type")
			return path, typ
		}
	}
	t.Fatalf("no volume %s", volume)
	return "", ""
}

// TestPlatformProfiles renders and lints every platforms/*.yaml and checks
// what each platform needs (the API server test applies them).
func TestPlatformProfiles(t *testing.T) {
	names, err := Platforms()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, documentedPlatforms) {
		t.Fatalf("platform values files %v, documented %v", names, documentedPlatforms)
	}
	type want struct {
		driverRoot, libDir string
		quota, selinux     bool
	}
	wants := map[string]want{
		"gpu-operator": {driverRoot: "/run/nvidia/driver", libDir: "/usr/local/hami-dra"},
		"toolkit":      {driverRoot: "/", libDir: "/usr/local/hami-dra"},
		// COS: / read-only, /home and /var noexec, /home/kubernetes/bin exec.
		"gke":       {driverRoot: "/home/kubernetes/bin/nvidia", libDir: "/home/kubernetes/bin/hami-dra", quota: true},
		"eks":       {driverRoot: "/", libDir: "/var/lib/hami-dra-lib"},
		"aks":       {driverRoot: "/", libDir: "/usr/local/hami-dra"},
		"openshift": {driverRoot: "/run/nvidia/driver", libDir: "/var/lib/hami-dra-lib", selinux: true},
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			values, err := PlatformValues(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := Lint(Options{}, values); err != nil {
				t.Errorf("lint: %v", err)
			}
			objs := mustRender(t, values)
			w := wants[name]
			ds, plugin, _ := pluginContainer(t, objs)
			if got, typ := hostPathOf(t, ds, "driver-root"); got != w.driverRoot || typ != "DirectoryOrCreate" {
				t.Errorf("driver root %s (%s), want %s (DirectoryOrCreate: the GPU Operator mounts it later)", got, typ, w.driverRoot)
			}
			if got, _ := hostPathOf(t, ds, "libvgpu"); got != w.libDir {
				t.Errorf("libvgpu host dir %s, want %s", got, w.libDir)
			}
			if !slices.Contains(stringsOf(plugin["args"]), "--libvgpu-path="+w.libDir+"/0.1.0/libvgpu.so") {
				t.Errorf("plugin args %q", plugin["args"])
			}
			if got := len(SelectKinds(objs, "ResourceQuota")) == 1; got != w.quota {
				t.Errorf("ResourceQuota rendered: %v, want %v", got, w.quota)
			}
			inits := initNames(ds)
			if got := slices.Contains(inits, "selinux-label"); got != w.selinux {
				t.Errorf("init containers %v: selinux-label %v, want %v", inits, got, w.selinux)
			}
			if !slices.Contains(inits, "wait-for-driver") {
				t.Errorf("init containers %v lack wait-for-driver", inits)
			}
		})
	}
}

func TestOpenShiftSCC(t *testing.T) {
	const openshiftAPI = "security.openshift.io/v1"
	for _, tc := range []struct {
		mode        string
		apiVersions []string
		want        bool
	}{
		{"auto", nil, false},
		{"auto", []string{openshiftAPI}, true},
		{"always", nil, true},
		{"never", []string{openshiftAPI}, false},
	} {
		t.Run(tc.mode+"/"+strings.Join(tc.apiVersions, ","), func(t *testing.T) {
			objs, err := RenderWithOptions(Options{APIVersions: tc.apiVersions}, map[string]any{"openshift": map[string]any{"privilegedSCC": tc.mode}})
			if err != nil {
				t.Fatal(err)
			}
			role := Find(objs, "Role", "hami-dra-privileged-scc")
			binding := Find(objs, "RoleBinding", "hami-dra-privileged-scc")
			if (role != nil) != tc.want || (binding != nil) != tc.want {
				t.Fatalf("Role %v RoleBinding %v, want %v", role != nil, binding != nil, tc.want)
			}
			if !tc.want {
				return
			}
			rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
			r := rules[0].(map[string]any)
			if len(rules) != 1 || !slices.Equal(stringsOf(r["resourceNames"]), []string{"privileged"}) || !slices.Equal(stringsOf(r["verbs"]), []string{"use"}) ||
				!slices.Equal(stringsOf(r["resources"]), []string{"securitycontextconstraints"}) {
				t.Errorf("rules %v", rules)
			}
			subjects, _, _ := unstructured.NestedSlice(binding.Object, "subjects")
			if s := subjects[0].(map[string]any); s["name"] != "hami-dra" || s["namespace"] != DefaultNamespace {
				t.Errorf("subjects %v", subjects)
			}
		})
	}
}

func TestSELinuxRelabel(t *testing.T) {
	objs := mustRender(t, map[string]any{"selinux": map[string]any{"relabel": true}, "stateDir": "/var/lib/hami"})
	ds, _, _ := pluginContainer(t, objs)
	inits, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "initContainers")
	if got := initNames(ds); !slices.Equal(got, []string{"selinux-label", "install-libvgpu", "wait-for-driver", "find-nvml"}) {
		t.Fatalf("init containers %v: labelling must come first", got)
	}
	for _, c := range inits {
		cm := c.(map[string]any)
		if typ, _, _ := unstructured.NestedString(cm, "securityContext", "seLinuxOptions", "type"); typ != "spc_t" {
			t.Errorf("%s runs as %q, want spc_t (container_t may not write host directories)", cm["name"], typ)
		}
	}
	env, _, _ := unstructured.NestedSlice(inits[0].(map[string]any), "env")
	got := map[string]any{}
	for _, e := range env {
		got[e.(map[string]any)["name"].(string)] = e.(map[string]any)["value"]
	}
	if got["LABEL_DIRS"] != "/usr/local/hami-dra /var/lib/hami" || got["SELINUX_FILE_TYPE"] != "container_file_t" {
		t.Errorf("selinux-label env %v", got)
	}
	// Off by default: no SELinux options anywhere.
	ds, _, _ = pluginContainer(t, mustRender(t, nil))
	if strings.Contains(mustJSON(t, ds), "seLinuxOptions") {
		t.Error("seLinuxOptions rendered with selinux.relabel=false")
	}
}

func mustJSON(t *testing.T, u *unstructured.Unstructured) string {
	t.Helper()
	data, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestPriorityQuota(t *testing.T) {
	objs := mustRender(t, map[string]any{"priorityQuota": map[string]any{"enabled": true, "pods": 64}})
	q := Find(objs, "ResourceQuota", "hami-dra-system-node-critical")
	if q == nil {
		t.Fatalf("no ResourceQuota in %v", kindsOf(objs))
	}
	if pods, _, _ := unstructured.NestedString(q.Object, "spec", "hard", "pods"); pods != "64" {
		t.Errorf("hard pods %q", pods)
	}
	exprs, _, _ := unstructured.NestedSlice(q.Object, "spec", "scopeSelector", "matchExpressions")
	if e := exprs[0].(map[string]any); e["scopeName"] != "PriorityClass" || !slices.Equal(stringsOf(e["values"]), []string{"system-node-critical"}) {
		t.Errorf("scope %v", exprs)
	}
	// kube-system needs none; no priority class needs none.
	objs, err := RenderWithOptions(Options{Namespace: "kube-system"}, map[string]any{"priorityQuota": map[string]any{"enabled": true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(SelectKinds(objs, "ResourceQuota")) != 0 {
		t.Error("ResourceQuota rendered in kube-system")
	}
	objs = mustRender(t, map[string]any{"priorityQuota": map[string]any{"enabled": true}, "kubeletPlugin": map[string]any{"priorityClassName": ""}})
	if len(SelectKinds(objs, "ResourceQuota")) != 0 {
		t.Error("ResourceQuota rendered without a priority class")
	}
}

func TestMonitoring(t *testing.T) {
	const operatorAPI = "monitoring.coreos.com/v1"
	all := map[string]any{"monitoring": map[string]any{
		"service":        map[string]any{"enabled": true},
		"serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
		"podMonitor":     map[string]any{"enabled": true},
	}}
	if objs := mustRender(t, nil); len(SelectKinds(objs, "Service", "ServiceMonitor", "PodMonitor")) != 0 {
		t.Errorf("monitoring objects rendered by default: %v", kindsOf(objs))
	}
	// Without the operator's API only the Service.
	objs := mustRender(t, all)
	if got := kindsOf(SelectKinds(objs, "Service", "ServiceMonitor", "PodMonitor")); !slices.Equal(got, []string{"Service/hami-dra-metrics"}) {
		t.Errorf("without %s: %v", operatorAPI, got)
	}
	objs, err := RenderWithOptions(Options{APIVersions: []string{operatorAPI}}, all)
	if err != nil {
		t.Fatal(err)
	}
	if got := kindsOf(SelectKinds(objs, "Service", "ServiceMonitor", "PodMonitor")); !slices.Equal(got, []string{"Service/hami-dra-metrics", "PodMonitor/hami-dra", "ServiceMonitor/hami-dra"}) &&
		!slices.Equal(got, []string{"Service/hami-dra-metrics", "ServiceMonitor/hami-dra", "PodMonitor/hami-dra"}) {
		t.Errorf("with %s: %v", operatorAPI, got)
	}
	svc := Find(objs, "Service", "hami-dra-metrics")
	sel, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector")
	ds, _, _ := pluginContainer(t, objs)
	podLabels, _, _ := unstructured.NestedStringMap(ds.Object, "spec", "template", "metadata", "labels")
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("Service selector %v does not select the plugin pods %v", sel, podLabels)
		}
	}
	sm := Find(objs, "ServiceMonitor", "hami-dra")
	if l := sm.GetLabels(); l["release"] != "prom" {
		t.Errorf("ServiceMonitor labels %v", l)
	}
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if ep := eps[0].(map[string]any); ep["port"] != "metrics" || ep["interval"] != "30s" {
		t.Errorf("endpoints %v", eps)
	}
	// Forced, e.g. for helm template into a GitOps repository.
	forced := map[string]any{"monitoring": map[string]any{"podMonitor": map[string]any{"enabled": true, "force": true}}}
	if got := kindsOf(SelectKinds(mustRender(t, forced), "PodMonitor")); len(got) != 1 {
		t.Errorf("forced PodMonitor: %v", got)
	}
	// A ServiceMonitor needs the Service.
	_, err = Render(map[string]any{"monitoring": map[string]any{"serviceMonitor": map[string]any{"enabled": true, "force": true}}})
	if err == nil || !strings.Contains(err.Error(), "monitoring.service.enabled") {
		t.Errorf("ServiceMonitor without Service: %v", err)
	}
}

// TestNotesConsumableCapacity: before 1.36 the gate is off by default and
// the NOTES say that claims get whole GPUs.
func TestNotesConsumableCapacity(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    bool
	}{{"v1.34.2", true}, {"v1.35.0", true}, {"v1.36.0", false}, {"v1.37.1", false}} {
		notes, err := RenderNotes(Options{KubeVersion: tc.version}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(notes, "WHOLE GPUs"); got != tc.want {
			t.Errorf("%s: NOTES mention whole GPUs: %v, want %v\n%s", tc.version, got, tc.want, notes)
		}
	}
}

func scriptPath(t *testing.T, name string) string {
	t.Helper()
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "files", name)
}

// TestInstallLibvgpuNoexec: a libvgpu directory on a noexec mount is
// refused, from the mount table the init container sees.
func TestInstallLibvgpuNoexec(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "libvgpu.so.1.0.0"), []byte("lib"), 0o644); err != nil {
		t.Fatal(err)
	}
	host := filepath.Join(tmp, "home", "kubernetes", "bin", "hami-dra")
	// Mount tables as COS has them: /home noexec, /home/kubernetes/bin
	// remounted exec; the host directory is a bind mount (same flags).
	const cos = `21 1 8:3 / / ro,relatime shared:1 - ext2 /dev/root ro
30 21 8:1 /home /home rw,nosuid,nodev,noexec,relatime shared:10 - ext4 /dev/sda1 rw
31 30 8:1 /home/kubernetes/bin /home/kubernetes/bin rw,nosuid,nodev,relatime shared:11 - ext4 /dev/sda1 rw
`
	for _, tc := range []struct {
		name, mountinfo, hostDir string
		ok                       bool
	}{
		{"exec mount under a noexec one", cos, host, true},
		{"noexec mount", cos, filepath.Join(tmp, "home", "hami-dra"), false},
		{"bind mount of a noexec directory", "40 21 8:1 /var/lib/x " + filepath.Join(tmp, "var") + " rw,nosuid,nodev,noexec,relatime - ext4 /dev/sda1 rw\n", filepath.Join(tmp, "var", "hami"), false},
		{"prefix is not a parent", "40 21 8:1 /x " + tmp + "/ho rw,noexec - ext4 /dev/sda1 rw\n", filepath.Join(tmp, "home", "ok"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mi := filepath.Join(t.TempDir(), "mountinfo")
			content := strings.ReplaceAll(tc.mountinfo, " /home", " "+tmp+"/home")
			if err := os.WriteFile(mi, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("/bin/sh", scriptPath(t, "install-libvgpu.sh"))
			cmd.Env = append(os.Environ(), "LIBVGPU_VERSION=1.0.0", "LIBVGPU_HOST_DIR="+tc.hostDir, "LIBVGPU_SRC_DIR="+src, "MOUNTINFO="+mi)
			out, err := cmd.CombinedOutput()
			if tc.ok && err != nil {
				t.Fatalf("refused: %v\n%s", err, out)
			}
			if !tc.ok && (err == nil || !strings.Contains(string(out), "noexec mount") || !strings.Contains(string(out), "libvgpu.hostDir")) {
				t.Fatalf("accepted or unclear: %v\n%s", err, out)
			}
			if _, statErr := os.Stat(filepath.Join(tc.hostDir, "1.0.0", "libvgpu.so")); (statErr == nil) != tc.ok {
				t.Errorf("library installed: %v, want %v", statErr == nil, tc.ok)
			}
		})
	}
}

// TestNoexecPreload shows on this machine why the chart refuses noexec
// directories: the dynamic loader skips a preload from a noexec mount (and
// a bind mount of it) and runs the program anyway, without the library.
// Needs root (mount).
func TestNoexecPreload(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts a tmpfs: needs root")
	}
	lib := "/lib/x86_64-linux-gnu/libm.so.6"
	if _, err := os.Stat(lib); err != nil {
		t.Skipf("no %s to preload", lib)
	}
	tmp := t.TempDir()
	noexec, bind := filepath.Join(tmp, "noexec"), filepath.Join(tmp, "bind")
	for _, d := range []string{noexec, bind} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mount := func(args ...string) {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Skipf("mount %v: %v\n%s", args, err, out)
		}
	}
	mount("-t", "tmpfs", "-o", "noexec,size=16m", "tmpfs", noexec)
	t.Cleanup(func() { _ = exec.Command("umount", noexec).Run() })
	if err := os.MkdirAll(filepath.Join(noexec, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	mount("--bind", filepath.Join(noexec, "sub"), bind)
	t.Cleanup(func() { _ = exec.Command("umount", bind).Run() })
	data, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{noexec, bind} {
		so := filepath.Join(dir, "libvgpu.so")
		if err := os.WriteFile(so, data, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("/bin/true")
		cmd.Env = []string{"LD_PRELOAD=" + so}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "cannot be preloaded") {
			t.Errorf("%s: preload from a noexec mount: %v\n%s", dir, err, out)
		}
		t.Logf("%s: %s", dir, strings.TrimSpace(string(out)))
	}
	// And the install script sees it from the real mount table.
	src := filepath.Join(tmp, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "libvgpu.so.1.0.0"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", scriptPath(t, "install-libvgpu.sh"))
	cmd.Env = append(os.Environ(), "LIBVGPU_VERSION=1.0.0", "LIBVGPU_HOST_DIR="+bind, "LIBVGPU_SRC_DIR="+src)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "noexec mount") {
		t.Errorf("install into a noexec bind mount: %v\n%s", err, out)
	}
}

// TestWaitForDriver: the init container waits for the driver to appear
// under the driver root (as the GPU Operator's driver container mounts it
// late) and gives up after WAIT_TIMEOUT with a message.
func TestWaitForDriver(t *testing.T) {
	tmp := t.TempDir()
	root := filepath.Join(tmp, "driver")
	link := filepath.Join(tmp, "nvml", "libnvidia-ml.so.1")
	start := func(timeout string) (*exec.Cmd, *strings.Builder) {
		cmd := exec.Command("/bin/sh", scriptPath(t, "find-nvml.sh"))
		cmd.Env = append(os.Environ(), "NVIDIA_DRIVER_ROOT="+root, "NVML_LINK="+link, "WAIT_TIMEOUT="+timeout, "WAIT_INTERVAL=1")
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, out
	}
	cmd, out := start("0")
	time.Sleep(1500 * time.Millisecond)
	lib := filepath.Join(root, "usr", "lib64")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lib, "libnvidia-ml.so.1"), []byte("nvml"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("wait: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "waiting for the NVIDIA driver") || !strings.Contains(out.String(), "NVML is "+lib) {
		t.Errorf("output:\n%s", out)
	}
	if data, err := os.ReadFile(link); err != nil || string(data) != "nvml" {
		t.Errorf("link: %q %v", data, err)
	}

	root = filepath.Join(tmp, "never")
	cmd, out = start("2")
	err := cmd.Wait()
	if err == nil || !strings.Contains(out.String(), "after 2s") || !strings.Contains(out.String(), "nvidiaDriverRoot") {
		t.Errorf("timeout: %v\n%s", err, out)
	}
}

// TestSELinuxLabelScript: on a node without SELinux (this one), asking for
// relabelling fails with a message that says what to change.
func TestSELinuxLabelScript(t *testing.T) {
	if _, err := os.Stat("/sys/fs/selinux/enforce"); err == nil {
		t.Skip("SELinux is enabled here; this checks the message on nodes without it")
	}
	dir := t.TempDir()
	cmd := exec.Command("/bin/sh", scriptPath(t, "selinux-label.sh"))
	cmd.Env = append(os.Environ(), "SELINUX_FILE_TYPE=container_file_t", "LABEL_DIRS="+filepath.Join(dir, "a")+" "+filepath.Join(dir, "b"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "selinux.relabel=false") {
		t.Errorf("%v\n%s", err, out)
	}
}
