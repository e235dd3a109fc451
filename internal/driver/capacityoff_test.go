package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"
)

// TestPrepareWithoutConsumedCapacity: with DRAConsumableCapacity off
// (Kubernetes 1.34 and 1.35 by default) the plugin publishes whole GPUs and
// allocations carry no consumed capacity; such a claim gets the whole GPU
// (all of its memory, compute not capped), and a second claim on the same
// GPU is refused by the node-wide check.
func TestPrepareWithoutConsumedCapacity(t *testing.T) {
	whole := newClaim("whole", []share{{"gpu", 0, "", ""}})
	other := newClaim("other", []share{{"gpu", 0, "", ""}})
	e := newEnv(t, whole, other)
	res := e.prepare(t, whole)[string(whole.UID)]
	if res.Error != "" {
		t.Fatalf("prepare: %s", res.Error)
	}
	env := e.specEnv(t, string(whole.UID))
	if got, want := env["CUDA_DEVICE_MEMORY_LIMIT_0"], strconv.FormatUint(testGPUs[0].MemoryBytes, 10); got != want {
		t.Errorf("memory limit %s, want the whole GPU's %s", got, want)
	}
	if got := env["CUDA_DEVICE_SM_LIMIT_0"]; got != "0" {
		t.Errorf("cores limit %s, want 0 (not capped)", got)
	}
	res = e.prepare(t, other)[string(other.UID)]
	if !strings.Contains(res.Error, "over-committed") {
		t.Errorf("a second whole-GPU claim on the same GPU: error %q, want over-committed", res.Error)
	}
}

func TestHandleErrorReportsConsumableCapacityOff(t *testing.T) {
	desired := &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Devices: []resourceapi.Device{{Name: "gpu-a", AllowMultipleAllocations: ptr.To(true)}}}}
	stored := &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Devices: []resourceapi.Device{{Name: "gpu-a"}}}}
	calls := 0
	d := &Driver{cfg: Config{ConsumableCapacityOff: func() { calls++ }}}
	ctx := context.Background()
	d.HandleError(ctx, fmt.Errorf("wrapped: %w", &resourceslice.DroppedFieldsError{DesiredSlice: desired, ActualSlice: stored}), "publish")
	d.HandleError(ctx, errors.New("forbidden"), "publish")
	if calls != 1 {
		t.Errorf("ConsumableCapacityOff called %d times, want once", calls)
	}
}
