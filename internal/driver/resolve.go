package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/atomicfile"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

// A claim's record names its GPUs by UUID, the only identity that survives
// a reboot. Minor numbers (/dev/nvidia<minor>) are assigned by the kernel
// driver at load time: after a GPU is removed or replaced, or the PCI
// topology changes, the same minor may be another GPU. So every use of a
// recorded minor goes through resolveGPUs first.

// gpuGoneError says a prepared claim's GPU is no longer on the node.
type gpuGoneError struct {
	node    string
	missing []string
}

func (e *gpuGoneError) Error() string {
	return fmt.Sprintf("GPU %s of this claim is no longer on node %s (removed, replaced, fallen off the bus, or switched to MIG); the claim will not be given another GPU: delete the pod so that its claim is allocated anew", strings.Join(e.missing, ", "), e.node)
}

// resolveGPUs returns rec with each GPU's minor number and PCI bus ID as
// discovered now, and whether any changed. A GPU that is not discovered
// any more is an error: the claim must never be given another GPU.
func (d *Driver) resolveGPUs(rec checkpoint.Claim) (checkpoint.Claim, bool, error) {
	out := rec
	out.GPUs = slices.Clone(rec.GPUs)
	changed := false
	var missing []string
	for i, g := range out.GPUs {
		gpu, ok := d.gpuByUUID(g.UUID)
		if !ok {
			missing = append(missing, g.UUID)
			continue
		}
		if gpu.Minor != g.Minor || gpu.PCIBusID != g.PCIBusID {
			out.GPUs[i].Minor, out.GPUs[i].PCIBusID = gpu.Minor, gpu.PCIBusID
			changed = true
		}
	}
	if len(missing) > 0 {
		return rec, false, &gpuGoneError{node: d.cfg.NodeName, missing: missing}
	}
	return out, changed, nil
}

// refreshClaim makes a completed claim's files match the GPUs discovered
// now; the caller holds the claim's lock. A claim whose GPUs moved to other
// minors gets its record and CDI spec rewritten; a claim whose GPU is gone
// loses its CDI spec, so that no container of it can start with whatever
// GPU took the old minor (the runtime then fails the container on the
// unresolvable device), and the error says why. rebuild forces the spec to
// be rewritten even when it exists.
func (d *Driver) refreshClaim(ctx context.Context, uid string, rec checkpoint.Claim, rebuild bool) (checkpoint.Claim, error) {
	resolved, changed, err := d.resolveGPUs(rec)
	if err != nil {
		if cdi.Exists(d.cfg.CDIRoot, uid) {
			klog.FromContext(ctx).Error(err, "Prepared claim lost its GPU; removed its CDI spec", "claim", klog.KRef(rec.Namespace, rec.Name), "uid", uid)
		}
		if rmErr := cdi.Remove(d.cfg.CDIRoot, uid); rmErr != nil {
			return rec, fmt.Errorf("%w (and removing its CDI spec failed: %w)", err, rmErr)
		}
		return rec, err
	}
	if changed {
		klog.FromContext(ctx).Info("GPUs of a prepared claim were renumbered; rewriting its CDI spec", "claim", klog.KRef(rec.Namespace, rec.Name), "uid", uid, "gpus", resolved.GPUs)
		d.store.Put(uid, resolved)
		if err := d.store.Sync(); err != nil {
			return rec, err
		}
	}
	if err := d.ensureFiles(ctx, uid, resolved, changed || rebuild); err != nil {
		return resolved, err
	}
	return resolved, nil
}

// reconcile runs after every discovery: each completed claim is checked
// against the GPUs (refreshClaim), files that no record owns are removed,
// and the reservation files are rewritten. Errors of single claims are
// logged (they are reported again when the kubelet prepares the claim).
func (d *Driver) reconcile(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	for uid := range d.store.Claims() {
		func() {
			unlock := d.claimLocks.lock(uid)
			defer unlock()
			rec, ok := d.store.Get(uid)
			if !ok || rec.State != checkpoint.PrepareCompleted {
				return // unprepared or being prepared meanwhile
			}
			if _, err := d.refreshClaim(ctx, uid, rec, false); err != nil {
				logger.V(2).Info("Claim not usable", "uid", uid, "err", err)
			}
		}()
	}
	d.sweepOrphans(ctx)
	return d.writeReservations()
}

// sweepOrphans removes CDI specs and claim directories that no record owns
// (left by a crash between the removal steps, or by a lost checkpoint).
// Each is checked under its claim's lock: a prepare records the claim
// before it creates any file.
func (d *Driver) sweepOrphans(ctx context.Context) {
	logger := klog.FromContext(ctx)
	sweep := func(uid, what string, remove func() error) {
		unlock := d.claimLocks.lock(uid)
		defer unlock()
		if _, known := d.store.Get(uid); known {
			return
		}
		logger.Info("Removing orphaned "+what, "uid", uid)
		if err := remove(); err != nil {
			logger.Error(err, "Removing orphaned "+what, "uid", uid)
		}
	}
	if entries, err := os.ReadDir(d.cfg.CDIRoot); err == nil {
		for _, e := range entries {
			if uid, ok := cdi.ClaimUIDFromFile(e.Name()); ok {
				sweep(uid, "CDI spec", func() error { return cdi.Remove(d.cfg.CDIRoot, uid) })
			}
		}
	}
	if entries, err := os.ReadDir(d.claimsDir()); err == nil {
		for _, e := range entries {
			uid := e.Name()
			sweep(uid, "claim directory", func() error { return os.RemoveAll(filepath.Join(d.claimsDir(), uid)) })
		}
	}
}

// reservedCores sums the cores of completed claims per GPU.
func (d *Driver) reservedCores() map[string]int64 {
	sum := map[string]int64{}
	for _, c := range d.store.Claims() {
		if c.State != checkpoint.PrepareCompleted {
			continue
		}
		for _, g := range c.GPUs {
			sum[g.UUID] += g.Cores
		}
	}
	return sum
}

// writeReservations makes the per-GPU files of CONTRACT.md a function of
// the checkpoint: one file per GPU that is discovered, named by a claim or
// already has a file, each rewritten when its content differs. It runs
// after every change of the checkpoint and on every path that may follow a
// failed earlier write (an idempotent prepare, an unprepare of an unknown
// claim), so a failure never leaves a sum behind for good. The files are
// derived data: replaced atomically, not fsynced.
func (d *Driver) writeReservations() error {
	d.resMu.Lock()
	defer d.resMu.Unlock()
	sum := d.reservedCores()
	uuids := map[string]bool{}
	for u := range sum {
		uuids[u] = true
	}
	for _, g := range d.gpuSnapshot() {
		uuids[g.UUID] = true
	}
	if entries, err := os.ReadDir(d.gpuStateDir()); err == nil {
		for _, e := range entries {
			if !atomicfile.IsTempFile(e.Name()) {
				uuids[e.Name()] = true
			}
		}
	}
	for u := range uuids {
		p := filepath.Join(d.gpuStateDir(), u)
		data := []byte("version=1\nreserved=" + strconv.FormatInt(sum[u], 10) + "\n")
		if cur, err := os.ReadFile(p); err == nil && string(cur) == string(data) {
			continue
		}
		if err := atomicfile.WriteFile(p, data, 0o644, false); err != nil {
			return fmt.Errorf("write reservation of %s: %w", u, err)
		}
	}
	return nil
}
