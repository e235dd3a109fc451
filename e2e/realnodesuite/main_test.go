// Package realnodesuite holds the end-to-end tests that run on a real node:
// a kubelet v1.37.1, containerd v2 and runc (package realnode) registered
// with the local cluster's control plane, the real vgpu-kubelet-plugin
// registered with that kubelet through its plugin registration socket, and
// containers created by runc from images imported into containerd, with the
// plugin's and the (simulated) NVIDIA toolkit's CDI specs applied by
// containerd. One simulated node runs beside it, as in a mixed cluster.
package realnodesuite

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/e2e/localcluster"
	"github.com/hami-dra/hami-dra/e2e/realnode"
)

const (
	realNodeName    = "node-real"
	realNodeProfile = "2xA100-SXM4-80GB"
)

var (
	env   *localcluster.Env
	rnode *localcluster.RealNode
	// skipReason is set when this machine cannot run a real node for a
	// reason a test may skip for (not root); every test then skips with it.
	skipReason string
	keepWork   = flag.Bool("keep", false, "keep the work directory (logs, sockets, state) after the run")
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("skipping the real-node suite in -short mode")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// Only the lack of root is a reason to skip: CI runs as root and builds
	// the binaries (make -C e2e realnode), so anything else missing fails.
	if os.Geteuid() != 0 {
		skipReason = "the real node needs root (kubelet and containerd create cgroups, mounts and device nodes); run as root"
		return m.Run()
	}
	repo, err := localcluster.FindRepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := realnode.Check(filepath.Join(repo, "e2e", "bin")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	work, err := os.MkdirTemp("/tmp", "hr-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "work dir:", err)
		return 1
	}
	logPath := filepath.Join(work, "e2e.log")
	if err := localcluster.LogToFile(logPath, 1); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer klog.Flush()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	fmt.Fprintf(os.Stderr, "Starting the local cluster with a real node in %s (log: %s)\n", work, logPath)
	env, err = localcluster.Start(ctx, localcluster.Options{
		WorkDir:  work,
		Progress: os.Stderr,
		Nodes:    []localcluster.NodeSpec{{Name: "node-sim", Profile: "1xL4"}},
	})
	if err == nil {
		rnode, err = env.StartRealNode(ctx, localcluster.NodeSpec{Name: realNodeName, Profile: realNodeProfile,
			// Recovery from a simulated GPU fault in seconds, not the
			// production 5 minutes (TestRealNodeGPUHealth).
			// The node audit every 2 s with a 6 s grace (TestRealNodeAudit).
			PluginArgs: []string{"--health-quiet-period=2s", "--health-probe-interval=1s", "--health-recovery-probes=2",
				"--audit-interval=2s", "--audit-grace-period=6s"}})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "local cluster with a real node:", err)
		if env != nil {
			env.Stop(ctx)
		}
		dumpLogs(work)
		fmt.Fprintf(os.Stderr, "Kept %s for inspection\n", work)
		return 1
	}
	fmt.Fprintf(os.Stderr, "Local cluster with a real node up in %v\n", time.Since(start).Round(time.Millisecond))

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

// dumpLogs prints the end of the real node's logs (kubelet, containerd,
// plugin) and of the harness log, so that a CI failure can be read without
// the machine.
func dumpLogs(work string) {
	klog.Flush()
	var files []string
	for _, pattern := range []string{"rn-*/kubelet.log", "rn-*/containerd.log", "rn-*/plugin.log", "*/plugin.log", "e2e.log"} {
		m, _ := filepath.Glob(filepath.Join(work, pattern))
		files = append(files, m...)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		fmt.Fprintf(os.Stderr, "----- last lines of %s\n%s\n", f, strings.Join(lines, "\n"))
	}
}
