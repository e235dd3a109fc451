// Package driver implements the node side of the hami-dra DRA driver: the
// kubeletplugin.DRAPlugin that prepares and unprepares ResourceClaims by
// writing one CDI spec per claim that carries the claim's GPU quotas to
// libvgpu (see vgpu-core/CONTRACT.md and README.md in this directory).
package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	draclient "k8s.io/dynamic-resource-allocation/client"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/audit"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
	"github.com/hami-dra/hami-dra/internal/metrics"
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
	// and never rewritten in place: running containers mmap it. Start and
	// every Prepare fail when it is missing (fail closed).
	LibvgpuHostPath string

	// DevRoot is the host directory that holds dev/nvidia* ("/" on a real
	// node). Tests and simulated nodes point it elsewhere. Default "/".
	DevRoot string
	// DriverEdits are the CDI edits that give a container the node's NVIDIA
	// driver (internal/drivercdi generates them from the driver root); every
	// claim's spec includes them. Nil when ComposeNvidiaCDI is set or the
	// node is simulated.
	DriverEdits *cdispec.ContainerEdits
	// ComposeNvidiaCDI makes Prepare also return the NVIDIA Container
	// Toolkit's CDI device of each GPU (NvidiaCDIKind=<UUID>), so the
	// runtime injects the driver from the toolkit's spec instead of
	// DriverEdits. Prepare checks that the device resolves in the CDI
	// registry of NvidiaCDISpecDirs and fails the claim if it does not.
	ComposeNvidiaCDI bool
	// NvidiaCDISpecDirs are the directories the runtime reads CDI specs
	// from, as this process sees them. Default /etc/cdi and CDIRoot.
	NvidiaCDISpecDirs []string
	// NvidiaCDIKind is the CDI kind of the toolkit's devices. Default
	// "nvidia.com/gpu".
	NvidiaCDIKind string
	// ConsumableCapacityOff is called when the API server dropped the
	// consumable-capacity fields of the published slices (the
	// DRAConsumableCapacity feature gate is off), instead of logging the
	// error: the caller then republishes whole GPUs.
	ConsumableCapacityOff func()
	// DeviceName maps a GPU to its device name in the ResourceSlice; it
	// must be the function the inventory uses. Default inventory.DeviceName.
	DeviceName func(discovery.GPU) string
	// CleanupInterval is how often prepared claims are checked against the
	// API server (deleted or re-created claims are unprepared). Default one
	// minute; negative disables the loop.
	CleanupInterval time.Duration
	// BootIDPath is read to tie the checkpoint to the current boot. Default
	// /proc/sys/kernel/random/boot_id.
	BootIDPath string
	// RollingUpdateUID, when set, is the plugin pod's UID: it enables
	// kubeletplugin.RollingUpdate, so an old and a new plugin pod may serve
	// at the same time. Instances serialise every call, recovery and
	// cleanup through a file lock in PluginDataDir and re-read the
	// checkpoint under it (with a UID the helper takes it for the calls,
	// without one the driver does).
	RollingUpdateUID types.UID
	// MaxParallelClaims bounds how many claims of one gRPC call are
	// prepared at once. Default 16.
	MaxParallelClaims int
	// Health reports device health to the kubelet (KEP-4680; see
	// internal/health). Nil: health is not reported.
	Health HealthReporter
	// AfterStep, when set, is called after each named step of prepare and
	// unprepare (CrashPoints) has taken effect. Nil in production; the crash
	// tests kill the process there to show that recovery converges from
	// every step.
	AfterStep func(step string)
}

// HealthReporter is the body of WatchHealthStatus (health.Reporter).
type HealthReporter interface {
	WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error
}

func (c *Config) setDefaults() {
	if c.DevRoot == "" {
		c.DevRoot = "/"
	}
	if len(c.NvidiaCDISpecDirs) == 0 {
		c.NvidiaCDISpecDirs = []string{"/etc/cdi", c.CDIRoot}
	}
	if c.NvidiaCDIKind == "" {
		c.NvidiaCDIKind = "nvidia.com/gpu"
	}
	if c.DeviceName == nil {
		c.DeviceName = inventory.DeviceName
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = time.Minute
	}
	if c.BootIDPath == "" {
		c.BootIDPath = "/proc/sys/kernel/random/boot_id"
	}
	if c.MaxParallelClaims <= 0 {
		c.MaxParallelClaims = 16
	}
}

// Driver is the running node plugin.
type Driver struct {
	cfg    Config
	helper *kubeletplugin.Helper
	store  *checkpoint.Store
	// claimClient reads ResourceClaims through the DRA library's client,
	// which falls back to the older resource.k8s.io versions a cluster
	// may serve.
	claimClient *draclient.Client

	gpusMu sync.RWMutex
	gpus   map[string]discovery.GPU // by device name

	// toolkit resolves composed toolkit devices (nil unless ComposeNvidiaCDI).
	toolkit *toolkitDevices

	claimLocks keyedMutex
	// admitMu makes the node-wide capacity check and the recording of a
	// new claim one step, so two claims cannot both take the last share.
	admitMu sync.Mutex
	// resMu serialises writes of the per-GPU reservation files so that a
	// file always reflects a checkpoint state at least as new as the one
	// the previous writer saw.
	resMu sync.Mutex

	// ctx carries the logger of work done outside a gRPC call (after a
	// re-discovery); set once Start has recovered the state.
	ctx context.Context

	stopBackground context.CancelFunc
	wg             sync.WaitGroup
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

func (d *Driver) claimsDir() string          { return filepath.Join(d.cfg.StateDir, "claims") }
func (d *Driver) claimDir(uid string) string { return filepath.Join(d.claimsDir(), uid) }
func (d *Driver) gpuStateDir() string        { return filepath.Join(d.cfg.StateDir, "gpus") }
func (d *Driver) preloadPath() string        { return filepath.Join(d.cfg.StateDir, "ld.so.preload") }

// Start recovers the state left by a previous run (see recover.go), then
// serves the DRA and registration gRPC services through kubeletplugin.Start
// and starts the periodic cleanup.
func Start(ctx context.Context, cfg Config, gpus []discovery.GPU) (*Driver, error) {
	cfg.setDefaults()
	logger := klog.FromContext(ctx)
	if cfg.DriverName == "" || cfg.StateDir == "" || cfg.CDIRoot == "" || cfg.LibvgpuHostPath == "" {
		return nil, fmt.Errorf("driver config: DriverName, StateDir, CDIRoot and LibvgpuHostPath must be set")
	}
	if _, err := os.Stat(cfg.LibvgpuHostPath); err != nil {
		return nil, fmt.Errorf("libvgpu.so not usable, refusing to run without enforcement: %w", err)
	}
	for _, dir := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "claims"), filepath.Join(cfg.StateDir, "gpus"), cfg.CDIRoot} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	bootID, err := checkpoint.ReadBootID(cfg.BootIDPath)
	if err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, claimClient: draclient.New(cfg.KubeClient)}
	d.setGPUs(gpus)
	cpPath := filepath.Join(cfg.StateDir, "checkpoint.json")
	store, prevBoot, err := checkpoint.Open(cpPath, bootID)
	if errors.Is(err, checkpoint.ErrCorrupt) {
		// Crash-looping on it would strand every pod of the node.
		store, err = d.rebuildCheckpoint(ctx, cpPath, bootID, err)
		prevBoot = bootID
	}
	if err != nil {
		return nil, err
	}
	d.store = store
	if cfg.ComposeNvidiaCDI {
		if d.toolkit, err = newToolkitDevices(cfg.NvidiaCDISpecDirs); err != nil {
			return nil, err
		}
	}
	d.setGPUs(gpus)
	if err := d.withInstanceLock(func() error { return d.recover(ctx, prevBoot != bootID) }); err != nil {
		return nil, fmt.Errorf("recover state: %w", err)
	}

	opts := []kubeletplugin.Option{
		kubeletplugin.DriverName(cfg.DriverName),
		kubeletplugin.NodeName(cfg.NodeName),
		kubeletplugin.KubeClient(cfg.KubeClient),
		kubeletplugin.PluginDataDirectoryPath(cfg.PluginDataDir),
		kubeletplugin.RegistrarDirectoryPath(cfg.RegistrarDir),
	}
	if cfg.RollingUpdateUID != "" {
		// The helper then serialises calls with a file lock at
		// instanceLockPath, shared with the other instance.
		opts = append(opts, kubeletplugin.RollingUpdate(cfg.RollingUpdateUID))
	} else {
		// We lock per claim and per shared file ourselves, so claims of
		// different pods are prepared in parallel (see README "Locking").
		opts = append(opts, kubeletplugin.Serialize(false))
	}
	helper, err := kubeletplugin.Start(ctx, d, opts...)
	if err != nil {
		return nil, fmt.Errorf("start kubelet plugin: %w", err)
	}
	d.helper = helper
	d.ctx = klog.NewContext(context.WithoutCancel(ctx), logger.WithName("reconcile"))

	bg, cancel := context.WithCancel(klog.NewContext(context.WithoutCancel(ctx), logger.WithName("cleanup")))
	d.stopBackground = cancel
	if cfg.CleanupInterval > 0 {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.cleanupLoop(bg, cfg.CleanupInterval)
		}()
	}
	return d, nil
}

// PublishResources publishes the node's ResourceSlices.
func (d *Driver) PublishResources(ctx context.Context, res resourceslice.DriverResources) error {
	return d.helper.PublishResources(ctx, res)
}

// UpdateGPUs replaces the set of GPUs that new claims may refer to, after
// a re-discovery, and brings prepared claims in line (see reconcile): a
// claim whose GPU got another minor number gets its CDI spec rewritten, a
// claim whose GPU is gone loses it, orphaned files are swept and the
// reservation files rewritten. Errors are logged; the next discovery
// retries.
func (d *Driver) UpdateGPUs(gpus []discovery.GPU) {
	d.setGPUs(gpus)
	if d.ctx == nil {
		return // not started yet
	}
	if err := d.withInstanceLock(func() error { return d.reconcile(d.ctx) }); err != nil {
		klog.FromContext(d.ctx).Error(err, "Reconciling prepared claims with the discovered GPUs")
	}
}

func (d *Driver) setGPUs(gpus []discovery.GPU) {
	m := make(map[string]discovery.GPU, len(gpus))
	for _, g := range gpus {
		m[d.cfg.DeviceName(g)] = g
	}
	d.gpusMu.Lock()
	d.gpus = m
	d.gpusMu.Unlock()
}

// gpuSnapshot returns the current GPUs by device name; the map is never
// modified (UpdateGPUs replaces it), so callers may keep using it.
func (d *Driver) gpuSnapshot() map[string]discovery.GPU {
	d.gpusMu.RLock()
	defer d.gpusMu.RUnlock()
	return d.gpus
}

func (d *Driver) gpuByUUID(uuid string) (discovery.GPU, bool) {
	d.gpusMu.RLock()
	defer d.gpusMu.RUnlock()
	for _, g := range d.gpus {
		if g.UUID == uuid {
			return g, true
		}
	}
	return discovery.GPU{}, false
}

// Registered reports whether the kubelet has registered the plugin; it is
// what /readyz reports.
func (d *Driver) Registered() bool {
	if d.helper == nil {
		return false
	}
	st := d.helper.RegistrationStatus()
	return st != nil && st.PluginRegistered
}

// Stop stops the gRPC services and background loops.
func (d *Driver) Stop() {
	if d.stopBackground != nil {
		d.stopBackground()
	}
	d.wg.Wait()
	if d.helper != nil {
		d.helper.Stop()
	}
}

// HandleError implements kubeletplugin.DRAPlugin: background errors (slice
// publishing) are logged; the helper retries recoverable ones.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	if d.cfg.ConsumableCapacityOff != nil && inventory.ConsumableCapacityDisabled(err) {
		d.cfg.ConsumableCapacityOff()
		return
	}
	klog.FromContext(ctx).Error(err, msg)
}

// WatchHealthStatus implements kubeletplugin.DRAPlugin: the configured
// HealthReporter streams each GPU's health; without one the kubelet is told
// health is not supported.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	if d.cfg.Health == nil {
		return kubeletplugin.ErrHealthNotSupported
	}
	return d.cfg.Health.WatchHealthStatus(ctx, reports)
}

// instanceLockPath is the file kubeletplugin locks to serialise calls when
// rolling updates are enabled.
func (d *Driver) instanceLockPath() string {
	return filepath.Join(d.cfg.PluginDataDir, "serialize.lock")
}

// withInstanceLock runs fn excluding any other plugin instance of the node
// (and re-reads the checkpoint it may have changed). Every instance takes
// it, with or without rolling updates: an upgrade that turns rolling
// updates on runs an instance without a pod UID (whose calls the helper
// does not serialise) beside one with it, and neither may sweep or
// overwrite what the other just prepared.
func (d *Driver) withInstanceLock(fn func() error) error {
	if err := os.MkdirAll(d.cfg.PluginDataDir, 0o750); err != nil {
		return err
	}
	f, err := fileutil.LockFile(d.instanceLockPath(), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return fmt.Errorf("lock %s: %w", d.instanceLockPath(), err)
	}
	defer f.Close()
	if err := d.store.Reload(); err != nil {
		return err
	}
	return fn()
}

// keyedMutex is a mutex per key (claim UID), freed when unused.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedEntry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &keyedEntry{}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// step marks that a named step of prepare or unprepare (CrashPoints) has
// taken effect.
func (d *Driver) step(name string) {
	if d.cfg.AfterStep != nil {
		d.cfg.AfterStep(name)
	}
}

// AuditClaims returns the prepared claims with their quotas, as the node's
// audit checks them (admin-access claims have no quota and are left out).
func (d *Driver) AuditClaims() []audit.Claim {
	var out []audit.Claim
	for uid, c := range d.store.Claims() {
		if c.State != checkpoint.PrepareCompleted || c.AdminAccess {
			continue
		}
		action := audit.ActionKill
		if c.MemoryAuditAction == string(audit.ActionWarn) {
			action = audit.ActionWarn
		}
		hardCap := !slices.Contains(c.Env, "VGPU_COMPUTE_POLICY=besteffort")
		ac := audit.Claim{UID: uid, Namespace: c.Namespace, Name: c.Name, MemoryAction: action,
			RegionPath: filepath.Join(d.claimDir(uid), filepath.Base(cdi.SharedRegionPath))}
		for _, g := range c.GPUs {
			ac.GPUs = append(ac.GPUs, audit.GPUQuota{UUID: g.UUID, MemoryBytes: g.MemoryBytes, Cores: g.Cores, HardCap: hardCap})
		}
		out = append(out, ac)
	}
	return out
}

// PreparedClaims implements metrics.Source: the completed claims and their
// quotas, from the checkpoint.
func (d *Driver) PreparedClaims() []metrics.ClaimQuota {
	var out []metrics.ClaimQuota
	for uid, c := range d.store.Claims() {
		if c.State != checkpoint.PrepareCompleted || c.AdminAccess {
			continue // admin access has no quota
		}
		q := metrics.ClaimQuota{Namespace: c.Namespace, Name: c.Name, UID: uid,
			RegionPath: filepath.Join(d.claimDir(uid), filepath.Base(cdi.SharedRegionPath))}
		for i, g := range c.GPUs {
			_, found := d.gpuByUUID(g.UUID)
			q.GPUs = append(q.GPUs, metrics.GPUQuota{Index: i, UUID: g.UUID, MemoryBytes: g.MemoryBytes, Cores: g.Cores, Lost: !found})
		}
		out = append(out, q)
	}
	return out
}
