package cdi

import (
	"go/build"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
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

// TestWriteCreatesNoOtherSpecFileInCDIDir: runtimes scan the CDI directory
// for *.json and *.yaml and may drop two specs that define the same devices
// as a conflict, so the only spec file Write may ever create there is the
// claim's own (temp files must have another extension).
func TestWriteCreatesNoOtherSpecFileInCDIDir(t *testing.T) {
	dir := t.TempDir()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		t.Fatal(err)
	}
	s := ClaimSpec{ClaimUID: "uid-1", GPUs: []GPU{{UUID: "GPU-x", Minor: 0}}, Env: []string{"A=1"}, DevRoot: "/",
		LibvgpuHostPath: "/l/libvgpu.so", PreloadHostPath: "/s/ld.so.preload", ClaimHostDir: "/s/c", GPUStateHostDir: "/s/g"}
	spec, err := s.Build()
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, s.ClaimUID, spec); err != nil {
		t.Fatal(err)
	}
	var created []string
	timeout := time.After(200 * time.Millisecond)
	for done := false; !done; {
		select {
		case ev := <-w.Events:
			if ev.Has(fsnotify.Create) {
				created = append(created, filepath.Base(ev.Name))
			}
		case err := <-w.Errors:
			t.Fatal(err)
		case <-timeout:
			done = true
		}
	}
	for _, name := range created {
		if ext := filepath.Ext(name); (ext == ".json" || ext == ".yaml") && name != SpecFileName(s.ClaimUID) {
			t.Errorf("Write created %q in the CDI directory; runtimes would read it as a second spec", name)
		}
	}
	if len(created) == 0 {
		t.Fatal("no file events seen; the watch does not work")
	}
}

// TestPackageImports keeps the import arrows pointing down: cdi is used by
// the driver and must not depend on the driver's state packages.
func TestPackageImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "github.com/hami-dra/hami-dra/internal/") && imp != "github.com/hami-dra/hami-dra/internal/atomicfile" {
			t.Errorf("cdi imports %s; only internal/atomicfile is below it", imp)
		}
	}
}
