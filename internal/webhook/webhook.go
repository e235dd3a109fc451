// Package webhook is the admission webhook that lets pods written for HAMi
// run on hami-dra unchanged: it serves AdmissionReview requests for pod
// creation, translates HAMi's resources with internal/hamitranslate, makes
// sure the pod's ResourceClaimTemplate exists and answers with a JSON patch.
package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/hamitranslate"
)

// maxBody bounds an AdmissionReview: the API server never sends more than
// its own request limit (3 MiB objects), so anything larger is not one.
const maxBody = 8 << 20

// podResource is what the webhook handles.
var podResource = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}

// Handler mutates pods.
type Handler struct {
	Options hamitranslate.Options
	// Inventory reports the cluster's GPU memory sizes.
	Inventory func() hamitranslate.Inventory
	// Templates creates the ResourceClaimTemplates pods reference.
	Templates TemplateStore
}

// ServeHTTP answers one AdmissionReview (admission.k8s.io/v1).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	logger := klog.FromContext(r.Context())
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > maxBody {
		http.Error(w, "AdmissionReview larger than 8 MiB", http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, "decode AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "AdmissionReview without a request", http.StatusBadRequest)
		return
	}
	resp := h.Admit(r.Context(), review.Request)
	resp.UID = review.Request.UID
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
	}
	data, err := json.Marshal(out)
	if err != nil {
		logger.Error(err, "Encode AdmissionReview response")
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(data)
}

// Admit decides one admission request.
func (h *Handler) Admit(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	logger := klog.FromContext(ctx).WithValues("namespace", req.Namespace, "name", req.Name, "uid", req.UID)
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	logger.V(4).Info("Admission request", "operation", req.Operation, "resource", req.Resource, "subResource", req.SubResource)
	// Only pod creation is translated: a pod's resources and claims cannot
	// change afterwards. The webhook configuration sends nothing else, but
	// a wider configuration must not break other objects.
	if req.Resource != podResource || req.SubResource != "" || req.Operation != admissionv1.Create {
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(http.StatusBadRequest, fmt.Sprintf("decode pod: %v", err))
	}
	tr, err := hamitranslate.Translate(&pod, h.Options, h.Inventory())
	if err != nil {
		logger.V(2).Info("Rejected a HAMi pod", "err", err)
		return invalid(&pod, err)
	}
	if tr == nil {
		return allow
	}
	var template string
	if len(tr.Claim.Devices.Requests) > 0 {
		template, err = hamitranslate.TemplateName(tr.Claim)
		if err != nil {
			return deny(http.StatusInternalServerError, err.Error())
		}
		dryRun := req.DryRun != nil && *req.DryRun
		if err := h.Templates.Ensure(ctx, req.Namespace, template, tr.Claim, dryRun); err != nil {
			logger.Error(err, "ResourceClaimTemplate", "template", template)
			return deny(http.StatusInternalServerError, fmt.Sprintf("ResourceClaimTemplate %s/%s for HAMi's resources: %v", req.Namespace, template, err))
		}
	}
	patch, err := buildPatch(&pod, tr, template, h.Options.Resources)
	if err != nil {
		return deny(http.StatusInternalServerError, err.Error())
	}
	logger.V(2).Info("Translated a HAMi pod", "template", template, "requests", len(tr.Claim.Devices.Requests))
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt, Warnings: tr.Warnings}
}

// buildPatch rewrites the translated containers' resources and the pod's
// claims. "add" replaces a member that exists, so it serves both cases.
func buildPatch(pod *corev1.Pod, tr *hamitranslate.Translation, template string, names hamitranslate.ResourceNames) ([]byte, error) {
	mutated := pod.DeepCopy()
	tr.Apply(mutated, template, names)
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}
	var ops []op
	containers, inits := tr.Changed()
	for _, i := range inits {
		ops = append(ops, op{"add", fmt.Sprintf("/spec/initContainers/%d/resources", i), mutated.Spec.InitContainers[i].Resources})
	}
	for _, i := range containers {
		ops = append(ops, op{"add", fmt.Sprintf("/spec/containers/%d/resources", i), mutated.Spec.Containers[i].Resources})
	}
	if len(mutated.Spec.ResourceClaims) != len(pod.Spec.ResourceClaims) {
		ops = append(ops, op{"add", "/spec/resourceClaims", mutated.Spec.ResourceClaims})
	}
	data, err := json.Marshal(ops)
	if err != nil {
		return nil, fmt.Errorf("encode patch: %w", err)
	}
	return data, nil
}

func deny(code int32, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Result: &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: msg}}
}

// invalid is the API server's own "Pod ... is invalid: <field>: <reason>"
// status, so that kubectl shows it like any validation error.
func invalid(pod *corev1.Pod, err error) *admissionv1.AdmissionResponse {
	name := pod.Name
	if name == "" {
		name = pod.GenerateName
	}
	var list field.ErrorList
	if agg, ok := err.(interface{ Errors() []error }); ok {
		for _, e := range agg.Errors() {
			if fe, ok := e.(*field.Error); ok {
				list = append(list, fe)
			} else {
				list = append(list, field.InternalError(nil, e))
			}
		}
	} else {
		list = field.ErrorList{field.InternalError(nil, err)}
	}
	status := apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, name, list).ErrStatus
	return &admissionv1.AdmissionResponse{Result: &status}
}
