package audit

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

const (
	testUID = "0b7c4d2e-1f3a-4b5c-8d6e-7f8091a2b3c4"
	testCID = "4f1d2c3b4a5968778695a4b3c2d1e0f1f2e3d4c5b6a79889a0b1c2d3e4f5a6b7"
)

func TestParseCgroup(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		want          PodProcess
		err           error
	}{
		{"v2 systemd containerd burstable", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7c4d2e_1f3a_4b5c_8d6e_7f8091a2b3c4.slice/cri-containerd-" + testCID + ".scope\n",
			PodProcess{testUID, testCID}, nil},
		{"v2 systemd guaranteed", "0::/kubepods.slice/kubepods-pod0b7c4d2e_1f3a_4b5c_8d6e_7f8091a2b3c4.slice/cri-containerd-" + testCID + ".scope\n",
			PodProcess{testUID, testCID}, nil},
		{"v2 cgroupfs", "0::/kubepods/besteffort/pod" + testUID + "/" + testCID + "\n", PodProcess{testUID, testCID}, nil},
		{"v1 cri-o", "12:pids:/kubepods/pod" + testUID + "/crio-" + testCID + ".scope\n11:memory:/kubepods/pod" + testUID + "/crio-" + testCID + ".scope\n",
			PodProcess{testUID, testCID}, nil},
		{"nested kubelet root", "0::/system.slice/kubelet.slice/kubepods/burstable/pod" + testUID + "/" + testCID + "\n", PodProcess{testUID, testCID}, nil},
		{"pod cgroup itself", "0::/kubepods/burstable/pod" + testUID + "\n", PodProcess{testUID, ""}, nil},
		{"host process", "0::/system.slice/containerd.service\n", PodProcess{}, ErrNotAPod},
		{"not a UID", "0::/kubepods/burstable/podcast/" + testCID + "\n", PodProcess{}, ErrNotAPod},
		{"upper-case UID is not the kubelet's", "0::/kubepods/pod0B7C4D2E-1F3A-4B5C-8D6E-7F8091A2B3C4/x\n", PodProcess{}, ErrNotAPod},
		{"empty", "", PodProcess{}, ErrNotAPod},
		{"garbage", "no colons here\n::\n", PodProcess{}, ErrNotAPod},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCgroup([]byte(tc.content))
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestCgroupReader(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "4242"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "4242", "cgroup"), []byte("0::/kubepods/pod"+testUID+"/"+testCID+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := CgroupReader{ProcRoot: root}
	if got, err := r.PodOf(4242); err != nil || got.PodUID != testUID {
		t.Fatalf("PodOf: %+v, %v", got, err)
	}
	if _, err := r.PodOf(4243); err == nil {
		t.Fatal("a PID that is gone has no pod")
	}
}

// FuzzParseCgroup: the file is the kernel's, but the parser must never
// panic nor return a UID that is not one.
func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte("0::/kubepods/pod" + testUID + "/" + testCID + "\n"))
	f.Add([]byte("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7c4d2e_1f3a_4b5c_8d6e_7f8091a2b3c4.slice/cri-containerd-" + testCID + ".scope"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseCgroup(data)
		if err == nil && !isUID(p.PodUID) {
			t.Fatalf("pod UID %q", p.PodUID)
		}
	})
}
