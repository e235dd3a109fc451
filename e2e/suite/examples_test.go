package suite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExamples applies every manifest of deployments/examples with kubectl,
// as the README tells users to, and checks that its pods run and that
// nvidia-smi inside them reports their memory quota.
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
				if !strings.Contains(out, "MiB / ") {
					t.Errorf("nvidia-smi in %s shows no memory line", name)
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
