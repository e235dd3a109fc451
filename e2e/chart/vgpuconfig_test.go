package chart

import (
	"encoding/json"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/hami-dra/hami-dra/api"
)

// opaqueParams returns the opaque parameters for driver in a DeviceClass or
// claim spec's config list.
func opaqueParams(t *testing.T, configs []any, driver string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, c := range configs {
		opaque, found, _ := unstructured.NestedMap(c.(map[string]any), "opaque")
		if !found || opaque["driver"] != driver {
			continue
		}
		raw, err := json.Marshal(opaque["parameters"])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, raw)
	}
	return out
}

// TestConfigsDecode decodes every VgpuConfig the chart puts into its
// DeviceClasses (default and full values) and every one in the examples with
// the plugin's own strict decoder (api.DecodeConfig): field names, types and
// values are what the plugin accepts.
func TestConfigsDecode(t *testing.T) {
	check := func(where string, raw []byte) {
		t.Helper()
		if _, err := api.DecodeConfig(raw); err != nil {
			t.Errorf("%s: %v\n%s", where, err, raw)
			return
		}
		t.Logf("%s: %s", where, raw)
	}
	n := 0
	for name, values := range map[string]map[string]any{"defaults": nil, "full": fullValues()} {
		for _, class := range SelectKinds(mustRender(t, values), KindDeviceClass) {
			configs, _, _ := unstructured.NestedSlice(class.Object, "spec", "config")
			for _, raw := range opaqueParams(t, configs, "vgpu.hami.io") {
				check(name+" DeviceClass "+class.GetName(), raw)
				n++
			}
		}
	}
	for _, o := range examples(t) {
		var configs []any
		switch o.GetKind() {
		case "ResourceClaimTemplate":
			configs, _, _ = unstructured.NestedSlice(o.Object, "spec", "spec", "devices", "config")
		case "ResourceClaim":
			configs, _, _ = unstructured.NestedSlice(o.Object, "spec", "devices", "config")
		}
		for _, raw := range opaqueParams(t, configs, "vgpu.hami.io") {
			check("example "+o.GetKind()+" "+o.GetName(), raw)
			n++
		}
	}
	if n < 8 {
		t.Errorf("only %d configs checked", n)
	}
	// The chart's schema and the decoder agree on what is invalid.
	if _, err := api.DecodeConfig([]byte(`{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","computePolicy":"Hard"}`)); err == nil ||
		!strings.Contains(err.Error(), "computePolicy") {
		t.Errorf("decoder accepts computePolicy Hard: %v", err)
	}
}
