package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/health"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

// healthOptions are the command line of GPU health monitoring.
type healthOptions struct {
	enabled        bool
	fatalEffect    string
	keepFatal      bool
	quietPeriod    time.Duration
	recoveryProbes int
	probeInterval  time.Duration
	// simulateEvents is the injection file of simulated GPUs (test hook).
	simulateEvents string
}

func addHealthFlags(fs *flag.FlagSet, o *healthOptions) {
	fs.BoolVar(&o.enabled, "health", true, "watch GPU health (NVML events and a periodic check), taint sick GPUs' devices and report their health to the kubelet")
	fs.StringVar(&o.fatalEffect, "health-fatal-effect", string(resourceapi.DeviceTaintEffectNoSchedule), "taint effect of fatal GPU errors (XID 79, 48, ...): NoSchedule keeps new claims off the GPU, NoExecute also evicts the pods using it")
	fs.BoolVar(&o.keepFatal, "health-keep-fatal", false, "keep GPUs with a fatal error tainted until the plugin restarts, even if the recovery check passes")
	fs.DurationVar(&o.quietPeriod, "health-quiet-period", 5*time.Minute, "how long a sick GPU must go without a new event before its taint is removed (doubles, up to 1h, for a GPU that falls sick again soon after recovering)")
	fs.IntVar(&o.recoveryProbes, "health-recovery-probes", 3, "how many recovery checks in a row must pass before a sick GPU's taint is removed")
	fs.DurationVar(&o.probeInterval, "health-probe-interval", 30*time.Second, "how often every GPU's recovery check runs (GPU answers, no row remapping pending, no thermal slowdown)")
	fs.StringVar(&o.simulateEvents, "simulate-events", "", "with --simulate only: file of injected GPU events, one JSON object a line (default <state-dir>/simulate-events.jsonl)")
}

func (o healthOptions) config(driverName string) (health.Config, error) {
	cfg := health.Config{
		TaintKey:       driverName + "/unhealthy",
		FatalEffect:    resourceapi.DeviceTaintEffect(o.fatalEffect),
		KeepFatal:      o.keepFatal,
		QuietPeriod:    o.quietPeriod,
		RecoveryProbes: o.recoveryProbes,
	}
	if err := cfg.Validate(); err != nil {
		return health.Config{}, fmt.Errorf("--health-*: %w", err)
	}
	return cfg, nil
}

// healthState is the running health monitoring; nil when disabled.
type healthState struct {
	tracker  *health.Tracker
	monitor  *health.Monitor
	reporter *health.Reporter
}

// startHealth sets up monitoring of d's GPUs; it returns nil when
// monitoring is off or the discoverer cannot report health.
func startHealth(ctx context.Context, opts options, d discovery.Discoverer) (*healthState, error) {
	if !opts.health.enabled {
		return nil, nil
	}
	src, ok := d.(discovery.HealthSource)
	if !ok {
		return nil, nil
	}
	cfg, err := opts.health.config(opts.driverName)
	if err != nil {
		return nil, err
	}
	if sim, ok := d.(*discovery.SimulatedDiscoverer); ok {
		if err := sim.EnableEventInjection(ctx, simulateEventsPath(opts)); err != nil {
			return nil, fmt.Errorf("simulated event injection: %w", err)
		}
	}
	t := health.NewTracker(cfg)
	return &healthState{
		tracker:  t,
		monitor:  &health.Monitor{Source: src, Tracker: t, ProbeInterval: opts.health.probeInterval},
		reporter: &health.Reporter{Tracker: t, Pool: opts.nodeName, DeviceName: inventory.DeviceName},
	}, nil
}

func simulateEventsPath(opts options) string {
	if opts.health.simulateEvents != "" {
		return opts.health.simulateEvents
	}
	return filepath.Join(opts.stateDir, "simulate-events.jsonl")
}

// checkHealthOptions rejects the simulation hook outside simulation.
func checkHealthOptions(opts options) error {
	if opts.health.simulateEvents != "" && opts.simulate == "" {
		return errors.New("--simulate-events needs --simulate: event injection is a test hook for simulated GPUs")
	}
	return nil
}

// build is inventory.Build with the health state: GPUs discovery lost
// stay published, and sick GPUs carry their taints.
func (h *healthState) build(ctx context.Context, nodeName string, gpus []discovery.GPU) (resourceslice.DriverResources, []discovery.GPU) {
	if h == nil {
		return inventory.Build(ctx, nodeName, gpus)
	}
	return inventory.Build(ctx, nodeName, h.tracker.Reconcile(gpus), inventory.WithTaints(h.tracker.Taints))
}

// changes is closed over by the republish loop: a health change
// republishes at once instead of at the next tick.
func (h *healthState) changes() (<-chan struct{}, func()) {
	if h == nil {
		return nil, func() {}
	}
	return h.tracker.Subscribe()
}
