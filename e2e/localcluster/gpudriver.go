package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// What a simulated node provides in place of the NVIDIA kernel driver and the
// NVIDIA Container Toolkit, so that pods run CUDA programs against the fake
// driver of vgpu-core exactly as they would against the real one:
//
//   - device nodes: /dev/nvidia<minor>, nvidiactl, nvidia-uvm and
//     nvidia-uvm-tools, real character devices (NVIDIA's major numbers) in a
//     per-node directory given to the plugin as --dev-root. Nothing opens
//     them; the CDI library needs them to be device nodes.
//   - the toolkit's CDI spec (kind nvidia.com/gpu, one device per GPU UUID,
//     as `nvidia-ctk cdi generate` names them). The plugin runs with
//     --compose-nvidia-cdi, so the kubelet passes these IDs with the plugin's
//     own and the runtime merges both specs, as on a real node. The spec
//     mounts the fake libcuda.so.1 and libnvidia-ml.so.1 where the toolkit
//     mounts the driver's libraries, the simulated nvidia-smi on
//     /usr/bin/nvidia-smi, and tells the fake driver which GPUs the container
//     sees (one FAKE_GPU_DEV_<minor> variable per injected GPU) and where the
//     node's simulated physical memory lives (shared by all pods of the node).
const (
	toolkitKind       = "nvidia.com/gpu"
	containerLibDir   = "/usr/local/nvidia/lib64"
	containerStateDir = "/run/hami-dra-fake-gpu"
	nvidiaMajor       = 195
	nvidiaCtlMinor    = 255
	// The UVM major is dynamic on a real node; any free one will do here.
	nvidiaUVMMajor = 235
)

// fakeDriver is the fake driver's build output (vgpu-core/build/fake).
type fakeDriver struct {
	LibDir    string // libcuda.so.1, libnvidia-ml.so.1
	NvidiaSMI string
}

func findFakeDriver(repoRoot string) (fakeDriver, error) {
	dir := filepath.Join(repoRoot, "vgpu-core", "build", "fake")
	d := fakeDriver{LibDir: dir, NvidiaSMI: filepath.Join(dir, "nvidia-smi")}
	for _, f := range []string{filepath.Join(dir, "libcuda.so.1"), filepath.Join(dir, "libnvidia-ml.so.1"), d.NvidiaSMI} {
		if _, err := os.Stat(f); err != nil {
			return fakeDriver{}, fmt.Errorf("fake GPU driver (build it with make -C vgpu-core all): %w", err)
		}
	}
	return d, nil
}

// simulatedGPUs discovers the node's GPUs with the plugin's own simulated
// discovery, so the device nodes and the toolkit spec match, UUID for UUID,
// what the plugin publishes.
func simulatedGPUs(ctx context.Context, nodeName, profile string) ([]discovery.GPU, error) {
	p, err := discovery.LoadProfile(profile)
	if err != nil {
		return nil, fmt.Errorf("simulated profile %q: %w", profile, err)
	}
	d, err := discovery.NewSimulated(nodeName, p)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Discover(ctx)
}

// installNodeDriver creates the node's device nodes under devRoot/dev and
// writes the toolkit's CDI spec into cdiDir.
func installNodeDriver(gpus []discovery.GPU, drv fakeDriver, devRoot, cdiDir, stateDir string) error {
	devDir := filepath.Join(devRoot, "dev")
	for _, dir := range []string{devDir, cdiDir, stateDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("node driver dir: %w", err)
		}
	}
	// Pods may run as any user; the simulated memory is the node's.
	if err := os.Chmod(stateDir, 0o1777); err != nil {
		return fmt.Errorf("node driver state dir: %w", err)
	}
	nodes := map[string][2]uint32{
		"nvidiactl":        {nvidiaMajor, nvidiaCtlMinor},
		"nvidia-uvm":       {nvidiaUVMMajor, 0},
		"nvidia-uvm-tools": {nvidiaUVMMajor, 1},
	}
	for _, g := range gpus {
		nodes[fmt.Sprintf("nvidia%d", g.Minor)] = [2]uint32{nvidiaMajor, uint32(g.Minor)}
	}
	for name, num := range nodes {
		if err := mknodChar(filepath.Join(devDir, name), num[0], num[1]); err != nil {
			return err
		}
	}

	spec := &cdispec.Spec{
		Kind: toolkitKind,
		ContainerEdits: cdispec.ContainerEdits{
			Env: []string{
				"LD_LIBRARY_PATH=" + containerLibDir,
				"FAKE_GPU_STATE=" + containerStateDir + "/state",
			},
			Mounts: []*cdispec.Mount{
				roMount(filepath.Join(drv.LibDir, "libcuda.so.1"), containerLibDir+"/libcuda.so.1"),
				roMount(filepath.Join(drv.LibDir, "libnvidia-ml.so.1"), containerLibDir+"/libnvidia-ml.so.1"),
				roMount(drv.NvidiaSMI, "/usr/bin/nvidia-smi"),
				{HostPath: stateDir, ContainerPath: containerStateDir, Options: []string{"rw", "nosuid", "nodev", "bind"}},
			},
		},
	}
	for _, g := range gpus {
		spec.Devices = append(spec.Devices, cdispec.Device{
			Name:           g.UUID,
			ContainerEdits: cdispec.ContainerEdits{Env: []string{fakeGPUVariable(g)}},
		})
	}
	version, err := cdispec.MinimumRequiredVersion(spec)
	if err != nil {
		return fmt.Errorf("toolkit CDI spec version: %w", err)
	}
	spec.Version = version
	cache, err := cdi.NewCache(cdi.WithSpecDirs(cdiDir), cdi.WithAutoRefresh(false))
	if err != nil {
		return fmt.Errorf("CDI cache: %w", err)
	}
	if err := cache.WriteSpec(spec, "nvidia-toolkit-simulated"); err != nil {
		return fmt.Errorf("write toolkit CDI spec: %w", err)
	}
	return nil
}

// fakeGPUVariable tells the fake driver about one GPU of the node.
func fakeGPUVariable(g discovery.GPU) string {
	return fmt.Sprintf("FAKE_GPU_DEV_%d=%s,%s,%d,%s", g.Minor, g.PCIBusID, g.UUID, g.MemoryBytes, g.ProductName)
}

// fakeNVMLEnv is the environment in which the fake libnvidia-ml, loaded by
// a host process (the plugin's node audit), sees the node's simulated GPUs
// and the processes of every pod using them, as the real NVML sees the
// real ones.
func fakeNVMLEnv(gpus []discovery.GPU, stateDir string) []string {
	env := []string{"FAKE_GPU_STATE=" + filepath.Join(stateDir, "state")}
	for _, g := range gpus {
		env = append(env, fakeGPUVariable(g))
	}
	return env
}

func roMount(host, container string) *cdispec.Mount {
	return &cdispec.Mount{HostPath: host, ContainerPath: container, Options: []string{"ro", "nosuid", "nodev", "bind"}}
}

// mknodChar creates a character device node, replacing a stale one.
func mknodChar(path string, major, minor uint32) error {
	dev := int(unix.Mkdev(major, minor))
	err := syscall.Mknod(path, syscall.S_IFCHR|0o666, dev)
	if errors.Is(err, os.ErrExist) {
		if err = os.Remove(path); err == nil {
			err = syscall.Mknod(path, syscall.S_IFCHR|0o666, dev)
		}
	}
	if err != nil {
		return fmt.Errorf("device node %s (the local cluster needs CAP_MKNOD): %w", path, err)
	}
	return nil
}
