// Package discovery finds the node's NVIDIA GPUs, either through NVML or from a
// simulated node profile, and describes each one as a GPU value.
package discovery

import "context"

// GPU is everything the driver knows about one physical GPU. It is filled by a
// Discoverer and consumed by the inventory (ResourceSlices) and by
// NodePrepareResources (CDI specs and quotas).
type GPU struct {
	// UUID is NVML's identifier ("GPU-8a2f..."); stable across reboots.
	UUID string
	// Index is NVML's enumeration index (PCI bus order).
	Index int
	// Minor is the minor number of the device node /dev/nvidia<Minor>.
	Minor int
	// ProductName is NVML's name, e.g. "NVIDIA H100 80GB HBM3".
	ProductName string
	// Brand is NVML's brand, e.g. "Nvidia", "Tesla".
	Brand string
	// Architecture is the lower-case architecture name, e.g. "hopper".
	Architecture string
	// CUDAComputeCapability is "major.minor", e.g. "9.0".
	CUDAComputeCapability string
	// DriverVersion is the kernel driver version, e.g. "580.82.07".
	DriverVersion string
	// CUDADriverVersion is the CUDA version the driver supports, e.g. "13.0".
	CUDADriverVersion string
	// MemoryBytes is the GPU's total memory as NVML reports it.
	MemoryBytes uint64
	// ReservedMemoryBytes is the part of MemoryBytes the driver and firmware
	// keep for themselves (nvmlDeviceGetMemoryInfo_v2's reserved): no tenant
	// can allocate it, so it is not offered to claims. 0 when unknown.
	ReservedMemoryBytes uint64
	// PCIBusID is the normalised PCI address, "0000:3b:00.0"; empty when unknown.
	PCIBusID string
	// PCIeRoot is the PCIe root complex the GPU hangs off, "pci0000:00"
	// (the form of the standard resource.kubernetes.io/pcieRoot attribute);
	// empty when unknown. GPUs under the same root talk to each other and to
	// NICs there without crossing the CPU interconnect.
	PCIeRoot string
	// NUMANode is the NUMA node the GPU is attached to; -1 when unknown.
	NUMANode int
	// MIGEnabled reports whether MIG mode is on; such GPUs are not shared by
	// this driver because MIG partitions already divide them.
	MIGEnabled bool
}

// Discoverer lists the node's GPUs.
type Discoverer interface {
	// Discover returns the GPUs ordered by Index. A node without GPUs returns
	// an empty list and no error; a broken driver returns an error.
	Discover(ctx context.Context) ([]GPU, error)
	// Close releases what the Discoverer holds (NVML's handle).
	Close() error
}
