package health

import (
	"errors"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		ev   discovery.Event
		want Class
	}{
		// The fatal examples.
		{xid(79), Fatal}, {xid(48), Fatal}, {xid(74), Fatal}, {xid(92), Fatal}, {xid(94), Fatal},
		{xid(95), Fatal}, {xid(119), Fatal}, {xid(120), Fatal},
		// Application errors.
		{xid(13), Ignored}, {xid(31), Ignored}, {xid(43), Ignored}, {xid(45), Ignored}, {xid(68), Ignored},
		// Recoverable, and XIDs nobody listed.
		{xid(63), Recoverable}, {xid(999), Recoverable},
		{discovery.Event{Kind: discovery.EventDoubleBitECC}, Fatal},
		{discovery.Event{Kind: discovery.EventGPULost}, Fatal},
		{discovery.Event{Kind: discovery.EventPoison}, Fatal},
		{discovery.Event{Kind: discovery.EventThermal}, Recoverable},
		{discovery.Event{Kind: "new-kind"}, Recoverable},
	}
	for _, tc := range tests {
		if got, what := Classify(tc.ev); got != tc.want || what == "" {
			t.Errorf("Classify(%v) = %v %q, want %v", tc.ev, got, what, tc.want)
		}
	}
}

func xid(n uint64) discovery.Event { return discovery.Event{Kind: discovery.EventXID, XID: n} }

// clock is a manual clock for the tracker.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) advance(d time.Duration) { c.now = c.now.Add(d) }
func gpus(uuids ...string) []discovery.GPU {
	out := make([]discovery.GPU, len(uuids))
	for i, u := range uuids {
		out[i] = discovery.GPU{UUID: u, Index: i}
	}
	return out
}

var errProbe = errors.New("row remapping pending")

// step is one thing that happens to GPU "a" of a two-GPU node, with the
// taint effect GPU "a" must have afterwards ("" = none).
type step struct {
	advance time.Duration
	event   *discovery.Event
	probe   *error // nil: no probe; points at nil: passing probe
	want    resourceapi.DeviceTaintEffect
	reason  string
}

func ev(e discovery.Event) *discovery.Event { return &e }

var pass, fail error = nil, errProbe

func TestTracker(t *testing.T) {
	const quiet = 5 * time.Minute
	ns, nx := resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNoExecute
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{{
		name: "application XID 13 is ignored",
		steps: []step{
			{event: ev(xid(13))},
			{probe: &pass},
		},
	}, {
		name: "XID 79 taints at once and recovers after the quiet period and three passing probes",
		steps: []step{
			{event: ev(xid(79)), want: ns, reason: "xid-79"},
			{probe: &fail, want: ns, reason: "xid-79"},
			{advance: time.Minute, probe: &pass, want: ns, reason: "xid-79"},
			{advance: time.Minute, probe: &pass, want: ns, reason: "xid-79"},
			{advance: time.Minute, probe: &pass, want: ns, reason: "xid-79"}, // 3 passes but only 3 min quiet
			{advance: 2 * time.Minute, probe: &pass},                         // 5 min quiet: recovered
		},
	}, {
		name: "a failing probe restarts the count",
		steps: []step{
			{event: ev(xid(48)), want: ns, reason: "xid-48"},
			{advance: 6 * time.Minute, probe: &pass, want: ns, reason: "xid-48"},
			{probe: &pass, want: ns, reason: "xid-48"},
			{probe: &fail, want: ns, reason: "xid-48"},
			{probe: &pass, want: ns, reason: "xid-48"},
			{probe: &pass, want: ns, reason: "xid-48"},
			{probe: &pass},
		},
	}, {
		name: "fatal events taint NoExecute when configured; recoverable ones NoSchedule",
		cfg:  Config{FatalEffect: nx},
		steps: []step{
			{event: ev(discovery.Event{Kind: discovery.EventThermal}), want: ns, reason: "thermal"},
			{event: ev(xid(79)), want: nx, reason: "xid-79"}, // escalates
			{event: ev(xid(63)), want: nx, reason: "xid-79"}, // never de-escalates
		},
	}, {
		name: "KeepFatal keeps a fatal GPU tainted",
		cfg:  Config{KeepFatal: true},
		steps: []step{
			{event: ev(xid(79)), want: ns, reason: "xid-79"},
			{advance: time.Hour, probe: &pass, want: ns, reason: "xid-79"},
			{probe: &pass, want: ns, reason: "xid-79"},
			{probe: &pass, want: ns, reason: "xid-79"},
			{probe: &pass, want: ns, reason: "xid-79"},
		},
	}, {
		name: "a failing probe on a healthy GPU taints it",
		steps: []step{
			{probe: &fail, want: ns, reason: "probe-failed"},
		},
	}, {
		name: "a relapse soon after recovering doubles the quiet period",
		steps: []step{
			{event: ev(xid(74)), want: ns, reason: "xid-74"},
			{advance: quiet, probe: &pass, want: ns, reason: "xid-74"},
			{probe: &pass, want: ns, reason: "xid-74"},
			{probe: &pass},
			{advance: time.Minute, event: ev(xid(74)), want: ns, reason: "xid-74"},
			{advance: quiet, probe: &pass, want: ns, reason: "xid-74"},
			{probe: &pass, want: ns, reason: "xid-74"},
			{probe: &pass, want: ns, reason: "xid-74"}, // 5 min is no longer enough
			{advance: quiet, probe: &pass},             // 10 min
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{now: time.Unix(1_800_000_000, 0)}
			cfg := tc.cfg
			cfg.Now = c.Now
			tr := NewTracker(cfg)
			tr.SetGPUs(gpus("a", "b"))
			for i, s := range tc.steps {
				c.advance(s.advance)
				if s.event != nil {
					e := *s.event
					e.UUID = "a"
					tr.Observe(e)
				}
				if s.probe != nil {
					tr.Probe("a", *s.probe)
					tr.Probe("b", nil)
				}
				checkTaint(t, i, tr.Taints("a"), s.want, s.reason)
				if got := tr.Taints("b"); len(got) != 0 {
					t.Fatalf("step %d: healthy GPU b tainted: %v", i, got)
				}
			}
		})
	}
}

func checkTaint(t *testing.T, step int, got []resourceapi.DeviceTaint, effect resourceapi.DeviceTaintEffect, reason string) {
	t.Helper()
	if effect == "" {
		if len(got) != 0 {
			t.Fatalf("step %d: taints %v, want none", step, got)
		}
		return
	}
	if len(got) != 1 || got[0].Effect != effect || got[0].Value != reason || got[0].Key != "vgpu.hami.io/unhealthy" {
		t.Fatalf("step %d: taints %v, want one %s taint with value %s", step, got, effect, reason)
	}
}

// TestNoFlapping drives a GPU that fails every few minutes, as a GPU with
// an intermittent fault does, for a day with probes every 30 s: the taint
// must change at most a few times, not with every event.
func TestNoFlapping(t *testing.T) {
	c := &clock{now: time.Unix(1_800_000_000, 0)}
	tr := NewTracker(Config{Now: c.Now})
	tr.SetGPUs(gpus("a"))
	transitions := 0
	tainted := false
	for tick := 0; tick < 24*60*2; tick++ {
		c.advance(30 * time.Second)
		if tick%14 == 0 { // an XID every 7 minutes
			tr.Observe(discovery.Event{UUID: "a", Kind: discovery.EventXID, XID: 61})
		}
		tr.Probe("a", nil)
		if now := len(tr.Taints("a")) > 0; now != tainted {
			tainted = now
			transitions++
		}
	}
	// Tainted at the first event, recovered once after 5 min quiet... but
	// the next event comes 2 min later and doubles the quiet period to 10
	// min, longer than the gap between events: it never recovers again.
	if transitions > 3 {
		t.Errorf("%d taint transitions in a day, want at most 3", transitions)
	}
	if !tainted {
		t.Error("a GPU failing every 7 minutes ended the day untainted")
	}
}

func TestReconcileKeepsLostGPUs(t *testing.T) {
	c := &clock{now: time.Unix(1_800_000_000, 0)}
	tr := NewTracker(Config{Now: c.Now})
	all := gpus("a", "b", "c")
	tr.Reconcile(all)
	got := tr.Reconcile([]discovery.GPU{all[0], all[2]})
	if len(got) != 3 || got[1].UUID != "b" {
		t.Fatalf("published %v, want a, b, c", got)
	}
	checkTaint(t, 0, tr.Taints("b"), resourceapi.DeviceTaintEffectNoSchedule, "gpu-lost")
	for _, u := range []string{"a", "c"} {
		if len(tr.Taints(u)) != 0 {
			t.Errorf("GPU %s tainted", u)
		}
	}
	// Back, and checked healthy for long enough.
	tr.Reconcile(all)
	c.advance(10 * time.Minute)
	for range 3 {
		tr.Probe("b", nil)
	}
	if len(tr.Taints("b")) != 0 {
		t.Error("GPU b still tainted after it came back")
	}
}

func TestReport(t *testing.T) {
	c := &clock{now: time.Unix(1_800_000_000, 0)}
	tr := NewTracker(Config{Now: c.Now})
	tr.SetGPUs(gpus("a", "b"))
	tr.Observe(discovery.Event{UUID: "b", Kind: discovery.EventXID, XID: 48})
	r := &Reporter{Tracker: tr, Pool: "node-1", DeviceName: func(g discovery.GPU) string { return "gpu-" + g.UUID }}
	got := r.Report(30 * time.Second)
	want := []kubeletplugin.DeviceHealth{
		{PoolName: "node-1", DeviceName: "gpu-a", Health: kubeletplugin.HealthStatusHealthy, LastUpdated: c.now, HealthCheckTimeout: 30 * time.Second},
		{PoolName: "node-1", DeviceName: "gpu-b", Health: kubeletplugin.HealthStatusUnhealthy, LastUpdated: c.now, HealthCheckTimeout: 30 * time.Second,
			Message: "XID 48: double-bit ECC error"},
	}
	if len(got.Devices) != len(want) {
		t.Fatalf("report %+v", got)
	}
	for i := range want {
		if got.Devices[i] != want[i] {
			t.Errorf("device %d: %+v, want %+v", i, got.Devices[i], want[i])
		}
	}
}
