package audit

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the audit's Prometheus metrics. Per-claim gauges are rebuilt
// every round, so claims that are gone leave no series behind.
type Metrics struct {
	memory, compute, overQuota, computeOver *prometheus.GaugeVec
	unclaimed, unclaimedMemory              *prometheus.GaugeVec
	kills, errors                           *prometheus.CounterVec
	rounds                                  prometheus.Counter
}

var claimGPU = []string{"namespace", "claim", "gpu_uuid"}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		memory: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hami_dra_audit_claim_memory_bytes",
			Help: "Device memory the claim's processes hold on the GPU, as NVML reports it (not libvgpu's accounting)."}, claimGPU),
		compute: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hami_dra_audit_claim_compute_percent",
			Help: "The claim's share of the GPU over the compute window, from NVML's per-process utilisation samples."}, claimGPU),
		overQuota: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hami_dra_audit_claim_over_memory_quota",
			Help: "1 while the claim's processes hold more device memory than its quota plus the margin."}, claimGPU),
		computeOver: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hami_dra_audit_claim_over_compute_share",
			Help: "1 while the claim's measured share exceeds its hard-capped share plus the margin over the window."}, claimGPU),
		unclaimed: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hami_dra_audit_unclaimed_processes",
			Help: "Processes on the GPU that belong to no prepared claim of it (host processes, other runtimes, other device plugins)."}, []string{"gpu_uuid"}),
		unclaimedMemory: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hami_dra_audit_unclaimed_memory_bytes",
			Help: "Device memory held by the GPU's unclaimed processes."}, []string{"gpu_uuid"}),
		kills: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hami_dra_audit_kills_total",
			Help: "Processes killed for holding more device memory than their claim's quota."}, claimGPU),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hami_dra_audit_errors_total",
			Help: "Audit rounds in which a GPU's processes could not be listed."}, []string{"gpu_uuid"}),
		rounds: prometheus.NewCounter(prometheus.CounterOpts{Name: "hami_dra_audit_rounds_total",
			Help: "Audit rounds completed."}),
	}
	if reg != nil {
		reg.MustRegister(m.memory, m.compute, m.overQuota, m.computeOver, m.unclaimed, m.unclaimedMemory, m.kills, m.errors, m.rounds)
	}
	return m
}

func (m *Metrics) beginRound() {
	for _, g := range []*prometheus.GaugeVec{m.memory, m.compute, m.overQuota, m.computeOver, m.unclaimed, m.unclaimedMemory} {
		g.Reset()
	}
}
