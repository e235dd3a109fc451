package realnode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	kubeletconfig "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"
)

func testNode(t *testing.T) *Node {
	dir := t.TempDir()
	return &Node{
		cfg:              Config{Name: "n", BinDir: "/b", Dir: dir, CDIDir: "/cdi"},
		KubeletRoot:      filepath.Join(dir, "kl"),
		ContainerdSocket: filepath.Join(dir, "c.sock"),
		PodLogsDir:       filepath.Join(dir, "pod-logs"),
	}
}

// TestKubeletConfig: the configuration decodes strictly as a
// KubeletConfiguration (a misspelt field would be an error, not ignored)
// and carries the settings these machines need.
func TestKubeletConfig(t *testing.T) {
	n := testNode(t)
	var c kubeletconfig.KubeletConfiguration
	if err := yaml.UnmarshalStrict([]byte(n.kubeletConfig(12345)), &c); err != nil {
		t.Fatalf("kubelet config: %v", err)
	}
	if c.FailCgroupV1 == nil || *c.FailCgroupV1 || c.CgroupDriver != "cgroupfs" || c.FailSwapOn == nil || *c.FailSwapOn {
		t.Errorf("cgroup v1 / cgroupfs / swap settings wrong: %+v", c)
	}
	if c.ContainerRuntimeEndpoint != "unix://"+n.ContainerdSocket || c.Port != 12345 || c.PodLogsDir != n.PodLogsDir {
		t.Errorf("endpoint %q port %d logs %q", c.ContainerRuntimeEndpoint, c.Port, c.PodLogsDir)
	}
	if c.Authorization.Mode != kubeletconfig.KubeletAuthorizationModeAlwaysAllow {
		t.Errorf("authorization mode %q: the API server reaches the kubelet anonymously", c.Authorization.Mode)
	}
}

// TestContainerdConfig: the configuration is valid TOML of version 3 and
// sets the CRI options the node depends on under the plugin IDs of
// containerd 2.x.
func TestContainerdConfig(t *testing.T) {
	n := testNode(t)
	var c struct {
		Version int
		Root    string
		Grpc    struct{ Address string }
		Plugins map[string]map[string]any
	}
	if _, err := toml.Decode(n.containerdConfig(), &c); err != nil {
		t.Fatalf("containerd config: %v", err)
	}
	if c.Version != 3 || c.Grpc.Address != n.ContainerdSocket {
		t.Errorf("version %d, address %q", c.Version, c.Grpc.Address)
	}
	rt := c.Plugins["io.containerd.cri.v1.runtime"]
	if rt["restrict_oom_score_adj"] != true {
		t.Error("restrict_oom_score_adj not set: runc cannot lower oom_score_adj without CAP_SYS_RESOURCE")
	}
	if dirs, _ := rt["cdi_spec_dirs"].([]any); len(dirs) != 1 || dirs[0] != "/cdi" {
		t.Errorf("cdi_spec_dirs %v, want [/cdi]", rt["cdi_spec_dirs"])
	}
	images := c.Plugins["io.containerd.cri.v1.images"]
	if pinned, _ := images["pinned_images"].(map[string]any); pinned["sandbox"] != SandboxImage {
		t.Errorf("sandbox image %v, want %s", images["pinned_images"], SandboxImage)
	}
	runc := rt["containerd"].(map[string]any)["runtimes"].(map[string]any)["runc"].(map[string]any)["options"].(map[string]any)
	if runc["BinaryName"] != "/b/runc" {
		t.Errorf("runc binary %v", runc["BinaryName"])
	}
}

func TestCheck(t *testing.T) {
	err := Check(t.TempDir())
	if err == nil {
		t.Fatal("no error for a bin dir without the binaries")
	}
	for _, want := range []string{"kubelet", "containerd", "runc", "make -C e2e realnode"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if os.Geteuid() != 0 && !strings.Contains(err.Error(), "root") {
		t.Errorf("error %q does not say it needs root", err)
	}
}
