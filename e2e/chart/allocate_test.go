package chart

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	dracel "k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
	resourcev1defaults "k8s.io/kubernetes/pkg/apis/resource/v1"
	"sigs.k8s.io/yaml"
)

// allocFeatures are the allocator features on by default in Kubernetes 1.37.
var allocFeatures = structured.Features{
	AdminAccess:            true,
	ConsumableCapacity:     true,
	DeviceBindingAndStatus: true,
	DeviceTaints:           true,
	PartitionableDevices:   true,
	PrioritizedList:        true,
}

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

// simulatedSlices runs the plugin's inventory command for a simulated node.
func simulatedSlices(t *testing.T, bin, node, profile string) []*resourceapi.ResourceSlice {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "inventory", "--node-name="+node, "--simulate="+profile)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("inventory: %v\n%s", err, stderr.String())
	}
	var slices []*resourceapi.ResourceSlice
	for _, doc := range strings.Split(stdout.String(), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var s resourceapi.ResourceSlice
		if err := yaml.UnmarshalStrict([]byte(doc), &s); err != nil {
			t.Fatalf("inventory output: %v", err)
		}
		slices = append(slices, &s)
	}
	return slices
}

func typed(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

// exampleClaims turns the examples into the claims Kubernetes would create:
// ResourceClaims as they are, one claim per ResourceClaimTemplate, and the
// claim generated for an extended-resource request (one device of the
// mapped class, no capacity requests).
func exampleClaims(t *testing.T) map[string]*resourceapi.ResourceClaim {
	claims := map[string]*resourceapi.ResourceClaim{}
	add := func(name string, spec resourceapi.ResourceClaimSpec) {
		claim := &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
			Spec:       spec,
		}
		// What the API server fills in (allocation mode, count).
		resourcev1defaults.SetObjectDefaults_ResourceClaim(claim)
		claims[name] = claim
	}
	for _, o := range examples(t) {
		switch o.GetKind() {
		case "ResourceClaim":
			var c resourceapi.ResourceClaim
			typed(t, o, &c)
			add(c.Name, c.Spec)
		case "ResourceClaimTemplate":
			var tmpl resourceapi.ResourceClaimTemplate
			typed(t, o, &tmpl)
			add(tmpl.Name, tmpl.Spec.Spec)
		case "Pod":
			var pod v1.Pod
			typed(t, o, &pod)
			for _, c := range pod.Spec.Containers {
				for name := range c.Resources.Limits {
					class, ok := strings.CutPrefix(string(name), "deviceclass.resource.kubernetes.io/")
					if !ok {
						continue
					}
					add(pod.Name, resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
						Requests: []resourceapi.DeviceRequest{{Name: "container-0-request-0", Exactly: &resourceapi.ExactDeviceRequest{
							DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
						}}},
					}})
				}
			}
		}
	}
	return claims
}

type allocCluster struct {
	slices  []*resourceapi.ResourceSlice
	classes classLister
	state   structured.AllocatedState
	devices map[string]resourceapi.Device
}

func newAllocCluster(t *testing.T, slices []*resourceapi.ResourceSlice, objs []*unstructured.Unstructured) *allocCluster {
	c := &allocCluster{slices: slices, classes: classLister{}, devices: map[string]resourceapi.Device{}}
	for _, o := range SelectKinds(objs, KindDeviceClass) {
		var dc resourceapi.DeviceClass
		typed(t, o, &dc)
		c.classes[dc.Name] = &dc
	}
	for _, s := range slices {
		for _, d := range s.Spec.Devices {
			c.devices[d.Name] = d
		}
	}
	c.reset()
	return c
}

func (c *allocCluster) reset() {
	c.state = structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
}

var allocCELCache = dracel.NewCache(100, dracel.Features{EnableConsumableCapacity: true})

// allocate runs the scheduler's allocator; nil means "does not fit".
func (c *allocCluster) allocate(t *testing.T, node string, claim *resourceapi.ResourceClaim) *resourceapi.AllocationResult {
	t.Helper()
	ctx := context.Background()
	alloc, err := structured.NewAllocator(ctx, allocFeatures, c.state, c.classes, c.slices, allocCELCache)
	if err != nil {
		t.Fatal(err)
	}
	results, err := alloc.Allocate(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{"kubernetes.io/hostname": node}}}, []*resourceapi.ResourceClaim{claim})
	if err != nil {
		t.Fatalf("allocate %s: %v", claim.Name, err)
	}
	if results == nil {
		return nil
	}
	for _, d := range results[0].Devices.Results {
		id := structured.MakeDeviceID(d.Driver, d.Pool, d.Device)
		if d.ShareID == nil {
			c.state.AllocatedDevices.Insert(id)
			continue
		}
		c.state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, d.ShareID))
		c.state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, d.ConsumedCapacity))
	}
	return &results[0]
}

func (c *allocCluster) product(d resourceapi.DeviceRequestAllocationResult) string {
	if p := c.devices[d.Device].Attributes["productName"].StringValue; p != nil {
		return *p
	}
	return ""
}

func consumed(d resourceapi.DeviceRequestAllocationResult, name string) string {
	q, ok := d.ConsumedCapacity[resourceapi.QualifiedName(name)]
	if !ok {
		return "-"
	}
	return q.String()
}

// TestExamplesAllocate runs the scheduler's allocator with the chart's
// DeviceClasses over the ResourceSlices the plugin publishes for a simulated
// node, for the claim of every example: each fits, and gets what its
// comments promise.
func TestExamplesAllocate(t *testing.T) {
	bin := buildPlugin(t)
	const node = "gpu-node-1"
	slices := simulatedSlices(t, bin, node, "2xH100-80GB,1xA100-40GB,1xL4")
	c := newAllocCluster(t, slices, mustRender(t, nil))
	claims := exampleClaims(t)
	full := map[string]string{}
	for _, d := range c.devices {
		q := d.Capacity["memory"].Value
		full[d.Name] = q.String()
	}

	type want struct {
		devices  int
		memory   string // consumed per device; "full" = the whole GPU's
		cores    string
		product  string // substring of every device's product name
		distinct bool
	}
	for name, w := range map[string]want{
		"gpu-20gi":           {devices: 1, memory: "20Gi", cores: "0"},
		"gpu-10gi-30pct":     {devices: 1, memory: "10Gi", cores: "30"},
		"whole-gpu":          {devices: 1, memory: "full", cores: "0"},
		"h100-40gi":          {devices: 1, memory: "40Gi", cores: "0", product: "H100"},
		"two-gpus-24gi":      {devices: 2, memory: "24Gi", cores: "0", distinct: true},
		"gpu-8gi-besteffort": {devices: 1, memory: "8Gi", cores: "20"},
		"extended-resource":  {devices: 1, memory: "full", cores: "0"},
	} {
		t.Run(name, func(t *testing.T) {
			claim := claims[name]
			if claim == nil {
				t.Fatalf("no example claim %s (have %v)", name, mapKeys(claims))
			}
			c.reset()
			res := c.allocate(t, node, claim)
			if res == nil {
				t.Fatalf("%s does not fit on a node with 2xH100-80GB,1xA100-40GB,1xL4", name)
			}
			if len(res.Devices.Results) != w.devices {
				t.Fatalf("%d devices allocated, want %d", len(res.Devices.Results), w.devices)
			}
			seen := map[string]bool{}
			products := map[string]bool{}
			for _, d := range res.Devices.Results {
				mem := w.memory
				if mem == "full" {
					mem = full[d.Device]
				}
				if got := consumed(d, "memory"); got != mem {
					t.Errorf("%s: memory %s, want %s", d.Device, got, mem)
				}
				if got := consumed(d, "cores"); got != w.cores {
					t.Errorf("%s: cores %s, want %s", d.Device, got, w.cores)
				}
				if !strings.Contains(c.product(d), w.product) {
					t.Errorf("%s is a %s, want %s", d.Device, c.product(d), w.product)
				}
				seen[d.Device] = true
				products[c.product(d)] = true
			}
			if w.distinct && (len(seen) != w.devices || len(products) != 1) {
				t.Errorf("devices %v (%v): want %d distinct GPUs of one model", seen, products, w.devices)
			}
			// The class's cluster defaults come with every allocation; a
			// claim's own VgpuConfig comes after them and wins.
			var sources []string
			for _, cfg := range res.Devices.Config {
				sources = append(sources, string(cfg.Source))
			}
			if len(sources) == 0 || sources[0] != string(resourceapi.AllocationConfigSourceClass) {
				t.Errorf("config sources %v, want the class's defaults first", sources)
			}
			if name == "gpu-8gi-besteffort" && (len(sources) != 2 || sources[1] != string(resourceapi.AllocationConfigSourceClaim)) {
				t.Errorf("config sources %v, want class then claim", sources)
			}
		})
	}

	t.Run("two-gpus needs two GPUs", func(t *testing.T) {
		// One request's two devices are never the same shared GPU.
		one := newAllocCluster(t, simulatedSlices(t, bin, "one-gpu", "1xH100-80GB"), mustRender(t, nil))
		if res := one.allocate(t, "one-gpu", claims["two-gpus-24gi"].DeepCopy()); res != nil {
			t.Errorf("two devices on a one-GPU node: %+v", res.Devices.Results)
		}
	})
	t.Run("three replicas share one GPU", func(t *testing.T) {
		// memory-cores-share.yaml runs 3 replicas of 10Gi + 30%: on a
		// node with one H100 they all land on it; a fourth 30% does not
		// fit (120% > 100%), while a best-effort 8Gi + 0% would.
		one := newAllocCluster(t, simulatedSlices(t, bin, "one-gpu", "1xH100-80GB"), mustRender(t, nil))
		tmpl := claims["gpu-10gi-30pct"]
		var gpu string
		for i := range 3 {
			claim := tmpl.DeepCopy()
			claim.Name, claim.UID = fmt.Sprintf("replica-%d", i), types.UID(fmt.Sprintf("uid-replica-%d", i))
			res := one.allocate(t, "one-gpu", claim)
			if res == nil {
				t.Fatalf("replica %d does not fit", i)
			}
			if gpu != "" && res.Devices.Results[0].Device != gpu {
				t.Errorf("replica %d on %s, others on %s", i, res.Devices.Results[0].Device, gpu)
			}
			gpu = res.Devices.Results[0].Device
		}
		fourth := tmpl.DeepCopy()
		fourth.Name, fourth.UID = "replica-3", "uid-replica-3"
		if res := one.allocate(t, "one-gpu", fourth); res != nil {
			t.Errorf("a fourth 30%% share fits: %+v", res.Devices.Results)
		}
		small := claims["gpu-20gi"].DeepCopy()
		small.Name, small.UID = "small", "uid-small"
		if res := one.allocate(t, "one-gpu", small); res == nil {
			t.Error("20Gi with no compute share does not fit next to 3x(10Gi, 30%)")
		}
		whole := claims["whole-gpu"].DeepCopy()
		if res := one.allocate(t, "one-gpu", whole); res != nil {
			t.Error("a whole GPU fits on a shared GPU")
		}
	})
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
