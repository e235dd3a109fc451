package chart

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The image's build commands as deployments/container/Dockerfile runs them
// (TestImageBuildReproducible checks the Dockerfile still does).
const (
	dockerGoBuild  = `go build -trimpath \` + "\n" + `      -ldflags "-s -w -buildid= -X github.com/hami-dra/hami-dra/internal/version.Version=${VERSION}" \` + "\n" + `      -o /out/vgpu-kubelet-plugin ./cmd/vgpu-kubelet-plugin`
	dockerMakeLib  = `make -C vgpu-core lib CFLAGS="-O2 -g -ffile-prefix-map=/src/= -Wl,--build-id=none"`
	dockerStripLib = `strip --strip-unneeded -o /out/libvgpu.so.${VERSION} vgpu-core/build/libvgpu.so`
)

// TestImageBuildReproducible runs the image's two build steps (the plugin
// binary and libvgpu.so) on exactly the files the builder would get (the
// repository filtered by Dockerfile.dockerignore), twice, in two different
// directories, and requires identical bytes: the context is complete and
// the build does not depend on where it runs. No container engine is
// needed; the host's Go and GCC stand in for the pinned images'.
func TestImageBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin and libvgpu twice")
	}
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	containerDir := filepath.Join(dir, "..", "..", "container")
	repo := filepath.Clean(filepath.Join(dir, "..", "..", ".."))
	dockerfile, err := os.ReadFile(filepath.Join(containerDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{dockerGoBuild, dockerMakeLib, dockerStripLib, "ENV CGO_ENABLED=1 GOFLAGS=-buildvcs=false", "WORKDIR /src"} {
		if !strings.Contains(string(dockerfile), step) {
			t.Fatalf("the Dockerfile no longer runs %q; update this test with it", step)
		}
	}
	const version = "0.0.0-test"
	haveMake := exec.Command("make", "--version").Run() == nil && exec.Command("gcc", "--version").Run() == nil &&
		exec.Command("strip", "--version").Run() == nil
	if _, err := os.Stat(filepath.Join(repo, "vgpu-core", "Makefile")); err != nil {
		haveMake = false
	}

	// One snapshot of the context (others may be editing the sources),
	// copied to both build directories.
	snapshot := filepath.Join(t.TempDir(), "context")
	cmd := exec.Command("go", "run", ".", "-copy-context", repo, "-to", snapshot, filepath.Join(containerDir, "Dockerfile"))
	cmd.Dir = filepath.Join(containerDir, "dockerfilecheck")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("copy the build context: %v\n%s", err, b)
	}

	type result struct{ plugin, lib string }
	build := func(root string) result {
		ctx := filepath.Join(root, "src")
		out := filepath.Join(root, "out")
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command("cp", "-a", snapshot, ctx).CombinedOutput(); err != nil {
			t.Fatalf("copy the context: %v\n%s", err, b)
		}
		r := strings.NewReplacer("${VERSION}", version, "/out/", out+"/", "/src/", ctx+"/", " \\\n", " ")
		run := func(env []string, script string) {
			t.Helper()
			c := exec.Command("/bin/sh", "-ec", r.Replace(script))
			c.Dir = ctx
			c.Env = append(os.Environ(), env...)
			if b, err := c.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", r.Replace(script), err, b)
			}
		}
		if err := os.MkdirAll(out, 0o755); err != nil {
			t.Fatal(err)
		}
		run([]string{"CGO_ENABLED=1", "GOFLAGS=-buildvcs=false"}, dockerGoBuild)
		res := result{plugin: sha(t, filepath.Join(out, "vgpu-kubelet-plugin"))}
		if haveMake {
			run(nil, dockerMakeLib+" >/dev/null && "+dockerStripLib)
			res.lib = sha(t, filepath.Join(out, "libvgpu.so."+version))
			// What the image's build stage also requires of the library.
			needed, _ := exec.Command("objdump", "-p", filepath.Join(out, "libvgpu.so."+version)).Output()
			if regexp.MustCompile(`NEEDED\s+lib(cuda|nvidia-ml)`).Match(needed) {
				t.Errorf("libvgpu.so links the CUDA driver or NVML:\n%s", needed)
			}
			syms, _ := exec.Command("objdump", "-T", filepath.Join(out, "libvgpu.so."+version)).Output()
			t.Logf("libvgpu.so built here references glibc %v (the image builds on glibc 2.28)", glibcVersions(syms))
		}
		return res
	}
	a := build(filepath.Join(t.TempDir(), "a"))
	b := build(filepath.Join(t.TempDir(), "elsewhere", "b"))
	if a.plugin != b.plugin {
		t.Errorf("the plugin binary differs between two builds: %s vs %s", a.plugin, b.plugin)
	}
	if !haveMake {
		t.Log("vgpu-core/Makefile, make, gcc or strip missing: libvgpu.so not built")
	} else if a.lib != b.lib {
		t.Errorf("libvgpu.so differs between two builds: %s vs %s", a.lib, b.lib)
	}
	t.Logf("plugin %s, libvgpu.so %s", a.plugin[:12], a.lib)
}

func sha(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func glibcVersions(objdump []byte) []string {
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`GLIBC_([0-9.]+)`).FindAllSubmatch(objdump, -1) {
		seen[string(m[1])] = true
	}
	var out []string
	for v := range seen {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return versionLess(out[i], out[j]) })
	return out
}

func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if len(pa[i]) != len(pb[i]) {
			return len(pa[i]) < len(pb[i])
		}
		if c := bytes.Compare([]byte(pa[i]), []byte(pb[i])); c != 0 {
			return c < 0
		}
	}
	return len(pa) < len(pb)
}
