package chart

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// writeKubeconfig writes an admin kubeconfig for cfg, for the Helm SDK's
// RESTClientGetter.
func writeKubeconfig(t *testing.T, cfg *rest.Config, namespace string) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthorityData: cfg.CAData,
		TLSServerName:            cfg.ServerName,
		InsecureSkipTLSVerify:    cfg.Insecure,
	}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		Token:                 cfg.BearerToken,
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
	}
	kc.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "admin", Namespace: namespace}
	kc.CurrentContext = "local"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// testHelmInstall does what `helm install`, `helm upgrade` and
// `helm uninstall` do, through the Helm v4 SDK's actions, against the API
// server: the chart installs as a release, an upgrade to a new libvgpu
// version rolls the DaemonSet to the new versioned path, and uninstall
// removes the cluster-scoped objects too.
func testHelmInstall(ctx context.Context, t *testing.T, cfg *rest.Config) {
	const (
		ns      = "helm-e2e"
		release = "gpu-sharing"
		driver  = "vgpu.helm-e2e.example.com"
	)
	kubeconfig := writeKubeconfig(t, cfg, ns)
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = ptrTo(kubeconfig)
	flags.Namespace = ptrTo(ns)
	acfg := action.NewConfiguration()
	if err := acfg.Init(flags, ns, "secret"); err != nil {
		t.Fatal(err)
	}
	// The in-process API server reports version v0.0.0-master (no release
	// version is linked into test binaries), which fails the chart's
	// kubeVersion check; tell Helm the Kubernetes release it is.
	caps, err := capabilities(DefaultKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	acfg.Capabilities = caps
	chrt, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]any{
		"driverName": driver,
		"defaults":   map[string]any{"computePolicy": "BestEffort"},
	}

	inst := action.NewInstall(acfg)
	inst.ReleaseName = release
	inst.Namespace = ns
	inst.CreateNamespace = true
	inst.WaitStrategy = kube.HookOnlyStrategy
	inst.Timeout = time.Minute
	if _, err := inst.RunWithContext(ctx, chrt, values); err != nil {
		t.Fatalf("helm install: %v", err)
	}
	admin := kubernetes.NewForConfigOrDie(cfg)
	ds, err := admin.AppsV1().DaemonSets(ns).Get(ctx, release+"-hami-dra-kubelet-plugin", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("DaemonSet after install: %v", err)
	}
	if got := pluginFlag(ds, "--libvgpu-path="); got != "/usr/local/hami-dra/"+chrt.Metadata.AppVersion+"/libvgpu.so" {
		t.Errorf("installed --libvgpu-path=%s", got)
	}
	for _, class := range []string{driver, "h100." + driver} {
		dc, err := admin.ResourceV1().DeviceClasses().Get(ctx, class, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("DeviceClass %s after install: %v", class, err)
		}
		if dc.Labels["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("DeviceClass %s labels %v", class, dc.Labels)
		}
	}

	// Upgrade to a new image: libvgpu goes to a new versioned directory.
	up := action.NewUpgrade(acfg)
	up.Namespace = ns
	up.WaitStrategy = kube.HookOnlyStrategy
	up.Timeout = time.Minute
	upValues := map[string]any{"driverName": driver, "image": map[string]any{"tag": "0.2.0"}}
	if _, err := up.RunWithContext(ctx, release, chrt, upValues); err != nil {
		t.Fatalf("helm upgrade: %v", err)
	}
	ds, err = admin.AppsV1().DaemonSets(ns).Get(ctx, ds.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := pluginFlag(ds, "--libvgpu-path="); got != "/usr/local/hami-dra/0.2.0/libvgpu.so" {
		t.Errorf("upgraded --libvgpu-path=%s", got)
	}
	if ds.Spec.UpdateStrategy.RollingUpdate == nil || ds.Spec.UpdateStrategy.RollingUpdate.MaxSurge.IntValue() != 1 {
		t.Errorf("update strategy %+v", ds.Spec.UpdateStrategy)
	}

	un := action.NewUninstall(acfg)
	un.WaitStrategy = kube.HookOnlyStrategy
	un.Timeout = time.Minute
	if _, err := un.Run(release); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	if _, err := admin.ResourceV1().DeviceClasses().Get(ctx, driver, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DeviceClass %s after uninstall: %v", driver, err)
	}
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, release+"-hami-dra-resourceslices", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("admission policy after uninstall: %v", err)
	}
}

// testHelmInstallPlatforms installs the chart with each platform profile's
// values file for real (`helm install -f platforms/<name>.yaml`), checks
// that what the profile sets is in the stored DaemonSet, and uninstalls it
// again; the profiles go one after the other, each in its own namespace
// and with its own driver name, so that nothing of one is left for the
// next to collide with.
func testHelmInstallPlatforms(ctx context.Context, t *testing.T, cfg *rest.Config) {
	names, err := Platforms()
	if err != nil {
		t.Fatal(err)
	}
	chrt, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	caps, err := capabilities(DefaultKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(cfg)
	for _, name := range names {
		values, err := PlatformValues(name)
		if err != nil {
			t.Fatal(err)
		}
		ns, release, driver := "platform-"+name, "hami-dra", "vgpu."+name+".example.com"
		values["driverName"] = driver
		flags := genericclioptions.NewConfigFlags(false)
		flags.KubeConfig = ptrTo(writeKubeconfig(t, cfg, ns))
		flags.Namespace = ptrTo(ns)
		acfg := action.NewConfiguration()
		if err := acfg.Init(flags, ns, "secret"); err != nil {
			t.Fatal(err)
		}
		acfg.Capabilities = caps
		inst := action.NewInstall(acfg)
		inst.ReleaseName, inst.Namespace, inst.CreateNamespace = release, ns, true
		inst.WaitStrategy, inst.Timeout = kube.HookOnlyStrategy, time.Minute
		if _, err := inst.RunWithContext(ctx, chrt, values); err != nil {
			t.Errorf("helm install -f platforms/%s.yaml: %v", name, err)
			continue
		}
		ds, err := admin.AppsV1().DaemonSets(ns).Get(ctx, release+"-kubelet-plugin", metav1.GetOptions{})
		if err != nil {
			t.Errorf("%s: DaemonSet after install: %v", name, err)
		} else if want, _ := values["nvidiaDriverRoot"].(string); want != "" && pluginFlag(ds, "--driver-root=") != want {
			t.Errorf("%s: installed --driver-root=%s, want %s", name, pluginFlag(ds, "--driver-root="), want)
		}
		if _, err := admin.ResourceV1().DeviceClasses().Get(ctx, driver, metav1.GetOptions{}); err != nil {
			t.Errorf("%s: DeviceClass after install: %v", name, err)
		}
		un := action.NewUninstall(acfg)
		un.WaitStrategy, un.Timeout = kube.HookOnlyStrategy, time.Minute
		if _, err := un.Run(release); err != nil {
			t.Errorf("helm uninstall (%s): %v", name, err)
			continue
		}
		if _, err := admin.ResourceV1().DeviceClasses().Get(ctx, driver, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s: DeviceClass after uninstall: %v", name, err)
		}
		t.Logf("%s: installed and uninstalled", name)
	}
}

func pluginFlag(ds *appsv1.DaemonSet, prefix string) string {
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, a := range c.Args {
			if strings.HasPrefix(a, prefix) {
				return strings.TrimPrefix(a, prefix)
			}
		}
	}
	return ""
}
