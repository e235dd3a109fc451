package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/hami-dra/hami-dra/internal/discovery"
	"github.com/hami-dra/hami-dra/internal/inventory"
)

const (
	testDriver = "vgpu.hami.io"
	testNode   = "node-a"
	gib        = int64(1) << 30
)

// Three simulated 16 GiB GPUs whose PCI order (c, b, a) differs from
// their name and NVML index order, so ordering bugs show.
var testGPUs = []discovery.GPU{
	{UUID: "GPU-aaaaaaaa-0000-0000-0000-000000000000", Index: 0, Minor: 0, MemoryBytes: uint64(16 * gib), PCIBusID: "0000:81:00.0", NUMANode: -1},
	{UUID: "GPU-bbbbbbbb-0000-0000-0000-000000000000", Index: 1, Minor: 1, MemoryBytes: uint64(16 * gib), PCIBusID: "0000:41:00.0", NUMANode: -1},
	{UUID: "GPU-cccccccc-0000-0000-0000-000000000000", Index: 2, Minor: 2, MemoryBytes: uint64(16 * gib), PCIBusID: "0000:01:00.0", NUMANode: -1},
}

func devName(i int) string { return inventory.DeviceName(testGPUs[i]) }

// env is a test node: directories, a fake API server and the plugin
// served on real sockets.
type env struct {
	t      *testing.T
	root   string
	cfg    Config
	client *fake.Clientset
	drv    *Driver
	conn   *grpc.ClientConn
	dra    drapb.DRAPluginClient
}

func newEnv(t testing.TB, claims ...*resourceapi.ResourceClaim) *env {
	root, err := os.MkdirTemp("/tmp", "hd") // sockets need short paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	return newEnvAt(t, root, claims...)
}

func newEnvAt(t testing.TB, root string, claims ...*resourceapi.ResourceClaim) *env {
	return newEnvConfigured(t, root, nil, claims...)
}

// newEnvConfigured is newEnvAt with configure applied to the driver's
// configuration before it starts.
func newEnvConfigured(t testing.TB, root string, configure func(*Config), claims ...*resourceapi.ResourceClaim) *env {
	for _, d := range []string{"p", "r", "cdi", "toolkit-cdi", "state", "dev", "lib/v1"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(root, "lib/v1/libvgpu.so"), "ELF")
	mustWrite(t, filepath.Join(root, "boot_id"), "boot-1\n")
	// The NVIDIA Container Toolkit's per-GPU spec, which the plugin composes
	// with (ComposeNvidiaCDI) and checks for at prepare.
	toolkit := `{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[`
	for i, g := range testGPUs {
		if i > 0 {
			toolkit += ","
		}
		toolkit += `{"name":"` + g.UUID + `","containerEdits":{"env":["TOOLKIT_GPU=` + g.UUID + `"]}}`
	}
	mustWrite(t, filepath.Join(root, "toolkit-cdi", "nvidia.json"), toolkit+"]}")
	for _, n := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1", "nvidia2"} {
		p := filepath.Join(root, "dev", n)
		if _, err := os.Stat(p); err != nil {
			// A char device like /dev/null (1:3); a regular file when mknod is not allowed.
			if syscall.Mknod(p, syscall.S_IFCHR|0o666, 1<<8|3) != nil {
				mustWrite(t, p, "")
			}
		}
	}
	objs := make([]runtime.Object, 0, len(claims))
	for _, c := range claims {
		objs = append(objs, c)
	}
	e := &env{root: root, client: fake.NewClientset(objs...)}
	e.cfg = Config{
		DriverName: testDriver, NodeName: testNode, KubeClient: e.client,
		PluginDataDir: filepath.Join(root, "p"), RegistrarDir: filepath.Join(root, "r"),
		CDIRoot: filepath.Join(root, "cdi"), StateDir: filepath.Join(root, "state"),
		LibvgpuHostPath: filepath.Join(root, "lib/v1/libvgpu.so"),
		DevRoot:         root, ComposeNvidiaCDI: true,
		BootIDPath: filepath.Join(root, "boot_id"), CleanupInterval: -1,
		NvidiaCDISpecDirs: []string{filepath.Join(root, "toolkit-cdi")},
	}
	if configure != nil {
		configure(&e.cfg)
	}
	if tt, ok := t.(*testing.T); ok {
		e.t = tt
	}
	e.start(t)
	return e
}

func mustWrite(t testing.TB, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (e *env) start(t testing.TB) {
	t.Helper()
	ctx := klog.NewContext(context.Background(), klog.Background())
	drv, err := Start(ctx, e.cfg, testGPUs)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	e.drv = drv
	// Register the way the kubelet does.
	regSock := testDriver + "-reg.sock"
	if e.cfg.RollingUpdateUID != "" {
		regSock = kubeletplugin.RollingUpdateRegistrarSocketFile(e.cfg.RegistrarDir, testDriver, e.cfg.RollingUpdateUID)
	}
	reg, err := grpc.NewClient("unix://"+filepath.Join(e.cfg.RegistrarDir, regSock), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	rc := registerapi.NewRegistrationClient(reg)
	info, err := rc.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if !drv.Registered() {
		t.Fatal("driver does not report registration")
	}
	conn, err := grpc.NewClient("unix://"+info.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.conn, e.dra = conn, drapb.NewDRAPluginClient(conn)
	t.Cleanup(e.stop)
}

func (e *env) stop() {
	if e.conn != nil {
		e.conn.Close()
		e.conn = nil
	}
	if e.drv != nil {
		e.drv.Stop()
		e.drv = nil
	}
}

func (e *env) restart(t testing.TB) {
	e.stop()
	e.start(t)
}

func claimRef(c *resourceapi.ResourceClaim) *drapb.Claim {
	return &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}
}

func (e *env) prepare(t testing.TB, claims ...*resourceapi.ResourceClaim) map[string]*drapb.NodePrepareResourceResponse {
	t.Helper()
	req := &drapb.NodePrepareResourcesRequest{}
	for _, c := range claims {
		req.Claims = append(req.Claims, claimRef(c))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	resp, err := e.dra.NodePrepareResources(ctx, req)
	if err != nil {
		t.Fatalf("NodePrepareResources: %v", err)
	}
	return resp.Claims
}

func (e *env) ctx() context.Context {
	return klog.NewContext(context.Background(), klog.Background())
}

func unprepareRequest(claims ...*resourceapi.ResourceClaim) *drapb.NodeUnprepareResourcesRequest {
	req := &drapb.NodeUnprepareResourcesRequest{}
	for _, c := range claims {
		req.Claims = append(req.Claims, claimRef(c))
	}
	return req
}

func (e *env) unprepare(t testing.TB, claims ...*resourceapi.ResourceClaim) {
	t.Helper()
	resp, err := e.dra.NodeUnprepareResources(context.Background(), unprepareRequest(claims...))
	if err != nil {
		t.Fatalf("NodeUnprepareResources: %v", err)
	}
	for uid, r := range resp.Claims {
		if r.Error != "" {
			t.Fatalf("unprepare %s: %s", uid, r.Error)
		}
	}
}

// share is one allocation result of our driver.
type share struct {
	request string
	gpu     int
	memory  string // quantity; "" leaves consumed capacity out
	cores   string
}

type opaque struct {
	source   resourceapi.AllocationConfigSource
	requests []string
	json     string
}

func newClaim(name string, shares []share, configs ...opaque) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)},
		Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{}},
	}
	for i, s := range shares {
		shareID := types.UID(fmt.Sprintf("share-%s-%d", name, i))
		r := resourceapi.DeviceRequestAllocationResult{Request: s.request, Driver: testDriver, Pool: testNode, ShareID: &shareID}
		if s.gpu >= 0 {
			r.Device = devName(s.gpu)
		} else {
			r.Device = "gpu-does-not-exist"
		}
		if s.memory != "" {
			r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{
				inventory.CapacityMemory: resource.MustParse(s.memory),
				inventory.CapacityCores:  resource.MustParse(s.cores),
			}
		}
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, r)
	}
	for _, o := range configs {
		c.Status.Allocation.Devices.Config = append(c.Status.Allocation.Devices.Config, resourceapi.DeviceAllocationConfiguration{
			Source: o.source, Requests: o.requests,
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: testDriver, Parameters: runtime.RawExtension{Raw: []byte(o.json)}}},
		})
	}
	return c
}

// specEnv reads the claim's CDI spec and returns its claim-wide env.
func (e *env) specEnv(t testing.TB, uid string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.cfg.CDIRoot, "hami.io-vgpu_"+uid+".json"))
	if err != nil {
		t.Fatalf("read spec: %v", err)
	}
	var spec struct {
		Devices []struct {
			Name           string
			ContainerEdits struct{ Env []string }
		}
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range spec.Devices {
		for _, kv := range d.ContainerEdits.Env {
			k, v, _ := strings.Cut(kv, "=")
			out[k] = v
		}
	}
	return out
}

func (e *env) reserved(t testing.TB, gpu int) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.cfg.StateDir, "gpus", testGPUs[gpu].UUID))
	if err != nil {
		return "missing"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "reserved="); ok {
			return v
		}
	}
	return "?"
}
