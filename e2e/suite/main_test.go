// Package suite holds the end-to-end tests: one local cluster (a real
// Kubernetes 1.37 control plane, the chart's DeviceClasses and RBAC, a real
// vgpu-kubelet-plugin process and a node agent per simulated node) shared by
// every test, and workloads run in it the way users run them.
package suite

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/e2e/localcluster"
)

var (
	env *localcluster.Env
	// kubectl is the kubectl binary built from the pinned staging module.
	kubectl string
	// quotaProbe is vgpu-core's CUDA workload (tests/quota.c), built
	// against the fake driver.
	quotaProbe string
	keepWork   = flag.Bool("keep", false, "keep the work directory (logs, sockets, state) after the run")
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("skipping the end-to-end suite in -short mode")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	work, err := os.MkdirTemp("/tmp", "hd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "work dir:", err)
		return 1
	}
	// The control plane logs a lot; it goes to a file, the tests' own
	// output stays readable.
	logPath := filepath.Join(work, "e2e.log")
	if err := localcluster.LogToFile(logPath, 1); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer klog.Flush()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	fmt.Fprintf(os.Stderr, "Starting the local cluster in %s (log: %s)\n", work, logPath)
	env, err = localcluster.Start(ctx, localcluster.Options{WorkDir: work, Progress: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "local cluster:", err)
		dumpLogs(work)
		return 1
	}
	fmt.Fprintf(os.Stderr, "Local cluster up in %v\n", time.Since(start).Round(time.Millisecond))
	kubectl = filepath.Join(env.RepoRoot, "e2e", "bin", "kubectl")
	quotaProbe = filepath.Join(env.RepoRoot, "vgpu-core", "build", "tests", "quota")
	if err := buildKubectl(ctx, env.RepoRoot, kubectl); err != nil {
		fmt.Fprintln(os.Stderr, err)
		env.Stop(ctx)
		return 1
	}

	code := m.Run()

	stopStart := time.Now()
	env.Stop(ctx)
	fmt.Fprintf(os.Stderr, "Local cluster stopped in %v\n", time.Since(stopStart).Round(time.Millisecond))
	if code != 0 {
		dumpLogs(work)
		fmt.Fprintf(os.Stderr, "Kept %s for inspection\n", work)
		return code
	}
	if !*keepWork {
		_ = os.RemoveAll(work)
	}
	return code
}

func buildKubectl(ctx context.Context, repoRoot, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out,
		"-ldflags", "-X k8s.io/component-base/version.gitVersion="+localcluster.KubernetesVersion, "./cmd/kubectl")
	cmd.Dir = filepath.Join(repoRoot, "e2e")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build kubectl: %w", err)
	}
	return nil
}

// dumpLogs prints the end of each plugin's log and of the harness log, so
// that a CI failure can be read without the machine.
func dumpLogs(work string) {
	klog.Flush()
	files, _ := filepath.Glob(filepath.Join(work, "*", "plugin.log"))
	files = append(files, filepath.Join(work, "e2e.log"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(os.Stderr, "----- last lines of %s\n%s\n", f, strings.Join(lines, "\n"))
	}
}
