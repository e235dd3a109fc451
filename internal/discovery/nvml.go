package discovery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/klog/v2"
)

// NVMLLibraryName is the soname loaded at run time. The binary is not linked
// against it, so it starts (and reports a clear error) on nodes without the
// NVIDIA driver.
const NVMLLibraryName = "libnvidia-ml.so.1"

// ErrNVMLNotFound is returned when libnvidia-ml.so.1 cannot be loaded: the
// node has no NVIDIA driver, or the driver's libraries are not mounted into
// the plugin's container.
var ErrNVMLNotFound = errors.New("NVML library " + NVMLLibraryName + " not found: no NVIDIA driver on this node, or its libraries are not mounted into the container")

// ErrNVMLDriverNotLoaded is returned when the library is present but the
// kernel module is not loaded (for example right after a driver upgrade).
var ErrNVMLDriverNotLoaded = errors.New("NVIDIA kernel driver is not loaded")

// NVMLOptions tune the NVML discoverer; the zero value is right for a real node.
type NVMLOptions struct {
	// Library replaces the real NVML, for tests (go-nvml's mock package).
	Library nvml.Interface
	// LibraryPath overrides where libnvidia-ml.so.1 is loaded from, e.g. a
	// driver root mounted at /driver-root. Empty uses the loader's search path.
	LibraryPath string
	// SysfsRoot is where the host's /sys is visible; used to find the PCIe
	// root complex and, where NVML cannot tell, the NUMA node. Default "/sys".
	SysfsRoot string
}

// NVMLDiscoverer discovers GPUs through NVML. It keeps NVML initialised from
// OpenNVML to Close, because the plugin re-discovers periodically and
// initialising NVML costs tens of milliseconds per GPU.
type NVMLDiscoverer struct {
	lib       nvml.Interface
	sysfsRoot string
}

var _ Discoverer = (*NVMLDiscoverer)(nil)

// OpenNVML loads and initialises NVML. A node without the library gets an
// error wrapping ErrNVMLNotFound, never a crash.
func OpenNVML(ctx context.Context, opts NVMLOptions) (*NVMLDiscoverer, error) {
	lib := opts.Library
	if lib == nil {
		var libOpts []nvml.LibraryOption
		if opts.LibraryPath != "" {
			libOpts = append(libOpts, nvml.WithLibraryPath(opts.LibraryPath))
		}
		lib = nvml.New(libOpts...)
	}
	sysfsRoot := opts.SysfsRoot
	if sysfsRoot == "" {
		sysfsRoot = "/sys"
	}
	switch ret := lib.Init(); ret {
	case nvml.SUCCESS:
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return nil, fmt.Errorf("initialise NVML: %w", ErrNVMLNotFound)
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return nil, fmt.Errorf("initialise NVML: %w", ErrNVMLDriverNotLoaded)
	default:
		return nil, fmt.Errorf("initialise NVML: %w", ret)
	}
	klog.FromContext(ctx).V(2).Info("NVML initialised", "library", firstNonEmpty(opts.LibraryPath, NVMLLibraryName))
	return &NVMLDiscoverer{lib: lib, sysfsRoot: sysfsRoot}, nil
}

// Close shuts NVML down.
func (d *NVMLDiscoverer) Close() error {
	if ret := d.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("shut down NVML: %w", ret)
	}
	return nil
}

// Discover lists the GPUs in NVML's index order. Failing to enumerate is an
// error; a single GPU that does not answer (fallen off the bus, for example)
// is logged and left out so that the healthy ones stay schedulable.
func (d *NVMLDiscoverer) Discover(ctx context.Context) ([]GPU, error) {
	logger := klog.FromContext(ctx)
	count, ret := d.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("count GPUs: %w", ret)
	}
	// The driver versions are per node; failing to read them only loses
	// attributes, not GPUs.
	driverVersion, ret := d.lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		logger.Info("Cannot read the driver version", "err", ret)
		driverVersion = ""
	}
	cudaDriverVersion := ""
	if v, ret := d.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		cudaDriverVersion = formatCUDAVersion(v)
	} else {
		logger.Info("Cannot read the CUDA driver version", "err", ret)
	}

	gpus := make([]GPU, 0, count)
	for i := 0; i < count; i++ {
		gpu, err := d.describe(ctx, i)
		if err != nil {
			logger.Error(err, "Leaving out a GPU that NVML cannot describe", "index", i)
			continue
		}
		gpu.DriverVersion = driverVersion
		gpu.CUDADriverVersion = cudaDriverVersion
		gpus = append(gpus, gpu)
	}
	return gpus, nil
}

// describe reads one GPU. UUID, name, minor number and memory are required:
// without them the GPU can be neither named, injected nor shared.
func (d *NVMLDiscoverer) describe(ctx context.Context, index int) (GPU, error) {
	logger := klog.FromContext(ctx)
	dev, ret := d.lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return GPU{}, fmt.Errorf("get handle of GPU %d: %w", index, ret)
	}
	gpu := GPU{Index: index, NUMANode: -1}
	if gpu.UUID, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return GPU{}, fmt.Errorf("get UUID of GPU %d: %w", index, ret)
	}
	if gpu.ProductName, ret = dev.GetName(); ret != nvml.SUCCESS {
		return GPU{}, fmt.Errorf("get name of GPU %s: %w", gpu.UUID, ret)
	}
	if gpu.Minor, ret = dev.GetMinorNumber(); ret != nvml.SUCCESS {
		return GPU{}, fmt.Errorf("get minor number of GPU %s: %w", gpu.UUID, ret)
	}
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return GPU{}, fmt.Errorf("get memory of GPU %s: %w", gpu.UUID, ret)
	}
	gpu.MemoryBytes = mem.Total
	// The driver keeps part of the memory for itself; only the v2 call
	// tells how much (drivers since R510). Without it nothing is subtracted.
	if mem2, ret := dev.GetMemoryInfo_v2(); ret == nvml.SUCCESS && mem2.Reserved < mem.Total {
		gpu.ReservedMemoryBytes = mem2.Reserved
	} else if ret != nvml.SUCCESS {
		logger.V(3).Info("NVML cannot tell the driver's reserved memory", "uuid", gpu.UUID, "err", ret)
	}

	// Everything below only adds attributes; a GPU that cannot tell is still
	// usable, so missing values are logged at a low level and left empty.
	optional := func(what string, ret nvml.Return) bool {
		if ret == nvml.SUCCESS {
			return true
		}
		logger.V(3).Info("NVML cannot tell a GPU property", "uuid", gpu.UUID, "property", what, "err", ret)
		return false
	}
	if brand, ret := dev.GetBrand(); optional("brand", ret) {
		gpu.Brand = brandName(brand)
	}
	if arch, ret := dev.GetArchitecture(); optional("architecture", ret) {
		gpu.Architecture = architectureName(arch)
	}
	if major, minor, ret := dev.GetCudaComputeCapability(); optional("compute capability", ret) {
		gpu.CUDAComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	}
	if pci, ret := dev.GetPciInfo(); optional("PCI info", ret) {
		if raw := cString(pci.BusId[:]); raw != "" {
			busID, err := NormalizePCIBusID(raw)
			if err != nil {
				logger.V(3).Info("Ignoring a PCI bus ID", "uuid", gpu.UUID, "err", err)
			}
			gpu.PCIBusID = busID
		}
	}
	if current, _, ret := dev.GetMigMode(); ret == nvml.SUCCESS {
		gpu.MIGEnabled = current == nvml.DEVICE_MIG_ENABLE
	} else if ret != nvml.ERROR_NOT_SUPPORTED {
		// Only GPUs without MIG support may say "not supported"; for the
		// others not knowing is unsafe (MIG GPUs cannot be shared), so the
		// GPU is left out.
		return GPU{}, fmt.Errorf("get MIG mode of GPU %s: %w", gpu.UUID, ret)
	}
	if numa, ret := dev.GetNumaNodeId(); ret == nvml.SUCCESS {
		gpu.NUMANode = numa
	} else if gpu.PCIBusID != "" {
		// Older drivers and single-socket machines: ask sysfs.
		gpu.NUMANode = d.sysfsNUMANode(gpu.PCIBusID)
	}
	if gpu.PCIBusID != "" {
		attr, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(gpu.PCIBusID, deviceattribute.WithFSFromRoot(d.sysfsRoot))
		if err == nil && attr.Value.StringValue != nil {
			gpu.PCIeRoot = *attr.Value.StringValue
		} else {
			logger.V(3).Info("Cannot find the PCIe root of a GPU", "uuid", gpu.UUID, "err", err)
		}
	}
	return gpu, nil
}

func (d *NVMLDiscoverer) sysfsNUMANode(busID string) int {
	attr, err := deviceattribute.GetNUMANodeAttributeByPCIBusID(busID, deviceattribute.ScalarAttribute, deviceattribute.WithFSFromRoot(d.sysfsRoot))
	if err != nil || attr.Value.IntValue == nil {
		return -1
	}
	return int(*attr.Value.IntValue)
}

// NormalizePCIBusID turns NVML's "00000000:3B:00.0" into the kernel's and
// Kubernetes' form "0000:3b:00.0". It returns "" and an error for anything
// that is not domain:bus:device.function in hexadecimal.
func NormalizePCIBusID(busID string) (string, error) {
	s := strings.ToLower(strings.TrimSpace(busID))
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return "", fmt.Errorf("PCI bus ID %q: want domain:bus:device.function", busID)
	}
	devFn := strings.Split(parts[2], ".")
	if len(devFn) != 2 {
		return "", fmt.Errorf("PCI bus ID %q: want domain:bus:device.function", busID)
	}
	fields := []struct {
		text string
		bits int
	}{{parts[0], 32}, {parts[1], 8}, {devFn[0], 5}, {devFn[1], 3}}
	values := make([]uint64, len(fields))
	for i, f := range fields {
		v, err := strconv.ParseUint(f.text, 16, f.bits)
		if err != nil || f.text == "" {
			return "", fmt.Errorf("PCI bus ID %q: field %q is not a %d-bit hexadecimal number", busID, f.text, f.bits)
		}
		values[i] = v
	}
	if values[0] > 0xffff {
		// Kubernetes' pciBusID attribute allows 16-bit domains only.
		return "", fmt.Errorf("PCI bus ID %q: domain %#x does not fit 16 bits", busID, values[0])
	}
	return fmt.Sprintf("%04x:%02x:%02x.%x", values[0], values[1], values[2], values[3]), nil
}

// formatCUDAVersion turns NVML's 13000 into "13.0" (major*1000 + minor*10).
func formatCUDAVersion(v int) string {
	return fmt.Sprintf("%d.%d", v/1000, (v%1000)/10)
}

// cString reads a NUL-terminated C char array; go-nvml declares them as
// int8 or uint8 depending on its version and the platform's char.
func cString[T ~int8 | ~uint8](b []T) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

func brandName(b nvml.BrandType) string {
	switch b {
	case nvml.BRAND_QUADRO:
		return "Quadro"
	case nvml.BRAND_TESLA:
		return "Tesla"
	case nvml.BRAND_NVS:
		return "NVS"
	case nvml.BRAND_GRID:
		return "Grid"
	case nvml.BRAND_GEFORCE:
		return "GeForce"
	case nvml.BRAND_TITAN:
		return "Titan"
	case nvml.BRAND_NVIDIA_VAPPS:
		return "NvidiaVApps"
	case nvml.BRAND_NVIDIA_VPC:
		return "NvidiaVPC"
	case nvml.BRAND_NVIDIA_VCS:
		return "NvidiaVCS"
	case nvml.BRAND_NVIDIA_VWS:
		return "NvidiaVWS"
	case nvml.BRAND_NVIDIA_CLOUD_GAMING:
		return "NvidiaCloudGaming"
	case nvml.BRAND_QUADRO_RTX:
		return "QuadroRTX"
	case nvml.BRAND_NVIDIA_RTX:
		return "NvidiaRTX"
	case nvml.BRAND_NVIDIA:
		return "Nvidia"
	case nvml.BRAND_GEFORCE_RTX:
		return "GeForceRTX"
	case nvml.BRAND_TITAN_RTX:
		return "TitanRTX"
	default:
		return "Unknown"
	}
}

func architectureName(a nvml.DeviceArchitecture) string {
	switch a {
	case nvml.DEVICE_ARCH_KEPLER:
		return "kepler"
	case nvml.DEVICE_ARCH_MAXWELL:
		return "maxwell"
	case nvml.DEVICE_ARCH_PASCAL:
		return "pascal"
	case nvml.DEVICE_ARCH_VOLTA:
		return "volta"
	case nvml.DEVICE_ARCH_TURING:
		return "turing"
	case nvml.DEVICE_ARCH_AMPERE:
		return "ampere"
	case nvml.DEVICE_ARCH_ADA:
		return "ada"
	case nvml.DEVICE_ARCH_HOPPER:
		return "hopper"
	case nvml.DEVICE_ARCH_BLACKWELL:
		return "blackwell"
	default:
		return "unknown"
	}
}
