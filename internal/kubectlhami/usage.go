package kubectlhami

import (
	"context"
	"fmt"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Usage is the used memory the plugins' metrics report.
type Usage struct {
	// ByGPU is hami_dra_gpu_memory_used_bytes by GPU UUID.
	ByGPU map[string]int64
	// ByClaim is hami_dra_claim_memory_used_bytes by claim UID and GPU UUID.
	ByClaim map[[2]string]int64
	// Nodes are the nodes whose plugin was scraped (from the node label of
	// hami_dra_gpu_healthy): only their GPUs get a used figure.
	Nodes map[string]bool
}

// ScrapeUsage reads the used-memory metrics from each plugin metrics URL
// (e.g. http://localhost:8080/metrics after kubectl port-forward).
func ScrapeUsage(ctx context.Context, urls []string) (*Usage, error) {
	u := &Usage{ByGPU: map[string]int64{}, ByClaim: map[[2]string]int64{}, Nodes: map[string]bool{}}
	client := &http.Client{Timeout: 10 * time.Second}
	for _, url := range urls {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, fmt.Errorf("metrics URL %q: %w", url, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("scrape %s: %w", url, err)
		}
		families, err := parseMetrics(resp)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("scrape %s: %w", url, err)
		}
		u.add(families)
	}
	return u, nil
}

func parseMetrics(resp *http.Response) (map[string]*dto.MetricFamily, error) {
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

func (u *Usage) add(families map[string]*dto.MetricFamily) {
	labels := func(m *dto.Metric) map[string]string {
		out := map[string]string{}
		for _, l := range m.GetLabel() {
			out[l.GetName()] = l.GetValue()
		}
		return out
	}
	if f, ok := families["hami_dra_gpu_healthy"]; ok {
		for _, m := range f.GetMetric() {
			u.Nodes[labels(m)["node"]] = true
		}
	}
	if f, ok := families["hami_dra_gpu_memory_used_bytes"]; ok {
		for _, m := range f.GetMetric() {
			u.ByGPU[labels(m)["gpu_uuid"]] += int64(m.GetGauge().GetValue())
		}
	}
	if f, ok := families["hami_dra_claim_memory_used_bytes"]; ok {
		for _, m := range f.GetMetric() {
			l := labels(m)
			u.ByClaim[[2]string{l["uid"], l["gpu_uuid"]}] += int64(m.GetGauge().GetValue())
		}
	}
}

// Apply fills the used memory of the gpus and claims on scraped nodes. On
// those, a GPU or claim share the metrics do not mention has no prepared
// claim with usage: it uses nothing.
func (u *Usage) Apply(gpus []GPU, claims []Claim) {
	for i := range gpus {
		if u.Nodes[gpus[i].Node] {
			v := u.ByGPU[gpus[i].UUID]
			gpus[i].UsedMemoryBytes = &v
		}
	}
	for i := range claims {
		if u.Nodes[claims[i].Node] {
			v := u.ByClaim[[2]string{claims[i].UID, claims[i].UUID}]
			claims[i].UsedMemoryBytes = &v
		}
	}
}
