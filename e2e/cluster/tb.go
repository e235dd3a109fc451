package cluster

import (
	"fmt"
	"os"
	"sync"

	"github.com/go-logr/logr"
)

// componentTB satisfies the ktesting.TB interface that the kube-apiserver's
// in-process test server demands, outside of `go test` too: the demo is a
// plain program, and the end-to-end suite shares one control plane between
// all its tests (TestMain has no *testing.T). Messages go to the logger;
// Fatal panics with a fatalError that startAPIServer turns back into an error.
type componentTB struct {
	logger  logr.Logger
	tempDir string

	mu       sync.Mutex
	failed   bool
	cleanups []func()
	tmpCount int
}

type fatalError struct{ msg string }

func (e fatalError) Error() string { return e.msg }

func newComponentTB(logger logr.Logger, tempDir string) *componentTB {
	return &componentTB{logger: logger, tempDir: tempDir}
}

func (t *componentTB) Attr(key, value string) { t.logger.V(2).Info("attr", key, value) }
func (t *componentTB) Chdir(dir string) {
	if err := os.Chdir(dir); err != nil {
		t.Fatalf("chdir %s: %v", dir, err)
	}
}
func (t *componentTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *componentTB) Error(args ...any) { t.logger.Error(nil, fmt.Sprint(args...)); t.Fail() }
func (t *componentTB) Errorf(format string, args ...any) {
	t.logger.Error(nil, fmt.Sprintf(format, args...))
	t.Fail()
}
func (t *componentTB) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}
func (t *componentTB) FailNow() { t.Fail(); panic(fatalError{msg: "FailNow"}) }
func (t *componentTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *componentTB) Fatal(args ...any) { t.Fail(); panic(fatalError{msg: fmt.Sprint(args...)}) }
func (t *componentTB) Fatalf(format string, args ...any) {
	t.Fail()
	panic(fatalError{msg: fmt.Sprintf(format, args...)})
}
func (t *componentTB) Helper()         {}
func (t *componentTB) Log(args ...any) { t.logger.V(2).Info(fmt.Sprint(args...)) }
func (t *componentTB) Logf(format string, args ...any) {
	t.logger.V(2).Info(fmt.Sprintf(format, args...))
}
func (t *componentTB) Name() string                     { return "hami-dra-e2e" }
func (t *componentTB) Setenv(key, value string)         { _ = os.Setenv(key, value) }
func (t *componentTB) Skip(args ...any)                 { t.Fatal(args...) }
func (t *componentTB) Skipf(format string, args ...any) { t.Fatalf(format, args...) }
func (t *componentTB) SkipNow()                         { t.FailNow() }
func (t *componentTB) Skipped() bool                    { return false }
func (t *componentTB) TempDir() string {
	t.mu.Lock()
	t.tmpCount++
	n := t.tmpCount
	t.mu.Unlock()
	dir, err := os.MkdirTemp(t.tempDir, fmt.Sprintf("tb%d-", n))
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	return dir
}

// runCleanups runs the registered cleanups, last first, like testing.T.
func (t *componentTB) runCleanups() {
	t.mu.Lock()
	cleanups := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
}
