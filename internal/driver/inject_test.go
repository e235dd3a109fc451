package driver

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
)

// TestCDISpecsApplyToOCISpec runs the specs the plugin wrote, together with
// a stand-in for the NVIDIA Container Toolkit's spec, through the CDI
// library the way a runtime does, and checks the container that results.
func TestCDISpecsApplyToOCISpec(t *testing.T) {
	c := newClaim("inject", []share{{"a", 0, "2Gi", "10"}, {"c", 2, "1Gi", "20"}})
	e := newEnv(t, c)
	toolkit := `{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[` +
		`{"name":"` + testGPUs[0].UUID + `","containerEdits":{"env":["TOOLKIT_GPU_A=1"]}},` +
		`{"name":"` + testGPUs[2].UUID + `","containerEdits":{"env":["TOOLKIT_GPU_C=1"]}}],` +
		`"containerEdits":{"mounts":[{"hostPath":"/usr/lib/libcuda.so.1","containerPath":"/usr/lib/libcuda.so.1","options":["ro","bind"]}]}}`
	mustWrite(t, filepath.Join(e.cfg.CDIRoot, "nvidia.json"), toolkit)
	e.cfg.ComposeNvidiaCDI = true // and Prepare checks that the toolkit's devices resolve
	e.restart(t)

	res := e.prepare(t, c)[string(c.UID)]
	if res.Error != "" {
		t.Fatal(res.Error)
	}
	var ids []string // the kubelet passes the union for a container using the whole claim
	for _, d := range res.Devices {
		for _, id := range d.CdiDeviceIds {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(e.cfg.CDIRoot), cdiapi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI cache errors: %v", errs)
	}
	spec := &oci.Spec{Process: &oci.Process{Env: []string{"PATH=/bin"}}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(spec, ids...); err != nil {
		t.Fatalf("inject %v: %v (unresolved %v)", ids, err, unresolved)
	}

	for _, want := range []string{
		"CUDA_DEVICE_MEMORY_LIMIT_0=" + strconv.FormatInt(1*gib, 10), // GPU c: PCI 01 comes first
		"CUDA_DEVICE_SM_LIMIT_0=20",
		"CUDA_DEVICE_MEMORY_LIMIT_1=" + strconv.FormatInt(2*gib, 10),
		"CUDA_DEVICE_SM_LIMIT_1=10",
		"VGPU_DEVICE_UUIDS=" + testGPUs[2].UUID + "," + testGPUs[0].UUID,
		"CUDA_DEVICE_ORDER=PCI_BUS_ID", "TOOLKIT_GPU_A=1", "TOOLKIT_GPU_C=1", "PATH=/bin",
	} {
		if !slices.Contains(spec.Process.Env, want) {
			t.Errorf("env lacks %s: %v", want, spec.Process.Env)
		}
	}
	mounts := map[string]oci.Mount{}
	for _, m := range spec.Mounts {
		mounts[m.Destination] = m
	}
	for dst, src := range map[string]string{
		"/etc/ld.so.preload":         filepath.Join(e.cfg.StateDir, "ld.so.preload"),
		"/usr/local/vgpu/libvgpu.so": e.cfg.LibvgpuHostPath,
		"/run/hami-dra/gpus":         filepath.Join(e.cfg.StateDir, "gpus"),
		"/run/hami-dra/claim":        filepath.Join(e.cfg.StateDir, "claims", string(c.UID)),
		"/usr/lib/libcuda.so.1":      "/usr/lib/libcuda.so.1",
	} {
		m, ok := mounts[dst]
		if !ok || m.Source != src {
			t.Errorf("mount %s = %+v, want source %s", dst, m, src)
			continue
		}
		wantRO := dst != "/run/hami-dra/claim"
		if slices.Contains(m.Options, "ro") != wantRO {
			t.Errorf("mount %s options %v, read-only should be %v", dst, m.Options, wantRO)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(e.cfg.StateDir, "ld.so.preload")); string(got) != "/usr/local/vgpu/libvgpu.so\n" {
		t.Errorf("ld.so.preload = %q", got)
	}
	var devs []string
	for _, d := range spec.Linux.Devices {
		devs = append(devs, d.Path)
	}
	for _, want := range []string{"/dev/nvidia0", "/dev/nvidia2", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
		if !slices.Contains(devs, want) {
			t.Errorf("device nodes %v lack %s", devs, want)
		}
	}
	if slices.Contains(devs, "/dev/nvidia1") {
		t.Errorf("GPU b is not in the claim but its node is injected")
	}
}
