package realnodesuite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hami-dra/hami-dra/e2e/plugin"
)

// taintKey is the plugin's health taint on a sick GPU's device.
const taintKey = plugin.DriverName + "/unhealthy"

// TestRealNodeGPUHealth drives simulated GPU faults through the plugin's
// event injection (the simulated GPUs' stand-in for NVML events) and
// checks what the cluster sees, end to end through the real kubelet:
//   - XID 13 (an application error) is counted and changes nothing;
//   - XID 48 (double-bit ECC) taints the GPU's device in the ResourceSlice
//     and the kubelet shows the pod using it as Unhealthy in its status
//     (KEP-4680, fed by the plugin's WatchHealthStatus stream), while the
//     pod on the other GPU stays Healthy and both keep running; a new claim
//     lands on the healthy GPU although both have room;
//   - after a reset the taint goes and the pod is Healthy again;
//   - XID 79 (fallen off the bus) keeps the lost GPU published, tainted,
//     and its pods Unhealthy, until it comes back.
//
// The node's plugin runs with short recovery settings (main_test.go), so
// that recovery is seconds, not the production 5 minutes.
func TestRealNodeGPUHealth(t *testing.T) {
	needRealNode(t)
	ns := newNamespace(t, "real-health")
	// 60Gi of an 80Gi GPU: the two pods get the node's two GPUs.
	createTemplate(t, ns, "gpu-60gi", "60Gi", "")
	createTemplate(t, ns, "gpu-10gi", "10Gi", "")
	podA := createPod(t, realPod(ns, "a", "gpu-60gi", container("work", `exec sleep 1000000`)))
	podB := createPod(t, realPod(ns, "b", "gpu-60gi", container("work", `exec sleep 1000000`)))
	podA = waitReady(t, ns, podA.Name, 2*time.Minute)
	podB = waitReady(t, ns, podB.Name, 2*time.Minute)
	gpuA := claimGPU(t, podClaim(t, podA))
	gpuB := claimGPU(t, podClaim(t, podB))
	if gpuA.device == gpuB.device {
		t.Fatalf("both 60Gi claims on %s: the test needs one per GPU", gpuA.device)
	}
	t.Logf("pod a on %s (GPU %d, %s), pod b on %s (GPU %d, %s)", gpuA.device, gpuA.index, gpuA.uuid, gpuB.device, gpuB.index, gpuB.uuid)

	// The kubelet reports both pods' devices healthy once the plugin's
	// health stream is connected.
	waitPodHealth(t, podA, corev1.ResourceHealthStatusHealthy, "")
	waitPodHealth(t, podB, corev1.ResourceHealthStatusHealthy, "")

	// An application error: counted, nothing tainted, the pod stays healthy.
	injectEvent(t, fmt.Sprintf(`{"gpu": %d, "xid": 13}`, gpuA.index))
	waitMetric(t, "hami_dra_gpu_health_events_total", gpuA.uuid, `event="xid-13"`, "1")
	if taints := deviceTaints(t, gpuA.device); len(taints) != 0 {
		t.Errorf("XID 13 tainted %s: %v", gpuA.device, taints)
	}
	checkPodHealth(t, podA, corev1.ResourceHealthStatusHealthy)

	// Double-bit ECC on pod a's GPU.
	injectEvent(t, fmt.Sprintf(`{"gpu": %d, "xid": 48}`, gpuA.index))
	waitTaint(t, gpuA.device, "xid-48", resourceapi.DeviceTaintEffectNoSchedule)
	waitPodHealth(t, podA, corev1.ResourceHealthStatusUnhealthy, "XID 48")
	waitMetric(t, "hami_dra_gpu_healthy", gpuA.uuid, "", "0")
	if taints := deviceTaints(t, gpuB.device); len(taints) != 0 {
		t.Errorf("XID 48 on %s also tainted %s: %v", gpuA.device, gpuB.device, taints)
	}
	checkPodHealth(t, podB, corev1.ResourceHealthStatusHealthy)
	checkStillRunning(t, podA, podB)

	// Both GPUs have 20Gi left; the taint keeps the new claim off GPU a.
	podC := createPod(t, realPod(ns, "c", "gpu-10gi", container("work", `exec sleep 1000000`)))
	podC = waitReady(t, ns, podC.Name, 2*time.Minute)
	if gpuC := claimGPU(t, podClaim(t, podC)); gpuC.device != gpuB.device {
		t.Errorf("a new claim went to %s, tainted by XID 48; want the healthy %s", gpuC.device, gpuB.device)
	}

	// The GPU is reset: quiet period and recovery checks pass, the taint
	// goes, the pod is healthy again.
	injectEvent(t, fmt.Sprintf(`{"gpu": %d, "reset": true}`, gpuA.index))
	waitNoTaint(t, gpuA.device)
	waitPodHealth(t, podA, corev1.ResourceHealthStatusHealthy, "")

	// Pod b's GPU falls off the bus: it stays published, tainted, with the
	// pods using it (b and c) unhealthy; pod a is untouched.
	injectEvent(t, fmt.Sprintf(`{"gpu": %d, "xid": 79}`, gpuB.index))
	waitTaint(t, gpuB.device, "xid-79", resourceapi.DeviceTaintEffectNoSchedule)
	waitPodHealth(t, podB, corev1.ResourceHealthStatusUnhealthy, "XID 79")
	waitPodHealth(t, podC, corev1.ResourceHealthStatusUnhealthy, "XID 79")
	checkPodHealth(t, podA, corev1.ResourceHealthStatusHealthy)
	if taints := deviceTaints(t, gpuA.device); len(taints) != 0 {
		t.Errorf("XID 79 on %s tainted %s: %v", gpuB.device, gpuA.device, taints)
	}
	checkStillRunning(t, podA, podB, podC)

	injectEvent(t, fmt.Sprintf(`{"gpu": %d, "reset": true}`, gpuB.index))
	waitNoTaint(t, gpuB.device)
	waitPodHealth(t, podB, corev1.ResourceHealthStatusHealthy, "")
}

// publishedGPU is a device of the real node's ResourceSlices.
type publishedGPU struct {
	device       string
	index, minor int64
	uuid         string
	taints       []resourceapi.DeviceTaint
}

func realNodeGPUs(ctx context.Context) (map[string]publishedGPU, error) {
	slices, err := client().ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + realNodeName})
	if err != nil {
		return nil, err
	}
	gpus := map[string]publishedGPU{}
	for _, s := range slices.Items {
		for _, d := range s.Spec.Devices {
			g := publishedGPU{device: d.Name, taints: d.Taints}
			if a, ok := d.Attributes["index"]; ok && a.IntValue != nil {
				g.index = *a.IntValue
			}
			if a, ok := d.Attributes["minor"]; ok && a.IntValue != nil {
				g.minor = *a.IntValue
			}
			if a, ok := d.Attributes["uuid"]; ok && a.StringValue != nil {
				g.uuid = *a.StringValue
			}
			gpus[d.Name] = g
		}
	}
	return gpus, nil
}

// claimGPU is the published GPU the claim was allocated.
func claimGPU(t *testing.T, claim *resourceapi.ResourceClaim) publishedGPU {
	t.Helper()
	if claim.Status.Allocation == nil || len(claim.Status.Allocation.Devices.Results) != 1 {
		t.Fatalf("claim %s: want one allocated device, got %+v", claim.Name, claim.Status.Allocation)
	}
	gpus, err := realNodeGPUs(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	g, ok := gpus[claim.Status.Allocation.Devices.Results[0].Device]
	if !ok || g.uuid == "" {
		t.Fatalf("claim %s's device %s is not published with a uuid: %v", claim.Name, claim.Status.Allocation.Devices.Results[0].Device, gpus)
	}
	return g
}

func deviceTaints(t *testing.T, device string) []resourceapi.DeviceTaint {
	t.Helper()
	gpus, err := realNodeGPUs(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return gpus[device].taints
}

func waitTaint(t *testing.T, device, reason string, effect resourceapi.DeviceTaintEffect) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%s tainted %s=%s:%s", device, taintKey, reason, effect), func(ctx context.Context) (bool, string) {
		gpus, err := realNodeGPUs(ctx)
		if err != nil {
			return false, err.Error()
		}
		g, ok := gpus[device]
		if !ok {
			return false, "device not published"
		}
		for _, taint := range g.taints {
			if taint.Key == taintKey && taint.Value == reason && taint.Effect == effect {
				return true, ""
			}
		}
		return false, fmt.Sprintf("taints %+v", g.taints)
	})
}

func waitNoTaint(t *testing.T, device string) {
	t.Helper()
	eventually(t, 45*time.Second, device+" untainted after the reset", func(ctx context.Context) (bool, string) {
		gpus, err := realNodeGPUs(ctx)
		if err != nil {
			return false, err.Error()
		}
		g, ok := gpus[device]
		return ok && len(g.taints) == 0, fmt.Sprintf("published %v, taints %+v", ok, g.taints)
	})
}

// injectEvent appends one line to the plugin's event injection file, as
// the health README documents.
func injectEvent(t *testing.T, line string) {
	t.Helper()
	path := filepath.Join(rnode.Plugin.Config().StateDir, "simulate-events.jsonl")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
	t.Logf("injected %s", line)
}

// podHealth is the health the kubelet reports in the pod's status for its
// claim "gpu": every device's health and message, "" when none is reported.
func podHealth(p *corev1.Pod) (health corev1.ResourceHealthStatus, message string, detail string) {
	for _, s := range p.Status.ContainerStatuses {
		for _, r := range s.AllocatedResourcesStatus {
			detail += fmt.Sprintf("%s %s: ", s.Name, r.Name)
			if !strings.HasPrefix(string(r.Name), "claim:gpu") {
				continue
			}
			for _, h := range r.Resources {
				detail += fmt.Sprintf("%s=%s ", h.ResourceID, h.Health)
				health = h.Health
				if h.Message != nil {
					message = *h.Message
					detail += fmt.Sprintf("(%s) ", message)
				}
			}
		}
	}
	if detail == "" {
		detail = "no allocatedResourcesStatus"
	}
	return health, message, detail
}

// waitPodHealth waits for the kubelet to report the pod's GPU with health
// and, when message is set, a message containing it.
func waitPodHealth(t *testing.T, p *corev1.Pod, want corev1.ResourceHealthStatus, message string) {
	t.Helper()
	// The kubelet refreshes from the plugin's stream; the plugin resends
	// every 10 s.
	eventually(t, 45*time.Second, fmt.Sprintf("pod %s's GPU reported %s in its status", p.Name, want), func(ctx context.Context) (bool, string) {
		cur, err := client().CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		health, msg, detail := podHealth(cur)
		return health == want && strings.Contains(msg, message), detail
	})
}

func checkPodHealth(t *testing.T, p *corev1.Pod, want corev1.ResourceHealthStatus) {
	t.Helper()
	cur, err := client().CoreV1().Pods(p.Namespace).Get(testContext(t, 10*time.Second), p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if health, _, detail := podHealth(cur); health != want {
		t.Errorf("pod %s's GPU: %s, want %s", p.Name, detail, want)
	}
}

// checkStillRunning: a NoSchedule taint and an unhealthy report leave the
// pods running, never restarted.
func checkStillRunning(t *testing.T, pods ...*corev1.Pod) {
	t.Helper()
	for _, p := range pods {
		cur, err := client().CoreV1().Pods(p.Namespace).Get(testContext(t, 10*time.Second), p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range cur.Status.ContainerStatuses {
			if s.State.Running == nil || s.RestartCount != 0 {
				t.Errorf("pod %s container %s: running %v, restarts %d; want running, never restarted", p.Name, s.Name, s.State.Running != nil, s.RestartCount)
			}
		}
	}
}

// waitMetric waits until the plugin exports name for the GPU, on a line
// that also has label (if set), with the value want.
func waitMetric(t *testing.T, name, uuid, label, want string) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%s{gpu_uuid=%q,%s} = %s", name, uuid, label, want), func(ctx context.Context) (bool, string) {
		body, err := pluginMetrics(ctx)
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, line := range strings.Split(body, "\n") {
			if !strings.HasPrefix(line, name+"{") || !strings.Contains(line, `gpu_uuid="`+uuid+`"`) || !strings.Contains(line, label) {
				continue
			}
			seen = append(seen, line)
			if fields := strings.Fields(line); fields[len(fields)-1] == want {
				return true, ""
			}
		}
		return false, fmt.Sprintf("lines %q", seen)
	})
}
