package kubectlhami

import (
	"context"
	"fmt"
	"strconv"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
)

// features are the allocator features on by default in Kubernetes 1.37,
// as kube-scheduler runs it.
var features = structured.Features{
	AdminAccess:            true,
	ConsumableCapacity:     true,
	DeviceBindingAndStatus: true,
	DeviceTaints:           true,
	PartitionableDevices:   true,
	PrioritizedList:        true,
}

// Request is the share asked about: what a claim's capacity.requests would
// say. Empty Memory or Cores leave them to the device's defaults (the whole
// GPU's memory, no reserved cores), as for a real claim.
type Request struct {
	Class  string `json:"class"`
	Memory string `json:"memory,omitempty"`
	Cores  string `json:"cores,omitempty"`
}

// FitResult tells whether a share of the request's size fits on one GPU now.
type FitResult struct {
	GPU
	Fits bool `json:"fits"`
}

// Fit asks the scheduler's allocator, for each GPU, whether a claim with
// one request of req's size, restricted to that GPU, would be allocated
// given every claim allocated now. The claim is the one a user would
// write, plus a selector on the GPU's UUID; taints, the class's selectors
// and the capacities' request policies apply exactly as in the scheduler.
func (c *Cluster) Fit(ctx context.Context, req Request) ([]FitResult, error) {
	base, err := req.claim()
	if err != nil {
		return nil, err
	}
	alloc, err := c.allocator(ctx)
	if err != nil {
		return nil, err
	}
	var out []FitResult
	for _, g := range c.GPUs() {
		claim := base.DeepCopy()
		exact := claim.Spec.Devices.Requests[0].Exactly
		exact.Selectors = append(exact.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{
			Expression: fmt.Sprintf("device.attributes[%q].%s == %q", c.Driver, attrUUID, g.UUID),
		}})
		results, err := alloc.Allocate(ctx, nodeObject(g.Node), []*resourceapi.ResourceClaim{claim})
		if err != nil {
			return nil, fmt.Errorf("allocate on %s: %w", g.Device, err)
		}
		out = append(out, FitResult{GPU: g, Fits: results != nil})
	}
	return out, nil
}

// allocator is the scheduler's allocator over the published slices, with
// every allocated claim's consumption recorded as the scheduler records it.
func (c *Cluster) allocator(ctx context.Context) (structured.Allocator, error) {
	state := structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
	for _, cl := range c.Claims {
		if cl.Status.Allocation == nil {
			continue
		}
		for _, d := range cl.Status.Allocation.Devices.Results {
			id := structured.MakeDeviceID(d.Driver, d.Pool, d.Device)
			if d.ShareID == nil {
				state.AllocatedDevices.Insert(id)
				continue
			}
			state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, d.ShareID))
			state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, d.ConsumedCapacity))
		}
	}
	celCache := cel.NewCache(10, cel.Features{EnableConsumableCapacity: true})
	alloc, err := structured.NewAllocator(ctx, features, state, classLister(c.Classes), c.currentSlices(), celCache)
	if err != nil {
		return nil, fmt.Errorf("scheduler's allocator: %w", err)
	}
	return alloc, nil
}

// nodeObject is the Node the allocator matches slices against; the
// driver's slices name their node, so the name is all it needs.
func nodeObject(name string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
}

// claim is the ResourceClaim a user would write for req.
func (req Request) claim() (*resourceapi.ResourceClaim, error) {
	exact := &resourceapi.ExactDeviceRequest{
		DeviceClassName: req.Class,
		AllocationMode:  resourceapi.DeviceAllocationModeExactCount,
		Count:           1,
	}
	requests := map[resourceapi.QualifiedName]resource.Quantity{}
	if req.Memory != "" {
		q, err := resource.ParseQuantity(req.Memory)
		if err != nil || q.Sign() <= 0 {
			return nil, fmt.Errorf("--memory %q: want a positive quantity such as 20Gi or 20480Mi", req.Memory)
		}
		requests[capacityMemory] = q
	}
	if req.Cores != "" {
		n, err := strconv.ParseInt(req.Cores, 10, 64)
		if err != nil || n < 0 || n > 100 {
			return nil, fmt.Errorf("--cores %q: want a whole percentage from 0 to 100", req.Cores)
		}
		requests[capacityCores] = *resource.NewQuantity(n, resource.DecimalSI)
	}
	if len(requests) > 0 {
		exact.Capacity = &resourceapi.CapacityRequirements{Requests: requests}
	}
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "kubectl-hami-fit", Namespace: "default", UID: "kubectl-hami-fit"},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: exact}},
		}},
	}, nil
}

type classLister []*resourceapi.DeviceClass

func (l classLister) List() ([]*resourceapi.DeviceClass, error) { return l, nil }

func (l classLister) Get(name string) (*resourceapi.DeviceClass, error) {
	for _, c := range l {
		if c.Name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("DeviceClass %q not found: list them with kubectl get deviceclasses", name)
}
