// Command hami-webhook is the mutating admission webhook that lets pods
// written for HAMi (nvidia.com/gpu, gpumem, gpumem-percentage, gpucores and
// HAMi's GPU selection annotations) run on hami-dra unchanged: it rewrites
// them into a claim from a ResourceClaimTemplate it manages. See
// deployments/README.md, "Migrating from HAMi".
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/hami-dra/hami-dra/internal/hamitranslate"
	"github.com/hami-dra/hami-dra/internal/version"
	"github.com/hami-dra/hami-dra/internal/webhook"
)

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

type options struct {
	listen     string
	certFile   string
	keyFile    string
	kubeconfig string
	translate  hamitranslate.Options
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

func newFlagSet(opts *options, logConfig *textlogger.Config, output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("hami-webhook", flag.ContinueOnError)
	fs.SetOutput(output)
	t := &opts.translate
	*t = hamitranslate.DefaultOptions()
	fs.StringVar(&opts.listen, "listen-address", ":8443", "HTTPS address serving /mutate (AdmissionReview) and /healthz")
	fs.StringVar(&opts.certFile, "tls-cert-file", "", "serving certificate (PEM); re-read when it changes")
	fs.StringVar(&opts.keyFile, "tls-key-file", "", "serving certificate's private key (PEM)")
	fs.StringVar(&opts.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster service account")
	fs.StringVar(&t.DeviceClassName, "device-class", t.DeviceClassName, "DeviceClass of the generated requests (the chart's default class)")
	fs.StringVar(&t.DriverName, "driver-name", t.DriverName, "DRA driver name: whose ResourceSlices give the GPU sizes, and the domain of attributes in CEL selectors")
	fs.Int64Var(&t.DefaultMemoryMiB, "default-mem", 0, "HAMi's nvidia.defaultMem: MiB of a GPU when a container gives neither gpumem nor gpumem-percentage; 0 = the whole GPU")
	fs.Int64Var(&t.DefaultCores, "default-cores", 0, "HAMi's nvidia.defaultCores: compute percent of a GPU when a container gives no gpucores; 0 reserves none")
	fs.Int64Var(&t.DefaultGPUNum, "default-gpu-num", 1, "HAMi's nvidia.defaultGPUNum: GPUs of a container that gives gpumem or gpucores without nvidia.com/gpu; 0 rejects such pods")
	resource := func(p *corev1.ResourceName, name, help string) {
		fs.Func(name, help+" (default "+string(*p)+")", func(v string) error {
			*p = corev1.ResourceName(v)
			return nil
		})
	}
	resource(&t.Resources.GPU, "resource-name", "HAMi's resourceName: number of GPUs")
	resource(&t.Resources.Memory, "resource-mem", "HAMi's resourceMem: MiB per GPU")
	resource(&t.Resources.MemoryPercentage, "resource-mem-percentage", "HAMi's resourceMemPercentage: percent of each GPU's memory")
	resource(&t.Resources.Cores, "resource-cores", "HAMi's resourceCores: percent of each GPU's compute")
	resource(&t.Resources.Priority, "resource-priority", "HAMi's resourcePriority: removed with a warning")
	logConfig.AddFlags(fs)
	return fs
}

// run is main without the process, for tests.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	var opts options
	logConfig := textlogger.NewConfig(textlogger.Output(stderr))
	fs := newFlagSet(&opts, logConfig, stderr)
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
	if err := opts.translate.Validate(); err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	if opts.certFile == "" || opts.keyFile == "" {
		fmt.Fprintln(stderr, "--tls-cert-file and --tls-key-file are required: the API server calls webhooks over HTTPS only")
		return exitUsage
	}
	logger := textlogger.NewLogger(logConfig)
	klog.SetLoggerWithOptions(logger, klog.ContextualLogger(true))
	defer klog.ClearLogger()
	ctx = klog.NewContext(ctx, logger)
	if err := serve(ctx, opts); err != nil {
		logger.Error(err, "hami-webhook failed")
		return exitError
	}
	return exitOK
}

func serve(ctx context.Context, opts options) error {
	logger := klog.FromContext(ctx)
	certs, err := webhook.NewCertLoader(opts.certFile, opts.keyFile)
	if err != nil {
		return err
	}
	var cfg *rest.Config
	if opts.kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", opts.kubeconfig)
	}
	if err != nil {
		return fmt.Errorf("API server client configuration: %w", err)
	}
	cfg.UserAgent = "hami-webhook/" + version.Version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("API server client: %w", err)
	}

	// Only the driver's slices: their memory sizes bound gpumem and turn
	// gpumem-percentage into MiB.
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.driver", opts.translate.DriverName).String()
	}))
	sliceInformer := factory.Resource().V1().ResourceSlices()
	lister := sliceInformer.Lister()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	synced := cache.WaitForCacheSync(syncCtx.Done(), sliceInformer.Informer().HasSynced)
	cancel()
	if !synced {
		return fmt.Errorf("ResourceSlices not listed within a minute (RBAC: list and watch resourceslices.resource.k8s.io)")
	}

	handler := &webhook.Handler{
		Options:   opts.translate,
		Inventory: webhook.SliceInventory{Lister: lister, Driver: opts.translate.DriverName}.Inventory,
		Templates: webhook.APITemplates{Client: client},
	}
	mux := http.NewServeMux()
	mux.Handle("/mutate", handler)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	srv := &http.Server{
		Addr:              opts.listen,
		Handler:           mux,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	ln, err := net.Listen("tcp", opts.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	logger.Info("Serving", "address", ln.Addr().String(), "version", version.Version, "deviceClass", opts.translate.DeviceClassName, "driver", opts.translate.DriverName)
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}
