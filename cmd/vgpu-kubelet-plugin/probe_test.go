package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"
)

// probeTarget is a DRA plugin served by the same kubeletplugin helper as the
// real driver. Its prepare blocks while hang is open, like a plugin stuck on
// a lock.
type probeTarget struct {
	hang chan struct{}
}

func (p *probeTarget) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	if p.hang != nil {
		select {
		case <-p.hang:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return map[types.UID]kubeletplugin.PrepareResult{}, nil
}

func (p *probeTarget) UnprepareResourceClaims(context.Context, []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	return map[types.UID]error{}, nil
}

func (p *probeTarget) HandleError(context.Context, error, string) {}

func (p *probeTarget) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

// startTarget starts the helper's registration and DRA servers in short
// directories (unix socket paths are limited to 108 bytes).
func startTarget(t *testing.T, driverName, podUID string, target *probeTarget) (probeOptions, *kubeletplugin.Helper) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	root, err := os.MkdirTemp("/tmp", "probe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	opts := probeOptions{
		driverName:    driverName,
		registrarDir:  filepath.Join(root, "r"),
		pluginDataDir: filepath.Join(root, "p"),
		podUID:        podUID,
		timeout:       2 * time.Second,
	}
	for _, d := range []string{opts.registrarDir, opts.pluginDataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	helperOpts := []kubeletplugin.Option{
		kubeletplugin.DriverName(driverName),
		kubeletplugin.NodeName("n1"),
		kubeletplugin.KubeClient(fake.NewClientset()),
		kubeletplugin.RegistrarDirectoryPath(opts.registrarDir),
		kubeletplugin.PluginDataDirectoryPath(opts.pluginDataDir),
	}
	if podUID != "" {
		helperOpts = append(helperOpts, kubeletplugin.RollingUpdate(types.UID(podUID)))
	}
	helper, err := kubeletplugin.Start(ctx, target, helperOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(helper.Stop)
	return opts, helper
}

func probeArgs(opts probeOptions) []string {
	args := []string{"probe", "--driver-name=" + opts.driverName, "--registrar-dir=" + opts.registrarDir,
		"--plugin-data-dir=" + opts.pluginDataDir, "--timeout=" + opts.timeout.String()}
	if opts.podUID != "" {
		args = append(args, "--pod-uid="+opts.podUID)
	}
	return args
}

func runProbe(t *testing.T, opts probeOptions) (int, string) {
	t.Helper()
	var out, errOut strings.Builder
	code := run(context.Background(), probeArgs(opts), &out, &errOut)
	return code, out.String() + errOut.String()
}

func TestProbe(t *testing.T) {
	const driverName = "vgpu.hami.io"
	const uid = "2d6f0c7e-1111-4a5b-9c8d-0123456789ab"

	t.Run("healthy plugin", func(t *testing.T) {
		opts, _ := startTarget(t, driverName, "", &probeTarget{})
		if code, out := runProbe(t, opts); code != exitOK || !strings.Contains(out, "dra.sock answers") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("healthy plugin with rolling updates", func(t *testing.T) {
		opts, _ := startTarget(t, driverName, uid, &probeTarget{})
		if code, out := runProbe(t, opts); code != exitOK {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		// Another instance's UID names other sockets: not this plugin.
		other := opts
		other.podUID = "99999999-1111-4a5b-9c8d-0123456789ab"
		if code, out := runProbe(t, other); code != exitError || !strings.Contains(out, "no such file") {
			t.Fatalf("probe of another instance: exit %d:\n%s", code, out)
		}
	})
	t.Run("other driver name", func(t *testing.T) {
		opts, _ := startTarget(t, driverName, "", &probeTarget{})
		// The helper names the socket after the driver, so a probe for
		// another driver finds no socket.
		opts.driverName = "gpu.example.com"
		if code, out := runProbe(t, opts); code != exitError || !strings.Contains(out, "gpu.example.com-reg.sock") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("stopped plugin", func(t *testing.T) {
		opts, helper := startTarget(t, driverName, "", &probeTarget{})
		helper.Stop()
		code, out := runProbe(t, opts)
		if code != exitError || !strings.Contains(out, "registration service at") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		t.Log(out)
	})
	t.Run("DRA socket deleted", func(t *testing.T) {
		opts, _ := startTarget(t, driverName, "", &probeTarget{})
		if err := os.Remove(filepath.Join(opts.pluginDataDir, "dra.sock")); err != nil {
			t.Fatal(err)
		}
		code, out := runProbe(t, opts)
		if code != exitError || !strings.Contains(out, "DRA service at") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("hung DRA service", func(t *testing.T) {
		hang := make(chan struct{})
		defer close(hang)
		opts, _ := startTarget(t, driverName, "", &probeTarget{hang: hang})
		opts.timeout = 500 * time.Millisecond
		start := time.Now()
		code, out := runProbe(t, opts)
		if code != exitError || !strings.Contains(out, "NodePrepareResources") || !strings.Contains(out, "DeadlineExceeded") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("probe took %v with a 500ms timeout", took)
		}
	})
	t.Run("socket that is not gRPC", func(t *testing.T) {
		root, err := os.MkdirTemp("/tmp", "probe-")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = os.RemoveAll(root) }()
		opts := probeOptions{driverName: driverName, registrarDir: root, pluginDataDir: root, timeout: 500 * time.Millisecond}
		// A listener nobody serves: the leftover of a dead process whose
		// socket file some other process still holds open.
		l, err := net.Listen("unix", filepath.Join(root, driverName+"-reg.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = l.Close() }()
		if code, out := runProbe(t, opts); code != exitError || !strings.Contains(out, "GetInfo") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("bad flag", func(t *testing.T) {
		var out strings.Builder
		if code := run(context.Background(), []string{"probe", "--bogus"}, &out, &out); code != exitUsage {
			t.Fatalf("exit %d", code)
		}
	})
}
