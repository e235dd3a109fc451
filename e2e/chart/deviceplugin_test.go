package chart

import (
	"context"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// helmConfig is a Helm SDK configuration against the API server, as `helm`
// with an admin kubeconfig has it.
func helmConfig(t *testing.T, cfg *rest.Config, ns string) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = ptrTo(writeKubeconfig(t, cfg, ns))
	flags.Namespace = ptrTo(ns)
	acfg := action.NewConfiguration()
	if err := acfg.Init(flags, ns, "secret"); err != nil {
		t.Fatal(err)
	}
	caps, err := capabilities(DefaultKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	acfg.Capabilities = caps
	return acfg
}

// testHelmDevicePlugin installs the chart with `helm install` (the Helm v4
// SDK, lookups against the real API server) next to NVIDIA's device plugin:
// refused while the device plugin hands out GPUs of the plugin's nodes,
// installed once the user confirms coexistence or the device plugin is gone.
// The NOTES call out a DaemonSet without nodes.
func testHelmDevicePlugin(ctx context.Context, t *testing.T, cfg *rest.Config, admin kubernetes.Interface) {
	const ns = "dp-e2e"
	acfg := helmConfig(t, cfg, ns)
	chrt, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	install := func(release string, values map[string]any) (*releasev1.Release, error) {
		inst := action.NewInstall(acfg)
		inst.ReleaseName = release
		inst.Namespace = ns
		inst.CreateNamespace = true
		inst.WaitStrategy = kube.HookOnlyStrategy
		inst.Timeout = time.Minute
		rel, err := inst.RunWithContext(ctx, chrt, values)
		if err != nil {
			return nil, err
		}
		r, ok := rel.(*releasev1.Release)
		if !ok {
			t.Fatalf("release of type %T", rel)
		}
		return r, nil
	}
	uninstall := func(release string) {
		un := action.NewUninstall(acfg)
		un.WaitStrategy = kube.HookOnlyStrategy
		un.Timeout = time.Minute
		if _, err := un.Run(release); err != nil {
			t.Fatalf("helm uninstall %s: %v", release, err)
		}
	}
	// Each release gets its own driver name: DeviceClasses are cluster-wide.
	driver := func(n string) map[string]any {
		return map[string]any{"driverName": n + ".dp-e2e.example.com"}
	}
	refused := func(err error, want ...string) {
		t.Helper()
		if err == nil {
			t.Fatal("helm install succeeded next to the device plugin")
		}
		for _, w := range append(want, "refuses to install", "devicePlugin.enabled=false", "gke-no-default-nvidia-gpu-device-plugin=true", "nvidiaDevicePlugin.coexist=true") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("message lacks %q:\n%v", w, err)
			}
		}
	}

	// No GPU node yet: installed, and the NOTES say the DaemonSet has no node.
	rel, err := install("no-nodes", driver("a"))
	if err != nil {
		t.Fatalf("helm install without GPU nodes: %v", err)
	}
	if !strings.Contains(rel.Info.Notes, "WARNING: the plugin's DaemonSet has no node to run on") {
		t.Errorf("NOTES without GPU nodes:\n%s", rel.Info.Notes)
	}
	uninstall("no-nodes")

	node := func(name string, labels map[string]string, gpus int64) {
		n, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		setGPUs(ctx, t, admin, n, gpus)
	}
	// A GPU node (GPU Feature Discovery's label) where the device plugin
	// advertises 8 GPUs, and a node outside the plugin's selection that
	// advertises GPUs too.
	node("dp-gpu-node", map[string]string{"nvidia.com/gpu.present": "true"}, 8)
	node("dp-other-node", map[string]string{"pool": "training"}, 4)
	_, err = install("refused-node", driver("b"))
	refused(err, "node dp-gpu-node advertises nvidia.com/gpu: 8")
	if err != nil && strings.Contains(err.Error(), "dp-other-node") {
		t.Errorf("a node the plugin does not run on counted: %v", err)
	}

	// The device plugin's DaemonSet, as the GPU Operator names it, with a
	// pod to run; the node no longer advertises GPUs.
	gpuNode, err := admin.CoreV1().Nodes().Get(ctx, "dp-gpu-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setGPUs(ctx, t, admin, gpuNode, 0)
	createDevicePluginDaemonSet(ctx, t, admin, "gpu-operator", "nvidia-device-plugin-daemonset", 1)
	_, err = install("refused-daemonset", driver("b"))
	refused(err, "DaemonSet gpu-operator/nvidia-device-plugin-daemonset (1 pods)")

	// Confirmed: installed, and the NOTES count the GPU node.
	values := driver("c")
	values["nvidiaDevicePlugin"] = map[string]any{"coexist": true}
	rel, err = install("confirmed", values)
	if err != nil {
		t.Fatalf("helm install with nvidiaDevicePlugin.coexist=true: %v", err)
	}
	if !strings.Contains(rel.Info.Notes, "1 node(s) match now") || strings.Contains(rel.Info.Notes, "WARNING") {
		t.Errorf("NOTES with one GPU node:\n%s", rel.Info.Notes)
	}
	uninstall("confirmed")

	// GKE's device plugin DaemonSets exist in every cluster; with no pods
	// to run (GPU pools labelled gke-no-default-nvidia-gpu-device-plugin)
	// they do not block.
	if err := admin.AppsV1().DaemonSets("gpu-operator").Delete(ctx, "nvidia-device-plugin-daemonset", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	createDevicePluginDaemonSet(ctx, t, admin, "kube-system", "nvidia-gpu-device-plugin-small-cos", 0)
	if _, err := install("after", driver("d")); err != nil {
		t.Fatalf("helm install after the device plugin was disabled: %v", err)
	}
	uninstall("after")
}

func setGPUs(ctx context.Context, t *testing.T, admin kubernetes.Interface, n *corev1.Node, gpus int64) {
	t.Helper()
	q := *resource.NewQuantity(gpus, resource.DecimalSI)
	n.Status.Capacity = corev1.ResourceList{"nvidia.com/gpu": q, corev1.ResourcePods: resource.MustParse("110")}
	n.Status.Allocatable = n.Status.Capacity.DeepCopy()
	if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createDevicePluginDaemonSet(ctx context.Context, t *testing.T, admin kubernetes.Interface, ns, name string, desired int32) {
	t.Helper()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	labels := map[string]string{"app": name}
	ds, err := admin.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "plugin", Image: "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.AppsV1().DaemonSets(ns).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	// What the DaemonSet controller (not run here) would report.
	ds.Status.DesiredNumberScheduled = desired
	if _, err := admin.AppsV1().DaemonSets(ns).UpdateStatus(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
