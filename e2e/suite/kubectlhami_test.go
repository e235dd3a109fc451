package suite

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestKubectlHami runs the kubectl plugin as users do (`kubectl hami`,
// found by kubectl on PATH) against the local cluster after allocations the
// scheduler made:
//   - `gpus -o json` agrees, GPU by GPU, with the ResourceSlices and the
//     consumed capacity of every allocated claim;
//   - the tables of `gpus` (with the node's metrics: used memory) and
//     `claims` match golden files, with namespaces and generated names
//     normalised;
//   - `fit` agrees with the scheduler: a share fit says no GPU of a node can
//     take stays Pending there, one it says fits is allocated on a GPU it
//     named.
func TestKubectlHami(t *testing.T) {
	plugin := buildKubectlHami(t)
	ns := newNamespace(t, "hami-view")
	const node = "node-single" // one A100 80GB: the test's allocations are all it holds
	createTemplate(t, ns, "gpu-20gi-30", claimSpec([]gpuRequest{{name: "gpu", memory: "20Gi", cores: "30"}}, nil, nil))
	createTemplate(t, ns, "gpu-30gi-20", claimSpec([]gpuRequest{{name: "gpu", memory: "30Gi", cores: "20"}}, nil, nil))
	first := waitRunning(t, ns, createPod(t, ns, "first", podSpec("gpu-20gi-30", node, `exec `+quotaProbe+` --hold 3072`)).Name, time.Minute)
	second := waitRunning(t, ns, createPod(t, ns, "second", podSpec("gpu-30gi-20", node, `exec `+quotaProbe+` --hold 1024`)).Name, time.Minute)
	waitLog(t, first, "holding", 30*time.Second)
	waitLog(t, second, "holding", 30*time.Second)

	// gpus -o json against the API objects, for every GPU of the cluster.
	var view struct {
		GPUs []struct {
			Node                 string `json:"node"`
			Device               string `json:"device"`
			MemoryBytes          int64  `json:"memoryBytes"`
			Cores                int64  `json:"cores"`
			AllocatedMemoryBytes int64  `json:"allocatedMemoryBytes"`
			AllocatedCores       int64  `json:"allocatedCores"`
			Shares               int    `json:"shares"`
		} `json:"gpus"`
	}
	if err := json.Unmarshal([]byte(runHami(t, plugin, "gpus", "-o", "json")), &view); err != nil {
		t.Fatalf("gpus -o json: %v", err)
	}
	want := allocatedPerGPU(t)
	if len(view.GPUs) != len(want) {
		t.Errorf("kubectl hami gpus lists %d GPUs, the ResourceSlices publish %d", len(view.GPUs), len(want))
	}
	for _, g := range view.GPUs {
		w, ok := want[g.Node+"/"+g.Device]
		if !ok {
			t.Errorf("kubectl hami gpus lists %s/%s, which no ResourceSlice publishes", g.Node, g.Device)
			continue
		}
		got := gpuTotals{g.MemoryBytes, g.Cores, g.AllocatedMemoryBytes, g.AllocatedCores, g.Shares}
		if got != w {
			t.Errorf("%s/%s: kubectl hami gpus says %+v, the API objects %+v", g.Node, g.Device, got, w)
		}
		if g.Node == node && (g.AllocatedMemoryBytes != 50<<30 || g.AllocatedCores != 50 || g.Shares != 2) {
			t.Errorf("%s: allocated %d bytes, %d cores in %d shares; want 50Gi, 50 cores, 2 shares", node, g.AllocatedMemoryBytes, g.AllocatedCores, g.Shares)
		}
	}

	metrics := env.Node(node).MetricsURL
	// The table of the node the test filled (the other nodes' GPUs are
	// compared with the API objects above).
	goldenFile(t, "kubectl-hami-gpus.txt", normalise(runHami(t, plugin, "gpus", "--metrics", metrics), ns, node))
	goldenFile(t, "kubectl-hami-claims.txt", normalise(runHami(t, plugin, "claims", "-n", ns, "--metrics", metrics), ns))

	// fit against the scheduler, on the node's one GPU (30Gi and 50 cores
	// free): 40Gi does not fit, 30Gi with 50 cores does.
	for _, tc := range []struct {
		memory, cores string
		fits          bool
	}{
		{"40Gi", "10", false},
		{"30Gi", "50", true},
	} {
		name := strings.ToLower("fit-" + tc.memory + "-" + tc.cores)
		fitOut := runHami(t, plugin, "fit", "--memory", tc.memory, "--cores", tc.cores, "-o", "json")
		var fit struct {
			GPUs []struct {
				Node   string `json:"node"`
				Device string `json:"device"`
				Fits   bool   `json:"fits"`
			} `json:"gpus"`
		}
		if err := json.Unmarshal([]byte(fitOut), &fit); err != nil {
			t.Fatalf("fit -o json: %v\n%s", err, fitOut)
		}
		fitsOn := map[string]bool{}
		for _, r := range fit.GPUs {
			if r.Node == node && r.Fits {
				fitsOn[r.Device] = true
			}
		}
		if len(fitsOn) > 0 != tc.fits {
			t.Fatalf("fit %s/%s on %s says %v, want fits=%v:\n%s", tc.memory, tc.cores, node, fitsOn, tc.fits, fitOut)
		}
		createTemplate(t, ns, name, claimSpec([]gpuRequest{{name: "gpu", memory: tc.memory, cores: tc.cores}}, nil, nil))
		pod := createPod(t, ns, name, podSpec(name, node, `exec sleep 3600`))
		if !tc.fits {
			eventually(t, 30*time.Second, "pod "+name+" unschedulable", func(ctx context.Context) (bool, string) {
				p, err := client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
				if err != nil {
					return false, err.Error()
				}
				return unschedulable(p) != "", describePod(p)
			})
			deletePod(t, ns, pod.Name)
			waitGone(t, ns, pod.Name, time.Minute)
			continue
		}
		pod = waitRunning(t, ns, pod.Name, time.Minute)
		for _, r := range allocation(t, pod) {
			if !fitsOn[r.Device] {
				t.Errorf("the scheduler put %s on %s, fit named %v", name, r.Device, fitsOn)
			}
		}
	}
}

// buildKubectlHami builds cmd/kubectl-hami into a directory of its own and
// returns that directory, to put on kubectl's PATH.
func buildKubectlHami(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(env.RepoRoot, "e2e", "bin", "plugins")
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "kubectl-hami"), "./cmd/kubectl-hami")
	cmd.Dir = env.RepoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-hami: %v\n%s", err, out)
	}
	return dir
}

// runHami runs `kubectl hami args...`: kubectl finds the plugin on PATH.
func runHami(t *testing.T, pluginDir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(kubectl, append([]string{"hami"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env.Cluster.Kubeconfig, "PATH="+pluginDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl hami %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// gpuTotals is one GPU's capacities and what allocated claims consume.
type gpuTotals struct {
	memory, cores, allocMemory, allocCores int64
	shares                                 int
}

// allocatedPerGPU computes, from the ResourceSlices and every allocated
// claim's consumed capacity, what kubectl hami gpus must show, by
// "node/device".
func allocatedPerGPU(t *testing.T) map[string]gpuTotals {
	t.Helper()
	ctx := testContext(t, 30*time.Second)
	slices, err := client().ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]gpuTotals{}
	nodeOf := map[string]string{} // pool/device -> node/device
	for _, s := range slices.Items {
		if s.Spec.Driver != driver || s.Spec.NodeName == nil {
			continue
		}
		for _, d := range s.Spec.Devices {
			key := *s.Spec.NodeName + "/" + d.Name
			mem, cores := d.Capacity["memory"], d.Capacity["cores"]
			out[key] = gpuTotals{memory: mem.Value.Value(), cores: cores.Value.Value()}
			nodeOf[s.Spec.Pool.Name+"/"+d.Name] = key
		}
	}
	claims, err := client().ResourceV1().ResourceClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims.Items {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			key, ok := nodeOf[r.Pool+"/"+r.Device]
			if r.Driver != driver || !ok {
				continue
			}
			g := out[key]
			g.shares++
			if q, ok := r.ConsumedCapacity[resourceapi.QualifiedName("memory")]; ok {
				g.allocMemory += q.Value()
			}
			if q, ok := r.ConsumedCapacity[resourceapi.QualifiedName("cores")]; ok {
				g.allocCores += q.Value()
			}
			out[key] = g
		}
	}
	return out
}

var generatedClaim = regexp.MustCompile(`\b(first|second)-gpu-[a-z0-9]{5}\b`)

// normalise makes a table comparable from run to run: the test's namespace
// and the suffixes of generated claim names are replaced, and columns are
// separated by one space (their width follows the namespace's length).
// Only the header and the lines whose first column is one of keep stay.
// Device names stay: the simulated GPUs' UUIDs are derived from the node
// name and index.
func normalise(out, ns string, keep ...string) string {
	var b strings.Builder
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || (i > 0 && len(keep) > 0 && !slices.Contains(keep, fields[0])) {
			continue
		}
		line = strings.Join(fields, " ")
		line = strings.ReplaceAll(line, ns, "<ns>")
		line = generatedClaim.ReplaceAllString(line, "$1-gpu-<id>")
		b.WriteString(line + "\n")
	}
	return b.String()
}

// goldenFile compares got with testdata/name; -update rewrites it.
func goldenFile(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("output differs from %s:\n--- want\n%s--- got\n%s", path, want, got)
	}
}
