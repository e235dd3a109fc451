package chart

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	dracel "k8s.io/dynamic-resource-allocation/cel"
	"sigs.k8s.io/yaml"
)

var (
	pluginOnce sync.Once
	pluginBin  string
	pluginErr  error
	pluginTmp  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pluginTmp != "" {
		os.RemoveAll(pluginTmp)
	}
	os.Exit(code)
}

// buildPlugin builds cmd/vgpu-kubelet-plugin of the repository the chart
// belongs to, once per test binary.
func buildPlugin(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the plugin")
	}
	pluginOnce.Do(func() {
		dir, err := Dir()
		if err != nil {
			pluginErr = err
			return
		}
		repo := filepath.Clean(filepath.Join(dir, "..", "..", ".."))
		pluginTmp, pluginErr = os.MkdirTemp("", "hami-dra-chart-test")
		if pluginErr != nil {
			return
		}
		pluginBin = filepath.Join(pluginTmp, "vgpu-kubelet-plugin")
		cmd := exec.Command("go", "build", "-o", pluginBin, "./cmd/vgpu-kubelet-plugin")
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			pluginErr = fmt.Errorf("build the plugin: %v\n%s", err, out)
		}
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	return pluginBin
}

var helpFlag = regexp.MustCompile(`(?m)^\s+-([a-z0-9][a-z0-9-]*)`)

// pluginArgs renders the chart and returns the plugin container's arguments
// with the downward-API variables filled in as the kubelet would.
func pluginArgs(t *testing.T, values map[string]any) []string {
	t.Helper()
	args, err := PluginArgs(mustRender(t, values), map[string]string{
		"NODE_NAME": "gpu-node-1", "POD_UID": "0b7d3a8e-2c4f-4a51-9d0e-5f6a7b8c9d01",
		"POD_NAME": "hami-dra-kubelet-plugin-abcde", "POD_NAMESPACE": DefaultNamespace,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range args {
		if strings.Contains(a, "$(") {
			t.Fatalf("unexpanded reference in %q", a)
		}
	}
	return args
}

// TestPluginAcceptsChartFlags checks every flag the chart passes against the
// plugin's own flag set, for every shape of the command line the chart
// renders. A flag the plugin does not know makes it exit at start-up.
func TestPluginAcceptsChartFlags(t *testing.T) {
	bin := buildPlugin(t)
	help, _ := exec.Command(bin, "--help").CombinedOutput()
	known := map[string]bool{}
	for _, m := range helpFlag.FindAllStringSubmatch(string(help), -1) {
		known[m[1]] = true
	}
	if len(known) == 0 {
		t.Fatalf("no flags in the plugin's --help:\n%s", help)
	}
	for name, values := range map[string]map[string]any{
		"defaults":  nil,
		"full":      fullValues(),
		"simulated": {"kubeletPlugin": map[string]any{"simulate": "2xH100-80GB"}},
	} {
		t.Run(name, func(t *testing.T) {
			var unknown []string
			for _, a := range pluginArgs(t, values) {
				flag := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-")
				if !known[flag] && !slices.Contains(unknown, flag) {
					unknown = append(unknown, flag)
				}
			}
			if len(unknown) > 0 {
				t.Errorf("the chart passes flags the plugin does not define: %q (plugin knows %v)", unknown, sortedSet(known))
			}
		})
	}
}

func sortedSet(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestChartClassesSelectPluginDevices runs the plugin's inventory command
// with the chart's own command line on simulated GPUs, and evaluates the
// chart's DeviceClass selectors against the devices it would publish: the
// all-GPUs class selects every one, each model class exactly its model.
func TestChartClassesSelectPluginDevices(t *testing.T) {
	bin := buildPlugin(t)
	values := map[string]any{
		"kubeletPlugin": map[string]any{"simulate": "2xH100-80GB,1xA100-40GB,1xL4"},
		"deviceClasses": map[string]any{"models": []any{
			map[string]any{"name": "a100", "family": "a100"},
			map[string]any{"name": "h100", "family": "h100", "minMemory": "70Gi"},
			map[string]any{"name": "l4", "model": "l4"},
		}},
	}
	args := pluginArgs(t, values)
	// Only the flags inventory needs; the rest are checked above.
	var invArgs []string
	for _, a := range args {
		for _, keep := range []string{"--driver-name=", "--node-name=", "--simulate=", "-v="} {
			if strings.HasPrefix(a, keep) {
				invArgs = append(invArgs, a)
			}
		}
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(context.Background(), bin, append([]string{"inventory"}, invArgs...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "NODE_NAME=gpu-node-1")
	if err := cmd.Run(); err != nil {
		t.Fatalf("inventory %q: %v\n%s", invArgs, err, stderr.String())
	}
	var devices []resourceapi.Device
	for _, doc := range strings.Split(stdout.String(), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var slice resourceapi.ResourceSlice
		if err := yaml.UnmarshalStrict([]byte(doc), &slice); err != nil {
			t.Fatalf("inventory output: %v\n%s", err, doc)
		}
		if slice.Spec.Driver != "vgpu.hami.io" {
			t.Errorf("slice %s has driver %q", slice.Name, slice.Spec.Driver)
		}
		devices = append(devices, slice.Spec.Devices...)
	}
	if len(devices) != 4 {
		t.Fatalf("inventory published %d devices, want 4", len(devices))
	}
	objs := mustRender(t, values)
	want := map[string][]string{
		"vgpu.hami.io":      {"A100", "H100", "H100", "L4"},
		"a100.vgpu.hami.io": {"A100"},
		"h100.vgpu.hami.io": {"H100", "H100"},
		"l4.vgpu.hami.io":   {"L4"},
	}
	for class, models := range want {
		expr := celOf(t, Find(objs, KindDeviceClass, class))
		compiled := dracel.GetCompiler(dracel.Features{EnableConsumableCapacity: true}).CompileCELExpression(expr, dracel.Options{})
		if compiled.Error != nil {
			t.Fatalf("%s: %v", class, compiled.Error)
		}
		var got []string
		for _, d := range devices {
			ok, _, err := compiled.DeviceMatches(context.Background(), dracel.Device{
				Driver: "vgpu.hami.io", AllowMultipleAllocations: d.AllowMultipleAllocations,
				Attributes: d.Attributes, Capacity: d.Capacity,
			})
			if err != nil {
				t.Fatalf("%s on %s: %v", class, d.Name, err)
			}
			if ok {
				product := *d.Attributes["productName"].StringValue
				for _, m := range []string{"A100", "H100", "L4"} {
					if strings.Contains(product, m) {
						got = append(got, m)
					}
				}
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, models) {
			t.Errorf("class %s selects %v, want %v", class, got, models)
		}
	}
}
