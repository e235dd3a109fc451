package driver

import (
	"context"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

const (
	// cleanupParallel bounds the API requests of one cleanup pass; with the
	// client's QPS limit (--kube-api-qps) it bounds the load on the API
	// server however many claims the node has.
	cleanupParallel = 4
	// cleanupTimeout bounds one claim's check: a slow API server delays
	// the cleanup, never a kubelet call.
	cleanupTimeout = 10 * time.Second
)

func (d *Driver) cleanupLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.cleanup(ctx)
			// Also between re-discoveries that change nothing: sweep
			// orphaned files, rewrite reservation files that differ.
			if err := d.withInstanceLock(func() error { return d.reconcile(ctx) }); err != nil {
				klog.FromContext(ctx).Error(err, "Reconciling prepared claims")
			}
		}
	}
}

// cleanup unprepares claims that were deleted, re-created under another
// UID, deallocated or allocated to another node while the kubelet could not
// tell us (plugin down, force deletion). Claims the API cannot be asked
// about are kept.
//
// The API requests run without any lock held: a slow API server must not
// stall prepares (during a rolling update every call holds the instances'
// file lock). Only the unprepare of a stale claim takes the locks, and it
// re-checks that the record is still the one that was found stale.
func (d *Driver) cleanup(ctx context.Context) (removed int) {
	logger := klog.FromContext(ctx)
	// Another instance may have prepared or unprepared claims.
	_ = d.withInstanceLock(func() error { return nil })
	claims := d.store.Claims()
	type stale struct {
		uid string
		rec checkpoint.Claim
	}
	var (
		mu    sync.Mutex
		found []stale
		sem   = make(chan struct{}, cleanupParallel)
		wg    sync.WaitGroup
	)
	for uid, rec := range claims {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			reqCtx, cancel := context.WithTimeout(ctx, cleanupTimeout)
			defer cancel()
			claim, err := d.claimClient.ResourceClaims(rec.Namespace).Get(reqCtx, rec.Name, metav1.GetOptions{})
			reason := ""
			switch {
			case apierrors.IsNotFound(err):
				reason = "deleted"
			case err != nil:
				logger.V(2).Info("Cannot check claim, keeping it", "uid", uid, "err", err)
				return
			case string(claim.UID) != uid:
				reason = "re-created with another UID"
			case !d.allocatedHere(claim, rec):
				reason = "deallocated or allocated to another node"
			default:
				return
			}
			logger.Info("Unpreparing claim", "claim", klog.KRef(rec.Namespace, rec.Name), "uid", uid, "reason", reason)
			mu.Lock()
			found = append(found, stale{uid, rec})
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, s := range found {
		err := d.withInstanceLock(func() error {
			unlock := d.claimLocks.lock(s.uid)
			defer unlock()
			rec, ok := d.store.Get(s.uid)
			if !ok || rec.Namespace != s.rec.Namespace || rec.Name != s.rec.Name {
				return nil // unprepared (or replaced) meanwhile
			}
			if err := d.removeClaim(ctx, s.uid, rec); err != nil {
				return err
			}
			removed++
			return nil
		})
		if err != nil {
			logger.Error(err, "Cleanup failed", "uid", s.uid)
		}
	}
	return removed
}

// allocatedHere reports whether the claim's allocation still holds one of
// the devices the record was prepared with (same driver, pool and device).
func (d *Driver) allocatedHere(claim *resourceapi.ResourceClaim, rec checkpoint.Claim) bool {
	if claim.Status.Allocation == nil {
		return false
	}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != d.cfg.DriverName {
			continue
		}
		for _, dev := range rec.Devices {
			if r.Pool == dev.Pool && r.Device == dev.DeviceName {
				return true
			}
		}
	}
	return false
}
