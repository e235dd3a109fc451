package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

// BenchmarkRound is one audit round of a node with 8 GPUs and 100 claims
// (two processes each, all within quota), 30 new utilisation samples per
// process: the audit's CPU per node per interval, NVML calls excluded
// (the fake answers from memory).
func BenchmarkRound(b *testing.B) {
	n := &fakeNode{procs: map[string][]Process{}, samples: map[string][]Sample{}, podOf: map[uint32]string{}, pods: map[string]Pod{}, now: time.Unix(1000, 0)}
	var gpus []string
	for g := 0; g < 8; g++ {
		gpus = append(gpus, fmt.Sprintf("GPU-%d", g))
	}
	pid := uint32(100)
	for c := 0; c < 100; c++ {
		gpu := gpus[c%8]
		name := fmt.Sprintf("claim-%d", c)
		uid := fmt.Sprintf("pod-%d", c)
		n.claims = append(n.claims, Claim{UID: "c" + uid, Namespace: "ns", Name: name,
			GPUs: []GPUQuota{{UUID: gpu, MemoryBytes: 4 * gib, Cores: 10, HardCap: true}}})
		n.pods[uid] = Pod{UID: uid, Namespace: "ns", Name: uid, Claims: []string{name}}
		for p := 0; p < 2; p++ {
			n.procs[gpu] = append(n.procs[gpu], Process{pid, 1 * gib})
			n.podOf[pid] = uid
			pid++
		}
	}
	a, _ := n.auditor(time.Minute)
	a.cfg.NodeGPUs = func() []string { return gpus }
	ctx := klog.NewContext(context.Background(), klog.Background().V(0))
	ts := uint64(0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for _, gpu := range gpus {
			n.samples[gpu] = n.samples[gpu][:0]
			for p := 0; p < 30; p++ {
				ts += 166_667
				for _, proc := range n.procs[gpu] {
					n.samples[gpu] = append(n.samples[gpu], Sample{proc.PID, ts, 4})
				}
			}
		}
		n.now = n.now.Add(5 * time.Second)
		b.StartTimer()
		a.Round(ctx)
	}
}
