package discovery

import (
	"sort"
	"strings"
)

// Model is what a simulated GPU of a known kind looks like to NVML. The values
// are copied from what NVML reports on real hardware (product name as
// nvmlDeviceGetName returns it, memory as nvmlDeviceGetMemoryInfo's total), so
// that DeviceClasses and CEL selectors written against a simulated node also
// work on a real one.
type Model struct {
	// ProductName is NVML's name, e.g. "NVIDIA H100 80GB HBM3".
	ProductName string
	// Brand is the brand as this package names NVML's brand enum.
	Brand string
	// Architecture is the lower-case architecture name.
	Architecture string
	// CUDAComputeCapability is "major.minor".
	CUDAComputeCapability string
	// MemoryBytes is NVML's total memory. It is not the marketing size:
	// an "80GB" H100 reports 81559 MiB.
	MemoryBytes uint64
}

const mib = 1 << 20

// knownModels maps the short names accepted in inline profiles
// ("8xH100-80GB") to their NVML description. Keys are upper case; lookups are
// case-insensitive. Several keys may name the same model (aliases).
var knownModels = map[string]Model{
	"A100-SXM4-40GB": {ProductName: "NVIDIA A100-SXM4-40GB", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 40960 * mib},
	"A100-SXM4-80GB": {ProductName: "NVIDIA A100-SXM4-80GB", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 81920 * mib},
	"A100-PCIE-40GB": {ProductName: "NVIDIA A100-PCIE-40GB", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 40960 * mib},
	"A100-PCIE-80GB": {ProductName: "NVIDIA A100 80GB PCIe", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 81920 * mib},
	"H100-SXM5-80GB": {ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", MemoryBytes: 81559 * mib},
	"H100-PCIE-80GB": {ProductName: "NVIDIA H100 PCIe", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", MemoryBytes: 81559 * mib},
	"L4":             {ProductName: "NVIDIA L4", Brand: "Nvidia", Architecture: "ada", CUDAComputeCapability: "8.9", MemoryBytes: 23034 * mib},
	"T4":             {ProductName: "Tesla T4", Brand: "Nvidia", Architecture: "turing", CUDAComputeCapability: "7.5", MemoryBytes: 15360 * mib},
}

// modelAliases are the shorter spellings people use; the SXM variant is the
// default where the form factor is left out, as on most multi-GPU servers.
var modelAliases = map[string]string{
	"A100-40GB": "A100-SXM4-40GB",
	"A100-80GB": "A100-SXM4-80GB",
	"A100":      "A100-SXM4-80GB",
	"H100-80GB": "H100-SXM5-80GB",
	"H100":      "H100-SXM5-80GB",
	"L4-24GB":   "L4",
	"T4-16GB":   "T4",
}

// LookupModel finds a model by short name, alias or NVML product name, in any
// letter case.
func LookupModel(name string) (Model, bool) {
	key := strings.ToUpper(strings.TrimSpace(name))
	if alias, ok := modelAliases[key]; ok {
		key = alias
	}
	if m, ok := knownModels[key]; ok {
		return m, true
	}
	for _, m := range knownModels {
		if strings.EqualFold(m.ProductName, strings.TrimSpace(name)) {
			return m, true
		}
	}
	return Model{}, false
}

// KnownModelNames lists the accepted short names and aliases, sorted, for
// help texts and error messages.
func KnownModelNames() []string {
	names := make([]string, 0, len(knownModels)+len(modelAliases))
	for name := range knownModels {
		names = append(names, name)
	}
	for name := range modelAliases {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
