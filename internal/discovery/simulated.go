package discovery

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"

	"k8s.io/klog/v2"
)

// SimulatedDiscoverer reports the GPUs of a Profile as if NVML had found
// them. Identity (UUID, PCI address) is derived from the node name and the
// GPU's position, so restarts and re-discovery report the same devices on
// one node, and different nodes never share a UUID.
type SimulatedDiscoverer struct {
	nodeName string
	profile  Profile
	gpus     []SimulatedGPU
	// injection is the test hook of simulated_events.go; nil in production.
	injection *injection
}

var _ Discoverer = (*SimulatedDiscoverer)(nil)

// NewSimulated checks the profile and returns a discoverer for it.
func NewSimulated(nodeName string, profile Profile) (*SimulatedDiscoverer, error) {
	if nodeName == "" {
		return nil, fmt.Errorf("simulated GPUs need a node name: their identity derives from it")
	}
	gpus, err := profile.Resolve()
	if err != nil {
		return nil, fmt.Errorf("simulated profile: %w", err)
	}
	return &SimulatedDiscoverer{nodeName: nodeName, profile: profile, gpus: gpus}, nil
}

// Discover returns the profile's GPUs. It never fails.
func (d *SimulatedDiscoverer) Discover(ctx context.Context) ([]GPU, error) {
	driverVersion := firstNonEmpty(d.profile.DriverVersion, DefaultSimulatedDriverVersion)
	cudaVersion := firstNonEmpty(d.profile.CUDADriverVersion, DefaultSimulatedCUDADriverVersion)
	domain, baseBus, device := simulatedPCIBase(d.nodeName)
	gpus := make([]GPU, 0, len(d.gpus))
	for i, sim := range d.gpus {
		if d.lost(i) {
			// As NVML, which cannot describe a GPU that fell off the bus.
			continue
		}
		// 0x11 is odd, so i*0x11 mod 256 is distinct for up to 256 GPUs.
		bus := (baseBus + uint32(i)*0x11) % 256
		// Pairs of GPUs share a PCIe switch under one root complex, as on
		// HGX boards.
		rootBus := (baseBus + uint32(i/2)*0x22 + 0x80) % 256
		gpus = append(gpus, GPU{
			UUID:                  SimulatedUUID(d.nodeName, i, sim.ProductName),
			Index:                 i,
			Minor:                 i,
			ProductName:           sim.ProductName,
			Brand:                 sim.Brand,
			Architecture:          sim.Architecture,
			CUDAComputeCapability: sim.CUDAComputeCapability,
			DriverVersion:         driverVersion,
			CUDADriverVersion:     cudaVersion,
			MemoryBytes:           sim.MemoryBytes,
			ReservedMemoryBytes:   sim.ReservedMemoryBytes,
			PCIBusID:              fmt.Sprintf("%04x:%02x:%02x.0", domain, bus, device),
			PCIeRoot:              fmt.Sprintf("pci%04x:%02x", domain, rootBus),
			NUMANode:              i * 2 / max(len(d.gpus), 2),
			MIGEnabled:            sim.MIGEnabled,
		})
	}
	klog.FromContext(ctx).V(4).Info("Simulated GPUs discovered", "node", d.nodeName, "count", len(gpus))
	return gpus, nil
}

// Close has nothing to release.
func (d *SimulatedDiscoverer) Close() error { return nil }

// SimulatedUUID is the UUID of simulated GPU index on node. It has NVML's
// shape ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") and changes when the
// model at that position changes, as a swapped board would.
func SimulatedUUID(nodeName string, index int, productName string) string {
	sum := sha256.Sum256([]byte("hami-dra/simulated-gpu\x00" + nodeName + "\x00" + strconv.Itoa(index) + "\x00" + productName))
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
}

// simulatedPCIBase derives a PCI domain, first bus and device number from
// the node name, so that bus IDs are stable on a node and differ between
// nodes: 29 bits of the name's hash go into them, which leaves two 8-GPU
// nodes a chance of about 3 in 10^8 to share an address.
func simulatedPCIBase(nodeName string) (domain, bus, device uint32) {
	sum := sha256.Sum256([]byte("hami-dra/simulated-pci\x00" + nodeName))
	return uint32(binary.BigEndian.Uint16(sum[0:2])), uint32(sum[2]), uint32(sum[3] & 0x1f)
}
