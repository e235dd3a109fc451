// Package plugin builds the real vgpu-kubelet-plugin binary from the driver's
// module and runs one instance of it per simulated node, as a separate
// process, so that the end-to-end tests exercise exactly what ships: its
// flags, its sockets, its files, and what happens when it is killed.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// DriverName is the DRA driver name the plugin registers by default.
const DriverName = "vgpu.hami.io"

// Build compiles ./cmd/vgpu-kubelet-plugin of the module in repoRoot into
// out. The Go build cache makes repeated builds take a second or two.
func Build(ctx context.Context, repoRoot, out string) error {
	logger := klog.FromContext(ctx)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/vgpu-kubelet-plugin")
	cmd.Dir = repoRoot
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/vgpu-kubelet-plugin in %s: %w", repoRoot, err)
	}
	logger.V(1).Info("Built vgpu-kubelet-plugin", "path", out, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Config is one plugin instance: the flags it gets and where it logs.
type Config struct {
	Binary     string
	DriverName string
	NodeName   string
	Kubeconfig string
	// PluginDataDir holds the DRA service socket, RegistrarDir the
	// registration socket that the node agent's plugin watcher finds.
	PluginDataDir string
	RegistrarDir  string
	CDIRoot       string
	StateDir      string
	LibvgpuPath   string
	// Simulate is the GPU profile, e.g. "4xA100-80GB".
	Simulate string
	LogFile  string
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// Env is added to the plugin's environment.
	Env []string
}

func (c Config) args() []string {
	args := []string{
		"--driver-name=" + c.DriverName,
		"--node-name=" + c.NodeName,
		"--kubeconfig=" + c.Kubeconfig,
		"--plugin-data-dir=" + c.PluginDataDir,
		"--registrar-dir=" + c.RegistrarDir,
		"--cdi-root=" + c.CDIRoot,
		"--state-dir=" + c.StateDir,
		"--simulate=" + c.Simulate,
		// The tests check that claims of pods deleted while the plugin was
		// down are cleaned up; do not make them wait a minute for it.
		"--cleanup-interval=5s",
	}
	if c.LibvgpuPath != "" {
		args = append(args, "--libvgpu-path="+c.LibvgpuPath)
	}
	return append(args, c.ExtraArgs...)
}

// Process is a plugin instance that can be started, killed and restarted.
type Process struct {
	cfg    Config
	logger klog.Logger

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// Starts counts the starts, for logs.
	starts int
}

// New prepares the directories of a plugin instance without starting it.
func New(ctx context.Context, cfg Config) (*Process, error) {
	if cfg.DriverName == "" {
		cfg.DriverName = DriverName
	}
	for _, dir := range []string{cfg.PluginDataDir, cfg.RegistrarDir, cfg.CDIRoot, cfg.StateDir, filepath.Dir(cfg.LogFile)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("plugin dir: %w", err)
		}
	}
	return &Process{cfg: cfg, logger: klog.FromContext(ctx).WithName("plugin").WithValues("node", cfg.NodeName)}, nil
}

// Config returns the instance's configuration.
func (p *Process) Config() Config { return p.cfg }

// Start launches the binary. Its output is appended to the log file, so
// that what a killed instance said stays next to what its successor says.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return errors.New("plugin already running")
	}
	logFile, err := os.OpenFile(p.cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("plugin log: %w", err)
	}
	p.starts++
	fmt.Fprintf(logFile, "===== start %d at %s: %s %v\n", p.starts, time.Now().Format(time.RFC3339Nano), p.cfg.Binary, p.cfg.args())
	cmd := exec.Command(p.cfg.Binary, p.cfg.args()...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), p.cfg.Env...)
	// Its own process group: a Ctrl-C in the demo's terminal reaches the
	// demo, which then stops the plugins in order, not all at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", p.cfg.Binary, err)
	}
	done := make(chan struct{})
	go func() {
		err := cmd.Wait()
		logFile.Close()
		p.logger.V(1).Info("Plugin exited", "pid", cmd.Process.Pid, "err", err)
		close(done)
	}()
	p.cmd, p.done = cmd, done
	p.logger.V(1).Info("Plugin started", "pid", cmd.Process.Pid, "start", p.starts)
	return nil
}

// Pid returns the process id, or 0 if it is not running.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to be gone: no cleanup runs
// in the plugin, its sockets stay behind, as after a crash.
func (p *Process) Kill() error {
	return p.signal(syscall.SIGKILL, 10*time.Second)
}

// Stop asks the plugin to shut down (SIGTERM) and kills it if it has not
// exited after the grace period.
func (p *Process) Stop(grace time.Duration) error {
	err := p.signal(syscall.SIGTERM, grace)
	if err != nil {
		return p.Kill()
	}
	return nil
}

func (p *Process) signal(sig syscall.Signal, wait time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
	default:
		if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal %v to plugin: %w", sig, err)
		}
		select {
		case <-done:
		case <-time.After(wait):
			return fmt.Errorf("plugin pid %d did not exit %v after %v", cmd.Process.Pid, wait, sig)
		}
	}
	p.mu.Lock()
	if p.cmd == cmd {
		p.cmd, p.done = nil, nil
	}
	p.mu.Unlock()
	return nil
}

// Running reports whether the process is alive.
func (p *Process) Running() bool {
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
