package cdi

import (
	"os"
	"path/filepath"
	"testing"

	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
)

func TestBuildUsesLowestVersion(t *testing.T) {
	for _, tc := range []struct {
		devRoot, want string
	}{
		{"/", "0.3.0"},          // same host and container paths: oldest runtimes accept it
		{"/sim/node1", "0.5.0"}, // hostPath on device nodes needs 0.5.0
	} {
		s := ClaimSpec{ClaimUID: "0abc-uid", GPUs: []GPU{{UUID: "GPU-x", Minor: 3}}, Env: []string{"A=1"}, DevRoot: tc.devRoot,
			LibvgpuHostPath: "/l/libvgpu.so", PreloadHostPath: "/s/ld.so.preload", ClaimHostDir: "/s/c", GPUStateHostDir: "/s/g"}
		spec, err := s.Build()
		if err != nil {
			t.Fatal(err)
		}
		if spec.Version != tc.want {
			t.Errorf("devRoot %s: version %s, want %s", tc.devRoot, spec.Version, tc.want)
		}
		dir := t.TempDir()
		if err := Write(dir, s.ClaimUID, spec); err != nil {
			t.Fatal(err)
		}
		read, err := cdiapi.ReadSpec(filepath.Join(dir, SpecFileName(s.ClaimUID)), 0)
		if err != nil {
			t.Fatal(err)
		}
		if read.GetDevice(GPUDeviceName(s.ClaimUID, 0)) == nil || read.GetDevice(ClaimDeviceName(s.ClaimUID)) == nil {
			t.Fatal("devices missing")
		}
		if uid, ok := ClaimUIDFromFile(SpecFileName(s.ClaimUID)); !ok || uid != s.ClaimUID {
			t.Fatalf("ClaimUIDFromFile = %q %v", uid, ok)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Fatalf("files left: %v", entries)
		}
	}
}

func TestWriteRejectsInvalidSpec(t *testing.T) {
	s := ClaimSpec{ClaimUID: "u", Env: []string{"=bad"}, DevRoot: "/"}
	spec, err := s.Build()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Write(dir, "u", spec); err == nil {
		t.Fatal("invalid spec was written")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files left: %v", entries)
	}
}
