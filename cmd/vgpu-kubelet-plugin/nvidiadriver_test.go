package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// installDriver lays out a driver under root as distribution packages do,
// and /dev/nvidiactl under devRoot.
func installDriver(t *testing.T, root, devRoot string) {
	t.Helper()
	lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"libcuda.so", "libnvidia-ml.so"} {
		if err := os.WriteFile(filepath.Join(lib, name+".580.82.07"), []byte("not ELF"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name+".580.82.07", filepath.Join(lib, name+".1")); err != nil {
			t.Fatal(err)
		}
	}
	if devRoot == "" {
		return
	}
	if err := os.MkdirAll(filepath.Join(devRoot, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(devRoot, "dev", "nvidiactl"), unix.S_IFCHR|0o666, int(unix.Mkdev(195, 255))); err != nil {
		t.Skipf("device nodes need CAP_MKNOD: %v", err)
	}
}

func TestWaitForDriverCommand(t *testing.T) {
	tmp := t.TempDir()
	args := []string{"wait-for-driver", "--driver-root", "/run/nvidia/driver", "--container-driver-root", filepath.Join(tmp, "driver-root"),
		"--container-dev-root", filepath.Join(tmp, "host"), "--wait-interval", "10ms"}

	var stderr bytes.Buffer
	code := run(context.Background(), append(args, "--wait-timeout", "100ms"), &bytes.Buffer{}, &stderr)
	if code != exitError {
		t.Fatalf("exit code %d without a driver, want %d:\n%s", code, exitError, stderr.String())
	}
	for _, want := range []string{"Waiting for the NVIDIA driver", "libnvidia-ml.so.1 under the driver root /run/nvidia/driver", "/dev/nvidiactl"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}

	installDriver(t, filepath.Join(tmp, "driver-root"), filepath.Join(tmp, "host"))
	stderr.Reset()
	if code := run(context.Background(), args, &bytes.Buffer{}, &stderr); code != exitOK {
		t.Fatalf("exit code %d with the driver installed:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "NVIDIA driver is ready") {
		t.Errorf("log:\n%s", stderr.String())
	}
}

func TestPluginDriverEdits(t *testing.T) {
	tmp := t.TempDir()
	driverRoot := filepath.Join(tmp, "driver")
	installDriver(t, driverRoot, "")
	tests := []struct {
		name      string
		args      []string
		wantEdits bool
		wantError string
	}{
		{name: "simulated GPUs, no driver root", args: nil},
		{name: "generated from the driver root", args: []string{"--driver-root", driverRoot, "--dev-root", tmp}, wantEdits: true},
		{name: "toolkit spec composed", args: []string{"--driver-root", driverRoot, "--compose-nvidia-cdi"}},
		{name: "driver root without a driver", args: []string{"--driver-root", filepath.Join(tmp, "empty")}, wantError: "wait-for-driver"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.MkdirAll(filepath.Join(tmp, "empty"), 0o755); err != nil {
				t.Fatal(err)
			}
			p := newFakePlugin()
			cfg := replaceDriver(t, p)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var stderr bytes.Buffer
			done := make(chan int)
			go func() {
				done <- run(ctx, append([]string{"--simulate", "L4", "--node-name", "n1"}, tc.args...), &bytes.Buffer{}, &stderr)
			}()
			if tc.wantError != "" {
				if code := <-done; code != exitError || !strings.Contains(stderr.String(), tc.wantError) {
					t.Fatalf("exit code %d, want %d with a log naming %q:\n%s", code, exitError, tc.wantError, stderr.String())
				}
				return
			}
			select {
			case <-p.published:
			case code := <-done:
				t.Fatalf("exited with %d:\n%s", code, stderr.String())
			case <-time.After(10 * time.Second):
				t.Fatal("nothing published")
			}
			cancel()
			<-done
			if got := cfg.DriverEdits != nil; got != tc.wantEdits {
				t.Fatalf("driver edits generated: %v, want %v", got, tc.wantEdits)
			}
			if !tc.wantEdits {
				return
			}
			found := false
			for _, m := range cfg.DriverEdits.Mounts {
				if m.HostPath == filepath.Join(driverRoot, "usr/lib/x86_64-linux-gnu/libcuda.so.580.82.07") {
					found = true
				}
			}
			if !found {
				t.Errorf("no libcuda.so mount in %+v", cfg.DriverEdits.Mounts)
			}
		})
	}
}
