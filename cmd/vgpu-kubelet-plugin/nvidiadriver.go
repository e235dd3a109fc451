package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"k8s.io/klog/v2"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/hami-dra/hami-dra/internal/drivercdi"
)

// waitForDriverCommand is what the chart's init container runs: it returns
// once the NVIDIA driver is usable, instead of the plugin crash-looping
// while the GPU Operator is still installing it.
const waitForDriverCommand = "wait-for-driver"

// driverFlags say where the node's NVIDIA driver is and how claims get it.
type driverFlags struct {
	driverRoot          string
	containerDriverRoot string
	containerDevRoot    string
	hookPath            string
	waitInterval        time.Duration
	waitTimeout         time.Duration

	// edits are generated at start (nil: claims get no driver edits).
	edits *cdispec.ContainerEdits
}

func addDriverFlags(fs *flag.FlagSet, f *driverFlags) {
	fs.StringVar(&f.driverRoot, "driver-root", drivercdi.HostDriverRoot, fmt.Sprintf("host directory the NVIDIA driver is installed under: %s (host), %s (GPU Operator), %s (GKE); claims get its libraries, binaries and device nodes", drivercdi.HostDriverRoot, drivercdi.GPUOperatorDriverRoot, drivercdi.GKEDriverRoot))
	fs.StringVar(&f.containerDriverRoot, "container-driver-root", "", "where this process sees --driver-root (default: the same path)")
	fs.StringVar(&f.containerDevRoot, "container-dev-root", "", "where this process sees --dev-root (default: the same path)")
	fs.StringVar(&f.hookPath, "nvidia-cdi-hook-path", drivercdi.DefaultHookPath, "host path of nvidia-cdi-hook, run by the container runtime to update the container's ldcache; empty leaves the hooks out")
	fs.DurationVar(&f.waitInterval, "wait-interval", 10*time.Second, "wait-for-driver: how often to look for the driver")
	fs.DurationVar(&f.waitTimeout, "wait-timeout", 0, "wait-for-driver: give up after this long (0: wait until stopped)")
}

func (f driverFlags) options(devRoot string) drivercdi.Options {
	return drivercdi.Options{DriverRoot: f.driverRoot, ContainerDriverRoot: f.containerDriverRoot, DevRoot: devRoot, ContainerDevRoot: f.containerDevRoot, HookPath: f.hookPath}
}

// prepareDriverEdits decides how claims get the driver and, unless the
// toolkit's spec is composed or the GPUs are simulated without a driver
// root, generates the edits from --driver-root. A node whose driver root
// holds no driver does not start: every claim would fail in the runtime.
func prepareDriverEdits(ctx context.Context, opts *options, driverRootSet bool) error {
	logger := klog.FromContext(ctx)
	switch {
	case opts.composeNvidiaCDI:
		logger.Info("Claims get the NVIDIA driver from the NVIDIA Container Toolkit's CDI spec (--compose-nvidia-cdi); prepare checks that it defines each GPU", "kind", opts.nvidiaCDIKind)
		return nil
	case opts.simulate != "" && !driverRootSet:
		logger.Info("Simulated GPUs without --driver-root: claims get no NVIDIA driver edits")
		return nil
	}
	edits, err := drivercdi.Generate(ctx, opts.driver.options(opts.devRoot))
	if err != nil {
		if errors.Is(err, drivercdi.ErrNoDriver) {
			return fmt.Errorf("%w (run `vgpu-kubelet-plugin %s` first to wait for it)", err, waitForDriverCommand)
		}
		return err
	}
	logger.Info("Claims get the NVIDIA driver generated from the driver root", "driverRoot", opts.driver.driverRoot, "driverVersion", edits.DriverVersion,
		"mounts", len(edits.ContainerEdits.Mounts), "deviceNodes", len(edits.ContainerEdits.DeviceNodes), "hooks", len(edits.ContainerEdits.Hooks))
	opts.driver.edits = &edits.ContainerEdits
	return nil
}

// runWaitForDriver waits until the driver under --driver-root is usable.
func runWaitForDriver(ctx context.Context, opts options) error {
	if opts.driver.waitInterval <= 0 {
		return fmt.Errorf("--wait-interval must be positive, got %v", opts.driver.waitInterval)
	}
	if opts.driver.waitTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.driver.waitTimeout)
		defer cancel()
	}
	return drivercdi.WaitForDriver(ctx, opts.driver.options(opts.devRoot), opts.driver.waitInterval)
}
