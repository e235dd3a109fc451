package main

import (
	"context"
	"flag"

	"k8s.io/client-go/kubernetes"

	"github.com/hami-dra/hami-dra/internal/metrics"
)

func addMetricsFlags(fs *flag.FlagSet, podLabels *bool) {
	fs.BoolVar(podLabels, "metrics-pod-labels", false, "label the per-claim metrics with the pods and containers that use each claim; needs get, list and watch on pods (the plugin watches the pods of its node)")
}

// claimMetricsOptions labels the claim metrics with the node and, when
// asked for, with the claims' pods and containers.
func claimMetricsOptions(ctx context.Context, opts options, client kubernetes.Interface) []metrics.CollectorOption {
	out := []metrics.CollectorOption{metrics.WithNode(opts.nodeName)}
	if opts.metricsPodLabels && client != nil {
		out = append(out, metrics.WithPods(metrics.NewNodePods(ctx, client, opts.nodeName)))
	}
	return out
}
