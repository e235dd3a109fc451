package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/internal/hamitranslate"
)

func hamiPod(limits corev1.ResourceList) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "train-", Namespace: "ml"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "sidecar", Image: "busybox"},
			{Name: "cuda", Image: "cuda", Resources: corev1.ResourceRequirements{Limits: limits}},
		}},
	}
}

func newHandler(client *fake.Clientset) *Handler {
	return &Handler{
		Options:   hamitranslate.DefaultOptions(),
		Inventory: func() hamitranslate.Inventory { return hamitranslate.Inventory{GPUMemory: []int64{80 << 30}} },
		Templates: APITemplates{Client: client},
	}
}

// review posts pod to the handler as the API server does and returns the
// response.
func review(t *testing.T, h http.Handler, pod *corev1.Pod, dryRun bool) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	in := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "req-1",
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: pod.Namespace,
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
			DryRun:    ptr.To(dryRun),
		},
	}
	body, _ := json.Marshal(in)
	_, ctx := ktesting.NewTestContext(t)
	req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body)).WithContext(ctx)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil || out.Response.UID != "req-1" {
		t.Fatalf("malformed review response %+v", out)
	}
	return out.Response
}

// patched applies the response's JSON patch to pod, as the API server does.
func patched(t *testing.T, pod *corev1.Pod, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", resp.PatchType)
	}
	p, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", resp.Patch, err)
	}
	raw, _ := json.Marshal(pod)
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", resp.Patch, err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

func TestMutateHAMiPod(t *testing.T) {
	client := fake.NewClientset()
	h := newHandler(client)
	pod := hamiPod(corev1.ResourceList{
		"nvidia.com/gpu": resource.MustParse("2"), "nvidia.com/gpumem": resource.MustParse("10240"),
		"nvidia.com/gpucores": resource.MustParse("30"), corev1.ResourceCPU: resource.MustParse("2"),
	})
	resp := review(t, h, pod, false)
	if !resp.Allowed {
		t.Fatalf("denied: %+v", resp.Result)
	}
	got := patched(t, pod, resp)
	cuda := got.Spec.Containers[1]
	if len(cuda.Resources.Limits) != 1 || cuda.Resources.Limits.Cpu().String() != "2" {
		t.Errorf("limits after the patch %v, want only cpu: 2", cuda.Resources.Limits)
	}
	if len(cuda.Resources.Claims) != 1 || cuda.Resources.Claims[0] != (corev1.ResourceClaim{Name: hamitranslate.ClaimName, Request: "cuda"}) {
		t.Errorf("claims of the container %+v", cuda.Resources.Claims)
	}
	if len(got.Spec.Containers[0].Resources.Claims) != 0 {
		t.Errorf("sidecar got claims %+v", got.Spec.Containers[0].Resources.Claims)
	}
	if len(got.Spec.ResourceClaims) != 1 || got.Spec.ResourceClaims[0].ResourceClaimTemplateName == nil {
		t.Fatalf("pod claims %+v", got.Spec.ResourceClaims)
	}
	name := *got.Spec.ResourceClaims[0].ResourceClaimTemplateName
	tmpl, err := client.ResourceV1().ResourceClaimTemplates("ml").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("template %s: %v", name, err)
	}
	if tmpl.Labels[ManagedByLabel] != ManagedByValue {
		t.Errorf("template labels %v", tmpl.Labels)
	}
	req := tmpl.Spec.Spec.Devices.Requests[0]
	if req.Name != "cuda" || req.Exactly == nil || req.Exactly.Count != 2 || req.Exactly.DeviceClassName != "vgpu.hami.io" {
		t.Errorf("request %+v", req)
	}
	mem, cores := req.Exactly.Capacity.Requests["memory"], req.Exactly.Capacity.Requests["cores"]
	if mem.String() != "10Gi" || cores.String() != "30" {
		t.Errorf("capacity %v, %v; want 10Gi, 30", mem.String(), cores.String())
	}

	// A second pod of the same workload reuses the template.
	resp2 := review(t, h, pod, false)
	if !resp2.Allowed || *patched(t, pod, resp2).Spec.ResourceClaims[0].ResourceClaimTemplateName != name {
		t.Errorf("second pod: %+v", resp2)
	}
	list, _ := client.ResourceV1().ResourceClaimTemplates("ml").List(context.Background(), metav1.ListOptions{})
	if len(list.Items) != 1 {
		t.Errorf("%d templates, want 1", len(list.Items))
	}
}

func TestMutateLeavesOtherPodsAlone(t *testing.T) {
	client := fake.NewClientset()
	resp := review(t, newHandler(client), hamiPod(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}), false)
	if !resp.Allowed || resp.Patch != nil || resp.Result != nil {
		t.Errorf("a pod without HAMi resources got %+v", resp)
	}
	if n := len(client.Actions()); n != 0 {
		t.Errorf("%d API calls for a pod without HAMi resources", n)
	}
}

func TestMutateRejectsWithField(t *testing.T) {
	client := fake.NewClientset()
	pod := hamiPod(corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1"), "nvidia.com/gpucores": resource.MustParse("150")})
	resp := review(t, newHandler(client), pod, false)
	if resp.Allowed {
		t.Fatal("allowed gpucores 150")
	}
	msg := resp.Result.Message
	for _, want := range []string{`Pod "train-" is invalid`, "spec.containers[1].resources.limits[nvidia.com/gpucores]", "must be 0..100"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if resp.Result.Code != http.StatusUnprocessableEntity || resp.Result.Reason != metav1.StatusReasonInvalid {
		t.Errorf("status %d %s, want 422 Invalid", resp.Result.Code, resp.Result.Reason)
	}
	if n := len(client.Actions()); n != 0 {
		t.Errorf("%d API calls for a rejected pod", n)
	}
}

func TestMutateDryRunCreatesNothing(t *testing.T) {
	client := fake.NewClientset()
	var dryRuns []bool
	client.PrependReactor("create", "resourceclaimtemplates", func(a clienttesting.Action) (bool, runtime.Object, error) {
		opts := a.(clienttesting.CreateActionImpl).CreateOptions
		dryRuns = append(dryRuns, len(opts.DryRun) == 1 && opts.DryRun[0] == metav1.DryRunAll)
		return false, nil, nil
	})
	resp := review(t, newHandler(client), hamiPod(corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}), true)
	if !resp.Allowed {
		t.Fatalf("denied: %+v", resp.Result)
	}
	if len(dryRuns) != 1 || !dryRuns[0] {
		t.Errorf("template creates with dry run: %v, want one dry-run create", dryRuns)
	}
}

func TestMutateTemplateConflict(t *testing.T) {
	client := fake.NewClientset()
	h := newHandler(client)
	pod := hamiPod(corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")})
	resp := review(t, h, pod, false)
	name := *patched(t, pod, resp).Spec.ResourceClaims[0].ResourceClaimTemplateName
	// Someone edits the template: pods must not silently get other GPUs.
	tmpl, _ := client.ResourceV1().ResourceClaimTemplates("ml").Get(context.Background(), name, metav1.GetOptions{})
	tmpl.Spec.Spec.Devices.Requests[0].Exactly.Count = 3
	if _, err := client.ResourceV1().ResourceClaimTemplates("ml").Update(context.Background(), tmpl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	resp = review(t, h, pod, false)
	if resp.Allowed || !strings.Contains(resp.Result.Message, "exists with a different spec") {
		t.Errorf("edited template: %+v", resp)
	}
}

func TestServeHTTPBadInput(t *testing.T) {
	h := newHandler(fake.NewClientset())
	for name, body := range map[string]string{
		"not JSON":      "{",
		"no request":    `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`,
		"oversized":     `{"x":"` + strings.Repeat("a", maxBody) + `"}`,
		"wrong request": `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":[]}`,
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(body)))
		if rec.Code < 400 {
			t.Errorf("%s: HTTP %d", name, rec.Code)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/mutate", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: HTTP %d", rec.Code)
	}
}

func TestAdmitIgnoresOtherOperations(t *testing.T) {
	h := newHandler(fake.NewClientset())
	raw, _ := json.Marshal(hamiPod(corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}))
	for _, req := range []*admissionv1.AdmissionRequest{
		{Operation: admissionv1.Update, Resource: podResource, Object: runtime.RawExtension{Raw: raw}},
		{Operation: admissionv1.Create, Resource: podResource, SubResource: "ephemeralcontainers", Object: runtime.RawExtension{Raw: raw}},
		{Operation: admissionv1.Create, Resource: metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, Object: runtime.RawExtension{Raw: raw}},
	} {
		if resp := h.Admit(context.Background(), req); !resp.Allowed || resp.Patch != nil {
			t.Errorf("%s %v/%s: %+v", req.Operation, req.Resource, req.SubResource, resp)
		}
	}
}

func TestInventoryOf(t *testing.T) {
	dev := func(mem string) resourceapi.Device {
		return resourceapi.Device{Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{"memory": {Value: resource.MustParse(mem)}}}
	}
	slices := []*resourceapi.ResourceSlice{
		{Spec: resourceapi.ResourceSliceSpec{Driver: "vgpu.hami.io", Devices: []resourceapi.Device{dev("80Gi"), dev("80Gi"), dev("23034Mi")}}},
		{Spec: resourceapi.ResourceSliceSpec{Driver: "vgpu.hami.io", Devices: []resourceapi.Device{dev("40Gi"), {}}}},
		{Spec: resourceapi.ResourceSliceSpec{Driver: "gpu.nvidia.com", Devices: []resourceapi.Device{dev("141Gi")}}},
	}
	got := InventoryOf(slices, "vgpu.hami.io").GPUMemory
	want := []int64{23034 << 20, 40 << 30, 80 << 30}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("got %v, want %v", got, want)
		}
	}
}
