package suite

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/hami-dra/hami-dra/cdi"
)

// TestBadConfig: a claim whose opaque config the plugin rejects leaves its
// pod not running, with an event that names the bad field; other pods on
// the node are not affected.
func TestBadConfig(t *testing.T) {
	ns := newNamespace(t, "bad-config")
	cases := map[string]struct {
		config map[string]any
		want   []string
	}{
		"bad-value": {
			config: map[string]any{"apiVersion": "vgpu.hami.io/v1alpha1", "kind": "VgpuConfig", "computePolicy": "Hard"},
			want:   []string{"computePolicy", "HardCap", "BestEffort"},
		},
		"unknown-field": {
			config: map[string]any{"apiVersion": "vgpu.hami.io/v1alpha1", "kind": "VgpuConfig", "memoryLimit": "10Gi"},
			want:   []string{"memoryLimit"},
		},
	}
	for name, tc := range cases {
		createTemplate(t, ns, name, claimSpec([]gpuRequest{{name: "gpu", memory: "4Gi"}}, nil, tc.config))
		createPod(t, ns, name, podSpec(name, "node-mixed", "exec sleep 3600"))
	}
	createTemplate(t, ns, "good", claimSpec([]gpuRequest{{name: "gpu", memory: "4Gi"}}, nil, nil))
	good := createPod(t, ns, "good", podSpec("good", "node-mixed", "exec sleep 3600"))

	for name, tc := range cases {
		eventually(t, time.Minute, "event for pod "+name, func(ctx context.Context) (bool, string) {
			events, err := client().CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String()})
			if err != nil {
				return false, err.Error()
			}
			var seen []string
			for _, e := range events.Items {
				if e.Reason != "FailedPrepareDynamicResources" {
					seen = append(seen, e.Reason)
					continue
				}
				ok := true
				for _, w := range tc.want {
					ok = ok && strings.Contains(e.Message, w)
				}
				if ok {
					t.Logf("pod %s: event %s: %s", name, e.Reason, e.Message)
					return true, ""
				}
				seen = append(seen, e.Message)
			}
			return false, strings.Join(seen, "\n")
		})
		p, err := client().CoreV1().Pods(ns).Get(testContext(t, 10*time.Second), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodRunning {
			t.Errorf("pod %s with a bad config is running", name)
		}
	}
	waitRunning(t, ns, good.Name, time.Minute)
}

// TestPluginKilled: the plugin is killed with SIGKILL while pods run and is
// restarted. Running pods keep running with their files, a pod deleted
// while it was down is unprepared once it is back, and a pod created while
// it was down is prepared.
func TestPluginKilled(t *testing.T) {
	ns := newNamespace(t, "plugin-kill")
	node := env.Node("node-h100")
	createTemplate(t, ns, "gpu-8gi", claimSpec([]gpuRequest{{name: "gpu", memory: "8Gi", cores: "10"}}, nil, nil))
	stays := waitRunning(t, ns, createPod(t, ns, "stays", podSpec("gpu-8gi", node.Spec.Name, "exec sleep 3600")).Name, time.Minute)
	goes := waitRunning(t, ns, createPod(t, ns, "goes", podSpec("gpu-8gi", node.Spec.Name, "exec sleep 3600")).Name, time.Minute)
	staysClaim, err := podClaim(testContext(t, 10*time.Second), stays)
	if err != nil {
		t.Fatal(err)
	}
	goesClaim, err := podClaim(testContext(t, 10*time.Second), goes)
	if err != nil {
		t.Fatal(err)
	}
	staysStarted := stays.Status.ContainerStatuses[0].State.Running.StartedAt

	if err := node.Plugin.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("plugin of %s killed", node.Spec.Name)
	deletePod(t, ns, goes.Name)
	createPod(t, ns, "new", podSpec("gpu-8gi", node.Spec.Name, "echo SM=$CUDA_DEVICE_SM_LIMIT_0; exec sleep 3600"))
	// While the plugin is down the deleted pod cannot be unprepared, so it
	// stays (its GPU share is not handed out before the driver has let go).
	time.Sleep(3 * time.Second)
	if _, err := client().CoreV1().Pods(ns).Get(testContext(t, 10*time.Second), goes.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("pod %s is gone although the plugin could not unprepare it: %v", goes.Name, err)
	}

	if err := node.Plugin.Start(); err != nil {
		t.Fatal(err)
	}
	newPod := waitRunning(t, ns, "new", 2*time.Minute)
	waitLog(t, newPod, "SM=10", 30*time.Second)
	waitGone(t, ns, goes.Name, time.Minute)
	eventually(t, time.Minute, "claim of the deleted pod released", func(ctx context.Context) (bool, string) {
		_, err := client().ResourceV1().ResourceClaims(ns).Get(ctx, goesClaim.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), "claim still there"
	})
	cdiRoot := node.Plugin.Config().CDIRoot
	if _, err := os.Stat(filepath.Join(cdiRoot, cdi.SpecFileName(string(goesClaim.UID)))); !os.IsNotExist(err) {
		t.Errorf("CDI spec of the deleted pod's claim: %v, want it removed", err)
	}

	p, err := client().CoreV1().Pods(ns).Get(testContext(t, 10*time.Second), stays.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !isRunning(p) || !p.Status.ContainerStatuses[0].State.Running.StartedAt.Equal(&staysStarted) || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("pod %s did not keep running through the plugin's restart: %s", stays.Name, describePod(p))
	}
	if _, err := os.Stat(filepath.Join(cdiRoot, cdi.SpecFileName(string(staysClaim.UID)))); err != nil {
		t.Errorf("CDI spec of the running pod's claim: %v", err)
	}
}

// TestAgentRestart: a kubelet restart (the node agent here) re-prepares
// the claims of running pods; the plugin answers with the same devices and
// rewrites a CDI spec that vanished (as after a reboot, when /var/run/cdi is
// on tmpfs), and the pods keep running.
func TestAgentRestart(t *testing.T) {
	ns := newNamespace(t, "agent-restart")
	node := env.Node("node-a100")
	createTemplate(t, ns, "gpu-4gi", claimSpec([]gpuRequest{{name: "gpu", memory: "4Gi"}}, nil, nil))
	pod := waitRunning(t, ns, createPod(t, ns, "runs", podSpec("gpu-4gi", node.Spec.Name, "exec sleep 3600")).Name, time.Minute)
	claim, err := podClaim(testContext(t, 10*time.Second), pod)
	if err != nil {
		t.Fatal(err)
	}
	devices := node.Agent().ContainerCDIDevices(pod, "work")
	started := pod.Status.ContainerStatuses[0].State.Running.StartedAt
	specPath := filepath.Join(node.Plugin.Config().CDIRoot, cdi.SpecFileName(string(claim.UID)))
	before, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}

	for _, forget := range []bool{false, true} {
		if forget {
			// The kubelet's own checkpoint is gone too, so its DRA manager
			// must call NodePrepareResources again for a prepared claim.
			if err := os.Remove(specPath); err != nil {
				t.Fatal(err)
			}
		}
		restarted := time.Now()
		if err := env.RestartAgent(node.Spec.Name, forget); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "CDI spec of the running pod's claim present", func(ctx context.Context) (bool, string) {
			_, err := os.Stat(specPath)
			return err == nil, "missing"
		})
		after, err := os.ReadFile(specPath)
		if err != nil {
			t.Fatal(err)
		}
		if string(after) != string(before) {
			t.Errorf("forget=%v: re-prepared CDI spec differs:\nbefore %s\nafter  %s", forget, before, after)
		}
		p := waitRunning(t, ns, pod.Name, time.Minute)
		t.Logf("forget=%v: agent restarted and slices republished after %v; claim re-prepared, pod running", forget, time.Since(restarted).Round(100*time.Millisecond))
		if !p.Status.ContainerStatuses[0].State.Running.StartedAt.Equal(&started) {
			t.Errorf("forget=%v: container restarted: %s", forget, describePod(p))
		}
		if got := node.Agent().ContainerCDIDevices(p, "work"); strings.Join(got, ",") != strings.Join(devices, ",") {
			t.Errorf("forget=%v: CDI devices %v, want %v", forget, got, devices)
		}
	}
	// New pods still prepare on the restarted agent.
	waitRunning(t, ns, createPod(t, ns, "after", podSpec("gpu-4gi", node.Spec.Name, "exec sleep 3600")).Name, time.Minute)
	t.Log("a new pod runs on the restarted agent")
}
