package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const probeCommand = "probe"

// probeOptions locate the sockets of one plugin instance, as the chart
// starts it.
type probeOptions struct {
	driverName    string
	registrarDir  string
	pluginDataDir string
	podUID        string
	timeout       time.Duration
}

// runProbeCommand is `vgpu-kubelet-plugin probe`: the DaemonSet's liveness
// and startup probe. It does what the kubelet does with a DRA plugin, over
// the same unix sockets: GetInfo on the registration socket, then a gRPC
// call on the DRA socket that GetInfo names. Exit 0 when both answer, 1 with
// one line on stderr saying which failed. Kubernetes' own grpc probe dials
// TCP only, and an HTTP handler answers even when the sockets are gone
// (deleted from the host directory, or the servers hung).
func runProbeCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var opts probeOptions
	fs := flag.NewFlagSet("vgpu-kubelet-plugin probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&opts.driverName, "driver-name", "vgpu.hami.io", "DRA driver name, as given to the plugin")
	fs.StringVar(&opts.registrarDir, "registrar-dir", kubeletplugin.KubeletRegistryDir, "kubelet's plugin registration directory, as given to the plugin")
	fs.StringVar(&opts.pluginDataDir, "plugin-data-dir", "", "directory of the DRA socket (default /var/lib/kubelet/plugins/<driver-name>)")
	fs.StringVar(&opts.podUID, "pod-uid", "", "the plugin's --pod-uid, when it runs with rolling updates (its socket names carry it)")
	fs.DurationVar(&opts.timeout, "timeout", 4*time.Second, "limit for both calls together")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		return exitUsage
	}
	if opts.pluginDataDir == "" {
		opts.pluginDataDir = filepath.Join(kubeletplugin.KubeletPluginsDir, opts.driverName)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	endpoint, err := probe(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "hami-dra probe: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "hami-dra probe: %s registered, DRA service at %s answers\n", opts.driverName, endpoint)
	return exitOK
}

// registrationSocket is the path the plugin's helper listens on for the
// kubelet's plugin watcher (kubeletplugin.Start's naming rules).
func registrationSocket(opts probeOptions) string {
	if opts.podUID != "" {
		return filepath.Join(opts.registrarDir, kubeletplugin.RollingUpdateRegistrarSocketFile(opts.registrarDir, opts.driverName, types.UID(opts.podUID)))
	}
	return filepath.Join(opts.registrarDir, opts.driverName+"-reg.sock")
}

// draSocket is the DRA service's socket the plugin's helper creates.
func draSocket(opts probeOptions) string {
	if opts.podUID != "" {
		return filepath.Join(opts.pluginDataDir, "dra-"+opts.podUID+".sock")
	}
	return filepath.Join(opts.pluginDataDir, "dra.sock")
}

// probe returns the DRA endpoint when both services answer.
func probe(ctx context.Context, opts probeOptions) (string, error) {
	regPath := registrationSocket(opts)
	info := &registerapi.PluginInfo{}
	err := callUnix(ctx, regPath, func(conn *grpc.ClientConn) error {
		var err error
		info, err = registerapi.NewRegistrationClient(conn).GetInfo(ctx, &registerapi.InfoRequest{})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("registration service at %s: GetInfo: %w", regPath, err)
	}
	if info.Type != registerapi.DRAPlugin || info.Name != opts.driverName {
		return "", fmt.Errorf("registration service at %s is %s %q, want %s %q", regPath, info.Type, info.Name, registerapi.DRAPlugin, opts.driverName)
	}
	// The kubelet dials the endpoint GetInfo names; check that it is this
	// instance's socket, so that a stale registration of another instance
	// does not pass for ours.
	if want := draSocket(opts); info.Endpoint != want {
		return "", fmt.Errorf("registration service at %s names the DRA endpoint %q, want %q", regPath, info.Endpoint, want)
	}
	// NodePrepareResources without claims is what the kubelet's calls go
	// through (the same server, the same serialization lock) without
	// preparing anything.
	err = callUnix(ctx, info.Endpoint, func(conn *grpc.ClientConn) error {
		_, err := drapb.NewDRAPluginClient(conn).NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("DRA service at %s: NodePrepareResources: %w", info.Endpoint, err)
	}
	return info.Endpoint, nil
}

// callUnix dials a unix socket and runs call on the connection. A missing
// socket fails at once with the file's error rather than after the timeout.
func callUnix(ctx context.Context, path string, call func(*grpc.ClientConn) error) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	return call(conn)
}
