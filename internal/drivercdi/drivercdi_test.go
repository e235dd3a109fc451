package drivercdi

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

const testVersion = "580.82.07"

const visibleDevicesVoid = "NVIDIA_VISIBLE_DEVICES=void"

// allHooks are the hooks nvcdi adds for a driver when a hook binary is
// given: ldcache update and .so symlinks (so that dlopen("libcuda.so.1")
// works), CUDA forward compatibility, the driver's application profiles, and
// the guard that stops NVML from creating device nodes in the container.
var allHooks = []string{"create-symlinks", "disable-device-node-modification", "enable-cuda-compat", "update-application-profile", "update-ldcache"}

// driverLayout is a simulated driver installation: files relative to the
// driver root, as the installers lay them out.
type driverLayout struct {
	libDir string // where the libraries are, e.g. usr/lib/x86_64-linux-gnu
	binDir string // where nvidia-smi is, e.g. usr/bin
}

var (
	hostLayout = driverLayout{libDir: "usr/lib/x86_64-linux-gnu", binDir: "usr/bin"}
	// The GPU Operator's driver container is a distribution root too.
	operatorLayout = driverLayout{libDir: "usr/lib/x86_64-linux-gnu", binDir: "usr/bin"}
	// GKE's installer puts everything under lib64 and bin.
	gkeLayout = driverLayout{libDir: "lib64", binDir: "bin"}
)

// install writes the driver's libraries (with the symlinks ldconfig and the
// installer make) and binaries under root. nvml, when set, is the file to
// install as libnvidia-ml.so.<version> (a loadable NVML); otherwise an
// unloadable placeholder stands in, as with a driver whose NVML the plugin
// cannot load.
func (l driverLayout) install(t *testing.T, root, nvml string) {
	t.Helper()
	lib := filepath.Join(root, l.libDir)
	bin := filepath.Join(root, l.binDir)
	for _, d := range []string{lib, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so"} {
		versioned := name + "." + testVersion
		data := []byte("not an ELF file")
		if name == "libnvidia-ml.so" && nvml != "" {
			var err error
			if data, err = os.ReadFile(nvml); err != nil {
				t.Fatal(err)
			}
		}
		writeFile(t, filepath.Join(lib, versioned), data, 0o755)
		symlink(t, versioned, filepath.Join(lib, name+".1"))
	}
	symlink(t, "libcuda.so.1", filepath.Join(lib, "libcuda.so"))
	writeFile(t, filepath.Join(bin, "nvidia-smi"), []byte("#!/bin/sh\n"), 0o755)
	writeFile(t, filepath.Join(bin, "nvidia-debugdump"), []byte("#!/bin/sh\n"), 0o755)
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// makeDevRoot creates real character devices under devRoot/dev: the CDI
// library reads their type and numbers when it injects them.
func makeDevRoot(t *testing.T, devRoot string, names ...string) {
	t.Helper()
	dev := filepath.Join(devRoot, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		if err := unix.Mknod(filepath.Join(dev, name), unix.S_IFCHR|0o666, int(unix.Mkdev(195, uint32(250+i)))); err != nil {
			t.Skipf("creating device nodes needs CAP_MKNOD: %v", err)
		}
	}
}

func mountsByContainerPath(e cdispec.ContainerEdits) map[string]string {
	out := map[string]string{}
	for _, m := range e.Mounts {
		out[m.ContainerPath] = m.HostPath
	}
	return out
}

func deviceNodePaths(e cdispec.ContainerEdits) []string {
	var out []string
	for _, d := range e.DeviceNodes {
		out = append(out, d.Path+"<-"+d.HostPath)
	}
	sort.Strings(out)
	return out
}

func hookNames(e cdispec.ContainerEdits) []string {
	var out []string
	for _, h := range e.Hooks {
		// nvidia-cdi-hook's subcommand names the hook.
		if len(h.Args) > 1 {
			out = append(out, h.Args[1])
		}
	}
	sort.Strings(out)
	return out
}

func TestGenerate(t *testing.T) {
	fakeNVML := filepath.Join("..", "..", "vgpu-core", "build", "fake", "libnvidia-ml.so.1")
	tests := []struct {
		name      string
		layout    driverLayout
		nvml      bool
		devs      []string
		hook      string
		operator  bool // plugin sees the driver root at another path
		wantDevs  []string
		wantHooks []string
	}{
		{name: "host driver", layout: hostLayout, devs: []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"}, hook: DefaultHookPath,
			wantDevs: []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl"}, wantHooks: allHooks},
		{name: "host driver, NVML loadable", layout: hostLayout, nvml: true, devs: []string{"nvidiactl"}, hook: DefaultHookPath,
			wantDevs: []string{"/dev/nvidiactl"}, wantHooks: allHooks},
		{name: "GPU Operator driver container, UVM not loaded", layout: operatorLayout, operator: true, devs: []string{"nvidiactl", "nvidia-modeset"}, hook: "/usr/local/nvidia/toolkit/nvidia-cdi-hook",
			wantDevs: []string{"/dev/nvidia-modeset", "/dev/nvidiactl"}, wantHooks: allHooks},
		{name: "GKE, no hook binary", layout: gkeLayout, devs: []string{"nvidiactl", "nvidia-uvm"},
			wantDevs: []string{"/dev/nvidia-uvm", "/dev/nvidiactl"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			tmp := t.TempDir()
			nvml := ""
			if tc.nvml {
				if _, err := os.Stat(fakeNVML); err != nil {
					t.Skipf("vgpu-core's fake NVML is not built (make -C vgpu-core): %v", err)
				}
				nvml = fakeNVML
			}
			opts := Options{DriverRoot: filepath.Join(tmp, "driver"), DevRoot: filepath.Join(tmp, "devroot"), HookPath: tc.hook}
			seen := opts.DriverRoot
			if tc.operator {
				// The host's /run/nvidia/driver, mounted at /driver-root in
				// the plugin's container.
				opts.DriverRoot = GPUOperatorDriverRoot
				opts.ContainerDriverRoot = filepath.Join(tmp, "driver-root")
				seen = opts.ContainerDriverRoot
			}
			tc.layout.install(t, seen, nvml)
			makeDevRoot(t, opts.DevRoot, tc.devs...)

			got, err := Generate(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got.DriverVersion != testVersion {
				t.Errorf("driver version %q, want %q", got.DriverVersion, testVersion)
			}
			mounts := mountsByContainerPath(got.ContainerEdits)
			for _, f := range []string{
				tc.layout.libDir + "/libcuda.so." + testVersion,
				tc.layout.libDir + "/libnvidia-ml.so." + testVersion,
				tc.layout.libDir + "/libnvidia-ptxjitcompiler.so." + testVersion,
				tc.layout.binDir + "/nvidia-smi",
				tc.layout.binDir + "/nvidia-debugdump",
			} {
				host, ok := mounts["/"+f]
				if !ok {
					t.Errorf("no mount of /%s; mounts %v", f, mounts)
					continue
				}
				if want := filepath.Join(opts.DriverRoot, f); host != want {
					t.Errorf("/%s mounted from %s, want the host's %s", f, host, want)
				}
			}
			var wantDevs []string
			for _, d := range tc.wantDevs {
				wantDevs = append(wantDevs, d+"<-"+filepath.Join(opts.DevRoot, d))
			}
			sort.Strings(wantDevs)
			if got := deviceNodePaths(got.ContainerEdits); !slices.Equal(got, wantDevs) {
				t.Errorf("device nodes %v, want only the present ones %v", got, wantDevs)
			}
			if got := hookNames(got.ContainerEdits); !slices.Equal(got, tc.wantHooks) {
				t.Errorf("hooks %v, want %v", got, tc.wantHooks)
			}
			for _, h := range got.ContainerEdits.Hooks {
				if h.Path != tc.hook {
					t.Errorf("hook runs %s, want %s", h.Path, tc.hook)
				}
				if strings.Contains(strings.Join(h.Args, " "), tmp+"/driver-root") {
					t.Errorf("hook arguments name the plugin's view of the driver root: %v", h.Args)
				}
			}
			if !slices.Contains(got.ContainerEdits.Env, visibleDevicesVoid) {
				t.Errorf("env %v lacks %s", got.ContainerEdits.Env, visibleDevicesVoid)
			}
		})
	}
}

func TestGenerateWithoutDriver(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	tmp := t.TempDir()
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{name: "driver root missing", opts: Options{DriverRoot: filepath.Join(tmp, "nowhere")}},
		{name: "driver root empty", opts: Options{DriverRoot: tmp}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Generate(ctx, tc.opts)
			if err == nil {
				t.Fatal("no error for a node without a driver")
			}
			if !strings.Contains(err.Error(), tc.opts.DriverRoot) {
				t.Errorf("error does not name the driver root: %v", err)
			}
			if tc.name == "driver root empty" && !errors.Is(err, ErrNoDriver) {
				t.Errorf("error is not ErrNoDriver: %v", err)
			}
		})
	}
}

// TestSpecInjectedByRuntime writes the generated edits into a CDI spec and
// applies it to an OCI spec with the CDI library, as containerd and CRI-O
// do: the result must carry the driver's mounts, only the device nodes
// present, the hooks and the environment.
func TestSpecInjectedByRuntime(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("device nodes")
	}
	_, ctx := ktesting.NewTestContext(t)
	tmp := t.TempDir()
	opts := Options{DriverRoot: filepath.Join(tmp, "driver"), DevRoot: filepath.Join(tmp, "devroot"), HookPath: DefaultHookPath}
	hostLayout.install(t, opts.DriverRoot, "")
	makeDevRoot(t, opts.DevRoot, "nvidiactl", "nvidia-uvm")
	edits, err := Generate(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	spec := &cdispec.Spec{Kind: "hami.io/vgpu", Devices: []cdispec.Device{{Name: "claim", ContainerEdits: edits.ContainerEdits}}}
	if spec.Version, err = cdispec.MinimumRequiredVersion(spec); err != nil {
		t.Fatal(err)
	}
	specDir := filepath.Join(tmp, "cdi")
	cache, err := cdi.NewCache(cdi.WithSpecDirs(specDir), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.WriteSpec(spec, "hami.io-vgpu-test"); err != nil {
		t.Fatalf("the CDI library rejects the spec: %v", err)
	}
	if err := cache.Refresh(); err != nil {
		t.Fatal(err)
	}
	oci := newOCISpec()
	unresolved, err := cache.InjectDevices(oci, "hami.io/vgpu=claim")
	if err != nil {
		t.Fatalf("inject: %v (unresolved %v)", err, unresolved)
	}
	var devs []string
	for _, d := range oci.Linux.Devices {
		devs = append(devs, d.Path)
	}
	sort.Strings(devs)
	if !slices.Equal(devs, []string{"/dev/nvidia-uvm", "/dev/nvidiactl"}) {
		t.Errorf("container devices %v", devs)
	}
	found := false
	for _, m := range oci.Mounts {
		if m.Destination == "/usr/lib/x86_64-linux-gnu/libcuda.so."+testVersion && m.Source == filepath.Join(opts.DriverRoot, "usr/lib/x86_64-linux-gnu/libcuda.so."+testVersion) {
			found = true
		}
	}
	if !found {
		t.Errorf("libcuda.so not mounted: %+v", oci.Mounts)
	}
	if oci.Hooks == nil || len(oci.Hooks.CreateContainer) == 0 {
		t.Errorf("no createContainer hooks (ldcache update): %+v", oci.Hooks)
	}
	if !slices.Contains(oci.Process.Env, visibleDevicesVoid) {
		t.Errorf("container env %v lacks %s", oci.Process.Env, visibleDevicesVoid)
	}
}
