package gpumodel

import (
	"strings"
	"testing"
)

// Product names as NVML reports them (nvidia-smi --query-gpu=name) on
// current NVIDIA data-centre GPUs.
var dataCentreGPUs = []struct{ product, model, family string }{
	{"NVIDIA A2", "a2", "a2"},
	{"NVIDIA A10", "a10", "a10"},
	{"NVIDIA A10G", "a10g", "a10g"},
	{"NVIDIA A16", "a16", "a16"},
	{"NVIDIA A30", "a30", "a30"},
	{"NVIDIA A40", "a40", "a40"},
	{"NVIDIA A100-PCIE-40GB", "a100-pcie-40gb", "a100"},
	{"NVIDIA A100 80GB PCIe", "a100-80gb-pcie", "a100"},
	{"NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb", "a100"},
	{"NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb", "a100"},
	{"NVIDIA A800 80GB PCIe", "a800-80gb-pcie", "a800"},
	{"NVIDIA A800-SXM4-80GB", "a800-sxm4-80gb", "a800"},
	{"NVIDIA H100 PCIe", "h100-pcie", "h100"},
	{"NVIDIA H100 80GB HBM3", "h100-80gb-hbm3", "h100"},
	{"NVIDIA H100 NVL", "h100-nvl", "h100"},
	{"NVIDIA H800", "h800", "h800"},
	{"NVIDIA H800 PCIe", "h800-pcie", "h800"},
	{"NVIDIA H20", "h20", "h20"},
	{"NVIDIA H200", "h200", "h200"},
	{"NVIDIA H200 NVL", "h200-nvl", "h200"},
	{"NVIDIA GH200 480GB", "gh200-480gb", "gh200"},
	{"NVIDIA L4", "l4", "l4"},
	{"NVIDIA L20", "l20", "l20"},
	{"NVIDIA L40", "l40", "l40"},
	{"NVIDIA L40S", "l40s", "l40s"},
	{"NVIDIA B200", "b200", "b200"},
	{"NVIDIA GB200", "gb200", "gb200"},
	{"NVIDIA B300 SXM6 AC", "b300-sxm6-ac", "b300"},
	{"Tesla T4", "t4", "t4"},
	{"Tesla P4", "p4", "p4"},
	{"Tesla P40", "p40", "p40"},
	{"Tesla P100-PCIE-16GB", "p100-pcie-16gb", "p100"},
	{"Tesla V100-SXM2-16GB", "v100-sxm2-16gb", "v100"},
	{"Tesla V100-SXM2-32GB", "v100-sxm2-32gb", "v100"},
	{"Tesla V100-PCIE-32GB", "v100-pcie-32gb", "v100"},
	{"Tesla V100S-PCIE-32GB", "v100s-pcie-32gb", "v100s"},
	{"NVIDIA RTX A6000", "rtx-a6000", "rtx-a6000"},
	{"NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada-generation", "rtx-6000"},
	{"NVIDIA RTX PRO 6000 Blackwell Server Edition", "rtx-pro-6000-blackwell-server-edition", "rtx-pro-6000"},
}

func TestName(t *testing.T) {
	for _, tc := range dataCentreGPUs {
		if got := Name(tc.product); got != tc.model {
			t.Errorf("Name(%q) = %q, want %q", tc.product, got, tc.model)
		}
		if got := Family(tc.product); got != tc.family {
			t.Errorf("Family(%q) = %q, want %q", tc.product, got, tc.family)
		}
	}
}

// TestModelFamiliesAreExact: a class for one family selects exactly that
// family's GPUs, where a substring match on the product name would also
// take A100 for A10, H200 for H20, L40S for L40 and so on.
func TestModelFamiliesAreExact(t *testing.T) {
	substringWouldMatch := 0
	for _, class := range dataCentreGPUs {
		for _, gpu := range dataCentreGPUs {
			selected := Family(gpu.product) == class.family
			if selected != (gpu.family == class.family) {
				t.Errorf("class %q selects %q: %v", class.family, gpu.product, selected)
			}
			if !selected && containsFold(gpu.product, class.family) {
				substringWouldMatch++
			}
		}
	}
	if substringWouldMatch == 0 {
		t.Error("the list has no names a substring match confuses; it does not test what it is meant to")
	}
}

func containsFold(s, sub string) bool {
	return sub != "" && strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
