package suite

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestInventory: every simulated node publishes one shareable device per GPU
// of its profile, with the model's name and memory, and kubectl lists them.
func TestInventory(t *testing.T) {
	want := map[string][]string{
		"node-a100":   {"NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"},
		"node-h100":   {"NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"},
		"node-mixed":  {"NVIDIA A100-PCIE-40GB", "NVIDIA L4"},
		"node-single": {"NVIDIA A100-SXM4-80GB"},
	}
	wantMemory := map[string]string{
		"NVIDIA A100-SXM4-80GB": "80Gi",
		"NVIDIA H100 80GB HBM3": "81559Mi",
		"NVIDIA A100-PCIE-40GB": "40Gi",
		"NVIDIA L4":             "23034Mi",
	}
	ctx := testContext(t, time.Minute)
	slices, err := client().ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, s := range slices.Items {
		if s.Spec.Driver != driver || s.Spec.NodeName == nil {
			continue
		}
		node := *s.Spec.NodeName
		if s.Spec.Pool.Name != node {
			t.Errorf("slice %s of node %s is in pool %q, want the node's name", s.Name, node, s.Spec.Pool.Name)
		}
		for _, d := range s.Spec.Devices {
			name := stringAttr(d.Attributes, "productName")
			got[node] = append(got[node], name)
			if d.AllowMultipleAllocations == nil || !*d.AllowMultipleAllocations {
				t.Errorf("%s/%s: allowMultipleAllocations is not true", node, d.Name)
			}
			mem, cores := d.Capacity["memory"], d.Capacity["cores"]
			if mem.Value.String() != wantMemory[name] {
				t.Errorf("%s/%s (%s): memory %s, want %s", node, d.Name, name, mem.Value.String(), wantMemory[name])
			}
			if cores.Value.Value() != 100 {
				t.Errorf("%s/%s: cores %s, want 100", node, d.Name, cores.Value.String())
			}
			if mem.RequestPolicy == nil || mem.RequestPolicy.Default == nil || !mem.RequestPolicy.Default.Equal(mem.Value) {
				t.Errorf("%s/%s: memory request policy %+v, want the whole GPU as default", node, d.Name, mem.RequestPolicy)
			}
			if uuid := stringAttr(d.Attributes, "uuid"); !strings.HasPrefix(uuid, "GPU-") || d.Name != "gpu-"+strings.ToLower(strings.TrimPrefix(uuid, "GPU-")) {
				t.Errorf("%s/%s: device name does not follow its UUID %q", node, d.Name, uuid)
			}
		}
	}
	for node, models := range want {
		sort.Strings(got[node])
		if fmt.Sprint(got[node]) != fmt.Sprint(models) {
			t.Errorf("node %s publishes %v, want %v", node, got[node], models)
		}
	}

	out := runKubectl(t, "get", "resourceslices", "-o", "wide")
	for node := range want {
		if !strings.Contains(out, node) {
			t.Errorf("kubectl get resourceslices does not list node %s:\n%s", node, out)
		}
	}
	t.Logf("kubectl get resourceslices -o wide:\n%s", out)
}

func stringAttr(attrs map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, name resourceapi.QualifiedName) string {
	if a, ok := attrs[name]; ok && a.StringValue != nil {
		return *a.StringValue
	}
	return ""
}
