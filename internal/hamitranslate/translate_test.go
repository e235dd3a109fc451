package hamitranslate

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/klog/v2/ktesting"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

// The translation is checked the way users meet it: the claim it produces
// is handed to the scheduler's own allocator (k8s.io/dynamic-resource-allocation
// /structured, as kube-scheduler 1.37 runs it) over the ResourceSlices the
// plugin publishes for a simulated node, and the test looks at which GPUs
// the claim gets and what it consumes of them. That also compiles every CEL
// selector the translation writes in the scheduler's CEL environment.

const driverName = "vgpu.hami.io"

var allocFeatures = structured.Features{
	AdminAccess:            true,
	ConsumableCapacity:     true,
	DeviceBindingAndStatus: true,
	DeviceTaints:           true,
	PartitionableDevices:   true,
	PrioritizedList:        true,
}

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

// classes is the chart's default DeviceClass.
var classes = classLister{driverName: {
	ObjectMeta: metav1.ObjectMeta{Name: driverName},
	Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{
		CEL: &resourceapi.CELDeviceSelector{Expression: fmt.Sprintf("device.driver == %q", driverName)},
	}}},
}}

// node is one simulated node as the scheduler sees it.
type node struct {
	slices []*resourceapi.ResourceSlice
	gpus   map[string]discovery.GPU // by device name
}

const nodeName = "node-0"

func newNode(t testing.TB, profile string) node {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	p, err := discovery.LoadProfile(profile)
	if err != nil {
		t.Fatal(err)
	}
	d, err := discovery.NewSimulated(nodeName, p)
	if err != nil {
		t.Fatal(err)
	}
	gpus, err := d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res, published := inventory.Build(ctx, nodeName, gpus)
	n := node{gpus: map[string]discovery.GPU{}, slices: inventory.ResourceSlices(driverName, nodeName, res)}
	for _, g := range published {
		n.gpus[inventory.DeviceName(g)] = g
	}
	return n
}

// inventory is what the webhook would derive from the node's slices.
func (n node) inventory() Inventory {
	var inv Inventory
	for _, g := range n.gpus {
		if !slices.Contains(inv.GPUMemory, int64(g.MemoryBytes)) {
			inv.GPUMemory = append(inv.GPUMemory, int64(g.MemoryBytes))
		}
	}
	return inv
}

// uuid returns the UUID of the GPU with the given NVML index.
func (n node) uuid(index int) string {
	for _, g := range n.gpus {
		if g.Index == index {
			return g.UUID
		}
	}
	panic("no such GPU")
}

// allocate runs the scheduler's allocator for the claim on the empty node.
func (n node) allocate(t *testing.T, spec resourceapi.ResourceClaimSpec) *resourceapi.AllocationResult {
	t.Helper()
	ctx := context.Background()
	state := structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
	alloc, err := structured.NewAllocator(ctx, allocFeatures, state, classes, n.slices, celCache)
	if err != nil {
		t.Fatal(err)
	}
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "default", UID: types.UID("uid-c")},
		Spec:       spec,
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{corev1.LabelHostname: nodeName}}}
	results, err := alloc.Allocate(ctx, node, []*resourceapi.ResourceClaim{claim})
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	if results == nil {
		return nil
	}
	return &results[0]
}

// gotGPU is one device the allocator gave a request.
type gotGPU struct {
	request string
	product string
	index   int
	memory  string
	cores   string
}

func (n node) describe(alloc *resourceapi.AllocationResult) []gotGPU {
	var out []gotGPU
	for _, r := range alloc.Devices.Results {
		g := n.gpus[r.Device]
		mem, cores := r.ConsumedCapacity["memory"], r.ConsumedCapacity["cores"]
		out = append(out, gotGPU{request: r.Request, product: g.ProductName, index: g.Index, memory: mem.String(), cores: cores.String()})
	}
	return out
}

type ctr struct {
	name     string
	limits   map[string]string
	requests map[string]string
	init     bool
}

func makePod(annotations map[string]string, ctrs ...ctr) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", Annotations: annotations}}
	list := func(m map[string]string) corev1.ResourceList {
		if m == nil {
			return nil
		}
		out := corev1.ResourceList{}
		for k, v := range m {
			out[corev1.ResourceName(k)] = resource.MustParse(v)
		}
		return out
	}
	for _, c := range ctrs {
		container := corev1.Container{Name: c.name, Image: "cuda", Resources: corev1.ResourceRequirements{Limits: list(c.limits), Requests: list(c.requests)}}
		if c.init {
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, container)
		} else {
			pod.Spec.Containers = append(pod.Spec.Containers, container)
		}
	}
	return pod
}

const (
	a100 = "NVIDIA A100-SXM4-80GB"
	l4   = "NVIDIA L4"
	h100 = "NVIDIA H100 80GB HBM3"
)

func TestTranslate(t *testing.T) {
	mixed := newNode(t, "2xA100-80GB,2xL4")
	tests := []struct {
		name        string
		node        node // default: mixed
		opts        func(*Options)
		annotations map[string]string
		containers  []ctr
		// noop: the pod is not HAMi's and must be left alone.
		noop bool
		// noClaim: HAMi resources are removed but no GPU is asked for.
		noClaim bool
		// want is what each device of the allocation must be, in order.
		want []gotGPU
		// products, when set, are the allowed product names (any order).
		products []string
		warning  string
	}{
		{
			name:       "no HAMi resource: left alone",
			containers: []ctr{{name: "app", limits: map[string]string{"cpu": "1", "memory": "1Gi"}}},
			noop:       true,
		},
		{
			name:       "no resources at all: left alone",
			containers: []ctr{{name: "app"}},
			noop:       true,
		},
		{
			name:       "nvidia.com/gpu: 1 alone is a whole GPU (defaultMem 0 = 100%, defaultCores 0)",
			node:       newNode(t, "1xA100-80GB"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "80Gi", cores: "0"}},
		},
		{
			name:       "gpumem is MiB",
			node:       newNode(t, "1xA100-80GB"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "20480"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "20Gi", cores: "0"}},
		},
		{
			name:       "gpumem that is not a multiple of 1024",
			node:       newNode(t, "1xL4"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"}}},
			want:       []gotGPU{{request: "app", product: l4, memory: "3000Mi", cores: "0"}},
		},
		{
			name:       "gpumem and gpucores",
			node:       newNode(t, "1xA100-80GB"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "10240", "nvidia.com/gpucores": "30"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "10Gi", cores: "30"}},
		},
		{
			name:       "gpucores alone keeps the whole memory (defaultMem 0)",
			node:       newNode(t, "1xT4"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpucores": "50"}}},
			want:       []gotGPU{{request: "app", product: "Tesla T4", memory: "15Gi", cores: "50"}},
		},
		{
			name:       "gpucores 100",
			node:       newNode(t, "1xA100-80GB"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024", "nvidia.com/gpucores": "100"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "1Gi", cores: "100"}},
		},
		{
			name:       "nvidia.com/gpu: 2 gives two different GPUs, each with the quota",
			node:       newNode(t, "4xA100-80GB"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "2", "nvidia.com/gpumem": "8192", "nvidia.com/gpucores": "25"}}},
			want: []gotGPU{
				{request: "app", product: a100, index: 0, memory: "8Gi", cores: "25"},
				{request: "app", product: a100, index: 1, memory: "8Gi", cores: "25"},
			},
		},
		{
			name:       "gpumem without nvidia.com/gpu: defaultGPUNum (1) GPU",
			node:       newNode(t, "1xA100-80GB"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpumem": "4096"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "4Gi", cores: "0"}},
		},
		{
			name:       "gpucores without nvidia.com/gpu: defaultGPUNum (1) GPU",
			node:       newNode(t, "1xL4"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpucores": "20"}}},
			want:       []gotGPU{{request: "app", product: l4, memory: "23034Mi", cores: "20"}},
		},
		{
			name:       "defaultGPUNum 2",
			node:       newNode(t, "2xL4"),
			opts:       func(o *Options) { o.DefaultGPUNum = 2 },
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpumem": "1024"}}},
			want:       []gotGPU{{request: "app", product: l4, index: 0, memory: "1Gi", cores: "0"}, {request: "app", product: l4, index: 1, memory: "1Gi", cores: "0"}},
		},
		{
			name:       "defaultMem and defaultCores apply when gpumem and gpucores are missing",
			node:       newNode(t, "1xA100-80GB"),
			opts:       func(o *Options) { o.DefaultMemoryMiB, o.DefaultCores = 4096, 10 },
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "4Gi", cores: "10"}},
		},
		{
			name:       "explicit values win over the defaults",
			node:       newNode(t, "1xA100-80GB"),
			opts:       func(o *Options) { o.DefaultMemoryMiB, o.DefaultCores = 4096, 10 },
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2048", "nvidia.com/gpucores": "0"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "2Gi", cores: "0"}},
		},
		{
			name:        "gpumem-percentage 50 on an A100 80GB",
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50"}}},
			annotations: map[string]string{AnnotationUseType: "A100"},
			want:        []gotGPU{{request: "app/gpu-81920mib", product: a100, memory: "40Gi", cores: "0"}},
		},
		{
			name:        "gpumem-percentage 50 on an L4: a share of the chosen GPU",
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50", "nvidia.com/gpucores": "20"}}},
			annotations: map[string]string{AnnotationUseType: "L4"},
			// HAMi: 23034 MiB * 50 / 100 = 11517 MiB.
			want: []gotGPU{{request: "app/gpu-23034mib", product: l4, index: 2, memory: "11517Mi", cores: "20"}},
		},
		{
			name:       "gpumem-percentage 100 is the whole GPU",
			node:       newNode(t, "1xL4"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "100"}}},
			want:       []gotGPU{{request: "app", product: l4, memory: "23034Mi", cores: "0"}},
		},
		{
			name:       "values in requests only",
			node:       newNode(t, "1xA100-80GB"),
			containers: []ctr{{name: "app", requests: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "1Gi", cores: "0"}},
		},
		{
			name:        "use-gputype: substring, any case",
			annotations: map[string]string{AnnotationUseType: "l4"},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1024"}}},
			want:        []gotGPU{{request: "app", product: l4, index: 2, memory: "1Gi", cores: "0"}, {request: "app", product: l4, index: 3, memory: "1Gi", cores: "0"}},
		},
		{
			name:        "use-gputype: a list; a type absent from the node is fine",
			annotations: map[string]string{AnnotationUseType: "H100, L4"},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}},
			products:    []string{l4},
		},
		{
			name:        "nouse-gputype",
			annotations: map[string]string{AnnotationNoUseType: "A100"},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}},
			products:    []string{l4},
		},
		{
			name:        "use-gputype and nouse-gputype together",
			node:        newNode(t, "1xA100-80GB,1xH100-80GB,1xL4"),
			annotations: map[string]string{AnnotationUseType: "NVIDIA", AnnotationNoUseType: "A100,L4"},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}},
			products:    []string{h100},
		},
		{
			name:        "use-gputype matches no GPU of the node: does not fit",
			annotations: map[string]string{AnnotationUseType: "H100"},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1"}}},
			want:        nil,
		},
		{
			name:        "use-gpuuuid",
			annotations: map[string]string{AnnotationUseUUID: mixed.uuid(3)},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}},
			want:        []gotGPU{{request: "app", product: l4, index: 3, memory: "1Gi", cores: "0"}},
		},
		{
			name:        "use-gpuuuid: a list",
			annotations: map[string]string{AnnotationUseUUID: mixed.uuid(1) + "," + mixed.uuid(3)},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1024"}}},
			want:        []gotGPU{{request: "app", product: a100, index: 1, memory: "1Gi", cores: "0"}, {request: "app", product: l4, index: 3, memory: "1Gi", cores: "0"}},
		},
		{
			name:        "nouse-gpuuuid",
			node:        newNode(t, "2xL4"),
			annotations: map[string]string{AnnotationNoUseUUID: newNode(t, "2xL4").uuid(0)},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}},
			want:        []gotGPU{{request: "app", product: l4, index: 1, memory: "1Gi", cores: "0"}},
		},
		{
			name:        "vgpu-mode hami-core is what hami-dra does",
			node:        newNode(t, "1xL4"),
			annotations: map[string]string{AnnotationMode: "hami-core"},
			containers:  []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}},
			want:        []gotGPU{{request: "app", product: l4, memory: "1Gi", cores: "0"}},
		},
		{
			name: "each container gets its own request; containers without HAMi resources are left alone",
			node: newNode(t, "2xA100-80GB"),
			containers: []ctr{
				{name: "setup", init: true, limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}},
				{name: "train", limits: map[string]string{"nvidia.com/gpu": "2", "nvidia.com/gpumem": "30720", "nvidia.com/gpucores": "50"}},
				{name: "sidecar", limits: map[string]string{"cpu": "100m"}},
				{name: "infer", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2048"}},
			},
			want: []gotGPU{
				{request: "setup", product: a100, index: 0, memory: "1Gi", cores: "0"},
				{request: "train", product: a100, index: 0, memory: "30Gi", cores: "50"},
				{request: "train", product: a100, index: 1, memory: "30Gi", cores: "50"},
				{request: "infer", product: a100, index: 0, memory: "2Gi", cores: "0"},
			},
		},
		{
			name:       "nvidia.com/gpu: 0 asks for no GPU: HAMi's resources go, no claim",
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "0", "nvidia.com/gpumem": "1024"}}},
			noClaim:    true,
		},
		{
			name:       "priority is removed with a warning",
			node:       newNode(t, "1xL4"),
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/priority": "0"}}},
			want:       []gotGPU{{request: "app", product: l4, memory: "23034Mi", cores: "0"}},
			warning:    "spec.containers[0].resources.limits[nvidia.com/priority]: HAMi's task priority has no hami-dra equivalent",
		},
		{
			name:       "priority alone: removed, no claim",
			containers: []ctr{{name: "app", limits: map[string]string{"nvidia.com/priority": "1"}}},
			noClaim:    true,
			warning:    "nvidia.com/priority",
		},
		{
			name: "renamed resources",
			node: newNode(t, "1xA100-80GB"),
			opts: func(o *Options) {
				o.Resources.GPU, o.Resources.Memory, o.Resources.Cores = "example.com/vgpu", "example.com/vgpu-memory", "example.com/vgpu-cores"
			},
			containers: []ctr{{name: "app", limits: map[string]string{"example.com/vgpu": "1", "example.com/vgpu-memory": "5120", "example.com/vgpu-cores": "5"}}},
			want:       []gotGPU{{request: "app", product: a100, memory: "5Gi", cores: "5"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.node
			if n.slices == nil {
				n = mixed
			}
			opts := DefaultOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			if err := opts.Validate(); err != nil {
				t.Fatal(err)
			}
			pod := makePod(tc.annotations, tc.containers...)
			orig := pod.DeepCopy()
			tr, err := Translate(pod, opts, n.inventory())
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if tc.noop {
				if tr != nil {
					t.Fatalf("translated a pod that uses none of HAMi's resources: %+v", tr.Claim)
				}
				return
			}
			if tr == nil {
				t.Fatal("pod not translated")
			}
			if tc.warning != "" && !slices.ContainsFunc(tr.Warnings, func(w string) bool { return strings.Contains(w, tc.warning) }) {
				t.Errorf("warnings %q lack %q", tr.Warnings, tc.warning)
			}
			tmpl, err := TemplateName(tr.Claim)
			if err != nil {
				t.Fatal(err)
			}
			tr.Apply(pod, tmpl, opts.Resources)
			checkApplied(t, orig, pod, opts.Resources, tmpl, !tc.noClaim)
			if tc.noClaim {
				if len(tr.Claim.Devices.Requests) != 0 {
					t.Fatalf("claim requests %+v, want none", tr.Claim.Devices.Requests)
				}
				return
			}
			alloc := n.allocate(t, tr.Claim)
			if tc.want == nil && tc.products == nil {
				if alloc != nil {
					t.Fatalf("allocated %+v, want no fit", n.describe(alloc))
				}
				return
			}
			if alloc == nil {
				t.Fatalf("claim %+v does not fit on the node", tr.Claim)
			}
			got := n.describe(alloc)
			if tc.products != nil {
				for _, g := range got {
					if !slices.Contains(tc.products, g.product) {
						t.Errorf("got %s, want one of %q", g.product, tc.products)
					}
				}
				return
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("allocation\n got  %+v\n want %+v", got, tc.want)
			}
		})
	}
}

// checkApplied checks the rewritten pod: no HAMi resource left anywhere,
// every translated container references its request, and the pod has the
// claim from the template.
func checkApplied(t *testing.T, orig, pod *corev1.Pod, names ResourceNames, tmpl string, wantClaim bool) {
	t.Helper()
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	origAll := append(slices.Clone(orig.Spec.InitContainers), orig.Spec.Containers...)
	for i, c := range all {
		for _, n := range names.All() {
			if _, ok := c.Resources.Limits[n]; ok {
				t.Errorf("container %s keeps limit %s", c.Name, n)
			}
			if _, ok := c.Resources.Requests[n]; ok {
				t.Errorf("container %s keeps request %s", c.Name, n)
			}
		}
		if !usesHAMi(&origAll[i], names) {
			if len(c.Resources.Claims) != 0 || len(c.Resources.Limits) != len(origAll[i].Resources.Limits) {
				t.Errorf("container %s without HAMi resources was changed: %+v", c.Name, c.Resources)
			}
			continue
		}
		if wantClaim && len(c.Resources.Claims) != 1 {
			t.Errorf("container %s claims %+v, want its request of %s", c.Name, c.Resources.Claims, ClaimName)
		}
		for _, rc := range c.Resources.Claims {
			if rc.Name != ClaimName || rc.Request != c.Name {
				t.Errorf("container %s claims %+v, want {%s %s}", c.Name, rc, ClaimName, c.Name)
			}
		}
	}
	if !wantClaim {
		if len(pod.Spec.ResourceClaims) != 0 {
			t.Errorf("pod claims %+v, want none", pod.Spec.ResourceClaims)
		}
		return
	}
	if len(pod.Spec.ResourceClaims) != 1 || pod.Spec.ResourceClaims[0].Name != ClaimName ||
		pod.Spec.ResourceClaims[0].ResourceClaimTemplateName == nil || *pod.Spec.ResourceClaims[0].ResourceClaimTemplateName != tmpl {
		t.Errorf("pod claims %+v, want %s from template %s", pod.Spec.ResourceClaims, ClaimName, tmpl)
	}
}

func TestTranslateErrors(t *testing.T) {
	mixed := newNode(t, "2xA100-80GB,2xL4")
	one := func(limits map[string]string) []ctr { return []ctr{{name: "app", limits: limits}} }
	tests := []struct {
		name        string
		opts        func(*Options)
		inv         *Inventory
		annotations map[string]string
		containers  []ctr
		claims      []corev1.PodResourceClaim
		// want are substrings of the error: the field, then the reason.
		want []string
	}{
		{
			name:       "gpumem larger than any GPU",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "90000"}),
			want:       []string{"spec.containers[0].resources.limits[nvidia.com/gpumem]", "90000 MiB is more than the largest GPU in the cluster has (81920 MiB)"},
		},
		{
			name:       "gpumem in requests larger than any GPU",
			containers: []ctr{{name: "app", requests: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "81921"}}},
			want:       []string{"spec.containers[0].resources.requests[nvidia.com/gpumem]", "more than the largest GPU"},
		},
		{
			name:       "gpumem written as bytes",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "20Gi"}),
			want:       []string{"limits[nvidia.com/gpumem]", "more than the largest GPU"},
		},
		{
			name:       "gpumem 0",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "0"}),
			want:       []string{"limits[nvidia.com/gpumem]", "must be at least 1 (MiB)"},
		},
		{
			name:       "gpucores above 100",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpucores": "120"}),
			want:       []string{"spec.containers[0].resources.limits[nvidia.com/gpucores]", "must be 0..100"},
		},
		{
			name:       "gpumem and gpumem-percentage",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024", "nvidia.com/gpumem-percentage": "50"}),
			want:       []string{"limits[nvidia.com/gpumem-percentage]", "either nvidia.com/gpumem or nvidia.com/gpumem-percentage"},
		},
		{
			name:       "gpumem-percentage 0",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "0"}),
			want:       []string{"limits[nvidia.com/gpumem-percentage]", "must be 1..100"},
		},
		{
			name:       "gpumem-percentage above 100",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "150"}),
			want:       []string{"must be 1..100"},
		},
		{
			name:       "gpumem-percentage before any GPU is published",
			inv:        &Inventory{},
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50"}),
			want:       []string{"limits[nvidia.com/gpumem-percentage]", "no GPU is published yet"},
		},
		{
			name:       "gpumem-percentage with more memory sizes than a request can list",
			inv:        &Inventory{GPUMemory: []int64{1 << 30, 2 << 30, 3 << 30, 4 << 30, 5 << 30, 6 << 30, 7 << 30, 8 << 30, 9 << 30}},
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50"}),
			want:       []string{"9 memory sizes, more than the 8 alternatives"},
		},
		{
			name:       "fractional GPU count",
			containers: one(map[string]string{"nvidia.com/gpu": "1500m"}),
			want:       []string{"limits[nvidia.com/gpu]", "whole number"},
		},
		{
			name:       "negative gpucores",
			containers: one(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpucores": "-1"}),
			want:       []string{"limits[nvidia.com/gpucores]", "must be 0..100"},
		},
		{
			name:       "gpumem without a GPU count when defaultGPUNum is 0",
			opts:       func(o *Options) { o.DefaultGPUNum = 0 },
			containers: one(map[string]string{"nvidia.com/gpumem": "1024"}),
			want:       []string{"limits[nvidia.com/gpu]", "Required value"},
		},
		{
			name:        "the same UUID to use and not to use",
			annotations: map[string]string{AnnotationUseUUID: "GPU-1,GPU-2", AnnotationNoUseUUID: "GPU-2"},
			containers:  one(map[string]string{"nvidia.com/gpu": "1"}),
			want:        []string{"metadata.annotations[nvidia.com/nouse-gpuuuid]", `UUID "GPU-2" is also in nvidia.com/use-gpuuuid`},
		},
		{
			name:        "a type to use that the types not to use exclude",
			annotations: map[string]string{AnnotationUseType: "A100-SXM4", AnnotationNoUseType: "a100"},
			containers:  one(map[string]string{"nvidia.com/gpu": "1"}),
			want:        []string{"metadata.annotations[nvidia.com/nouse-gputype]", `excludes every GPU of type "A100-SXM4"`},
		},
		{
			name:        "more GPUs than allowed UUIDs",
			annotations: map[string]string{AnnotationUseUUID: "GPU-1"},
			containers:  one(map[string]string{"nvidia.com/gpu": "2"}),
			want:        []string{"metadata.annotations[nvidia.com/use-gpuuuid]", "asks for 2 GPUs but only 1 UUIDs are allowed"},
		},
		{
			name:        "an empty type",
			annotations: map[string]string{AnnotationUseType: "A100,"},
			containers:  one(map[string]string{"nvidia.com/gpu": "1"}),
			want:        []string{"metadata.annotations[nvidia.com/use-gputype]", "entry 2 is empty"},
		},
		{
			name:        "a quote in a type",
			annotations: map[string]string{AnnotationNoUseType: `A100") || true || ("`},
			containers:  one(map[string]string{"nvidia.com/gpu": "1"}),
			want:        []string{"metadata.annotations[nvidia.com/nouse-gputype]", "has a character outside"},
		},
		{
			name:        "a space in a UUID",
			annotations: map[string]string{AnnotationUseUUID: "GPU 1"},
			containers:  one(map[string]string{"nvidia.com/gpu": "1"}),
			want:        []string{"metadata.annotations[nvidia.com/use-gpuuuid]", "has a character outside"},
		},
		{
			name:        "MIG mode",
			annotations: map[string]string{AnnotationMode: "mig"},
			containers:  one(map[string]string{"nvidia.com/gpu": "1"}),
			want:        []string{"metadata.annotations[nvidia.com/vgpu-mode]", `Unsupported value: "mig"`, `"hami-core"`},
		},
		{
			name:       "the pod already has a claim of the webhook's name",
			containers: one(map[string]string{"nvidia.com/gpu": "1"}),
			claims:     []corev1.PodResourceClaim{{Name: ClaimName}},
			want:       []string{"spec.resourceClaims[hami-gpu]", "Duplicate value"},
		},
		{
			name:       "errors of several containers are all reported",
			containers: []ctr{{name: "a", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpucores": "101"}}, {name: "b", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "100000"}}},
			want:       []string{"spec.containers[0].resources.limits[nvidia.com/gpucores]", "spec.containers[1].resources.limits[nvidia.com/gpumem]"},
		},
		{
			name:       "init containers are checked",
			containers: []ctr{{name: "a", init: true, limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpucores": "101"}}},
			want:       []string{"spec.initContainers[0].resources.limits[nvidia.com/gpucores]"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := DefaultOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			inv := mixed.inventory()
			if tc.inv != nil {
				inv = *tc.inv
			}
			pod := makePod(tc.annotations, tc.containers...)
			pod.Spec.ResourceClaims = tc.claims
			tr, err := Translate(pod, opts, inv)
			if err == nil {
				t.Fatalf("no error; claim %+v", tr.Claim)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// Pods with the same requests share a template; different requests do not.
func TestTemplateName(t *testing.T) {
	inv := Inventory{GPUMemory: []int64{80 << 30}}
	name := func(limits map[string]string, ann map[string]string) string {
		t.Helper()
		tr, err := Translate(makePod(ann, ctr{name: "app", limits: limits}), DefaultOptions(), inv)
		if err != nil {
			t.Fatal(err)
		}
		n, err := TemplateName(tr.Claim)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := name(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}, nil)
	if b := name(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}, nil); a != b {
		t.Errorf("same requests, different templates %s and %s", a, b)
	}
	for _, other := range []string{
		name(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2048"}, nil),
		name(map[string]string{"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1024"}, nil),
		name(map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}, map[string]string{AnnotationUseType: "A100"}),
	} {
		if other == a {
			t.Errorf("different requests share template %s", a)
		}
	}
	if !strings.HasPrefix(a, ClaimName+"-") || len(a) > 63 {
		t.Errorf("template name %q", a)
	}
}

func TestOptionsValidate(t *testing.T) {
	for name, mutate := range map[string]func(*Options){
		"bad class":         func(o *Options) { o.DeviceClassName = "Not_A_Name" },
		"bad driver":        func(o *Options) { o.DriverName = "" },
		"cores above 100":   func(o *Options) { o.DefaultCores = 101 },
		"negative memory":   func(o *Options) { o.DefaultMemoryMiB = -1 },
		"negative gpus":     func(o *Options) { o.DefaultGPUNum = -1 },
		"duplicate name":    func(o *Options) { o.Resources.Cores = o.Resources.Memory },
		"bad resource name": func(o *Options) { o.Resources.GPU = "a/b/c" },
	} {
		o := DefaultOptions()
		mutate(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := DefaultOptions().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}
