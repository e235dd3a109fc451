package chart

import (
	"context"
	"fmt"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// PluginPodLabel marks the stand-in pods PluginIdentity creates, so node
// agents can leave them alone.
const PluginPodLabel = "e2e.hami-dra.io/plugin-identity"

// PluginIdentity gives a kubelet plugin that runs in-process the identity the
// chart's DaemonSet pod has on nodeName: it creates a Pod bound to nodeName
// that runs as the chart's ServiceAccount (from objs, a rendering of the
// chart) and returns a client configuration that authenticates with a token
// bound to that Pod. The API server puts the node's name into that token, and
// the chart's admission policy lets it write only that node's
// ResourceSlices.
//
// The chart's RBAC objects (SelectKinds(objs, RBACKinds...)) must already be
// applied, and the Node must exist. The Pod is named
// "hami-dra-kubelet-plugin-<node>" in the chart's namespace, carries
// PluginPodLabel and has no containers anyone should run; delete it (or the
// namespace) to revoke the token. cfg is an admin configuration; only its
// server address and CA are kept.
func PluginIdentity(ctx context.Context, cfg *rest.Config, objs []*unstructured.Unstructured, nodeName string) (*rest.Config, error) {
	ns, sa, err := ServiceAccount(objs)
	if err != nil {
		return nil, err
	}
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := admin.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	name := "hami-dra-kubelet-plugin-" + nodeName
	if len(name) > 253 {
		name = name[:253]
	}
	pod, err := admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		pod, err = admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name:   name,
				Labels: map[string]string{PluginPodLabel: "true"},
			},
			Spec: corev1.PodSpec{
				ServiceAccountName: sa,
				NodeName:           nodeName,
				Containers:         []corev1.Container{{Name: "plugin", Image: "hami-dra.invalid/in-process-plugin"}},
				Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("plugin pod on %s: %w", nodeName, err)
	}
	if pod.Spec.NodeName != nodeName || pod.Spec.ServiceAccountName != sa {
		return nil, fmt.Errorf("pod %s/%s exists but is bound to node %q as %q", ns, name, pod.Spec.NodeName, pod.Spec.ServiceAccountName)
	}
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			// The kubelet refreshes a pod's token; tests run far shorter.
			ExpirationSeconds: ptrTo[int64](24 * 3600),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for %s/%s bound to pod %s: %w", ns, sa, pod.Name, err)
	}
	out := rest.AnonymousClientConfig(cfg)
	out.BearerToken = tr.Status.Token
	out.UserAgent = "hami-dra-kubelet-plugin/" + nodeName
	return out, nil
}

func ptrTo[T any](v T) *T { return &v }

// PluginArgs returns the command line the chart's DaemonSet gives the
// kubelet plugin container (image entrypoint excluded), with the
// downward-API references $(VAR) replaced from env as the kubelet would
// (NODE_NAME, POD_UID, ...). A test can run the plugin binary with exactly
// these flags, overriding host paths by appending its own.
func PluginArgs(objs []*unstructured.Unstructured, env map[string]string) ([]string, error) {
	for _, ds := range SelectKinds(objs, KindDaemonSet) {
		containers, _, err := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
		if err != nil {
			return nil, err
		}
		for _, c := range containers {
			cm, ok := c.(map[string]any)
			if !ok || cm["name"] != "plugin" {
				continue
			}
			raw, _, err := unstructured.NestedStringSlice(cm, "args")
			if err != nil {
				return nil, err
			}
			args := make([]string, 0, len(raw))
			for _, a := range raw {
				for k, v := range env {
					a = strings.ReplaceAll(a, "$("+k+")", v)
				}
				args = append(args, a)
			}
			return args, nil
		}
	}
	return nil, fmt.Errorf("no DaemonSet with a plugin container in the rendering")
}
