package driver

import (
	"context"
	"errors"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/atomicfile"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

// recover makes the files agree with the checkpoint before the plugin
// serves: interrupted prepares are rolled back, interrupted unprepares are
// completed, completed claims get their CDI spec and directory back with
// their GPUs re-resolved by UUID (refreshClaim), and files no record owns
// are removed. After a reboot (new boot ID) the claims' accounting regions
// are emptied (the processes they counted are gone) and every spec is
// rewritten: minor numbers are assigned anew at boot.
func (d *Driver) recover(ctx context.Context, rebooted bool) error {
	logger := klog.FromContext(ctx)
	for _, dir := range []string{d.cfg.CDIRoot, d.cfg.StateDir, d.gpuStateDir()} {
		if err := atomicfile.RemoveTempFiles(dir); err != nil {
			return fmt.Errorf("remove temp files: %w", err)
		}
	}
	if err := d.writePreload(); err != nil {
		return err
	}
	for uid, rec := range d.store.Claims() {
		switch rec.State {
		case checkpoint.PrepareCompleted:
			if rebooted {
				if err := os.RemoveAll(d.claimDir(uid)); err != nil {
					return fmt.Errorf("reset claim directory after reboot: %w", err)
				}
			}
			if _, err := d.refreshClaim(ctx, uid, rec, rebooted); err != nil {
				var gone *gpuGoneError
				if !errors.As(err, &gone) {
					return err
				}
				// Kept: the kubelet unprepares it when its pod ends;
				// preparing it again fails with this error.
				logger.Error(err, "Prepared claim cannot be used", "claim", klog.KRef(rec.Namespace, rec.Name), "uid", uid)
			}
		default:
			logger.Info("Finishing interrupted operation", "uid", uid, "state", rec.State)
			if err := d.removeClaim(ctx, uid, rec); err != nil {
				return err
			}
		}
	}
	d.sweepOrphans(ctx)
	if err := d.store.Sync(); err != nil { // records the current boot ID
		return err
	}
	return d.writeReservations()
}

// writePreload writes the read-only /etc/ld.so.preload that every claim
// mounts. Its content never changes, so it is only written when missing or
// different (mounted files keep their inode; rename replaces atomically).
func (d *Driver) writePreload() error {
	want := cdi.ContainerLibvgpuPath + "\n"
	if got, err := os.ReadFile(d.preloadPath()); err == nil && string(got) == want {
		return nil
	}
	if err := atomicfile.WriteFile(d.preloadPath(), []byte(want), 0o644, true); err != nil {
		return fmt.Errorf("write ld.so.preload: %w", err)
	}
	return nil
}
