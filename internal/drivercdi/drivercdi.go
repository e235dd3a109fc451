// Package drivercdi generates the CDI container edits that give a container
// the node's NVIDIA driver: the control device nodes that exist
// (/dev/nvidiactl, /dev/nvidia-uvm*, /dev/nvidia-modeset), the driver's
// user-space libraries and binaries, and the hooks that make them usable
// (ldcache update, .so symlinks). It reads the node's actual driver
// installation with NVIDIA's own generator (nvidia-container-toolkit's
// pkg/nvcdi), as NVIDIA's DRA driver does, so a claim does not depend on a
// CDI spec that the NVIDIA Container Toolkit may or may not have written.
package drivercdi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	transformroot "github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi/transform/root"
	"k8s.io/klog/v2"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// Well-known driver roots: where the driver's files are on the host.
const (
	// HostDriverRoot: the driver installed on the host (distribution
	// packages, the .run installer).
	HostDriverRoot = "/"
	// GPUOperatorDriverRoot: the GPU Operator's driver container.
	GPUOperatorDriverRoot = "/run/nvidia/driver"
	// GKEDriverRoot: Google's driver installer on Container-Optimized OS
	// and Ubuntu node images.
	GKEDriverRoot = "/home/kubernetes/bin/nvidia"
)

// DefaultHookPath is where the NVIDIA Container Toolkit installs
// nvidia-cdi-hook on a host (the GPU Operator puts it under
// /usr/local/nvidia/toolkit).
const DefaultHookPath = "/usr/bin/nvidia-cdi-hook"

// Options say where the driver is.
type Options struct {
	// DriverRoot is the host directory the driver is installed under
	// (HostDriverRoot, GPUOperatorDriverRoot, GKEDriverRoot or another).
	// Host paths in the edits start with it.
	DriverRoot string
	// ContainerDriverRoot is where this process sees DriverRoot (the plugin
	// runs in a container that mounts it elsewhere). Default DriverRoot.
	ContainerDriverRoot string
	// DevRoot is the host directory holding dev/nvidia*. Default "/".
	DevRoot string
	// ContainerDevRoot is where this process sees DevRoot. Default DevRoot.
	ContainerDevRoot string
	// HookPath is the host path of nvidia-cdi-hook, which the container
	// runtime runs to update the container's ldcache and create the
	// driver's .so symlinks. Empty leaves all hooks out: the libraries are
	// then mounted but only found through the paths the image searches.
	HookPath string
}

func (o *Options) setDefaults() {
	if o.DriverRoot == "" {
		o.DriverRoot = HostDriverRoot
	}
	if o.ContainerDriverRoot == "" {
		o.ContainerDriverRoot = o.DriverRoot
	}
	if o.DevRoot == "" {
		o.DevRoot = "/"
	}
	if o.ContainerDevRoot == "" {
		o.ContainerDevRoot = o.DevRoot
	}
}

// Edits is the node's driver, as CDI container edits every claim gets.
type Edits struct {
	// DriverVersion is the version of the driver's libraries.
	DriverVersion string
	// ContainerEdits are the edits, with host paths as the runtime sees
	// them. nvcdi includes NVIDIA_VISIBLE_DEVICES=void, so that a legacy
	// nvidia-container-runtime hook adds no GPUs of its own.
	ContainerEdits cdispec.ContainerEdits
}

// ErrNoDriver says that no driver was found under the driver root.
var ErrNoDriver = errors.New("no NVIDIA driver found")

// Generate reads the driver installation and returns its edits. It fails
// when the driver root holds no driver libraries (libcuda.so.<version> or
// libnvidia-ml.so.<version>), which is never a state to start claims in.
func Generate(ctx context.Context, opts Options) (*Edits, error) {
	opts.setDefaults()
	logger := klog.FromContext(ctx).WithName("drivercdi")
	if _, err := os.Stat(opts.ContainerDriverRoot); err != nil {
		return nil, fmt.Errorf("driver root %s (seen here as %s): %w", opts.DriverRoot, opts.ContainerDriverRoot, err)
	}
	nvcdiOpts := []nvcdi.Option{
		nvcdi.WithLogger(nvcdiLogger{logger}),
		// Per-device edits are not asked for, so the NVML mode needs NVML
		// only for the driver version; without it the version comes from
		// the libraries' file names.
		nvcdi.WithMode(nvcdi.ModeNvml),
		nvcdi.WithDriverRoot(opts.ContainerDriverRoot),
		nvcdi.WithDevRoot(opts.ContainerDevRoot),
		nvcdi.WithNVIDIACDIHookPath(opts.HookPath),
	}
	if opts.HookPath == "" {
		nvcdiOpts = append(nvcdiOpts, nvcdi.WithDisabledHooks(nvcdi.AllHooks))
	}
	lib, err := nvcdi.New(nvcdiOpts...)
	if err != nil {
		return nil, fmt.Errorf("NVIDIA CDI generator: %w", err)
	}
	common, err := lib.GetCommonEdits()
	if err != nil {
		if strings.Contains(err.Error(), "driver version") {
			return nil, fmt.Errorf("%w under %s (no libcuda.so.<version> or libnvidia-ml.so.<version>; is the driver installed, and is --driver-root right?): %w", ErrNoDriver, opts.DriverRoot, err)
		}
		return nil, fmt.Errorf("generate the driver's CDI edits from %s: %w", opts.DriverRoot, err)
	}
	if common == nil || common.ContainerEdits == nil {
		return nil, fmt.Errorf("%w under %s", ErrNoDriver, opts.DriverRoot)
	}
	edits := *common.ContainerEdits
	if !hasMountOf(edits, "libcuda.so.") {
		return nil, fmt.Errorf("%w under %s: libcuda.so is missing, CUDA programs could not run", ErrNoDriver, opts.DriverRoot)
	}
	// Host paths are as this process sees them; the runtime needs the
	// host's.
	spec := &cdispec.Spec{ContainerEdits: edits}
	for _, t := range []struct{ from, to string }{
		{opts.ContainerDriverRoot, opts.DriverRoot},
		{opts.ContainerDevRoot, opts.DevRoot},
	} {
		if err := transformroot.New(transformroot.WithRoot(t.from), transformroot.WithTargetRoot(t.to)).Transform(spec); err != nil {
			return nil, fmt.Errorf("map %s to the host's %s: %w", t.from, t.to, err)
		}
	}
	edits = spec.ContainerEdits
	return &Edits{DriverVersion: driverVersion(edits), ContainerEdits: edits}, nil
}

func hasMountOf(e cdispec.ContainerEdits, prefix string) bool {
	for _, m := range e.Mounts {
		if strings.HasPrefix(filepath.Base(m.ContainerPath), prefix) {
			return true
		}
	}
	return false
}

// driverVersion reads the version off libcuda.so.<version>.
func driverVersion(e cdispec.ContainerEdits) string {
	for _, m := range e.Mounts {
		base := filepath.Base(m.ContainerPath)
		if v, ok := strings.CutPrefix(base, "libcuda.so."); ok && strings.Count(v, ".") >= 1 {
			return v
		}
	}
	return ""
}

// nvcdiLogger routes nvcdi's log lines to klog: warnings are what an
// operator needs (a library it expected and did not find); the rest is
// detail.
type nvcdiLogger struct{ logger klog.Logger }

func (l nvcdiLogger) Debugf(f string, a ...any) { l.logger.V(5).Info(fmt.Sprintf(f, a...)) }
func (l nvcdiLogger) Tracef(f string, a ...any) { l.logger.V(6).Info(fmt.Sprintf(f, a...)) }
func (l nvcdiLogger) Infof(f string, a ...any)  { l.logger.V(3).Info(fmt.Sprintf(f, a...)) }
func (l nvcdiLogger) Warningf(f string, a ...any) {
	l.logger.V(2).Info("Warning: " + fmt.Sprintf(f, a...))
}
func (l nvcdiLogger) Errorf(f string, a ...any) { l.logger.Error(nil, fmt.Sprintf(f, a...)) }
