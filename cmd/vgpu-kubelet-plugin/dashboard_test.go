package main

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hami-dra/hami-dra/internal/health"
	"github.com/hami-dra/hami-dra/internal/metrics"
)

const dashboardPath = "../../deployments/helm/hami-dra/files/dashboard.json"

// exported returns every metric the plugin exports with its labels, from
// the collectors themselves.
func exported(t *testing.T) map[string]map[string]bool {
	t.Helper()
	ch := make(chan *prometheus.Desc, 100)
	for _, c := range []prometheus.Collector{
		metrics.NewCollector(nil), health.NewCollector(health.NewTracker(health.Config{}), ""),
		gpusGauge, publishesCounter, discoveryErrorsCounter,
	} {
		c.Describe(ch)
	}
	close(ch)
	// Desc has no accessors; its String() is stable:
	// Desc{fqName: "x", help: "...", constLabels: {}, variableLabels: {a,b}}
	re := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	out := map[string]map[string]bool{}
	for d := range ch {
		m := re.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		labels := map[string]bool{}
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels[l] = true
			}
		}
		out[m[1]] = labels
	}
	return out
}

var (
	metricRe   = regexp.MustCompile(`\bhami_dra_[a-z_]+`)
	selectorRe = regexp.MustCompile(`(hami_dra_[a-z_]+)\{([^}]*)\}`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	groupingRe = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	labelValRe = regexp.MustCompile(`label_values\((hami_dra_[a-z_]+),\s*([a-z_]+)\)`)
	legendRe   = regexp.MustCompile(`\{\{\s*([a-z_]+)\s*\}\}`)
)

// queries collects every PromQL query of the dashboard (panel targets and
// template variables) with the legend it is shown with.
func queries(t *testing.T) (exprs, legends []string) {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr, LegendFormat string }
		}
		Templating struct {
			List []struct {
				Type  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			legends = append(legends, tg.LegendFormat)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok && v.Type == "query" {
			exprs = append(exprs, q)
			legends = append(legends, "")
		}
	}
	return exprs, legends
}

// TestDashboardQueries: every query of the chart's dashboard names metrics
// the plugin exports, selects and groups by labels those metrics have, and
// every legend names a label the query's result keeps.
func TestDashboardQueries(t *testing.T) {
	have := exported(t)
	exprs, legends := queries(t)
	if len(exprs) < 10 {
		t.Fatalf("only %d queries found in the dashboard", len(exprs))
	}
	for i, expr := range exprs {
		names := metricRe.FindAllString(expr, -1)
		if len(names) == 0 {
			t.Errorf("query %q names no plugin metric", expr)
		}
		union := map[string]bool{}
		for _, n := range names {
			labels, ok := have[n]
			if !ok {
				t.Errorf("query %q: metric %s is not exported", expr, n)
				continue
			}
			for l := range labels {
				union[l] = true
			}
		}
		for _, m := range selectorRe.FindAllStringSubmatch(expr, -1) {
			for _, lm := range matcherRe.FindAllStringSubmatch(m[2], -1) {
				if !have[m[1]][lm[1]] {
					t.Errorf("query %q: %s has no label %s", expr, m[1], lm[1])
				}
			}
		}
		for _, g := range groupingRe.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !union[l] {
					t.Errorf("query %q groups by %s, which none of its metrics has", expr, l)
				}
			}
		}
		for _, m := range labelValRe.FindAllStringSubmatch(expr, -1) {
			if !have[m[1]][m[2]] {
				t.Errorf("variable query %q: %s has no label %s", expr, m[1], m[2])
			}
		}
		for _, l := range legendRe.FindAllStringSubmatch(legends[i], -1) {
			if !union[l[1]] {
				t.Errorf("legend %q of %q names %s, which its metrics lack", legends[i], expr, l[1])
			}
		}
	}
}

// TestDashboardCheckCatchesMistakes makes sure the check above can fail.
func TestDashboardCheckCatchesMistakes(t *testing.T) {
	have := exported(t)
	if _, ok := have["hami_dra_claim_memory_used_bytes"]; !ok {
		t.Fatal("the claim usage metric is not among the exported ones")
	}
	if have["hami_dra_gpu_allocated_memory_bytes"]["node"] {
		t.Fatal("expected hami_dra_gpu_allocated_memory_bytes to lack a node label")
	}
	if !have["hami_dra_claim_memory_used_bytes"]["pod"] || !have["hami_dra_gpu_healthy"]["node"] {
		t.Fatalf("labels read from the collectors: %v", have)
	}
}
