package inventory_test

import (
	"context"
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

const (
	driverName = "vgpu.hami.io"
	className  = "vgpu.hami.io"
)

// features are the allocator features on by default in Kubernetes 1.37.
var features = structured.Features{
	AdminAccess:            true,
	ConsumableCapacity:     true,
	DeviceBindingAndStatus: true,
	DeviceTaints:           true,
	PartitionableDevices:   true,
	PrioritizedList:        true,
}

// celCache is shared like the scheduler shares its cache: compiling CEL is
// the expensive part of selectors.
var celCache = cel.NewCache(100, cel.Features{EnableConsumableCapacity: true})

type classLister map[string]*resourceapi.DeviceClass

func (l classLister) List() ([]*resourceapi.DeviceClass, error) {
	var out []*resourceapi.DeviceClass
	for _, c := range l {
		out = append(out, c)
	}
	return out, nil
}

func (l classLister) Get(name string) (*resourceapi.DeviceClass, error) {
	if c, ok := l[name]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("device class %s not found", name)
}

// classes holds the DeviceClass the Helm chart installs: every device of the
// driver.
var classes = classLister{className: {
	ObjectMeta: metav1.ObjectMeta{Name: className},
	Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{
		CEL: &resourceapi.CELDeviceSelector{Expression: fmt.Sprintf("device.driver == %q", driverName)},
	}}},
}}

// cluster is what the scheduler knows: published slices and what earlier
// claims consumed.
type cluster struct {
	slices []*resourceapi.ResourceSlice
	gpus   map[string]discovery.GPU // by device name
	state  structured.AllocatedState
	claims int
}

// newCluster simulates nodes node-0..node-(n-1), each with the profile.
func newCluster(tb testing.TB, ctx context.Context, nodes int, profile string) *cluster {
	tb.Helper()
	p, err := discovery.LoadProfile(profile)
	if err != nil {
		tb.Fatal(err)
	}
	c := &cluster{gpus: map[string]discovery.GPU{}}
	c.reset()
	for i := range nodes {
		node := fmt.Sprintf("node-%d", i)
		d, err := discovery.NewSimulated(node, p)
		if err != nil {
			tb.Fatal(err)
		}
		gpus, err := d.Discover(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		res, published := inventory.Build(ctx, node, gpus)
		for _, g := range published {
			c.gpus[inventory.DeviceName(g)] = g
		}
		c.slices = append(c.slices, inventory.ResourceSlices(driverName, node, res)...)
	}
	return c
}

func (c *cluster) reset() {
	c.state = structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
}

func nodeObject(name string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
}

// allocate runs the scheduler's allocator for claims on one node and, on
// success, records the result as the scheduler's assume cache would.
// A nil result means "does not fit on this node".
func (c *cluster) allocate(ctx context.Context, node string, claims ...*resourceapi.ResourceClaim) ([]resourceapi.AllocationResult, error) {
	alloc, err := structured.NewAllocator(ctx, features, c.state, classes, c.slices, celCache)
	if err != nil {
		return nil, fmt.Errorf("new allocator: %w", err)
	}
	results, err := alloc.Allocate(ctx, nodeObject(node), claims)
	if err != nil || results == nil {
		return nil, err
	}
	c.commit(results)
	return results, nil
}

func (c *cluster) commit(results []resourceapi.AllocationResult) {
	for _, r := range results {
		for _, d := range r.Devices.Results {
			id := structured.MakeDeviceID(d.Driver, d.Pool, d.Device)
			if d.ShareID == nil {
				c.state.AllocatedDevices.Insert(id)
				continue
			}
			c.state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, d.ShareID))
			c.state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, d.ConsumedCapacity))
		}
	}
}

// request describes one request of a claim.
type request struct {
	count     int64
	memory    string // "" leaves it to the device's default
	cores     string
	selectors []string
}

func (c *cluster) claim(reqs ...request) *resourceapi.ResourceClaim {
	c.claims++
	name := fmt.Sprintf("claim-%d", c.claims)
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
	}
	for i, r := range reqs {
		exact := &resourceapi.ExactDeviceRequest{
			DeviceClassName: className,
			AllocationMode:  resourceapi.DeviceAllocationModeExactCount,
			Count:           max(r.count, 1),
		}
		if r.memory != "" || r.cores != "" {
			exact.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{}}
			if r.memory != "" {
				exact.Capacity.Requests[inventory.CapacityMemory] = resource.MustParse(r.memory)
			}
			if r.cores != "" {
				exact.Capacity.Requests[inventory.CapacityCores] = resource.MustParse(r.cores)
			}
		}
		for _, s := range r.selectors {
			exact.Selectors = append(exact.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: s}})
		}
		claim.Spec.Devices.Requests = append(claim.Spec.Devices.Requests, resourceapi.DeviceRequest{Name: fmt.Sprintf("gpu%d", i), Exactly: exact})
	}
	return claim
}
