package health

import (
	"context"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// Reporter streams the tracker's state to the kubelet: it implements the
// body of kubeletplugin.DRAPlugin.WatchHealthStatus (KEP-4680), so that the
// kubelet shows a sick GPU in the status of the pods that use it.
type Reporter struct {
	Tracker *Tracker
	// Pool is the ResourceSlice pool of the devices (the node name).
	Pool string
	// DeviceName maps a GPU to its device name (inventory.DeviceName).
	DeviceName func(discovery.GPU) string
	// Resend is how often the full report is re-sent when nothing changed,
	// well within Timeout. Default 10 s.
	Resend time.Duration
	// Timeout is the HealthCheckTimeout the kubelet applies: a device not
	// reported for that long turns "unknown". Default 30 s.
	Timeout time.Duration
}

// WatchHealthStatus sends a report of every GPU at once, after every
// change and every Resend, until ctx ends.
func (r *Reporter) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	resend, timeout := r.Resend, r.Timeout
	if resend <= 0 {
		resend = 10 * time.Second
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	changes, stop := r.Tracker.Subscribe()
	defer stop()
	ticker := time.NewTicker(resend)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case reports <- r.Report(timeout):
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		case <-ticker.C:
		}
	}
}

// Report is the current health of every tracked GPU.
func (r *Reporter) Report(timeout time.Duration) kubeletplugin.DeviceHealthReport {
	now := r.Tracker.cfg.Now()
	var report kubeletplugin.DeviceHealthReport
	for _, g := range r.Tracker.GPUs() {
		st, ok := r.Tracker.Status(g.UUID)
		if !ok {
			continue
		}
		d := kubeletplugin.DeviceHealth{
			PoolName:           r.Pool,
			DeviceName:         r.DeviceName(g),
			Health:             kubeletplugin.HealthStatusHealthy,
			LastUpdated:        now,
			HealthCheckTimeout: timeout,
		}
		if !st.Healthy {
			d.Health = kubeletplugin.HealthStatusUnhealthy
			d.Message = st.Message
		}
		report.Devices = append(report.Devices, d)
	}
	return report
}
