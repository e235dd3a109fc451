package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/driver"
	"github.com/hami-dra/hami-dra/internal/health"
	"github.com/hami-dra/hami-dra/internal/inventory"
	"github.com/hami-dra/hami-dra/internal/metrics"
)

// plugin is what the command needs from the running driver. It is an
// interface so the republish loop can be tested without a kubelet.
type plugin interface {
	PublishResources(ctx context.Context, res resourceslice.DriverResources) error
	UpdateGPUs(gpus []discovery.GPU)
	Stop()
}

// startPlugin starts the driver; tests replace it.
var startPlugin = func(ctx context.Context, cfg driver.Config, gpus []discovery.GPU) (plugin, error) {
	return driver.Start(ctx, cfg, gpus)
}

// newKubeClient connects to the API server; tests replace it.
var newKubeClient = func(kubeconfig string, qps float32, burst int) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("load client configuration: %w", err)
	}
	// Bounds what the plugin asks of the API server (the helper's claim
	// reads, slice publication, the cleanup's checks) on every node.
	cfg.QPS, cfg.Burst = qps, burst
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	return client, nil
}

// runPlugin discovers, publishes and serves until ctx is cancelled.
func runPlugin(ctx context.Context, opts options) error {
	logger := klog.FromContext(ctx)
	if opts.nodeName == "" {
		return errors.New("no node name: set --node-name or NODE_NAME (from the downward API spec.nodeName)")
	}
	if opts.rediscoverInterval <= 0 {
		return fmt.Errorf("--rediscover-interval must be positive, got %v", opts.rediscoverInterval)
	}
	// Probes and metrics come up first: the startup probe must answer
	// while the plugin discovers GPUs and registers with the kubelet.
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	var ready readiness
	if err := serveHTTP(serveCtx, "health", opts.healthPort, healthHandler(&ready)); err != nil {
		return err
	}
	if err := serveHTTP(serveCtx, "metrics", opts.metricsPort, metricsHandler()); err != nil {
		return err
	}
	d, err := openDiscoverer(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		if err := d.Close(); err != nil {
			logger.Error(err, "Closing GPU discovery")
		}
	}()
	gpus, err := d.Discover(ctx)
	if err != nil {
		return fmt.Errorf("discover GPUs: %w", err)
	}
	hs, err := startHealth(ctx, opts, d)
	if err != nil {
		return err
	}
	res, published := hs.build(ctx, opts.nodeName, gpus)
	logger.Info("GPUs discovered", "found", len(gpus), "published", len(published))
	recordInventory(len(gpus), len(published))

	client, err := newKubeClient(opts.kubeconfig, opts.kubeAPIQPS, opts.kubeAPIBurst)
	if err != nil {
		return err
	}
	cfg := driverConfig(opts, client)
	capacity := newCapacityMode(opts.capacityProbe)
	cfg.ConsumableCapacityOff = capacity.consumableCapacityOff
	if hs != nil {
		cfg.Health = hs.reporter
	}
	p, err := startPlugin(ctx, cfg, published)
	if err != nil {
		return fmt.Errorf("start driver: %w", err)
	}
	defer p.Stop()
	capacity.plugin = p
	capacityCtx, stopCapacity := context.WithCancel(ctx)
	defer stopCapacity()
	go capacity.run(capacityCtx)
	if h, ok := p.(interface{ Healthy(context.Context) error }); ok {
		ready.setCheck(h.Healthy) // /healthz: the kubelet can reach us
	}
	// The claims' quota and usage metrics, next to the inventory's in the
	// default registry that /metrics serves.
	if src, ok := p.(metrics.Source); ok {
		collector := metrics.NewCollector(src, claimMetricsOptions(ctx, opts, client)...)
		if err := prometheus.Register(collector); err != nil {
			return fmt.Errorf("register claim metrics: %w", err)
		}
		defer prometheus.Unregister(collector)
	}
	if hs != nil {
		collector := health.NewCollector(hs.tracker, opts.nodeName)
		if err := prometheus.Register(collector); err != nil {
			return fmt.Errorf("register health metrics: %w", err)
		}
		defer prometheus.Unregister(collector)
		monitorCtx, stopMonitor := context.WithCancel(ctx)
		defer stopMonitor()
		go hs.monitor.Run(monitorCtx)
	}
	auditCtx, stopAudit := context.WithCancel(ctx)
	defer stopAudit()
	if err := startAudit(auditCtx, opts, d, p, client, gpus); err != nil {
		return err
	}
	err = capacity.PublishResources(ctx, res)
	recordPublish(err)
	if err != nil {
		return fmt.Errorf("publish ResourceSlices: %w", err)
	}
	logger.Info("ResourceSlices published", "devices", len(published))
	ready.ready.Store(true)
	defer ready.ready.Store(false)

	ticker := time.NewTicker(opts.rediscoverInterval)
	defer ticker.Stop()
	ticks := ready.heartbeat(ctx, ticker.C, opts.rediscoverInterval)
	return republishWithHealth(ctx, d, capacity, opts.nodeName, gpus, res, ticks, hs)
}

// driverConfig maps the command line onto the driver's configuration.
func driverConfig(opts options, client kubernetes.Interface) driver.Config {
	return driver.Config{
		DriverName:       opts.driverName,
		NodeName:         opts.nodeName,
		KubeClient:       client,
		PluginDataDir:    opts.pluginDataDir,
		RegistrarDir:     opts.registrarDir,
		CDIRoot:          opts.cdiRoot,
		StateDir:         opts.stateDir,
		LibvgpuHostPath:  opts.libvgpuPath,
		DevRoot:          opts.devRoot,
		ComposeNvidiaCDI: opts.composeNvidiaCDI,
		DriverEdits:      opts.driver.edits,
		NvidiaCDIKind:    opts.nvidiaCDIKind,
		DeviceName:       inventory.DeviceName,
		CleanupInterval:  opts.cleanupInterval,
		// The chart passes the pod's UID: the old and the new plugin pod
		// then hand over without a gap (kubeletplugin.RollingUpdate).
		RollingUpdateUID: types.UID(opts.podUID),
	}
}

// republishLoop re-discovers on every tick and, when the inventory changed
// (a GPU fell off the bus, MIG was toggled, the driver was upgraded), tells
// the driver about the new GPUs first and then republishes, so that the
// scheduler never sees a device the driver does not know. A failed
// discovery keeps what was published: withdrawing every GPU because NVML
// hiccuped once would strand the node's pods' future claims.
func republishLoop(ctx context.Context, d discovery.Discoverer, p plugin, nodeName string, current resourceslice.DriverResources, ticks <-chan time.Time) error {
	return republishWithHealth(ctx, d, p, nodeName, nil, current, ticks, nil)
}

// republishWithHealth is republishLoop that also republishes when a GPU's
// health changes (hs nil: no health monitoring), from the last discovered
// gpus.
func republishWithHealth(ctx context.Context, d discovery.Discoverer, p plugin, nodeName string, gpus []discovery.GPU, current resourceslice.DriverResources, ticks <-chan time.Time, hs *healthState) error {
	logger := klog.FromContext(ctx)
	changes, unsubscribe := hs.changes()
	defer unsubscribe()
	for {
		select {
		case <-ctx.Done():
			logger.Info("Shutting down")
			return nil
		case <-changes:
		case <-ticks:
			found, err := d.Discover(ctx)
			if err != nil {
				discoveryErrorsCounter.Inc()
				logger.Error(err, "Re-discovering GPUs failed; keeping the published inventory")
				continue
			}
			gpus = found
		}
		next, published := hs.build(ctx, nodeName, gpus)
		recordInventory(len(gpus), len(published))
		if inventory.Equal(current, next) {
			continue
		}
		logger.Info("GPU inventory changed; republishing", "devices", len(published))
		p.UpdateGPUs(published)
		err := p.PublishResources(ctx, next)
		recordPublish(err)
		if err != nil {
			// Retried on the next tick: current stays the old inventory.
			logger.Error(err, "Republishing ResourceSlices failed")
			continue
		}
		current = next
	}
}
