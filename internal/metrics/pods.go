package metrics

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// ClaimPods are the pods (and their containers) that use one claim.
type ClaimPods struct {
	// Pods and Containers are the label values: sorted, comma-separated,
	// at most maxPodsInLabel names (then "+N").
	Pods, Containers string
}

// PodLookup tells which pods on this node use a claim.
type PodLookup interface {
	ClaimPods(namespace, claim string) ClaimPods
}

// maxPodsInLabel bounds the pod label's length for claims shared by many
// pods; the series count does not depend on it (one per claim and GPU).
const maxPodsInLabel = 4

// NodePods indexes the pods of one node by the claims they use, from a pod
// informer restricted to the node (spec.nodeName), so a scrape never
// calls the API server. A claim's pods come from the pod specs: a pod's
// spec.resourceClaims entry names the claim directly (resourceClaimName) or
// through status.resourceClaimStatuses (claims made from a template); the
// containers are those whose resources.claims name that entry.
type NodePods struct {
	lister func() []*corev1.Pod
}

// NewNodePods starts a pod informer for node and waits (up to 10 s) for
// its first list; a failure only leaves the labels empty.
func NewNodePods(ctx context.Context, client kubernetes.Interface, node string) *NodePods {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	informer := factory.Core().V1().Pods()
	lister := informer.Lister()
	_ = informer.Informer()
	factory.Start(ctx.Done())
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cache.WaitForCacheSync(waitCtx.Done(), informer.Informer().HasSynced)
	return &NodePods{lister: func() []*corev1.Pod {
		pods, _ := lister.List(labels.Everything())
		return pods
	}}
}

// NewStaticPods serves a fixed list of pods (tests, the inventory command).
func NewStaticPods(pods ...*corev1.Pod) *NodePods {
	return &NodePods{lister: func() []*corev1.Pod { return pods }}
}

// ClaimPods implements PodLookup.
func (n *NodePods) ClaimPods(namespace, claim string) ClaimPods {
	var pods []string
	containers := map[string]bool{}
	for _, pod := range n.lister() {
		if pod.Namespace != namespace {
			continue
		}
		for _, pc := range pod.Spec.ResourceClaims {
			if claimName(pod, pc) != claim {
				continue
			}
			pods = append(pods, pod.Name)
			for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
				for _, rc := range c.Resources.Claims {
					if rc.Name == pc.Name {
						containers[c.Name] = true
					}
				}
			}
		}
	}
	names := make([]string, 0, len(containers))
	for c := range containers {
		names = append(names, c)
	}
	return ClaimPods{Pods: joinBounded(pods), Containers: joinBounded(names)}
}

// ClaimNames returns the names of the ResourceClaims a pod uses: those its
// spec names and those generated for it from templates (as far as its
// status tells yet).
func ClaimNames(pod *corev1.Pod) []string {
	var out []string
	for _, pc := range pod.Spec.ResourceClaims {
		if name := claimName(pod, pc); name != "" {
			out = append(out, name)
		}
	}
	return out
}

func claimName(pod *corev1.Pod, pc corev1.PodResourceClaim) string {
	if pc.ResourceClaimName != nil {
		return *pc.ResourceClaimName
	}
	for _, st := range pod.Status.ResourceClaimStatuses {
		if st.Name == pc.Name && st.ResourceClaimName != nil {
			return *st.ResourceClaimName
		}
	}
	return ""
}

func joinBounded(names []string) string {
	sort.Strings(names)
	if len(names) > maxPodsInLabel {
		return strings.Join(names[:maxPodsInLabel], ",") + ",+" + strconv.Itoa(len(names)-maxPodsInLabel)
	}
	return strings.Join(names, ",")
}
