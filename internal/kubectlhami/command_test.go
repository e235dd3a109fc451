package kubectlhami

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const driver = "vgpu.hami.io"

// testCluster is two simulated nodes published as the plugin does, with
// claims allocated by the scheduler's allocator.
type testCluster struct {
	t      *testing.T
	ctx    context.Context
	slices []*resourceapi.ResourceSlice
	claims []*resourceapi.ResourceClaim
	class  *resourceapi.DeviceClass
}

func newTestCluster(t *testing.T, taint func(uuid string) []resourceapi.DeviceTaint) *testCluster {
	_, ctx := ktesting.NewTestContext(t)
	c := &testCluster{t: t, ctx: ctx, class: &resourceapi.DeviceClass{
		ObjectMeta: metav1.ObjectMeta{Name: driver},
		Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{
			CEL: &resourceapi.CELDeviceSelector{Expression: fmt.Sprintf("device.driver == %q", driver)},
		}}},
	}}
	for node, profile := range map[string]string{"node-a": "2xA100-80GB", "node-b": "L4"} {
		p, err := discovery.LoadProfile(profile)
		if err != nil {
			t.Fatal(err)
		}
		sim, err := discovery.NewSimulated(node, p)
		if err != nil {
			t.Fatal(err)
		}
		gpus, err := sim.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var opts []inventory.Option
		if taint != nil {
			opts = append(opts, inventory.WithTaints(taint))
		}
		res, _ := inventory.Build(ctx, node, gpus, opts...)
		c.slices = append(c.slices, inventory.ResourceSlices(driver, node, res)...)
	}
	return c
}

// allocate places a claim as the scheduler would, on the first node where
// it fits, and reserves it for pod.
func (c *testCluster) allocate(ns, name, pod, memory, cores string) *resourceapi.ResourceClaim {
	c.t.Helper()
	req := Request{Class: driver, Memory: memory, Cores: cores}
	claim, err := req.claim()
	if err != nil {
		c.t.Fatal(err)
	}
	claim.Namespace, claim.Name, claim.UID = ns, name, types.UID("uid-"+name)
	cl := &Cluster{Driver: driver, Slices: c.slices, Claims: c.claims, Classes: []*resourceapi.DeviceClass{c.class}}
	for _, node := range []string{"node-a", "node-b"} {
		result, err := cl.allocateOn(c.ctx, node, claim)
		if err != nil {
			c.t.Fatal(err)
		}
		if result == nil {
			continue
		}
		claim.Status.Allocation = result
		claim.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: pod, UID: types.UID("uid-" + pod)}}
		c.claims = append(c.claims, claim)
		return claim
	}
	return nil
}

func (c *testCluster) client() kubernetes.Interface {
	var objs []runtime.Object
	for _, s := range c.slices {
		objs = append(objs, s)
	}
	for _, cl := range c.claims {
		objs = append(objs, cl)
	}
	objs = append(objs, c.class)
	// A slice of another driver must not show.
	objs = append(objs, &resourceapi.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: "other"}, Spec: resourceapi.ResourceSliceSpec{
		Driver: "other.example.com", Pool: resourceapi.ResourcePool{Name: "node-a", ResourceSliceCount: 1}, Devices: []resourceapi.Device{{Name: "x"}},
	}})
	return fake.NewClientset(objs...)
}

func (c *testCluster) run(args ...string) string {
	c.t.Helper()
	var out, errOut bytes.Buffer
	client := c.client()
	code := Run(c.ctx, args, &out, &errOut, func(string, string) (kubernetes.Interface, error) { return client, nil })
	if code != ExitOK {
		c.t.Fatalf("kubectl hami %v: exit %d: %s", args, code, errOut.String())
	}
	return out.String()
}

// golden compares got with testdata/name. Everything here is
// deterministic: simulated UUIDs derive from the node names.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestGolden(t *testing.T) {
	c := newTestCluster(t, nil)
	c.allocate("team-a", "train-0", "train-0-pod", "20Gi", "30")
	c.allocate("team-a", "train-1", "train-1-pod", "20Gi", "")
	c.allocate("team-b", "whole", "whole-pod", "", "")
	c.allocate("team-b", "infer", "infer-pod", "10Gi", "50")
	for _, tc := range []struct {
		file string
		args []string
	}{
		{"gpus.txt", []string{"gpus"}},
		{"gpus.json", []string{"gpus", "-o", "json"}},
		{"claims.txt", []string{"claims"}},
		{"claims-team-b.yaml", []string{"claims", "-n", "team-b", "-o", "yaml"}},
		{"fit-20Gi-20.txt", []string{"fit", "--memory", "20Gi", "--cores", "20"}},
		{"fit-25Gi.txt", []string{"fit", "--memory", "25Gi"}},
		{"fit-20Gi-30.json", []string{"fit", "--memory", "20Gi", "--cores", "30", "-o", "json"}},
	} {
		t.Run(tc.file, func(t *testing.T) { golden(t, tc.file, c.run(tc.args...)) })
	}
}

func TestGoldenTaintedAndUsage(t *testing.T) {
	sick := discovery.SimulatedUUID("node-a", 1, "NVIDIA A100-SXM4-80GB")
	c := newTestCluster(t, func(uuid string) []resourceapi.DeviceTaint {
		if uuid == sick {
			return []resourceapi.DeviceTaint{{Key: driver + "/unhealthy", Value: "xid-79", Effect: resourceapi.DeviceTaintEffectNoExecute}}
		}
		return nil
	})
	cl := c.allocate("team-a", "train-0", "train-0-pod", "20Gi", "30")
	gpu0 := discovery.SimulatedUUID("node-a", 0, "NVIDIA A100-SXM4-80GB")
	metrics := fmt.Sprintf(`# TYPE hami_dra_gpu_healthy gauge
hami_dra_gpu_healthy{gpu_uuid=%[1]q,index="0",node="node-a"} 1
hami_dra_gpu_healthy{gpu_uuid=%[2]q,index="1",node="node-a"} 0
# TYPE hami_dra_gpu_memory_used_bytes gauge
hami_dra_gpu_memory_used_bytes{gpu_uuid=%[1]q} 3.221225472e+09
# TYPE hami_dra_claim_memory_used_bytes gauge
hami_dra_claim_memory_used_bytes{claim="train-0",gpu_uuid=%[1]q,index="0",namespace="team-a",uid=%[3]q} 3.221225472e+09
`, gpu0, sick, cl.UID)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(metrics)) }))
	defer srv.Close()
	golden(t, "gpus-tainted-usage.txt", c.run("gpus", "--metrics", srv.URL))
	golden(t, "claims-usage.txt", c.run("claims", "--metrics", srv.URL))
	golden(t, "fit-tainted.txt", c.run("fit", "--memory", "20Gi"))
}

// TestFitAgreesWithScheduler fills the cluster claim by claim and checks,
// before each, that fit's answer and the scheduler's allocator (run on the
// claim as a user writes it, without fit's per-GPU selector) agree: the
// claim is allocated exactly when fit names a GPU, and on one it named.
func TestFitAgreesWithScheduler(t *testing.T) {
	c := newTestCluster(t, nil)
	sizes := []struct{ memory, cores string }{
		{"30Gi", "40"}, {"30Gi", "40"}, {"30Gi", "40"}, {"20Gi", ""}, {"50Gi", "10"}, {"", ""}, {"10Gi", "60"}, {"1Gi", "1"}, {"79Gi", ""},
	}
	for i := 0; i < 40; i++ {
		s := sizes[i%len(sizes)]
		cl := &Cluster{Driver: driver, Slices: c.slices, Claims: c.claims, Classes: []*resourceapi.DeviceClass{c.class}}
		fits, err := cl.Fit(c.ctx, Request{Class: driver, Memory: s.memory, Cores: s.cores})
		if err != nil {
			t.Fatal(err)
		}
		yes := map[string]bool{}
		for _, f := range fits {
			if f.Fits {
				yes[f.Device] = true
			}
		}
		claim := c.allocate("ns", fmt.Sprintf("c%d", i), fmt.Sprintf("p%d", i), s.memory, s.cores)
		if claim == nil {
			if len(yes) > 0 {
				t.Fatalf("claim %d (%+v): the scheduler places it nowhere, fit says %v", i, s, yes)
			}
			continue
		}
		got := claim.Status.Allocation.Devices.Results[0].Device
		if !yes[got] {
			t.Fatalf("claim %d (%+v): the scheduler chose %s, fit says %v", i, s, got, yes)
		}
	}
}

func TestRunErrors(t *testing.T) {
	c := newTestCluster(t, nil)
	client := c.client()
	newClient := func(string, string) (kubernetes.Interface, error) { return client, nil }
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, ExitUsage, "Usage"},
		{[]string{"pods"}, ExitUsage, "unknown command"},
		{[]string{"gpus", "-o", "wide"}, ExitUsage, "want json or yaml"},
		{[]string{"fit"}, ExitUsage, "fit needs --memory"},
		{[]string{"fit", "--memory", "lots"}, ExitError, "--memory \"lots\""},
		{[]string{"fit", "--cores", "150"}, ExitError, "--cores \"150\""},
		{[]string{"fit", "--memory", "1Gi", "--class", "nope"}, ExitError, "DeviceClass \"nope\" not found"},
		{[]string{"gpus", "extra"}, ExitUsage, "unexpected arguments"},
	} {
		var out, errOut bytes.Buffer
		code := Run(context.Background(), tc.args, &out, &errOut, newClient)
		if code != tc.code || !strings.Contains(errOut.String(), tc.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut.String(), tc.code, tc.msg)
		}
	}
}

func TestJSONIsMachineReadable(t *testing.T) {
	c := newTestCluster(t, nil)
	c.allocate("team-a", "train-0", "train-0-pod", "20Gi", "30")
	var got struct{ GPUs []GPU }
	if err := json.Unmarshal([]byte(c.run("gpus", "-o", "json")), &got); err != nil {
		t.Fatal(err)
	}
	allocated := int64(0)
	for _, g := range got.GPUs {
		allocated += g.AllocatedMemoryBytes
	}
	if len(got.GPUs) != 3 || allocated != 20<<30 {
		t.Errorf("gpus -o json: %+v", got.GPUs)
	}
}

// allocateOn runs the scheduler's allocator for claim on node, as
// kube-scheduler's DRA plugin does in Filter and Reserve.
func (c *Cluster) allocateOn(ctx context.Context, node string, claim *resourceapi.ResourceClaim) (*resourceapi.AllocationResult, error) {
	alloc, err := c.allocator(ctx)
	if err != nil {
		return nil, err
	}
	results, err := alloc.Allocate(ctx, nodeObject(node), []*resourceapi.ResourceClaim{claim})
	if err != nil || results == nil {
		return nil, err
	}
	return &results[0], nil
}
