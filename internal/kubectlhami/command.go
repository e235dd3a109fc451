package kubectlhami

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Exit codes of Run.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// NewClient connects with a kubeconfig as kubectl does (KUBECONFIG, then
// ~/.kube/config, then in-cluster); tests replace it.
type NewClient func(kubeconfig, context string) (kubernetes.Interface, error)

// DefaultClient is the NewClient of the real command.
func DefaultClient(kubeconfig, kubeContext string) (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}

const usage = `kubectl hami: the GPUs of the hami-dra driver, their shares and where a share fits.

Usage:
  kubectl hami gpus   [flags]   every GPU per node: capacity, allocated, free, shares, health
  kubectl hami claims [flags]   every allocated share: claim, pods, GPU, memory and cores
  kubectl hami fit --memory 20Gi [--cores 30] [--class vgpu.hami.io] [flags]
                                which GPUs could take such a share now (the scheduler's allocator decides)

Flags:
`

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Run is the command line; it returns the exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, newClient NewClient) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		newFlags("kubectl hami", stderr, new(cmdOptions)).PrintDefaults()
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	sub := args[0]
	var o cmdOptions
	fs := newFlags("kubectl hami "+sub, stderr, &o)
	switch sub {
	case "gpus", "claims", "fit":
	default:
		fmt.Fprintf(stderr, "unknown command %q: want gpus, claims or fit (kubectl hami --help)\n", sub)
		return ExitUsage
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments %q\n", fs.Args())
		return ExitUsage
	}
	if o.output != "" && o.output != "json" && o.output != "yaml" {
		fmt.Fprintf(stderr, "-o %q: want json or yaml\n", o.output)
		return ExitUsage
	}
	if sub == "fit" && o.memory == "" && o.cores == "" {
		fmt.Fprintln(stderr, "fit needs --memory and/or --cores, e.g. kubectl hami fit --memory 20Gi --cores 30")
		return ExitUsage
	}
	if err := o.run(ctx, sub, stdout, newClient); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return ExitError
	}
	return ExitOK
}

type cmdOptions struct {
	kubeconfig, context, driver, output, namespace string
	metrics                                        multiFlag
	memory, cores, class                           string
}

func newFlags(name string, out io.Writer, o *cmdOptions) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "kubeconfig context (default: the current one)")
	fs.StringVar(&o.driver, "driver", "vgpu.hami.io", "DRA driver name of hami-dra")
	fs.StringVar(&o.output, "o", "", "output format: json or yaml (default: a table)")
	fs.StringVar(&o.namespace, "n", "", "claims: only this namespace (default: all)")
	fs.Var(&o.metrics, "metrics", "a plugin's metrics URL, e.g. http://localhost:8080/metrics after kubectl port-forward; repeat for several nodes. Adds the used memory")
	fs.StringVar(&o.memory, "memory", "", "fit: memory of the share, e.g. 20Gi")
	fs.StringVar(&o.cores, "cores", "", "fit: compute share in percent, e.g. 30")
	fs.StringVar(&o.class, "class", "vgpu.hami.io", "fit: DeviceClass of the request")
	return fs
}

func (o *cmdOptions) run(ctx context.Context, sub string, out io.Writer, newClient NewClient) error {
	client, err := newClient(o.kubeconfig, o.context)
	if err != nil {
		return err
	}
	ns := ""
	if sub == "claims" {
		ns = o.namespace
	}
	c, err := Load(ctx, client, o.driver, ns)
	if err != nil {
		return err
	}
	var usage *Usage
	if len(o.metrics) > 0 {
		if usage, err = ScrapeUsage(ctx, o.metrics); err != nil {
			return err
		}
	}
	switch sub {
	case "gpus":
		gpus := c.GPUs()
		if usage != nil {
			usage.Apply(gpus, nil)
		}
		return PrintGPUs(out, o.output, gpus, usage != nil)
	case "claims":
		claims := c.ClaimShares()
		if usage != nil {
			usage.Apply(nil, claims)
		}
		return PrintClaims(out, o.output, claims, usage != nil)
	default:
		req := Request{Class: o.class, Memory: o.memory, Cores: o.cores}
		results, err := c.Fit(ctx, req)
		if err != nil {
			return err
		}
		return PrintFit(out, o.output, req, results)
	}
}
