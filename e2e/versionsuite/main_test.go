package versionsuite

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/e2e/localcluster"
)

// TestMain sends the control planes' logs to a file: three clusters log
// too much for a test's output.
func TestMain(m *testing.M) {
	logPath := filepath.Join(os.TempDir(), fmt.Sprintf("hami-dra-versionsuite-%d.log", os.Getpid()))
	if err := localcluster.LogToFile(logPath, 1); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	klog.Flush()
	if code == 0 {
		_ = os.Remove(logPath)
	} else {
		fmt.Fprintf(os.Stderr, "control plane and harness log: %s\n", logPath)
	}
	os.Exit(code)
}
