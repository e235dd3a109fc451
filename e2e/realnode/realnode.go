// Package realnode runs a real Kubernetes node on this machine: the kubelet
// (k8s.io/kubernetes v1.37.1), containerd v2 with its CRI plugin and CDI
// support, and runc, each a separate process built from its Go module (see
// e2e/Makefile, `make -C e2e realnode`). The kubelet registers with the
// local cluster's API server, finds DRA kubelet plugins through its plugin
// registration directory and hands the claims' CDI device IDs to containerd,
// which resolves them in its CDI spec directory and has runc create the
// containers, exactly as on a production node.
//
// What a node on these machines needs, and why (see e2e/README.md):
//   - cgroup v1 (hybrid) hosts: the kubelet runs with failCgroupV1: false and
//     the cgroupfs driver (no systemd here);
//   - no CAP_SYS_RESOURCE in the sandbox: containerd's CRI must not ask runc
//     to lower oom_score_adj (restrict_oom_score_adj);
//   - no registry: images are imported from OCI archives (package images),
//     the pod sandbox image among them;
//   - no pod network: the CNI configuration has only the loopback plugin,
//     which makes the runtime's network ready; pods use hostNetwork.
package realnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"
)

// The binaries a real node needs in its BinDir, as e2e/Makefile builds them.
var binaries = []string{"kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "cni/loopback"}

// SandboxImage is the pod sandbox ("pause") image the node's containerd is
// configured with; the harness imports it, no registry being reachable.
const SandboxImage = "docker.io/local/pause:1"

// Config is one real node.
type Config struct {
	// Name is the Node's name.
	Name string
	// Labels are given to the kubelet (--node-labels).
	Labels map[string]string
	// Taints are registered with the Node (--register-with-taints), as
	// key=value:effect.
	Taints []string
	// BinDir holds the binaries (e2e/bin).
	BinDir string
	// Dir holds every directory, socket and log of the node. It must be
	// short: unix socket paths are limited to 108 bytes.
	Dir string
	// Kubeconfig is the kubelet's credential for the API server.
	Kubeconfig string
	// CDIDir is containerd's CDI spec directory: the plugin's --cdi-root,
	// where the (simulated) NVIDIA toolkit's spec is written too.
	CDIDir string
}

// Node is a running real node.
type Node struct {
	cfg Config
	// KubeletRoot is the kubelet's --root-dir: plugin registration happens
	// in KubeletRoot/plugins_registry, plugin sockets live in
	// KubeletRoot/plugins.
	KubeletRoot string
	// ContainerdSocket is the CRI endpoint.
	ContainerdSocket string
	// PodLogsDir is the kubelet's podLogsDir (/var/log/pods on a node).
	PodLogsDir string
	// LogDir holds containerd.log and kubelet.log.
	LogDir string

	containerd *process
	kubelet    *process
	logger     klog.Logger
}

// RegistrarDir is where the kubelet watches for plugin registration sockets.
func (n *Node) RegistrarDir() string { return filepath.Join(n.KubeletRoot, "plugins_registry") }

// PluginDataDir is where a DRA driver's kubelet plugin keeps its socket.
func (n *Node) PluginDataDir(driver string) string {
	return filepath.Join(n.KubeletRoot, "plugins", driver)
}

// Check tells whether this machine can run a real node, and if not, exactly
// what is missing.
func Check(binDir string) error {
	var problems []string
	if os.Geteuid() != 0 {
		problems = append(problems, "it needs root (a kubelet and a container runtime create cgroups, mounts and device nodes)")
	}
	var missing []string
	for _, b := range binaries {
		if st, err := os.Stat(filepath.Join(binDir, b)); err != nil || st.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("%s not built in %s (run: make -C e2e realnode)", strings.Join(missing, ", "), binDir))
	}
	_, v1 := os.Stat("/sys/fs/cgroup/devices/devices.list")
	_, v2 := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	if v1 != nil && v2 != nil {
		problems = append(problems, "no cgroup v1 devices controller nor cgroup v2 hierarchy under /sys/fs/cgroup")
	}
	if len(problems) > 0 {
		return fmt.Errorf("this machine cannot run a real node: %s", strings.Join(problems, "; "))
	}
	return nil
}

// Start starts containerd, then the kubelet, and returns once containerd
// answers CRI requests. The kubelet registers its Node by itself; callers
// wait for it (WaitForNode in package localcluster).
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := Check(cfg.BinDir); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:              cfg,
		KubeletRoot:      filepath.Join(cfg.Dir, "kl"),
		ContainerdSocket: filepath.Join(cfg.Dir, "c.sock"),
		PodLogsDir:       filepath.Join(cfg.Dir, "pod-logs"),
		LogDir:           cfg.Dir,
		logger:           klog.FromContext(ctx).WithName("realnode").WithValues("node", cfg.Name),
	}
	defer func() {
		if err != nil {
			n.Stop(context.Background())
		}
	}()
	for _, d := range []string{n.KubeletRoot, n.PodLogsDir, cfg.CDIDir, filepath.Join(cfg.Dir, "cni")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("real node dir: %w", err)
		}
	}

	containerdConfig := filepath.Join(cfg.Dir, "containerd.toml")
	if err := os.WriteFile(containerdConfig, []byte(n.containerdConfig()), 0o644); err != nil {
		return nil, fmt.Errorf("containerd config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "cni", "10-loopback.conflist"), []byte(cniConfig), 0o644); err != nil {
		return nil, fmt.Errorf("CNI config: %w", err)
	}
	n.containerd = &process{
		name:    "containerd",
		binary:  filepath.Join(cfg.BinDir, "containerd"),
		args:    []string{"--config", containerdConfig},
		env:     []string{"PATH=" + cfg.BinDir + ":" + os.Getenv("PATH")},
		logFile: filepath.Join(n.LogDir, "containerd.log"),
	}
	if err := n.containerd.start(); err != nil {
		return nil, err
	}
	if err := n.waitCRI(ctx, time.Minute); err != nil {
		return nil, err
	}

	kubeletConfig := filepath.Join(cfg.Dir, "kubelet.yaml")
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(kubeletConfig, []byte(n.kubeletConfig(port)), 0o644); err != nil {
		return nil, fmt.Errorf("kubelet config: %w", err)
	}
	var labels []string
	for k, v := range cfg.Labels {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	n.kubelet = &process{
		name:   "kubelet",
		binary: filepath.Join(cfg.BinDir, "kubelet"),
		args: []string{
			"--config=" + kubeletConfig,
			"--kubeconfig=" + cfg.Kubeconfig,
			"--root-dir=" + n.KubeletRoot,
			"--cert-dir=" + filepath.Join(n.KubeletRoot, "pki"),
			"--hostname-override=" + cfg.Name,
			"--node-ip=127.0.0.1",
			"--node-labels=" + strings.Join(labels, ","),
			"--v=2",
		},
		logFile: filepath.Join(n.LogDir, "kubelet.log"),
	}
	if len(cfg.Taints) > 0 {
		n.kubelet.args = append(n.kubelet.args, "--register-with-taints="+strings.Join(cfg.Taints, ","))
	}
	if err := n.kubelet.start(); err != nil {
		return nil, err
	}
	n.logger.V(1).Info("Real node started", "dir", cfg.Dir)
	return n, nil
}

// cniConfig is the node's only network: the loopback plugin. It makes the
// runtime report its network ready (and so the kubelet its Node Ready);
// pods without hostNetwork would get no interface besides lo and fail
// sandbox creation, which is why the real node's pods use hostNetwork.
const cniConfig = `{"cniVersion": "1.0.0", "name": "hami-e2e-loopback", "plugins": [{"type": "loopback"}]}
`

// containerdConfig is containerd's configuration (version 3, containerd
// 2.x): every path inside the node's directory, CDI specs from CDIDir, runc
// from BinDir, the imported pause image as the sandbox image.
func (n *Node) containerdConfig() string {
	d := n.cfg.Dir
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = %[4]q
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %[5]q
  [plugins.'io.containerd.cri.v1.runtime']
    # The sandbox lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
    restrict_oom_score_adj = true
    cdi_spec_dirs = [%[6]q]
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %[7]q
          Root = %[8]q
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%[9]q]
      conf_dir = %[10]q
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`, filepath.Join(d, "containerd"), filepath.Join(d, "run"), n.ContainerdSocket, filepath.Join(d, "opt"),
		SandboxImage, n.cfg.CDIDir, filepath.Join(n.cfg.BinDir, "runc"), filepath.Join(d, "runc"),
		filepath.Join(n.cfg.BinDir, "cni"), filepath.Join(d, "cni"))
}

// kubeletConfig is the KubeletConfiguration. Beyond the paths, each
// setting is there because these machines need it (see the package doc):
// cgroup v1 allowed, cgroupfs, swap tolerated, no disk-pressure eviction
// or image GC on a shared machine's disk, and an API server that reaches
// the kubelet (logs, exec) anonymously on 127.0.0.1.
func (n *Node) kubeletConfig(port int) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://%[1]s
podLogsDir: %[2]s
address: 127.0.0.1
port: %[3]d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1Mi"
  imagefs.available: "1Mi"
  nodefs.inodesFree: "1"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 10s
shutdownGracePeriod: 0s
resolvConf: ""
`, n.ContainerdSocket, n.PodLogsDir, port)
}

// Config returns the node's configuration.
func (n *Node) Config() Config { return n.cfg }

// KubeletRunning reports whether the kubelet process is alive.
func (n *Node) KubeletRunning() bool { return n.kubelet != nil && n.kubelet.running() }

// ContainerdRunning reports whether containerd is alive.
func (n *Node) ContainerdRunning() bool { return n.containerd != nil && n.containerd.running() }

// RestartKubelet stops the kubelet (SIGTERM) and starts it again with the
// same configuration and state; the containers keep running under
// containerd, as on a node whose kubelet restarts.
func (n *Node) RestartKubelet() error {
	if err := n.kubelet.stop(10 * time.Second); err != nil {
		return err
	}
	return n.kubelet.start()
}

// ImportImage imports an OCI archive into the CRI's image namespace.
func (n *Node) ImportImage(ctx context.Context, archive string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(n.cfg.BinDir, "ctr"),
		"--address", n.ContainerdSocket, "--namespace", "k8s.io",
		"images", "import", "--platform", "linux/amd64", archive)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %w: %s", archive, err, out)
	}
	n.logger.V(1).Info("Imported image", "archive", archive, "output", strings.TrimSpace(string(out)))
	return nil
}

// CRI returns a client of containerd's CRI runtime service and a function
// to close it.
func (n *Node) CRI() (runtimeapi.RuntimeServiceClient, func(), error) {
	conn, err := grpc.NewClient("unix://"+n.ContainerdSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("CRI client: %w", err)
	}
	return runtimeapi.NewRuntimeServiceClient(conn), func() { conn.Close() }, nil
}

func (n *Node) waitCRI(ctx context.Context, timeout time.Duration) error {
	client, closeFn, err := n.CRI()
	if err != nil {
		return err
	}
	defer closeFn()
	deadline := time.Now().Add(timeout)
	for {
		if !n.containerd.running() {
			return fmt.Errorf("containerd exited (see %s)", n.containerd.logFile)
		}
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := client.Version(callCtx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd's CRI did not answer within %v: %w (see %s)", timeout, err, n.containerd.logFile)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop stops the kubelet, removes every pod sandbox (and so every
// container) through the CRI, stops containerd and unmounts what it left
// mounted under the node's directory. Nothing of the node keeps running.
func (n *Node) Stop(ctx context.Context) {
	var errs []error
	if n.kubelet != nil {
		errs = append(errs, n.kubelet.stop(10*time.Second))
	}
	if n.containerd != nil && n.containerd.running() {
		errs = append(errs, n.removeSandboxes(ctx))
		errs = append(errs, n.containerd.stop(10*time.Second))
	}
	errs = append(errs, unmountUnder(n.cfg.Dir))
	if err := errors.Join(errs...); err != nil {
		n.logger.Error(err, "Stopping the real node")
	}
}

func (n *Node) removeSandboxes(ctx context.Context) error {
	client, closeFn, err := n.CRI()
	if err != nil {
		return err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := client.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, s := range resp.Items {
		if _, err := client.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s: %w", s.Id, err))
		}
		if _, err := client.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox %s: %w", s.Id, err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount point below dir, deepest first:
// containerd's snapshot and shm mounts outlive a containerd that was
// stopped, and a directory with mounts cannot be removed.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("mountinfo: %w", err)
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			points = append(points, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
