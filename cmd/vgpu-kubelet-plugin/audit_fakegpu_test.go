package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hami-dra/hami-dra/internal/audit"
	"github.com/hami-dra/hami-dra/internal/discovery"
)

// TestAuditKillsOnTheFakeGPU runs the audit through go-nvml against the
// project's fake NVML (vgpu-core/fake), which reports per-process memory by
// host-style PIDs that differ from the processes' own, as in a container:
// a workload that runs without libvgpu and allocates 6 GiB on a 2 GiB
// quota is killed, its 1 GiB neighbour keeps running. make test builds the
// fake before the Go tests (test-unit depends on vgpu-core).
func TestAuditKillsOnTheFakeGPU(t *testing.T) {
	fake, err := filepath.Abs("../../vgpu-core/build/fake")
	if err != nil {
		t.Fatal(err)
	}
	quota := filepath.Join(fake, "..", "tests", "quota")
	if _, err := os.Stat(filepath.Join(fake, "libnvidia-ml.so.1")); err != nil {
		t.Skipf("the fake driver is not built (make -C vgpu-core): %v", err)
	}
	state := filepath.Join(t.TempDir(), "gpu.state")
	env := append(os.Environ(), "LD_LIBRARY_PATH="+fake, "FAKE_GPU_STATE="+state, "FAKE_GPU_MEM=16g", "FAKE_GPU_COUNT=1")
	start := func(mib ...string) *exec.Cmd {
		// no LD_PRELOAD: the workload bypasses libvgpu
		cmd := exec.Command(quota, append([]string{"--hold"}, mib...)...)
		cmd.Env = env
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "holding") {
				return cmd
			}
		}
		t.Fatalf("%v never held its memory", cmd.Args)
		return nil
	}
	greedy := start("3072", "3072")
	neighbour := start("1024")

	t.Setenv("FAKE_GPU_STATE", state)
	t.Setenv("FAKE_GPU_MEM", "16g")
	t.Setenv("FAKE_GPU_COUNT", "1")
	d, err := discovery.OpenNVML(context.Background(), discovery.NVMLOptions{LibraryPath: filepath.Join(fake, "libnvidia-ml.so.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const uuid = "GPU-fa4e0000-0000-0000-0000-000000000000"
	src := nvmlProcesses{d}
	procs, err := src.Processes(uuid)
	if err != nil || len(procs) != 2 {
		t.Fatalf("NVML lists %+v, %v; want the two workloads", procs, err)
	}
	// NVML names them by host PID; the test knows them by memory.
	host := map[uint32]*exec.Cmd{}
	for _, p := range procs {
		switch p.MemoryBytes >> 30 {
		case 6:
			host[p.PID] = greedy
		case 1:
			host[p.PID] = neighbour
		default:
			t.Fatalf("process %d holds %d bytes", p.PID, p.MemoryBytes)
		}
		if int(p.PID) == host[p.PID].Process.Pid {
			t.Fatalf("the fake reports the process's own PID %d, not a host PID", p.PID)
		}
	}
	pods := map[*exec.Cmd]string{greedy: "pod-greedy", neighbour: "pod-neighbour"}
	var reports []audit.Finding
	a := audit.New(audit.Config{
		GPUs:     src,
		NodeGPUs: func() []string { return []string{uuid} },
		Claims: func() []audit.Claim {
			return []audit.Claim{
				{UID: "c1", Namespace: "ns", Name: "greedy", GPUs: []audit.GPUQuota{{UUID: uuid, MemoryBytes: 2 << 30}}},
				{UID: "c2", Namespace: "ns", Name: "neighbour", GPUs: []audit.GPUQuota{{UUID: uuid, MemoryBytes: 2 << 30}}},
			}
		},
		Pod: func(uid string) (audit.Pod, bool) {
			return audit.Pod{UID: uid, Namespace: "ns", Name: uid, Claims: []string{strings.TrimPrefix(uid, "pod-")}}, true
		},
		PodOf: func(pid uint32) (audit.PodProcess, error) {
			cmd, ok := host[pid]
			if !ok || cmd.ProcessState != nil {
				return audit.PodProcess{}, audit.ErrNotAPod
			}
			return audit.PodProcess{PodUID: pods[cmd]}, nil
		},
		Kill: func(pid uint32) error {
			cmd, ok := host[pid]
			if !ok {
				return fmt.Errorf("unknown host PID %d", pid)
			}
			return cmd.Process.Signal(syscall.SIGKILL)
		},
		Reporter:      reporterFunc(func(f audit.Finding) { reports = append(reports, f) }),
		Metrics:       audit.NewMetrics(nil),
		MemoryMargin:  256 << 20,
		Grace:         0,
		ComputeMargin: 10,
		ComputeWindow: time.Minute,
	})
	a.Round(context.Background())
	err = greedy.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the workload over its quota ended with %v, want SIGKILL", err)
	}
	if neighbour.ProcessState != nil || neighbour.Process.Signal(syscall.Signal(0)) != nil {
		t.Fatal("the neighbour within its quota was killed")
	}
	if len(reports) != 2 || reports[0].Reason != audit.ReasonMemoryOverQuota || reports[1].Reason != audit.ReasonKilled {
		t.Fatalf("reports %+v", reports)
	}
	// The driver freed the killed process's memory: the next round sees
	// only the neighbour.
	if procs, err := src.Processes(uuid); err != nil || len(procs) != 1 || procs[0].MemoryBytes != 1<<30 {
		t.Fatalf("after the kill NVML lists %+v, %v", procs, err)
	}
}

type reporterFunc func(audit.Finding)

func (f reporterFunc) Report(_ context.Context, x audit.Finding) { f(x) }
