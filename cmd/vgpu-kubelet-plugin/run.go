package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/version"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the node or the cluster is not as needed; the log says why
	exitUsage = 2 // bad command line
)

const inventoryCommand = "inventory"

// options are the command line.
type options struct {
	driverName         string
	nodeName           string
	kubeconfig         string
	pluginDataDir      string
	registrarDir       string
	cdiRoot            string
	stateDir           string
	libvgpuPath        string
	devRoot            string
	composeNvidiaCDI   bool
	nvidiaCDIKind      string
	cleanupInterval    time.Duration
	rediscoverInterval time.Duration
	simulate           string
	nvmlLibraryPath    string
	sysfsRoot          string
	podUID             string
	healthPort         int
	metricsPort        int
	kubeAPIQPS         float32
	kubeAPIBurst       int
	health             healthOptions
	metricsPodLabels   bool
	driver             driverFlags
	capacityProbe      time.Duration
	audit              auditOptions

	// kubeAPIQPSFlag is --kube-api-qps as parsed (the flag package has no
	// float32 flags).
	kubeAPIQPSFlag float64

	// composeNvidiaCDISet tells an explicit --compose-nvidia-cdi from the
	// default, which depends on --simulate.
	composeNvidiaCDISet bool
}

func newFlagSet(name string, opts *options, logConfig *textlogger.Config, output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&opts.driverName, "driver-name", "vgpu.hami.io", "DRA driver name; DeviceClasses select devices of this driver")
	fs.StringVar(&opts.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME); names the resource pool and seeds simulated GPUs' identity")
	fs.StringVar(&opts.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster service account")
	fs.StringVar(&opts.pluginDataDir, "plugin-data-dir", "", "directory of the DRA gRPC socket (default /var/lib/kubelet/plugins/<driver-name>)")
	fs.StringVar(&opts.registrarDir, "registrar-dir", "/var/lib/kubelet/plugins_registry", "kubelet's plugin registration directory")
	fs.StringVar(&opts.cdiRoot, "cdi-root", "/var/run/cdi", "directory the container runtime reads CDI specs from")
	fs.StringVar(&opts.stateDir, "state-dir", "/var/lib/hami-dra", "persistent directory for the checkpoint and per-claim state")
	fs.StringVar(&opts.libvgpuPath, "libvgpu-path", "", "host path of libvgpu.so; must be versioned and never rewritten in place")
	fs.StringVar(&opts.devRoot, "dev-root", "/", "host directory holding the NVIDIA device nodes (dev/nvidia*)")
	fs.BoolVar(&opts.composeNvidiaCDI, "compose-nvidia-cdi", false, "give claims the driver through the NVIDIA Container Toolkit's CDI device per GPU (nvidia-ctk cdi generate) instead of generating it from --driver-root; prepare checks the device exists")
	fs.StringVar(&opts.nvidiaCDIKind, "nvidia-cdi-kind", "nvidia.com/gpu", "CDI kind of the NVIDIA Container Toolkit's devices")
	fs.DurationVar(&opts.cleanupInterval, "cleanup-interval", time.Minute, "how often prepared claims are reconciled against the API server; negative disables")
	fs.DurationVar(&opts.rediscoverInterval, "rediscover-interval", time.Minute, "how often GPUs are re-discovered and the ResourceSlices republished if they changed")
	fs.StringVar(&opts.simulate, "simulate", "", "simulate GPUs instead of using NVML: a profile file (path or *.yaml) or inline, e.g. 8xH100-80GB or 4xA100-80GB,2xL4")
	fs.StringVar(&opts.nvmlLibraryPath, "nvml-library-path", "", "path of libnvidia-ml.so.1 (default: the dynamic loader's search path); with --simulate, an NVML that simulates the same GPUs (vgpu-core's fake driver) from which the node audit reads their processes")
	fs.StringVar(&opts.sysfsRoot, "sysfs-root", "/sys", "where the host's /sys is mounted; used for PCIe topology")
	fs.StringVar(&opts.podUID, "pod-uid", "", "UID of the plugin's pod (downward API), for seamless rolling updates of the plugin")
	fs.IntVar(&opts.healthPort, "health-port", 0, "port serving /healthz and /readyz (ready once ResourceSlices are published); 0 disables")
	fs.IntVar(&opts.metricsPort, "metrics-port", 0, "port serving Prometheus /metrics; 0 disables")
	fs.Float64Var(&opts.kubeAPIQPSFlag, "kube-api-qps", 5, "queries per second to the API server, per node (client-go's rate limit)")
	fs.IntVar(&opts.kubeAPIBurst, "kube-api-burst", 10, "burst of queries to the API server above --kube-api-qps")
	addDriverFlags(fs, &opts.driver)
	addCapacityFlags(fs, &opts.capacityProbe)
	addHealthFlags(fs, &opts.health)
	addMetricsFlags(fs, &opts.metricsPodLabels)
	addAuditFlags(fs, &opts.audit)
	logConfig.AddFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage:\n  %s [flags]                  run the kubelet plugin\n  %s inventory [flags]        print the ResourceSlices this node would publish and exit\n  %s wait-for-driver [flags]  wait until the NVIDIA driver under --driver-root is usable\n\nKnown simulated models: %v\n\nFlags:\n", name, name, name, discovery.KnownModelNames())
		fs.PrintDefaults()
	}
	return fs
}

// run is main without the process: it returns the exit code, so tests can
// check what a node without GPUs or a broken profile exits with.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == probeCommand {
		// The liveness probe: its own small flag set, no logging setup.
		return runProbeCommand(ctx, args[1:], stdout, stderr)
	}
	command := ""
	if len(args) > 0 && (args[0] == inventoryCommand || args[0] == waitForDriverCommand) {
		command, args = args[0], args[1:]
	}
	var opts options
	logConfig := textlogger.NewConfig(textlogger.Output(stderr))
	fs := newFlagSet("vgpu-kubelet-plugin", &opts, logConfig, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		fs.Usage()
		return exitUsage
	}
	driverRootSet := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "compose-nvidia-cdi" {
			opts.composeNvidiaCDISet = true
		}
		if f.Name == "driver-root" {
			driverRootSet = true
		}
	})
	if err := checkHealthOptions(opts); err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	if !opts.composeNvidiaCDISet && opts.simulate != "" {
		// Simulated nodes have no NVIDIA Container Toolkit spec to compose.
		opts.composeNvidiaCDI = false
	}
	if opts.pluginDataDir == "" {
		opts.pluginDataDir = filepath.Join("/var/lib/kubelet/plugins", opts.driverName)
	}
	if opts.kubeAPIQPSFlag <= 0 || opts.kubeAPIBurst <= 0 {
		fmt.Fprintf(stderr, "--kube-api-qps (%v) and --kube-api-burst (%d) must be positive\n", opts.kubeAPIQPSFlag, opts.kubeAPIBurst)
		return exitUsage
	}
	opts.kubeAPIQPS = float32(opts.kubeAPIQPSFlag)

	logger := textlogger.NewLogger(logConfig)
	// Libraries that still log through klog's global functions end up in
	// the same stream, in the same format.
	klog.SetLoggerWithOptions(logger, klog.ContextualLogger(true))
	defer klog.ClearLogger()
	ctx = klog.NewContext(ctx, logger)

	var err error
	switch command {
	case inventoryCommand:
		err = runInventory(ctx, opts, stdout)
	case waitForDriverCommand:
		err = runWaitForDriver(ctx, opts)
	default:
		logger.Info("Starting", "version", version.Version, "driver", opts.driverName, "node", opts.nodeName, "simulate", opts.simulate)
		if err = prepareDriverEdits(ctx, &opts, driverRootSet); err == nil {
			err = runPlugin(ctx, opts)
		}
	}
	if err != nil {
		// One line that says what is wrong; the process exits non-zero.
		logger.Error(err, "vgpu-kubelet-plugin failed", "command", firstNonEmpty(command, "plugin"))
		return exitError
	}
	return exitOK
}

// openDiscoverer picks the simulated or the NVML implementation.
func openDiscoverer(ctx context.Context, opts options) (discovery.Discoverer, error) {
	if opts.simulate != "" {
		profile, err := discovery.LoadProfile(opts.simulate)
		if err != nil {
			return nil, fmt.Errorf("simulated profile: %w", err)
		}
		return discovery.NewSimulated(opts.nodeName, profile)
	}
	return discovery.OpenNVML(ctx, discovery.NVMLOptions{LibraryPath: opts.nvmlLibraryPath, SysfsRoot: opts.sysfsRoot})
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}
