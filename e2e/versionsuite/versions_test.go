// Package versionsuite runs the driver's core cases on the Kubernetes
// releases it supports: a local cluster (package localcluster) whose
// kube-apiserver, kube-scheduler and controllers emulate 1.34, 1.36 and
// 1.37 (KEP-4330 compatibility versions: that release's APIs and feature
// gate defaults), with the real plugin on a simulated node.
//
// What emulation covers and what it does not: the API server drops the
// fields of gates that release has off (on 1.34, DRAConsumableCapacity:
// allowMultipleAllocations, the capacities' request policies, a claim's
// capacity requests), and the scheduler allocates with that release's
// gates. The binaries are still 1.37's, so a 1.34 bug fixed later is not
// reproduced, and the simulated node's kubelet part (the kubelet's DRA
// manager) is 1.37's: the kubelet's side of the version skew is not
// covered here (the real-node suite runs a 1.37 kubelet only).
package versionsuite

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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/e2e/localcluster"
	"github.com/hami-dra/hami-dra/e2e/plugin"
)

const (
	node    = "node-gpu"
	profile = "1xA100-SXM4-80GB"
	// gpuMiB is the simulated A100's memory.
	gpuMiB = 81920
)

// TestCoreCases, for each release: the plugin publishes the node's GPU
// (shareable, or whole where DRAConsumableCapacity is off); a pod's claim
// for 20Gi is allocated, prepared and enforced (nvidia-smi inside shows
// the quota: 20Gi where shares exist, the whole GPU where they do not); a
// second such pod shares the GPU, or stays Pending until the first is
// deleted and then gets the GPU; deleting the pods unprepares the claims.
func TestCoreCases(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a local cluster per Kubernetes release")
	}
	for _, tc := range []struct {
		version string
		sharing bool
	}{
		{"1.34", false},
		{"1.36", true},
		{"1.37", true},
	} {
		t.Run(tc.version, func(t *testing.T) {
			env := startCluster(t, tc.version)
			c := env.Cluster.Client
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()

			info, err := c.Discovery().ServerVersion()
			if err != nil {
				t.Fatal(err)
			}
			if got := info.EmulationMajor + "." + info.EmulationMinor; got != tc.version {
				t.Fatalf("API server emulates %q, want %s", got, tc.version)
			}

			// The published device: shareable or whole.
			eventually(t, time.Minute, "the GPU published for "+map[bool]string{true: "sharing", false: "whole-GPU use"}[tc.sharing], func() (bool, string) {
				d, err := publishedDevice(ctx, c)
				if err != nil {
					return false, err.Error()
				}
				shared := d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations
				policies := false
				for _, capacity := range d.Capacity {
					policies = policies || capacity.RequestPolicy != nil
				}
				return shared == tc.sharing && policies == tc.sharing,
					fmt.Sprintf("allowMultipleAllocations %v, request policies %v", shared, policies)
			})

			ns := "core"
			if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			template := &resourceapi.ResourceClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Name: "gpu-20gi", Namespace: ns},
				Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
					Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
						DeviceClassName: plugin.DriverName,
						Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
							"memory": resource.MustParse("20Gi"),
						}},
					}}},
				}}},
			}
			created, err := c.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, template, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if dropped := created.Spec.Spec.Devices.Requests[0].Exactly.Capacity == nil; dropped == tc.sharing {
				t.Errorf("the claim template's capacity request dropped: %v, want %v", dropped, !tc.sharing)
			}

			quotaMiB := gpuMiB
			if tc.sharing {
				quotaMiB = 20480
			}
			first := createPod(t, c, ns, "first")
			waitRunning(t, c, ns, first)
			claim := podClaim(t, c, ns, first)
			consumed := claim.Status.Allocation.Devices.Results[0].ConsumedCapacity
			if tc.sharing {
				if q := consumed["memory"]; q.Cmp(resource.MustParse("20Gi")) != 0 {
					t.Errorf("first claim consumes %v, want memory 20Gi", consumed)
				}
			} else if len(consumed) != 0 {
				t.Errorf("first claim consumes %v where shares do not exist", consumed)
			}
			waitLog(t, c, ns, first, fmt.Sprintf("/ %dMiB", quotaMiB))

			second := createPod(t, c, ns, "second")
			if tc.sharing {
				waitRunning(t, c, ns, second)
				waitLog(t, c, ns, second, fmt.Sprintf("/ %dMiB", quotaMiB))
			} else {
				eventually(t, time.Minute, "second pod Pending: the GPU is taken whole", func() (bool, string) {
					p, err := c.CoreV1().Pods(ns).Get(ctx, second, metav1.GetOptions{})
					if err != nil {
						return false, err.Error()
					}
					for _, cond := range p.Status.Conditions {
						if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
							return true, ""
						}
					}
					return false, fmt.Sprintf("phase %s, node %q", p.Status.Phase, p.Spec.NodeName)
				})
				deletePod(t, c, ns, first)
				waitRunning(t, c, ns, second)
				waitLog(t, c, ns, second, fmt.Sprintf("/ %dMiB", quotaMiB))
			}

			// Unprepare: the claims' CDI specs go with the pods.
			cdiDir := env.Node(node).Plugin.Config().CDIRoot
			for _, name := range []string{first, second} {
				deletePod(t, c, ns, name)
			}
			eventually(t, time.Minute, "every claim's CDI spec removed", func() (bool, string) {
				specs, _ := filepath.Glob(filepath.Join(cdiDir, "*claim*"))
				return len(specs) == 0, fmt.Sprintf("left: %v", specs)
			})
		})
	}
}

// startCluster starts a local cluster emulating version with one simulated
// GPU node; it is stopped when the test ends.
func startCluster(t *testing.T, version string) *localcluster.Env {
	t.Helper()
	work, err := os.MkdirTemp("/tmp", "hv-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	env, err := localcluster.Start(ctx, localcluster.Options{
		WorkDir:           work,
		KubernetesVersion: version,
		Nodes:             []localcluster.NodeSpec{{Name: node, Profile: profile}},
	})
	if err != nil {
		cancel()
		t.Fatalf("local cluster emulating %s: %v (kept %s)", version, err, work)
	}
	pluginLog := env.Node(node).Plugin.Config().LogFile
	t.Cleanup(func() {
		env.Stop(ctx)
		cancel()
		if !t.Failed() {
			_ = os.RemoveAll(work)
		} else {
			t.Logf("kept %s (plugin log: %s)", work, pluginLog)
		}
	})
	return env
}

func publishedDevice(ctx context.Context, c kubernetes.Interface) (*resourceapi.Device, error) {
	slices, err := c.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	for _, s := range slices.Items {
		if len(s.Spec.Devices) > 0 {
			return &s.Spec.Devices[0], nil
		}
	}
	return nil, fmt.Errorf("no device published for %s", node)
}

// createPod creates a pod on the node whose container shows nvidia-smi and
// keeps running, with one claim from the template gpu-20gi.
func createPod(t *testing.T, c kubernetes.Interface, ns, name string) string {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{corev1.LabelHostname: node},
			TerminationGracePeriodSeconds: ptr.To(int64(2)),
			Containers: []corev1.Container{{
				Name:      "work",
				Image:     "busybox", // not pulled: the simulated node runs the command on the host
				Command:   []string{"sh", "-c", "nvidia-smi; exec sleep 3600"},
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To("gpu-20gi")}},
		},
	}
	if _, err := c.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return name
}

func deletePod(t *testing.T, c kubernetes.Interface, ns, name string) {
	t.Helper()
	if err := c.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "pod "+name+" gone", func() (bool, string) {
		_, err := c.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

func waitRunning(t *testing.T, c kubernetes.Interface, ns, name string) {
	t.Helper()
	eventually(t, time.Minute, "pod "+name+" running", func() (bool, string) {
		p, err := c.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var why []string
		for _, cond := range p.Status.Conditions {
			if cond.Status != corev1.ConditionTrue {
				why = append(why, fmt.Sprintf("%s: %s %s", cond.Type, cond.Reason, cond.Message))
			}
		}
		return p.Status.Phase == corev1.PodRunning, fmt.Sprintf("phase %s %v", p.Status.Phase, why)
	})
}

func podClaim(t *testing.T, c kubernetes.Interface, ns, name string) *resourceapi.ResourceClaim {
	t.Helper()
	p, err := c.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Status.ResourceClaimStatuses) == 0 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		t.Fatalf("pod %s has no generated claim", name)
	}
	claim, err := c.ResourceV1().ResourceClaims(ns).Get(context.Background(), *p.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if claim.Status.Allocation == nil || len(claim.Status.Allocation.Devices.Results) != 1 {
		t.Fatalf("claim %s: want one allocated device, got %+v", claim.Name, claim.Status.Allocation)
	}
	return claim
}

func waitLog(t *testing.T, c kubernetes.Interface, ns, name, want string) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("log of %s contains %q", name, want), func() (bool, string) {
		data, err := c.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(string(data), want), string(data)
	})
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, reason := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v: %s", what, timeout, reason)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
