// Package localcluster assembles the local cluster that the end-to-end
// tests and the demo run: the in-process control plane (package cluster),
// the chart's DeviceClasses, RBAC and admission policy (package chart), and
// per simulated node a real vgpu-kubelet-plugin process (package plugin) and
// a node agent (package nodeagent) that shares one local process runtime.
package localcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/e2e/chart"
	"github.com/hami-dra/hami-dra/e2e/cluster"
	"github.com/hami-dra/hami-dra/e2e/nodeagent"
	"github.com/hami-dra/hami-dra/e2e/plugin"
	"github.com/hami-dra/hami-dra/e2e/podruntime"
)

// KubernetesVersion is the release of the staging modules (client-go,
// kubectl, ...) this module pins; k8s.io/kubernetes itself is v1.37.1 (the
// module proxy does not serve v1.37.2's source).
const KubernetesVersion = "v1.37.2"

// NodeSpec is one simulated node.
type NodeSpec struct {
	Name string
	// Profile is the plugin's --simulate value, e.g. "4xA100-80GB".
	Profile string
	Labels  map[string]string
	// PluginArgs are extra flags of the node's plugin (for example shorter
	// health recovery periods a test can wait for).
	PluginArgs []string
}

// DefaultNodes are the nodes of the demo and the tests: GPUs of different
// models and counts, so that selection by model, multi-GPU claims and
// packing on one GPU can all be shown.
var DefaultNodes = []NodeSpec{
	{Name: "node-a100", Profile: "4xA100-SXM4-80GB"},
	{Name: "node-h100", Profile: "8xH100-SXM5-80GB"},
	{Name: "node-mixed", Profile: "1xA100-PCIE-40GB,1xL4"},
	{Name: "node-single", Profile: "1xA100-SXM4-80GB"},
}

// Options configure Start.
type Options struct {
	// RepoRoot is the driver's repository (default: found from the working
	// directory).
	RepoRoot string
	// WorkDir holds every node's sockets, state and logs. It must be short:
	// unix socket paths are limited to 108 bytes. Default: a new /tmp/hd-*.
	WorkDir string
	Nodes   []NodeSpec
	// LibvgpuPath is libvgpu.so as built by vgpu-core (default
	// <repo>/vgpu-core/build/libvgpu.so). It is copied to a path named by
	// its content hash, since the plugin requires a never-rewritten path.
	LibvgpuPath string
	// Progress, if set, receives one line per startup step.
	Progress io.Writer
	// KubernetesVersion, e.g. "1.34", runs the control plane as that
	// release (cluster.Options.EmulatedVersion) and applies the chart as
	// rendered for it. Empty: 1.37.
	KubernetesVersion string
}

// Node is a running simulated node.
type Node struct {
	Spec NodeSpec
	Dir  string
	// MetricsURL is the plugin's /metrics endpoint.
	MetricsURL  string
	Plugin      *plugin.Process
	agent       *nodeagent.Agent
	agentConfig nodeagent.Config
}

// Agent returns the node's current agent.
func (n *Node) Agent() *nodeagent.Agent { return n.agent }

// Env is a running local cluster.
type Env struct {
	Cluster *cluster.Cluster
	Nodes   []*Node
	// RealNodes are the nodes run by a real kubelet and containerd
	// (StartRealNode).
	RealNodes []*RealNode
	Runtime   *podruntime.Runtime
	WorkDir   string
	RepoRoot  string
	// Libvgpu is the versioned copy of libvgpu.so handed to the plugins.
	Libvgpu string
	// ChartObjects is the chart rendering whose objects were applied.
	ChartObjects []*unstructured.Unstructured

	opts       Options
	fakeDriver fakeDriver
	// ctx is Start's: the lifetime of everything the Env runs.
	ctx      context.Context
	progress func(format string, args ...any)
	mu       sync.Mutex
	ownsWork bool
}

// Node returns the node with that name, or nil.
func (e *Env) Node(name string) *Node {
	for _, n := range e.Nodes {
		if n.Spec.Name == name {
			return n
		}
	}
	return nil
}

// Start builds the binaries and starts everything. On error, whatever was
// started is stopped.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	logger := klog.FromContext(ctx)
	if len(opts.Nodes) == 0 {
		opts.Nodes = DefaultNodes
	}
	if opts.RepoRoot == "" {
		if opts.RepoRoot, err = FindRepoRoot(); err != nil {
			return nil, err
		}
	}
	e := &Env{RepoRoot: opts.RepoRoot, opts: opts, ctx: ctx}
	e.progress = func(format string, args ...any) {
		logger.V(1).Info(fmt.Sprintf(format, args...))
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "  %s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
		}
	}
	if opts.WorkDir == "" {
		if opts.WorkDir, err = os.MkdirTemp("/tmp", "hd-"); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
		e.ownsWork = true
	}
	e.WorkDir = opts.WorkDir
	defer func() {
		if err != nil {
			e.Stop(ctx)
		}
	}()

	binDir := filepath.Join(opts.RepoRoot, "e2e", "bin")
	pluginBin := filepath.Join(binDir, "vgpu-kubelet-plugin")
	podinitBin := filepath.Join(binDir, "podinit")
	e.progress("Building vgpu-kubelet-plugin and podinit (go build; cached after the first run)")
	if err := plugin.Build(ctx, opts.RepoRoot, pluginBin); err != nil {
		return nil, err
	}
	if err := goBuild(ctx, filepath.Join(opts.RepoRoot, "e2e"), podinitBin, "./cmd/podinit"); err != nil {
		return nil, err
	}
	if e.Libvgpu, err = versionedLibvgpu(opts, e.WorkDir); err != nil {
		return nil, err
	}
	if e.fakeDriver, err = findFakeDriver(opts.RepoRoot); err != nil {
		return nil, err
	}

	e.progress("Starting etcd, kube-apiserver, kube-scheduler and controllers (Kubernetes 1.37, in-process)")
	e.Cluster, err = cluster.StartWithOptions(ctx, filepath.Join(e.WorkDir, "control-plane"), cluster.Options{EmulatedVersion: opts.KubernetesVersion})
	if err != nil {
		return nil, err
	}

	e.progress("Applying the Helm chart's RBAC, admission policy and DeviceClasses")
	if err := e.applyChart(ctx); err != nil {
		return nil, err
	}

	e.Runtime, err = podruntime.New(ctx, filepath.Join(e.WorkDir, "runtime"), podinitBin)
	if err != nil {
		return nil, err
	}
	for _, spec := range opts.Nodes {
		e.progress("Starting node %s (%s): node agent and vgpu-kubelet-plugin", spec.Name, spec.Profile)
		n, err := e.startNode(ctx, spec, pluginBin)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", spec.Name, err)
		}
		e.Nodes = append(e.Nodes, n)
	}
	e.progress("Waiting for every node's ResourceSlices")
	for _, n := range e.Nodes {
		if err := e.WaitForSlices(ctx, n.Spec.Name, 2*time.Minute); err != nil {
			return nil, err
		}
	}
	e.progress("Local cluster ready")
	return e, nil
}

func goBuild(ctx context.Context, dir, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// LogToFile sends klog's output (the control plane's, the node agents' and
// the harness's) to path instead of stderr: it is far too much for a
// terminal or a test's output.
func LogToFile(path string, verbosity int) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for k, v := range map[string]string{"logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL",
		"log_file": path, "v": strconv.Itoa(verbosity), "one_output": "true"} {
		if err := fs.Set(k, v); err != nil {
			return fmt.Errorf("klog flag %s: %w", k, err)
		}
	}
	return nil
}

// FindRepoRoot walks up from the working directory to the driver module.
func FindRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/hami-dra/hami-dra\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.mod of github.com/hami-dra/hami-dra) not found above the working directory")
		}
		dir = parent
	}
}

// versionedLibvgpu copies libvgpu.so to <work>/lib/libvgpu-<sha>.so.
func versionedLibvgpu(opts Options, work string) (string, error) {
	src := opts.LibvgpuPath
	if src == "" {
		src = filepath.Join(opts.RepoRoot, "vgpu-core", "build", "libvgpu.so")
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("libvgpu.so (build it with make -C vgpu-core all): %w", err)
	}
	sum := sha256.Sum256(data)
	dst := filepath.Join(work, "lib", "libvgpu-"+hex.EncodeToString(sum[:6])+".so")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		return "", fmt.Errorf("copy libvgpu.so: %w", err)
	}
	return dst, nil
}

func (e *Env) applyChart(ctx context.Context) error {
	var renderOpts chart.Options
	if e.opts.KubernetesVersion != "" {
		renderOpts.KubeVersion = "v" + e.opts.KubernetesVersion + ".0"
	}
	objs, err := chart.RenderWithOptions(renderOpts, nil)
	if err != nil {
		return fmt.Errorf("render chart: %w", err)
	}
	e.ChartObjects = objs
	client := e.Cluster.Client
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: chart.DefaultNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", chart.DefaultNamespace, err)
	}
	// The DaemonSet is not applied: the plugins run as processes here.
	kinds := append([]string{chart.KindDeviceClass}, chart.RBACKinds...)
	if err := chart.Apply(ctx, e.Cluster.Config, chart.SelectKinds(objs, kinds...), chart.ApplyOptions{}); err != nil {
		return fmt.Errorf("apply chart: %w", err)
	}
	return nil
}

func (e *Env) startNode(ctx context.Context, spec NodeSpec, pluginBin string) (*Node, error) {
	dir := filepath.Join(e.WorkDir, spec.Name)
	n := &Node{Spec: spec, Dir: dir}
	labels := map[string]string{"e2e.hami.io/gpu-profile": strings.ReplaceAll(spec.Profile, ",", "_")}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	n.agentConfig = nodeagent.Config{
		NodeName:         spec.Name,
		Labels:           labels,
		Client:           e.Cluster.Client,
		RegistrarDir:     filepath.Join(dir, "reg"),
		StateDir:         filepath.Join(dir, "kubelet"),
		CDIDirs:          []string{filepath.Join(dir, "cdi")},
		LogDir:           filepath.Join(dir, "pods"),
		Runtime:          e.Runtime,
		ExternalPodLabel: chart.PluginPodLabel,
	}
	gpus, err := simulatedGPUs(ctx, spec.Name, spec.Profile)
	if err != nil {
		return nil, err
	}
	devRoot := filepath.Join(dir, "host")
	if err := installNodeDriver(gpus, e.fakeDriver, devRoot, n.agentConfig.CDIDirs[0], filepath.Join(dir, "fake-gpu")); err != nil {
		return nil, err
	}
	// The Node first: the plugin's ResourceSlices are owned by it and the
	// plugin's pod-bound token names it.
	n.agent, err = nodeagent.Start(ctx, n.agentConfig)
	if err != nil {
		return nil, err
	}
	identity, err := chart.PluginIdentity(ctx, e.Cluster.Config, e.ChartObjects, spec.Name)
	if err != nil {
		return nil, fmt.Errorf("plugin identity: %w", err)
	}
	metricsPort, err := cluster.FreePort()
	if err != nil {
		return nil, err
	}
	n.MetricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	kubeconfig := filepath.Join(dir, "plugin.kubeconfig")
	if err := cluster.WriteKubeconfig(kubeconfig, identity, "hami-dra-kubelet-plugin"); err != nil {
		return nil, err
	}
	n.Plugin, err = plugin.New(ctx, plugin.Config{
		Binary:        pluginBin,
		NodeName:      spec.Name,
		Kubeconfig:    kubeconfig,
		PluginDataDir: filepath.Join(dir, "plug"),
		RegistrarDir:  n.agentConfig.RegistrarDir,
		CDIRoot:       n.agentConfig.CDIDirs[0],
		StateDir:      filepath.Join(dir, "state"),
		LibvgpuPath:   e.Libvgpu,
		Simulate:      spec.Profile,
		LogFile:       filepath.Join(dir, "plugin.log"),
		// The node's device nodes, and the toolkit stand-in's CDI devices
		// returned next to the plugin's own (see gpudriver.go).
		ExtraArgs: append([]string{"--dev-root=" + devRoot, "--compose-nvidia-cdi=true", fmt.Sprintf("--metrics-port=%d", metricsPort)}, spec.PluginArgs...),
	})
	if err != nil {
		return nil, err
	}
	if err := n.Plugin.Start(); err != nil {
		return nil, err
	}
	return n, nil
}

// WaitForSlices waits until the node's plugin has published at least one
// ResourceSlice with devices, or its process has died.
func (e *Env) WaitForSlices(ctx context.Context, nodeName string, timeout time.Duration) error {
	n := e.Node(nodeName)
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if n != nil && !n.Plugin.Running() {
			return false, fmt.Errorf("vgpu-kubelet-plugin of %s exited (see %s)", nodeName, n.Plugin.Config().LogFile)
		}
		uids, err := e.sliceUIDs(ctx, nodeName)
		return err == nil && len(uids) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("ResourceSlices of node %s: %w", nodeName, err)
	}
	return nil
}

// RestartAgent stops the node's agent and starts a new one with the same
// configuration, as a kubelet restart would; the containers keep running in
// the shared runtime. With forgetState the agent's state directory (the DRA
// manager's checkpoint) is emptied first, so the new agent prepares every
// claim again, as a kubelet does whose state was lost.
//
// A starting kubelet deletes its node's ResourceSlices (no driver has
// registered with it yet) and the plugin publishes them again once it has
// re-registered; RestartAgent returns after that, so that a pod created
// next is not scheduled against a node without devices.
func (e *Env) RestartAgent(nodeName string, forgetState bool) error {
	n := e.Node(nodeName)
	if n == nil {
		return fmt.Errorf("no node %s", nodeName)
	}
	old, err := e.sliceUIDs(e.ctx, nodeName)
	if err != nil {
		return err
	}
	n.agent.Stop()
	if forgetState {
		entries, err := os.ReadDir(n.agentConfig.StateDir)
		if err != nil {
			return fmt.Errorf("node agent state of %s: %w", nodeName, err)
		}
		for _, entry := range entries {
			if err := os.RemoveAll(filepath.Join(n.agentConfig.StateDir, entry.Name())); err != nil {
				return fmt.Errorf("node agent state of %s: %w", nodeName, err)
			}
		}
	}
	// The agent lives as long as the cluster, not as long as the caller.
	agent, err := nodeagent.Start(e.ctx, n.agentConfig)
	if err != nil {
		return fmt.Errorf("restart node agent of %s: %w", nodeName, err)
	}
	n.agent = agent
	err = wait.PollUntilContextTimeout(e.ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		now, err := e.sliceUIDs(ctx, nodeName)
		if err != nil || len(now) == 0 {
			return false, nil
		}
		for uid := range now {
			if old[uid] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("ResourceSlices of %s not republished after the agent restart: %w", nodeName, err)
	}
	return nil
}

// sliceUIDs returns the UIDs of the node's ResourceSlices that have devices.
func (e *Env) sliceUIDs(ctx context.Context, nodeName string) (map[types.UID]bool, error) {
	slices, err := e.Cluster.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
	if err != nil {
		return nil, fmt.Errorf("ResourceSlices of %s: %w", nodeName, err)
	}
	uids := map[types.UID]bool{}
	for _, s := range slices.Items {
		if s.Spec.Driver == plugin.DriverName && len(s.Spec.Devices) > 0 {
			uids[s.UID] = true
		}
	}
	return uids, nil
}

// Stop shuts everything down in an order that leaves nothing waiting:
// node agents (they close their watches and stop calling the plugins), then
// the containers, then the plugins, then the control plane.
func (e *Env) Stop(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, rn := range e.RealNodes {
		rn.stop(ctx)
	}
	e.RealNodes = nil
	for _, n := range e.Nodes {
		if n.agent != nil {
			n.agent.Stop()
		}
	}
	if e.Runtime != nil {
		e.Runtime.Shutdown(2 * time.Second)
	}
	var wg sync.WaitGroup
	for _, n := range e.Nodes {
		if n.Plugin != nil {
			wg.Go(func() {
				if err := n.Plugin.Stop(5 * time.Second); err != nil {
					klog.FromContext(ctx).Error(err, "Stopping plugin", "node", n.Spec.Name)
				}
			})
		}
	}
	wg.Wait()
	if e.Cluster != nil {
		e.Cluster.Stop(ctx)
	}
	e.Nodes = nil
}

// Cleanup removes the work directory if Start created it.
func (e *Env) Cleanup() error {
	if !e.ownsWork {
		return nil
	}
	return os.RemoveAll(e.WorkDir)
}
