package suite

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestExamples applies every manifest of deployments/examples with kubectl,
// as the README tells users to, and checks that its pods run and that
// nvidia-smi inside them reports their own memory quota: the memory their
// claims consumed, per GPU (a pod given the whole GPU by mistake shows the
// GPU's memory instead).
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(env.RepoRoot, "deployments", "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			ns := newNamespace(t, "ex-"+name)
			runKubectl(t, "apply", "-n", ns, "-f", file)
			var pods []string
			eventually(t, 2*time.Minute, "pods of "+name+" running", func(ctx context.Context) (bool, string) {
				list, err := listPods(ctx, ns, "")
				if err != nil {
					return false, err.Error()
				}
				pods = pods[:0]
				var states []string
				all := len(list) > 0
				for i := range list {
					all = all && isRunning(&list[i])
					pods = append(pods, list[i].Name)
					states = append(states, list[i].Name+": "+describePod(&list[i]))
				}
				return all, strings.Join(states, "\n")
			})
			for _, name := range pods {
				out := waitLogKubectl(t, ns, name, "NVIDIA-SMI")
				t.Logf("kubectl logs %s:\n%s", name, out)
				quotas := podQuotasMiB(t, ns, name)
				shown := totalsMiB(out)
				if len(shown) == 0 {
					t.Errorf("nvidia-smi in %s shows no memory line", name)
				}
				for _, mib := range shown {
					if !quotas[mib] {
						t.Errorf("nvidia-smi in %s shows a GPU with %d MiB; the pod's claims consumed %v MiB per GPU", name, mib, keys(quotas))
					}
				}
			}
		})
	}
}

// waitLogKubectl is waitLog through `kubectl logs`, the path users take.
func waitLogKubectl(t *testing.T, ns, pod, want string) string {
	t.Helper()
	var out string
	eventually(t, 30*time.Second, fmt.Sprintf("kubectl logs %s shows %q", pod, want), func(ctx context.Context) (bool, string) {
		out = runKubectl(t, "logs", "-n", ns, pod)
		return strings.Contains(out, want), out
	})
	return out
}

// memoryLine is nvidia-smi's per-GPU memory column, "<used>MiB / <total>MiB".
var memoryLine = regexp.MustCompile(`(\d+)MiB / (\d+)MiB`)

// totalsMiB returns the total memory of each GPU nvidia-smi printed.
func totalsMiB(out string) []int64 {
	var totals []int64
	for _, m := range memoryLine.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseInt(m[2], 10, 64)
		if err == nil {
			totals = append(totals, v)
		}
	}
	return totals
}

// podQuotasMiB returns the memory, in MiB, that the pod's claims consumed
// on each GPU of this driver (shares of one GPU in one claim are summed,
// as the plugin does): what nvidia-smi in the pod must report as total.
func podQuotasMiB(t *testing.T, ns, pod string) map[int64]bool {
	t.Helper()
	ctx := testContext(t, 30*time.Second)
	p, err := client().CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range p.Spec.ResourceClaims {
		if c.ResourceClaimName != nil {
			names = append(names, *c.ResourceClaimName)
		}
	}
	for _, s := range p.Status.ResourceClaimStatuses {
		if s.ResourceClaimName != nil {
			names = append(names, *s.ResourceClaimName)
		}
	}
	if x := p.Status.ExtendedResourceClaimStatus; x != nil {
		names = append(names, x.ResourceClaimName)
	}
	quotas := map[int64]bool{}
	for _, n := range names {
		claim, err := client().ResourceV1().ResourceClaims(ns).Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if claim.Status.Allocation == nil {
			t.Fatalf("claim %s of pod %s is not allocated", n, pod)
		}
		perGPU := map[string]int64{}
		for _, r := range claim.Status.Allocation.Devices.Results {
			if m, ok := r.ConsumedCapacity["memory"]; ok && r.Driver == driver {
				perGPU[r.Device] += m.Value()
			}
		}
		for _, bytes := range perGPU {
			quotas[bytes>>20] = true
		}
	}
	if len(quotas) == 0 {
		t.Fatalf("pod %s has no claim with consumed memory of %s", pod, driver)
	}
	return quotas
}

func keys(m map[int64]bool) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
