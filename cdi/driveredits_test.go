package cdi

import (
	"slices"
	"testing"

	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

func TestBuildDriverEdits(t *testing.T) {
	driver := &cdispec.ContainerEdits{
		Env:         []string{"NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_CTK_LIBCUDA_DIR=/usr/lib", "CUDA_DEVICE_SM_LIMIT_0=99"},
		DeviceNodes: []*cdispec.DeviceNode{{Path: "/dev/nvidiactl"}},
		Mounts:      []*cdispec.Mount{{HostPath: "/run/nvidia/driver/usr/lib/libcuda.so.580.82.07", ContainerPath: "/usr/lib/libcuda.so.580.82.07", Options: []string{"ro", "bind"}}},
		Hooks:       []*cdispec.Hook{{HookName: "createContainer", Path: "/usr/bin/nvidia-cdi-hook", Args: []string{"nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib"}}},
	}
	base := ClaimSpec{ClaimUID: "u1", GPUs: []GPU{{UUID: "GPU-x", Minor: 3}}, Env: []string{"CUDA_DEVICE_SM_LIMIT_0=30"}, DevRoot: "/",
		LibvgpuHostPath: "/l/libvgpu.so", PreloadHostPath: "/s/ld.so.preload", ClaimHostDir: "/s/c", GPUStateHostDir: "/s/g"}
	tests := []struct {
		name      string
		driver    *cdispec.ContainerEdits
		wantNodes []string
		wantEnv   []string
		wantHooks int
	}{
		{name: "generated driver edits", driver: driver, wantNodes: []string{"/dev/nvidiactl"},
			wantEnv:   []string{"NVIDIA_CTK_LIBCUDA_DIR=/usr/lib", "CUDA_DEVICE_SM_LIMIT_0=30", "NVIDIA_VISIBLE_DEVICES=void"},
			wantHooks: 1},
		{name: "no driver edits (toolkit spec composed)", wantNodes: []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"},
			wantEnv: []string{"CUDA_DEVICE_SM_LIMIT_0=30", "NVIDIA_VISIBLE_DEVICES=void"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			s.DriverEdits = tc.driver
			spec, err := s.Build()
			if err != nil {
				t.Fatal(err)
			}
			claim := spec.Devices[0].ContainerEdits
			var nodes []string
			for _, n := range claim.DeviceNodes {
				nodes = append(nodes, n.Path)
			}
			if !slices.Equal(nodes, tc.wantNodes) {
				t.Errorf("claim device nodes %v, want %v", nodes, tc.wantNodes)
			}
			// The claim's quota wins over a variable of the same name in the
			// driver's edits, and void appears once.
			if !slices.Equal(claim.Env, tc.wantEnv) {
				t.Errorf("env %v, want %v", claim.Env, tc.wantEnv)
			}
			if len(claim.Hooks) != tc.wantHooks {
				t.Errorf("%d hooks, want %d", len(claim.Hooks), tc.wantHooks)
			}
			if tc.driver != nil {
				if claim.Mounts[0].ContainerPath != "/usr/lib/libcuda.so.580.82.07" || len(claim.Mounts) != 5 {
					t.Errorf("mounts %+v: want the driver's, then libvgpu's four", claim.Mounts)
				}
				// Building must not modify the node-wide edits.
				if len(driver.Env) != 3 || len(driver.Mounts) != 1 {
					t.Errorf("Build changed the shared driver edits: %+v", driver)
				}
			}
			if err := Write(t.TempDir(), s.ClaimUID, spec); err != nil {
				t.Fatalf("the CDI library rejects the spec: %v", err)
			}
		})
	}
}
