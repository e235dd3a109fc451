// Package driver implements the node side of the hami-dra DRA driver: the
// kubeletplugin.DRAPlugin that prepares and unprepares ResourceClaims by
// writing one CDI spec per claim that carries the claim's GPU quotas to
// libvgpu (see vgpu-core/CONTRACT.md).
package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// Config is what the driver needs from the command line. Zero values of the
// optional fields select the documented defaults.
type Config struct {
	// DriverName is the DRA driver name, e.g. "vgpu.hami.io".
	DriverName string
	// NodeName is the name of the Node this plugin runs on.
	NodeName string
	// KubeClient reads ResourceClaims and publishes ResourceSlices.
	KubeClient kubernetes.Interface
	// PluginDataDir holds the DRA gRPC socket (kubelet's plugins/<driver> dir).
	PluginDataDir string
	// RegistrarDir is the kubelet's plugin registration directory.
	RegistrarDir string
	// CDIRoot is the directory the container runtime reads CDI specs from
	// (usually /var/run/cdi, a tmpfs).
	CDIRoot string
	// StateDir holds the checkpoint, the per-claim directories and the
	// per-GPU reservation files. It must be on persistent host storage.
	StateDir string
	// LibvgpuHostPath is the host path of libvgpu.so. It must be versioned
	// and never rewritten in place: running containers mmap it.
	LibvgpuHostPath string

	// DevRoot is the host directory that holds the NVIDIA device nodes
	// ("/" on a real node, so /dev/nvidia0 is used as is). Tests and
	// simulated nodes point it elsewhere. Default "/".
	DevRoot string
	// ComposeNvidiaCDI makes Prepare also return the NVIDIA Container
	// Toolkit's CDI device of each GPU (NvidiaCDIKind=<UUID>), so the
	// runtime injects the driver's user-space libraries. Set it to false on
	// nodes without the toolkit's CDI spec (see README "Fallback").
	ComposeNvidiaCDI bool
	// NvidiaCDIKind is the CDI kind of the toolkit's devices. Default
	// "nvidia.com/gpu".
	NvidiaCDIKind string
	// DeviceName maps a GPU to its device name in the ResourceSlice; it
	// must be the function the inventory uses. Default DefaultDeviceName.
	DeviceName func(discovery.GPU) string
	// CleanupInterval is how often prepared claims are checked against the
	// API server (deleted or re-created claims are unprepared). Default one
	// minute; negative disables the loop.
	CleanupInterval time.Duration
	// BootIDPath is read to tie the checkpoint to the current boot. Default
	// /proc/sys/kernel/random/boot_id.
	BootIDPath string
}

// Driver is the running node plugin.
type Driver struct {
	cfg    Config
	helper *kubeletplugin.Helper
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// Start recovers the state left by a previous run, then serves the DRA and
// registration gRPC services through kubeletplugin.Start.
func Start(ctx context.Context, cfg Config, gpus []discovery.GPU) (*Driver, error) {
	d := &Driver{cfg: cfg}
	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(cfg.DriverName),
		kubeletplugin.NodeName(cfg.NodeName),
		kubeletplugin.KubeClient(cfg.KubeClient),
		kubeletplugin.PluginDataDirectoryPath(cfg.PluginDataDir),
		kubeletplugin.RegistrarDirectoryPath(cfg.RegistrarDir),
	)
	if err != nil {
		return nil, fmt.Errorf("start kubelet plugin: %w", err)
	}
	d.helper = helper
	return d, nil
}

// PublishResources publishes the node's ResourceSlices.
func (d *Driver) PublishResources(ctx context.Context, res resourceslice.DriverResources) error {
	return d.helper.PublishResources(ctx, res)
}

// UpdateGPUs replaces the set of GPUs that claims may refer to.
func (d *Driver) UpdateGPUs(gpus []discovery.GPU) {}

// Stop stops the gRPC services and background loops.
func (d *Driver) Stop() {
	if d.helper != nil {
		d.helper.Stop()
	}
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	return nil, errors.New("not implemented")
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	return nil, errors.New("not implemented")
}

// HandleError implements kubeletplugin.DRAPlugin.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	klog.FromContext(ctx).Error(err, msg)
}

// WatchHealthStatus implements kubeletplugin.DRAPlugin; device health is not
// reported yet.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}
