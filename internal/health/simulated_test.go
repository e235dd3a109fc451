package health

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

// node is a simulated GPU node with health monitoring, as the plugin runs
// it: injected events reach the tracker through the simulated NVML, the
// tracker's taints go into the published devices and its state into the
// kubelet's health stream.
type node struct {
	t       *testing.T
	ctx     context.Context
	sim     *discovery.SimulatedDiscoverer
	events  string
	tracker *Tracker
	reports chan kubeletplugin.DeviceHealthReport
}

const testNode = "node-h"

func newNode(t *testing.T, cfg Config) *node {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	p, err := discovery.LoadProfile("4xA100-80GB")
	if err != nil {
		t.Fatal(err)
	}
	sim, err := discovery.NewSimulated(testNode, p)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, ctx: ctx, sim: sim, events: filepath.Join(t.TempDir(), "events.jsonl"), reports: make(chan kubeletplugin.DeviceHealthReport)}
	if err := sim.EnableEventInjection(ctx, n.events); err != nil {
		t.Fatal(err)
	}
	n.tracker = NewTracker(cfg)
	n.tracker.Reconcile(n.discover())
	m := &Monitor{Source: sim, Tracker: n.tracker, ProbeInterval: 10 * time.Millisecond}
	go m.Run(ctx)
	r := &Reporter{Tracker: n.tracker, Pool: testNode, DeviceName: inventory.DeviceName, Resend: time.Hour}
	go func() { _ = r.WatchHealthStatus(ctx, n.reports) }()
	return n
}

func (n *node) discover() []discovery.GPU {
	gpus, err := n.sim.Discover(n.ctx)
	if err != nil {
		n.t.Fatal(err)
	}
	return gpus
}

// devices is what the plugin would publish now.
func (n *node) devices() []resourceapi.Device {
	res, _ := inventory.Build(n.ctx, testNode, n.tracker.Reconcile(n.discover()), inventory.WithTaints(n.tracker.Taints))
	var out []resourceapi.Device
	for _, s := range inventory.ResourceSlices("vgpu.hami.io", testNode, res) {
		out = append(out, s.Spec.Devices...)
	}
	return out
}

func (n *node) inject(line string) {
	f, err := os.OpenFile(n.events, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		n.t.Fatal(err)
	}
}

// waitReport waits for a health report in which device dev has health h.
func (n *node) waitReport(dev string, h kubeletplugin.HealthStatus) kubeletplugin.DeviceHealthReport {
	n.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r := <-n.reports:
			for _, d := range r.Devices {
				if d.DeviceName == dev && d.Health == h {
					return r
				}
			}
		case <-timeout:
			n.t.Fatalf("no health report with %s %s", dev, h)
		}
	}
}

func uuidOf(i int) string {
	return discovery.SimulatedUUID(testNode, i, "NVIDIA A100-SXM4-80GB")
}

func TestSimulatedXIDs(t *testing.T) {
	tests := []struct {
		name   string
		inject string
		effect resourceapi.DeviceTaintEffect
		reason string
		// lost: the GPU disappears from discovery (and stays published).
		lost bool
	}{
		{"XID 79 fallen off the bus", `{"gpu": 1, "xid": 79}`, resourceapi.DeviceTaintEffectNoExecute, "xid-79", true},
		{"XID 48 double-bit ECC", `{"gpu": 1, "xid": 48}`, resourceapi.DeviceTaintEffectNoExecute, "xid-48", false},
		{"XID 13 application error", `{"gpu": 1, "xid": 13}`, "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, Config{FatalEffect: resourceapi.DeviceTaintEffectNoExecute, QuietPeriod: 200 * time.Millisecond, RecoveryProbes: 3})
			sick := inventory.DeviceName(discovery.GPU{UUID: uuidOf(1)})
			before := n.devices()
			n.waitReport(sick, kubeletplugin.HealthStatusHealthy)

			n.inject(tc.inject)
			if tc.effect == "" {
				// Nothing may change: give the event time to arrive,
				// then compare.
				deadline := time.Now().Add(300 * time.Millisecond)
				for time.Now().Before(deadline) {
					if st, _ := n.tracker.Status(uuidOf(1)); !st.Healthy {
						t.Fatalf("GPU unhealthy after an application error: %+v", st)
					}
					time.Sleep(20 * time.Millisecond)
				}
				if !equality.Semantic.DeepEqual(before, n.devices()) {
					t.Fatal("devices changed after an application error")
				}
				return
			}
			r := n.waitReport(sick, kubeletplugin.HealthStatusUnhealthy)
			for _, d := range r.Devices {
				if d.DeviceName != sick && d.Health != kubeletplugin.HealthStatusHealthy {
					t.Errorf("healthy GPU %s reported %s", d.DeviceName, d.Health)
				}
			}
			if got := len(n.discover()); tc.lost != (got == 3) {
				t.Errorf("discovery finds %d GPUs", got)
			}
			after := n.devices()
			if len(after) != 4 {
				t.Fatalf("%d devices published, want all 4 (a lost GPU stays, tainted)", len(after))
			}
			for i, d := range after {
				if d.Name == sick {
					if len(d.Taints) != 1 || d.Taints[0].Effect != tc.effect || d.Taints[0].Value != tc.reason {
						t.Errorf("sick GPU's taints %v, want %s %s", d.Taints, tc.effect, tc.reason)
					}
					continue
				}
				// Healthy GPUs: the very same device as before, so the
				// shares allocated on them are untouched.
				if !equality.Semantic.DeepEqual(d, before[i]) {
					t.Errorf("healthy device %s changed: %+v", d.Name, d)
				}
			}
			// The fault lasts: the recovery check keeps failing, so the
			// GPU stays tainted well past the quiet period.
			time.Sleep(500 * time.Millisecond)
			if st, _ := n.tracker.Status(uuidOf(1)); st.Healthy || st.LastProbeError == "" {
				t.Fatalf("GPU recovered without a reset: %+v", st)
			}
			// A GPU reset clears it; after the quiet period and three
			// passing checks the taint goes.
			n.inject(`{"gpu": 1, "reset": true}`)
			n.waitReport(sick, kubeletplugin.HealthStatusHealthy)
			if !equality.Semantic.DeepEqual(before, n.devices()) {
				t.Error("devices after recovery differ from before the fault")
			}
		})
	}
}

func TestParseInjectedEventErrors(t *testing.T) {
	for _, line := range []string{
		`{"gpu": 4, "xid": 79}`,
		`{"gpu": -1, "xid": 79}`,
		`{"gpu": 0}`,
		`{"gpu": 0, "xid": 79, "reset": true}`,
		`{"gpu": 0, "event": "meltdown"}`,
		`{"gpu": 0, "xid": 79, "extra": 1}`,
		`{"gpu": 0, "xid": 79} {}`,
		`not json`,
	} {
		if _, err := discovery.ParseInjectedEvent([]byte(line), 4); err == nil {
			t.Errorf("%s: no error", line)
		}
	}
}
