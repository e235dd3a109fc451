package driver

import (
	"fmt"
	"sort"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
)

// BenchmarkNodePrepareResources measures NodePrepareResources over the gRPC
// socket for 1 and 100 claims per call, and reports p50/p99 of the call and
// of the call divided by the number of claims. "rolling" is the path the
// chart runs (--pod-uid: kubeletplugin.RollingUpdate, every call under the
// helper's file lock, the checkpoint re-read, claims one after the other).
//
//	go test ./internal/driver -run '^$' -bench NodePrepareResources -benchtime 200x
func BenchmarkNodePrepareResources(b *testing.B) {
	for _, bc := range []struct {
		n       int
		rolling bool
	}{{1, false}, {100, false}, {1, true}, {100, true}} {
		n := bc.n
		name := fmt.Sprintf("claims=%d", n)
		if bc.rolling {
			name += "/rolling"
		}
		b.Run(name, func(b *testing.B) {
			claims := make([]*resourceapi.ResourceClaim, n)
			for i := range claims {
				claims[i] = newClaim(fmt.Sprintf("bench-%d", i), []share{{"gpu", i % len(testGPUs), "100Mi", "1"}})
			}
			e := newEnv(b, claims...)
			if bc.rolling {
				e.stop()
				e.cfg.RollingUpdateUID = "bench-pod"
				e.start(b)
			}
			durations := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				res := e.prepare(b, claims...)
				durations = append(durations, time.Since(start))
				b.StopTimer()
				for uid, r := range res {
					if r.Error != "" {
						b.Fatalf("%s: %s", uid, r.Error)
					}
				}
				e.unprepare(b, claims...)
				b.StartTimer()
			}
			sort.Slice(durations, func(i, j int) bool { return durations[i] < durations[j] })
			p := func(q float64) time.Duration { return durations[int(q*float64(len(durations)-1))] }
			b.ReportMetric(float64(p(0.50).Microseconds())/1000, "p50-ms/call")
			b.ReportMetric(float64(p(0.99).Microseconds())/1000, "p99-ms/call")
			b.ReportMetric(float64(p(0.50).Microseconds())/1000/float64(n), "p50-ms/claim")
			b.ReportMetric(float64(p(0.99).Microseconds())/1000/float64(n), "p99-ms/claim")
		})
	}
}
