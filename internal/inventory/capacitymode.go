package inventory

import (
	"errors"
	"slices"

	"k8s.io/dynamic-resource-allocation/resourceslice"
)

// FeatureConsumableCapacity is the Kubernetes feature gate that sharing
// needs: allowMultipleAllocations and the capacities' request policies. It
// is beta and on by default from 1.36; on 1.34 and 1.35 it is alpha and
// off, and the API server drops those fields from the slices.
const FeatureConsumableCapacity = "DRAConsumableCapacity"

// ConsumableCapacityDisabled reports whether err is the ResourceSlice
// controller's report that the API server dropped the consumable-capacity
// fields of the published slices.
func ConsumableCapacityDisabled(err error) bool {
	var dropped *resourceslice.DroppedFieldsError
	return errors.As(err, &dropped) && slices.Contains(dropped.DisabledFeatures(), FeatureConsumableCapacity)
}

// WholeGPUs returns res as the API server stores it when
// DRAConsumableCapacity is off: each device may be allocated once and has
// no request policies, so the scheduler gives a GPU to one claim and the
// allocation records no consumed capacity (Prepare then gives the claim the
// whole GPU). res is not modified.
func WholeGPUs(res resourceslice.DriverResources) resourceslice.DriverResources {
	out := resourceslice.DriverResources{Pools: make(map[string]resourceslice.Pool, len(res.Pools))}
	for name, pool := range res.Pools {
		p := *pool.DeepCopy()
		for i := range p.Slices {
			for j := range p.Slices[i].Devices {
				dev := &p.Slices[i].Devices[j]
				dev.AllowMultipleAllocations = nil
				for c, capacity := range dev.Capacity {
					capacity.RequestPolicy = nil
					dev.Capacity[c] = capacity
				}
			}
		}
		out.Pools[name] = p
	}
	return out
}
