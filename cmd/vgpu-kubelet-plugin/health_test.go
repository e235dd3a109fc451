package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// TestPluginTaintsSickGPU runs the plugin on two simulated GPUs, injects
// XID 79 into the second and checks that the plugin republishes it tainted
// (the other untouched), reports it to the kubelet as unhealthy, and
// exports the health metrics.
func TestPluginTaintsSickGPU(t *testing.T) {
	p := newFakePlugin()
	cfg := replaceDriver(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	state := t.TempDir()
	metricsPort := freePort(t)
	done := make(chan int)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"--simulate", "2xL4", "--node-name", "n1", "--state-dir", state,
			"--metrics-port", strconv.Itoa(metricsPort), "--health-fatal-effect", "NoExecute",
			"--health-probe-interval", "50ms", "--health-quiet-period", "200ms"}, &bytes.Buffer{}, &stderr)
	}()
	select {
	case <-p.published:
	case code := <-done:
		t.Fatalf("exited with %d before publishing:\n%s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("nothing published")
	}
	if cfg.Health == nil {
		t.Fatal("the driver got no health reporter: WatchHealthStatus would say unsupported")
	}
	reports := make(chan kubeletplugin.DeviceHealthReport)
	go func() { _ = cfg.Health.WatchHealthStatus(ctx, reports) }()
	if r := <-reports; len(r.Devices) != 2 || r.Devices[0].Health != kubeletplugin.HealthStatusHealthy || r.Devices[1].Health != kubeletplugin.HealthStatusHealthy {
		t.Fatalf("first health report %+v", r)
	}

	inject(t, filepath.Join(state, "simulate-events.jsonl"), `{"gpu": 1, "xid": 79}`)
	select {
	case <-p.published:
	case <-time.After(10 * time.Second):
		t.Fatalf("not republished after XID 79:\n%s", stderr.String())
	}
	p.mu.Lock()
	res := p.publishes[len(p.publishes)-1]
	p.mu.Unlock()
	devices := res.Pools["n1"].Slices[0].Devices
	if len(devices) != 2 {
		t.Fatalf("%d devices published after XID 79, want 2 (the lost GPU stays, tainted)", len(devices))
	}
	if len(devices[0].Taints) != 0 {
		t.Errorf("healthy GPU tainted: %v", devices[0].Taints)
	}
	if tt := devices[1].Taints; len(tt) != 1 || tt[0].Key != "vgpu.hami.io/unhealthy" || tt[0].Value != "xid-79" || tt[0].Effect != resourceapi.DeviceTaintEffectNoExecute {
		t.Errorf("sick GPU's taints %v", tt)
	}
	for r := range reports {
		if r.Devices[1].Health == kubeletplugin.HealthStatusUnhealthy {
			if !strings.Contains(r.Devices[1].Message, "XID 79") || r.Devices[0].Health != kubeletplugin.HealthStatusHealthy {
				t.Errorf("health report %+v", r)
			}
			break
		}
	}
	body := httpBody(t, metricsPort, "/metrics")
	for _, want := range []string{`hami_dra_gpu_healthy{gpu_uuid=`, `index="1",node="n1"} 0`, `hami_dra_gpu_health_events_total{class="fatal",event="xid-79"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit code %d:\n%s", code, stderr.String())
	}
}

func TestSimulateEventsNeedsSimulate(t *testing.T) {
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"--node-name", "n1", "--simulate-events", "/tmp/x"}, &bytes.Buffer{}, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "--simulate-events needs --simulate") {
		t.Errorf("exit %d, stderr %s", code, stderr.String())
	}
	code = run(context.Background(), []string{"--node-name", "n1", "--simulate", "L4", "--health-fatal-effect", "Evict"}, &bytes.Buffer{}, &stderr)
	if code == exitOK || !strings.Contains(stderr.String(), "want NoSchedule or NoExecute") {
		t.Errorf("bad effect: exit %d, stderr %s", code, stderr.String())
	}
}

func inject(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}
