package region

import (
	"bufio"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	good := Image(Device{UUID: "GPU-a", MemoryUsedBytes: 1 << 30, GPUTimeNs: 5, ThrottledNs: 7}, Device{UUID: "GPU-b", MemoryUsedBytes: 3})
	devs, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || devs[0] != (Device{UUID: "GPU-a", MemoryUsedBytes: 1 << 30, GPUTimeNs: 5, ThrottledNs: 7}) || devs[1].UUID != "GPU-b" || devs[1].MemoryUsedBytes != 3 {
		t.Fatalf("parsed %+v", devs)
	}

	mutate := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"empty":          {nil, "truncated"},
		"short header":   {good[:100], "truncated"},
		"short devices":  {good[:headerSize+10], "truncated"},
		"bad magic":      {mutate(func(b []byte) { b[0] = 'x' }), "bad magic"},
		"other version":  {mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 2) }), "version 2"},
		"other layout":   {mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[24:], 128) }), "layout"},
		"zeroed header":  {mutate(func(b []byte) { clear(b[:headerSize]) }), "bad magic"},
		"devices offset": {mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[32:], 1<<31) }), "layout"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}

	// A UUID that fills its field without a NUL is cut at the field.
	long := Image(Device{UUID: strings.Repeat("x", 200)})
	devs, err = Parse(long)
	if err != nil || len(devs) != 1 || len(devs[0].UUID) != uuidLen {
		t.Fatalf("long uuid: %v %+v", err, devs)
	}
}

func TestReadFileMissing(t *testing.T) {
	if _, err := ReadFile(filepath.Join(t.TempDir(), "vgpu.shr")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err %v, want ErrNotFound", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Image(Device{UUID: "GPU-a", MemoryUsedBytes: 1}))
	f.Add(Image()[:headerSize])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		devs, err := Parse(data)
		if err != nil {
			return
		}
		if len(devs) > maxDevices {
			t.Fatalf("%d devices", len(devs))
		}
		for _, d := range devs {
			if d.UUID == "" || len(d.UUID) > uuidLen {
				t.Fatalf("uuid %q", d.UUID)
			}
		}
	})
}

// TestReadsLibvgpuRegion reads a region that the real libvgpu wrote, while a
// process of the "claim" holds memory through the fake driver: the Go reader
// and the C writer agree on the layout. It needs vgpu-core built and builds
// it when it is not (make -C vgpu-core all): a clean checkout's `go test
// ./...` runs it or fails, never skips it.
func TestReadsLibvgpuRegion(t *testing.T) {
	build := filepath.Join("..", "..", "vgpu-core", "build")
	probe := filepath.Join(build, "tests", "quota")
	lib, err := filepath.Abs(filepath.Join(build, "libvgpu.so"))
	if err != nil {
		t.Fatal(err)
	}
	ensureVgpuCore(t, probe, lib)
	dir := t.TempDir()
	shr := filepath.Join(dir, "vgpu.shr")
	uuid := "GPU-11111111-2222-3333-4444-555555555555"
	cmd := exec.Command(probe, "--hold", "1024", "512")
	cmd.Env = []string{
		"LD_LIBRARY_PATH=" + filepath.Join(build, "fake"),
		"LD_PRELOAD=" + lib,
		"FAKE_GPU_STATE=" + filepath.Join(dir, "fakegpu"),
		"FAKE_GPU_DEV_0=0000:3b:00.0," + uuid + ",80g,NVIDIA A100-SXM4-80GB",
		"VGPU_DEVICE_UUIDS=" + uuid,
		"CUDA_DEVICE_MEMORY_LIMIT_0=4g",
		"CUDA_DEVICE_MEMORY_SHARED_CACHE=" + shr,
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	held := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if s.Text() == "holding" {
				held <- true
				return
			}
		}
		held <- false
	}()
	select {
	case ok := <-held:
		if !ok {
			t.Fatal("quota probe exited before holding its allocations")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("quota probe did not hold its allocations within 30 s")
	}
	devs, err := ReadFile(shr)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || devs[0].UUID != uuid || devs[0].MemoryUsedBytes != 1536<<20 {
		t.Fatalf("region says %+v, want %s using 1536 MiB", devs, uuid)
	}
}

// ensureVgpuCore builds vgpu-core when one of files is missing, and fails
// the test, saying what is needed, when that does not produce them.
func ensureVgpuCore(t *testing.T, files ...string) {
	t.Helper()
	missing := func() error {
		for _, f := range files {
			if _, err := os.Stat(f); err != nil {
				return err
			}
		}
		return nil
	}
	if missing() == nil {
		return
	}
	t.Log("vgpu-core is not built; running make -C vgpu-core all")
	out, err := exec.Command("make", "-C", filepath.Join("..", "..", "vgpu-core"), "all").CombinedOutput()
	if err != nil {
		t.Fatalf("vgpu-core is not built and building it failed (make -C vgpu-core all needs gcc and make): %v\n%s", err, out)
	}
	if err := missing(); err != nil {
		t.Fatalf("make -C vgpu-core all did not produce what this test runs: %v", err)
	}
}

// TestReadFileRefusesPlantedFiles: the claim's containers can put anything
// where the region belongs; the plugin reads only a regular file there,
// never follows a link and never blocks.
func TestReadFileRefusesPlantedFiles(t *testing.T) {
	valid := Image(Device{UUID: "GPU-a", MemoryUsedBytes: 1 << 30})
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, path string)
		want  string
	}{
		{"regular region", func(t *testing.T, path string) {
			if err := os.WriteFile(path, valid, 0o644); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"symbolic link to a region", func(t *testing.T, path string) {
			target := path + ".elsewhere"
			if err := os.WriteFile(target, valid, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, "is a symbolic link"},
		{"FIFO", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"short file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, valid[:100], 0o644); err != nil {
				t.Fatal(err)
			}
		}, "shorter than a region's header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vgpu.shr")
			tc.plant(t, path)
			done := make(chan error, 1)
			go func() {
				_, err := ReadFile(path)
				done <- err
			}()
			select {
			case err := <-done:
				if tc.want == "" {
					if err != nil {
						t.Fatalf("valid region: %v", err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want %q", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("ReadFile blocked")
			}
		})
	}
}
