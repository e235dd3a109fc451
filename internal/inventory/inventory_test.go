package inventory_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	mockserver "github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2/ktesting"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

// expectDevice is what a published device must look like.
type expectDevice struct {
	product, arch, cc, driver, cuda string
	memory                          string // capacity value and default
	numa                            int64
}

func simulatedGPUs(t *testing.T, ctx context.Context, node, spec string) []discovery.GPU {
	t.Helper()
	p, err := discovery.LoadProfile(spec)
	if err != nil {
		t.Fatal(err)
	}
	d, err := discovery.NewSimulated(node, p)
	if err != nil {
		t.Fatal(err)
	}
	gpus, err := d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return gpus
}

func dgxGPUs(t *testing.T, ctx context.Context) []discovery.GPU {
	t.Helper()
	d, err := discovery.OpenNVML(ctx, discovery.NVMLOptions{Library: dgxWithNUMA(), SysfsRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	gpus, err := d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return gpus
}

func TestBuild(t *testing.T) {
	h100 := expectDevice{product: "NVIDIA H100 80GB HBM3", arch: "hopper", cc: "9.0.0", driver: "580.82.7", cuda: "13.0.0", memory: "81559Mi"}
	a100 := expectDevice{product: "NVIDIA A100-SXM4-80GB", arch: "ampere", cc: "8.0.0", driver: "580.82.7", cuda: "13.0.0", memory: "80Gi"}
	l4 := expectDevice{product: "NVIDIA L4", arch: "ada", cc: "8.9.0", driver: "580.82.7", cuda: "13.0.0", memory: "23034Mi"}
	mockA100 := expectDevice{product: "Mock NVIDIA A100-SXM4-40GB", arch: "ampere", cc: "8.0.0", driver: "550.54.15", cuda: "12.4.0", memory: "40Gi"}
	withNUMA := func(e expectDevice, numa int64) expectDevice { e.numa = numa; return e }

	tests := []struct {
		name string
		gpus func(t *testing.T, ctx context.Context) []discovery.GPU
		want []expectDevice
	}{
		{
			name: "simulated 4xH100-80GB",
			gpus: func(t *testing.T, ctx context.Context) []discovery.GPU {
				return simulatedGPUs(t, ctx, "n1", "4xH100-80GB")
			},
			want: []expectDevice{h100, h100, withNUMA(h100, 1), withNUMA(h100, 1)},
		},
		{
			name: "simulated mixed node",
			gpus: func(t *testing.T, ctx context.Context) []discovery.GPU {
				return simulatedGPUs(t, ctx, "n1", "2xA100-80GB,2xL4")
			},
			want: []expectDevice{a100, a100, withNUMA(l4, 1), withNUMA(l4, 1)},
		},
		{
			name: "NVML mock of a DGX A100",
			gpus: dgxGPUs,
			want: []expectDevice{mockA100, mockA100, mockA100, mockA100, withNUMA(mockA100, 1), withNUMA(mockA100, 1), withNUMA(mockA100, 1), withNUMA(mockA100, 1)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			gpus := tc.gpus(t, ctx)
			res, published := inventory.Build(ctx, "n1", gpus)
			pool, ok := res.Pools["n1"]
			if !ok || len(res.Pools) != 1 || len(pool.Slices) != 1 {
				t.Fatalf("want one pool named after the node with one slice, got %+v", res)
			}
			devices := pool.Slices[0].Devices
			if len(devices) != len(tc.want) || len(published) != len(tc.want) {
				t.Fatalf("%d devices, %d published GPUs, want %d", len(devices), len(published), len(tc.want))
			}
			for i, d := range devices {
				checkDevice(t, d, published[i], tc.want[i])
			}
		})
	}
}

func checkDevice(t *testing.T, d resourceapi.Device, gpu discovery.GPU, want expectDevice) {
	t.Helper()
	if d.Name != "gpu-"+strings.ToLower(strings.TrimPrefix(gpu.UUID, "GPU-")) {
		t.Errorf("device name %q does not derive from UUID %q", d.Name, gpu.UUID)
	}
	if errs := validation.IsDNS1123Label(d.Name); len(errs) > 0 {
		t.Errorf("device name %q: %v", d.Name, errs)
	}
	if d.AllowMultipleAllocations == nil || !*d.AllowMultipleAllocations {
		t.Errorf("%s: not shareable", d.Name)
	}
	str := func(name resourceapi.QualifiedName) string {
		if v := d.Attributes[name].StringValue; v != nil {
			return *v
		}
		return "<unset>"
	}
	ver := func(name resourceapi.QualifiedName) string {
		if v := d.Attributes[name].VersionValue; v != nil {
			return *v
		}
		return "<unset>"
	}
	num := func(name resourceapi.QualifiedName) int64 {
		if v := d.Attributes[name].IntValue; v != nil {
			return *v
		}
		return -99
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"productName", str(inventory.AttrProductName), want.product},
		{"architecture", str(inventory.AttrArchitecture), want.arch},
		{"brand", str(inventory.AttrBrand), "Nvidia"},
		{"type", str(inventory.AttrType), "gpu"},
		{"uuid", str(inventory.AttrUUID), gpu.UUID},
		{"cudaComputeCapability", ver(inventory.AttrCUDAComputeCapability), want.cc},
		{"driverVersion", ver(inventory.AttrDriverVersion), want.driver},
		{"cudaDriverVersion", ver(inventory.AttrCUDADriverVersion), want.cuda},
		{"index", num(inventory.AttrIndex), int64(gpu.Index)},
		{"minor", num(inventory.AttrMinor), int64(gpu.Minor)},
		{"numaNode", num(inventory.AttrNUMANode), want.numa},
		{"standard numaNode", num("resource.kubernetes.io/numaNode"), want.numa},
	}
	if gpu.PCIBusID != "" {
		checks = append(checks,
			struct {
				what      string
				got, want any
			}{"pciBusID", str("resource.kubernetes.io/pciBusID"), gpu.PCIBusID},
			struct {
				what      string
				got, want any
			}{"pcieRoot", str("resource.kubernetes.io/pcieRoot"), gpu.PCIeRoot})
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %s = %v, want %v", d.Name, c.what, c.got, c.want)
		}
	}
	if n := len(d.Attributes) + len(d.Capacity); n > resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice {
		t.Errorf("%s: %d attributes and capacities, the API allows %d", d.Name, n, resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice)
	}

	memory := d.Capacity[inventory.CapacityMemory]
	wantMemory := resource.MustParse(want.memory)
	if memory.Value.Cmp(wantMemory) != 0 {
		t.Errorf("%s: memory %s, want %s", d.Name, memory.Value.String(), want.memory)
	}
	checkPolicy(t, d.Name+" memory", memory, want.memory, "1Mi", want.memory, "1Mi")
	checkPolicy(t, d.Name+" cores", d.Capacity[inventory.CapacityCores], "0", "0", "100", "1")
	if cores := d.Capacity[inventory.CapacityCores]; cores.Value.Value() != 100 {
		t.Errorf("%s: cores capacity %s, want 100", d.Name, cores.Value.String())
	}
}

// checkPolicy also checks the API's rules: min <= default <= max <= value,
// and default and max are min + n*step.
func checkPolicy(t *testing.T, what string, c resourceapi.DeviceCapacity, def, min, max, step string) {
	t.Helper()
	p := c.RequestPolicy
	if p == nil || p.Default == nil || p.ValidRange == nil || p.ValidRange.Min == nil || p.ValidRange.Max == nil || p.ValidRange.Step == nil {
		t.Fatalf("%s: incomplete request policy %+v", what, p)
	}
	for _, x := range []struct {
		name string
		got  resource.Quantity
		want string
	}{{"default", *p.Default, def}, {"min", *p.ValidRange.Min, min}, {"max", *p.ValidRange.Max, max}, {"step", *p.ValidRange.Step, step}} {
		if x.got.Cmp(resource.MustParse(x.want)) != 0 {
			t.Errorf("%s: %s = %s, want %s", what, x.name, x.got.String(), x.want)
		}
	}
	stepV, minV := p.ValidRange.Step.Value(), p.ValidRange.Min.Value()
	if (p.Default.Value()-minV)%stepV != 0 || (p.ValidRange.Max.Value()-minV)%stepV != 0 {
		t.Errorf("%s: default or max is not min + n*step", what)
	}
	if p.ValidRange.Max.Cmp(c.Value) > 0 || minV+stepV > c.Value.Value() {
		t.Errorf("%s: range exceeds the capacity", what)
	}
}

func TestBuildEdgeCases(t *testing.T) {
	gpu := func(uuid string, mig bool) discovery.GPU {
		return discovery.GPU{UUID: uuid, ProductName: "NVIDIA L4", MemoryBytes: 23034 << 20, NUMANode: -1, MIGEnabled: mig}
	}
	many := make([]discovery.GPU, 70)
	for i := range many {
		many[i] = gpu(fmt.Sprintf("GPU-%08x-0000-0000-0000-000000000000", i), false)
	}
	tests := []struct {
		name       string
		gpus       []discovery.GPU
		wantSlices []int // devices per slice
	}{
		{name: "no GPUs: one empty slice, which withdraws old devices", gpus: nil, wantSlices: []int{0}},
		{name: "MIG GPUs are not published", gpus: []discovery.GPU{gpu("GPU-a", true), gpu("GPU-b", false)}, wantSlices: []int{1}},
		{name: "a duplicate UUID is published once", gpus: []discovery.GPU{gpu("GPU-a", false), gpu("GPU-A", false)}, wantSlices: []int{1}},
		{name: "more than 64 GPUs are split into valid slices", gpus: many, wantSlices: []int{64, 6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			res, _ := inventory.Build(ctx, "n1", tc.gpus)
			var got []int
			for _, s := range res.Pools["n1"].Slices {
				got = append(got, len(s.Devices))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantSlices) {
				t.Errorf("devices per slice %v, want %v", got, tc.wantSlices)
			}
			for _, s := range res.Pools["n1"].Slices {
				for _, d := range s.Devices {
					if _, ok := d.Attributes[inventory.AttrNUMANode]; ok {
						t.Errorf("%s: numaNode published for a GPU without NUMA affinity", d.Name)
					}
				}
			}
		})
	}
}

func TestDeviceName(t *testing.T) {
	// UUIDs that are not DNS-label material get a hash; the expected
	// values are written out so that a constant or unstable fallback fails.
	hashed := func(uuid string) string {
		sum := sha256.Sum256([]byte(uuid))
		return "gpu-" + hex.EncodeToString(sum[:16])
	}
	tests := []struct {
		uuid, want string
	}{
		{"GPU-8a2f3c4d-1111-2222-3333-444455556666", "gpu-8a2f3c4d-1111-2222-3333-444455556666"},
		{"GPU-8A2F3C4D-1111-2222-3333-444455556666", "gpu-8a2f3c4d-1111-2222-3333-444455556666"},
		{"MIG-8a2f3c4d-1111-2222-3333-444455556666", "gpu-mig-8a2f3c4d-1111-2222-3333-444455556666"},
		{"GPU-weird_uuid", "gpu-1e19d7b905c2621d734627731f66887d"},
		{"GPU-other_uuid", hashed("GPU-other_uuid")},
		{"", hashed("")},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		got := inventory.DeviceName(discovery.GPU{UUID: tc.uuid})
		if errs := validation.IsDNS1123Label(got); len(errs) > 0 {
			t.Errorf("DeviceName(%q) = %q: %v", tc.uuid, got, errs)
		}
		if got != tc.want {
			t.Errorf("DeviceName(%q) = %q, want %q", tc.uuid, got, tc.want)
		}
		if other, dup := seen[got]; dup && !strings.EqualFold(other, tc.uuid) {
			t.Errorf("DeviceName(%q) = DeviceName(%q) = %q: one of the GPUs would not be published", tc.uuid, other, got)
		}
		seen[got] = tc.uuid
	}
}

func TestSemanticVersion(t *testing.T) {
	tests := []struct{ in, want string }{
		{"9.0", "9.0.0"},
		{"580.82.07", "580.82.7"},
		{"13.0", "13.0.0"},
		{"7", "7.0.0"},
		{"535.104.05", "535.104.5"},
		{"1.2.3.4", ""},
		{"r580", ""},
		{"", ""},
		{"9.-1", ""},
	}
	for _, tc := range tests {
		got, err := inventory.SemanticVersion(tc.in)
		if (err != nil) != (tc.want == "") || got != tc.want {
			t.Errorf("SemanticVersion(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestStableAcrossRediscovery(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	first, _ := inventory.Build(ctx, "n1", simulatedGPUs(t, ctx, "n1", "4xA100-80GB,2xL4"))
	second, _ := inventory.Build(ctx, "n1", simulatedGPUs(t, ctx, "n1", "4xA100-80GB,2xL4"))
	if !inventory.Equal(first, second) {
		t.Error("re-discovery changed the inventory")
	}
	other, _ := inventory.Build(ctx, "n1", simulatedGPUs(t, ctx, "n1", "4xA100-80GB,1xL4"))
	if inventory.Equal(first, other) {
		t.Error("a removed GPU did not change the inventory")
	}
	if inventory.Equal(first, resourceslice.DriverResources{}) {
		t.Error("empty equals full")
	}
}

func TestResourceSlices(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	res, _ := inventory.Build(ctx, "node-a", simulatedGPUs(t, ctx, "node-a", "2xT4"))
	slices := inventory.ResourceSlices("vgpu.hami.io", "node-a", res)
	if len(slices) != 1 {
		t.Fatalf("%d slices", len(slices))
	}
	s := slices[0]
	if s.Spec.Driver != "vgpu.hami.io" || s.Spec.NodeName == nil || *s.Spec.NodeName != "node-a" ||
		s.Spec.Pool.Name != "node-a" || s.Spec.Pool.ResourceSliceCount != 1 || s.Spec.Pool.Generation != 1 || len(s.Spec.Devices) != 2 {
		t.Errorf("unexpected slice %+v", s.Spec)
	}
	if errs := validation.IsDNS1123Subdomain(s.Name); len(errs) > 0 {
		t.Errorf("slice name %q: %v", s.Name, errs)
	}
}

// dgxWithNUMA is go-nvml's DGX A100 mock, with the NUMA answer it lacks: the
// first four GPUs on socket 0, the others on socket 1.
func dgxWithNUMA() *mockserver.Server {
	server := dgxa100.New()
	for i, dev := range server.Devices {
		dev.(*mockserver.Device).GetNumaNodeIdFunc = dgxNUMA(i / 4)
		// go-nvml's model predates the v2 memory call: answer as an old driver
		dev.(*mockserver.Device).GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{}, nvml.ERROR_FUNCTION_NOT_FOUND
		}
	}
	return server
}

func dgxNUMA(node int) func() (int, nvml.Return) {
	return func() (int, nvml.Return) { return node, nvml.SUCCESS }
}

// TestMemoryCapacityExcludesReserved: the memory capacity (and the default a
// request that does not mention memory consumes) is what tenants can
// allocate, without the memory the driver reserves for itself.
func TestMemoryCapacityExcludesReserved(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name              string
		total, reserved   uint64
		wantValue, wantMx int64
	}{
		{name: "nothing reserved", total: 81559 * mib, reserved: 0, wantValue: 81559 * mib, wantMx: 81559 * mib},
		{name: "H100 with 527 MiB reserved", total: 81559 * mib, reserved: 527 * mib, wantValue: 81032 * mib, wantMx: 81032 * mib},
		{name: "reserved not a whole MiB: the policy rounds down", total: 81559 * mib, reserved: 527*mib + 1, wantValue: 81032*mib - 1, wantMx: 81031 * mib},
		{name: "a reserved figure at least the total is ignored", total: 1024 * mib, reserved: 2048 * mib, wantValue: 1024 * mib, wantMx: 1024 * mib},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			gpu := discovery.GPU{UUID: "GPU-a", ProductName: "NVIDIA H100 80GB HBM3", MemoryBytes: tc.total,
				ReservedMemoryBytes: tc.reserved, NUMANode: -1}
			d := inventory.Device(ctx, gpu)
			memory := d.Capacity[inventory.CapacityMemory]
			if got := memory.Value.Value(); got != tc.wantValue {
				t.Errorf("memory capacity %d, want %d", got, tc.wantValue)
			}
			if p := memory.RequestPolicy; p == nil || p.Default.Value() != tc.wantMx || p.ValidRange.Max.Value() != tc.wantMx {
				t.Errorf("memory policy %+v, want default and max %d", p, tc.wantMx)
			}
		})
	}
}
