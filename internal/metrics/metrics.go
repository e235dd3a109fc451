// Package metrics serves the plugin's Prometheus metrics and its health
// endpoints. Values are read from the driver at scrape time, so the metrics
// can never disagree with the checkpoint.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/region"
)

// GPUQuota is a claim's quota on one GPU.
type GPUQuota struct {
	// Index is the quota index i of CUDA_DEVICE_*_LIMIT_<i>.
	Index       int
	UUID        string
	MemoryBytes int64
	Cores       int64
	// Lost says the GPU is no longer on the node (removed, replaced,
	// fallen off the bus): the claim cannot run until it is allocated anew.
	Lost bool
}

// ClaimQuota is one prepared claim.
type ClaimQuota struct {
	Namespace, Name, UID string
	GPUs                 []GPUQuota
	// RegionPath is the host path of the claim's shared accounting region,
	// where libvgpu keeps the claim's usage ("" if unknown).
	RegionPath string
}

// Source is what the metrics are computed from (the driver).
type Source interface {
	// PreparedClaims returns the claims whose preparation completed.
	PreparedClaims() []ClaimQuota
}

var (
	// claimLabels identify one claim's share of one GPU, and who holds
	// it: the claim's pods and their containers (empty until the pods
	// are seen; see pods.go) and the node. Cardinality is one series per
	// prepared claim and GPU, as without the pod labels: a claim shared
	// by many pods names at most 4 in one label value.
	claimLabels     = []string{"namespace", "claim", "uid", "gpu_uuid", "index", "pod", "containers", "node"}
	descClaimMemory = prometheus.NewDesc("hami_dra_claim_memory_limit_bytes",
		"Memory quota of a prepared claim on one GPU.", claimLabels, nil)
	descClaimCores = prometheus.NewDesc("hami_dra_claim_cores_limit_percent",
		"Compute share of a prepared claim on one GPU, percent of the GPU.", claimLabels, nil)
	descPrepared = prometheus.NewDesc("hami_dra_prepared_claims",
		"Number of claims prepared on this node.", nil, nil)
	descGPUMemory = prometheus.NewDesc("hami_dra_gpu_allocated_memory_bytes",
		"Sum of the memory quotas of prepared claims on a GPU.", []string{"gpu_uuid"}, nil)
	descGPUCores = prometheus.NewDesc("hami_dra_gpu_allocated_cores_percent",
		"Sum of the compute shares of prepared claims on a GPU.", []string{"gpu_uuid"}, nil)

	// Usage, as the claim's libvgpu accounts it in the shared region. The
	// region is writable by the claim's containers, so these are what the
	// workload reports, never limits; only the claim's own GPUs are read.
	descClaimMemoryUsed = prometheus.NewDesc("hami_dra_claim_memory_used_bytes",
		"Device memory held by a claim's processes on one GPU (libvgpu's accounting, what cuMemGetInfo and nvidia-smi show inside).", claimLabels, nil)
	descClaimGPUTime = prometheus.NewDesc("hami_dra_claim_gpu_time_seconds_total",
		"GPU time measured for a claim's kernels on one GPU by the compute limiter (only claims with a compute share); rate() is the claim's utilisation.", claimLabels, nil)
	descClaimThrottled = prometheus.NewDesc("hami_dra_claim_throttled_seconds_total",
		"Time a claim's kernel launches were held back to keep it within its compute share.", claimLabels, nil)
	descClaimRegion = prometheus.NewDesc("hami_dra_claim_libvgpu_region",
		"1 while the claim's accounting region is there and readable (libvgpu creates it when a process of the claim first uses CUDA), 0 otherwise. A claim whose pods use the GPU while this stays 0 runs without libvgpu's shared accounting: a musl or static image, a process that dropped the preload, or something planted where the region belongs (the node audit still sees its processes).", claimLabels, nil)
	descClaimGPULost = prometheus.NewDesc("hami_dra_claim_gpu_lost",
		"1 when the GPU a prepared claim was allocated is no longer on the node (removed, replaced or fallen off the bus): the claim's CDI spec is withdrawn, its containers cannot start, and it is never given another GPU; delete its pods so that it is allocated anew.", claimLabels, nil)
	descGPUMemoryUsed = prometheus.NewDesc("hami_dra_gpu_memory_used_bytes",
		"Sum of the device memory held by the prepared claims on a GPU.", []string{"gpu_uuid"}, nil)
)

// NewCollector returns the collector of the quota metrics, for callers
// that serve their own registry (e.g. prometheus.MustRegister(NewCollector(d))).
func NewCollector(src Source, opts ...CollectorOption) prometheus.Collector {
	c := collector{src: src}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// CollectorOption adds to the claim metrics' labels.
type CollectorOption func(*collector)

// WithPods fills the pod and containers labels.
func WithPods(p PodLookup) CollectorOption { return func(c *collector) { c.pods = p } }

// WithNode fills the node label.
func WithNode(node string) CollectorOption { return func(c *collector) { c.node = node } }

type collector struct {
	src  Source
	pods PodLookup
	node string
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClaimMemory, descClaimCores, descPrepared, descGPUMemory, descGPUCores,
		descClaimMemoryUsed, descClaimGPUTime, descClaimThrottled, descClaimRegion, descClaimGPULost, descGPUMemoryUsed} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	claims := c.src.PreparedClaims()
	mem, cores, used := map[string]int64{}, map[string]int64{}, map[string]uint64{}
	for _, cl := range claims {
		usage, present := readUsage(cl)
		var holders ClaimPods
		if c.pods != nil {
			holders = c.pods.ClaimPods(cl.Namespace, cl.Name)
		}
		for _, g := range cl.GPUs {
			idx := strconv.Itoa(g.Index)
			labels := []string{cl.Namespace, cl.Name, cl.UID, g.UUID, idx, holders.Pods, holders.Containers, c.node}
			ch <- prometheus.MustNewConstMetric(descClaimMemory, prometheus.GaugeValue, float64(g.MemoryBytes), labels...)
			ch <- prometheus.MustNewConstMetric(descClaimCores, prometheus.GaugeValue, float64(g.Cores), labels...)
			mem[g.UUID] += g.MemoryBytes
			cores[g.UUID] += g.Cores
			// A GPU the claim has not used yet has no entry: zero usage.
			u := usage[g.UUID]
			ch <- prometheus.MustNewConstMetric(descClaimMemoryUsed, prometheus.GaugeValue, float64(u.MemoryUsedBytes), labels...)
			ch <- prometheus.MustNewConstMetric(descClaimGPUTime, prometheus.CounterValue, float64(u.GPUTimeNs)/1e9, labels...)
			ch <- prometheus.MustNewConstMetric(descClaimThrottled, prometheus.CounterValue, float64(u.ThrottledNs)/1e9, labels...)
			ch <- prometheus.MustNewConstMetric(descClaimRegion, prometheus.GaugeValue, boolValue(present), labels...)
			ch <- prometheus.MustNewConstMetric(descClaimGPULost, prometheus.GaugeValue, boolValue(g.Lost), labels...)
			used[g.UUID] += u.MemoryUsedBytes
		}
	}
	for u, v := range used {
		ch <- prometheus.MustNewConstMetric(descGPUMemoryUsed, prometheus.GaugeValue, float64(v), u)
	}
	ch <- prometheus.MustNewConstMetric(descPrepared, prometheus.GaugeValue, float64(len(claims)))
	for u, v := range mem {
		ch <- prometheus.MustNewConstMetric(descGPUMemory, prometheus.GaugeValue, float64(v), u)
		ch <- prometheus.MustNewConstMetric(descGPUCores, prometheus.GaugeValue, float64(cores[u]), u)
	}
}

// readUsage reads the claim's region and tells whether it is usable; a
// claim whose processes have not used CUDA yet has none, and an unreadable
// region (damaged, or something else planted in its place) only loses its
// usage metrics (it is logged at -v=2), never the quota metrics.
func readUsage(cl ClaimQuota) (map[string]region.Device, bool) {
	out := map[string]region.Device{}
	if cl.RegionPath == "" {
		return out, false
	}
	devices, err := region.ReadFile(cl.RegionPath)
	if err != nil {
		if !errors.Is(err, region.ErrNotFound) {
			klog.V(2).InfoS("Usage metrics of a claim unavailable", "claim", klog.KRef(cl.Namespace, cl.Name), "err", err)
		}
		return out, false
	}
	for _, d := range devices {
		out[d.UUID] = d
	}
	return out, true
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler serves /metrics, /healthz (the process answers) and /readyz
// (ready() is true: the plugin is registered with the kubelet).
func Handler(src Source, ready func() bool) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{src: src}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready == nil || !ready() {
			http.Error(w, "not registered with the kubelet\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Serve listens on addr (e.g. ":8080") until ctx is canceled.
func Serve(ctx context.Context, addr string, src Source, ready func() bool) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: Handler(src, ready), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	klog.FromContext(ctx).Info("Serving metrics", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}
