// Package nodeagent plays the kubelet's part for one simulated node: it
// registers the Node and keeps it Ready, runs the kubelet's own DRA manager
// (k8s.io/kubernetes/pkg/kubelet/cm/dra) and plugin watcher, prepares the
// claims of the pods bound to the node through the real kubelet plugin,
// resolves the returned CDI devices with the CDI library, runs the
// containers as local processes (podruntime), reports pod status and events
// back, serves logs, and unprepares when pods go.
package nodeagent

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	pluginwatcherapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	kubeletconfig "k8s.io/kubernetes/pkg/kubelet/config"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"

	"github.com/hami-dra/hami-dra/e2e/podruntime"
)

// Config describes one simulated node.
type Config struct {
	NodeName string
	// Labels are added to the Node's standard labels.
	Labels map[string]string
	Client kubernetes.Interface
	// RegistrarDir is watched for plugin registration sockets, like the
	// kubelet's /var/lib/kubelet/plugins_registry.
	RegistrarDir string
	// StateDir holds the DRA manager's checkpoint, like /var/lib/kubelet.
	StateDir string
	// CDIDirs are where the CDI library looks for specs (the plugin's
	// --cdi-root), like a container runtime's /var/run/cdi.
	CDIDirs []string
	// LogDir receives the containers' output, like /var/log/pods.
	LogDir string
	// Runtime runs the containers. It is shared across agent restarts.
	Runtime *podruntime.Runtime
	// ExternalPodLabel marks pods whose process the harness runs itself
	// (the stand-ins for the plugin's DaemonSet pods): they are reported
	// Running and nothing is started for them.
	ExternalPodLabel string
}

// Agent is a running node agent.
type Agent struct {
	cfg     Config
	logger  klog.Logger
	nodeUID types.UID

	cancel      context.CancelFunc
	wg          sync.WaitGroup
	stopPlugins chan struct{}

	draManager  *dra.Manager
	podInformer cache.SharedIndexInformer
	factory     informers.SharedInformerFactory
	queue       workqueue.TypedRateLimitingInterface[string]
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	logServer   *logServer

	mu      sync.Mutex
	pods    map[string]*podState // by namespace/name
	stopped bool
}

// Start registers the node and starts serving it.
func Start(ctx context.Context, cfg Config) (_ *Agent, err error) {
	logger := klog.FromContext(ctx).WithName("nodeagent").WithValues("node", cfg.NodeName)
	ctx = klog.NewContext(ctx, logger)
	for _, dir := range []string{cfg.RegistrarDir, cfg.StateDir, cfg.LogDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("node agent dir: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	a := &Agent{cfg: cfg, logger: logger, cancel: cancel, stopPlugins: make(chan struct{}), pods: map[string]*podState{}}
	defer func() {
		if err != nil {
			a.Stop()
		}
	}()

	a.logServer, err = startLogServer(ctx, a)
	if err != nil {
		return nil, err
	}
	if err := a.registerNode(ctx); err != nil {
		return nil, err
	}

	a.broadcaster = record.NewBroadcaster(record.WithContext(ctx))
	a.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cfg.Client.CoreV1().Events("")})
	a.recorder = a.broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kubelet", Host: cfg.NodeName})

	// Only the pods bound to this node, as the kubelet watches them.
	a.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		}))
	a.podInformer = a.factory.Core().V1().Pods().Informer()
	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 10*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "nodeagent-" + cfg.NodeName})
	if _, err := a.podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    a.enqueue,
		UpdateFunc: func(_, obj any) { a.enqueue(obj) },
		DeleteFunc: a.enqueue,
	}); err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	cfg.Runtime.OnExit(a.containerExited)

	// The DRA manager and the plugin watcher, wired as the kubelet wires
	// them (pkg/kubelet/kubelet.go and cm/container_manager_linux.go):
	// dra.NewManager -> Start -> GetWatcherHandler registered with the
	// plugin manager under the "DRAPlugin" type.
	a.draManager, err = dra.NewManager(logger, cfg.Client, cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("DRA manager: %w", err)
	}
	// Until the pod informer has synced, "no active pods" would make the
	// manager's reconcile loop unprepare every checkpointed claim.
	sourcesReady := kubeletconfig.NewSourcesReady(func(sets.Set[string]) bool { return a.podInformer.HasSynced() })
	if err := a.draManager.Start(ctx, a.activePods, a.getNode, sourcesReady); err != nil {
		return nil, fmt.Errorf("start DRA manager: %w", err)
	}
	plugins := pluginmanager.NewPluginManager(cfg.RegistrarDir, a.recorder)
	plugins.AddHandler(pluginwatcherapi.DRAPlugin, a.draManager.GetWatcherHandler())
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		plugins.Run(ctx, sourcesReady, a.stopPlugins)
	}()

	a.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), a.podInformer.HasSynced) {
		return nil, fmt.Errorf("pod informer of node %s did not sync", cfg.NodeName)
	}
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		a.heartbeatLoop(ctx)
	}()
	go func() {
		defer a.wg.Done()
		a.runWorkers(ctx, 4)
	}()
	logger.Info("Node agent started", "logPort", a.logServer.port, "runtime", cfg.Runtime.Mode())
	return a, nil
}

// Stop stops the agent but not the containers, which belong to the runtime:
// like a kubelet restart, the pods keep running.
func (a *Agent) Stop() {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return
	}
	a.stopped = true
	a.mu.Unlock()
	a.cancel()
	close(a.stopPlugins)
	if a.queue != nil {
		a.queue.ShutDown()
	}
	if a.factory != nil {
		a.factory.Shutdown()
	}
	if a.draManager != nil {
		a.draManager.Stop()
	}
	a.wg.Wait()
	if a.broadcaster != nil {
		a.broadcaster.Shutdown()
	}
	if a.logServer != nil {
		a.logServer.stop()
	}
	a.logger.Info("Node agent stopped")
}

// NodeName returns the node's name.
func (a *Agent) NodeName() string { return a.cfg.NodeName }

func (a *Agent) getNode(ctx context.Context) (*v1.Node, error) {
	return a.cfg.Client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
}

// activePods are the pods the DRA manager must keep prepared: every pod on
// this node that has not finished. A pod being deleted stays active until
// its containers have stopped and it is gone, as in the kubelet.
func (a *Agent) activePods() []*v1.Pod {
	var pods []*v1.Pod
	for _, obj := range a.podInformer.GetStore().List() {
		pod := obj.(*v1.Pod)
		if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			continue
		}
		pods = append(pods, pod)
	}
	return pods
}

func (a *Agent) enqueue(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	a.queue.Add(key)
}

func (a *Agent) containerExited(c *podruntime.Container) {
	a.mu.Lock()
	stopped := a.stopped
	a.mu.Unlock()
	if stopped {
		return
	}
	if key := c.Spec.Annotations[annotationPodKey]; key != "" {
		a.queue.Add(key)
	}
}

func (a *Agent) runWorkers(ctx context.Context, n int) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for a.processNext(ctx) {
			}
		})
	}
	wg.Wait()
}

func (a *Agent) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	requeue, err := a.syncPod(klog.NewContext(ctx, klog.LoggerWithValues(a.logger, "pod", key)), key)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			a.logger.V(1).Info("Pod sync failed, will retry", "pod", key, "err", err)
		}
		a.queue.AddRateLimited(key)
	case requeue > 0:
		a.queue.Forget(key)
		a.queue.AddAfter(key, requeue)
	default:
		a.queue.Forget(key)
	}
	return true
}
