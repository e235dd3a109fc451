package realnode

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// process is one long-running component (containerd, the kubelet): started
// with its output appended to a log file that survives restarts, stopped
// with SIGTERM and, after a grace period, SIGKILL.
type process struct {
	name    string
	binary  string
	args    []string
	env     []string
	logFile string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
}

func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.name)
	}
	log, err := os.OpenFile(p.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s log: %w", p.name, err)
	}
	p.starts++
	fmt.Fprintf(log, "===== start %d at %s: %s %v\n", p.starts, time.Now().Format(time.RFC3339Nano), p.binary, p.args)
	cmd := exec.Command(p.binary, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so that a Ctrl-C in the demo's terminal
	// reaches only the demo, which stops the node in order; and killed if
	// the harness dies, so that no kubelet outlives its cluster.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		fmt.Fprintf(log, "===== exited at %s: %v\n", time.Now().Format(time.RFC3339Nano), cmd.ProcessState)
		log.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// running reports whether the process is alive; exited returns its exit
// state once it is not.
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs.
func (p *process) stop(grace time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	var err error
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err = cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal %v to %s: %w", sig, p.name, err)
		}
		select {
		case <-done:
			err = nil
		case <-time.After(grace):
			err = fmt.Errorf("%s (pid %d) did not exit %v after %v", p.name, cmd.Process.Pid, grace, sig)
			continue
		}
		break
	}
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.cmd == cmd {
		p.cmd, p.done = nil, nil
	}
	p.mu.Unlock()
	return nil
}

// freePort returns a TCP port that was free a moment ago on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
