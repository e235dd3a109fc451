package driver

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/internal/atomicfile"
	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

func crashClaim() *resourceapi.ResourceClaim {
	return newClaim("crash", []share{{"a", 0, "2Gi", "10"}, {"b", 2, "1Gi", "20"}})
}

// TestCrashChild is the body of the re-executed test binary: it prepares
// (and for unprepare points, unprepares) a claim and SIGKILLs itself at
// the crash point named by HD_CRASH_AT.
func TestCrashChild(t *testing.T) {
	root, at := os.Getenv("HD_CRASH_ROOT"), os.Getenv("HD_CRASH_AT")
	if root == "" {
		t.Skip("only run as a child of TestCrashRecovery")
	}
	crashAt := func(cfg *Config) {
		cfg.AfterStep = func(step string) {
			if step == at {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	}
	c := crashClaim()
	e := newEnvConfigured(t, root, crashAt, c)
	if r := e.prepare(t, c)[string(c.UID)]; r.Error != "" {
		t.Fatalf("prepare: %s", r.Error)
	}
	if strings.HasPrefix(at, "unprepare/") {
		e.unprepare(t, c)
	}
	t.Fatalf("crash point %s was never reached", at)
}

// TestCrashRecovery kills the plugin at every step of prepare and
// unprepare, restarts it on the same node state and checks that the state
// converges: the claim is either completely prepared or completely gone,
// and the kubelet's retry finishes the job.
func TestCrashRecovery(t *testing.T) {
	if os.Getenv("HD_CRASH_ROOT") != "" {
		t.Skip("child")
	}
	for _, point := range CrashPoints {
		t.Run(strings.ReplaceAll(point, "/", "_"), func(t *testing.T) {
			root, err := os.MkdirTemp("/tmp", "hd")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(root)
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "HD_CRASH_ROOT="+root, "HD_CRASH_AT="+point)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed at %s: %v\n%s", point, err, out)
			}

			c := crashClaim()
			e := newEnvAt(t, root, c)
			prepared := assertConsistent(t, e, string(c.UID))
			if strings.HasPrefix(point, "prepare/") {
				// The kubelet retries the prepare.
				if r := e.prepare(t, c)[string(c.UID)]; r.Error != "" {
					t.Fatalf("retry: %s", r.Error)
				}
				if !assertConsistent(t, e, string(c.UID)) {
					t.Fatal("claim not prepared after retry")
				}
			} else if prepared {
				// The unprepare was recorded before its first step, so
				// recovery must have finished it.
				t.Fatal("interrupted unprepare was not completed by recovery")
			}
			e.unprepare(t, c)
			assertClean(t, e)
		})
	}
}

// assertConsistent checks that the claim is completely prepared or
// completely absent, and reports which.
func assertConsistent(t *testing.T, e *env, uid string) bool {
	t.Helper()
	rec, ok := e.drv.store.Get(uid)
	specThere := cdi.Exists(e.cfg.CDIRoot, uid)
	_, dirErr := os.Stat(filepath.Join(e.cfg.StateDir, "claims", uid))
	if ok {
		if rec.State != checkpoint.PrepareCompleted || !specThere || dirErr != nil {
			t.Fatalf("half prepared after restart: state=%s spec=%v dir=%v", rec.State, specThere, dirErr)
		}
		if e.reserved(t, 0) != "10" || e.reserved(t, 2) != "20" {
			t.Fatalf("reservations %s/%s, want 10/20", e.reserved(t, 0), e.reserved(t, 2))
		}
		return true
	}
	if specThere || dirErr == nil {
		t.Fatalf("leaked files after restart: spec=%v dir=%v", specThere, dirErr == nil)
	}
	if e.reserved(t, 0) != "0" || e.reserved(t, 2) != "0" {
		t.Fatalf("reservations %s/%s, want 0/0", e.reserved(t, 0), e.reserved(t, 2))
	}
	entries, _ := os.ReadDir(e.cfg.CDIRoot)
	for _, en := range entries {
		if atomicfile.IsTempFile(en.Name()) {
			t.Fatalf("temp file left: %s", en.Name())
		}
	}
	return false
}
