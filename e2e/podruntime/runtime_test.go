package podruntime

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func buildPodinit(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "podinit")
	cmd := exec.Command("go", "build", "-o", out, "../cmd/podinit")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build podinit: %v\n%s", err, b)
	}
	return out
}

// TestStartWithMounts runs a container whose mounts land on paths that do
// not exist on the host, and checks that the host stays untouched.
func TestStartWithMounts(t *testing.T) {
	podinit := buildPodinit(t)
	dir := t.TempDir()
	r, err := New(context.Background(), filepath.Join(dir, "rt"), podinit)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode() != ModeMountNamespace {
		t.Fatalf("mode %s: mount namespaces are expected to work as root here", r.Mode())
	}
	src := filepath.Join(dir, "preload")
	if err := os.WriteFile(src, []byte("/nonexistent/libtest.so\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	claimDir := filepath.Join(dir, "claim")
	if err := os.Mkdir(claimDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "not", "there", "file")
	log := filepath.Join(dir, "log")
	c, err := r.Start(ContainerSpec{
		ID:   "pod/c",
		Args: []string{"sh", "-c", `cat "$F"; echo "$X"; touch "$D/written" && echo rw; (echo x > "$F") 2>/dev/null || echo ro`},
		Env:  []string{"F=" + dest, "X=hello", "D=" + filepath.Join(dir, "mnt", "claim")},
		Mounts: []Mount{
			{Source: src, Destination: dest, ReadOnly: true},
			{Source: claimDir, Destination: filepath.Join(dir, "mnt", "claim")},
		},
		LogPath: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("container did not exit")
	}
	if _, code, _, _ := c.Exited(); code != 0 {
		out, _ := os.ReadFile(log)
		t.Fatalf("exit code %d: %s", code, out)
	}
	out, _ := os.ReadFile(log)
	want := "/nonexistent/libtest.so\nhello\nrw\nro\n"
	if string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Errorf("mount point leaked to the host: %v", err)
	}
	if _, err := os.Stat(filepath.Join(claimDir, "written")); err != nil {
		t.Errorf("write through the read-write mount not visible on the host: %v", err)
	}
}

func TestRewrite(t *testing.T) {
	dir := t.TempDir()
	preload := filepath.Join(dir, "ld.so.preload")
	if err := os.WriteFile(preload, []byte("/lib/a.so\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mounts := []Mount{
		{Source: "/host/claim", Destination: "/run/hami-dra/claim"},
		{Source: preload, Destination: "/etc/ld.so.preload", ReadOnly: true},
	}
	tests := []struct {
		name    string
		env     []string
		wantEnv []string
	}{
		{"path below a mount", []string{"C=/run/hami-dra/claim/vgpu.shr"}, []string{"C=/host/claim/vgpu.shr", "LD_PRELOAD=/lib/a.so"}},
		{"unrelated", []string{"A=/run/hami-dra/claimx"}, []string{"A=/run/hami-dra/claimx", "LD_PRELOAD=/lib/a.so"}},
		{"list", []string{"L=/x:/run/hami-dra/claim"}, []string{"L=/x:/host/claim", "LD_PRELOAD=/lib/a.so"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, env, _, err := rewrite([]string{"true"}, tt.env, "", mounts)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(env, tt.wantEnv) {
				t.Errorf("env %v, want %v", env, tt.wantEnv)
			}
		})
	}
	if !strings.HasPrefix(DefaultPath, "/usr") {
		t.Fatal("DefaultPath")
	}
}
