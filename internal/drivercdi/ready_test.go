package drivercdi

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
)

func TestWaitForDriver(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	tmp := t.TempDir()
	opts := Options{DriverRoot: GPUOperatorDriverRoot, ContainerDriverRoot: filepath.Join(tmp, "driver-root"), DevRoot: "/", ContainerDevRoot: filepath.Join(tmp, "host")}

	missing := Missing(opts)
	if len(missing) != 2 || !strings.Contains(missing[0], "libnvidia-ml.so.1 under the driver root /run/nvidia/driver") || !strings.Contains(missing[1], "/dev/nvidiactl") {
		t.Fatalf("missing %v", missing)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := WaitForDriver(short, opts, 10*time.Millisecond); err == nil || !strings.Contains(err.Error(), "libnvidia-ml.so.1") {
		t.Fatalf("want a timeout naming what is missing, got %v", err)
	}

	// The driver container finishes while we wait.
	done := make(chan error, 1)
	go func() { done <- WaitForDriver(ctx, opts, 10*time.Millisecond) }()
	time.Sleep(30 * time.Millisecond)
	operatorLayout.install(t, opts.ContainerDriverRoot, "")
	makeDevRoot(t, opts.ContainerDevRoot, "nvidiactl")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("still waiting; missing %v", Missing(opts))
	}
}
