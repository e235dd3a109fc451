package suite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The workload kinds users run GPU work with, from deployments/examples,
// through the kube-controller-manager's own job, statefulset and namespace
// controllers (the local cluster runs all of its default controllers).

// TestJobExample: the Job completes; each of its pods had a claim of its
// own with the 10Gi quota, and the generated claims go with the pods.
func TestJobExample(t *testing.T) {
	ns := newNamespace(t, "job")
	runKubectl(t, "apply", "-n", ns, "-f", filepath.Join(env.RepoRoot, "deployments", "examples", "job.yaml"))
	// pod -> its generated claim, as last seen: the resourceclaim
	// controller may replace a claim it generated before the pod's status
	// named it for good (it deletes the unused one), so a pod can show two
	// names in turn.
	claims := map[string]string{}
	eventually(t, 3*time.Minute, "Job gpu-job complete", func(ctx context.Context) (bool, string) {
		job, err := client().BatchV1().Jobs(ns).Get(ctx, "gpu-job", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		// Note each running pod's claim while it exists.
		if pods, err := listPods(ctx, ns, "job-name=gpu-job"); err == nil {
			for _, p := range pods {
				for _, s := range p.Status.ResourceClaimStatuses {
					if s.ResourceClaimName != nil {
						claims[p.Name] = *s.ResourceClaimName
					}
				}
			}
		}
		for _, c := range job.Status.Conditions {
			if c.Type == "Complete" && c.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, fmt.Sprintf("succeeded %d, active %d, failed %d, conditions %v", job.Status.Succeeded, job.Status.Active, job.Status.Failed, job.Status.Conditions)
	})
	job, err := client().BatchV1().Jobs(ns).Get(testContext(t, 10*time.Second), "gpu-job", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if job.Status.Succeeded != 2 {
		t.Errorf("Job succeeded %d times, want 2", job.Status.Succeeded)
	}
	pods, err := listPods(testContext(t, 10*time.Second), ns, "job-name=gpu-job")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		out := runKubectl(t, "logs", "-n", ns, p.Name)
		if !strings.Contains(out, "/ 10240MiB") {
			t.Errorf("nvidia-smi in %s does not show the 10Gi quota:\n%s", p.Name, out)
		}
	}
	distinct := map[string]bool{}
	for _, c := range claims {
		distinct[c] = true
	}
	if len(claims) != 2 || len(distinct) != 2 {
		t.Errorf("the Job's pods had claims %v, want two pods with a claim of their own", claims)
	}
}

// TestStatefulSetExample: both replicas run, in order, each with a claim
// of its own showing the 8Gi quota; a deleted replica comes back under the
// same name with a new claim.
func TestStatefulSetExample(t *testing.T) {
	ns := newNamespace(t, "sts")
	runKubectl(t, "apply", "-n", ns, "-f", filepath.Join(env.RepoRoot, "deployments", "examples", "statefulset.yaml"))
	t.Cleanup(func() {
		// newNamespace's cleanup deletes pods, which the StatefulSet would
		// recreate: remove it first.
		_ = client().AppsV1().StatefulSets(ns).Delete(context.Background(), "gpu-workers", metav1.DeleteOptions{})
	})
	waitReplicas := func() map[string]string {
		claimOf := map[string]string{}
		eventually(t, 3*time.Minute, "StatefulSet gpu-workers ready", func(ctx context.Context) (bool, string) {
			sts, err := client().AppsV1().StatefulSets(ns).Get(ctx, "gpu-workers", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return sts.Status.ReadyReplicas == 2, fmt.Sprintf("ready %d of 2", sts.Status.ReadyReplicas)
		})
		for _, name := range []string{"gpu-workers-0", "gpu-workers-1"} {
			p, err := client().CoreV1().Pods(ns).Get(testContext(t, 10*time.Second), name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Status.ResourceClaimStatuses) != 1 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
				t.Fatalf("%s has no generated claim", name)
			}
			claimOf[name] = *p.Status.ResourceClaimStatuses[0].ResourceClaimName
			eventually(t, 30*time.Second, "nvidia-smi in "+name, func(ctx context.Context) (bool, string) {
				out := runKubectl(t, "logs", "-n", ns, name)
				return strings.Contains(out, "/ 8192MiB"), out
			})
		}
		if claimOf["gpu-workers-0"] == claimOf["gpu-workers-1"] {
			t.Errorf("both replicas use claim %s", claimOf["gpu-workers-0"])
		}
		return claimOf
	}
	before := waitReplicas()

	if err := client().CoreV1().Pods(ns).Delete(testContext(t, 10*time.Second), "gpu-workers-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(1))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "claim of the deleted replica released", func(ctx context.Context) (bool, string) {
		_, err := client().ResourceV1().ResourceClaims(ns).Get(ctx, before["gpu-workers-1"], metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprintf("claim %s: %v", before["gpu-workers-1"], err)
	})
	after := waitReplicas()
	if after["gpu-workers-1"] == before["gpu-workers-1"] {
		t.Errorf("the recreated replica kept claim %s", before["gpu-workers-1"])
	}
	if after["gpu-workers-0"] != before["gpu-workers-0"] {
		t.Errorf("replica 0's claim changed from %s to %s though it was not touched", before["gpu-workers-0"], after["gpu-workers-0"])
	}
}

// TestNamespaceDeletion: `kubectl delete namespace` of a namespace with a
// running GPU pod finishes (the namespace controller deletes the pod, the
// pod's claim is released and deleted) instead of hanging.
func TestNamespaceDeletion(t *testing.T) {
	ns := newNamespace(t, "nsdel")
	createTemplate(t, ns, "gpu-4gi", claimSpec([]gpuRequest{{name: "gpu", memory: "4Gi"}}, nil, nil))
	pod := waitRunning(t, ns, createPod(t, ns, "busy", podSpec("gpu-4gi", "", "nvidia-smi; exec sleep 1000000")).Name, time.Minute)
	claim, err := podClaim(testContext(t, 10*time.Second), pod)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runKubectl(t, "delete", "namespace", ns, "--wait=true", "--timeout=2m")
	t.Logf("namespace %s deleted in %v", ns, time.Since(start).Round(100*time.Millisecond))
	ctx := testContext(t, 10*time.Second)
	if _, err := client().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s still there after kubectl delete returned: %v", ns, err)
	}
	if _, err := client().ResourceV1().ResourceClaims(ns).Get(ctx, claim.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("claim %s survived its namespace: %v", claim.Name, err)
	}
}
