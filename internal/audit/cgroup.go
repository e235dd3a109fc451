package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNotAPod means the process runs in no Kubernetes pod's cgroup (a host
// daemon, a process of another container runtime).
var ErrNotAPod = errors.New("not in a pod's cgroup")

// PodProcess is where a host process runs, from its cgroup.
type PodProcess struct {
	// PodUID is the pod's UID with dashes, as in metadata.uid.
	PodUID string
	// ContainerID is the runtime's container ID (64 hex digits), "" when
	// the process sits in the pod's own cgroup.
	ContainerID string
}

// CgroupReader maps host PIDs to pods by reading /proc/<pid>/cgroup under
// ProcRoot (the host's /proc: the plugin runs with the host's PID
// namespace). A process cannot move itself out of its pod's cgroup (the
// cgroup filesystem is read-only in a container and the kubelet's cgroup
// is outside its cgroup namespace), so unlike the environment or the
// accounting region this is not something the tenant controls.
type CgroupReader struct {
	ProcRoot string
}

// PodOf reads the cgroup of pid.
func (r CgroupReader) PodOf(pid uint32) (PodProcess, error) {
	root := r.ProcRoot
	if root == "" {
		root = "/proc"
	}
	data, err := os.ReadFile(filepath.Join(root, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		return PodProcess{}, fmt.Errorf("cgroup of PID %d: %w", pid, err)
	}
	return ParseCgroup(data)
}

// ParseCgroup finds the pod and container in the content of
// /proc/<pid>/cgroup, cgroup v1 or v2, with the kubelet's systemd or
// cgroupfs driver and containerd, CRI-O or Docker names:
//
//	0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//	0::/kubepods/besteffort/pod<uid>/<id>
//	11:memory:/kubepods/pod<uid>/crio-<id>.scope
//
// Only a path segment that names a pod counts; the container is the
// segment right below it.
func ParseCgroup(data []byte) (PodProcess, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controllers:path; the path may contain ':'.
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		segs := strings.Split(parts[2], "/")
		for i, seg := range segs {
			uid, ok := podUIDOf(seg)
			if !ok {
				continue
			}
			p := PodProcess{PodUID: uid}
			if i+1 < len(segs) {
				p.ContainerID = containerIDOf(segs[i+1])
			}
			return p, nil
		}
	}
	return PodProcess{}, ErrNotAPod
}

// podUIDOf recognises "pod<uid>" (cgroupfs) and "kubepods[-qos]-pod<uid_>.slice"
// (systemd, dashes of the UID turned into underscores).
func podUIDOf(seg string) (string, bool) {
	var raw string
	switch {
	case strings.HasSuffix(seg, ".slice") && strings.HasPrefix(seg, "kubepods"):
		i := strings.LastIndex(seg, "-pod")
		if i < 0 {
			return "", false
		}
		raw = strings.ReplaceAll(strings.TrimSuffix(seg[i+4:], ".slice"), "_", "-")
	case strings.HasPrefix(seg, "pod"):
		raw = seg[3:]
	default:
		return "", false
	}
	if !isUID(raw) {
		return "", false
	}
	return raw, true
}

// isUID: 8-4-4-4-12 hex digits.
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !isHex(c) {
				return false
			}
		}
	}
	return true
}

func isHex(c rune) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
}

// containerIDOf strips the runtime's prefix and the systemd suffix.
func containerIDOf(seg string) string {
	seg = strings.TrimSuffix(seg, ".scope")
	for _, prefix := range []string{"cri-containerd-", "crio-", "docker-", "containerd-"} {
		seg = strings.TrimPrefix(seg, prefix)
	}
	if len(seg) != 64 {
		return ""
	}
	for _, c := range seg {
		if !isHex(c) {
			return ""
		}
	}
	return seg
}
