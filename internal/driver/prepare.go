package driver

import (
	"context"
	"fmt"
	"os"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

// Named steps of prepare and unprepare, in the order they run
// (Config.AfterStep). The crash tests kill the plugin at each.
const (
	cpPrepareStarted    = "prepare/checkpoint-started"
	cpPrepareClaimDir   = "prepare/claim-dir"
	cpPrepareCDISpec    = "prepare/cdi-spec"
	cpPrepareCompleted  = "prepare/checkpoint-completed"
	cpPrepareReserved   = "prepare/reservations"
	cpUnprepareStarted  = "unprepare/checkpoint-started"
	cpUnprepareCDISpec  = "unprepare/cdi-spec-removed"
	cpUnprepareClaimDir = "unprepare/claim-dir-removed"
	cpUnprepareDeleted  = "unprepare/checkpoint-deleted"
	cpUnprepareReserved = "unprepare/reservations"
)

// CrashPoints lists every named step, for tests.
var CrashPoints = []string{cpPrepareStarted, cpPrepareClaimDir, cpPrepareCDISpec, cpPrepareCompleted, cpPrepareReserved,
	cpUnprepareStarted, cpUnprepareCDISpec, cpUnprepareClaimDir, cpUnprepareDeleted, cpUnprepareReserved}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin. Claims are
// prepared in parallel; each fails on its own.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (out map[types.UID]kubeletplugin.PrepareResult, err error) {
	err = d.serialised(func() error {
		out = d.prepareAll(ctx, claims)
		return nil
	})
	return out, err
}

// serialised runs a kubelet call excluding the node's other plugin
// instance: with a pod UID the helper holds the instances' lock already and
// the checkpoint is re-read (the other instance may have changed it);
// without one the driver takes the lock itself (withInstanceLock).
func (d *Driver) serialised(fn func() error) error {
	if d.cfg.RollingUpdateUID == "" {
		return d.withInstanceLock(fn)
	}
	if err := d.store.Reload(); err != nil {
		return err
	}
	return fn()
}

func (d *Driver) prepareAll(ctx context.Context, claims []*resourceapi.ResourceClaim) map[types.UID]kubeletplugin.PrepareResult {
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	var mu sync.Mutex
	d.forEach(len(claims), func(i int) {
		claim := claims[i]
		logger := klog.FromContext(ctx).WithValues("claim", klog.KObj(claim), "uid", claim.UID)
		devs, err := d.prepareClaim(klog.NewContext(ctx, logger), claim)
		if err != nil {
			logger.Error(err, "Prepare failed")
			err = fmt.Errorf("hami-dra: prepare claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		mu.Lock()
		out[claim.UID] = kubeletplugin.PrepareResult{Devices: devs, Err: err}
		mu.Unlock()
	})
	return out
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin. Unknown claims
// succeed: the kubelet retries and may ask twice.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (out map[types.UID]error, err error) {
	err = d.serialised(func() error {
		out = d.unprepareAll(ctx, claims)
		return nil
	})
	return out, err
}

func (d *Driver) unprepareAll(ctx context.Context, claims []kubeletplugin.NamespacedObject) map[types.UID]error {
	out := make(map[types.UID]error, len(claims))
	var mu sync.Mutex
	d.forEach(len(claims), func(i int) {
		c := claims[i]
		logger := klog.FromContext(ctx).WithValues("claim", c.NamespacedName, "uid", c.UID)
		err := d.unprepareClaim(klog.NewContext(ctx, logger), string(c.UID))
		if err != nil {
			logger.Error(err, "Unprepare failed")
		}
		mu.Lock()
		out[c.UID] = err
		mu.Unlock()
	})
	return out
}

func (d *Driver) forEach(n int, fn func(i int)) {
	sem := make(chan struct{}, d.cfg.MaxParallelClaims)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			fn(i)
		}()
	}
	wg.Wait()
}

func devicesOf(rec checkpoint.Claim) []kubeletplugin.Device {
	out := make([]kubeletplugin.Device, 0, len(rec.Devices))
	for i, dev := range rec.Devices {
		kd := kubeletplugin.Device{Requests: []string{dev.Request}, PoolName: dev.Pool, DeviceName: dev.DeviceName, CDIDeviceIDs: rec.CDIDeviceIDs[i]}
		if dev.ShareID != "" {
			id := types.UID(dev.ShareID)
			kd.ShareID = &id
		}
		out = append(out, kd)
	}
	return out
}

// prepareClaim runs the steps of Prepare under the claim's lock. Files of
// one claim (its CDI spec, its directory) are touched only under that lock;
// the shared files (checkpoint, per-GPU reservations) have their own
// locks. A failure after the first step rolls the claim back.
func (d *Driver) prepareClaim(ctx context.Context, claim *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	uid := string(claim.UID)
	unlock := d.claimLocks.lock(uid)
	defer unlock()

	if rec, ok := d.store.Get(uid); ok {
		switch rec.State {
		case checkpoint.PrepareCompleted:
			// Idempotent: same devices; rebuild what vanished (CDI specs
			// live on tmpfs and are gone after a reboot), follow GPUs
			// that were renumbered, fail if one is gone, and rewrite the
			// reservation files an earlier failed attempt may have left
			// behind.
			rec, err := d.refreshClaim(ctx, uid, rec, false)
			if err != nil {
				return nil, err
			}
			if err := d.writeReservations(); err != nil {
				return nil, err
			}
			return devicesOf(rec), nil
		default:
			if err := d.removeClaim(ctx, uid, rec); err != nil {
				return nil, fmt.Errorf("clean up earlier attempt: %w", err)
			}
		}
	}

	rec, err := d.plan(claim)
	if err != nil {
		return nil, err
	}
	if d.toolkit != nil {
		if err := d.toolkit.check(d.cfg.NvidiaCDIKind, rec); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(d.cfg.LibvgpuHostPath); err != nil {
		return nil, fmt.Errorf("libvgpu.so is missing on the node, refusing to start the workload without quota enforcement: %w", err)
	}

	if err := d.admit(uid, rec); err != nil {
		return nil, err
	}
	if err := d.store.Sync(); err != nil {
		d.store.Delete(uid)
		return nil, err
	}
	d.step(cpPrepareStarted)

	if err := d.ensureFiles(ctx, uid, rec, true); err != nil {
		if rbErr := d.removeClaim(ctx, uid, rec); rbErr != nil {
			klog.FromContext(ctx).Error(rbErr, "Rollback failed; the next start or prepare repairs it")
		}
		return nil, err
	}

	rec.State = checkpoint.PrepareCompleted
	d.store.Put(uid, rec)
	if err := d.store.Sync(); err != nil {
		if rbErr := d.removeClaim(ctx, uid, rec); rbErr != nil {
			klog.FromContext(ctx).Error(rbErr, "Rollback failed; the next start or prepare repairs it")
		}
		return nil, err
	}
	d.step(cpPrepareCompleted)

	if err := d.writeReservations(); err != nil {
		return nil, err
	}
	d.step(cpPrepareReserved)
	klog.FromContext(ctx).V(2).Info("Prepared", "gpus", rec.GPUs)
	return devicesOf(rec), nil
}

// admit records the claim as PrepareStarted unless that would put more
// memory or cores on a GPU than it has, counting every claim recorded on
// the node. The scheduler should never allow that; the driver is the last
// line of defence (a stale slice, a second scheduler, a bug).
func (d *Driver) admit(uid string, rec checkpoint.Claim) error {
	d.admitMu.Lock()
	defer d.admitMu.Unlock()
	mem, cores := map[string]int64{}, map[string]int64{}
	for other, c := range d.store.Claims() {
		if other == uid {
			continue
		}
		for _, g := range c.GPUs {
			mem[g.UUID] += g.MemoryBytes
			cores[g.UUID] += g.Cores
		}
	}
	for _, g := range rec.GPUs {
		gpu, _ := d.gpuByUUID(g.UUID)
		if total := mem[g.UUID] + g.MemoryBytes; gpu.MemoryBytes > 0 && uint64(total) > gpu.MemoryBytes {
			return fmt.Errorf("GPU %s is over-committed: prepared claims hold %d bytes of memory, this claim asks for %d, the GPU has %d", g.UUID, mem[g.UUID], g.MemoryBytes, gpu.MemoryBytes)
		}
		if total := cores[g.UUID] + g.Cores; total > 100 {
			return fmt.Errorf("GPU %s is over-committed: prepared claims hold %d cores, this claim asks for %d, at most 100 in all", g.UUID, cores[g.UUID], g.Cores)
		}
	}
	d.store.Put(uid, rec)
	return nil
}

// ensureFiles creates the claim directory and (re)writes the CDI spec when
// it is missing or always is set.
func (d *Driver) ensureFiles(ctx context.Context, uid string, rec checkpoint.Claim, always bool) error {
	dir := d.claimDir(uid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create claim directory: %w", err)
	}
	// libvgpu in the container writes its accounting region here under
	// whatever user the pod runs as (the plugin does not know it at
	// prepare, and the pods sharing a claim may run as different users),
	// so every user may create files; the directory is mounted into the
	// claim's containers only, and holds nothing else. Sticky: a process of
	// one user cannot delete or replace a region another user created.
	if err := os.Chmod(dir, os.ModeSticky|0o777); err != nil {
		return fmt.Errorf("chmod claim directory: %w", err)
	}
	d.step(cpPrepareClaimDir)
	if !always && cdi.Exists(d.cfg.CDIRoot, uid) {
		return nil
	}
	spec, err := d.claimSpec(uid, rec).Build()
	if err != nil {
		return err
	}
	if err := cdi.Write(d.cfg.CDIRoot, uid, spec); err != nil {
		return err
	}
	d.step(cpPrepareCDISpec)
	if !always {
		klog.FromContext(ctx).Info("Rewrote vanished CDI spec")
	}
	return nil
}

func (d *Driver) claimSpec(uid string, rec checkpoint.Claim) cdi.ClaimSpec {
	s := cdi.ClaimSpec{
		ClaimUID: uid, Env: rec.Env, DevRoot: d.cfg.DevRoot,
		LibvgpuHostPath: d.cfg.LibvgpuHostPath, PreloadHostPath: d.preloadPath(),
		ClaimHostDir: d.claimDir(uid), GPUStateHostDir: d.gpuStateDir(),
		AdminAccess: rec.AdminAccess,
		DriverEdits: d.cfg.DriverEdits,
	}
	for _, g := range rec.GPUs {
		s.GPUs = append(s.GPUs, cdi.GPU{UUID: g.UUID, Minor: g.Minor})
	}
	return s
}

// unprepareClaim undoes prepareClaim; an unknown claim succeeds.
func (d *Driver) unprepareClaim(ctx context.Context, uid string) error {
	unlock := d.claimLocks.lock(uid)
	defer unlock()
	rec, ok := d.store.Get(uid)
	if !ok {
		// Nothing recorded; remove strays a lost checkpoint may have left
		// and the sums an earlier unprepare failed to write.
		if err := cdi.Remove(d.cfg.CDIRoot, uid); err != nil {
			return err
		}
		if err := os.RemoveAll(d.claimDir(uid)); err != nil {
			return fmt.Errorf("remove claim directory: %w", err)
		}
		return d.writeReservations()
	}
	return d.removeClaim(ctx, uid, rec)
}

// removeClaim is the unprepare sequence, also used for rollback.
func (d *Driver) removeClaim(ctx context.Context, uid string, rec checkpoint.Claim) error {
	rec.State = checkpoint.UnprepareStarted
	d.store.Put(uid, rec)
	if err := d.store.Sync(); err != nil {
		return err
	}
	d.step(cpUnprepareStarted)
	if err := cdi.Remove(d.cfg.CDIRoot, uid); err != nil {
		return err
	}
	d.step(cpUnprepareCDISpec)
	if err := os.RemoveAll(d.claimDir(uid)); err != nil {
		return fmt.Errorf("remove claim directory: %w", err)
	}
	d.step(cpUnprepareClaimDir)
	d.store.Delete(uid)
	if err := d.store.Sync(); err != nil {
		return err
	}
	d.step(cpUnprepareDeleted)
	if err := d.writeReservations(); err != nil {
		return err
	}
	d.step(cpUnprepareReserved)
	klog.FromContext(ctx).V(2).Info("Unprepared")
	return nil
}
