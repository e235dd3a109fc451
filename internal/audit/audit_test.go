package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hami-dra/hami-dra/internal/region"
)

const gib = 1 << 30

// fakeNode is a node's GPUs, pods and processes as the audit sees them.
type fakeNode struct {
	procs   map[string][]Process // GPU -> processes
	samples map[string][]Sample  // GPU -> utilisation samples
	podOf   map[uint32]string    // PID -> pod UID
	pods    map[string]Pod
	claims  []Claim
	killed  []uint32
	reports []Finding
	now     time.Time
}

func (n *fakeNode) Processes(uuid string) ([]Process, error) {
	if uuid == "GPU-broken" {
		return nil, fmt.Errorf("GPU is lost")
	}
	return n.procs[uuid], nil
}

func (n *fakeNode) Utilization(uuid string, since uint64) ([]Sample, error) {
	if n.samples == nil {
		return nil, nil
	}
	var out []Sample
	for _, s := range n.samples[uuid] {
		if s.TimestampUs > since {
			out = append(out, s)
		}
	}
	return out, nil
}

func (n *fakeNode) Report(_ context.Context, f Finding) { n.reports = append(n.reports, f) }

func (n *fakeNode) auditor(grace time.Duration) (*Auditor, *Metrics) {
	m := NewMetrics(nil)
	return New(Config{
		GPUs:     n,
		NodeGPUs: func() []string { return []string{"GPU-0", "GPU-1"} },
		Claims:   func() []Claim { return n.claims },
		Pod: func(uid string) (Pod, bool) {
			p, ok := n.pods[uid]
			return p, ok
		},
		PodOf: func(pid uint32) (PodProcess, error) {
			uid, ok := n.podOf[pid]
			if !ok {
				return PodProcess{}, ErrNotAPod
			}
			return PodProcess{PodUID: uid}, nil
		},
		Kill: func(pid uint32) error {
			n.killed = append(n.killed, pid)
			return nil
		},
		Reporter:      n,
		Metrics:       m,
		Now:           func() time.Time { return n.now },
		MemoryMargin:  256 << 20,
		Grace:         grace,
		ComputeMargin: 10,
		ComputeWindow: 30 * time.Second,
	}), m
}

// twoTenants: claim a (4 GiB, 30% hard cap) used by pod A with PIDs 10
// and 11; claim b (8 GiB, best effort) used by pod B with PID 20; both on
// GPU-0. PID 99 is a host process.
func twoTenants() *fakeNode {
	return &fakeNode{
		procs: map[string][]Process{"GPU-0": {{10, 1 * gib}, {11, 2 * gib}, {20, 7 * gib}, {99, 1 * gib}}},
		podOf: map[uint32]string{10: "uid-a", 11: "uid-a", 20: "uid-b"},
		pods: map[string]Pod{
			"uid-a": {UID: "uid-a", Namespace: "ns", Name: "pod-a", Claims: []string{"claim-a"}},
			"uid-b": {UID: "uid-b", Namespace: "ns", Name: "pod-b", Claims: []string{"claim-b"}},
		},
		claims: []Claim{
			{UID: "ca", Namespace: "ns", Name: "claim-a", GPUs: []GPUQuota{{UUID: "GPU-0", MemoryBytes: 4 * gib, Cores: 30, HardCap: true}}},
			{UID: "cb", Namespace: "ns", Name: "claim-b", GPUs: []GPUQuota{{UUID: "GPU-0", MemoryBytes: 8 * gib}}},
		},
		now: time.Unix(1000, 0),
	}
}

func TestUnderQuotaNothingHappens(t *testing.T) {
	n := twoTenants()
	a, m := n.auditor(10 * time.Second)
	for i := 0; i < 5; i++ {
		a.Round(context.Background())
		n.now = n.now.Add(10 * time.Second)
	}
	if len(n.killed) != 0 || len(n.reports) != 0 {
		t.Fatalf("killed %v, reported %v", n.killed, n.reports)
	}
	if got := value(m.memory.WithLabelValues("ns", "claim-a", "GPU-0")); got != 3*gib {
		t.Errorf("claim-a memory metric %v, want 3 GiB (NVML's figures)", got)
	}
	if got := value(m.unclaimed.WithLabelValues("GPU-0")); got != 1 {
		t.Errorf("unclaimed processes %v, want 1 (the host PID)", got)
	}
	if got := value(m.unclaimedMemory.WithLabelValues("GPU-0")); got != 1*gib {
		t.Errorf("unclaimed memory %v", got)
	}
}

func TestOverQuotaKilledAfterGrace(t *testing.T) {
	for _, tc := range []struct {
		name       string
		action     Action
		wantKilled []uint32
	}{
		{"kill (default)", "", []uint32{11}},
		{"kill", ActionKill, []uint32{11}},
		{"warn", ActionWarn, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := twoTenants()
			n.claims[0].MemoryAction = tc.action
			// PID 11 bypasses libvgpu and grows to 6 GiB: the claim holds 7 GiB of 4.
			n.procs["GPU-0"][1].MemoryBytes = 6 * gib
			a, m := n.auditor(30 * time.Second)
			a.Round(context.Background())
			if len(n.reports) != 1 || n.reports[0].Reason != ReasonMemoryOverQuota || len(n.killed) != 0 {
				t.Fatalf("first round: reports %+v, killed %v", n.reports, n.killed)
			}
			msg := n.reports[0].Message
			for _, want := range []string{"ns/claim-a", "7168 MiB", "4096 MiB", "host PID 11", "6144 MiB"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message lacks %q: %s", want, msg)
				}
			}
			if len(n.reports[0].Pods) != 1 || n.reports[0].Pods[0].Name != "pod-a" {
				t.Errorf("reported pods %+v", n.reports[0].Pods)
			}
			if got := value(m.overQuota.WithLabelValues("ns", "claim-a", "GPU-0")); got != 1 {
				t.Errorf("over-quota metric %v", got)
			}
			// Within the grace period: reported once, nothing killed.
			n.now = n.now.Add(20 * time.Second)
			a.Round(context.Background())
			if len(n.reports) != 1 || len(n.killed) != 0 {
				t.Fatalf("within grace: reports %d, killed %v", len(n.reports), n.killed)
			}
			n.now = n.now.Add(10 * time.Second)
			a.Round(context.Background())
			if fmt.Sprint(n.killed) != fmt.Sprint(tc.wantKilled) {
				t.Fatalf("after grace killed %v, want %v (the largest process, enough to get under; never the neighbour's 20)", n.killed, tc.wantKilled)
			}
			if tc.wantKilled != nil {
				if n.reports[len(n.reports)-1].Reason != ReasonKilled {
					t.Errorf("no kill event: %+v", n.reports)
				}
				if got := value(m.kills.WithLabelValues("ns", "claim-a", "GPU-0")); got != 1 {
					t.Errorf("kills metric %v", got)
				}
			} else if len(n.reports) != 1 {
				t.Errorf("warn mode reported %d times, want once per episode", len(n.reports))
			}
		})
	}
}

func TestMarginTolerated(t *testing.T) {
	n := twoTenants()
	n.procs["GPU-0"][1].MemoryBytes = 3*gib + 200<<20 // 4 GiB + 200 MiB: within the 256 MiB margin
	a, _ := n.auditor(0)
	a.Round(context.Background())
	if len(n.reports) != 0 || len(n.killed) != 0 {
		t.Fatalf("within margin: reports %+v, killed %v", n.reports, n.killed)
	}
}

func TestReusedPIDNotKilled(t *testing.T) {
	n := twoTenants()
	n.procs["GPU-0"][1].MemoryBytes = 6 * gib
	a, _ := n.auditor(0)
	// PID 11 exits after NVML listed it and its number goes to a process
	// of pod B before the kill: the audit checks the cgroup again.
	calls := 0
	a.cfg.PodOf = func(pid uint32) (PodProcess, error) {
		if pid == 11 {
			calls++
			if calls > 1 {
				return PodProcess{PodUID: "uid-b"}, nil
			}
		}
		uid, ok := n.podOf[pid]
		if !ok {
			return PodProcess{}, ErrNotAPod
		}
		return PodProcess{PodUID: uid}, nil
	}
	a.Round(context.Background())
	for _, pid := range n.killed {
		if pid == 11 {
			t.Fatal("killed PID 11 after it moved to another pod")
		}
	}
	if len(n.killed) != 0 {
		t.Errorf("killed %v: PID 11's memory went with it, the claim's other process is within the quota", n.killed)
	}
}

func TestSharedClaimSumsPods(t *testing.T) {
	n := twoTenants()
	// pod C shares claim-a: its 2 GiB count against the same 4 GiB quota.
	n.pods["uid-c"] = Pod{UID: "uid-c", Namespace: "ns", Name: "pod-c", Claims: []string{"claim-a"}}
	n.podOf[30] = "uid-c"
	n.procs["GPU-0"] = append(n.procs["GPU-0"], Process{30, 2 * gib})
	a, _ := n.auditor(time.Minute)
	a.Round(context.Background())
	if len(n.reports) != 1 || len(n.reports[0].Pods) != 2 {
		t.Fatalf("reports %+v, want one naming both pods", n.reports)
	}
}

func TestClaimOnAnotherGPUIsNotCharged(t *testing.T) {
	n := twoTenants()
	// pod A also runs on GPU-1, which claim-a has no share of.
	n.procs["GPU-1"] = []Process{{12, 40 * gib}}
	n.podOf[12] = "uid-a"
	a, m := n.auditor(0)
	a.Round(context.Background())
	if len(n.killed) != 0 {
		t.Fatalf("killed %v", n.killed)
	}
	if got := value(m.unclaimed.WithLabelValues("GPU-1")); got != 1 {
		t.Errorf("GPU-1 unclaimed %v, want 1", got)
	}
}

func TestBrokenGPUCounted(t *testing.T) {
	n := twoTenants()
	a, m := n.auditor(0)
	a.cfg.NodeGPUs = func() []string { return []string{"GPU-broken", "GPU-0"} }
	a.Round(context.Background())
	if got := value(m.errors.WithLabelValues("GPU-broken")); got != 1 {
		t.Errorf("errors %v", got)
	}
	if got := value(m.rounds); got != 1 {
		t.Errorf("rounds %v", got)
	}
}

func TestComputeOverShareReported(t *testing.T) {
	for _, tc := range []struct {
		name      string
		util      uint32 // claim-a's processes, each, per period
		hardCap   bool
		wantEvent bool
	}{
		{"within share plus margin", 19, true, false}, // 38%: 30 + 10 tolerated
		{"over", 30, true, true},                      // 60%
		{"best effort may use more", 30, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := twoTenants()
			n.claims[0].GPUs[0].HardCap = tc.hardCap
			a, m := n.auditor(time.Hour)
			n.samples = map[string][]Sample{}
			ts := uint64(1_000_000)
			for r := 0; r < 8; r++ { // 8 rounds of 5 s: 40 s, past the 30 s window
				for p := 0; p < 30; p++ { // 6 periods a second
					ts += 166_667
					n.samples["GPU-0"] = append(n.samples["GPU-0"], Sample{10, ts, tc.util}, Sample{11, ts, tc.util}, Sample{20, ts, 20})
				}
				a.Round(context.Background())
				n.now = n.now.Add(5 * time.Second)
			}
			var got []Finding
			for _, f := range n.reports {
				if f.Reason == ReasonComputeOver {
					got = append(got, f)
				}
			}
			if tc.wantEvent != (len(got) == 1) || len(got) > 1 {
				t.Fatalf("compute reports %+v, want event %v (once)", got, tc.wantEvent)
			}
			if v := value(m.compute.WithLabelValues("ns", "claim-a", "GPU-0")); v != float64(2*tc.util) {
				t.Errorf("measured share %v, want %d", v, 2*tc.util)
			}
			if len(n.killed) != 0 {
				t.Errorf("killed %v for compute", n.killed)
			}
		})
	}
}

// value reads a gauge or counter.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return m.Counter.GetValue()
}

// TestEventQuotesLibvgpuAccounting: the over-quota event puts libvgpu's own
// count (the container-written region) beside NVML's, so a bypass or a
// zeroed region shows as a disagreement.
func TestEventQuotesLibvgpuAccounting(t *testing.T) {
	for _, tc := range []struct {
		name   string
		region []byte
		want   string
	}{
		{"region says 1 GiB", region.Image(region.Device{UUID: "GPU-0", MemoryUsedBytes: 1 * gib}), "(NVML, libvgpu counted 1024 MiB)"},
		{"no region", nil, "(NVML, no libvgpu accounting)"},
		{"not a region", []byte("zeroed by the tenant"), "(NVML, no libvgpu accounting)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := twoTenants()
			n.procs["GPU-0"][1].MemoryBytes = 6 * gib
			path := filepath.Join(t.TempDir(), "vgpu.shr")
			if tc.region != nil {
				if err := os.WriteFile(path, tc.region, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			n.claims[0].RegionPath = path
			a, _ := n.auditor(time.Minute)
			a.Round(context.Background())
			if len(n.reports) != 1 || !strings.Contains(n.reports[0].Message, tc.want) {
				t.Fatalf("reports %+v, want %q", n.reports, tc.want)
			}
		})
	}
}
