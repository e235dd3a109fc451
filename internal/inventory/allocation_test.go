package inventory_test

import (
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2/ktesting"
)

// These tests run the scheduler's own allocator on the slices this driver
// publishes, so they check the semantics users see, not just the YAML.

// step is one claim and what the allocator should do with it.
type step struct {
	name  string
	claim []request
	// fits is whether the claim gets an allocation on the node.
	fits bool
	// products, when set, are the product names of the GPUs it must get.
	products []string
	// consumed, when set, is the capacity each device result must record.
	consumed map[resourceapi.QualifiedName]string
	// distinct requires the results to be on different GPUs.
	distinct bool
}

func TestAllocation(t *testing.T) {
	const (
		a100 = "NVIDIA A100-SXM4-80GB"
		l4   = "NVIDIA L4"
	)
	tests := []struct {
		name    string
		profile string
		steps   []step
	}{
		{
			name:    "four 20Gi claims fit on an 80Gi GPU, a fifth does not",
			profile: "1xA100-80GB",
			steps: []step{
				{name: "1st", claim: []request{{memory: "20Gi"}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "20Gi", "cores": "0"}},
				{name: "2nd", claim: []request{{memory: "20Gi"}}, fits: true},
				{name: "3rd", claim: []request{{memory: "20Gi"}}, fits: true},
				{name: "4th", claim: []request{{memory: "20Gi"}}, fits: true},
				{name: "5th", claim: []request{{memory: "20Gi"}}, fits: false},
				{name: "even 1Mi more", claim: []request{{memory: "1Mi"}}, fits: false},
			},
		},
		{
			name:    "an H100 80GB HBM3 has 81559Mi: three 20Gi claims and a 20119Mi one, no more",
			profile: "1xH100-80GB",
			steps: []step{
				{name: "1st", claim: []request{{memory: "20Gi"}}, fits: true},
				{name: "2nd", claim: []request{{memory: "20Gi"}}, fits: true},
				{name: "3rd", claim: []request{{memory: "20Gi"}}, fits: true},
				{name: "20Gi does not fit", claim: []request{{memory: "20Gi"}}, fits: false},
				{name: "the exact rest does", claim: []request{{memory: "20119Mi"}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "20119Mi"}},
			},
		},
		{
			name:    "requests are rounded up to the 1Mi step, never to more",
			profile: "1xL4",
			steps: []step{
				{name: "1.5Mi consumes 2Mi", claim: []request{{memory: "1572864"}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "2Mi"}},
				{name: "20000Mi consumes 20000Mi", claim: []request{{memory: "20000Mi"}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "20000Mi"}},
				{name: "more than the GPU has", claim: []request{{memory: "24Gi"}}, fits: false},
			},
		},
		{
			name:    "cores shares sum to at most 100",
			profile: "1xA100-80GB",
			steps: []step{
				{name: "40%", claim: []request{{memory: "10Gi", cores: "40"}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "10Gi", "cores": "40"}},
				{name: "another 40%", claim: []request{{memory: "10Gi", cores: "40"}}, fits: true},
				{name: "30% would make 110", claim: []request{{memory: "10Gi", cores: "30"}}, fits: false},
				{name: "20% makes exactly 100", claim: []request{{memory: "10Gi", cores: "20"}}, fits: true},
				{name: "1% more does not fit", claim: []request{{memory: "10Gi", cores: "1"}}, fits: false},
				{name: "memory only still fits: compute is best-effort", claim: []request{{memory: "10Gi"}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "10Gi", "cores": "0"}},
				{name: "more than 100% is never valid", claim: []request{{memory: "1Gi", cores: "101"}}, fits: false},
			},
		},
		{
			name:    "a claim with no capacity request takes a whole GPU",
			profile: "2xA100-80GB",
			steps: []step{
				{name: "whole GPU", claim: []request{{}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "80Gi", "cores": "0"}},
				{name: "a share lands on the other GPU", claim: []request{{memory: "1Gi"}}, fits: true},
				{name: "a second whole GPU no longer fits", claim: []request{{}}, fits: false},
			},
		},
		{
			name:    "a whole-GPU claim does not fit next to a share",
			profile: "1xA100-80GB",
			steps: []step{
				{name: "share", claim: []request{{memory: "1Gi"}}, fits: true},
				{name: "whole GPU", claim: []request{{}}, fits: false},
			},
		},
		{
			name:    "a cores-only claim also gets all the memory",
			profile: "1xT4",
			steps: []step{
				{name: "50% compute", claim: []request{{cores: "50"}}, fits: true, consumed: map[resourceapi.QualifiedName]string{"memory": "15Gi", "cores": "50"}},
				{name: "nothing left for memory", claim: []request{{memory: "1Gi", cores: "10"}}, fits: false},
			},
		},
		{
			name:    "CEL selects by product name on a mixed node",
			profile: "4xA100-80GB,2xL4",
			steps: []step{
				{name: "L4", claim: []request{{memory: "1Gi", selectors: []string{`device.attributes["vgpu.hami.io"].productName == "NVIDIA L4"`}}}, fits: true, products: []string{l4}},
				{name: "A100", claim: []request{{memory: "1Gi", selectors: []string{`device.attributes["vgpu.hami.io"].productName.startsWith("NVIDIA A100")`}}}, fits: true, products: []string{a100}},
				{name: "no H100 here", claim: []request{{memory: "1Gi", selectors: []string{`device.attributes["vgpu.hami.io"].productName == "NVIDIA H100 80GB HBM3"`}}}, fits: false},
			},
		},
		{
			name:    "CEL selects by memory size on a mixed node",
			profile: "4xA100-80GB,2xL4",
			steps: []step{
				{name: "at least 40Gi: an A100", claim: []request{{memory: "1Gi", selectors: []string{`device.capacity["vgpu.hami.io"].memory.compareTo(quantity("40Gi")) >= 0`}}}, fits: true, products: []string{a100}},
				{name: "below 40Gi: an L4", claim: []request{{memory: "1Gi", selectors: []string{`device.capacity["vgpu.hami.io"].memory.compareTo(quantity("40Gi")) < 0`}}}, fits: true, products: []string{l4}},
				{name: "both L4s, whole", claim: []request{{count: 2, selectors: []string{`device.capacity["vgpu.hami.io"].memory.compareTo(quantity("40Gi")) < 0`}}}, fits: false},
			},
		},
		{
			name:    "CEL selects by compute capability and architecture",
			profile: "4xA100-80GB,2xL4",
			steps: []step{
				{name: "cc >= 8.9", claim: []request{{memory: "1Gi", selectors: []string{`device.attributes["vgpu.hami.io"].cudaComputeCapability.isGreaterThan(semver("8.5.0"))`}}}, fits: true, products: []string{l4}},
				{name: "ampere", claim: []request{{memory: "1Gi", selectors: []string{`device.attributes["vgpu.hami.io"].architecture == "ampere"`}}}, fits: true, products: []string{a100}},
				{name: "new enough driver", claim: []request{{memory: "1Gi", selectors: []string{`device.attributes["vgpu.hami.io"].driverVersion.isGreaterThan(semver("570.0.0"))`}}}, fits: true},
			},
		},
		{
			name:    "a two-GPU claim gets two distinct GPUs",
			profile: "2xA100-80GB",
			steps: []step{
				{name: "two shares", claim: []request{{count: 2, memory: "10Gi"}}, fits: true, distinct: true},
				{name: "two more", claim: []request{{count: 2, memory: "10Gi"}}, fits: true, distinct: true},
			},
		},
		{
			name:    "a two-GPU claim never gets one GPU twice",
			profile: "1xA100-80GB",
			steps: []step{
				{name: "two shares on one GPU", claim: []request{{count: 2, memory: "10Gi"}}, fits: false},
			},
		},
		{
			name:    "a claim with two requests gets two GPUs",
			profile: "2xL4",
			steps: []step{
				{name: "two whole GPUs", claim: []request{{}, {}}, fits: true, distinct: true},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			c := newCluster(t, ctx, 1, tc.profile)
			for _, s := range tc.steps {
				results, err := c.allocate(ctx, "node-0", c.claim(s.claim...))
				if err != nil {
					t.Fatalf("%s: allocator error: %v", s.name, err)
				}
				if got := results != nil; got != s.fits {
					t.Fatalf("%s: fits=%v, want %v", s.name, got, s.fits)
				}
				if results == nil {
					continue
				}
				devices := results[0].Devices.Results
				if s.products != nil {
					for i, d := range devices {
						if got := c.gpus[d.Device].ProductName; got != s.products[i] {
							t.Errorf("%s: device %d is a %q, want %q", s.name, i, got, s.products[i])
						}
					}
				}
				for _, d := range devices {
					if d.ShareID == nil {
						t.Errorf("%s: %s allocated without a share ID: the device must be shareable", s.name, d.Device)
					}
					for name, want := range s.consumed {
						got := d.ConsumedCapacity[name]
						if got.Cmp(resource.MustParse(want)) != 0 {
							t.Errorf("%s: consumed %s = %s, want %s", s.name, name, got.String(), want)
						}
					}
				}
				if s.distinct {
					seen := map[string]bool{}
					for _, d := range devices {
						if seen[d.Device] {
							t.Errorf("%s: GPU %s allocated twice in one claim", s.name, d.Device)
						}
						seen[d.Device] = true
					}
				}
			}
		})
	}
}

// TestAllocationMIGNotOffered checks that a GPU in MIG mode cannot be
// allocated: it is not published at all.
func TestAllocationMIGNotOffered(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newCluster(t, ctx, 1, "testdata/mig.yaml")
	if len(c.gpus) != 1 {
		t.Fatalf("published %d GPUs, want only the non-MIG one", len(c.gpus))
	}
	claim := c.claim(request{count: 2, memory: "1Gi"})
	results, err := c.allocate(ctx, "node-0", claim)
	if err != nil || results != nil {
		t.Fatalf("two GPUs allocated on a node with one sharable GPU: %v %v", results, err)
	}
	if results, err := c.allocate(ctx, "node-0", c.claim(request{memory: "1Gi"})); err != nil || results == nil {
		t.Fatalf("the non-MIG GPU must be allocatable: %v", err)
	}
}

// TestAllocationOtherNode checks that slices are bound to their node.
func TestAllocationOtherNode(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newCluster(t, ctx, 2, "1xL4")
	for range 2 {
		results, err := c.allocate(ctx, "node-1", c.claim(request{}))
		if err != nil {
			t.Fatal(err)
		}
		if results != nil {
			for _, d := range results[0].Devices.Results {
				if d.Pool != "node-1" {
					t.Errorf("allocated %s/%s for node-1", d.Pool, d.Device)
				}
			}
		}
	}
	if got := len(c.state.AllocatedSharedDeviceIDs); got != 1 {
		t.Errorf("%d allocations, want 1 (one whole L4 on node-1)", got)
	}
}
