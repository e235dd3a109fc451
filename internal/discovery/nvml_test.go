package discovery

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	mockserver "github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"k8s.io/klog/v2/ktesting"
)

// fakeGPU is the NVML view of one GPU for mockNVML.
type fakeGPU struct {
	uuid, name  string
	minor       int
	memory      uint64
	reserved    uint64      // driver-reserved memory (nvmlDeviceGetMemoryInfo_v2)
	reservedRet nvml.Return // NVML's answer to GetMemoryInfo_v2
	brand       nvml.BrandType
	arch        nvml.DeviceArchitecture
	ccMajor     int
	ccMinor     int
	busID       string
	numa        int
	numaRet     nvml.Return // NVML's answer to GetNumaNodeId
	migMode     int
	migRet      nvml.Return
	uuidRet     nvml.Return // to simulate a GPU that fell off the bus
	optionalRet nvml.Return // brand, architecture, compute capability, PCI info
}

func h100(i int) fakeGPU {
	return fakeGPU{
		uuid: []string{"GPU-0a1b2c3d-0000-1111-2222-333344445555", "GPU-FFEEDDCC-BBAA-9988-7766-554433221100"}[i%2],
		name: "NVIDIA H100 80GB HBM3", minor: i, memory: 81559 * mib,
		brand: nvml.BRAND_NVIDIA, arch: nvml.DEVICE_ARCH_HOPPER, ccMajor: 9, ccMinor: 0,
		busID: []string{"00000000:1B:00.0", "00000000:43:00.0"}[i%2], numa: i,
	}
}

// mockNVML builds go-nvml's mock Interface over fake GPUs.
func mockNVML(initRet nvml.Return, gpus ...fakeGPU) *mock.Interface {
	devices := make([]nvml.Device, len(gpus))
	for i, g := range gpus {
		devices[i] = &mock.Device{
			GetUUIDFunc:        func() (string, nvml.Return) { return g.uuid, g.uuidRet },
			GetNameFunc:        func() (string, nvml.Return) { return g.name, nvml.SUCCESS },
			GetMinorNumberFunc: func() (int, nvml.Return) { return g.minor, nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
				return nvml.Memory{Total: g.memory, Free: g.memory}, nvml.SUCCESS
			},
			GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
				return nvml.Memory_v2{Total: g.memory, Reserved: g.reserved, Free: g.memory - g.reserved}, g.reservedRet
			},
			GetBrandFunc:        func() (nvml.BrandType, nvml.Return) { return g.brand, g.optionalRet },
			GetArchitectureFunc: func() (nvml.DeviceArchitecture, nvml.Return) { return g.arch, g.optionalRet },
			GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) {
				return g.ccMajor, g.ccMinor, g.optionalRet
			},
			GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) {
				var info nvml.PciInfo
				for i := range min(len(g.busID), len(info.BusId)) {
					info.BusId[i] = int8(g.busID[i])
				}
				return info, g.optionalRet
			},
			GetMigModeFunc:    func() (int, int, nvml.Return) { return g.migMode, g.migMode, g.migRet },
			GetNumaNodeIdFunc: func() (int, nvml.Return) { return g.numa, g.numaRet },
		}
	}
	return &mock.Interface{
		InitFunc:                       func() nvml.Return { return initRet },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devices), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc:     func(i int) (nvml.Device, nvml.Return) { return devices[i], nvml.SUCCESS },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "580.82.07", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 13000, nvml.SUCCESS },
	}
}

// fakeSysfs lays out /sys/bus/pci/devices/<id> as a symlink into a PCIe
// root complex, with a numa_node file, as the kernel does.
func fakeSysfs(t *testing.T, root, busID string, numa string) string {
	t.Helper()
	sys := t.TempDir()
	devDir := filepath.Join(sys, "devices", root, "0000:00:01.0", busID)
	if err := os.MkdirAll(devDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(devDir, "numa_node"), []byte(numa+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..", "..", "..", "devices", root, "0000:00:01.0", busID), filepath.Join(sys, "bus", "pci", "devices", busID)); err != nil {
		t.Fatal(err)
	}
	return sys
}

func TestNVMLDiscover(t *testing.T) {
	sysfsWithRoot := func(t *testing.T) string { return fakeSysfs(t, "pci0000:1a", "0000:1b:00.0", "1") }
	noSysfs := func(t *testing.T) string { return t.TempDir() }

	tests := []struct {
		name  string
		gpus  []fakeGPU
		sysfs func(t *testing.T) string
		want  []GPU
	}{
		{
			name:  "two H100s, all properties known",
			gpus:  []fakeGPU{h100(0), h100(1)},
			sysfs: sysfsWithRoot,
			want: []GPU{
				{UUID: "GPU-0a1b2c3d-0000-1111-2222-333344445555", Index: 0, Minor: 0, ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, PCIBusID: "0000:1b:00.0", PCIeRoot: "pci0000:1a", NUMANode: 0},
				{UUID: "GPU-FFEEDDCC-BBAA-9988-7766-554433221100", Index: 1, Minor: 1, ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, PCIBusID: "0000:43:00.0", NUMANode: 1},
			},
		},
		{
			name: "NUMA from sysfs when NVML cannot tell",
			gpus: []fakeGPU{func() fakeGPU {
				g := h100(0)
				g.numaRet = nvml.ERROR_NOT_SUPPORTED
				return g
			}()},
			sysfs: sysfsWithRoot,
			want:  []GPU{{UUID: "GPU-0a1b2c3d-0000-1111-2222-333344445555", Index: 0, Minor: 0, ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, PCIBusID: "0000:1b:00.0", PCIeRoot: "pci0000:1a", NUMANode: 1}},
		},
		{
			name: "optional properties unsupported are left empty",
			gpus: []fakeGPU{func() fakeGPU {
				g := h100(0)
				g.optionalRet = nvml.ERROR_NOT_SUPPORTED
				g.numaRet = nvml.ERROR_NOT_SUPPORTED
				g.migRet = nvml.ERROR_NOT_SUPPORTED
				return g
			}()},
			sysfs: noSysfs,
			want:  []GPU{{UUID: "GPU-0a1b2c3d-0000-1111-2222-333344445555", Index: 0, Minor: 0, ProductName: "NVIDIA H100 80GB HBM3", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, NUMANode: -1}},
		},
		{
			name: "MIG mode is reported",
			gpus: []fakeGPU{func() fakeGPU {
				g := h100(1)
				g.migMode = nvml.DEVICE_MIG_ENABLE
				return g
			}()},
			sysfs: noSysfs,
			want:  []GPU{{UUID: "GPU-FFEEDDCC-BBAA-9988-7766-554433221100", Index: 0, Minor: 1, ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, PCIBusID: "0000:43:00.0", NUMANode: 1, MIGEnabled: true}},
		},
		{
			name: "a GPU that fell off the bus is left out, the others stay",
			gpus: []fakeGPU{func() fakeGPU {
				g := h100(0)
				g.uuidRet = nvml.ERROR_GPU_IS_LOST
				return g
			}(), h100(1)},
			sysfs: noSysfs,
			want:  []GPU{{UUID: "GPU-FFEEDDCC-BBAA-9988-7766-554433221100", Index: 1, Minor: 1, ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, PCIBusID: "0000:43:00.0", NUMANode: 1}},
		},
		{
			name: "an unknown MIG state is unsafe: the GPU is left out",
			gpus: []fakeGPU{func() fakeGPU {
				g := h100(0)
				g.migRet = nvml.ERROR_UNKNOWN
				return g
			}()},
			sysfs: noSysfs,
			want:  []GPU{},
		},
		{
			name: "the driver's reserved memory is reported",
			gpus: []fakeGPU{func() fakeGPU {
				g := h100(0)
				g.reserved = 527 * mib
				return g
			}()},
			sysfs: sysfsWithRoot,
			want:  []GPU{{UUID: "GPU-0a1b2c3d-0000-1111-2222-333344445555", Index: 0, Minor: 0, ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, ReservedMemoryBytes: 527 * mib, PCIBusID: "0000:1b:00.0", PCIeRoot: "pci0000:1a", NUMANode: 0}},
		},
		{
			name: "a driver without the v2 memory call: nothing reserved",
			gpus: []fakeGPU{func() fakeGPU {
				g := h100(0)
				g.reserved = 527 * mib
				g.reservedRet = nvml.ERROR_FUNCTION_NOT_FOUND
				return g
			}()},
			sysfs: sysfsWithRoot,
			want:  []GPU{{UUID: "GPU-0a1b2c3d-0000-1111-2222-333344445555", Index: 0, Minor: 0, ProductName: "NVIDIA H100 80GB HBM3", Brand: "Nvidia", Architecture: "hopper", CUDAComputeCapability: "9.0", DriverVersion: "580.82.07", CUDADriverVersion: "13.0", MemoryBytes: 81559 * mib, PCIBusID: "0000:1b:00.0", PCIeRoot: "pci0000:1a", NUMANode: 0}},
		},
		{
			name:  "a node whose driver sees no GPUs",
			sysfs: noSysfs,
			want:  []GPU{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			d, err := OpenNVML(ctx, NVMLOptions{Library: mockNVML(nvml.SUCCESS, tc.gpus...), SysfsRoot: tc.sysfs(t)})
			if err != nil {
				t.Fatalf("OpenNVML: %v", err)
			}
			defer func() { _ = d.Close() }()
			got, err := d.Discover(ctx)
			if err != nil {
				t.Fatalf("Discover: %v", err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d GPUs, want %d: %+v", len(got), len(tc.want), got)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("GPU %d:\n got %+v\nwant %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestOpenNVMLErrors(t *testing.T) {
	tests := []struct {
		name    string
		initRet nvml.Return
		wantIs  error
	}{
		{"library missing", nvml.ERROR_LIBRARY_NOT_FOUND, ErrNVMLNotFound},
		{"kernel module not loaded", nvml.ERROR_DRIVER_NOT_LOADED, ErrNVMLDriverNotLoaded},
		{"anything else keeps NVML's code", nvml.ERROR_NO_PERMISSION, nvml.ERROR_NO_PERMISSION},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			_, err := OpenNVML(ctx, NVMLOptions{Library: mockNVML(tc.initRet)})
			if !errors.Is(err, tc.wantIs) {
				t.Fatalf("got %v, want an error wrapping %v", err, tc.wantIs)
			}
		})
	}
}

func TestNVMLEnumerationFailureIsAnError(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	lib := mockNVML(nvml.SUCCESS, h100(0))
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	d, err := OpenNVML(ctx, NVMLOptions{Library: lib})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Discover(ctx); !errors.Is(err, nvml.ERROR_UNKNOWN) {
		t.Fatalf("got %v, want ERROR_UNKNOWN", err)
	}
}

// TestRealNVMLWithoutDriver loads the real library the way the plugin does.
// On machines without the NVIDIA driver (CI) it must fail cleanly; where a
// driver exists it must find GPUs that have names and memory.
func TestRealNVMLWithoutDriver(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	d, err := OpenNVML(ctx, NVMLOptions{})
	if err != nil {
		if !errors.Is(err, ErrNVMLNotFound) && !errors.Is(err, ErrNVMLDriverNotLoaded) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		t.Logf("no NVIDIA driver here, as expected in CI: %v", err)
		return
	}
	defer func() { _ = d.Close() }()
	gpus, err := d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gpus {
		if g.UUID == "" || g.ProductName == "" || g.MemoryBytes == 0 {
			t.Errorf("incomplete GPU %+v", g)
		}
	}
}

// TestDGXA100Mock runs discovery against go-nvml's model of a whole DGX A100.
func TestDGXA100Mock(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	server := dgxa100.New()
	for i, dev := range server.Devices {
		numa := i / 4
		dev.(*mockserver.Device).GetNumaNodeIdFunc = func() (int, nvml.Return) { return numa, nvml.SUCCESS }
		dev.(*mockserver.Device).GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{}, nvml.ERROR_NOT_SUPPORTED
		}
	}
	d, err := OpenNVML(ctx, NVMLOptions{Library: server, SysfsRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	gpus, err := d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(gpus) != 8 {
		t.Fatalf("got %d GPUs, want 8", len(gpus))
	}
	for i, g := range gpus {
		if g.Index != i || g.Minor != i || g.Architecture != "ampere" || g.CUDAComputeCapability != "8.0" ||
			g.MemoryBytes != 40960*mib || g.DriverVersion != "550.54.15" || g.CUDADriverVersion != "12.4" || g.NUMANode != i/4 || g.MIGEnabled {
			t.Errorf("GPU %d: %+v", i, g)
		}
	}
}

func TestNormalizePCIBusID(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "00000000:3B:00.0", want: "0000:3b:00.0"},
		{in: "0000:3b:00.0", want: "0000:3b:00.0"},
		{in: "00000001:C1:1F.7", want: "0001:c1:1f.7"},
		{in: "00010000:3b:00.0", wantErr: true},
		{in: "3b:00.0", wantErr: true},
		{in: "0000:3b:00", wantErr: true},
		{in: "0000:3g:00.0", wantErr: true},
		{in: "0000:3b:00.8", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range tests {
		got, err := NormalizePCIBusID(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("NormalizePCIBusID(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
