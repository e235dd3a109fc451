package localcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/e2e/chart"
	"github.com/hami-dra/hami-dra/e2e/cluster"
	"github.com/hami-dra/hami-dra/e2e/images"
	"github.com/hami-dra/hami-dra/e2e/plugin"
	"github.com/hami-dra/hami-dra/e2e/realnode"
)

// The images a real node gets (its containerd cannot reach a registry).
const (
	// CUDAImage is a glibc image with a shell, a few coreutils and vgpu-core's
	// CUDA test programs built against the fake driver (quota in
	// /usr/local/bin); nvidia-smi and the driver's libraries come from the
	// (simulated) toolkit's CDI spec, as on a GPU node.
	CUDAImage = "docker.io/local/cuda-sim:1"
	// MinimalImage holds one static program (pause) and nothing else: no
	// libc, no /etc. It is also the node's pod sandbox image.
	MinimalImage = realnode.SandboxImage
	// RealNodeKindLabel is set to "real" on real nodes, "simulated" is not
	// set anywhere: selecting the real node is what tests need.
	RealNodeKindLabel = "e2e.hami.io/node-kind"
	// RealNodeTaint (NoSchedule) keeps pods off the real node unless they
	// tolerate it: it has no pod network, so only hostNetwork pods run
	// there, and the examples, written for any node, must land elsewhere.
	RealNodeTaint = "e2e.hami.io/real-node"
)

// cudaImageTools are the host programs the CUDA image gets, in /usr/bin.
var cudaImageTools = []string{"cat", "ls", "sleep", "env", "sort", "touch", "head", "tail", "grep", "id", "stat", "mkdir", "wc", "tr", "cut", "dd", "mkfifo", "ln"}

// RealNode is a node run by a real kubelet, containerd and runc (package
// realnode) with the real vgpu-kubelet-plugin registered through the
// kubelet's plugin registration directory.
type RealNode struct {
	Spec NodeSpec
	Dir  string
	Node *realnode.Node
	// Plugin runs as a host process, not as the chart's DaemonSet pod: with
	// no pod network here a non-hostNetwork pod cannot start, and no image
	// registry holds the plugin's image. Its flags, sockets and files are
	// the DaemonSet's.
	Plugin     *plugin.Process
	MetricsURL string
}

// StartRealNode adds a real node with spec's simulated GPUs to the cluster:
// the simulated driver (device nodes, the toolkit's CDI spec) in the node's
// directory, containerd and the kubelet, the images imported, then the
// plugin, which registers with the kubelet. It returns once the Node is
// Ready and the plugin's ResourceSlices are published. realnode.Check tells
// beforehand whether the machine can run one.
func (e *Env) StartRealNode(ctx context.Context, spec NodeSpec) (_ *RealNode, err error) {
	binDir := filepath.Join(e.RepoRoot, "e2e", "bin")
	if err := realnode.Check(binDir); err != nil {
		return nil, err
	}
	// Short: the kubelet's plugin sockets live below it.
	dir := filepath.Join(e.WorkDir, "rn-"+spec.Name)
	rn := &RealNode{Spec: spec, Dir: dir}
	defer func() {
		if err != nil {
			rn.stop(ctx)
		}
	}()
	e.progress("Starting real node %s (%s): containerd, kubelet, vgpu-kubelet-plugin", spec.Name, spec.Profile)

	gpus, err := simulatedGPUs(ctx, spec.Name, spec.Profile)
	if err != nil {
		return nil, err
	}
	devRoot := filepath.Join(dir, "host")
	cdiDir := filepath.Join(dir, "cdi")
	fakeGPUState := filepath.Join(dir, "fake-gpu")
	if err := installNodeDriver(gpus, e.fakeDriver, devRoot, cdiDir, fakeGPUState); err != nil {
		return nil, err
	}

	labels := map[string]string{
		"e2e.hami.io/gpu-profile": profileLabel(spec.Profile),
		RealNodeKindLabel:         "real",
	}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	rn.Node, err = realnode.Start(ctx, realnode.Config{
		Name:       spec.Name,
		Labels:     labels,
		BinDir:     binDir,
		Dir:        dir,
		Kubeconfig: e.Cluster.Kubeconfig,
		CDIDir:     cdiDir,
		Taints:     []string{RealNodeTaint + "=true:NoSchedule"},
	})
	if err != nil {
		return nil, err
	}
	e.progress("Importing the images %s and %s into containerd", CUDAImage, MinimalImage)
	if err := e.importImages(ctx, rn.Node, filepath.Join(dir, "images")); err != nil {
		return nil, err
	}
	if err := waitNodeReady(ctx, e, spec.Name, 2*time.Minute, rn.Node); err != nil {
		return nil, err
	}
	if err := setLoopbackAddress(ctx, e, spec.Name); err != nil {
		return nil, err
	}

	identity, err := chart.PluginIdentity(ctx, e.Cluster.Config, e.ChartObjects, spec.Name)
	if err != nil {
		return nil, fmt.Errorf("plugin identity: %w", err)
	}
	kubeconfig := filepath.Join(dir, "plugin.kubeconfig")
	if err := cluster.WriteKubeconfig(kubeconfig, identity, "hami-dra-kubelet-plugin"); err != nil {
		return nil, err
	}
	metricsPort, err := cluster.FreePort()
	if err != nil {
		return nil, err
	}
	rn.MetricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	rn.Plugin, err = plugin.New(ctx, plugin.Config{
		Binary:     filepath.Join(binDir, "vgpu-kubelet-plugin"),
		NodeName:   spec.Name,
		Kubeconfig: kubeconfig,
		// The kubelet's own directories: it finds the plugin by its
		// registration socket, as in production.
		PluginDataDir: rn.Node.PluginDataDir(plugin.DriverName),
		RegistrarDir:  rn.Node.RegistrarDir(),
		CDIRoot:       cdiDir,
		StateDir:      filepath.Join(dir, "state"),
		LibvgpuPath:   e.Libvgpu,
		Simulate:      spec.Profile,
		LogFile:       filepath.Join(dir, "plugin.log"),
		// The node audit reads the pods' processes from the fake NVML, as
		// the real one from the kernel driver: by host PID (the plugin runs
		// in the host's PID namespace, as the chart's hostPID gives it).
		ExtraArgs: append([]string{"--dev-root=" + devRoot, "--compose-nvidia-cdi=true", fmt.Sprintf("--metrics-port=%d", metricsPort),
			"--nvml-library-path=" + filepath.Join(e.fakeDriver.LibDir, "libnvidia-ml.so.1"), "--audit-interval=10s"}, spec.PluginArgs...),
		Env: fakeNVMLEnv(gpus, fakeGPUState),
	})
	if err != nil {
		return nil, err
	}
	if err := rn.Plugin.Start(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.RealNodes = append(e.RealNodes, rn)
	e.mu.Unlock()
	if err := e.WaitForSlices(ctx, spec.Name, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("%w (plugin log: %s, kubelet log: %s)", err, rn.Plugin.Config().LogFile, filepath.Join(dir, "kubelet.log"))
	}
	return rn, nil
}

// RealNode returns the real node with that name, or nil.
func (e *Env) RealNode(name string) *RealNode {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, n := range e.RealNodes {
		if n.Spec.Name == name {
			return n
		}
	}
	return nil
}

// importImages builds the CUDA and minimal images and imports them.
func (e *Env) importImages(ctx context.Context, node *realnode.Node, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pause := filepath.Join(e.RepoRoot, "e2e", "bin", "pause")
	if err := goBuildStatic(ctx, filepath.Join(e.RepoRoot, "e2e"), pause, "./cmd/pause"); err != nil {
		return err
	}
	cuda, err := cudaImage(e.RepoRoot, e.Libvgpu, e.fakeDriver)
	if err != nil {
		return err
	}
	for _, img := range []images.Image{
		{Name: MinimalImage, Files: []images.File{{Path: "/pause", Source: pause}}, Entrypoint: []string{"/pause"}},
		cuda,
	} {
		archive := filepath.Join(dir, filepath.Base(img.Name)+".tar")
		if err := images.WriteArchiveFile(archive, img); err != nil {
			return err
		}
		if err := node.ImportImage(ctx, archive); err != nil {
			return err
		}
	}
	return nil
}

// cudaImage is the glibc image: a shell, coreutils, the CUDA test programs,
// and every library these and the files the CDI specs mount (libvgpu, the
// fake driver's libraries, nvidia-smi) need, except the driver libraries
// the toolkit's spec provides.
func cudaImage(repoRoot, libvgpu string, drv fakeDriver) (images.Image, error) {
	programs := map[string]string{"/bin/sh": "/bin/sh"}
	for _, tool := range cudaImageTools {
		host, err := exec.LookPath(tool)
		if err != nil {
			return images.Image{}, fmt.Errorf("CUDA image: %w", err)
		}
		programs["/usr/bin/"+tool] = host
	}
	testsDir := filepath.Join(repoRoot, "vgpu-core", "build", "tests")
	for _, name := range []string{"quota", "quota-static"} {
		programs["/usr/local/bin/"+name] = filepath.Join(testsDir, name)
	}
	provided := map[string]bool{"libcuda.so.1": true, "libnvidia-ml.so.1": true}
	files, err := images.Programs(provided, programs)
	if err != nil {
		return images.Image{}, fmt.Errorf("CUDA image: %w", err)
	}
	mounted, err := images.Libraries(provided, libvgpu,
		filepath.Join(drv.LibDir, "libcuda.so.1"), filepath.Join(drv.LibDir, "libnvidia-ml.so.1"), drv.NvidiaSMI)
	if err != nil {
		return images.Image{}, fmt.Errorf("CUDA image: libraries of what the CDI specs mount: %w", err)
	}
	files = append(files, mounted...)
	files = append(files,
		images.File{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n")},
		images.File{Path: "/etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		// Tells a test that it looks at the image's root filesystem.
		images.File{Path: "/etc/hami-e2e-image", Data: []byte("cuda-sim\n")},
	)
	return images.Image{
		Name:  CUDAImage,
		Files: dedupe(files),
		Cmd:   []string{"/bin/sh"},
		Env:   []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
	}, nil
}

// profileLabel is a profile as a label value ("," is not allowed there).
func profileLabel(profile string) string { return strings.ReplaceAll(profile, ",", "_") }

// dedupe drops repeated files (a library two programs need).
func dedupe(files []images.File) []images.File {
	seen := map[string]bool{}
	out := files[:0]
	for _, f := range files {
		if !seen[f.Path] {
			seen[f.Path] = true
			out = append(out, f)
		}
	}
	return out
}

func goBuildStatic(ctx context.Context, dir, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// waitNodeReady waits for the kubelet to register its Node and report it
// Ready (the runtime's network included).
func waitNodeReady(ctx context.Context, e *Env, name string, timeout time.Duration, node *realnode.Node) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if !node.KubeletRunning() {
			return false, fmt.Errorf("kubelet exited (see %s)", filepath.Join(node.LogDir, "kubelet.log"))
		}
		n, err := e.Cluster.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		last = "no Ready condition yet"
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s not Ready (%s; kubelet log: %s): %w", name, last, filepath.Join(node.LogDir, "kubelet.log"), err)
	}
	return nil
}

// setLoopbackAddress gives the Node the addresses the kubelet does not: it
// serves on 127.0.0.1 (anonymously, so only on loopback), and refuses a
// loopback --node-ip ("nodeIP can't be loopback address"), which leaves
// the Node without addresses; the API server then cannot reach the kubelet
// for logs and exec. The kubelet's own status updates keep addresses it
// did not set.
func setLoopbackAddress(ctx context.Context, e *Env, name string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := e.Cluster.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: name}}
		_, err = e.Cluster.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

// RestartPlugin kills the node's plugin (SIGKILL, as a crash) and starts it
// again; it returns once the plugin has re-registered and republished.
func (rn *RealNode) RestartPlugin(ctx context.Context, e *Env) error {
	if err := rn.Plugin.Kill(); err != nil {
		return err
	}
	if err := rn.Plugin.Start(); err != nil {
		return err
	}
	return e.WaitForSlices(ctx, rn.Spec.Name, time.Minute)
}

// stop stops the plugin and the node (kubelet, containers, containerd).
func (rn *RealNode) stop(ctx context.Context) {
	if rn.Node != nil {
		// The kubelet first: it would otherwise call the stopped plugin.
		rn.Node.Stop(ctx)
	}
	if rn.Plugin != nil {
		if err := rn.Plugin.Stop(5 * time.Second); err != nil {
			klog.FromContext(ctx).Error(err, "Stopping plugin", "node", rn.Spec.Name)
		}
	}
}
