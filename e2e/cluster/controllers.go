package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/discovery"
	cacheddiscovery "k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/deployment"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
	"k8s.io/kubernetes/pkg/controller/replicaset"
	"k8s.io/kubernetes/pkg/controller/resourceclaim"
)

// controllers are the kube-controller-manager controllers the DRA flows need,
// each started with the constructor kube-controller-manager itself uses:
//   - resourceclaim: creates claims from ResourceClaimTemplates and releases
//     (deallocates) them when their pods are gone;
//   - deployment and replicaset: the tests' workloads are Deployments;
//   - garbagecollector: deleting a Deployment deletes its ReplicaSets and
//     pods (and the pods' generated claims), as users expect in the demo.
//
// Namespace, service account, node lifecycle and the other controllers are
// not needed by anything here and are left out to keep startup fast.
type controllers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startControllers(ctx context.Context, config *restclient.Config) (*controllers, error) {
	logger := klog.FromContext(ctx).WithName("kube-controller-manager")
	ctx, cancel := context.WithCancel(klog.NewContext(ctx, logger))
	c := &controllers{cancel: cancel}
	ok := false
	defer func() {
		if !ok {
			c.stop()
		}
	}()

	config = restclient.CopyConfig(config)
	config.UserAgent = "kube-controller-manager"
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("controller client: %w", err)
	}
	metadataClient, err := metadata.NewForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("metadata client: %w", err)
	}
	discoveryClient, err := discovery.NewDiscoveryClientForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	metadataFactory := metadatainformer.NewSharedInformerFactory(metadataClient, 0)

	claimController, err := resourceclaim.NewController(
		klog.LoggerWithName(logger, "resourceclaim-controller"),
		client,
		factory.Core().V1().Pods(),
		factory.Scheduling().V1beta1().PodGroups(),
		factory.Resource().V1().ResourceClaims(),
		factory.Resource().V1().ResourceClaimTemplates())
	if err != nil {
		return nil, fmt.Errorf("resourceclaim controller: %w", err)
	}
	deploymentController, err := deployment.NewDeploymentController(
		klog.NewContext(ctx, klog.LoggerWithName(logger, "deployment-controller")),
		factory.Apps().V1().Deployments(),
		factory.Apps().V1().ReplicaSets(),
		factory.Core().V1().Pods(),
		client)
	if err != nil {
		return nil, fmt.Errorf("deployment controller: %w", err)
	}
	replicaSetController := replicaset.NewReplicaSetController(
		klog.NewContext(ctx, klog.LoggerWithName(logger, "replicaset-controller")),
		factory.Apps().V1().ReplicaSets(),
		factory.Core().V1().Pods(),
		client,
		replicaset.BurstReplicas)

	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cacheddiscovery.NewMemCacheClient(discoveryClient))
	informersStarted := make(chan struct{})
	gcCtx := klog.NewContext(ctx, klog.LoggerWithName(logger, "garbage-collector"))
	gc, err := garbagecollector.NewGarbageCollector(gcCtx, client, metadataClient, mapper,
		garbagecollector.DefaultIgnoredResources(),
		informerfactory.NewInformerFactory(factory, metadataFactory),
		informersStarted)
	if err != nil {
		return nil, fmt.Errorf("garbage collector: %w", err)
	}

	run := func(f func()) {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			f()
		}()
	}
	run(func() { claimController.Run(ctx, 5) })
	run(func() { deploymentController.Run(ctx, 2) })
	run(func() { replicaSetController.Run(ctx, 2) })
	run(func() { gc.Run(gcCtx, 2, 30*time.Second) })
	run(func() { gc.Sync(gcCtx, discoveryClient, 30*time.Second) })

	factory.Start(ctx.Done())
	metadataFactory.Start(ctx.Done())
	close(informersStarted)
	run(func() {
		<-ctx.Done()
		factory.Shutdown()
		metadataFactory.Shutdown()
	})
	ok = true
	logger.V(1).Info("controllers started")
	return c, nil
}

// stop cancels the controllers and their informers and waits for them: an
// informer still watching when the apiserver shuts down holds it for 60 s.
func (c *controllers) stop() {
	c.cancel()
	c.wg.Wait()
}
