package webhook

import (
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/labels"
	resourcelisters "k8s.io/client-go/listers/resource/v1"

	"github.com/hami-dra/hami-dra/internal/hamitranslate"
)

// capacityMemory is the plugin's memory capacity (internal/inventory).
const capacityMemory resourceapi.QualifiedName = "memory"

// SliceInventory derives the cluster's GPU memory sizes from the driver's
// published ResourceSlices, read from an informer's cache so that admission
// never waits on the API server for them.
type SliceInventory struct {
	Lister resourcelisters.ResourceSliceLister
	Driver string
}

// Inventory returns the distinct memory sizes of the driver's devices.
func (s SliceInventory) Inventory() hamitranslate.Inventory {
	list, err := s.Lister.List(labels.Everything())
	if err != nil {
		// A lister over an informer cache does not fail; an empty
		// inventory only skips the size check.
		return hamitranslate.Inventory{}
	}
	return InventoryOf(list, s.Driver)
}

// InventoryOf collects the distinct memory capacities of driver's devices.
func InventoryOf(list []*resourceapi.ResourceSlice, driver string) hamitranslate.Inventory {
	var inv hamitranslate.Inventory
	for _, s := range list {
		if s.Spec.Driver != driver {
			continue
		}
		for _, d := range s.Spec.Devices {
			c, ok := d.Capacity[capacityMemory]
			if !ok {
				continue
			}
			if v := c.Value.Value(); v > 0 && !slices.Contains(inv.GPUMemory, v) {
				inv.GPUMemory = append(inv.GPUMemory, v)
			}
		}
	}
	slices.Sort(inv.GPUMemory)
	return inv
}
