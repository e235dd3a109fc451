package driver

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// TestComposedToolkitDeviceIsChecked: with --compose-nvidia-cdi, a claim
// whose GPU the toolkit's spec does not define (the GPU Operator writes only
// management.nvidia.com/gpu=all; a spec in /var/run/cdi is gone after a
// reboot) fails at prepare with the reason, instead of every container
// failing later with "unresolvable CDI devices".
func TestComposedToolkitDeviceIsChecked(t *testing.T) {
	toolkitSpec := func(uuids ...string) string {
		var devs []string
		for _, u := range uuids {
			devs = append(devs, `{"name":"`+u+`","containerEdits":{"env":["G=1"]}}`)
		}
		return `{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[` + strings.Join(devs, ",") + `]}`
	}
	tests := []struct {
		name    string
		dir     string // where the toolkit's spec is: "etc" (/etc/cdi), "run" (/var/run/cdi), "" none
		spec    string
		wantErr string
	}{
		{name: "no toolkit spec", wantErr: "nvidia.com/gpu=" + testGPUs[0].UUID + " is not defined"},
		{name: "management spec only", dir: "etc", spec: `{"cdiVersion":"0.5.0","kind":"management.nvidia.com/gpu","devices":[{"name":"all","containerEdits":{"env":["M=1"]}}]}`,
			wantErr: "nvidia-ctk cdi generate"},
		{name: "spec lacks this GPU", dir: "run", spec: toolkitSpec(testGPUs[1].UUID), wantErr: testGPUs[0].UUID},
		{name: "per-GPU spec in /etc/cdi", dir: "etc", spec: toolkitSpec(testGPUs[0].UUID, testGPUs[1].UUID)},
		{name: "per-GPU spec in /var/run/cdi", dir: "run", spec: toolkitSpec(testGPUs[0].UUID)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClaim("compose", []share{{"gpu", 0, "2Gi", "10"}})
			e := newEnv(t, c)
			// Spec directories of their own: the harness's CDI root holds a
			// complete toolkit spec.
			dirs := map[string]string{"etc": filepath.Join(e.root, "etc-cdi"), "run": filepath.Join(e.root, "run-cdi")}
			for _, d := range dirs {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if tc.dir != "" {
				mustWrite(t, filepath.Join(dirs[tc.dir], "nvidia.json"), tc.spec)
			}
			e.cfg.ComposeNvidiaCDI = true
			e.cfg.NvidiaCDISpecDirs = []string{dirs["etc"], dirs["run"]}
			e.restart(t)

			res := e.prepare(t, c)[string(c.UID)]
			if tc.wantErr == "" {
				if res.Error != "" {
					t.Fatal(res.Error)
				}
				var ids []string
				for _, d := range res.Devices {
					ids = append(ids, d.CdiDeviceIds...)
				}
				if !slices.Contains(ids, "nvidia.com/gpu="+testGPUs[0].UUID) {
					t.Errorf("CDI devices %v lack the toolkit's", ids)
				}
				return
			}
			if !strings.Contains(res.Error, tc.wantErr) {
				t.Fatalf("error %q, want it to mention %q", res.Error, tc.wantErr)
			}
			if _, ok := e.drv.store.Get(string(c.UID)); ok {
				t.Error("a claim that failed the check is in the checkpoint")
			}
		})
	}
}

// TestGeneratedDriverEditsInSpec: the node's driver edits (what
// internal/drivercdi generates) are in every claim's spec, together with
// NVIDIA_VISIBLE_DEVICES=void.
func TestGeneratedDriverEditsInSpec(t *testing.T) {
	c := newClaim("driver", []share{{"gpu", 1, "2Gi", "10"}})
	e := newEnv(t, c)
	e.cfg.DriverEdits = &cdispec.ContainerEdits{
		Env:    []string{"NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu"},
		Mounts: []*cdispec.Mount{{HostPath: "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libcuda.so.580.82.07", ContainerPath: "/usr/lib/x86_64-linux-gnu/libcuda.so.580.82.07", Options: []string{"ro", "nosuid", "nodev", "bind"}}},
	}
	e.restart(t)
	if res := e.prepare(t, c)[string(c.UID)]; res.Error != "" {
		t.Fatal(res.Error)
	}
	env := e.specEnv(t, string(c.UID))
	if env["NVIDIA_CTK_LIBCUDA_DIR"] != "/usr/lib/x86_64-linux-gnu" || env["NVIDIA_VISIBLE_DEVICES"] != "void" || env["CUDA_DEVICE_SM_LIMIT_0"] != "10" {
		t.Errorf("claim env %v", env)
	}
	data, err := os.ReadFile(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_"+string(c.UID)+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libcuda.so.580.82.07") {
		t.Errorf("spec lacks the driver's libcuda mount:\n%s", data)
	}
}
