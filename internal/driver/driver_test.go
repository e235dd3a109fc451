package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/audit"
)

const (
	fromClass = resourceapi.AllocationConfigSourceClass
	fromClaim = resourceapi.AllocationConfigSourceClaim
)

func cfgJSON(fields string) string {
	s := `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig"`
	if fields != "" {
		s += "," + fields
	}
	return s + "}"
}

func TestPrepareGood(t *testing.T) {
	g := func(i int) string { return testGPUs[i].UUID }
	for _, tc := range []struct {
		name    string
		claim   *resourceapi.ResourceClaim
		wantEnv map[string]string
		// wantGPU[i] is the quota index the i-th result must map to.
		wantIndex []int
	}{
		{
			name:      "single GPU share",
			claim:     newClaim("single", []share{{"gpu", 0, "4Gi", "30"}}),
			wantEnv:   map[string]string{"CUDA_DEVICE_MEMORY_LIMIT_0": strconv.FormatInt(4*gib, 10), "CUDA_DEVICE_SM_LIMIT_0": "30", "VGPU_DEVICE_UUIDS": g(0), "VGPU_COMPUTE_POLICY": "hard", "LIBCUDA_LOG_LEVEL": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "GPU_CORE_UTILIZATION_POLICY": "default", "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/run/hami-dra/claim/vgpu.shr", "VGPU_GPU_STATE_DIR": "/run/hami-dra/gpus"},
			wantIndex: []int{0},
		},
		{
			// Allocation order a, b, c; PCI order c (01), b (41), a (81).
			name:  "multi GPU quotas in PCI order",
			claim: newClaim("multi", []share{{"g0", 0, "1Gi", "10"}, {"g1", 1, "2Gi", "20"}, {"g2", 2, "3Gi", "30"}}),
			wantEnv: map[string]string{
				"VGPU_DEVICE_UUIDS":          g(2) + "," + g(1) + "," + g(0),
				"CUDA_DEVICE_MEMORY_LIMIT_0": strconv.FormatInt(3*gib, 10), "CUDA_DEVICE_SM_LIMIT_0": "30",
				"CUDA_DEVICE_MEMORY_LIMIT_1": strconv.FormatInt(2*gib, 10), "CUDA_DEVICE_SM_LIMIT_1": "20",
				"CUDA_DEVICE_MEMORY_LIMIT_2": strconv.FormatInt(1*gib, 10), "CUDA_DEVICE_SM_LIMIT_2": "10",
			},
			wantIndex: []int{2, 1, 0},
		},
		{
			name:      "two shares of one GPU in one claim are summed",
			claim:     newClaim("twoshares", []share{{"a", 1, "1Gi", "10"}, {"b", 1, "2Gi", "15"}}),
			wantEnv:   map[string]string{"CUDA_DEVICE_MEMORY_LIMIT_0": strconv.FormatInt(3*gib, 10), "CUDA_DEVICE_SM_LIMIT_0": "25", "VGPU_DEVICE_UUIDS": g(1)},
			wantIndex: []int{0, 0},
		},
		{
			name:      "whole GPU",
			claim:     newClaim("whole", []share{{"gpu", 2, "16Gi", "100"}}),
			wantEnv:   map[string]string{"CUDA_DEVICE_MEMORY_LIMIT_0": strconv.FormatInt(16*gib, 10), "CUDA_DEVICE_SM_LIMIT_0": "100"},
			wantIndex: []int{0},
		},
		{
			name: "claim config wins over class config, later wins over earlier",
			claim: newClaim("precedence", []share{{"gpu", 0, "1Gi", "10"}},
				opaque{fromClaim, nil, cfgJSON(`"logLevel":3`)},
				opaque{fromClass, nil, cfgJSON(`"computePolicy":"HardCap","logLevel":0`)},
				opaque{fromClaim, []string{"gpu"}, cfgJSON(`"computePolicy":"BestEffort"`)},
				opaque{fromClaim, []string{"other"}, cfgJSON(`"logLevel":4`)},
			),
			wantEnv:   map[string]string{"VGPU_COMPUTE_POLICY": "besteffort", "LIBCUDA_LOG_LEVEL": "3"},
			wantIndex: []int{0},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.claim)
			res := e.prepare(t, tc.claim)[string(tc.claim.UID)]
			if res.Error != "" {
				t.Fatalf("prepare: %s", res.Error)
			}
			env := e.specEnv(t, string(tc.claim.UID))
			for k, v := range tc.wantEnv {
				if env[k] != v {
					t.Errorf("%s=%q, want %q", k, env[k], v)
				}
			}
			if len(res.Devices) != len(tc.wantIndex) {
				t.Fatalf("%d devices, want %d", len(res.Devices), len(tc.wantIndex))
			}
			for i, d := range res.Devices {
				r := tc.claim.Status.Allocation.Devices.Results[i]
				if d.DeviceName != r.Device || d.RequestNames[0] != r.Request || d.ShareId == nil || *d.ShareId != string(*r.ShareID) {
					t.Errorf("device %d = %+v, want %s/%s", i, d, r.Request, r.Device)
				}
				wantGPU := "hami.io/vgpu=claim-" + string(tc.claim.UID) + "-gpu" + strconv.Itoa(tc.wantIndex[i])
				uuid := testGPUs[gpuOfDevice(r.Device)].UUID
				if !slices.Contains(d.CdiDeviceIds, wantGPU) || !slices.Contains(d.CdiDeviceIds, "nvidia.com/gpu="+uuid) || !slices.Contains(d.CdiDeviceIds, "hami.io/vgpu=claim-"+string(tc.claim.UID)) {
					t.Errorf("device %d CDI IDs %v, want %s and the toolkit's", i, d.CdiDeviceIds, wantGPU)
				}
			}
			// Idempotent: the same answer again, and a vanished spec comes back.
			os.Remove(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_"+string(tc.claim.UID)+".json"))
			again := e.prepare(t, tc.claim)[string(tc.claim.UID)]
			if again.Error != "" || len(again.Devices) != len(res.Devices) || again.Devices[0].CdiDeviceIds[1] != res.Devices[0].CdiDeviceIds[1] {
				t.Fatalf("second prepare differs: %+v", again)
			}
			if got := e.specEnv(t, string(tc.claim.UID)); len(got) != len(env) {
				t.Fatalf("rewritten spec differs")
			}
			e.unprepare(t, tc.claim)
			e.unprepare(t, tc.claim) // unknown claim: fine
			assertClean(t, e)
		})
	}
}

func gpuOfDevice(name string) int {
	for i := range testGPUs {
		if devName(i) == name {
			return i
		}
	}
	return -1
}

func assertClean(t *testing.T, e *env) {
	t.Helper()
	if entries, _ := os.ReadDir(e.cfg.CDIRoot); len(entries) != 0 {
		t.Errorf("CDI root not empty: %v", entries)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.cfg.StateDir, "claims")); len(entries) != 0 {
		t.Errorf("claim dirs left: %v", entries)
	}
	for i := range testGPUs {
		if r := e.reserved(t, i); r != "0" {
			t.Errorf("GPU %d reserved=%s, want 0", i, r)
		}
	}
}

func TestTwoClaimsShareOneGPU(t *testing.T) {
	a := newClaim("a", []share{{"gpu", 1, "4Gi", "30"}})
	b := newClaim("b", []share{{"gpu", 1, "8Gi", "50"}})
	e := newEnv(t, a, b)
	res := e.prepare(t, a, b)
	for uid, r := range res {
		if r.Error != "" {
			t.Fatalf("%s: %s", uid, r.Error)
		}
	}
	if r := e.reserved(t, 1); r != "80" {
		t.Fatalf("reserved=%s, want 80", r)
	}
	if pc := e.drv.PreparedClaims(); len(pc) != 2 || pc[0].GPUs[0].UUID != testGPUs[1].UUID {
		t.Fatalf("PreparedClaims = %+v", pc)
	}
	if ea, eb := e.specEnv(t, "uid-a"), e.specEnv(t, "uid-b"); ea["CUDA_DEVICE_SM_LIMIT_0"] != "30" || eb["CUDA_DEVICE_SM_LIMIT_0"] != "50" {
		t.Fatalf("limits a=%v b=%v", ea, eb)
	}
	// Each claim has its own writable directory.
	st, err := os.Stat(filepath.Join(e.cfg.StateDir, "claims", "uid-a"))
	if err != nil || st.Mode().Perm() != 0o777 || st.Mode()&os.ModeSticky == 0 {
		t.Fatalf("claim dir: %v %v, want drwxrwxrwt", st.Mode(), err)
	}
	e.unprepare(t, a)
	if r := e.reserved(t, 1); r != "50" {
		t.Fatalf("reserved=%s after unprepare of a, want 50", r)
	}
	e.unprepare(t, b)
	assertClean(t, e)
}

func TestBadClaimsFailAlone(t *testing.T) {
	good := newClaim("good", []share{{"gpu", 0, "1Gi", "10"}})
	for _, tc := range []struct {
		claim   *resourceapi.ResourceClaim
		wantErr string
	}{
		{newClaim("unknownfield", []share{{"gpu", 0, "1Gi", "10"}}, opaque{fromClaim, nil, cfgJSON(`"gpucores":5`)}), `unknown field "gpucores"`},
		{newClaim("wrongkind", []share{{"gpu", 0, "1Gi", "10"}}, opaque{fromClass, nil, `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"GpuConfig"}`}), `unsupported kind "GpuConfig"`},
		{newClaim("badpolicy", []share{{"gpu", 0, "1Gi", "10"}}, opaque{fromClaim, nil, cfgJSON(`"computePolicy":"Fair"`)}), `computePolicy: unsupported value "Fair", allowed values: "HardCap", "BestEffort"`},
		{newClaim("badloglevel", []share{{"gpu", 0, "1Gi", "10"}}, opaque{fromClaim, nil, cfgJSON(`"logLevel":9`)}), `logLevel: 9 out of range`},
		{newClaim("toomuchmem", []share{{"gpu", 0, "17Gi", "10"}}), `memory 17Gi out of range`},
		{newClaim("toomanycores", []share{{"gpu", 0, "1Gi", "101"}}), `cores 101 out of range`},
		{newClaim("fractionalcores", []share{{"gpu", 0, "1Gi", "500m"}}), `cores 500m out of range`},
		{newClaim("sumtoolarge", []share{{"a", 0, "1Gi", "60"}, {"b", 0, "1Gi", "60"}}), `add up to 120 cores`},
		{newClaim("nosuchdevice", []share{{"gpu", -1, "1Gi", "10"}}), `device "gpu-does-not-exist" (pool "node-a") does not exist on node node-a`},
		{newClaim("conflictingconfigs", []share{{"a", 0, "1Gi", "10"}, {"b", 1, "1Gi", "10"}}, opaque{fromClaim, []string{"b"}, cfgJSON(`"computePolicy":"BestEffort"`)}), `resolve to different VgpuConfig settings`},
	} {
		t.Run(tc.claim.Name, func(t *testing.T) {
			e := newEnv(t, good, tc.claim)
			res := e.prepare(t, good, tc.claim)
			if r := res[string(good.UID)]; r.Error != "" {
				t.Fatalf("good claim failed: %s", r.Error)
			}
			bad := res[string(tc.claim.UID)]
			if !strings.Contains(bad.Error, tc.wantErr) || !strings.Contains(bad.Error, "default/"+tc.claim.Name) {
				t.Fatalf("error %q, want it to name the claim and contain %q", bad.Error, tc.wantErr)
			}
			if _, err := os.Stat(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_"+string(tc.claim.UID)+".json")); err == nil {
				t.Fatal("failed claim left a CDI spec")
			}
			if _, err := os.Stat(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_"+string(good.UID)+".json")); err != nil {
				t.Fatal("good claim lost its CDI spec")
			}
		})
	}
}

func TestCleanupUnpreparesDeletedAndRecreatedClaims(t *testing.T) {
	gone := newClaim("gone", []share{{"gpu", 0, "1Gi", "10"}})
	recreated := newClaim("recreated", []share{{"gpu", 0, "1Gi", "20"}})
	kept := newClaim("kept", []share{{"gpu", 0, "1Gi", "30"}})
	e := newEnv(t, gone, recreated, kept)
	for _, r := range e.prepare(t, gone, recreated, kept) {
		if r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	ctx := context.Background()
	claims := e.client.ResourceV1().ResourceClaims("default")
	if err := claims.Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := claims.Delete(ctx, "recreated", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again := recreated.DeepCopy()
	again.UID = types.UID("uid-recreated-2")
	again.ResourceVersion = ""
	if _, err := claims.Create(ctx, again, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The plugin was down meanwhile.
	e.restart(t)
	if n := e.drv.cleanup(klog.NewContext(ctx, klog.Background())); n != 2 {
		t.Fatalf("cleanup removed %d claims, want 2", n)
	}
	if r := e.reserved(t, 0); r != "30" {
		t.Fatalf("reserved=%s, want 30 (only kept)", r)
	}
	entries, _ := os.ReadDir(e.cfg.CDIRoot)
	if len(entries) != 1 || !strings.Contains(entries[0].Name(), "uid-kept") {
		t.Fatalf("CDI specs left: %v", entries)
	}
}

func TestRebootRebuildsSpecsAndResetsAccounting(t *testing.T) {
	c := newClaim("survivor", []share{{"gpu", 0, "1Gi", "10"}})
	e := newEnv(t, c)
	if r := e.prepare(t, c)[string(c.UID)]; r.Error != "" {
		t.Fatal(r.Error)
	}
	region := filepath.Join(e.cfg.StateDir, "claims", string(c.UID), "vgpu.shr")
	mustWrite(t, region, "stale")
	e.stop()
	// Reboot: tmpfs CDI root is empty, boot ID changed.
	os.RemoveAll(e.cfg.CDIRoot)
	mustWrite(t, e.cfg.BootIDPath, "boot-2\n")
	e.start(t)
	if _, err := os.Stat(region); err == nil {
		t.Fatal("accounting region of the previous boot survived")
	}
	if env := e.specEnv(t, string(c.UID)); env["CUDA_DEVICE_SM_LIMIT_0"] != "10" {
		t.Fatalf("spec not rebuilt: %v", env)
	}
	e.unprepare(t, c)
	assertClean(t, e)
}

func TestOverCommitAcrossClaimsIsRefused(t *testing.T) {
	a := newClaim("first", []share{{"gpu", 1, "10Gi", "60"}})
	b := newClaim("cores", []share{{"gpu", 1, "1Gi", "50"}})
	c := newClaim("memory", []share{{"gpu", 1, "7Gi", "10"}})
	e := newEnv(t, a, b, c)
	if r := e.prepare(t, a)[string(a.UID)]; r.Error != "" {
		t.Fatal(r.Error)
	}
	res := e.prepare(t, b, c)
	if !strings.Contains(res[string(b.UID)].Error, "over-committed: prepared claims hold 60 cores") {
		t.Errorf("cores: %q", res[string(b.UID)].Error)
	}
	if !strings.Contains(res[string(c.UID)].Error, "over-committed: prepared claims hold 10737418240 bytes") {
		t.Errorf("memory: %q", res[string(c.UID)].Error)
	}
	if r := e.reserved(t, 1); r != "60" {
		t.Fatalf("reserved=%s, want 60", r)
	}
}

// TestRollingUpdateInstancesShareState: during a rolling update the new
// instance unprepares a claim the old one prepared after the new one
// started; it must re-read the checkpoint.
func TestRollingUpdateInstancesShareState(t *testing.T) {
	c := newClaim("rolling", []share{{"gpu", 0, "1Gi", "10"}})
	e := newEnv(t, c)
	e.stop()
	ctx := klog.NewContext(context.Background(), klog.Background())
	oldCfg, newCfg := e.cfg, e.cfg
	oldCfg.RollingUpdateUID, newCfg.RollingUpdateUID = "pod-old", "pod-new"
	oldDrv, err := Start(ctx, oldCfg, testGPUs)
	if err != nil {
		t.Fatal(err)
	}
	defer oldDrv.Stop()
	newDrv, err := Start(ctx, newCfg, testGPUs)
	if err != nil {
		t.Fatal(err)
	}
	defer newDrv.Stop()
	res, err := oldDrv.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil || res[c.UID].Err != nil {
		t.Fatalf("prepare on old instance: %v %v", err, res[c.UID].Err)
	}
	ures, err := newDrv.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: c.UID}})
	if err != nil || ures[c.UID] != nil {
		t.Fatalf("unprepare on new instance: %v %v", err, ures[c.UID])
	}
	assertClean(t, e)
}

// TestConcurrentCallsPrepareEachClaimOnce: two overlapping calls with the
// same 60 claims (the kubelet retrying while the first is still running)
// prepare every claim once, with the same answer.
func TestConcurrentCallsPrepareEachClaimOnce(t *testing.T) {
	var claims []*resourceapi.ResourceClaim
	for i := 0; i < 60; i++ {
		claims = append(claims, newClaim("p"+strconv.Itoa(i), []share{{"gpu", i % 3, "100Mi", "1"}}))
	}
	e := newEnv(t, claims...)
	results := make(chan map[string]string, 2)
	for range 2 {
		go func() {
			out := map[string]string{}
			for uid, r := range e.prepare(t, claims...) {
				if r.Error != "" {
					out[uid] = "error: " + r.Error
					continue
				}
				out[uid] = strings.Join(r.Devices[0].CdiDeviceIds, ",")
			}
			results <- out
		}()
	}
	a, b := <-results, <-results
	for uid, v := range a {
		if strings.HasPrefix(v, "error") || b[uid] != v {
			t.Fatalf("claim %s: %q vs %q", uid, v, b[uid])
		}
	}
	for i := range testGPUs {
		if r := e.reserved(t, i); r != "20" {
			t.Errorf("GPU %d reserved=%s, want 20", i, r)
		}
	}
	e.unprepare(t, claims...)
	assertClean(t, e)
}

// TestAuditClaims: the node audit gets each prepared claim's quotas, its
// memoryAuditAction (Kill unless the claim's config says Warn) and whether
// its share is a hard cap, from the checkpoint.
func TestAuditClaims(t *testing.T) {
	plain := newClaim("plain", []share{{"gpu", 0, "1Gi", "10"}})
	warn := newClaim("warn", []share{{"gpu", 1, "2Gi", "20"}},
		opaque{fromClaim, nil, cfgJSON(`"memoryAuditAction":"Warn","computePolicy":"BestEffort"`)})
	e := newEnv(t, plain, warn)
	for _, c := range []*resourceapi.ResourceClaim{plain, warn} {
		if res := e.prepare(t, c)[string(c.UID)]; res.Error != "" {
			t.Fatalf("prepare %s: %s", c.Name, res.Error)
		}
	}
	got := map[string]audit.Claim{}
	for _, c := range e.drv.AuditClaims() {
		got[c.Name] = c
	}
	if c := got["plain"]; c.MemoryAction != audit.ActionKill || len(c.GPUs) != 1 || c.GPUs[0].MemoryBytes != gib || c.GPUs[0].Cores != 10 || !c.GPUs[0].HardCap || c.GPUs[0].UUID != testGPUs[0].UUID {
		t.Errorf("plain: %+v", c)
	}
	if c := got["warn"]; c.MemoryAction != audit.ActionWarn || len(c.GPUs) != 1 || c.GPUs[0].MemoryBytes != 2*gib || c.GPUs[0].HardCap {
		t.Errorf("warn (best effort): %+v", c)
	}
}
