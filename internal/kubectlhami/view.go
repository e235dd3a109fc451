// Package kubectlhami is the kubectl plugin's logic (cmd/kubectl-hami):
// it reads the driver's ResourceSlices and the ResourceClaims allocated on
// them and tells, per GPU, what is allocated, to whom, what is free and
// where a share of a given size fits. Fit questions are answered by the
// scheduler's own allocator library, so the answer is the scheduler's.
package kubectlhami

import (
	"context"
	"fmt"
	"sort"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
)

// Names the driver publishes (internal/inventory); repeated here so the
// plugin does not import the node side.
const (
	capacityMemory = "memory"
	capacityCores  = "cores"
	attrUUID       = "uuid"
	attrProduct    = "productName"
	attrIndex      = "index"
)

// GPU is one GPU of the cluster as the driver published it, with what the
// allocated claims consume of it.
type GPU struct {
	Node   string `json:"node"`
	Device string `json:"device"`
	Pool   string `json:"pool"`
	UUID   string `json:"uuid"`
	Index  int64  `json:"index"`
	Model  string `json:"model"`
	// MemoryBytes and Cores are the capacities.
	MemoryBytes int64 `json:"memoryBytes"`
	Cores       int64 `json:"cores"`
	// Allocated* is what allocated claims consume.
	AllocatedMemoryBytes int64 `json:"allocatedMemoryBytes"`
	AllocatedCores       int64 `json:"allocatedCores"`
	// Shares is the number of allocation results on the GPU.
	Shares int `json:"shares"`
	// Health is "Healthy", or the device's taints ("key=value:effect").
	Health string `json:"health"`
	// UsedMemoryBytes is the memory the claims' processes hold, from the
	// plugin's metrics; nil when no metrics endpoint was given.
	UsedMemoryBytes *int64 `json:"usedMemoryBytes,omitempty"`
}

// FreeMemoryBytes is what is left for new shares.
func (g GPU) FreeMemoryBytes() int64 { return max(g.MemoryBytes-g.AllocatedMemoryBytes, 0) }

// FreeCores is the compute share left.
func (g GPU) FreeCores() int64 { return max(g.Cores-g.AllocatedCores, 0) }

// Claim is one allocated share of a GPU (a claim with two GPUs is two).
type Claim struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	UID       string   `json:"uid"`
	Pods      []string `json:"pods"`
	Node      string   `json:"node"`
	Device    string   `json:"device"`
	UUID      string   `json:"uuid"`
	Request   string   `json:"request"`
	// MemoryBytes and Cores are what the share consumes.
	MemoryBytes int64 `json:"memoryBytes"`
	Cores       int64 `json:"cores"`
	// UsedMemoryBytes comes from the plugin's metrics; nil when unknown.
	UsedMemoryBytes *int64 `json:"usedMemoryBytes,omitempty"`
}

// Cluster is what the plugin reads from the API server.
type Cluster struct {
	Driver  string
	Slices  []*resourceapi.ResourceSlice
	Claims  []*resourceapi.ResourceClaim
	Classes []*resourceapi.DeviceClass
}

// Load lists the driver's slices, the claims (of namespace, or all when
// empty) and the DeviceClasses.
func Load(ctx context.Context, client kubernetes.Interface, driver, namespace string) (*Cluster, error) {
	c := &Cluster{Driver: driver}
	slices, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.driver", driver).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list ResourceSlices: %w", err)
	}
	for i := range slices.Items {
		// A fake or older server may ignore the field selector.
		if slices.Items[i].Spec.Driver == driver {
			c.Slices = append(c.Slices, &slices.Items[i])
		}
	}
	claims, err := client.ResourceV1().ResourceClaims(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list ResourceClaims: %w", err)
	}
	for i := range claims.Items {
		c.Claims = append(c.Claims, &claims.Items[i])
	}
	classes, err := client.ResourceV1().DeviceClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list DeviceClasses: %w", err)
	}
	for i := range classes.Items {
		c.Classes = append(c.Classes, &classes.Items[i])
	}
	return c, nil
}

type deviceKey struct{ pool, device string }

// currentSlices returns the slices of each pool's newest generation: the
// scheduler ignores older ones, and so do we.
func (c *Cluster) currentSlices() []*resourceapi.ResourceSlice {
	newest := map[string]int64{}
	for _, s := range c.Slices {
		newest[s.Spec.Pool.Name] = max(newest[s.Spec.Pool.Name], s.Spec.Pool.Generation)
	}
	var out []*resourceapi.ResourceSlice
	for _, s := range c.Slices {
		if s.Spec.Pool.Generation == newest[s.Spec.Pool.Name] {
			out = append(out, s)
		}
	}
	return out
}

// GPUs lists every published GPU with its allocations, by node and index.
func (c *Cluster) GPUs() []GPU {
	var gpus []GPU
	index := map[deviceKey]int{}
	for _, s := range c.currentSlices() {
		node := ""
		if s.Spec.NodeName != nil {
			node = *s.Spec.NodeName
		}
		for _, d := range s.Spec.Devices {
			g := GPU{Node: node, Device: d.Name, Pool: s.Spec.Pool.Name, Health: "Healthy"}
			if a, ok := d.Attributes[attrUUID]; ok && a.StringValue != nil {
				g.UUID = *a.StringValue
			}
			if a, ok := d.Attributes[attrProduct]; ok && a.StringValue != nil {
				g.Model = *a.StringValue
			}
			if a, ok := d.Attributes[attrIndex]; ok && a.IntValue != nil {
				g.Index = *a.IntValue
			}
			if q, ok := d.Capacity[capacityMemory]; ok {
				g.MemoryBytes = q.Value.Value()
			}
			if q, ok := d.Capacity[capacityCores]; ok {
				g.Cores = q.Value.Value()
			}
			if len(d.Taints) > 0 {
				var taints []string
				for _, t := range d.Taints {
					taints = append(taints, fmt.Sprintf("%s=%s:%s", t.Key, t.Value, t.Effect))
				}
				g.Health = strings.Join(taints, ",")
			}
			index[deviceKey{g.Pool, g.Device}] = len(gpus)
			gpus = append(gpus, g)
		}
	}
	for _, cl := range c.Claims {
		if cl.Status.Allocation == nil {
			continue
		}
		for _, r := range cl.Status.Allocation.Devices.Results {
			i, ok := index[deviceKey{r.Pool, r.Device}]
			if r.Driver != c.Driver || !ok {
				continue
			}
			mem, cores := consumed(r, gpus[i])
			gpus[i].AllocatedMemoryBytes += mem
			gpus[i].AllocatedCores += cores
			gpus[i].Shares++
		}
	}
	sort.SliceStable(gpus, func(a, b int) bool {
		if gpus[a].Node != gpus[b].Node {
			return gpus[a].Node < gpus[b].Node
		}
		return gpus[a].Index < gpus[b].Index
	})
	return gpus
}

// consumed is what one allocation result takes of a GPU: its consumed
// capacity, or the whole GPU for an exclusive allocation (no share ID).
func consumed(r resourceapi.DeviceRequestAllocationResult, g GPU) (memory, cores int64) {
	if r.ShareID == nil {
		return g.MemoryBytes, g.Cores
	}
	if q, ok := r.ConsumedCapacity[capacityMemory]; ok {
		memory = q.Value()
	}
	if q, ok := r.ConsumedCapacity[capacityCores]; ok {
		cores = q.Value()
	}
	return memory, cores
}

// ClaimShares lists each allocated share of a GPU of the driver, by
// namespace, claim and request.
func (c *Cluster) ClaimShares() []Claim {
	gpus := map[deviceKey]GPU{}
	for _, g := range c.GPUs() {
		gpus[deviceKey{g.Pool, g.Device}] = g
	}
	var out []Claim
	for _, cl := range c.Claims {
		if cl.Status.Allocation == nil {
			continue
		}
		var pods []string
		for _, ref := range cl.Status.ReservedFor {
			if ref.Resource == "pods" && ref.APIGroup == "" {
				pods = append(pods, ref.Name)
			}
		}
		sort.Strings(pods)
		for _, r := range cl.Status.Allocation.Devices.Results {
			g, ok := gpus[deviceKey{r.Pool, r.Device}]
			if r.Driver != c.Driver || !ok {
				continue
			}
			mem, cores := consumed(r, g)
			out = append(out, Claim{
				Namespace: cl.Namespace, Name: cl.Name, UID: string(cl.UID), Pods: pods,
				Node: g.Node, Device: g.Device, UUID: g.UUID, Request: r.Request,
				MemoryBytes: mem, Cores: cores,
			})
		}
	}
	sort.SliceStable(out, func(a, b int) bool {
		if out[a].Namespace != out[b].Namespace {
			return out[a].Namespace < out[b].Namespace
		}
		if out[a].Name != out[b].Name {
			return out[a].Name < out[b].Name
		}
		return out[a].Request < out[b].Request
	})
	return out
}
