package discovery

import (
	"fmt"
	"regexp"
	"testing"

	"k8s.io/klog/v2/ktesting"
)

var uuidShape = regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func discoverSimulated(t *testing.T, node, spec string) []GPU {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	p, err := LoadProfile(spec)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewSimulated(node, p)
	if err != nil {
		t.Fatal(err)
	}
	gpus, err := d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return gpus
}

func TestSimulatedModels(t *testing.T) {
	tests := []struct {
		spec string
		want GPU // identity fields are checked separately
	}{
		{"H100-80GB", GPU{ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", MemoryBytes: 85520809984}},
		{"H100-PCIE-80GB", GPU{ProductName: "NVIDIA H100 PCIe", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", MemoryBytes: 85520809984}},
		{"A100-SXM4-80GB", GPU{ProductName: "NVIDIA A100-SXM4-80GB", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 85899345920}},
		{"A100-SXM4-40GB", GPU{ProductName: "NVIDIA A100-SXM4-40GB", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 42949672960}},
		{"A100-PCIE-40GB", GPU{ProductName: "NVIDIA A100-PCIE-40GB", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 42949672960}},
		{"A100-PCIE-80GB", GPU{ProductName: "NVIDIA A100 80GB PCIe", Brand: "Nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 85899345920}},
		{"L4", GPU{ProductName: "NVIDIA L4", Brand: "Nvidia", Architecture: "ada", CUDAComputeCapability: "8.9", MemoryBytes: 24152899584}},
		{"T4", GPU{ProductName: "Tesla T4", Brand: "Nvidia", Architecture: "turing", CUDAComputeCapability: "7.5", MemoryBytes: 16106127360}},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			gpus := discoverSimulated(t, "node-a", tc.spec)
			if len(gpus) != 1 {
				t.Fatalf("got %d GPUs", len(gpus))
			}
			g := gpus[0]
			if g.ProductName != tc.want.ProductName || g.Brand != tc.want.Brand || g.Architecture != tc.want.Architecture ||
				g.CUDAComputeCapability != tc.want.CUDAComputeCapability || g.MemoryBytes != tc.want.MemoryBytes {
				t.Errorf("got %+v, want %+v", g, tc.want)
			}
			if g.DriverVersion != DefaultSimulatedDriverVersion || g.CUDADriverVersion != DefaultSimulatedCUDADriverVersion {
				t.Errorf("driver versions %q, %q", g.DriverVersion, g.CUDADriverVersion)
			}
		})
	}
}

func TestSimulatedIdentity(t *testing.T) {
	a1 := discoverSimulated(t, "node-a", "4xA100-80GB,2xL4")
	a2 := discoverSimulated(t, "node-a", "4xA100-80GB,2xL4")
	b := discoverSimulated(t, "node-b", "4xA100-80GB,2xL4")

	uuids := map[string]bool{}
	buses := map[string]bool{}
	for i := range a1 {
		if a1[i] != a2[i] {
			t.Errorf("GPU %d differs between two discoveries on one node:\n%+v\n%+v", i, a1[i], a2[i])
		}
		if !uuidShape.MatchString(a1[i].UUID) {
			t.Errorf("UUID %q does not look like NVML's", a1[i].UUID)
		}
		if a1[i].Index != i || a1[i].Minor != i {
			t.Errorf("GPU %d: index %d minor %d", i, a1[i].Index, a1[i].Minor)
		}
		for _, g := range []GPU{a1[i], b[i]} {
			if uuids[g.UUID] {
				t.Errorf("UUID %s used twice", g.UUID)
			}
			uuids[g.UUID] = true
			if buses[g.PCIBusID] {
				t.Errorf("PCI bus ID %s used twice", g.PCIBusID)
			}
			buses[g.PCIBusID] = true
			if _, err := NormalizePCIBusID(g.PCIBusID); err != nil {
				t.Errorf("PCI bus ID: %v", err)
			}
		}
	}
	// Two NUMA nodes, split in the middle, as on a two-socket server.
	wantNUMA := []int{0, 0, 0, 1, 1, 1}
	for i, g := range a1 {
		if g.NUMANode != wantNUMA[i] {
			t.Errorf("GPU %d: NUMA node %d, want %d", i, g.NUMANode, wantNUMA[i])
		}
	}
	if a1[0].PCIeRoot != a1[1].PCIeRoot || a1[1].PCIeRoot == a1[2].PCIeRoot {
		t.Errorf("want GPUs paired under PCIe roots: %s %s %s", a1[0].PCIeRoot, a1[1].PCIeRoot, a1[2].PCIeRoot)
	}
}

func TestSimulatedMIGAndVersions(t *testing.T) {
	p, err := ParseProfile([]byte("driverVersion: \"570.124.06\"\ncudaDriverVersion: \"12.8\"\ngpus:\n- model: A100-40GB\n  migEnabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	d, err := NewSimulated("n", p)
	if err != nil {
		t.Fatal(err)
	}
	gpus, _ := d.Discover(ctx)
	if len(gpus) != 1 || !gpus[0].MIGEnabled || gpus[0].DriverVersion != "570.124.06" || gpus[0].CUDADriverVersion != "12.8" {
		t.Errorf("got %+v", gpus)
	}
	if _, err := NewSimulated("", p); err == nil {
		t.Error("a simulated node without a name must be refused")
	}
}

// TestSimulatedClusterIsUnique checks a benchmark-sized cluster: no UUID or
// PCI address is used twice across 1,000 8-GPU nodes.
func TestSimulatedClusterIsUnique(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	p, err := ParseInlineProfile("8xH100-80GB")
	if err != nil {
		t.Fatal(err)
	}
	uuids, buses := map[string]string{}, map[string]string{}
	for i := range 1000 {
		node := fmt.Sprintf("node-%d", i)
		d, err := NewSimulated(node, p)
		if err != nil {
			t.Fatal(err)
		}
		gpus, err := d.Discover(ctx)
		if err != nil {
			t.Fatalf("discover on %s: %v", node, err)
		}
		if len(gpus) != 8 {
			t.Fatalf("%s has %d GPUs, want 8", node, len(gpus))
		}
		for _, g := range gpus {
			if other, dup := uuids[g.UUID]; dup {
				t.Fatalf("UUID %s on %s and %s", g.UUID, other, node)
			}
			uuids[g.UUID] = node
			if other, dup := buses[g.PCIBusID]; dup {
				t.Fatalf("PCI bus ID %s on %s and %s", g.PCIBusID, other, node)
			}
			buses[g.PCIBusID] = node
		}
	}
}
