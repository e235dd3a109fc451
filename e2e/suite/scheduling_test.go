package suite

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// After a claim is released, a pod the scheduler had marked unschedulable
// is retried when the claim changes or, at the latest, at the queue's
// periodic flush of unschedulable pods (every 30 s, after they have waited
// up to 5 min there; the DRA plugin's queueing hints usually act at once).
const rescheduleTimeout = 90 * time.Second

// TestPackingOnOneGPU: a Deployment whose pods each claim 20Gi places four
// of them on one 80Gi GPU, the fifth stays Pending with the scheduler's
// reason, and deleting a running pod lets a pending one run.
func TestPackingOnOneGPU(t *testing.T) {
	ns := newNamespace(t, "packing")
	createTemplate(t, ns, "gpu-20gi", claimSpec([]gpuRequest{{name: "gpu", memory: "20Gi"}}, nil, nil))
	createDeployment(t, ns, "share", 5, podSpec("gpu-20gi", "node-single", "nvidia-smi; exec sleep 3600"))

	var running []corev1.Pod
	var pending *corev1.Pod
	eventually(t, 2*time.Minute, "4 pods running, 1 unschedulable", func(ctx context.Context) (bool, string) {
		pods, err := listPods(ctx, ns, "app=share")
		if err != nil {
			return false, err.Error()
		}
		running, pending = nil, nil
		var states []string
		for i := range pods {
			p := &pods[i]
			switch {
			case isRunning(p):
				running = append(running, *p)
			case unschedulable(p) != "":
				pending = p
			}
			states = append(states, p.Name+": "+describePod(p))
		}
		return len(pods) == 5 && len(running) == 4 && pending != nil, strings.Join(states, "\n")
	})
	msg := unschedulable(pending)
	if !strings.Contains(msg, "cannot allocate all claims") {
		t.Errorf("pending pod's scheduling message %q does not give the DRA reason", msg)
	}
	t.Logf("pending pod %s: %s", pending.Name, msg)

	// All four shares are on the single GPU, each 20Gi, each its own share.
	device, shares := "", map[string]bool{}
	for i := range running {
		results := allocation(t, &running[i])
		if len(results) != 1 {
			t.Fatalf("pod %s: %d allocation results, want 1", running[i].Name, len(results))
		}
		r := results[0]
		if device == "" {
			device = r.Device
		} else if r.Device != device {
			t.Errorf("pod %s got device %s, others %s: the node has one GPU", running[i].Name, r.Device, device)
		}
		if r.ShareID == nil || shares[string(*r.ShareID)] {
			t.Errorf("pod %s: share ID %v missing or reused", running[i].Name, r.ShareID)
		} else {
			shares[string(*r.ShareID)] = true
		}
		if got := r.ConsumedCapacity["memory"]; got.Cmp(resource.MustParse("20Gi")) != 0 {
			t.Errorf("pod %s consumed memory %s, want 20Gi", running[i].Name, got.String())
		}
		waitLog(t, &running[i], "/ 20480MiB", 30*time.Second)
	}

	// Free one share: a pending replica takes it.
	before := map[string]bool{}
	for _, p := range running {
		before[p.Name] = true
	}
	victim := running[0].Name
	deletePod(t, ns, victim)
	start := time.Now()
	eventually(t, rescheduleTimeout, "a pending replica runs after a running one was deleted", func(ctx context.Context) (bool, string) {
		pods, err := listPods(ctx, ns, "app=share")
		if err != nil {
			return false, err.Error()
		}
		n, fresh := 0, ""
		var states []string
		for i := range pods {
			if isRunning(&pods[i]) {
				n++
				if !before[pods[i].Name] {
					fresh = pods[i].Name
				}
			}
			states = append(states, pods[i].Name+": "+describePod(&pods[i]))
		}
		return n == 4 && fresh != "", strings.Join(states, "\n")
	})
	t.Logf("a pending replica ran %v after %s was deleted", time.Since(start).Round(100*time.Millisecond), victim)
}

// TestModelSelection: the chart's per-model DeviceClasses place claims on
// that model only.
func TestModelSelection(t *testing.T) {
	ns := newNamespace(t, "models")
	createTemplate(t, ns, "h100", claimSpec([]gpuRequest{{name: "gpu", class: "h100.vgpu.hami.io", memory: "10Gi"}}, nil, nil))
	createTemplate(t, ns, "a100", claimSpec([]gpuRequest{{name: "gpu", class: "a100.vgpu.hami.io", memory: "10Gi"}}, nil, nil))
	createDeployment(t, ns, "on-h100", 6, podSpec("h100", "", "exec sleep 3600"))
	createDeployment(t, ns, "on-a100", 6, podSpec("a100", "", "exec sleep 3600"))

	for app, model := range map[string]string{"on-h100": "H100", "on-a100": "A100"} {
		var pods []corev1.Pod
		eventually(t, 2*time.Minute, "6 pods of "+app+" running", func(ctx context.Context) (bool, string) {
			var err error
			if pods, err = listPods(ctx, ns, "app="+app); err != nil {
				return false, err.Error()
			}
			n := 0
			for i := range pods {
				if isRunning(&pods[i]) {
					n++
				}
			}
			return n == 6, fmt.Sprintf("%d of %d running", n, len(pods))
		})
		attrs := deviceAttributes(t)
		for i := range pods {
			for _, r := range allocation(t, &pods[i]) {
				name := stringAttr(attrs[r.Pool+"/"+r.Device], "productName")
				if !strings.Contains(name, model) {
					t.Errorf("pod %s of %s landed on %s (%s) on node %s", pods[i].Name, app, r.Device, name, pods[i].Spec.NodeName)
				}
			}
			if model == "A100" && pods[i].Spec.NodeName == "node-h100" {
				t.Errorf("pod %s of %s is on the H100 node", pods[i].Name, app)
			}
			if model == "H100" && pods[i].Spec.NodeName != "node-h100" {
				t.Errorf("pod %s of %s is on %s, not the H100 node", pods[i].Name, app, pods[i].Spec.NodeName)
			}
		}
	}
}

// TestTwoGPUs: a claim for two GPUs gets two different GPUs of one node, and
// inside the container each CUDA device has the quota of the request that
// was allocated on it (the known failure: quotas on the wrong GPU).
func TestTwoGPUs(t *testing.T) {
	ns := newNamespace(t, "two-gpus")
	uuidAttr := resourceapi.FullyQualifiedName(driver + "/uuid")
	createTemplate(t, ns, "big-and-small", claimSpec(
		[]gpuRequest{{name: "big", memory: "30Gi"}, {name: "small", memory: "10Gi"}},
		[]resourceapi.DeviceConstraint{{Requests: []string{"big", "small"}, DistinctAttribute: &uuidAttr}}, nil))
	spec := podSpec("big-and-small", "node-h100", quotaProbe+" 0; exec sleep 3600")
	pod := waitRunning(t, ns, createPod(t, ns, "two", spec).Name, time.Minute)

	results := allocation(t, pod)
	if len(results) != 2 || results[0].Device == results[1].Device || results[0].Pool != results[1].Pool {
		t.Fatalf("allocation %+v: want two different GPUs of one node", results)
	}
	attrs := deviceAttributes(t)
	wantMiB := map[string]int{} // UUID -> quota
	for _, r := range results {
		uuid := stringAttr(attrs[r.Pool+"/"+r.Device], "uuid")
		wantMiB[uuid] = map[string]int{"big": 30 << 10, "small": 10 << 10}[r.Request]
	}
	log := waitLog(t, pod, "free after allocations", 30*time.Second)
	seen := 0
	for _, line := range strings.Split(log, "\n") {
		var dev, total, free, devTotal int
		var uuid string
		if n, _ := fmt.Sscanf(line, "device %d uuid=%s total_mib=%d free_mib=%d device_total_mib=%d", &dev, &uuid, &total, &free, &devTotal); n != 5 {
			continue
		}
		seen++
		want, ok := wantMiB[uuid]
		if !ok {
			t.Errorf("CUDA device %d is %s, not one of the claim's GPUs %v", dev, uuid, wantMiB)
		} else if total != want || devTotal != want {
			t.Errorf("CUDA device %d (%s) reports %d MiB (cuMemGetInfo) and %d MiB (cuDeviceTotalMem), want its request's %d MiB", dev, uuid, total, devTotal, want)
		}
	}
	if seen != 2 {
		t.Errorf("the container sees %d CUDA devices, want 2:\n%s", seen, log)
	}

	// count: 2 in one request: also two different GPUs.
	createTemplate(t, ns, "pair", claimSpec([]gpuRequest{{name: "gpus", count: 2, memory: "24Gi"}}, nil, nil))
	pair := waitRunning(t, ns, createPod(t, ns, "pair", podSpec("pair", "", quotaProbe+"; exec sleep 3600")).Name, time.Minute)
	results = allocation(t, pair)
	if len(results) != 2 || results[0].Device == results[1].Device {
		t.Fatalf("count 2: allocation %+v, want two different GPUs", results)
	}
	if log := waitLog(t, pair, "free after allocations", 30*time.Second); strings.Count(log, "device_total_mib=24576") != 2 {
		t.Errorf("count 2: want both CUDA devices at 24576 MiB:\n%s", log)
	}
}

// TestCoresShares: the scheduler never hands out more than 100 cores of a
// GPU; a third 40% share of the L4 stays Pending.
func TestCoresShares(t *testing.T) {
	ns := newNamespace(t, "cores")
	createTemplate(t, ns, "l4-40", claimSpec([]gpuRequest{{name: "gpu", memory: "1Gi", cores: "40",
		selectors: []string{`device.attributes["vgpu.hami.io"].productName == "NVIDIA L4"`}}}, nil, nil))
	createDeployment(t, ns, "l4", 3, podSpec("l4-40", "", "echo SM=$CUDA_DEVICE_SM_LIMIT_0; exec sleep 3600"))
	var pods []corev1.Pod
	eventually(t, 2*time.Minute, "2 running, 1 unschedulable", func(ctx context.Context) (bool, string) {
		var err error
		if pods, err = listPods(ctx, ns, "app=l4"); err != nil {
			return false, err.Error()
		}
		run, pend := 0, 0
		for i := range pods {
			if isRunning(&pods[i]) {
				run++
			} else if unschedulable(&pods[i]) != "" {
				pend++
			}
		}
		return run == 2 && pend == 1, fmt.Sprintf("%d running, %d unschedulable of %d", run, pend, len(pods))
	})
	sum := map[string]int64{}
	for i := range pods {
		if !isRunning(&pods[i]) {
			continue
		}
		for _, r := range allocation(t, &pods[i]) {
			c := r.ConsumedCapacity["cores"]
			sum[r.Pool+"/"+r.Device] += c.Value()
		}
		waitLog(t, &pods[i], "SM=40", 30*time.Second)
	}
	for dev, total := range sum {
		if total > 100 {
			t.Errorf("device %s: %d cores allocated", dev, total)
		}
	}
	if len(sum) != 1 {
		t.Errorf("the two shares are on %d devices, want the node's one L4", len(sum))
	}
}
