package health

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of GPU health. Cardinality: one healthy series per GPU of the
// node, and one event series per GPU and distinct event (the XIDs in
// NVIDIA's catalog and five other kinds), so at most a few hundred per GPU
// in the worst case and a handful in practice.
var (
	healthLabels = []string{"node", "gpu_uuid", "index"}
	descHealthy  = prometheus.NewDesc("hami_dra_gpu_healthy",
		"1 if the GPU is healthy, 0 while it is tainted for a health event.", healthLabels, nil)
	descHealthClass = prometheus.NewDesc("hami_dra_gpu_health_class",
		"Severity of a sick GPU's worst event since it fell sick: 0 healthy, 1 recoverable, 2 fatal.", healthLabels, nil)
	descEvents = prometheus.NewDesc("hami_dra_gpu_health_events_total",
		"GPU health events by event (xid-<n>, ecc-double-bit, gpu-lost, thermal, poison, probe-failed) and class (ignored, recoverable, fatal).",
		[]string{"node", "gpu_uuid", "event", "class"}, nil)
)

// NewCollector exports the tracker's state for the plugin's /metrics.
func NewCollector(t *Tracker, node string) prometheus.Collector {
	return collector{t: t, node: node}
}

type collector struct {
	t    *Tracker
	node string
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHealthy
	ch <- descHealthClass
	ch <- descEvents
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, g := range c.t.GPUs() {
		st, ok := c.t.Status(g.UUID)
		if !ok {
			continue
		}
		healthy, class := 1.0, 0.0
		if !st.Healthy {
			healthy, class = 0, float64(st.Class)
		}
		labels := []string{c.node, g.UUID, strconv.Itoa(g.Index)}
		ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, healthy, labels...)
		ch <- prometheus.MustNewConstMetric(descHealthClass, prometheus.GaugeValue, class, labels...)
	}
	c.t.mu.Lock()
	counts := make(map[eventKey]uint64, len(c.t.events))
	for k, v := range c.t.events {
		counts[k] = v
	}
	c.t.mu.Unlock()
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(v), c.node, k.uuid, k.event, k.class.String())
	}
}
