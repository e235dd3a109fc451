package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/atomicfile"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

// recover makes the files agree with the checkpoint before the plugin
// serves: interrupted prepares are rolled back, interrupted unprepares are
// completed, completed claims get their CDI spec and directory back, and
// files no record owns are removed. After a reboot (new boot ID) the
// claims' accounting regions are emptied: the processes they counted are
// gone.
func (d *Driver) recover(ctx context.Context, rebooted bool) error {
	logger := klog.FromContext(ctx)
	for _, dir := range []string{d.cfg.CDIRoot, d.cfg.StateDir, d.gpuStateDir()} {
		removeTempFiles(dir)
	}
	if err := d.writePreload(); err != nil {
		return err
	}
	claims := d.store.Claims()
	for uid, rec := range claims {
		switch rec.State {
		case checkpoint.PrepareCompleted:
			if rebooted {
				if err := os.RemoveAll(d.claimDir(uid)); err != nil {
					return fmt.Errorf("reset claim directory after reboot: %w", err)
				}
			}
			if err := d.ensureFiles(ctx, uid, rec, false); err != nil {
				return err
			}
		default:
			logger.Info("Finishing interrupted operation", "uid", uid, "state", rec.State)
			if err := d.removeClaim(ctx, uid, rec); err != nil {
				return err
			}
		}
	}
	// Orphans: a claim's files without a record.
	if entries, err := os.ReadDir(d.cfg.CDIRoot); err == nil {
		for _, e := range entries {
			if uid, ok := cdi.ClaimUIDFromFile(e.Name()); ok {
				if _, known := d.store.Get(uid); !known {
					logger.Info("Removing orphaned CDI spec", "file", e.Name())
					_ = cdi.Remove(d.cfg.CDIRoot, uid)
				}
			}
		}
	}
	if entries, err := os.ReadDir(d.claimsDir()); err == nil {
		for _, e := range entries {
			if _, known := d.store.Get(e.Name()); !known {
				logger.Info("Removing orphaned claim directory", "uid", e.Name())
				_ = os.RemoveAll(filepath.Join(d.claimsDir(), e.Name()))
			}
		}
	}
	if err := d.store.Sync(); err != nil { // records the current boot ID
		return err
	}
	// Reservation files of every GPU we know or that a claim names.
	uuids := map[string]bool{}
	d.gpusMu.RLock()
	for _, g := range d.gpus {
		uuids[g.UUID] = true
	}
	d.gpusMu.RUnlock()
	if entries, err := os.ReadDir(d.gpuStateDir()); err == nil {
		for _, e := range entries {
			uuids[e.Name()] = true
		}
	}
	list := make([]string, 0, len(uuids))
	for u := range uuids {
		list = append(list, u)
	}
	return d.writeReservations(list)
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

func removeTempFiles(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if atomicfile.IsTempFile(e.Name()) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
