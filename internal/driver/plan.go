package driver

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/resourceclaim"

	"github.com/hami-dra/hami-dra/api"
	"github.com/hami-dra/hami-dra/api/v1alpha1"
	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

// plan turns an allocated claim into the checkpoint record that Prepare
// writes. It has no side effects, so a bad claim fails before any file is
// touched. Errors are meant for the user who wrote the claim.
//
// It works on one snapshot of the node's GPUs: a re-discovery while it runs
// must not give one result a GPU and the next lookup of the same device
// nothing.
func (d *Driver) plan(claim *resourceapi.ResourceClaim) (checkpoint.Claim, error) {
	rec := checkpoint.Claim{Namespace: claim.Namespace, Name: claim.Name, State: checkpoint.PrepareStarted}
	alloc := claim.Status.Allocation
	if alloc == nil {
		return rec, fmt.Errorf("claim is not allocated")
	}
	configs, err := d.opaqueConfigs(alloc.Devices.Config)
	if err != nil {
		return rec, err
	}
	gpus := d.gpuSnapshot()

	type share struct {
		gpu         discovery.GPU
		memoryBytes int64
		cores       int64
	}
	type result struct {
		r   resourceapi.DeviceRequestAllocationResult
		gpu discovery.GPU
	}
	perGPU := map[string]*share{}
	var results []result
	var effective *v1alpha1.VgpuConfig
	var effectiveFrom, adminFrom, quotaFrom string
	for _, r := range alloc.Devices.Results {
		if r.Driver != d.cfg.DriverName {
			continue
		}
		admin := r.AdminAccess != nil && *r.AdminAccess
		if admin {
			adminFrom = r.Request
		} else {
			quotaFrom = r.Request
		}
		if adminFrom != "" && quotaFrom != "" {
			return rec, fmt.Errorf("requests %q (adminAccess) and %q (a quota) are in one claim; libvgpu limits a whole container, so a claim's requests must all use adminAccess or none", adminFrom, quotaFrom)
		}
		gpu, ok := gpus[r.Device]
		if !ok {
			return rec, fmt.Errorf("request %q: device %q (pool %q) does not exist on node %s; the ResourceSlice may be stale", r.Request, r.Device, r.Pool, d.cfg.NodeName)
		}
		if gpu.MIGEnabled {
			return rec, fmt.Errorf("request %q: GPU %s has MIG enabled and cannot be shared", r.Request, gpu.UUID)
		}
		var mem, cores int64
		if !admin {
			// Admin access (monitoring) consumes no capacity and gets
			// no quota, whatever the allocation says it consumed.
			if mem, cores, err = quotaOf(r, gpu); err != nil {
				return rec, err
			}
		}
		cfg := mergeFor(configs, r)
		if effective == nil {
			effective, effectiveFrom = &cfg, r.Request
		} else if *cfg.ComputePolicy != *effective.ComputePolicy || *cfg.LogLevel != *effective.LogLevel || *cfg.MemoryAuditAction != *effective.MemoryAuditAction {
			return rec, fmt.Errorf("requests %q and %q resolve to different %s settings; libvgpu applies one setting per container, so give all requests of the claim the same config", effectiveFrom, r.Request, v1alpha1.KindVgpuConfig)
		}
		// Two shares of one GPU in one claim (two requests) become one
		// quota: libvgpu enforces per GPU and per process, so it cannot
		// keep them apart anyway.
		s := perGPU[gpu.UUID]
		if s == nil {
			s = &share{gpu: gpu}
			perGPU[gpu.UUID] = s
		}
		s.memoryBytes += mem
		s.cores += cores
		results = append(results, result{r, gpu})
	}
	if len(results) == 0 {
		return rec, fmt.Errorf("claim has no devices of driver %s", d.cfg.DriverName)
	}
	rec.AdminAccess = adminFrom != ""

	// Quota index i is the GPU's position in PCI bus order: with
	// CUDA_DEVICE_ORDER=PCI_BUS_ID and only these GPUs visible, it is the
	// CUDA ordinal the container sees (VGPU_DEVICE_UUIDS pins it by UUID).
	shares := make([]*share, 0, len(perGPU))
	for _, s := range perGPU {
		shares = append(shares, s)
	}
	sort.Slice(shares, func(i, j int) bool { return gpuLess(shares[i].gpu, shares[j].gpu) })
	index := map[string]int{}
	var uuids []string
	env := []string{}
	for i, s := range shares {
		if s.memoryBytes > int64(s.gpu.MemoryBytes) {
			return rec, fmt.Errorf("GPU %s: the claim's shares add up to %d bytes of memory, more than the GPU's %d", s.gpu.UUID, s.memoryBytes, s.gpu.MemoryBytes)
		}
		if s.cores > inventory.CoresMax {
			return rec, fmt.Errorf("GPU %s: the claim's shares add up to %d cores, more than %d", s.gpu.UUID, s.cores, inventory.CoresMax)
		}
		index[s.gpu.UUID] = i
		uuids = append(uuids, s.gpu.UUID)
		rec.GPUs = append(rec.GPUs, checkpoint.GPUQuota{UUID: s.gpu.UUID, PCIBusID: s.gpu.PCIBusID, Minor: s.gpu.Minor, MemoryBytes: s.memoryBytes, Cores: s.cores})
		env = append(env,
			fmt.Sprintf("CUDA_DEVICE_MEMORY_LIMIT_%d=%d", i, s.memoryBytes),
			fmt.Sprintf("CUDA_DEVICE_SM_LIMIT_%d=%d", i, s.cores))
	}
	env = append(env,
		"CUDA_DEVICE_ORDER=PCI_BUS_ID",
		"VGPU_DEVICE_UUIDS="+strings.Join(uuids, ","),
		"CUDA_DEVICE_MEMORY_SHARED_CACHE="+cdi.SharedRegionPath,
		"VGPU_GPU_STATE_DIR="+cdi.ContainerGPUStateDir,
		"GPU_CORE_UTILIZATION_POLICY=default",
		"VGPU_COMPUTE_POLICY="+effective.PolicyEnv(),
		"LIBCUDA_LOG_LEVEL="+strconv.Itoa(*effective.LogLevel),
	)
	sort.Strings(env)
	if rec.AdminAccess {
		// Neither libvgpu nor its settings: the container sees the whole
		// GPUs (see README "Admin access"); the ordering still holds.
		env = []string{"CUDA_DEVICE_ORDER=PCI_BUS_ID"}
	}
	rec.Env = env
	if !rec.AdminAccess {
		rec.MemoryAuditAction = string(*effective.MemoryAuditAction)
	}

	uid := string(claim.UID)
	for _, res := range results {
		r, gpu := res.r, res.gpu
		ids := []string{
			cdi.QualifiedName(cdi.ClaimDeviceName(uid)),
			cdi.QualifiedName(cdi.GPUDeviceName(uid, index[gpu.UUID])),
		}
		if d.cfg.ComposeNvidiaCDI {
			ids = append(ids, d.cfg.NvidiaCDIKind+"="+gpu.UUID)
		}
		dev := checkpoint.Device{Request: r.Request, Pool: r.Pool, DeviceName: r.Device}
		if r.ShareID != nil {
			dev.ShareID = string(*r.ShareID)
		}
		rec.Devices = append(rec.Devices, dev)
		rec.CDIDeviceIDs = append(rec.CDIDeviceIDs, ids)
	}
	return rec, nil
}

// gpuLess orders by PCI bus ID; GPUs without one (simulated) go by UUID.
func gpuLess(a, b discovery.GPU) bool {
	if a.PCIBusID != b.PCIBusID {
		return strings.ToLower(a.PCIBusID) < strings.ToLower(b.PCIBusID)
	}
	return a.UUID < b.UUID
}

// quotaOf reads the share's memory and cores from ConsumedCapacity.
func quotaOf(r resourceapi.DeviceRequestAllocationResult, gpu discovery.GPU) (mem, cores int64, err error) {
	if len(r.ConsumedCapacity) == 0 {
		// DRAConsumableCapacity is off (the default on Kubernetes 1.34 and
		// 1.35): the plugin then publishes whole GPUs, the scheduler gives
		// each to one claim, and the allocation records no share. The
		// claim owns the GPU: all of its memory, compute not capped. The
		// node-wide check in admit refuses a second claim on the GPU.
		return int64(min(gpu.MemoryBytes, uint64(1)<<62)), 0, nil
	}
	m, ok := r.ConsumedCapacity[inventory.CapacityMemory]
	if !ok {
		return 0, 0, fmt.Errorf("request %q: consumed capacity of %s lacks %q", r.Request, r.Device, inventory.CapacityMemory)
	}
	c, ok := r.ConsumedCapacity[inventory.CapacityCores]
	if !ok {
		return 0, 0, fmt.Errorf("request %q: consumed capacity of %s lacks %q", r.Request, r.Device, inventory.CapacityCores)
	}
	mem = m.Value()
	if mem <= 0 || uint64(mem) > gpu.MemoryBytes {
		return 0, 0, fmt.Errorf("request %q: memory %s out of range, allowed 1 to %d bytes (GPU %s)", r.Request, m.String(), gpu.MemoryBytes, gpu.UUID)
	}
	if c.MilliValue()%1000 != 0 || c.Value() < 0 || c.Value() > inventory.CoresMax {
		return 0, 0, fmt.Errorf("request %q: cores %s out of range, allowed whole numbers 0 to %d (percent of the GPU)", r.Request, c.String(), inventory.CoresMax)
	}
	return mem, c.Value(), nil
}

// sourcedConfig is one of our opaque configs, decoded, with where it came
// from in the allocation.
type sourcedConfig struct {
	raw resourceapi.DeviceAllocationConfiguration
	cfg *v1alpha1.VgpuConfig
}

// opaqueConfigs decodes our configs in precedence order: class configs
// first, then claim configs, each in the order given; later ones win.
// Every config of this driver is decoded, also one that applies to no
// result: a typo must not wait for the day a request uses it.
func (d *Driver) opaqueConfigs(all []resourceapi.DeviceAllocationConfiguration) ([]sourcedConfig, error) {
	var class, claim []sourcedConfig
	for i, c := range all {
		if c.Opaque == nil || c.Opaque.Driver != d.cfg.DriverName {
			continue
		}
		cfg, err := api.DecodeConfig(c.Opaque.Parameters.Raw)
		if err != nil {
			return nil, fmt.Errorf("config #%d (from %s): %w", i, strings.ToLower(string(c.Source)), err)
		}
		sc := sourcedConfig{raw: c, cfg: cfg}
		if c.Source == resourceapi.AllocationConfigSourceClass {
			class = append(class, sc)
		} else {
			claim = append(claim, sc)
		}
	}
	return append(class, claim...), nil
}

// mergeFor returns the defaulted config that applies to one result. Which
// configs apply (all requests, the request, or its parent request for a
// subrequest) is the DRA library's rule, resourceclaim.ConfigForResult.
func mergeFor(configs []sourcedConfig, r resourceapi.DeviceRequestAllocationResult) v1alpha1.VgpuConfig {
	var out v1alpha1.VgpuConfig
	for _, c := range configs {
		if len(resourceclaim.ConfigForResult([]resourceapi.DeviceAllocationConfiguration{c.raw}, r)) == 0 {
			continue
		}
		out = out.Merge(c.cfg)
	}
	out.Default()
	return out
}
