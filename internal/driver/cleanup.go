package driver

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

func (d *Driver) cleanupLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = d.withInstanceLock(func() error { d.cleanup(ctx); return nil })
		}
	}
}

// cleanup unprepares claims that were deleted, or deleted and re-created
// under another UID, while the kubelet could not tell us (plugin down,
// force deletion). Claims the API cannot be asked about are kept.
func (d *Driver) cleanup(ctx context.Context) (removed int) {
	logger := klog.FromContext(ctx)
	for uid, rec := range d.store.Claims() {
		claim, err := d.cfg.KubeClient.ResourceV1().ResourceClaims(rec.Namespace).Get(ctx, rec.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			logger.V(2).Info("Cannot check claim, keeping it", "uid", uid, "err", err)
			continue
		case string(claim.UID) != uid:
		default:
			continue
		}
		logger.Info("Unpreparing claim that no longer exists", "claim", klog.KRef(rec.Namespace, rec.Name), "uid", uid)
		if err := d.unprepareClaim(ctx, uid); err != nil {
			logger.Error(err, "Cleanup failed", "uid", uid)
			continue
		}
		removed++
	}
	return removed
}
