package chart

import (
	"context"
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	dracel "k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/internal/gpumodel"
)

// Product names as NVML reports them on current NVIDIA data-centre GPUs,
// with the pairs a substring test confuses: A10/A10G/A100, H20/H200,
// L40/L40S, V100/V100S, H100/GH200, B200/GB200.
var dataCentreProducts = []string{
	"NVIDIA A2", "NVIDIA A10", "NVIDIA A10G", "NVIDIA A16", "NVIDIA A30", "NVIDIA A40",
	"NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB",
	"NVIDIA A800 80GB PCIe", "NVIDIA A800-SXM4-80GB",
	"NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL", "NVIDIA H800", "NVIDIA H800 PCIe",
	"NVIDIA H20", "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA GH200 480GB",
	"NVIDIA L4", "NVIDIA L20", "NVIDIA L40", "NVIDIA L40S",
	"NVIDIA B200", "NVIDIA GB200", "NVIDIA B300 SXM6 AC",
	"Tesla T4", "Tesla P4", "Tesla P40", "Tesla P100-PCIE-16GB",
	"Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB", "Tesla V100-PCIE-32GB", "Tesla V100S-PCIE-32GB",
	"NVIDIA RTX A6000", "NVIDIA RTX 6000 Ada Generation", "NVIDIA RTX PRO 6000 Blackwell Server Edition",
}

// TestModelClassesMatchExactly renders one chart DeviceClass per GPU family
// and per exact model of the list above and evaluates every selector
// against every GPU, as the plugin publishes it, with the scheduler's CEL
// library: a class selects exactly the GPUs of its family (or model), so a
// class for A10 does not take an A100 and one for H20 not an H200.
func TestModelClassesMatchExactly(t *testing.T) {
	type class struct{ name, attr, want string }
	var classes []class
	var models []any
	seen := map[string]bool{}
	for i, p := range dataCentreProducts {
		for _, c := range []class{
			{fmt.Sprintf("f%d", i), "family", gpumodel.Family(p)},
			{fmt.Sprintf("m%d", i), "model", gpumodel.Name(p)},
		} {
			if seen[c.attr+"="+c.want] {
				continue
			}
			seen[c.attr+"="+c.want] = true
			classes = append(classes, c)
			models = append(models, map[string]any{"name": c.name, c.attr: c.want})
		}
	}
	objs := mustRender(t, map[string]any{"deviceClasses": map[string]any{"models": models}})
	devices := make([]dracel.Device, len(dataCentreProducts))
	for i, p := range dataCentreProducts {
		devices[i] = dracel.Device{
			Driver: "vgpu.hami.io",
			Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				"productName": {StringValue: ptr.To(p)},
				"model":       {StringValue: ptr.To(gpumodel.Name(p))},
				"family":      {StringValue: ptr.To(gpumodel.Family(p))},
			},
		}
	}
	for _, c := range classes {
		expr := celOf(t, Find(objs, KindDeviceClass, c.name+".vgpu.hami.io"))
		compiled := dracel.GetCompiler(dracel.Features{EnableConsumableCapacity: true}).CompileCELExpression(expr, dracel.Options{})
		if compiled.Error != nil {
			t.Fatalf("compile %s: %v", expr, compiled.Error)
		}
		n := 0
		for i, d := range devices {
			got, _, err := compiled.DeviceMatches(context.Background(), d)
			if err != nil {
				t.Fatalf("%s on %s: %v", expr, dataCentreProducts[i], err)
			}
			want := *d.Attributes[resourceapi.QualifiedName(c.attr)].StringValue == c.want
			if got != want {
				t.Errorf("class %s=%s on %q: selected %v, want %v", c.attr, c.want, dataCentreProducts[i], got, want)
			}
			if got {
				n++
			}
		}
		if n == 0 {
			t.Errorf("class %s=%s selects nothing", c.attr, c.want)
		}
	}
	// The pairs a substring test confuses are told apart.
	for _, pair := range [][2]string{{"NVIDIA A10", "NVIDIA A100-SXM4-40GB"}, {"NVIDIA H20", "NVIDIA H200"}, {"NVIDIA L40", "NVIDIA L40S"}, {"NVIDIA B200", "NVIDIA GB200"}} {
		if gpumodel.Family(pair[0]) == gpumodel.Family(pair[1]) {
			t.Errorf("%q and %q share the family %q", pair[0], pair[1], gpumodel.Family(pair[0]))
		}
	}
}
