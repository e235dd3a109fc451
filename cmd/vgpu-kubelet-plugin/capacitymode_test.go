package main

import (
	"context"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// TestCapacityMode: the API server drops the consumable-capacity fields
// (gate off) → whole GPUs are republished; a later probe publishes the
// shareable form again, and stays there when no drop is reported (gate
// turned on).
func TestCapacityMode(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := newFakePlugin()
	m := newCapacityMode(time.Hour) // probes are driven by hand below
	m.plugin = p
	res := mustBuild(ctx, []discovery.GPU{{UUID: "GPU-a", ProductName: "NVIDIA L4", MemoryBytes: 23034 << 20, NUMANode: -1}})
	if err := m.PublishResources(ctx, res); err != nil {
		t.Fatal(err)
	}
	<-p.published
	sharing := func(i int) bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.publishes[i].Pools["n1"].Slices[0].Devices[0].AllowMultipleAllocations != nil
	}
	if !sharing(0) {
		t.Fatal("first publication is not shareable")
	}

	ticks := make(chan time.Time)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.runWith(ctx, ticks)
	}()
	m.consumableCapacityOff() // what the driver's HandleError calls
	waitPublished(t, p)
	if sharing(1) {
		t.Fatal("after the drop the GPUs are still published shareable")
	}
	// A re-discovery while whole keeps the whole form.
	if err := m.PublishResources(ctx, res); err != nil {
		t.Fatal(err)
	}
	<-p.published
	if sharing(2) {
		t.Fatal("republished shareable while the gate is off")
	}
	ticks <- time.Now() // probe
	waitPublished(t, p)
	if !sharing(3) {
		t.Fatal("the probe did not publish the shareable form")
	}
	ticks <- time.Now() // no drop reported since: stays shareable, no publication
	cancel()
	<-done
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.publishes) != 4 {
		t.Errorf("%d publications, want 4", len(p.publishes))
	}
}

func waitPublished(t *testing.T, p *fakePlugin) {
	t.Helper()
	select {
	case <-p.published:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing republished")
	}
}
