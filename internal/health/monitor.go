package health

import (
	"context"
	"time"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// Monitor feeds a Tracker: it forwards the source's events as they come
// and runs the recovery check of every GPU at each probe interval.
type Monitor struct {
	Source  discovery.HealthSource
	Tracker *Tracker
	// ProbeInterval is how often every GPU is checked. Default 30 s.
	ProbeInterval time.Duration
}

// watchRetry is how long a failed event watch waits before it is retried.
const watchRetry = 10 * time.Second

// Run watches and probes until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	logger := klog.FromContext(ctx)
	interval := m.ProbeInterval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	events := make(chan discovery.Event)
	go func() {
		for ctx.Err() == nil {
			uuids := m.uuids()
			if err := m.Source.WatchEvents(ctx, uuids, events); err != nil {
				// Probes keep running, so health is still tracked,
				// only later.
				logger.Error(err, "Watching GPU health events failed; retrying", "retryIn", watchRetry)
			}
			select {
			case <-ctx.Done():
			case <-time.After(watchRetry):
			}
		}
	}()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if m.Tracker.Observe(ev) {
				logger.Info("GPU health changed", "uuid", ev.UUID, "event", ev.String())
			}
		case <-ticker.C:
			m.ProbeAll(ctx)
		}
	}
}

// ProbeAll runs the recovery check of every tracked GPU once.
func (m *Monitor) ProbeAll(ctx context.Context) {
	logger := klog.FromContext(ctx)
	for _, uuid := range m.uuids() {
		err := m.Source.Probe(ctx, uuid)
		if m.Tracker.Probe(uuid, err) {
			st, _ := m.Tracker.Status(uuid)
			logger.Info("GPU health changed", "uuid", uuid, "healthy", st.Healthy, "reason", st.Reason, "probeErr", err)
		}
	}
}

func (m *Monitor) uuids() []string {
	gpus := m.Tracker.GPUs()
	out := make([]string, len(gpus))
	for i, g := range gpus {
		out[i] = g.UUID
	}
	return out
}
