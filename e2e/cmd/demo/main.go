// Command demo runs the local cluster (a real Kubernetes 1.37 control plane,
// simulated GPU nodes, a real vgpu-kubelet-plugin per node) until Ctrl-C, and
// tells the user how to reach it with kubectl. `make demo` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/e2e/localcluster"
	"github.com/hami-dra/hami-dra/e2e/realnode"
)

func main() {
	os.Exit(run())
}

func run() int {
	// A flag set of its own: the Kubernetes packages linked in register
	// flags of theirs (-v among them) on the default one.
	flags := flag.NewFlagSet("demo", flag.ExitOnError)
	stateDir := flags.String("state-dir", ".demo", "where the kubeconfig and the logs go (relative to the repository root)")
	kubectl := flags.String("kubectl", "e2e/bin/kubectl", "the kubectl binary to recommend (relative to the repository root)")
	verbosity := flags.Int("v", 1, "log verbosity of the control plane and the node agents (their log file)")
	realNode := flags.String("real-node", "auto", "add a node run by a real kubelet, containerd and runc: auto (when this machine can run one: root, make -C e2e realnode done), on (fail if it cannot), off")
	_ = flags.Parse(os.Args[1:])
	if *realNode != "auto" && *realNode != "on" && *realNode != "off" {
		fmt.Fprintf(os.Stderr, "-real-node=%q: want auto, on or off\n", *realNode)
		return 2
	}

	repo, err := localcluster.FindRepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir := *stateDir
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(repo, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	logPath := filepath.Join(dir, "cluster.log")
	if err := localcluster.LogToFile(logPath, *verbosity); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer klog.Flush()

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	fmt.Printf("Starting the hami-dra local cluster (log: %s)\n", logPath)
	start := time.Now()
	env, err := localcluster.Start(ctx, localcluster.Options{Progress: os.Stdout})
	if err != nil {
		fmt.Fprintf(os.Stderr, "local cluster: %v\n(see %s)\n", err, logPath)
		return 1
	}
	// Stop on a context of its own: ctx is already cancelled by then.
	defer func() {
		fmt.Println("\nStopping: node agents, pods, plugins, then the control plane ...")
		stopStart := time.Now()
		env.Stop(context.Background())
		_ = env.Cleanup()
		fmt.Printf("Stopped in %v.\n", time.Since(stopStart).Round(time.Millisecond))
	}()

	// The real node, when this machine can run one; the reason when not.
	realNote := "off (-real-node=off)"
	if *realNode != "off" {
		if err := realnode.Check(filepath.Join(repo, "e2e", "bin")); err != nil {
			if *realNode == "on" {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			realNote = err.Error()
		} else if _, err := env.StartRealNode(ctx, localcluster.NodeSpec{Name: "node-real", Profile: "2xA100-SXM4-80GB"}); err != nil {
			// The machine should run it and did not: say so and stop,
			// rather than go on without it (-real-node=off does that).
			fmt.Fprintf(os.Stderr, "real node: %v\n(see %s; -real-node=off runs the simulated nodes only)\n", err, logPath)
			return 1
		} else {
			realNote = ""
		}
	}

	kubeconfig := filepath.Join(dir, "kubeconfig")
	data, err := os.ReadFile(env.Cluster.Kubeconfig)
	if err == nil {
		err = os.WriteFile(kubeconfig, data, 0o600)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeconfig: %v\n", err)
		return 1
	}
	kubectlPath := *kubectl
	if !filepath.IsAbs(kubectlPath) {
		kubectlPath = filepath.Join(repo, kubectlPath)
	}
	printHelp(env, time.Since(start), kubeconfig, kubectlPath, repo, realNote)
	<-ctx.Done()
	return 0
}

func printHelp(env *localcluster.Env, took time.Duration, kubeconfig, kubectl, repo, realNote string) {
	var nodes []string
	for _, n := range env.Nodes {
		nodes = append(nodes, fmt.Sprintf("    %-12s %-24s simulated: node agent, pods run as local processes", n.Spec.Name, n.Spec.Profile))
	}
	for _, n := range env.RealNodes {
		nodes = append(nodes, fmt.Sprintf("    %-12s %-24s real: kubelet v1.37.1, containerd 2, runc (tainted %s; hostNetwork pods only)", n.Spec.Name, n.Spec.Profile, localcluster.RealNodeTaint))
	}
	if realNote != "" {
		nodes = append(nodes, "    no real node: "+realNote)
	}
	rel := func(p string) string {
		if r, err := filepath.Rel(repo, p); err == nil && !strings.HasPrefix(r, "..") {
			return r
		}
		return p
	}
	fmt.Printf(`
The local cluster is up (%v): Kubernetes 1.37 control plane (k8s.io/kubernetes v1.37.1, kubectl %s), %d GPU nodes:
%s
Each node runs the real vgpu-kubelet-plugin (logs: %s/<node>/plugin.log) and
libvgpu is preloaded into every pod.

In another terminal, from %s:

  export KUBECONFIG=%s PATH=%s:$PATH
  kubectl get nodes
  kubectl get resourceslices
  kubectl get deviceclasses
  kubectl apply -f deployments/examples/memory-share.yaml      # 20Gi of any GPU
  kubectl get pods -o wide
  kubectl logs memory-share                                     # nvidia-smi shows 20480MiB
  kubectl get resourceclaims -o yaml                            # what the scheduler allocated
  make kubectl-hami && PATH=$PWD/bin:$PATH kubectl hami gpus    # every GPU: shares, free room, health (also: claims, fit --memory 20Gi)
  kubectl apply -f deployments/examples/two-gpus.yaml           # two GPUs, 24Gi each
  kubectl apply -f deployments/examples/h100-share.yaml         # the H100 DeviceClass
  kubectl apply -f deployments/examples/job.yaml                # a Job: 4 completions, 10Gi each
  kubectl apply -f e2e/realnode/pod.yaml                        # on the real node, if there is one

Press Ctrl-C to stop.
`, took.Round(time.Second), localcluster.KubernetesVersion, len(env.Nodes)+len(env.RealNodes), strings.Join(nodes, "\n"),
		env.WorkDir, repo, rel(kubeconfig), filepath.Dir(rel(kubectl)))
}
