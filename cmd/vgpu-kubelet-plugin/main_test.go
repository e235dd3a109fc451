package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBinaryExitCodes builds the real binary and checks what a node
// operator sees: the exit status and a single log line. run's own tests
// cover the cases; this one covers main's os.Exit wiring.
func TestBinaryExitCodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "vgpu-kubelet-plugin")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantLog  string
	}{
		{name: "simulated inventory", args: []string{"inventory", "--simulate", "2xL4", "--node-name", "n1"}, wantCode: 0},
		{name: "no NVIDIA driver", args: []string{"inventory", "--nvml-library-path", filepath.Join(t.TempDir(), "libnvidia-ml.so.1"), "--node-name", "n1"}, wantCode: 1, wantLog: "libnvidia-ml.so.1 not found"},
		{name: "malformed profile", args: []string{"inventory", "--simulate", "/dev/null/node.yaml"}, wantCode: 1, wantLog: "read profile"},
		{name: "plugin without a node name", args: []string{"--simulate", "L4", "--node-name", ""}, wantCode: 1, wantLog: "no node name"},
		{name: "bad flag", args: []string{"--bogus"}, wantCode: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) {
				code = exitErr.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Fatalf("exit code %d, want %d\n%s", code, tc.wantCode, stderr.String())
			}
			if tc.wantLog != "" {
				errorLines := 0
				for _, line := range strings.Split(stderr.String(), "\n") {
					if strings.HasPrefix(line, "E") {
						errorLines++
					}
				}
				if !strings.Contains(stderr.String(), tc.wantLog) || errorLines != 1 {
					t.Errorf("want one error line mentioning %q, got:\n%s", tc.wantLog, stderr.String())
				}
			}
		})
	}
}
