// Package podruntime runs containers as local processes: the stand-in for a
// container runtime on machines that have none. A container is the command
// of a pod's container, run on the host's root filesystem (images are not
// pulled or unpacked) with the environment and the bind mounts that the
// kubelet would hand to a runtime, in a private mount namespace.
//
// The runtime outlives node agents, as containerd outlives a kubelet
// restart: a restarted agent finds its pods' containers still running.
package podruntime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Mode says how mounts reach a container.
type Mode string

const (
	// ModeMountNamespace runs every container in its own mount namespace
	// with real bind mounts (needs CAP_SYS_ADMIN; root here has it).
	ModeMountNamespace Mode = "mount-namespace"
	// ModeRewrite is the fallback without mount namespaces: nothing is
	// mounted; environment values that name a mount destination are
	// rewritten to the mount's host source, and a mounted /etc/ld.so.preload
	// becomes LD_PRELOAD. Weaker (a process can unset LD_PRELOAD) and only
	// used when the probe fails.
	ModeRewrite Mode = "rewrite"
)

// DefaultPath is the PATH a container gets unless its spec sets one, as
// most images do.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ContainerSpec describes one container to start.
type ContainerSpec struct {
	// ID identifies the container within the runtime, e.g. "<pod-uid>/<name>".
	ID         string
	Args       []string
	Env        []string
	WorkingDir string
	Mounts     []Mount
	// Devices are device nodes to create in the container, as a runtime
	// creates the nodes an OCI spec's linux.devices lists.
	Devices []Device
	// LogPath receives stdout and stderr, appended.
	LogPath string
	// Annotations are kept for the caller (e.g. the CDI devices it resolved).
	Annotations map[string]string
}

// Device is a device node of the container (OCI linux.devices).
type Device struct {
	Path  string // in the container
	Type  string // "c" or "b"
	Major int64
	Minor int64
	Mode  os.FileMode
}

// makeDevices creates each device node under dir and returns the bind
// mounts that put them at their container paths: the container shares the
// host's /dev, so the nodes cannot simply be created there.
func makeDevices(dir string, devices []Device) ([]Mount, error) {
	if len(devices) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("device dir: %w", err)
	}
	var mounts []Mount
	for i, d := range devices {
		kind := uint32(syscall.S_IFCHR)
		switch d.Type {
		case "c", "u":
		case "b":
			kind = syscall.S_IFBLK
		default:
			return nil, fmt.Errorf("device %s: unsupported type %q", d.Path, d.Type)
		}
		mode := d.Mode.Perm()
		if mode == 0 {
			mode = 0o666
		}
		dev := int(unix.Mkdev(uint32(d.Major), uint32(d.Minor)))
		node := filepath.Join(dir, fmt.Sprintf("dev%d", i))
		if err := syscall.Mknod(node, kind|uint32(mode), dev); err != nil {
			return nil, fmt.Errorf("device node %s (%d:%d): %w", d.Path, d.Major, d.Minor, err)
		}
		mounts = append(mounts, Mount{Source: node, Destination: d.Path})
	}
	return mounts, nil
}

// Container is a started container.
type Container struct {
	Spec      ContainerSpec
	Pid       int
	StartedAt time.Time

	done       chan struct{}
	exitCode   int
	finishedAt time.Time
	reason     string
}

// Done is closed when the process has exited.
func (c *Container) Done() <-chan struct{} { return c.done }

// Exited reports whether the process has exited, and if so how.
func (c *Container) Exited() (exited bool, exitCode int, reason string, finishedAt time.Time) {
	select {
	case <-c.done:
		return true, c.exitCode, c.reason, c.finishedAt
	default:
		return false, 0, "", time.Time{}
	}
}

// Runtime starts and tracks containers.
type Runtime struct {
	dir     string
	podinit string
	mode    Mode
	logger  klog.Logger

	mu         sync.Mutex
	containers map[string]*Container
	seq        int
	// OnExit, if set, is called (in its own goroutine) when a container exits.
	onExit []func(*Container)
}

// New creates a runtime that keeps its files in dir and starts containers
// through the podinit binary. It probes once whether mount namespaces work
// and falls back to ModeRewrite if they do not, saying so in the log.
func New(ctx context.Context, dir, podinit string) (*Runtime, error) {
	logger := klog.FromContext(ctx).WithName("podruntime")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("runtime dir: %w", err)
	}
	r := &Runtime{dir: dir, podinit: podinit, logger: logger, containers: map[string]*Container{}}
	if err := r.probe(); err != nil {
		logger.Info("WARNING: mount namespaces are not usable here; containers get rewritten paths and LD_PRELOAD instead of bind mounts", "err", err)
		r.mode = ModeRewrite
	} else {
		r.mode = ModeMountNamespace
	}
	logger.V(1).Info("Runtime ready", "mode", r.mode)
	return r, nil
}

// Mode returns how this runtime applies mounts.
func (r *Runtime) Mode() Mode { return r.mode }

// OnExit registers a callback for container exits.
func (r *Runtime) OnExit(f func(*Container)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onExit = append(r.onExit, f)
}

// probe starts podinit in a mount namespace with one bind mount onto a path
// that does not exist, exactly what a real container start needs.
func (r *Runtime) probe() error {
	dir, err := os.MkdirTemp(r.dir, "probe")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("ok\n"), 0o644); err != nil {
		return err
	}
	spec := &LaunchSpec{
		Args:       []string{"cat", filepath.Join(dir, "missing", "dest")},
		Env:        []string{"PATH=" + DefaultPath},
		Mounts:     []Mount{{Source: src, Destination: filepath.Join(dir, "missing", "dest"), ReadOnly: true}},
		ScratchDir: filepath.Join(dir, "scratch"),
	}
	specPath := filepath.Join(dir, "spec.json")
	if err := WriteLaunchSpec(specPath, spec); err != nil {
		return err
	}
	cmd := exec.Command(r.podinit, specPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("podinit probe: %w: %s", err, out)
	}
	if strings.TrimSpace(string(out)) != "ok" {
		return fmt.Errorf("podinit probe printed %q", out)
	}
	return nil
}

// Get returns the container with this ID, running or exited, or nil.
func (r *Runtime) Get(id string) *Container {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.containers[id]
}

// Start runs a container. A container with the same ID that has exited is
// replaced; one that still runs is an error.
func (r *Runtime) Start(spec ContainerSpec) (*Container, error) {
	r.mu.Lock()
	if old := r.containers[spec.ID]; old != nil {
		if exited, _, _, _ := old.Exited(); !exited {
			r.mu.Unlock()
			return nil, fmt.Errorf("container %s is already running", spec.ID)
		}
	}
	r.seq++
	seq := r.seq
	r.mu.Unlock()

	if len(spec.Args) == 0 {
		return nil, errors.New("container has no command: images are not run here, set command or args")
	}
	cdir := filepath.Join(r.dir, fmt.Sprintf("c%d", seq))
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		return nil, fmt.Errorf("container dir: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	logFile, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("container log: %w", err)
	}
	defer logFile.Close()

	env := withDefaultPath(spec.Env)
	var cmd *exec.Cmd
	switch r.mode {
	case ModeMountNamespace:
		devMounts, err := makeDevices(filepath.Join(cdir, "devices"), spec.Devices)
		if err != nil {
			return nil, err
		}
		mounts := append(slices.Clone(spec.Mounts), devMounts...)
		launch := &LaunchSpec{Args: spec.Args, Env: env, WorkingDir: spec.WorkingDir, Mounts: mounts, ScratchDir: filepath.Join(cdir, "scratch")}
		specPath := filepath.Join(cdir, "launch.json")
		if err := WriteLaunchSpec(specPath, launch); err != nil {
			return nil, err
		}
		cmd = exec.Command(r.podinit, specPath)
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	default:
		args, env, dir, err := rewrite(spec.Args, env, spec.WorkingDir, spec.Mounts)
		if err != nil {
			return nil, err
		}
		path, err := lookPath(args[0], env)
		if err != nil {
			return nil, err
		}
		cmd = exec.Command(path, args[1:]...)
		cmd.Env = env
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Its own process group, so that stopping the container reaches its
	// children; killed with the harness if the harness dies.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start container %s: %w", spec.ID, err)
	}
	c := &Container{Spec: spec, Pid: cmd.Process.Pid, StartedAt: time.Now(), done: make(chan struct{})}
	r.mu.Lock()
	r.containers[spec.ID] = c
	r.mu.Unlock()
	r.logger.V(2).Info("Container started", "id", spec.ID, "pid", c.Pid, "args", spec.Args)

	go func() {
		err := cmd.Wait()
		c.finishedAt = time.Now()
		c.exitCode, c.reason = 0, "Completed"
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				c.exitCode, c.reason = 128+int(ws.Signal()), "Error"
			} else {
				c.exitCode, c.reason = exitErr.ExitCode(), "Error"
			}
		} else if err != nil {
			c.exitCode, c.reason = 128, "Error"
		}
		close(c.done)
		r.logger.V(2).Info("Container exited", "id", spec.ID, "pid", c.Pid, "exitCode", c.exitCode)
		r.mu.Lock()
		callbacks := append([]func(*Container){}, r.onExit...)
		r.mu.Unlock()
		for _, f := range callbacks {
			f(c)
		}
	}()
	return c, nil
}

// Stop sends SIGTERM to the container's process group, then SIGKILL after
// grace, and waits for the exit.
func (r *Runtime) Stop(id string, grace time.Duration) {
	c := r.Get(id)
	if c == nil {
		return
	}
	if exited, _, _, _ := c.Exited(); exited {
		return
	}
	_ = syscall.Kill(-c.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-c.Pid, syscall.SIGKILL)
	<-c.done
}

// Remove forgets an exited container.
func (r *Runtime) Remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.containers[id]; c != nil {
		if exited, _, _, _ := c.Exited(); exited {
			delete(r.containers, id)
		}
	}
}

// List returns the IDs of all known containers.
func (r *Runtime) List() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.containers))
	for id := range r.containers {
		ids = append(ids, id)
	}
	return ids
}

// Shutdown kills every container: used when the whole local cluster stops.
func (r *Runtime) Shutdown(grace time.Duration) {
	var wg sync.WaitGroup
	for _, id := range r.List() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Stop(id, grace)
		}()
	}
	wg.Wait()
}

func withDefaultPath(env []string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return env
		}
	}
	return append([]string{"PATH=" + DefaultPath}, env...)
}

func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, dir := range filepath.SplitList(p) {
				candidate := filepath.Join(dir, file)
				if st, err := os.Stat(candidate); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
					return candidate, nil
				}
			}
		}
	}
	return "", fmt.Errorf("command %q not found in PATH", file)
}

// rewrite implements ModeRewrite: see there.
func rewrite(args, env []string, dir string, mounts []Mount) ([]string, []string, string, error) {
	replace := func(s string) string {
		for _, m := range mounts {
			if s == m.Destination || strings.HasPrefix(s, m.Destination+"/") {
				return m.Source + strings.TrimPrefix(s, m.Destination)
			}
		}
		return s
	}
	var preload []string
	for _, m := range mounts {
		if m.Destination == "/etc/ld.so.preload" {
			data, err := os.ReadFile(m.Source)
			if err != nil {
				return nil, nil, "", fmt.Errorf("read preload list: %w", err)
			}
			preload = append(preload, strings.Fields(string(data))...)
		}
	}
	outEnv := make([]string, 0, len(env)+1)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		parts := strings.Split(v, ":")
		for i := range parts {
			parts[i] = replace(parts[i])
		}
		outEnv = append(outEnv, k+"="+strings.Join(parts, ":"))
	}
	if len(preload) > 0 {
		outEnv = append(outEnv, "LD_PRELOAD="+strings.Join(preload, " "))
	}
	outArgs := make([]string, len(args))
	for i, a := range args {
		outArgs[i] = replace(a)
	}
	return outArgs, outEnv, replace(dir), nil
}
