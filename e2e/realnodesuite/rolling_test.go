package realnodesuite

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/e2e/cluster"
	"github.com/hami-dra/hami-dra/e2e/plugin"
)

// TestRealNodeRollingUpdate does on the real kubelet what the chart's
// DaemonSet update does with kubeletPlugin.rollingUpdate (maxSurge 1): a
// new plugin instance with --pod-uid starts beside the running one, both
// serve for a while, then the old one is stopped. Twice:
//   - off to on: the node's plugin runs without --pod-uid (rollingUpdate
//     off), the new instance with it;
//   - on to on: two instances with --pod-uid.
//
// Pods are created while both instances serve, concurrently. Every claim,
// whichever instance prepared it, must be in the checkpoint and prepared
// (CDI spec, claim directory, quota inside); after the last surge all of
// them are unprepared by the instance that did not prepare them, and the
// checkpoint ends empty: no checkpoint update was lost.
func TestRealNodeRollingUpdate(t *testing.T) {
	needRealNode(t)
	ns := newNamespace(t, "real-rolling")
	createTemplate(t, ns, "gpu-4gi", "4Gi", "")
	var pods []*corev1.Pod
	start := func(names ...string) {
		t.Helper()
		var wg sync.WaitGroup
		created := make([]*corev1.Pod, len(names))
		for i, name := range names {
			created[i] = createPod(t, realPod(ns, name, "gpu-4gi", container("work", `quota 1024 4096; exec sleep 1000000`)))
		}
		for i := range created {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				created[i] = waitReady(t, ns, created[i].Name, 2*time.Minute)
			}(i)
		}
		wg.Wait()
		for _, p := range created {
			log := waitLog(t, p, "work", "alloc 4096 MiB", time.Minute)
			wantAll(t, p.Name+"'s log", log, "alloc 1024 MiB: CUDA_SUCCESS", "alloc 4096 MiB: CUDA_ERROR_OUT_OF_MEMORY")
		}
		pods = append(pods, created...)
	}

	start("before")

	// off -> on
	surge1 := startInstance(t, "surge-uid-1")
	start("both-1a", "both-1b", "both-1c")
	if err := rnode.Plugin.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop the old instance: %v", err)
	}
	start("after-1")

	// on -> on
	surge2 := startInstance(t, "surge-uid-2")
	start("both-2a", "both-2b")
	if err := surge1.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop the first surge instance: %v", err)
	}
	start("after-2")

	// Every claim prepared by any of the three instances is recorded and
	// prepared on the host.
	var uids []string
	for _, p := range pods {
		uid := string(podClaim(t, p).UID)
		uids = append(uids, uid)
		for _, path := range []string{
			filepath.Join(rnode.Node.Config().CDIDir, cdi.SpecFileName(uid)),
			filepath.Join(rnode.Plugin.Config().StateDir, "claims", uid),
		} {
			if _, err := os.Stat(path); err != nil {
				t.Errorf("pod %s's claim: %v", p.Name, err)
			}
		}
	}
	slices.Sort(uids)
	if got := checkpointClaims(t); !slices.Equal(got, uids) {
		t.Errorf("checkpoint holds claims %v, want the %d pods' %v", got, len(uids), uids)
	}

	// The last instance unprepares them all, those the others prepared too.
	ctx := testContext(t, 2*time.Minute)
	for _, p := range pods {
		if err := client().CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	eventually(t, 2*time.Minute, "every claim unprepared", func(ctx context.Context) (bool, string) {
		left := checkpointClaims(t)
		specs, _ := filepath.Glob(filepath.Join(rnode.Node.Config().CDIDir, cdi.SpecFileName("*")))
		return len(left) == 0 && len(specs) == 0, fmt.Sprintf("checkpoint %v, specs %v", left, specs)
	})
	if err := surge2.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop the second surge instance: %v", err)
	}
}

// startInstance starts another plugin instance on the real node, with the
// node plugin's flags, --pod-uid=uid and its own metrics port and log; it
// is stopped when the test ends, after which the node's own instance is
// running again (the next tests use it).
func startInstance(t *testing.T, uid string) *plugin.Process {
	t.Helper()
	cfg := rnode.Plugin.Config()
	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.ExtraArgs = append(slices.Clone(cfg.ExtraArgs), "--pod-uid="+uid, fmt.Sprintf("--metrics-port=%d", port))
	cfg.LogFile = filepath.Join(filepath.Dir(cfg.LogFile), "plugin-"+uid+".log")
	p, err := plugin.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("stop instance %s: %v", uid, err)
		}
		if !rnode.Plugin.Running() {
			if err := rnode.Plugin.Start(); err != nil {
				t.Errorf("restart the node's plugin: %v", err)
				return
			}
			if err := env.WaitForSlices(context.Background(), realNodeName, time.Minute); err != nil {
				t.Error(err)
			}
		}
	})
	// Registered with the kubelet: its registration socket carries the UID.
	reg := filepath.Join(rnode.Node.RegistrarDir(),
		kubeletplugin.RollingUpdateRegistrarSocketFile(rnode.Node.RegistrarDir(), plugin.DriverName, types.UID(uid)))
	eventually(t, time.Minute, "instance "+uid+" registered", func(ctx context.Context) (bool, string) {
		if !p.Running() {
			t.Fatalf("instance %s exited (log %s)", uid, cfg.LogFile)
		}
		_, err := os.Stat(reg)
		return err == nil, fmt.Sprint(err)
	})
	return p
}

// checkpointClaims returns the UIDs of the claims in the plugin's
// checkpoint, sorted.
func checkpointClaims(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(rnode.Plugin.Config().StateDir, "checkpoint.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cp struct {
		Claims map[string]json.RawMessage `json:"claims"`
	}
	if err := json.Unmarshal(data, &cp); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	uids := []string{}
	for uid := range cp.Claims {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}
