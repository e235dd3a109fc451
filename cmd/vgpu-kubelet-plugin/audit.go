package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/audit"
	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/metrics"
)

// auditOptions are the node audit's flags (internal/audit).
type auditOptions struct {
	interval      time.Duration
	memoryMargin  string
	grace         time.Duration
	computeMargin float64
	computeWindow time.Duration
	procRoot      string
}

func addAuditFlags(fs *flag.FlagSet, o *auditOptions) {
	fs.DurationVar(&o.interval, "audit-interval", 0, "how often the node audit compares what NVML reports per process with the claims' quotas (memory over quota: event, metric and, unless the claim's memoryAuditAction is Warn, SIGKILL after --audit-grace-period; compute over a hard cap: event and metric); 0 disables. Needs the host's PID namespace (hostPID), get/list/watch on pods and create on events")
	fs.StringVar(&o.memoryMargin, "audit-memory-margin", "256Mi", "device memory tolerated above a claim's quota (NVML also counts the CUDA context and the driver's allocation granularity)")
	fs.DurationVar(&o.grace, "audit-grace-period", 30*time.Second, "how long a claim may stay over its memory quota before its largest processes are killed")
	fs.Float64Var(&o.computeMargin, "audit-compute-margin", 10, "percentage points tolerated above a hard-capped compute share, averaged over --audit-compute-window")
	fs.DurationVar(&o.computeWindow, "audit-compute-window", time.Minute, "window over which a claim's measured compute share is averaged")
	fs.StringVar(&o.procRoot, "audit-proc-root", "/proc", "the host's /proc, where the cgroup of a GPU process's host PID is read")
}

// auditSource is what the audit needs from the driver.
type auditSource interface {
	AuditClaims() []audit.Claim
}

// startAudit runs the node audit until ctx ends, if enabled and possible.
func startAudit(ctx context.Context, opts options, d discovery.Discoverer, p plugin, client kubernetes.Interface, gpus []discovery.GPU) error {
	logger := klog.FromContext(ctx)
	o := opts.audit
	if o.interval <= 0 {
		logger.Info("Node audit off (--audit-interval=0): memory and compute quotas are enforced by libvgpu alone, inside the containers")
		return nil
	}
	margin, err := resource.ParseQuantity(o.memoryMargin)
	if err != nil || margin.Sign() < 0 {
		return fmt.Errorf("--audit-memory-margin %q: want a non-negative quantity such as 256Mi", o.memoryMargin)
	}
	if o.grace < 0 || o.computeWindow <= 0 || o.computeMargin < 0 {
		return fmt.Errorf("--audit-grace-period must be >= 0, --audit-compute-window > 0 and --audit-compute-margin >= 0")
	}
	nvml, ok := d.(*discovery.NVMLDiscoverer)
	if !ok && opts.simulate != "" && opts.nvmlLibraryPath != "" {
		// Simulated GPUs whose processes an NVML library reports (vgpu-core's
		// fake driver, which simulates those GPUs for the workloads): the
		// audit reads them there, by the same UUIDs.
		if nvml, err = discovery.OpenNVML(ctx, discovery.NVMLOptions{LibraryPath: opts.nvmlLibraryPath}); err != nil {
			return fmt.Errorf("node audit of simulated GPUs through --nvml-library-path: %w", err)
		}
		go func() {
			<-ctx.Done()
			_ = nvml.Close()
		}()
	} else if !ok {
		logger.Info("Node audit off: simulated GPUs report no processes (unless --nvml-library-path names an NVML that simulates them)")
		return nil
	}
	src, ok := p.(auditSource)
	if !ok || client == nil {
		return nil
	}
	pods := newPodIndex(ctx, client, opts.nodeName)
	reporter := newEventReporter(ctx, client, opts.nodeName)
	uuids := make([]string, len(gpus))
	for i, g := range gpus {
		uuids[i] = g.UUID
	}
	cg := audit.CgroupReader{ProcRoot: o.procRoot}
	a := audit.New(audit.Config{
		GPUs: nvmlProcesses{nvml},
		NodeGPUs: func() []string {
			// the GPUs found at start, and any a claim still holds
			all := map[string]bool{}
			for _, u := range uuids {
				all[u] = true
			}
			for _, c := range src.AuditClaims() {
				for _, g := range c.GPUs {
					all[g.UUID] = true
				}
			}
			out := make([]string, 0, len(all))
			for u := range all {
				out = append(out, u)
			}
			sort.Strings(out)
			return out
		},
		Claims:        src.AuditClaims,
		Pod:           pods.get,
		PodOf:         cg.PodOf,
		Kill:          func(pid uint32) error { return unix.Kill(int(pid), unix.SIGKILL) },
		Reporter:      reporter,
		Metrics:       audit.NewMetrics(prometheus.DefaultRegisterer),
		MemoryMargin:  margin.Value(),
		Grace:         o.grace,
		ComputeMargin: o.computeMargin,
		ComputeWindow: o.computeWindow,
	})
	logger.Info("Node audit on", "interval", o.interval, "memoryMargin", o.memoryMargin, "gracePeriod", o.grace,
		"computeMargin", o.computeMargin, "computeWindow", o.computeWindow)
	go a.Run(klog.NewContext(ctx, logger.WithName("audit")), o.interval)
	return nil
}

// nvmlProcesses adapts the NVML discoverer to audit.GPUs.
type nvmlProcesses struct{ d *discovery.NVMLDiscoverer }

func (n nvmlProcesses) Processes(uuid string) ([]audit.Process, error) {
	ps, err := n.d.Processes(uuid)
	out := make([]audit.Process, len(ps))
	for i, p := range ps {
		out[i] = audit.Process{PID: p.PID, MemoryBytes: p.MemoryBytes}
	}
	return out, err
}

func (n nvmlProcesses) Utilization(uuid string, since uint64) ([]audit.Sample, error) {
	ss, err := n.d.ProcessUtilization(uuid, since)
	out := make([]audit.Sample, len(ss))
	for i, s := range ss {
		out[i] = audit.Sample{PID: s.PID, TimestampUs: s.TimestampUs, SMUtil: s.SMUtil}
	}
	return out, err
}

// podIndex finds the node's pods by UID, from an informer restricted to
// the node.
type podIndex struct{ indexer cache.Indexer }

const byUID = "uid"

func newPodIndex(ctx context.Context, client kubernetes.Interface, node string) *podIndex {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	_ = inf.AddIndexers(cache.Indexers{byUID: func(obj any) ([]string, error) {
		if pod, ok := obj.(*corev1.Pod); ok {
			return []string{string(pod.UID)}, nil
		}
		return nil, nil
	}})
	factory.Start(ctx.Done())
	return &podIndex{indexer: inf.GetIndexer()}
}

// get returns the pod and the names of the claims it uses.
func (p *podIndex) get(uid string) (audit.Pod, bool) {
	objs, err := p.indexer.ByIndex(byUID, uid)
	if err != nil || len(objs) == 0 {
		return audit.Pod{}, false
	}
	pod := objs[0].(*corev1.Pod)
	return audit.Pod{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Claims: metrics.ClaimNames(pod)}, true
}

// eventReporter turns findings into Warning events on the pods and the
// claims.
type eventReporter struct{ recorder record.EventRecorder }

func newEventReporter(ctx context.Context, client kubernetes.Interface, node string) *eventReporter {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	go func() {
		<-ctx.Done()
		b.Shutdown()
	}()
	return &eventReporter{recorder: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "hami-dra-audit", Host: node})}
}

func (e *eventReporter) Report(_ context.Context, f audit.Finding) {
	for _, pod := range f.Pods {
		e.recorder.Event(&corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: types.UID(pod.UID)},
			corev1.EventTypeWarning, string(f.Reason), f.Message)
	}
	for _, c := range f.Claims {
		e.recorder.Event(&corev1.ObjectReference{APIVersion: "resource.k8s.io/v1", Kind: "ResourceClaim", Namespace: c.Namespace, Name: c.Name, UID: types.UID(c.UID)},
			corev1.EventTypeWarning, string(f.Reason), f.Message)
	}
}
