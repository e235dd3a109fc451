package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/internal/audit"
)

func TestAuditPodIndexAndEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "train", Namespace: "ml", UID: "0b7c4d2e-1f3a-4b5c-8d6e-7f8091a2b3c4"},
		Spec: corev1.PodSpec{NodeName: "node-a", ResourceClaims: []corev1.PodResourceClaim{
			{Name: "direct", ResourceClaimName: ptr.To("shared-gpu")},
			{Name: "templated", ResourceClaimTemplateName: ptr.To("gpu-20gi")},
		}},
		Status: corev1.PodStatus{ResourceClaimStatuses: []corev1.PodResourceClaimStatus{
			{Name: "templated", ResourceClaimName: ptr.To("train-templated-x7k2")},
		}},
	}
	client := fake.NewClientset(pod)
	idx := newPodIndex(ctx, client, "node-a")
	var got audit.Pod
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		var ok bool
		got, ok = idx.get(string(pod.UID))
		return ok, nil
	}); err != nil {
		t.Fatalf("pod never indexed: %v", err)
	}
	if got.Name != "train" || got.Namespace != "ml" || !slices.Equal(got.Claims, []string{"shared-gpu", "train-templated-x7k2"}) {
		t.Errorf("pod %+v", got)
	}
	if _, ok := idx.get("another-uid"); ok {
		t.Error("an unknown UID found a pod")
	}

	rep := newEventReporter(ctx, client, "node-a")
	rep.Report(ctx, audit.Finding{Reason: audit.ReasonKilled, GPU: "GPU-0", Message: "killed host PID 4242",
		Pods:   []audit.Pod{got},
		Claims: []audit.Claim{{UID: "c1", Namespace: "ml", Name: "shared-gpu"}}})
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		evs, err := client.CoreV1().Events("ml").List(ctx, metav1.ListOptions{})
		if err != nil || len(evs.Items) < 2 {
			return false, nil
		}
		kinds := []string{}
		for _, e := range evs.Items {
			if e.Type != corev1.EventTypeWarning || e.Reason != string(audit.ReasonKilled) || !strings.Contains(e.Message, "4242") {
				t.Errorf("event %+v", e)
			}
			kinds = append(kinds, e.InvolvedObject.Kind)
		}
		slices.Sort(kinds)
		if !slices.Equal(kinds, []string{"Pod", "ResourceClaim"}) {
			t.Errorf("events on %v", kinds)
		}
		return true, nil
	}); err != nil {
		t.Fatalf("no events: %v", err)
	}
}

func TestAuditFlagValidation(t *testing.T) {
	for _, o := range []auditOptions{
		{interval: time.Second, memoryMargin: "lots", computeWindow: time.Minute},
		{interval: time.Second, memoryMargin: "-1Gi", computeWindow: time.Minute},
		{interval: time.Second, memoryMargin: "1Gi", computeWindow: 0},
		{interval: time.Second, memoryMargin: "1Gi", computeWindow: time.Minute, grace: -time.Second},
	} {
		if err := startAudit(context.Background(), options{audit: o}, nil, nil, nil, nil); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if err := startAudit(context.Background(), options{}, nil, nil, nil, nil); err != nil {
		t.Errorf("audit off: %v", err)
	}
}
