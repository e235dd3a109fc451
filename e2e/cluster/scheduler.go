package cluster

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/configz"
	"k8s.io/klog/v2"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// startScheduler runs the real kube-scheduler in this process. The
// scheduler's test server wants a *testing.T, which the demo does not have,
// so this does what it does with the scheduler's own Setup and Run.
// It returns a channel that closes when the scheduler has stopped.
func startScheduler(ctx context.Context, kubeconfig string, extra ...string) (<-chan struct{}, error) {
	logger := klog.FromContext(ctx).WithName("kube-scheduler")
	ctx = klog.NewContext(ctx, logger)

	// A registry of its own, with a copy of the process-wide feature gates
	// (1.37 defaults), as the scheduler's test server does: the default
	// registry is shared with the apiserver started in the same process.
	registry := basecompatibility.NewComponentGlobalsRegistry()
	if err := registry.Register(basecompatibility.DefaultKubeComponent,
		utilcompatibility.DefaultKubeEffectiveVersionForTest(),
		utilfeature.DefaultMutableFeatureGate.DeepCopy()); err != nil {
		return nil, fmt.Errorf("kube-scheduler: register component globals: %w", err)
	}
	opts := scheduleroptions.NewOptionsWithComponentGlobalsRegistry(registry)
	fs := pflag.NewFlagSet("kube-scheduler", pflag.ContinueOnError)
	for _, f := range opts.Flags.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(append([]string{
		"--kubeconfig=" + kubeconfig,
		// One scheduler, no need to wait for a lease.
		"--leader-elect=false",
		// Nothing scrapes its health or metrics endpoint.
		"--secure-port=0",
	}, extra...)); err != nil {
		return nil, fmt.Errorf("kube-scheduler flags: %w", err)
	}
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("kube-scheduler: apply component globals: %w", err)
	}

	cc, sched, err := schedulerapp.Setup(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("kube-scheduler setup: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// configz is process-wide; a scheduler started again in the same
		// process (a second cluster in one test binary) must find it free.
		defer configz.Delete("componentconfig")
		if err := schedulerapp.Run(ctx, cc, sched); err != nil && ctx.Err() == nil {
			logger.Error(err, "kube-scheduler stopped")
		}
	}()
	logger.V(1).Info("kube-scheduler started")
	return done, nil
}
