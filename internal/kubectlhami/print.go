package kubectlhami

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// newTable writes columns as kubectl's table printer does: left-aligned,
// three spaces between columns, upper-case headers.
func newTable(out io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(out, 6, 4, 3, ' ', 0)
}

func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// quantity prints a byte count as a Kubernetes quantity ("80Gi", "20480Mi").
func quantity(v int64) string {
	return resource.NewQuantity(v, resource.BinarySI).String()
}

func optBytes(v *int64) string {
	if v == nil {
		return "<unknown>"
	}
	return quantity(*v)
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// PrintGPUs prints gpus as a table, or as JSON or YAML.
func PrintGPUs(out io.Writer, format string, gpus []GPU, withUsage bool) error {
	if format != "" {
		return printStructured(out, format, map[string]any{"gpus": nonNil(gpus)})
	}
	w := newTable(out)
	header := []string{"NODE", "INDEX", "GPU", "MODEL", "MEMORY", "ALLOCATED", "FREE", "CORES", "FREE-CORES", "SHARES"}
	if withUsage {
		header = append(header, "USED")
	}
	row(w, append(header, "HEALTH")...)
	for _, g := range gpus {
		cells := []string{g.Node, strconv.FormatInt(g.Index, 10), g.Device, orNone(g.Model), quantity(g.MemoryBytes),
			quantity(g.AllocatedMemoryBytes), quantity(g.FreeMemoryBytes()), strconv.FormatInt(g.Cores, 10),
			strconv.FormatInt(g.FreeCores(), 10), strconv.Itoa(g.Shares)}
		if withUsage {
			cells = append(cells, optBytes(g.UsedMemoryBytes))
		}
		row(w, append(cells, g.Health)...)
	}
	return w.Flush()
}

// PrintClaims prints claim shares as a table, or as JSON or YAML.
func PrintClaims(out io.Writer, format string, claims []Claim, withUsage bool) error {
	if format != "" {
		return printStructured(out, format, map[string]any{"claims": nonNil(claims)})
	}
	w := newTable(out)
	header := []string{"NAMESPACE", "CLAIM", "PODS", "NODE", "GPU", "REQUEST", "MEMORY", "CORES"}
	if withUsage {
		header = append(header, "USED")
	}
	row(w, header...)
	for _, c := range claims {
		cells := []string{c.Namespace, c.Name, orNone(strings.Join(c.Pods, ",")), c.Node, c.Device, c.Request,
			quantity(c.MemoryBytes), strconv.FormatInt(c.Cores, 10)}
		if withUsage {
			cells = append(cells, optBytes(c.UsedMemoryBytes))
		}
		row(w, cells...)
	}
	return w.Flush()
}

// PrintFit prints where a share fits.
func PrintFit(out io.Writer, format string, req Request, results []FitResult) error {
	if format != "" {
		return printStructured(out, format, map[string]any{"request": req, "gpus": nonNil(results)})
	}
	w := newTable(out)
	row(w, "NODE", "INDEX", "GPU", "MODEL", "FREE", "FREE-CORES", "HEALTH", "FITS")
	fits := 0
	for _, r := range results {
		answer := "no"
		if r.Fits {
			answer = "yes"
			fits++
		}
		row(w, r.Node, strconv.FormatInt(r.Index, 10), r.Device, orNone(r.Model), quantity(r.FreeMemoryBytes()),
			strconv.FormatInt(r.FreeCores(), 10), r.Health, answer)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "\n%d of %d GPUs can take this share now.\n", fits, len(results))
	return err
}

func printStructured(out io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "    ")
		return enc.Encode(v)
	case "yaml":
		data, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = out.Write(data)
		return err
	}
	return fmt.Errorf("output format %q: want json or yaml (or none for a table)", format)
}

// nonNil makes empty lists print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
