package realnodesuite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hami-dra/hami-dra/cdi"
	"github.com/hami-dra/hami-dra/e2e/localcluster"
	"github.com/hami-dra/hami-dra/e2e/plugin"
)

// TestRealNodeRegistered: the kubelet registered the Node and reports the
// real runtime; the plugin's registration socket is in the kubelet's
// plugins_registry and its ResourceSlices are published.
func TestRealNodeRegistered(t *testing.T) {
	needRealNode(t)
	ctx := testContext(t, 30*time.Second)
	node, err := client().CoreV1().Nodes().Get(ctx, realNodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info := node.Status.NodeInfo
	t.Logf("node %s: kubelet %s, runtime %s, kernel %s", node.Name, info.KubeletVersion, info.ContainerRuntimeVersion, info.KernelVersion)
	if info.KubeletVersion != "v1.37.1" {
		t.Errorf("kubelet version %q, want v1.37.1", info.KubeletVersion)
	}
	if !strings.HasPrefix(info.ContainerRuntimeVersion, "containerd://2.") {
		t.Errorf("container runtime %q, want containerd 2.x", info.ContainerRuntimeVersion)
	}
	if node.Labels[localcluster.RealNodeKindLabel] != "real" {
		t.Errorf("node labels %v lack %s=real", node.Labels, localcluster.RealNodeKindLabel)
	}
	reg := filepath.Join(rnode.Node.RegistrarDir(), plugin.DriverName+"-reg.sock")
	if st, err := os.Stat(reg); err != nil || st.Mode()&os.ModeSocket == 0 {
		entries, _ := os.ReadDir(rnode.Node.RegistrarDir())
		t.Errorf("plugin registration socket %s: %v (directory holds %v)", reg, err, entries)
	}
	if len(gpuMinors(t)) != 2 {
		t.Errorf("the real node publishes %d GPUs, want 2 (%s)", len(gpuMinors(t)), realNodeProfile)
	}
}

// TestRealNodeClaimContainers: a pod with a 20Gi/30-core claim shared by
// three containers, two of the glibc image and one of the minimal image,
// created by containerd and runc from the plugin's and the toolkit's CDI
// specs. Inside the containers' own root filesystems: the quota
// environment, the read-only preload and library, the claim's GPU device
// nodes and only those, in the devices cgroup too; nvidia-smi shows the
// quota; one container holds 12 GiB and the other gets exactly the 8 GiB
// left of the claim's 20 (one accounting region for the claim).
func TestRealNodeClaimContainers(t *testing.T) {
	needRealNode(t)
	ns := newNamespace(t, "real-claim")
	createTemplate(t, ns, "gpu-20gi-30", "20Gi", "30")
	a := strings.Join([]string{
		`env | grep -E '^(CUDA_|LD_PRELOAD)' | sort`,
		`echo "image: $(cat /etc/hami-e2e-image)"`,
		`grep ' / / ' /proc/self/mountinfo | grep -q overlay && echo "rootfs: overlay"`,
		`echo "preload: $(cat /etc/ld.so.preload)"`,
		`if echo x > /etc/ld.so.preload 2>/dev/null; then echo "preload: writable"; else echo "preload: read-only"; fi`,
		`if echo x > /usr/local/vgpu/libvgpu.so 2>/dev/null; then echo "libvgpu: writable"; else echo "libvgpu: read-only"; fi`,
		`for f in /dev/nvidia*; do stat -c 'dev %n %t:%T %F' "$f"; done`,
		`if [ -e /sys/fs/cgroup/devices/devices.list ]; then while read -r l; do echo "cgroup $l"; done < /sys/fs/cgroup/devices/devices.list; else echo "cgroup: no devices.list"; fi`,
		`nvidia-smi`,
		`quota --hold 12288 > /shared/a.log 2>&1 &`,
		`until grep -q holding /shared/a.log; do sleep 0.2; done`,
		`cat /shared/a.log`,
		`wait`,
	}, "\n")
	b := strings.Join([]string{
		`until grep -q holding /shared/a.log 2>/dev/null; do sleep 0.2; done`,
		`env | grep -E '^CUDA_DEVICE_MEMORY_SHARED_CACHE'`,
		`quota 8192 1`,
		`echo "b: done"`,
		`exec sleep 1000000`,
	}, "\n")
	minimal := corev1.Container{
		Name:            "minimal",
		Image:           localcluster.MinimalImage,
		ImagePullPolicy: corev1.PullNever,
		Resources:       corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
	}
	pod := createPod(t, realPod(ns, "shared", "gpu-20gi-30", container("a", a), container("b", b), minimal))
	pod = waitReady(t, ns, pod.Name, 2*time.Minute)
	logA := waitLog(t, pod, "a", "holding", time.Minute)
	logB := waitLog(t, pod, "b", "b: done", time.Minute)
	t.Logf("container a:\n%s\ncontainer b:\n%s", logA, logB)

	wantAll(t, "container a's log", logA,
		fmt.Sprintf("CUDA_DEVICE_MEMORY_LIMIT_0=%d", int64(20)<<30),
		"CUDA_DEVICE_SM_LIMIT_0=30",
		"CUDA_DEVICE_MEMORY_SHARED_CACHE=/run/hami-dra/claim/vgpu.shr",
		"image: cuda-sim",
		"rootfs: overlay",
		"preload: /usr/local/vgpu/libvgpu.so",
		"preload: read-only",
		"libvgpu: read-only",
		"/ 20480MiB",
		"total_mib=20480 free_mib=20480",
		"alloc 12288 MiB: CUDA_SUCCESS",
	)
	wantAll(t, "container b's log", logB,
		"CUDA_DEVICE_MEMORY_SHARED_CACHE=/run/hami-dra/claim/vgpu.shr",
		// a's 12 GiB are already counted: one region for the claim.
		"total_mib=20480 free_mib=8192",
		"alloc 8192 MiB: CUDA_SUCCESS",
		"alloc 1 MiB: CUDA_ERROR_OUT_OF_MEMORY",
	)

	// The claim's GPU, and no other GPU of the node, in /dev and in the
	// devices cgroup (cgroup v1: devices.list of the container's cgroup).
	claim := podClaim(t, pod)
	minor, other := allocatedMinor(t, claim)
	wantAll(t, "container a's /dev", logA,
		fmt.Sprintf("dev /dev/nvidia%d c3:%x character special file", minor, minor),
		"dev /dev/nvidiactl c3:ff character special file",
		"dev /dev/nvidia-uvm ",
		"dev /dev/nvidia-uvm-tools ",
	)
	if strings.Contains(logA, fmt.Sprintf("dev /dev/nvidia%d ", other)) {
		t.Errorf("the container sees /dev/nvidia%d, a GPU of the node its claim was not allocated", other)
	}
	if _, err := os.Stat("/sys/fs/cgroup/devices/devices.list"); err == nil {
		wantAll(t, "container a's devices cgroup", logA,
			fmt.Sprintf("cgroup c 195:%d rwm", minor),
			"cgroup c 195:255 rwm",
		)
		for _, bad := range []string{fmt.Sprintf("cgroup c 195:%d ", other), "cgroup a *:* rwm"} {
			if strings.Contains(logA, bad) {
				t.Errorf("the container's devices cgroup allows %q", strings.TrimPrefix(bad, "cgroup "))
			}
		}
	}

	// The claim's accounting region lives in the plugin's per-claim
	// directory on the host, bind-mounted into every container.
	region := filepath.Join(rnode.Plugin.Config().StateDir, "claims", string(claim.UID), "vgpu.shr")
	if _, err := os.Stat(region); err != nil {
		t.Errorf("accounting region on the host: %v", err)
	}
	// The minimal image has no libc and no /etc: the CDI edits created
	// their mount points, and the container runs.
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == "minimal" && (s.State.Running == nil || !s.Ready) {
			t.Errorf("minimal container not running: %+v", s.State)
		}
	}
}

// TestRealNodeContainerRestart: the kubelet restarts a container that
// exited (restartPolicy Always); the new instance, created again by runc
// from the prepared claim's CDI devices, still has the preload and the
// quota.
func TestRealNodeContainerRestart(t *testing.T) {
	needRealNode(t)
	ns := newNamespace(t, "real-restart")
	createTemplate(t, ns, "gpu-4gi", "4Gi", "")
	script := strings.Join([]string{
		`echo "start: preload=$(cat /etc/ld.so.preload) limit=$CUDA_DEVICE_MEMORY_LIMIT_0"`,
		`if [ ! -e /shared/once ]; then touch /shared/once; echo "first run: exiting"; exit 3; fi`,
		`quota 1024 4096`,
		`echo "second run"`,
		`exec sleep 1000000`,
	}, "\n")
	pod := createPod(t, realPod(ns, "restart", "gpu-4gi", container("work", script)))
	var status corev1.ContainerStatus
	eventually(t, 2*time.Minute, "container restarted once and running", func(ctx context.Context) (bool, string) {
		p, err := client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, s := range p.Status.ContainerStatuses {
			status = s
			if s.RestartCount >= 1 && s.State.Running != nil {
				return true, ""
			}
		}
		return false, describePod(ctx, p)
	})
	if status.LastTerminationState.Terminated == nil || status.LastTerminationState.Terminated.ExitCode != 3 {
		t.Errorf("last termination %+v, want exit code 3", status.LastTerminationState.Terminated)
	}
	log := waitLog(t, pod, "work", "second run", time.Minute)
	previous, err := logs(testContext(t, 10*time.Second), pod, "work", true)
	if err != nil {
		t.Fatalf("previous log: %v", err)
	}
	t.Logf("first instance:\n%s\nsecond instance:\n%s", previous, log)
	start := fmt.Sprintf("start: preload=/usr/local/vgpu/libvgpu.so limit=%d", int64(4)<<30)
	wantAll(t, "first instance's log", previous, start, "first run: exiting")
	wantAll(t, "second instance's log", log, start, "alloc 1024 MiB: CUDA_SUCCESS", "alloc 4096 MiB: CUDA_ERROR_OUT_OF_MEMORY")
}

// TestRealNodeRestarts: the kubelet restarted, then the plugin killed and
// restarted, while a container of a claim runs: the container is neither
// restarted nor recreated, and new pods get their claims prepared after
// each restart. Deleting the pods unprepares their claims: the claim's CDI
// spec and per-claim directory are removed.
func TestRealNodeRestarts(t *testing.T) {
	needRealNode(t)
	ns := newNamespace(t, "real-restarts")
	createTemplate(t, ns, "gpu-8gi", "8Gi", "")
	holder := createPod(t, realPod(ns, "holder", "gpu-8gi", container("work", `exec quota --hold 2048`)))
	holder = waitReady(t, ns, holder.Name, 2*time.Minute)
	waitLog(t, holder, "work", "holding", time.Minute)
	containerID := holder.Status.ContainerStatuses[0].ContainerID
	holderClaim := podClaim(t, holder)
	spec := filepath.Join(rnode.Node.Config().CDIDir, cdi.SpecFileName(string(holderClaim.UID)))
	if _, err := os.Stat(spec); err != nil {
		t.Fatalf("claim's CDI spec: %v", err)
	}

	newPod := func(name string) {
		t.Helper()
		p := createPod(t, realPod(ns, name, "gpu-8gi", container("work", `quota 8192 1; exec sleep 1000000`)))
		p = waitReady(t, ns, p.Name, 2*time.Minute)
		log := waitLog(t, p, "work", "alloc 1 MiB", time.Minute)
		wantAll(t, name+"'s log", log, "alloc 8192 MiB: CUDA_SUCCESS", "alloc 1 MiB: CUDA_ERROR_OUT_OF_MEMORY")
	}
	stillRunning := func(after string) {
		t.Helper()
		p, err := client().CoreV1().Pods(ns).Get(testContext(t, 10*time.Second), holder.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := p.Status.ContainerStatuses[0]
		if s.ContainerID != containerID || s.RestartCount != 0 || s.State.Running == nil {
			t.Errorf("after %s the holder's container is %s (restarts %d, running %v), want %s still running",
				after, s.ContainerID, s.RestartCount, s.State.Running != nil, containerID)
		}
	}

	restarted := time.Now()
	if err := rnode.Node.RestartKubelet(); err != nil {
		t.Fatalf("restart kubelet: %v", err)
	}
	eventually(t, 2*time.Minute, "node Ready again after the kubelet restart", func(ctx context.Context) (bool, string) {
		n, err := client().CoreV1().Nodes().Get(ctx, realNodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue && c.LastHeartbeatTime.After(restarted), fmt.Sprintf("%s %s %s", c.Status, c.Reason, c.LastHeartbeatTime)
			}
		}
		return false, "no Ready condition"
	})
	newPod("after-kubelet")
	stillRunning("the kubelet restart")

	if err := rnode.RestartPlugin(testContext(t, time.Minute), env); err != nil {
		t.Fatalf("restart plugin: %v", err)
	}
	newPod("after-plugin")
	stillRunning("the plugin restart")

	// Pod deletion unprepares: the kubelet calls the plugin, which removes
	// the claim's CDI spec and directory; the generated claim is deleted.
	ctx := testContext(t, 2*time.Minute)
	if err := client().CoreV1().Pods(ns).Delete(ctx, holder.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	claimDir := filepath.Join(rnode.Plugin.Config().StateDir, "claims", string(holderClaim.UID))
	eventually(t, time.Minute, "claim unprepared after its pod was deleted", func(ctx context.Context) (bool, string) {
		_, specErr := os.Stat(spec)
		_, dirErr := os.Stat(claimDir)
		_, claimErr := client().ResourceV1().ResourceClaims(ns).Get(ctx, holderClaim.Name, metav1.GetOptions{})
		return os.IsNotExist(specErr) && os.IsNotExist(dirErr) && apierrors.IsNotFound(claimErr),
			fmt.Sprintf("spec: %v, claim dir: %v, claim: %v", specErr, dirErr, claimErr)
	})
}

// gpuMinors returns the minor numbers of the real node's published GPUs by
// device name.
func gpuMinors(t *testing.T) map[string]int64 {
	t.Helper()
	gpus, err := realNodeGPUs(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	minors := map[string]int64{}
	for name, g := range gpus {
		minors[name] = g.minor
	}
	return minors
}

// allocatedMinor returns the minor of the claim's GPU and of the node's
// other GPU.
func allocatedMinor(t *testing.T, claim *resourceapi.ResourceClaim) (minor, other int64) {
	t.Helper()
	if claim.Status.Allocation == nil || len(claim.Status.Allocation.Devices.Results) != 1 {
		t.Fatalf("claim %s: want one allocated device, got %+v", claim.Name, claim.Status.Allocation)
	}
	minors := gpuMinors(t)
	name := claim.Status.Allocation.Devices.Results[0].Device
	minor, ok := minors[name]
	if !ok {
		t.Fatalf("allocated device %s not published with a minor: %v", name, minors)
	}
	other = -1
	for n, m := range minors {
		if n != name {
			other = m
		}
	}
	return minor, other
}
