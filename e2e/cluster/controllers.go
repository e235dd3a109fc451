package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/configz"
	"k8s.io/klog/v2"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmconfig "k8s.io/kubernetes/cmd/kube-controller-manager/app/config"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

// controllers is the real kube-controller-manager, run in this process with
// its default set of controllers (--controllers=*): namespaces, Jobs,
// CronJobs, StatefulSets, DaemonSets, Deployments, garbage collection,
// service accounts, node lifecycle, pod GC, resourceclaim and the rest, as
// on a real cluster. A subset is not enough: a namespace deletion hangs
// without the namespace controller and a Job never gets a pod without the
// job controller.
//
// Its test server (app/testing.StartTestServer) wants a *testing.T, which
// the demo does not have, so this does what it does with the manager's own
// options, Config and Run, as startScheduler does for the scheduler.
type controllers struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, valid once done is closed

	stopOnce sync.Once
}

// startControllers runs kube-controller-manager against the apiserver that
// kubeconfig names (an admin kubeconfig: the manager then uses its own
// credentials for every controller, --use-service-account-credentials=false),
// and returns once its controllers work: the service account controller has
// created the "default" ServiceAccount of the default namespace.
func startControllers(ctx context.Context, kubeconfig string, extra ...string) (*controllers, error) {
	logger := klog.FromContext(ctx).WithName("kube-controller-manager")
	ctx, cancel := context.WithCancel(klog.NewContext(ctx, logger))
	c := &controllers{cancel: cancel, done: make(chan struct{})}
	config, err := controllerManagerConfig(ctx, kubeconfig, extra...)
	if err != nil {
		cancel()
		return nil, err
	}
	go func() {
		defer close(c.done)
		// configz is process-wide; a manager started again in the same
		// process (a second cluster in one test binary) must find it free.
		defer configz.Delete(kcmapp.ConfigzName)
		c.err = kcmapp.Run(ctx, config.Complete())
	}()

	client, err := kubernetes.NewForConfig(config.Kubeconfig)
	if err == nil {
		err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			select {
			case <-c.done:
				return false, fmt.Errorf("kube-controller-manager exited: %w", c.runErr())
			default:
			}
			_, err := client.CoreV1().ServiceAccounts(corev1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			return err == nil, nil
		})
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("kube-controller-manager not working (no default ServiceAccount): %w", err)
	}
	logger.V(1).Info("kube-controller-manager started", "controllers", "*")
	return c, nil
}

// controllerManagerConfig is what kube-controller-manager builds from its
// command line.
func controllerManagerConfig(ctx context.Context, kubeconfig string, extra ...string) (*kcmconfig.Config, error) {
	opts, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, fmt.Errorf("kube-controller-manager options: %w", err)
	}
	// A registry of its own, with a copy of the process-wide feature gates
	// (1.37 defaults): the default one is shared with the apiserver and the
	// scheduler running in the same process.
	registry := basecompatibility.NewComponentGlobalsRegistry()
	if err := registry.Register(basecompatibility.DefaultKubeComponent,
		utilcompatibility.DefaultKubeEffectiveVersionForTest(),
		utilfeature.DefaultMutableFeatureGate.DeepCopy()); err != nil {
		return nil, fmt.Errorf("kube-controller-manager: register component globals: %w", err)
	}
	opts.ComponentGlobalsRegistry = registry

	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	namedFlags := opts.Flags(all, disabled, aliases)
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range namedFlags.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(append([]string{
		"--kubeconfig=" + kubeconfig,
		// Every controller that a kube-controller-manager runs by default.
		"--controllers=*",
		// One manager, no need to wait for a lease.
		"--leader-elect=false",
		// Nothing scrapes its health or metrics endpoint.
		"--secure-port=0",
		// Start them all at once; the default jitter only delays tests.
		"--controller-start-interval=0s",
	}, extra...)); err != nil {
		return nil, fmt.Errorf("kube-controller-manager flags: %w", err)
	}
	opts.ParsedFlags = &namedFlags
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("kube-controller-manager: apply component globals: %w", err)
	}
	config, err := opts.Config(ctx, all, disabled, aliases)
	if err != nil {
		return nil, fmt.Errorf("kube-controller-manager config: %w", err)
	}
	return config, nil
}

func (c *controllers) runErr() error {
	if c.err == nil {
		return errors.New("no error reported")
	}
	return c.err
}

// stop cancels the manager and waits for its controllers and informers: an
// informer still watching when the apiserver shuts down holds it for 60 s.
func (c *controllers) stop() {
	c.stopOnce.Do(func() {
		c.cancel()
		<-c.done
	})
}
