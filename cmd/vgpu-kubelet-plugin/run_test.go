package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/yaml"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/driver"
	"github.com/hami-dra/hami-dra/internal/inventory"
	"github.com/hami-dra/hami-dra/internal/metrics"
)

func mustBuild(ctx context.Context, gpus []discovery.GPU) resourceslice.DriverResources {
	res, _ := inventory.Build(ctx, "n1", gpus)
	return res
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// decodeSlices reads the inventory command's YAML stream.
func decodeSlices(t *testing.T, out string) []resourceapi.ResourceSlice {
	t.Helper()
	var slices []resourceapi.ResourceSlice
	for _, doc := range strings.Split(out, "---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var s resourceapi.ResourceSlice
		if err := yaml.UnmarshalStrict([]byte(doc), &s); err != nil {
			t.Fatalf("inventory output is not a ResourceSlice: %v\n%s", err, doc)
		}
		slices = append(slices, s)
	}
	return slices
}

func TestInventoryCommand(t *testing.T) {
	goodFile := writeFile(t, "node.yaml", "gpus:\n- model: H100-80GB\n  count: 2\n- model: T4\n")
	emptyFile := writeFile(t, "none.yaml", "gpus: []\n")
	badFile := writeFile(t, "bad.yaml", "gpus:\n- model: H100-80GB\n  coutn: 2\n")
	migFile := writeFile(t, "mig.yaml", "gpus:\n- model: A100-40GB\n  migEnabled: true\n")
	missingLib := filepath.Join(t.TempDir(), "libnvidia-ml.so.1")

	tests := []struct {
		name        string
		args        []string
		wantCode    int
		wantDevices int      // with wantCode 0
		wantLog     []string // substrings of the single log line
	}{
		{name: "inline profile", args: []string{"--simulate", "4xA100-80GB,2xL4", "--node-name", "n1"}, wantDevices: 6},
		{name: "profile file", args: []string{"--simulate", goodFile, "--node-name", "n1"}, wantDevices: 3},
		{name: "node without GPUs: empty inventory", args: []string{"--simulate", emptyFile, "--node-name", "n1"}, wantDevices: 0},
		{name: "only MIG GPUs: empty inventory and a log line", args: []string{"--simulate", migFile, "--node-name", "n1"}, wantDevices: 0, wantLog: []string{"MIG"}},
		{name: "malformed profile file", args: []string{"--simulate", badFile, "--node-name", "n1"}, wantCode: exitError, wantLog: []string{"line 3", "coutn"}},
		{name: "unknown model", args: []string{"--simulate", "2xB300", "--node-name", "n1"}, wantCode: exitError, wantLog: []string{"B300"}},
		{name: "missing profile file", args: []string{"--simulate", "/nonexistent/node.yaml", "--node-name", "n1"}, wantCode: exitError, wantLog: []string{"no such file"}},
		{name: "node without the NVIDIA driver", args: []string{"--nvml-library-path", missingLib, "--node-name", "n1"}, wantCode: exitError, wantLog: []string{"libnvidia-ml.so.1 not found"}},
		{name: "bad flag", args: []string{"--no-such-flag"}, wantCode: exitUsage},
		{name: "stray argument", args: []string{"--simulate", "L4", "extra"}, wantCode: exitUsage},
		{name: "help", args: []string{"-h"}, wantCode: exitOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"inventory"}, tc.args...), &stdout, &stderr)
			if code != tc.wantCode {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", code, tc.wantCode, stderr.String())
			}
			if len(tc.wantLog) > 0 {
				lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
				if len(lines) != 1 {
					t.Errorf("want one log line, got %d:\n%s", len(lines), stderr.String())
				}
				for _, want := range tc.wantLog {
					if !strings.Contains(stderr.String(), want) {
						t.Errorf("log does not mention %q:\n%s", want, stderr.String())
					}
				}
			}
			if tc.wantCode != exitOK || tc.name == "help" {
				return
			}
			slices := decodeSlices(t, stdout.String())
			if len(slices) != 1 {
				t.Fatalf("want one ResourceSlice, got %d", len(slices))
			}
			if got := len(slices[0].Spec.Devices); got != tc.wantDevices {
				t.Errorf("%d devices, want %d", got, tc.wantDevices)
			}
			if slices[0].Spec.Driver != "vgpu.hami.io" || slices[0].Spec.Pool.Name != "n1" {
				t.Errorf("driver %q pool %q", slices[0].Spec.Driver, slices[0].Spec.Pool.Name)
			}
		})
	}
}

// TestInventoryIsStable checks that two runs print the same slices, which is
// what "stable device names" means to someone diffing the output.
func TestInventoryIsStable(t *testing.T) {
	var first, second, other bytes.Buffer
	args := []string{"inventory", "--simulate", "8xH100-80GB", "--node-name", "n1"}
	if run(context.Background(), args, &first, &bytes.Buffer{}) != 0 || run(context.Background(), args, &second, &bytes.Buffer{}) != 0 {
		t.Fatal("inventory failed")
	}
	if first.String() != second.String() {
		t.Error("two runs printed different inventories")
	}
	if run(context.Background(), []string{"inventory", "--simulate", "8xH100-80GB", "--node-name", "n2"}, &other, &bytes.Buffer{}) != 0 {
		t.Fatal("inventory failed")
	}
	a, b := decodeSlices(t, first.String()), decodeSlices(t, other.String())
	if a[0].Spec.Devices[0].Name == b[0].Spec.Devices[0].Name {
		t.Error("two nodes share a simulated GPU")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpGet(t *testing.T, port int, path string) int {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, port int, path string) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met in 5s")
}

// fakePlugin stands in for the driver.
type fakePlugin struct {
	mu        sync.Mutex
	publishes []resourceslice.DriverResources
	updates   [][]discovery.GPU
	published chan struct{}
	stopped   bool
	fail      error
}

func newFakePlugin() *fakePlugin { return &fakePlugin{published: make(chan struct{}, 10)} }

// PreparedClaims makes the fake a metrics.Source, as the driver is.
func (p *fakePlugin) PreparedClaims() []metrics.ClaimQuota {
	return []metrics.ClaimQuota{{Namespace: "ns", Name: "c", UID: "u", GPUs: []metrics.GPUQuota{{UUID: "GPU-1", MemoryBytes: 1 << 30, Cores: 30}}}}
}

func (p *fakePlugin) PublishResources(_ context.Context, res resourceslice.DriverResources) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	p.publishes = append(p.publishes, res)
	p.published <- struct{}{}
	return nil
}

func (p *fakePlugin) UpdateGPUs(gpus []discovery.GPU) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.updates = append(p.updates, gpus)
}

func (p *fakePlugin) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
}

func devicesIn(res resourceslice.DriverResources) int {
	n := 0
	for _, pool := range res.Pools {
		for _, s := range pool.Slices {
			n += len(s.Devices)
		}
	}
	return n
}

// replaceDriver swaps the driver and the API client for fakes.
func replaceDriver(t *testing.T, p *fakePlugin) *driver.Config {
	t.Helper()
	var got driver.Config
	oldStart, oldClient := startPlugin, newKubeClient
	startPlugin = func(_ context.Context, cfg driver.Config, _ []discovery.GPU) (plugin, error) {
		got = cfg
		return p, nil
	}
	// The fake driver never talks to the API server.
	newKubeClient = func(string, float32, int) (kubernetes.Interface, error) { return nil, nil }
	t.Cleanup(func() { startPlugin, newKubeClient = oldStart, oldClient })
	return &got
}

func TestPluginStartsPublishesAndStops(t *testing.T) {
	p := newFakePlugin()
	cfg := replaceDriver(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int)
	var stderr bytes.Buffer
	healthPort, metricsPort := freePort(t), freePort(t)
	go func() {
		done <- run(ctx, []string{"--simulate", "2xL4", "--node-name", "n1", "--state-dir", "/tmp/state",
			"--health-port", strconv.Itoa(healthPort), "--metrics-port", strconv.Itoa(metricsPort), "--pod-uid", "pod-uid-1"}, &bytes.Buffer{}, &stderr)
	}()
	select {
	case <-p.published:
	case code := <-done:
		t.Fatalf("exited with %d before publishing:\n%s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("nothing published")
	}
	// Readiness follows the first publication (set right after it returns).
	waitFor(t, func() bool { return httpGet(t, healthPort, "/readyz") == http.StatusOK })
	if code := httpGet(t, healthPort, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	body := httpBody(t, metricsPort, "/metrics")
	if !strings.Contains(body, `hami_dra_gpus{state="published"} 2`) {
		t.Errorf("/metrics lacks the published GPU count:\n%s", body)
	}
	// The driver's claim metrics are served by the same endpoint.
	if !strings.Contains(body, `hami_dra_claim_cores_limit_percent{claim="c",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="n1",pod="",uid="u"} 30`) {
		t.Errorf("/metrics lacks the driver's claim metrics:\n%s", body)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit code %d after shutdown", code)
	}
	if !p.stopped {
		t.Error("driver not stopped")
	}
	if devicesIn(p.publishes[0]) != 2 {
		t.Errorf("published %d devices, want 2", devicesIn(p.publishes[0]))
	}
	if cfg.DriverName != "vgpu.hami.io" || cfg.NodeName != "n1" || cfg.StateDir != "/tmp/state" ||
		cfg.PluginDataDir != "/var/lib/kubelet/plugins/vgpu.hami.io" || cfg.ComposeNvidiaCDI || cfg.DeviceName == nil ||
		cfg.RollingUpdateUID != "pod-uid-1" {
		t.Errorf("driver configuration %+v", *cfg)
	}
}

func TestPluginFailures(t *testing.T) {
	missingLib := filepath.Join(t.TempDir(), "libnvidia-ml.so.1")
	badFile := writeFile(t, "bad.yaml", "gpus: [\n")
	tests := []struct {
		name    string
		args    []string
		publish error
		wantLog string
	}{
		{name: "no node name", args: []string{"--simulate", "L4", "--node-name", ""}, wantLog: "no node name"},
		{name: "no NVIDIA driver", args: []string{"--nvml-library-path", missingLib, "--node-name", "n1"}, wantLog: "not found"},
		{name: "malformed profile", args: []string{"--simulate", badFile, "--node-name", "n1"}, wantLog: "line"},
		{name: "API server refuses the slices", args: []string{"--simulate", "L4", "--node-name", "n1"}, publish: errors.New("forbidden"), wantLog: "forbidden"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newFakePlugin()
			p.fail = tc.publish
			replaceDriver(t, p)
			var stderr bytes.Buffer
			code := run(context.Background(), tc.args, &bytes.Buffer{}, &stderr)
			if code != exitError {
				t.Fatalf("exit code %d, want %d:\n%s", code, exitError, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantLog) {
				t.Errorf("log does not mention %q:\n%s", tc.wantLog, stderr.String())
			}
		})
	}
}

// changingDiscoverer returns its GPU lists in turn, or err.
type changingDiscoverer struct {
	mu    sync.Mutex
	lists [][]discovery.GPU
	errs  []error
	calls int
}

func (d *changingDiscoverer) Discover(context.Context) ([]discovery.GPU, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := min(d.calls, len(d.lists)-1)
	d.calls++
	return d.lists[i], d.errs[i]
}

func (d *changingDiscoverer) Close() error { return nil }

func TestRepublishLoop(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gpu := func(uuid string, mig bool) discovery.GPU {
		return discovery.GPU{UUID: uuid, ProductName: "NVIDIA L4", MemoryBytes: 23034 << 20, NUMANode: -1, MIGEnabled: mig}
	}
	two := []discovery.GPU{gpu("GPU-a", false), gpu("GPU-b", false)}
	d := &changingDiscoverer{
		lists: [][]discovery.GPU{
			two,                   // unchanged: no republish
			nil,                   // NVML failed: keep what is published
			{gpu("GPU-a", false)}, // a GPU fell off the bus: republish
			{gpu("GPU-a", false), gpu("GPU-b", true)}, // MIG on: same inventory, no republish
			two, // back: republish
		},
		errs: []error{nil, errors.New("NVML: GPU is lost"), nil, nil, nil},
	}
	p := newFakePlugin()
	ticks := make(chan time.Time)
	done := make(chan error)
	initial := mustBuild(ctx, two)
	go func() { done <- republishLoop(ctx, d, p, "n1", initial, ticks) }()
	for range 5 {
		ticks <- time.Now()
	}
	// One more tick makes sure the fifth discovery has been handled.
	ticks <- time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, res := range p.publishes {
		got = append(got, devicesIn(res))
	}
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Errorf("republished device counts %v, want [1 2]", got)
	}
	if len(p.updates) != 2 || len(p.updates[0]) != 1 || len(p.updates[1]) != 2 {
		t.Errorf("driver updates %v", p.updates)
	}
}

func TestReadiness(t *testing.T) {
	var r readiness
	h := healthHandler(&r)
	for _, tc := range []struct {
		ready bool
		path  string
		want  int
	}{
		{false, "/healthz", http.StatusOK},
		{false, "/readyz", http.StatusServiceUnavailable},
		{true, "/readyz", http.StatusOK},
	} {
		r.ready.Store(tc.ready)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != tc.want {
			t.Errorf("ready=%v %s: %d, want %d", tc.ready, tc.path, rec.Code, tc.want)
		}
	}
}
