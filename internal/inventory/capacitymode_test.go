package inventory

import (
	"errors"
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2/ktesting"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

func TestWholeGPUs(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	res, _ := Build(ctx, "n1", []discovery.GPU{{UUID: "GPU-a", ProductName: "NVIDIA L4", MemoryBytes: 23034 << 20, NUMANode: -1}})
	whole := WholeGPUs(res)
	dev := whole.Pools["n1"].Slices[0].Devices[0]
	if dev.AllowMultipleAllocations != nil {
		t.Error("allowMultipleAllocations kept")
	}
	for name, c := range dev.Capacity {
		if c.RequestPolicy != nil {
			t.Errorf("capacity %s keeps its request policy", name)
		}
	}
	if memory := dev.Capacity[CapacityMemory].Value; memory.Value() != 23034<<20 {
		t.Errorf("memory capacity %v", memory.String())
	}
	orig := res.Pools["n1"].Slices[0].Devices[0]
	if orig.AllowMultipleAllocations == nil || orig.Capacity[CapacityMemory].RequestPolicy == nil {
		t.Error("WholeGPUs modified its input")
	}
}

// TestConsumableCapacityDisabled feeds the detector the error the
// ResourceSlice controller reports (through kubeletplugin's HandleError,
// wrapped) when the API server drops fields.
func TestConsumableCapacityDisabled(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	res, _ := Build(ctx, "n1", []discovery.GPU{{UUID: "GPU-a", ProductName: "NVIDIA L4", MemoryBytes: 23034 << 20, NUMANode: -1}})
	desired := &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Devices: res.Pools["n1"].Slices[0].Devices}}
	stored := &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Devices: WholeGPUs(res).Pools["n1"].Slices[0].Devices}}
	taintsDropped := desired.DeepCopy()
	taintsDropped.Spec.Devices[0].Taints = []resourceapi.DeviceTaint{{Key: "k", Effect: resourceapi.DeviceTaintEffectNoSchedule}}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"capacity fields dropped", &resourceslice.DroppedFieldsError{PoolName: "n1", DesiredSlice: desired, ActualSlice: stored}, true},
		{"wrapped as the helper does", fmt.Errorf("recoverable: %w", &resourceslice.DroppedFieldsError{PoolName: "n1", DesiredSlice: desired, ActualSlice: stored}), true},
		{"other fields dropped", &resourceslice.DroppedFieldsError{PoolName: "n1", DesiredSlice: taintsDropped, ActualSlice: desired}, false},
		{"other error", errors.New("forbidden"), false},
	} {
		if got := ConsumableCapacityDisabled(tc.err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
