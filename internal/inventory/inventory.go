// Package inventory turns discovered GPUs into the ResourceSlice model the
// driver publishes: one shareable device per physical GPU with consumable
// "memory" and "cores" capacities. See README.md in this directory for the
// semantics users rely on.
package inventory

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/gpumodel"
)

// Capacity names. They are unqualified, so they live in the driver's domain:
// claims request them as capacity.requests.memory, CEL reads them as
// device.capacity["vgpu.hami.io"].memory.
const (
	CapacityMemory resourceapi.QualifiedName = "memory"
	CapacityCores  resourceapi.QualifiedName = "cores"
)

// Attribute names, also in the driver's domain.
const (
	AttrType                  resourceapi.QualifiedName = "type"
	AttrUUID                  resourceapi.QualifiedName = "uuid"
	AttrIndex                 resourceapi.QualifiedName = "index"
	AttrMinor                 resourceapi.QualifiedName = "minor"
	AttrProductName           resourceapi.QualifiedName = "productName"
	AttrBrand                 resourceapi.QualifiedName = "brand"
	AttrArchitecture          resourceapi.QualifiedName = "architecture"
	AttrCUDAComputeCapability resourceapi.QualifiedName = "cudaComputeCapability"
	AttrDriverVersion         resourceapi.QualifiedName = "driverVersion"
	AttrCUDADriverVersion     resourceapi.QualifiedName = "cudaDriverVersion"
	AttrNUMANode              resourceapi.QualifiedName = "numaNode"

	// DeviceTypeGPU is the value of the "type" attribute: a whole physical
	// GPU shared by quota (as opposed to, say, a MIG slice).
	DeviceTypeGPU = "gpu"
)

// AttrModel and AttrFamily are the product name normalised for exact
// comparison (gpumodel.Name, gpumodel.Family): "a100-sxm4-80gb"
// and "a100". DeviceClasses compare them with ==, so a class for A10 never
// selects an A100 nor one for H20 an H200.
const (
	AttrModel  resourceapi.QualifiedName = "model"
	AttrFamily resourceapi.QualifiedName = "family"
)

// MemoryStep is the granularity of the memory capacity. 1Mi, because:
//   - NVML reports totals in whole MiB, and many are not multiples of any
//     larger power of two (H100 80GB HBM3: 81559 MiB, L4: 23034 MiB). The API
//     requires the default to be min + n*step, so with 256Mi the default
//     could not be the whole GPU and "no request = whole GPU" would break.
//   - Users size requests in MiB/GiB after nvidia-smi; rounding a 20000Mi
//     request up to a coarser step would silently hand out more than asked
//     and fit fewer pods than the arithmetic on the nvidia-smi figure says.
//   - The allocator's cost does not depend on the step, and libvgpu enforces
//     the byte limit itself, so a finer step costs nothing.
var MemoryStep = resource.MustParse("1Mi")

// CoresMax is the whole GPU's compute, in percent.
const CoresMax = 100

// MaxDevicesPerSlice keeps slices valid whatever features devices use (the
// API allows 128 devices, 64 once taints or counters appear).
const MaxDevicesPerSlice = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures

// DeviceName is the device's name in the ResourceSlice, derived from the
// GPU's UUID so it survives reboots, re-discovery and changes of NVML's
// enumeration order: "GPU-8a2f…" becomes "gpu-8a2f…". A UUID that does not
// make a DNS label is hashed instead, so the name is always valid.
func DeviceName(gpu discovery.GPU) string {
	name := "gpu-" + strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(gpu.UUID, "GPU-"), "gpu-"))
	if len(validation.IsDNS1123Label(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(gpu.UUID))
	return fmt.Sprintf("gpu-%x", sum[:16])
}

// Build returns the pool this node publishes: one pool named after the node,
// one device per sharable GPU. GPUs in MIG mode are left out with a log line
// (see README.md, "MIG"). The GPUs that were published are returned too, in
// device order, for the driver's Prepare.
func Build(ctx context.Context, nodeName string, gpus []discovery.GPU, opts ...Option) (resourceslice.DriverResources, []discovery.GPU) {
	logger := klog.FromContext(ctx)
	var o buildOptions
	for _, opt := range opts {
		opt(&o)
	}
	var devices []resourceapi.Device
	var published []discovery.GPU
	seen := map[string]string{}
	for _, gpu := range gpus {
		if gpu.MIGEnabled {
			logger.Info("Not publishing a GPU in MIG mode: MIG partitions cannot be shared by quota; disable MIG to share it", "uuid", gpu.UUID, "index", gpu.Index)
			continue
		}
		name := DeviceName(gpu)
		if other, dup := seen[name]; dup {
			// Two GPUs with one UUID is a broken driver or profile; publishing
			// both would make the slice invalid and hide every GPU.
			logger.Error(nil, "Not publishing a GPU whose device name is already taken", "uuid", gpu.UUID, "otherUUID", other, "device", name)
			continue
		}
		seen[name] = gpu.UUID
		device := Device(ctx, gpu)
		o.apply(gpu, &device)
		devices = append(devices, device)
		published = append(published, gpu)
	}

	pool := resourceslice.Pool{}
	for start := 0; start < len(devices); start += MaxDevicesPerSlice {
		end := min(start+MaxDevicesPerSlice, len(devices))
		pool.Slices = append(pool.Slices, resourceslice.Slice{Devices: devices[start:end]})
	}
	if len(pool.Slices) == 0 {
		// An empty pool still gets published so that slices left by an
		// earlier run (GPUs since removed) are deleted.
		pool.Slices = []resourceslice.Slice{{}}
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{nodeName: pool}}, published
}

// Device describes one GPU.
func Device(ctx context.Context, gpu discovery.GPU) resourceapi.Device {
	return resourceapi.Device{
		Name:                     DeviceName(gpu),
		Attributes:               attributes(ctx, gpu),
		Capacity:                 capacities(gpu),
		AllowMultipleAllocations: ptr.To(true),
	}
}

// capacities makes memory and cores consumable. The defaults are what a
// request that does not mention a capacity consumes: all of the memory (so
// such a claim owns the GPU, as nvidia.com/gpu: 1 always did) and no
// reserved compute (so a memory-only claim shares compute best-effort).
func capacities(gpu discovery.GPU) map[resourceapi.QualifiedName]resourceapi.DeviceCapacity {
	step := MemoryStep.Value()
	// Only what tenants can allocate is offered: the driver's reserved
	// memory is not (vgpu-core/README.md, "What the driver takes").
	usable := gpu.MemoryBytes
	if gpu.ReservedMemoryBytes < usable {
		usable -= gpu.ReservedMemoryBytes
	}
	total := int64(min(usable, uint64(1)<<62))
	// Round down to the step so that "default = whole GPU" is a valid
	// value of the range even if a GPU reports a total that is not a whole
	// number of MiB.
	whole := total / step * step
	memory := resourceapi.DeviceCapacity{
		Value: *resource.NewQuantity(total, resource.BinarySI),
	}
	if whole >= 2*step {
		memory.RequestPolicy = &resourceapi.CapacityRequestPolicy{
			Default: resource.NewQuantity(whole, resource.BinarySI),
			ValidRange: &resourceapi.CapacityRequestPolicyRange{
				Min:  ptr.To(MemoryStep.DeepCopy()),
				Max:  resource.NewQuantity(whole, resource.BinarySI),
				Step: ptr.To(MemoryStep.DeepCopy()),
			},
		}
	}
	cores := resourceapi.DeviceCapacity{
		Value: *resource.NewQuantity(CoresMax, resource.DecimalSI),
		RequestPolicy: &resourceapi.CapacityRequestPolicy{
			Default: resource.NewQuantity(0, resource.DecimalSI),
			ValidRange: &resourceapi.CapacityRequestPolicyRange{
				Min:  resource.NewQuantity(0, resource.DecimalSI),
				Max:  resource.NewQuantity(CoresMax, resource.DecimalSI),
				Step: resource.NewQuantity(1, resource.DecimalSI),
			},
		},
	}
	return map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
		CapacityMemory: memory,
		CapacityCores:  cores,
	}
}

// attributes lists what DeviceClasses and CEL selectors can match on. Values
// that are unknown are left out rather than published empty, so that a
// selector like `has(...)` tells "unknown" from a real value.
func attributes(ctx context.Context, gpu discovery.GPU) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	logger := klog.FromContext(ctx)
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		AttrType:  {StringValue: ptr.To(DeviceTypeGPU)},
		AttrUUID:  {StringValue: ptr.To(gpu.UUID)},
		AttrIndex: {IntValue: ptr.To(int64(gpu.Index))},
		AttrMinor: {IntValue: ptr.To(int64(gpu.Minor))},
	}
	putString := func(name resourceapi.QualifiedName, value string) {
		if value == "" {
			return
		}
		if len(value) > resourceapi.DeviceAttributeMaxValueLength {
			value = value[:resourceapi.DeviceAttributeMaxValueLength]
		}
		attrs[name] = resourceapi.DeviceAttribute{StringValue: &value}
	}
	putVersion := func(name resourceapi.QualifiedName, value string) {
		if value == "" {
			return
		}
		v, err := SemanticVersion(value)
		if err != nil {
			logger.V(2).Info("Not publishing a version attribute", "uuid", gpu.UUID, "attribute", name, "err", err)
			return
		}
		attrs[name] = resourceapi.DeviceAttribute{VersionValue: &v}
	}
	putString(AttrProductName, gpu.ProductName)
	if gpu.ProductName != "" {
		putString(AttrModel, gpumodel.Name(gpu.ProductName))
		putString(AttrFamily, gpumodel.Family(gpu.ProductName))
	}
	putString(AttrBrand, gpu.Brand)
	putString(AttrArchitecture, gpu.Architecture)
	putVersion(AttrCUDAComputeCapability, gpu.CUDAComputeCapability)
	putVersion(AttrDriverVersion, gpu.DriverVersion)
	putVersion(AttrCUDADriverVersion, gpu.CUDADriverVersion)

	if gpu.NUMANode >= 0 {
		attrs[AttrNUMANode] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(gpu.NUMANode))}
		// The standard attribute lets claims align GPUs with CPUs, memory and
		// NICs from other drivers; scalar form needs no feature gate.
		if a, err := deviceattribute.GetNUMANodeAttribute(gpu.NUMANode, deviceattribute.ScalarAttribute); err == nil {
			attrs[a.Name] = a.Value
		}
	}
	if gpu.PCIBusID != "" {
		if a, err := deviceattribute.GetPCIBusIDAttribute(gpu.PCIBusID); err == nil {
			attrs[a.Name] = a.Value
		} else {
			logger.V(2).Info("Not publishing the PCI bus ID", "uuid", gpu.UUID, "err", err)
		}
	}
	if gpu.PCIeRoot != "" {
		attrs[deviceattribute.StandardDeviceAttributePCIeRoot] = resourceapi.DeviceAttribute{StringValue: ptr.To(gpu.PCIeRoot)}
	}
	return attrs
}

// SemanticVersion turns NVML's dotted versions into semver 2.0, which the
// API requires for version attributes: missing parts become 0 and leading
// zeros go ("9.0" → "9.0.0", "580.82.07" → "580.82.7").
func SemanticVersion(v string) (string, error) {
	parts := strings.Split(strings.TrimSpace(v), ".")
	if len(parts) > 3 {
		return "", fmt.Errorf("version %q has more than three parts", v)
	}
	nums := make([]string, 3)
	for i := range nums {
		nums[i] = "0"
		if i >= len(parts) {
			continue
		}
		n, err := strconv.ParseUint(parts[i], 10, 32)
		if err != nil {
			return "", fmt.Errorf("version %q: part %q is not a number", v, parts[i])
		}
		nums[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(nums, "."), nil
}
