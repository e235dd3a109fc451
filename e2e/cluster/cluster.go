// Package cluster runs a Kubernetes 1.37 control plane in this process: an
// embedded etcd, the real kube-apiserver and kube-scheduler, and the
// kube-controller-manager controllers that DRA workloads need.
//
// It starts nothing per node: simulated nodes (Node objects, DRA kubelet
// plugins and the kubelet's part) live in the nodeagent and plugin packages.
package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// Cluster is a running control plane.
type Cluster struct {
	// Config is an admin (system:masters) client configuration.
	Config *restclient.Config
	Client kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig file for kubectl and
	// for out-of-process clients.
	Kubeconfig string

	dir         string
	tb          *componentTB
	etcd        *etcdServer
	apiserver   *apiServer
	scheduler   <-chan struct{}
	cancelSched context.CancelFunc
	controllers *controllers
}

// Options change the control plane from Kubernetes 1.37 with its default
// feature gates.
type Options struct {
	// EmulatedVersion, e.g. "1.34", runs every component as that release
	// (KEP-4330 compatibility versions, --emulated-version): its APIs and
	// its feature gates' defaults. Releases down to 1.34 (the binaries'
	// minor version minus 3) are possible. Empty: 1.37.
	EmulatedVersion string
}

// flags are the component flags the options add (every component takes
// them alike).
func (o Options) flags() []string {
	if o.EmulatedVersion == "" {
		return nil
	}
	return []string{"--emulated-version=kube=" + o.EmulatedVersion}
}

// Start brings up etcd, kube-apiserver, kube-scheduler and the controllers
// of Kubernetes 1.37. dir receives etcd's data, the logs and the
// kubeconfig. On error, whatever was started is stopped again.
func Start(ctx context.Context, dir string) (*Cluster, error) {
	return StartWithOptions(ctx, dir, Options{})
}

// StartWithOptions is Start with opts.
func StartWithOptions(ctx context.Context, dir string, opts Options) (_ *Cluster, err error) {
	logger := klog.FromContext(ctx)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("control plane dir: %w", err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("control plane tmp dir: %w", err)
	}
	c := &Cluster{dir: dir, tb: newComponentTB(logger.WithName("kube-apiserver"), tmp)}
	defer func() {
		if err != nil {
			c.Stop(ctx)
		}
	}()

	start := time.Now()
	c.etcd, err = startEtcd(ctx, filepath.Join(dir, "etcd"))
	if err != nil {
		return nil, err
	}
	c.apiserver, err = startAPIServer(ctx, c.tb, c.etcd.clientURL, opts.flags()...)
	if err != nil {
		return nil, err
	}
	c.Config = restclient.CopyConfig(c.apiserver.config)
	c.Client, err = kubernetes.NewForConfig(c.Config)
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := WriteKubeconfig(c.Kubeconfig, c.Config, "admin"); err != nil {
		return nil, err
	}

	schedCtx, cancel := context.WithCancel(ctx)
	c.cancelSched = cancel
	c.scheduler, err = startScheduler(schedCtx, c.Kubeconfig, opts.flags()...)
	if err != nil {
		return nil, err
	}
	c.controllers, err = startControllers(ctx, c.Kubeconfig, opts.flags()...)
	if err != nil {
		return nil, err
	}
	logger.Info("Control plane ready", "apiserver", c.Config.Host, "kubeconfig", c.Kubeconfig, "took", time.Since(start).Round(time.Millisecond))
	return c, nil
}

// Stop shuts the control plane down, clients first: the controllers' and the
// scheduler's watches are closed before the apiserver stops, since an
// apiserver with open watches waits 60 s for them to end.
func (c *Cluster) Stop(ctx context.Context) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	if c.controllers != nil {
		c.controllers.stop()
		c.controllers = nil
	}
	if c.cancelSched != nil {
		c.cancelSched()
		if c.scheduler != nil {
			<-c.scheduler
		}
		c.cancelSched = nil
	}
	if c.apiserver != nil {
		c.apiserver.tearDown()
		c.apiserver = nil
	}
	if c.tb != nil {
		c.tb.runCleanups()
	}
	if c.etcd != nil {
		c.etcd.stop()
		c.etcd = nil
	}
	logger.Info("Control plane stopped", "took", time.Since(start).Round(time.Millisecond))
}
