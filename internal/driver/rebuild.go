package driver

import (
	"context"
	"fmt"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

// rebuildCheckpoint replaces a checkpoint that cannot be trusted (cause
// wraps checkpoint.ErrCorrupt) with one rebuilt from what is on disk and
// what the API server says: every claim that has a CDI spec or a claim
// directory here and is still allocated is planned again from its
// allocation, as a completed prepare; the others' files are left for the
// orphan sweep. The corrupt file is moved aside (kept for inspection) only
// once the rebuild succeeded: without the API server the plugin fails to
// start, saying why, and retries on its next start rather than forgetting
// prepared claims.
func (d *Driver) rebuildCheckpoint(ctx context.Context, path, bootID string, cause error) (*checkpoint.Store, error) {
	logger := klog.FromContext(ctx)
	onDisk := map[string]bool{}
	if entries, err := os.ReadDir(d.cfg.CDIRoot); err == nil {
		for _, e := range entries {
			if uid, ok := cdi.ClaimUIDFromFile(e.Name()); ok {
				onDisk[uid] = true
			}
		}
	}
	if entries, err := os.ReadDir(d.claimsDir()); err == nil {
		for _, e := range entries {
			onDisk[e.Name()] = true
		}
	}
	recs := map[string]checkpoint.Claim{}
	if len(onDisk) > 0 {
		// One list of all claims: a claim's spec records its UID, not its
		// namespace and name. This happens once, on a damaged node.
		list, err := d.claimClient.ResourceClaims("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s cannot be used (%w), and rebuilding it from the %d claims on disk needs the API server: %w", path, cause, len(onDisk), err)
		}
		for i := range list.Items {
			claim := &list.Items[i]
			uid := string(claim.UID)
			if !onDisk[uid] {
				continue
			}
			rec, err := d.plan(claim)
			if err != nil {
				logger.Info("Not restoring a claim found on disk", "claim", klog.KObj(claim), "uid", uid, "reason", err.Error())
				continue
			}
			rec.State = checkpoint.PrepareCompleted
			recs[uid] = rec
		}
	}
	aside, err := checkpoint.MoveAside(path, time.Now())
	if err != nil {
		return nil, err
	}
	store, _, err := checkpoint.Open(path, bootID)
	if err != nil {
		return nil, err
	}
	for uid, rec := range recs {
		store.Put(uid, rec)
		// Written again by recovery from the rebuilt record.
		if err := cdi.Remove(d.cfg.CDIRoot, uid); err != nil {
			return nil, err
		}
	}
	if err := store.Sync(); err != nil {
		return nil, err
	}
	logger.Error(cause, "Checkpoint was damaged; moved it aside and rebuilt it from the claims on disk and the API server", "movedTo", aside, "restoredClaims", len(recs), "claimsOnDisk", len(onDisk))
	return store, nil
}
