package main

import (
	"context"
	"flag"
	"sync"
	"time"

	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/inventory"
)

// capacityMode publishes shareable GPUs while the cluster supports them and
// whole GPUs while it does not. On Kubernetes 1.34 and 1.35
// DRAConsumableCapacity is off by default: the API server drops
// allowMultipleAllocations and the request policies, the driver reports it
// (driver.Config.ConsumableCapacityOff) and the node's GPUs are republished
// whole, so that the scheduler gives each to one claim. Every probe
// interval the shareable form is published again: once the gate is on the
// fields stay and GPUs are shared, with no manual step.
type capacityMode struct {
	plugin
	off   chan struct{}
	probe time.Duration

	mu    sync.Mutex
	whole bool
	last  *resourceslice.DriverResources
	seen  bool // the gate was reported off at least once
}

func newCapacityMode(probe time.Duration) *capacityMode {
	return &capacityMode{off: make(chan struct{}, 1), probe: probe}
}

// consumableCapacityOff is the driver's callback; it never blocks.
func (m *capacityMode) consumableCapacityOff() {
	select {
	case m.off <- struct{}{}:
	default:
	}
}

// PublishResources publishes res in the current mode and remembers it.
func (m *capacityMode) PublishResources(ctx context.Context, res resourceslice.DriverResources) error {
	shareable := res
	m.mu.Lock()
	m.last = &shareable
	whole := m.whole
	m.mu.Unlock()
	if whole {
		res = inventory.WholeGPUs(res)
	}
	return m.plugin.PublishResources(ctx, res)
}

// run switches modes until ctx ends.
func (m *capacityMode) run(ctx context.Context) {
	if m.probe <= 0 {
		m.runWith(ctx, nil) // never probes
		return
	}
	ticker := time.NewTicker(m.probe)
	defer ticker.Stop()
	m.runWith(ctx, ticker.C)
}

func (m *capacityMode) runWith(ctx context.Context, probes <-chan time.Time) {
	logger := klog.FromContext(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.off:
			if !m.setWhole(true) {
				continue
			}
			if m.firstOff() {
				logger.Info("The API server dropped allowMultipleAllocations and the capacities' request policies: the " + inventory.FeatureConsumableCapacity +
					" feature gate is off (the default on Kubernetes 1.34 and 1.35). Publishing whole GPUs: each claim gets a whole GPU, memory and compute requests cannot be honoured. Turn the gate on (kube-apiserver, kube-scheduler, kubelet) to share GPUs; this plugin checks again every " + m.probe.String())
			} else {
				logger.V(2).Info("DRAConsumableCapacity is still off; publishing whole GPUs")
			}
			m.republish(ctx)
		case <-probes:
			if !m.setWhole(false) {
				continue
			}
			logger.V(2).Info("Publishing shareable GPUs again to see whether DRAConsumableCapacity is on now")
			m.republish(ctx)
		}
	}
}

// setWhole changes the mode and reports whether it changed.
func (m *capacityMode) setWhole(whole bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := m.whole != whole
	m.whole = whole
	return changed
}

func (m *capacityMode) firstOff() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	first := !m.seen
	m.seen = true
	return first
}

func (m *capacityMode) republish(ctx context.Context) {
	m.mu.Lock()
	last := m.last
	m.mu.Unlock()
	if last == nil {
		return // nothing published yet; the first publication uses the mode
	}
	err := m.PublishResources(ctx, *last)
	recordPublish(err)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Republishing ResourceSlices after a change of the consumable-capacity mode failed")
	}
}

func addCapacityFlags(fs *flag.FlagSet, probe *time.Duration) {
	fs.DurationVar(probe, "capacity-probe-interval", 10*time.Minute, "while the API server drops the consumable-capacity fields (DRAConsumableCapacity off) and whole GPUs are published, how often to publish shareable GPUs again to see whether the gate was turned on")
}
