package inventory

import (
	"fmt"
	"testing"

	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/klog/v2/ktesting"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// TestModelSelectorsAreExact evaluates, with the scheduler's CEL library,
// the selectors the chart's per-model DeviceClasses use on the published
// devices: a family or model compared with == selects exactly its GPUs;
// the product-name substring test it replaces confused A10 with A100 and
// H20 with H200.
func TestModelSelectorsAreExact(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	products := []string{"NVIDIA A10", "NVIDIA A10G", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA H20", "NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA L40", "NVIDIA L40S", "Tesla T4"}
	tests := []struct {
		expr string
		want []string
	}{
		{`device.attributes["vgpu.hami.io"].family == "a10"`, []string{"NVIDIA A10"}},
		{`device.attributes["vgpu.hami.io"].family == "a100"`, []string{"NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"}},
		{`device.attributes["vgpu.hami.io"].family == "h20"`, []string{"NVIDIA H20"}},
		{`device.attributes["vgpu.hami.io"].family == "l40"`, []string{"NVIDIA L40"}},
		{`device.attributes["vgpu.hami.io"].model == "a100-sxm4-80gb"`, []string{"NVIDIA A100-SXM4-80GB"}},
		{`device.attributes["vgpu.hami.io"].model == "t4"`, []string{"Tesla T4"}},
		// What the chart did before: kept here to show the test can fail.
		{`device.attributes["vgpu.hami.io"].productName.contains("H20")`, []string{"NVIDIA H20", "NVIDIA H200"}},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			sel := cel.GetCompiler(cel.Features{}).CompileCELExpression(tc.expr, cel.Options{})
			if sel.Error != nil {
				t.Fatal(sel.Error)
			}
			var got []string
			for i, p := range products {
				dev := Device(ctx, discovery.GPU{UUID: fmt.Sprintf("GPU-%d", i), ProductName: p, MemoryBytes: 16 << 30, NUMANode: -1})
				ok, _, err := sel.DeviceMatches(ctx, cel.Device{Driver: "vgpu.hami.io", Attributes: dev.Attributes, Capacity: dev.Capacity})
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					got = append(got, p)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("selects %q, want %q", got, tc.want)
			}
		})
	}
}
