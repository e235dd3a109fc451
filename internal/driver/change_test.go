package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	resourcev1 "k8s.io/client-go/kubernetes/typed/resource/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
	"github.com/hami-dra/hami-dra/internal/discovery"
)

// specGPUNodes returns the host paths of the per-GPU device nodes in the
// claim's CDI spec, in quota-index order; nil when there is no spec.
func (e *env) specGPUNodes(t testing.TB, uid string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_"+uid+".json"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Devices []struct {
			Name           string
			ContainerEdits struct {
				DeviceNodes []struct{ Path, HostPath string }
			}
		}
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range spec.Devices {
		if !strings.Contains(d.Name, "-gpu") {
			continue
		}
		for _, n := range d.ContainerEdits.DeviceNodes {
			out = append(out, n.HostPath)
		}
	}
	return out
}

func (e *env) devPath(minor string) string { return filepath.Join(e.root, "dev", "nvidia"+minor) }

// renumbered is the node after GPU a was removed: the kernel driver gives
// b minor 0 and c minor 1 (minors are assigned at load time).
func renumbered() []discovery.GPU {
	b, c := testGPUs[1], testGPUs[2]
	b.Minor, c.Minor = 0, 1
	b.Index, c.Index = 0, 1
	return []discovery.GPU{b, c}
}

// TestRebootWithRenumberedGPUs: after a reboot in which GPU a was removed,
// the claim on b must get b's new device node (not a's old one, which is b
// now), and the claim on a must fail clearly
// and never get another GPU.
func TestRebootWithRenumberedGPUs(t *testing.T) {
	onA := newClaim("on-a", []share{{"gpu", 0, "1Gi", "10"}})
	onB := newClaim("on-b", []share{{"gpu", 1, "1Gi", "20"}})
	for _, reboot := range []bool{true, false} {
		name := "reboot"
		if !reboot {
			name = "restart, specs still there"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, onA, onB)
			for _, r := range e.prepare(t, onA, onB) {
				if r.Error != "" {
					t.Fatal(r.Error)
				}
			}
			if got := e.specGPUNodes(t, "uid-on-b"); !slices.Equal(got, []string{e.devPath("1")}) {
				t.Fatalf("before: claim on b uses %v", got)
			}
			e.stop()
			if reboot {
				os.RemoveAll(e.cfg.CDIRoot)
				mustWrite(t, e.cfg.BootIDPath, "boot-2\n")
			}
			gpus := renumbered()
			drv, err := startWith(e, gpus)
			if err != nil {
				t.Fatal(err)
			}
			defer drv.Stop()
			if got := e.specGPUNodes(t, "uid-on-b"); !slices.Equal(got, []string{e.devPath("0")}) {
				t.Errorf("claim on b uses %v after the renumbering, want b's new node %s", got, e.devPath("0"))
			}
			if got := e.specGPUNodes(t, "uid-on-a"); got != nil {
				t.Errorf("claim on the removed GPU a still has a spec with %v", got)
			}
			res, _ := drv.PrepareResourceClaims(e.ctx(), []*resourceapi.ResourceClaim{onA, onB})
			if err := res[onA.UID].Err; err == nil || !strings.Contains(err.Error(), testGPUs[0].UUID+" of this claim is no longer on node node-a") {
				t.Errorf("prepare of the claim on the removed GPU: %v", err)
			}
			if err := res[onB.UID].Err; err != nil {
				t.Errorf("prepare of the claim on b: %v", err)
			}
			if got := e.specGPUNodes(t, "uid-on-a"); got != nil {
				t.Errorf("claim on the removed GPU got a spec again: %v", got)
			}
			if rec, _ := drv.store.Get("uid-on-b"); rec.GPUs[0].Minor != 0 {
				t.Errorf("checkpoint keeps minor %d for b", rec.GPUs[0].Minor)
			}
		})
	}
}

// startWith starts a driver on e's node with other GPUs (no gRPC client).
func startWith(e *env, gpus []discovery.GPU) (*Driver, error) {
	return Start(e.ctx(), e.cfg, gpus)
}

// TestGPUChangesWhileClaimsPrepared: a GPU falls off the bus (or is
// replaced by a board with a new UUID) while claims are prepared; the
// re-discovery alone, without a restart, takes away the lost GPU's spec,
// renumbers the others, sweeps orphaned specs and rewrites reservations.
func TestGPUChangesWhileClaimsPrepared(t *testing.T) {
	onA := newClaim("on-a", []share{{"gpu", 0, "1Gi", "10"}})
	onC := newClaim("on-c", []share{{"gpu", 2, "1Gi", "30"}})
	e := newEnv(t, onA, onC)
	for _, r := range e.prepare(t, onA, onC) {
		if r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	mustWrite(t, filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_uid-orphan.json"), "{}")
	replacement := discovery.GPU{UUID: "GPU-dddddddd-0000-0000-0000-000000000000", Minor: 2, MemoryBytes: uint64(16 * gib), PCIBusID: "0000:c1:00.0", NUMANode: -1}
	gpus := append(renumbered(), replacement)
	e.drv.UpdateGPUs(gpus)

	if got := e.specGPUNodes(t, "uid-on-a"); got != nil {
		t.Errorf("claim on the lost GPU a keeps a spec with %v", got)
	}
	if got := e.specGPUNodes(t, "uid-on-c"); !slices.Equal(got, []string{e.devPath("1")}) {
		t.Errorf("claim on c uses %v, want c's new node %s", got, e.devPath("1"))
	}
	if _, err := os.Stat(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_uid-orphan.json")); err == nil {
		t.Error("orphaned spec survived the re-discovery")
	}
	if data, err := os.ReadFile(filepath.Join(e.cfg.StateDir, "gpus", replacement.UUID)); err != nil || !strings.Contains(string(data), "reserved=0\n") {
		t.Errorf("reservation file of the new board: %q %v", data, err)
	}
	if r := e.reserved(t, 2); r != "30" {
		t.Errorf("GPU c reserved=%s, want 30", r)
	}
	if r := e.prepare(t, onA)[string(onA.UID)]; !strings.Contains(r.Error, "no longer on node") {
		t.Errorf("prepare on the lost GPU: %q", r.Error)
	}
	// Reported to the operator: the metrics' lost flag per claim and GPU.
	if got := lostGPUs(e.drv); !slices.Equal(got, []string{"on-a/" + testGPUs[0].UUID}) {
		t.Errorf("claims reported with a lost GPU: %v, want only on-a's", got)
	}
	// The lost GPU comes back (it answered NVML again): so does its spec.
	e.drv.UpdateGPUs(testGPUs)
	if got := lostGPUs(e.drv); len(got) != 0 {
		t.Errorf("claims still reported with a lost GPU after it came back: %v", got)
	}
	if got := e.specGPUNodes(t, "uid-on-a"); !slices.Equal(got, []string{e.devPath("0")}) {
		t.Errorf("claim on a after its GPU came back: %v", got)
	}
	e.unprepare(t, onA, onC)
	assertClean(t, e)
}

// blockReservation makes the next write of GPU i's reservation file fail:
// a non-empty directory cannot be renamed over.
func (e *env) blockReservation(t *testing.T, i int) func() {
	p := filepath.Join(e.cfg.StateDir, "gpus", testGPUs[i].UUID)
	os.Remove(p)
	if err := os.MkdirAll(filepath.Join(p, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	return func() { os.RemoveAll(p) }
}

// TestReservationsFollowCheckpointAfterFailures: a prepare (or unprepare)
// that fails after the checkpoint was written leaves the reservation file
// behind; the kubelet's retry takes the idempotent path and must fix it.
func TestReservationsFollowCheckpointAfterFailures(t *testing.T) {
	c := newClaim("res", []share{{"gpu", 0, "1Gi", "40"}})
	e := newEnv(t, c)
	unblock := e.blockReservation(t, 0)
	if r := e.prepare(t, c)[string(c.UID)]; !strings.Contains(r.Error, "write reservation") {
		t.Fatalf("prepare with a blocked reservation file: %q", r.Error)
	}
	unblock()
	if r := e.prepare(t, c)[string(c.UID)]; r.Error != "" {
		t.Fatal(r.Error)
	}
	if r := e.reserved(t, 0); r != "40" {
		t.Fatalf("after the retried prepare reserved=%s, want 40: best-effort tenants would take the reserved share", r)
	}
	unblock = e.blockReservation(t, 0)
	resp, err := e.dra.NodeUnprepareResources(e.ctx(), unprepareRequest(c))
	if err != nil || !strings.Contains(resp.Claims[string(c.UID)].Error, "write reservation") {
		t.Fatalf("unprepare with a blocked reservation file: %v %v", resp, err)
	}
	unblock()
	e.unprepare(t, c)
	if r := e.reserved(t, 0); r != "0" {
		t.Fatalf("after the retried unprepare reserved=%s, want 0", r)
	}
	assertClean(t, e)
}

// TestPlanUsesOneSnapshotOfGPUs: re-discoveries racing with plan must
// never produce a record or CDI ID without the GPU's UUID.
func TestPlanUsesOneSnapshotOfGPUs(t *testing.T) {
	c := newClaim("race", []share{{"a", 0, "1Gi", "10"}, {"b", 1, "1Gi", "10"}, {"c", 2, "1Gi", "10"}})
	e := newEnv(t)
	e.drv.cfg.ComposeNvidiaCDI = true // the toolkit's device ID names the GPU's UUID
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			e.drv.setGPUs(testGPUs)
			e.drv.setGPUs(nil)
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	planned := 0
	for i := 0; i < 20000; i++ {
		rec, err := e.drv.plan(c)
		if err != nil {
			continue // the GPUs were gone at the first lookup: a clean failure
		}
		planned++
		for _, ids := range rec.CDIDeviceIDs {
			for _, id := range ids {
				if strings.HasSuffix(id, "=") {
					t.Fatalf("CDI ID %q without a GPU", id)
				}
			}
		}
		for _, g := range rec.GPUs {
			if g.UUID == "" {
				t.Fatalf("record with an empty UUID: %+v", rec.GPUs)
			}
		}
	}
	t.Logf("%d of 20000 plans succeeded", planned)
}

// TestAdminAccess: a monitoring claim with adminAccess gets the GPU even
// when it is fully taken, with no quota and no libvgpu, and consumes
// nothing.
func TestAdminAccess(t *testing.T) {
	whole := newClaim("whole", []share{{"gpu", 1, "16Gi", "100"}})
	admin := newClaim("monitor", []share{{"gpu", 1, "", ""}})
	admin.Status.Allocation.Devices.Results[0].AdminAccess = ptr.To(true)
	mixed := newClaim("mixed", []share{{"a", 0, "1Gi", "10"}, {"b", 1, "", ""}})
	mixed.Status.Allocation.Devices.Results[1].AdminAccess = ptr.To(true)
	e := newEnv(t, whole, admin, mixed)
	if r := e.prepare(t, whole)[string(whole.UID)]; r.Error != "" {
		t.Fatal(r.Error)
	}
	res := e.prepare(t, admin, mixed)
	if r := res[string(admin.UID)]; r.Error != "" {
		t.Fatalf("admin access claim: %s", r.Error)
	}
	if r := res[string(mixed.UID)]; !strings.Contains(r.Error, "must all use adminAccess or none") {
		t.Errorf("mixed claim: %q", r.Error)
	}
	env := e.specEnv(t, string(admin.UID))
	for k := range env {
		if strings.HasPrefix(k, "CUDA_DEVICE_MEMORY_LIMIT") || strings.HasPrefix(k, "CUDA_DEVICE_SM_LIMIT") || k == "VGPU_DEVICE_UUIDS" {
			t.Errorf("admin access spec sets %s", k)
		}
	}
	data, _ := os.ReadFile(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_"+string(admin.UID)+".json"))
	if strings.Contains(string(data), "libvgpu") || strings.Contains(string(data), "ld.so.preload") {
		t.Errorf("admin access spec injects libvgpu: %s", data)
	}
	if got := e.specGPUNodes(t, string(admin.UID)); !slices.Equal(got, []string{e.devPath("1")}) {
		t.Errorf("admin access spec nodes %v", got)
	}
	if r := e.reserved(t, 1); r != "100" {
		t.Errorf("reserved=%s, want 100 (admin access reserves nothing)", r)
	}
	for _, q := range e.drv.PreparedClaims() {
		if q.UID == string(admin.UID) {
			t.Errorf("admin access claim reported with a quota: %+v", q)
		}
	}
	e.unprepare(t, whole, admin)
	assertClean(t, e)
}

// TestDamagedCheckpointIsRebuilt: a truncated checkpoint does not make the
// plugin crash-loop: it is moved aside and rebuilt from the specs and
// claim directories on disk and the API server; claims deleted meanwhile
// are cleaned up. Without the API server the plugin refuses to start and
// leaves the file alone.
func TestDamagedCheckpointIsRebuilt(t *testing.T) {
	kept := newClaim("kept", []share{{"gpu", 0, "2Gi", "25"}})
	gone := newClaim("gone", []share{{"gpu", 1, "1Gi", "10"}})
	e := newEnv(t, kept, gone)
	for _, r := range e.prepare(t, kept, gone) {
		if r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	wantEnv := e.specEnv(t, string(kept.UID))
	e.stop()
	path := filepath.Join(e.cfg.StateDir, "checkpoint.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data[:len(data)/3], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.client.ResourceV1().ResourceClaims("default").Delete(e.ctx(), "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// The API server is down: refuse, clearly, and keep the file.
	e.client.PrependReactor("list", "resourceclaims", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if _, err := Start(e.ctx(), e.cfg, testGPUs); err == nil || !strings.Contains(err.Error(), "needs the API server") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("start without the API server: %v", err)
	}
	if got, _ := os.ReadFile(path); len(got) != len(data)/3 {
		t.Fatal("the damaged checkpoint was changed although it could not be rebuilt")
	}
	e.client.ReactionChain = e.client.ReactionChain[1:]

	e.start(t)
	if rec, ok := e.drv.store.Get(string(kept.UID)); !ok || rec.State != checkpoint.PrepareCompleted {
		t.Fatalf("claim not restored: %+v %v", rec, ok)
	}
	if got := e.specEnv(t, string(kept.UID)); !maps.Equal(got, wantEnv) {
		t.Errorf("restored spec env %v, want %v", got, wantEnv)
	}
	if _, ok := e.drv.store.Get(string(gone.UID)); ok || cdi.Exists(e.cfg.CDIRoot, string(gone.UID)) {
		t.Error("deleted claim restored or its spec kept")
	}
	if r0, r1 := e.reserved(t, 0), e.reserved(t, 1); r0 != "25" || r1 != "0" {
		t.Errorf("reserved %s/%s, want 25/0", r0, r1)
	}
	if aside, _ := filepath.Glob(path + ".corrupt-*"); len(aside) != 1 {
		t.Errorf("damaged checkpoint not kept aside: %v", aside)
	}
	e.unprepare(t, kept)
	assertClean(t, e)
}

// TestCleanupUnpreparesClaimAllocatedElsewhere: the claim still exists
// with its UID but its allocation now names another node's device.
func TestCleanupUnpreparesClaimAllocatedElsewhere(t *testing.T) {
	moved := newClaim("moved", []share{{"gpu", 0, "1Gi", "10"}})
	stays := newClaim("stays", []share{{"gpu", 0, "1Gi", "20"}})
	e := newEnv(t, moved, stays)
	for _, r := range e.prepare(t, moved, stays) {
		if r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	elsewhere := moved.DeepCopy()
	elsewhere.Status.Allocation.Devices.Results[0].Pool = "node-b"
	if _, err := e.client.ResourceV1().ResourceClaims("default").UpdateStatus(e.ctx(), elsewhere, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := e.drv.cleanup(e.ctx()); n != 1 {
		t.Fatalf("cleanup removed %d claims, want 1", n)
	}
	if _, ok := e.drv.store.Get(string(moved.UID)); ok {
		t.Error("claim allocated to another node is still prepared here")
	}
	if r := e.reserved(t, 0); r != "20" {
		t.Errorf("reserved=%s, want 20", r)
	}
}

// TestSlowAPIServerDoesNotStallPrepare: during a rolling update every
// kubelet call holds the instances' file lock; the cleanup's API requests
// must not be made under it.
func TestSlowAPIServerDoesNotStallPrepare(t *testing.T) {
	slow := newClaim("slow", []share{{"gpu", 0, "1Gi", "10"}})
	fresh := newClaim("fresh", []share{{"gpu", 1, "1Gi", "10"}})
	root, err := os.MkdirTemp("/tmp", "hd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	e := newEnvAt(t, root, slow, fresh)
	if r := e.prepare(t, slow)[string(slow.UID)]; r.Error != "" {
		t.Fatal(r.Error)
	}
	e.stop()
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock()
	e.cfg.KubeClient = slowGetClient{Interface: e.client, slow: "slow", release: release}
	e.cfg.RollingUpdateUID = "pod-1"
	e.start(t)

	done := make(chan int)
	go func() { done <- e.drv.cleanup(e.ctx()) }()
	time.Sleep(100 * time.Millisecond) // the cleanup is waiting for the API server

	start := time.Now()
	if r := e.prepare(t, fresh)[string(fresh.UID)]; r.Error != "" {
		t.Fatal(r.Error)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("prepare took %v while the cleanup waited for the API server", took)
	}
	unblock()
	if n := <-done; n != 0 {
		t.Errorf("cleanup removed %d claims, want 0", n)
	}
}

// slowGetClient is an API server that does not answer GETs of one claim
// until release is closed (the fake clientset cannot model it: its
// reactors run under one lock, so a slow one stalls every request).
type slowGetClient struct {
	kubernetes.Interface
	slow    string
	release chan struct{}
}

func (c slowGetClient) ResourceV1() resourcev1.ResourceV1Interface {
	return slowGetV1{c.Interface.ResourceV1(), c}
}

type slowGetV1 struct {
	resourcev1.ResourceV1Interface
	c slowGetClient
}

func (v slowGetV1) ResourceClaims(namespace string) resourcev1.ResourceClaimInterface {
	return slowGetClaims{v.ResourceV1Interface.ResourceClaims(namespace), v.c}
}

type slowGetClaims struct {
	resourcev1.ResourceClaimInterface
	c slowGetClient
}

func (g slowGetClaims) Get(ctx context.Context, name string, opts metav1.GetOptions) (*resourceapi.ResourceClaim, error) {
	if name == g.c.slow {
		select {
		case <-g.c.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.ResourceClaimInterface.Get(ctx, name, opts)
}

// TestHealthyFollowsTheSockets: /healthz's check fails once the kubelet
// can no longer reach the plugin.
func TestHealthyFollowsTheSockets(t *testing.T) {
	for _, rolling := range []types.UID{"", "pod-7"} {
		root, err := os.MkdirTemp("/tmp", "hd")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(root)
		e := newEnvAt(t, root)
		if rolling != "" {
			e.stop()
			e.cfg.RollingUpdateUID = rolling
			e.start(t)
		}
		if err := e.drv.Healthy(e.ctx()); err != nil {
			t.Fatalf("rolling=%q: healthy plugin reported %v", rolling, err)
		}
		if err := os.Remove(e.drv.draSocket()); err != nil {
			t.Fatal(err)
		}
		if err := e.drv.Healthy(e.ctx()); err == nil || !strings.Contains(err.Error(), "DRA socket") {
			t.Errorf("rolling=%q: without the DRA socket: %v", rolling, err)
		}
		if err := os.Remove(e.drv.registrationSocket()); err != nil {
			t.Fatal(err)
		}
		if err := e.drv.Healthy(e.ctx()); err == nil || !strings.Contains(err.Error(), "registration") {
			t.Errorf("rolling=%q: without the registration socket: %v", rolling, err)
		}
		e.stop()
	}
}

// rollingEnv starts a plugin instance on root's node state as the pod uid,
// the way the chart runs it (kubeletplugin.RollingUpdate: calls serialised
// by the helper's file lock), reachable over its own sockets.
func rollingEnv(t testing.TB, root string, uid types.UID, claims ...*resourceapi.ResourceClaim) *env {
	return newEnvConfigured(t, root, func(cfg *Config) { cfg.RollingUpdateUID = uid }, claims...)
}

// prepareAlternately prepares every other claim through each instance,
// both at once, in goroutines counted by wg.
func prepareAlternately(t *testing.T, wg *sync.WaitGroup, claims []*resourceapi.ResourceClaim, instances ...*env) {
	for i, e := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := i; j < len(claims); j += len(instances) {
				if r := e.prepare(t, claims[j])[string(claims[j].UID)]; r.Error != "" {
					t.Errorf("instance %d: %s", i, r.Error)
				}
			}
		}()
	}
}

// TestRollingUpdateSideBySide: the old and the new plugin pod serve the
// same node at once over the kubelet's sockets, both prepare and
// unprepare, then the old one goes away; no checkpoint update is lost.
func TestRollingUpdateSideBySide(t *testing.T) {
	var claims []*resourceapi.ResourceClaim
	for i := 0; i < 24; i++ {
		claims = append(claims, newClaim(fmt.Sprintf("r%d", i), []share{{"gpu", i % 3, "100Mi", "2"}}))
	}
	root, err := os.MkdirTemp("/tmp", "hd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	old := rollingEnv(t, root, "pod-old", claims...)
	// The new pod starts while the old one serves.
	niu := rollingEnv(t, root, "pod-new", claims...)
	var wg sync.WaitGroup
	prepareAlternately(t, &wg, claims, old, niu)
	wg.Wait()
	// The new instance unprepares a claim the old one prepared, and the
	// old one goes away.
	niu.unprepare(t, claims[0])
	old.stop()
	niu.restart(t) // reads the checkpoint from disk
	recs := niu.drv.store.Claims()
	if len(recs) != len(claims)-1 {
		t.Fatalf("checkpoint holds %d claims, want %d: an update was lost", len(recs), len(claims)-1)
	}
	want := map[int]string{0: "14", 1: "16", 2: "16"} // 2 cores each; claim r0 (GPU 0) gone
	for gpu, w := range want {
		if r := niu.reserved(t, gpu); r != w {
			t.Errorf("GPU %d reserved=%s, want %s", gpu, r, w)
		}
	}
	niu.unprepare(t, claims[1:]...)
	assertClean(t, niu)
}

// TestRollingUpdateSwitchedOn: an upgrade that turns rolling updates on.
// The old instance runs without a pod UID (the helper takes no lock for
// it), the new one with one; both serve at once, and the old one's periodic
// reconcile (orphan sweep, reservation files) runs meanwhile. Nothing the
// new instance prepared may be swept, no checkpoint update may be lost, and
// the reservation files must count every claim.
func TestRollingUpdateSwitchedOn(t *testing.T) {
	var claims []*resourceapi.ResourceClaim
	for i := 0; i < 16; i++ {
		claims = append(claims, newClaim(fmt.Sprintf("s%d", i), []share{{"gpu", i % 3, "100Mi", "2"}}))
	}
	root, err := os.MkdirTemp("/tmp", "hd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	old := newEnvAt(t, root, claims...)
	niu := rollingEnv(t, root, "pod-new", claims...)
	var wg sync.WaitGroup
	prepareAlternately(t, &wg, claims, old, niu)
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // the old instance's cleanup loop, ticking fast
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := old.drv.withInstanceLock(func() error { return old.drv.reconcile(old.ctx()) }); err != nil {
				t.Errorf("old instance's reconcile: %v", err)
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err := old.drv.withInstanceLock(func() error { return old.drv.reconcile(old.ctx()) }); err != nil {
		t.Fatal(err)
	}
	for _, c := range claims {
		if got := old.specGPUNodes(t, string(c.UID)); got == nil {
			t.Errorf("claim %s lost its CDI spec to the old instance's sweep", c.Name)
		}
	}
	want := map[int]string{0: "12", 1: "10", 2: "10"} // 2 cores each: 6, 5 and 5 claims
	for gpu, w := range want {
		if r := old.reserved(t, gpu); r != w {
			t.Errorf("GPU %d reserved=%s after the old instance's reconcile, want %s", gpu, r, w)
		}
	}
	old.stop()
	niu.restart(t) // reads the checkpoint from disk
	if recs := niu.drv.store.Claims(); len(recs) != len(claims) {
		t.Fatalf("checkpoint holds %d claims, want %d: an update was lost", len(recs), len(claims))
	}
	niu.unprepare(t, claims...)
	assertClean(t, niu)
}

// lostGPUs lists "claim/uuid" for every prepared claim's GPU the metrics
// report lost.
func lostGPUs(d *Driver) []string {
	var out []string
	for _, c := range d.PreparedClaims() {
		for _, g := range c.GPUs {
			if g.Lost {
				out = append(out, c.Name+"/"+g.UUID)
			}
		}
	}
	slices.Sort(out)
	return out
}
