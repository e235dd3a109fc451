package drivercdi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/NVIDIA/nvidia-container-toolkit/pkg/lookup"
	"k8s.io/klog/v2"
)

// Missing lists what a usable driver needs and the node does not have yet:
// NVML's library under the driver root (the user-space driver is
// installed) and /dev/nvidiactl under the device root (the kernel module is
// loaded). The GPU Operator installs both some minutes after the node has
// joined the cluster.
func Missing(opts Options) []string {
	opts.setDefaults()
	var missing []string
	libs := lookup.NewLibraryLocator(lookup.WithRoot(opts.ContainerDriverRoot), lookup.WithLogger(nvcdiLogger{klog.Background().V(5)}))
	if found, err := libs.Locate("libnvidia-ml.so.1"); err != nil || len(found) == 0 {
		missing = append(missing, fmt.Sprintf("libnvidia-ml.so.1 under the driver root %s", opts.DriverRoot))
	}
	ctl := filepath.Join(opts.ContainerDevRoot, "dev", "nvidiactl")
	if fi, err := os.Stat(ctl); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		missing = append(missing, fmt.Sprintf("the device node %s", filepath.Join(opts.DevRoot, "dev", "nvidiactl")))
	}
	return missing
}

// WaitForDriver polls until nothing is Missing, logging what it waits for,
// and returns ctx's error if it ends first.
func WaitForDriver(ctx context.Context, opts Options, interval time.Duration) error {
	logger := klog.FromContext(ctx)
	start := time.Now()
	for {
		missing := Missing(opts)
		if len(missing) == 0 {
			logger.Info("NVIDIA driver is ready", "driverRoot", opts.DriverRoot, "waited", time.Since(start).Round(time.Second))
			return nil
		}
		logger.Info("Waiting for the NVIDIA driver (the GPU Operator installs it after the node joins; check --driver-root otherwise)",
			"missing", missing, "waited", time.Since(start).Round(time.Second))
		select {
		case <-ctx.Done():
			return fmt.Errorf("NVIDIA driver not ready after %v, still missing %v: %w", time.Since(start).Round(time.Second), missing, context.Cause(ctx))
		case <-time.After(interval):
		}
	}
}
