package cluster

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/google/uuid"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	restclient "k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	apiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"k8s.io/kubernetes/test/utils/ktesting"
)

// disabledAdmission lists the admission plugins the local cluster turns off.
//   - TaintNodesByCondition: it taints every new Node "not-ready", and only
//     the node lifecycle controller (not run here) would lift that taint, so
//     every pod would stay Pending on hand-registered Nodes.
//   - ServiceAccount: it rejects pods whose service account does not exist,
//     and the controller that creates "default" in every namespace is not run.
//     Pods here never talk to the API server, so nothing is lost.
var disabledAdmission = []string{"TaintNodesByCondition", "ServiceAccount"}

type apiServer struct {
	config   *restclient.Config
	tearDown func()
}

// startAPIServer runs a kube-apiserver in this process with the given etcd.
// Feature gates stay at the defaults of 1.37, or of the release extra's
// --emulated-version names: no --feature-gates flag is passed.
func startAPIServer(ctx context.Context, tb *componentTB, etcdURL string, extra ...string) (srv *apiServer, err error) {
	logger := klog.FromContext(ctx).WithName("kube-apiserver")
	// StartTestServer reports some failures through tb.Fatalf (a panic here).
	defer func() {
		if r := recover(); r != nil {
			fe, ok := r.(fatalError)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("start kube-apiserver: %w", fe)
		}
	}()

	storage := storagebackend.NewDefaultConfig(path.Join("/", uuid.New().String(), "registry"), nil)
	storage.Transport.ServerList = []string{etcdURL}

	flags := []string{
		"--disable-admission-plugins=" + strings.Join(disabledAdmission, ","),
		// RBAC, so that the plugin, which runs with the chart's service
		// account token, gets exactly the permissions the chart grants.
		"--authorization-mode=RBAC",
		// `kubectl logs` is proxied to the node agents' kubelet-like log
		// endpoint on 127.0.0.1; it serves a self-signed certificate.
		"--kubelet-preferred-address-types=InternalIP",
	}
	flags = append(flags, extra...)
	opts := apiservertesting.NewDefaultTestServerOptions()
	// The invariant checks scrape metrics at teardown and fail on
	// conditions that a long-lived demo cluster can legitimately reach.
	opts.DisableInvariantChecks = true

	tCtx := ktesting.InitCtx(klog.NewContext(ctx, logger), tb)
	result, err := apiservertesting.StartTestServer(tCtx, opts, flags, storage)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	logger.V(1).Info("kube-apiserver ready", "host", result.ClientConfig.Host)
	return &apiServer{config: result.ClientConfig, tearDown: result.TearDownFn}, nil
}
