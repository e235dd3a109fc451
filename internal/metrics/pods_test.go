package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func pod(ns, name string, claims []corev1.PodResourceClaim, statuses []corev1.PodResourceClaimStatus, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{ResourceClaims: claims, Containers: containers},
		Status:     corev1.PodStatus{ResourceClaimStatuses: statuses},
	}
}

func container(name string, claims ...string) corev1.Container {
	c := corev1.Container{Name: name}
	for _, cl := range claims {
		c.Resources.Claims = append(c.Resources.Claims, corev1.ResourceClaim{Name: cl})
	}
	return c
}

func TestClaimPods(t *testing.T) {
	var many []*corev1.Pod
	for _, n := range []string{"w-5", "w-1", "w-3", "w-2", "w-4", "w-0"} {
		many = append(many, pod("ns", n, []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To("shared")}}, nil, container("main", "gpu")))
	}
	pods := NewStaticPods(append(many,
		// A claim from a template: its name is in the pod's status.
		pod("ns", "train", []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To("t")}},
			[]corev1.PodResourceClaimStatus{{Name: "gpu", ResourceClaimName: ptr.To("train-gpu-x7k2")}},
			container("sidecar"), container("trainer", "gpu"), container("eval", "gpu")),
		// Same claim name in another namespace: not ours.
		pod("other", "x", []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To("train-gpu-x7k2")}}, nil, container("c", "gpu")),
	)...)
	tests := []struct {
		claim string
		want  ClaimPods
	}{
		{"train-gpu-x7k2", ClaimPods{Pods: "train", Containers: "eval,trainer"}},
		{"shared", ClaimPods{Pods: "w-0,w-1,w-2,w-3,+2", Containers: "main"}},
		{"unknown", ClaimPods{}},
	}
	for _, tc := range tests {
		if got := pods.ClaimPods("ns", tc.claim); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.claim, got, tc.want)
		}
	}
}

// TestClaimMetricLabels: every per-claim series carries the pods, their
// containers and the node, and usage is there (zero) from preparation on.
func TestClaimMetricLabels(t *testing.T) {
	src := fakeSource{{Namespace: "ns", Name: "train-gpu-x7k2", UID: "u1", GPUs: []GPUQuota{{UUID: "GPU-1", MemoryBytes: 1 << 30, Cores: 30}}}}
	pods := NewStaticPods(pod("ns", "train", []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To("train-gpu-x7k2")}}, nil, container("trainer", "gpu")))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(src, WithPods(pods), WithNode("node-1")))
	labels := `{claim="train-gpu-x7k2",containers="trainer",gpu_uuid="GPU-1",index="0",namespace="ns",node="node-1",pod="train",uid="u1"}`
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		"hami_dra_claim_memory_used_bytes" + labels + " 0",
		"hami_dra_claim_gpu_time_seconds_total" + labels + " 0",
		"hami_dra_claim_cores_limit_percent" + labels + " 30",
		"hami_dra_claim_memory_limit_bytes" + labels + " 1.073741824e+09",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, body)
		}
	}
}
