package inventory_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/klog/v2"
)

// BenchmarkAllocate measures how fast the scheduler's allocator places
// 20Gi/10%-of-compute claims on this driver's slices in clusters of 8-GPU
// (A100 80GB) nodes, reported as claims/s:
//
//   - first-fit: per claim, one allocator over all slices (what the scheduler
//     builds per pod in PreFilter) and Allocate on nodes in round-robin order
//     until one fits: the allocator's own cost.
//   - filter: per claim, Allocate on as many nodes as kube-scheduler's
//     Filter looks at before it stops (all of 100 nodes, 144 of 300, 420 of
//     1000: percentageOfNodesToScore's adaptive default), one goroutine:
//     the scheduler's cost per pod before Filter's 16-way parallelism.
//
// The cluster starts half full (two 20Gi shares on every GPU, as the
// scheduler's state would hold them) so that the figures are those of a busy
// cluster, not of an empty one; it fills up as the benchmark runs, and
// should it become full the allocations are reset outside the timer.
//
//	go test -run '^$' -bench BenchmarkAllocate -benchtime 2s ./internal/inventory
func BenchmarkAllocate(b *testing.B) {
	for _, mode := range []string{"first-fit", "filter"} {
		for _, nodes := range []int{100, 300, 1000} {
			b.Run(fmt.Sprintf("%s/nodes=%d", mode, nodes), func(b *testing.B) {
				benchmarkAllocate(b, nodes, mode == "filter")
			})
		}
	}
}

// feasibleNodesToFind is kube-scheduler's adaptive percentageOfNodesToScore.
func feasibleNodesToFind(nodes int) int {
	const minFeasible = 100
	if nodes <= minFeasible {
		return nodes
	}
	percentage := max(50-nodes/125, 5)
	return max(nodes*percentage/100, minFeasible)
}

func benchmarkAllocate(b *testing.B, nodes int, filter bool) {
	// The allocator logs at V(5) and above; a discarding logger keeps the
	// measurement about allocation.
	ctx := klog.NewContext(context.Background(), logr.Discard())
	c := newCluster(b, ctx, nodes, "8xA100-80GB")
	prefill := func() {
		c.reset()
		for _, slice := range c.slices {
			for _, d := range slice.Spec.Devices {
				for share := range 2 {
					uid := types.UID(fmt.Sprintf("prefill-%s-%d", d.Name, share))
					c.commit([]resourceapi.AllocationResult{{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{{
						Request: "gpu0", Driver: driverName, Pool: slice.Spec.Pool.Name, Device: d.Name, ShareID: &uid,
						ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{"memory": resource.MustParse("20Gi"), "cores": resource.MustParse("10")},
					}}}}})
				}
			}
		}
	}
	prefill()
	nodeObjects := make([]*v1.Node, nodes)
	for i := range nodeObjects {
		nodeObjects[i] = nodeObject(fmt.Sprintf("node-%d", i))
	}
	toFind := 1
	if filter {
		toFind = feasibleNodesToFind(nodes)
	}

	next, calls := 0, 0
	var newAllocator time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		claim := c.claim(request{memory: "20Gi", cores: "10"})
		start := time.Now()
		alloc, err := structured.NewAllocator(ctx, features, c.state, classes, c.slices, celCache)
		if err != nil {
			b.Fatal(err)
		}
		newAllocator += time.Since(start)
		claims := []*resourceapi.ResourceClaim{claim}
		first := -1
		found := 0
		for tried := 0; tried < nodes && found < toFind; tried++ {
			n := (next + tried) % nodes
			calls++
			results, err := alloc.Allocate(ctx, nodeObjects[n], claims)
			if err != nil {
				b.Fatal(err)
			}
			if results == nil {
				continue
			}
			found++
			if first < 0 {
				first = n
				c.commit(results)
			}
		}
		if first < 0 {
			// Full: start again with an empty cluster.
			b.StopTimer()
			prefill()
			b.StartTimer()
			continue
		}
		next = (first + 1) % nodes
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
	b.ReportMetric(float64(calls)/float64(b.N), "allocates/claim")
	b.ReportMetric(float64(newAllocator.Microseconds())/float64(b.N), "newallocator-µs/claim")
}
