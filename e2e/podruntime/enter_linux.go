package podruntime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Enter is podinit's job, run inside a fresh mount namespace (the runtime
// starts podinit with CLONE_NEWNS; Go makes "/" a private mount tree there,
// so nothing below leaks to the host). It applies the bind mounts, switches
// to the container's environment and working directory and executes the
// command. It returns only on error.
func Enter(spec *LaunchSpec) error {
	if len(spec.Args) == 0 {
		return errors.New("no command")
	}
	if err := applyMounts(spec.ScratchDir, spec.Mounts); err != nil {
		return err
	}

	os.Clearenv()
	for _, kv := range spec.Env {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return fmt.Errorf("environment %q: %w", k, err)
		}
	}
	dir := spec.WorkingDir
	if dir == "" {
		dir = "/"
	}
	if err := os.Chdir(dir); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	path, err := exec.LookPath(spec.Args[0])
	if err != nil {
		return fmt.Errorf("command %q: %w", spec.Args[0], err)
	}
	if err := syscall.Exec(path, spec.Args, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

// applyMounts bind-mounts every source on its destination. A destination
// that does not exist on the host (the CDI spec asks for /etc/ld.so.preload,
// /run/hami-dra/...) is created in a writable overlay over its nearest
// existing ancestor; the overlay exists only in this mount namespace, so the
// host's /etc is never touched. Order matters:
//  1. open every source first (O_PATH), so that an overlay over a directory
//     that holds a source cannot redirect it into the overlay's copy;
//  2. overlay the topmost ancestors that need it, before any bind mount, so
//     that no overlay hides a bind mount made earlier;
//  3. create the mount points and bind through /proc/self/fd.
func applyMounts(scratch string, mounts []Mount) error {
	type prepared struct {
		Mount
		fd    int
		isDir bool
		dest  string
	}
	list := make([]prepared, 0, len(mounts))
	defer func() {
		for _, p := range list {
			syscall.Close(p.fd)
		}
	}()
	var ancestors []string
	for _, m := range mounts {
		dest := filepath.Clean(m.Destination)
		if !filepath.IsAbs(dest) {
			return fmt.Errorf("mount destination %q is not absolute", m.Destination)
		}
		fd, err := syscall.Open(m.Source, unixOPath|syscall.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount source %s of %s: %w", m.Source, dest, err)
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			syscall.Close(fd)
			return fmt.Errorf("mount source %s: %w", m.Source, err)
		}
		list = append(list, prepared{Mount: m, fd: fd, isDir: st.Mode&syscall.S_IFMT == syscall.S_IFDIR, dest: dest})
		if _, err := os.Lstat(dest); errors.Is(err, fs.ErrNotExist) {
			ancestor := filepath.Dir(dest)
			for {
				if _, err := os.Stat(ancestor); err == nil {
					break
				}
				ancestor = filepath.Dir(ancestor)
			}
			if ancestor == "/" {
				return fmt.Errorf("mount destination %s: refusing to overlay the root directory", dest)
			}
			ancestors = append(ancestors, ancestor)
		} else if err != nil {
			return fmt.Errorf("mount destination %s: %w", dest, err)
		}
	}
	for i, dir := range topmost(ancestors) {
		if err := overlay(scratch, i, dir); err != nil {
			return err
		}
	}
	for _, p := range list {
		if _, err := os.Lstat(p.dest); errors.Is(err, fs.ErrNotExist) {
			if p.isDir {
				err = os.MkdirAll(p.dest, 0o755)
			} else if err = os.MkdirAll(filepath.Dir(p.dest), 0o755); err == nil {
				var f *os.File
				if f, err = os.OpenFile(p.dest, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
					err = f.Close()
				}
			}
			if err != nil {
				return fmt.Errorf("create mount point %s: %w", p.dest, err)
			}
		}
		src := fmt.Sprintf("/proc/self/fd/%d", p.fd)
		if err := syscall.Mount(src, p.dest, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", p.Source, p.dest, err)
		}
		if p.ReadOnly {
			if err := syscall.Mount("", p.dest, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("remount %s read-only: %w", p.dest, err)
			}
		}
	}
	return nil
}

// unixOPath is O_PATH, which package syscall does not name.
const unixOPath = 0x200000

// topmost drops duplicates and directories below another one in the list.
func topmost(dirs []string) []string {
	sort.Strings(dirs)
	var out []string
	for _, d := range dirs {
		if len(out) > 0 {
			last := out[len(out)-1]
			if d == last || strings.HasPrefix(d, last+"/") {
				continue
			}
		}
		out = append(out, d)
	}
	return out
}

// overlay puts a writable, private layer (on a tmpfs) over dir.
func overlay(scratch string, index int, dir string) error {
	base := filepath.Join(scratch, fmt.Sprintf("ovl%d", index))
	if err := os.MkdirAll(base, 0o700); err != nil {
		return fmt.Errorf("overlay scratch: %w", err)
	}
	// tmpfs: the upper layer must not itself be an overlay filesystem, which
	// the host's root may be.
	if err := syscall.Mount("tmpfs", base, "tmpfs", 0, "mode=0700"); err != nil {
		return fmt.Errorf("tmpfs for overlay of %s: %w", dir, err)
	}
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("overlay dirs: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", dir, upper, work)
	if err := syscall.Mount("overlay", dir, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlay on %s: %w", dir, err)
	}
	return nil
}
