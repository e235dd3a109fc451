package realnodesuite

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/hami-dra/hami-dra/e2e/plugin"
)

// The node audit's settings on the real node (main_test.go): short, so
// that the test waits seconds.
const (
	auditInterval = 2 * time.Second
	auditGrace    = 6 * time.Second
)

// Offsets in a version-1 accounting region (vgpu-core/README.md, "Shared
// region"; internal/region): device entry 0's mem_used, and the process
// slots that follow the 16 device entries.
const (
	regionMemUsed0 = 256 + 104
	regionSlots    = 256 + 16*256
	regionSlotsLen = 1024 * 192
)

// TestRealNodeAudit: the node audit, on the real kubelet, containerd and
// runc, with the plugin in the host's PID namespace reading the pods'
// processes from the (fake) NVML by host PID. Every claim is on GPU 0:
//   - a pod whose workload is a static binary (the dynamic loader, and so
//     /etc/ld.so.preload, never runs: no libvgpu), and one that removes its
//     quota from its environment and re-executes itself (libvgpu then
//     enforces nothing), each holding twice its 2Gi quota, are reported and
//     SIGKILLed within the grace period plus one audit interval;
//   - a pod that zeroes its region's counters and then allocates past its
//     quota gets the same (one of its two processes is killed);
//   - with memoryAuditAction Warn it is only reported;
//   - a pod that planted a FIFO, and one that planted a symlink, where the
//     region belongs and then went over quota: the plugin neither hangs nor
//     follows them (metrics answer, the audit's event and kill happen);
//   - a well-behaved neighbour on the same GPU keeps running throughout.
func TestRealNodeAudit(t *testing.T) {
	needRealNode(t)
	ns := newNamespace(t, "real-audit")
	createGPU0Template(t, ns, "gpu0-2gi", "")
	createGPU0Template(t, ns, "gpu0-2gi-warn", "Warn")

	// twice the quota, with the quota removed from the environment
	bypass := `echo "quota in env: $CUDA_DEVICE_MEMORY_LIMIT_0"; exec env -u CUDA_DEVICE_MEMORY_LIMIT_0 -u CUDA_DEVICE_MEMORY_LIMIT quota --hold 2048 2048`
	zeroRegion := strings.Join([]string{
		`quota --hold 1536 > /shared/a.log 2>&1 & a=$!`,
		`until grep -q holding /shared/a.log; do sleep 0.2; done`,
		`echo "before zeroing: $(quota 1024 | grep alloc)"`,
		fmt.Sprintf(`dd if=/dev/zero of=/run/hami-dra/claim/vgpu.shr bs=8 seek=%d count=1 conv=notrunc 2>/dev/null`, regionMemUsed0/8),
		fmt.Sprintf(`dd if=/dev/zero of=/run/hami-dra/claim/vgpu.shr bs=64 seek=%d count=%d conv=notrunc 2>/dev/null`, regionSlots/64, regionSlotsLen/64),
		`quota --hold 1536 > /shared/b.log 2>&1 & b=$!`,
		`until grep -q -E 'holding|OUT_OF_MEMORY' /shared/b.log; do sleep 0.2; done`,
		`echo "after zeroing: $(grep alloc /shared/b.log)"`,
		`while kill -0 $a 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.2; done`,
		`kill -0 $a 2>/dev/null || echo "a is gone"`,
		`kill -0 $b 2>/dev/null || echo "b is gone"`,
		`exec sleep 1000000`,
	}, "\n")
	pods := map[string]*corev1.Pod{}
	for _, p := range []struct{ name, template, script string }{
		{"neighbour", "gpu0-2gi", `exec quota --hold 1024`},
		{"bypass", "gpu0-2gi", bypass},
		// static: no dynamic loader, so /etc/ld.so.preload is never read
		{"static", "gpu0-2gi", `exec quota-static --hold 2048 2048`},
		{"zero-region", "gpu0-2gi", zeroRegion},
		{"warn", "gpu0-2gi-warn", bypass},
		{"fifo", "gpu0-2gi", `mkfifo /run/hami-dra/claim/vgpu.shr && ` + bypass},
		{"symlink", "gpu0-2gi", `ln -s /etc/passwd /run/hami-dra/claim/vgpu.shr && ` + bypass},
	} {
		pod := realPod(ns, p.name, p.template, container("work", p.script))
		// A killed workload stays dead: the pod fails instead of restarting.
		pod.Spec.RestartPolicy = corev1.RestartPolicyNever
		pods[p.name] = createPod(t, pod)
	}
	for _, name := range []string{"neighbour", "bypass", "static", "warn", "fifo", "symlink"} {
		waitLog(t, pods[name], "work", "holding", 2*time.Minute)
	}
	log := waitLog(t, pods["bypass"], "work", "quota in env: ", time.Minute)
	if !strings.Contains(log, fmt.Sprintf("quota in env: %d", int64(2)<<30)) {
		t.Errorf("the bypass pod's quota was not in its environment to remove:\n%s", log)
	}

	// The plugin answers while the FIFO and the symlink are there, and shows
	// neither as a region (read now: once their pods are killed, their
	// claims go).
	body := scrape(t, 5*time.Second)
	for name, want := range map[string]string{"fifo": " 0", "symlink": " 0", "neighbour": " 1"} {
		claim := podClaim(t, pods[name])
		if line := metricLine(body, "hami_dra_claim_libvgpu_region", `claim="`+claim.Name+`"`); !strings.HasSuffix(line, want) {
			t.Errorf("%s: %q, want%s (a planted file is not a region)", name, line, want)
		}
	}

	// Killed: the workload is reported, then SIGKILLed (exit 137) within
	// the grace period plus one interval of the report.
	for _, name := range []string{"bypass", "static", "fifo", "symlink"} {
		p := pods[name]
		waitTerminated(t, p, 137, auditGrace+4*auditInterval+30*time.Second)
		over := waitEvent(t, p, "GPUMemoryOverQuota", "over its quota of 2048 MiB")
		killed := waitEvent(t, p, "GPUMemoryOverQuotaKilled", "killed host PID")
		took := killed.LastTimestamp.Sub(over.FirstTimestamp.Time)
		t.Logf("%s: reported %q; killed %v later: %q", name, over.Message, took, killed.Message)
		// Event times are whole seconds.
		if took > auditGrace+auditInterval+time.Second {
			t.Errorf("%s: killed %v after the report, want within the grace period plus one interval (%v)", name, took, auditGrace+auditInterval)
		}
		if !strings.Contains(over.Message, "no libvgpu accounting") && !strings.Contains(over.Message, "libvgpu counted 0 MiB") {
			t.Errorf("%s: the report does not show libvgpu's accounting disagreeing with NVML: %q", name, over.Message)
		}
	}

	// The region zeroed: libvgpu refused 1 GiB more before, allowed 1.5 GiB
	// after; the audit killed one of the two processes.
	log = waitLog(t, pods["zero-region"], "work", " is gone", auditGrace+4*auditInterval+30*time.Second)
	wantAll(t, "the zero-region pod's log", log,
		"before zeroing: alloc 1024 MiB: CUDA_ERROR_OUT_OF_MEMORY",
		"after zeroing: alloc 1536 MiB: CUDA_SUCCESS")
	killed := waitEvent(t, pods["zero-region"], "GPUMemoryOverQuotaKilled", "killed host PID")
	t.Logf("zero-region: %s\n%q", log, killed.Message)

	// Warn: reported, never killed.
	over := waitEvent(t, pods["warn"], "GPUMemoryOverQuota", "only reported (memory action Warn)")
	time.Sleep(auditGrace + 2*auditInterval)
	if e := findEvent(t, pods["warn"], "GPUMemoryOverQuotaKilled"); e != nil {
		t.Errorf("warn mode killed: %q", e.Message)
	}
	t.Logf("warn: %q", over.Message)

	checkStillRunning(t, pods["neighbour"], pods["warn"], pods["zero-region"])
	if e := findEvent(t, pods["neighbour"], "GPUMemoryOverQuota"); e != nil {
		t.Errorf("the neighbour was reported: %q", e.Message)
	}
}

// createGPU0Template creates a template for 2Gi of the real node's GPU 0,
// with memoryAuditAction if set.
func createGPU0Template(t *testing.T, ns, name, memoryAuditAction string) {
	t.Helper()
	spec := resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
		Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
			DeviceClassName: plugin.DriverName,
			Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
				Expression: fmt.Sprintf(`device.attributes[%q].index == 0`, plugin.DriverName),
			}}},
			Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{"memory": resource.MustParse("2Gi")}},
		}}},
	}}
	if memoryAuditAction != "" {
		raw, err := json.Marshal(map[string]any{
			"apiVersion": "vgpu.hami.io/v1alpha1", "kind": "VgpuConfig", "memoryAuditAction": memoryAuditAction,
		})
		if err != nil {
			t.Fatal(err)
		}
		spec.Devices.Config = []resourceapi.DeviceClaimConfiguration{{DeviceConfiguration: resourceapi.DeviceConfiguration{
			Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: plugin.DriverName, Parameters: runtime.RawExtension{Raw: raw}},
		}}}
	}
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: spec},
	}
	if _, err := client().ResourceV1().ResourceClaimTemplates(ns).Create(testContext(t, 30*time.Second), tmpl, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create template %s: %v", name, err)
	}
}

// waitTerminated waits for the pod's container to end with exitCode.
func waitTerminated(t *testing.T, p *corev1.Pod, exitCode int32, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("pod %s's container ended with %d", p.Name, exitCode), func(ctx context.Context) (bool, string) {
		cur, err := client().CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, s := range cur.Status.ContainerStatuses {
			if s.State.Terminated != nil {
				return s.State.Terminated.ExitCode == exitCode, fmt.Sprintf("terminated: %d %s", s.State.Terminated.ExitCode, s.State.Terminated.Reason)
			}
		}
		return false, describePod(ctx, cur)
	})
}

func findEvent(t *testing.T, p *corev1.Pod, reason string) *corev1.Event {
	t.Helper()
	events, err := client().CoreV1().Events(p.Namespace).List(testContext(t, 10*time.Second), metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + p.Name + ",reason=" + reason,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.Items) == 0 {
		return nil
	}
	return &events.Items[0]
}

// waitEvent waits for a Warning event with reason on the pod whose message
// contains want.
func waitEvent(t *testing.T, p *corev1.Pod, reason, want string) *corev1.Event {
	t.Helper()
	var found *corev1.Event
	eventually(t, time.Minute, fmt.Sprintf("event %s on pod %s", reason, p.Name), func(ctx context.Context) (bool, string) {
		e := findEvent(t, p, reason)
		if e == nil {
			return false, "none yet"
		}
		found = e
		return e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, want), fmt.Sprintf("%s %q", e.Type, e.Message)
	})
	return found
}

// scrape reads the plugin's /metrics, failing if it takes longer than
// within (a plugin stuck on a planted FIFO would).
func scrape(t *testing.T, within time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	body, err := pluginMetrics(ctx)
	if err != nil {
		t.Fatalf("plugin metrics within %v: %v", within, err)
	}
	return body
}

func metricLine(body, name, label string) string {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			return line
		}
	}
	return name + "{" + label + "} missing"
}
