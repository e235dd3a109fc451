package webhook

import (
	"context"
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ManagedByLabel marks the ResourceClaimTemplates the webhook creates.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "hami-webhook"
)

// TemplateStore makes sure a ResourceClaimTemplate exists.
type TemplateStore interface {
	// Ensure creates template name in namespace with spec, or checks that
	// the existing one has that spec. dryRun checks without creating.
	Ensure(ctx context.Context, namespace, name string, spec resourceapi.ResourceClaimSpec, dryRun bool) error
}

// APITemplates keeps the templates in the API server.
//
// Why templates and not claims: at pod admission the pod has no UID yet,
// so a claim cannot be owned by it. A template named after its content is
// shared by every pod asking for the same GPUs; the resourceclaim
// controller creates one claim per pod from it, owned by the pod, and the
// garbage collector deletes that claim with the pod. That serves
// Deployments, Jobs and StatefulSets, rollouts and recreated pods alike.
type APITemplates struct {
	Client kubernetes.Interface
}

// Ensure implements TemplateStore.
func (a APITemplates) Ensure(ctx context.Context, namespace, name string, spec resourceapi.ResourceClaimSpec, dryRun bool) error {
	api := a.Client.ResourceV1().ResourceClaimTemplates(namespace)
	existing, err := api.Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		return sameSpec(existing, spec)
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("get: %w", err)
	}
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: namespace,
			Labels:    map[string]string{ManagedByLabel: ManagedByValue},
			Annotations: map[string]string{
				"hami.io/generated-from": "HAMi resources (nvidia.com/gpu, gpumem, gpucores) of pods in this namespace",
			},
		},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: spec},
	}
	opts := metav1.CreateOptions{FieldManager: ManagedByValue}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = api.Create(ctx, tmpl, opts)
	if apierrors.IsAlreadyExists(err) {
		// Another pod of the same workload won the race.
		existing, err = api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get after a concurrent create: %w", err)
		}
		return sameSpec(existing, spec)
	}
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	return nil
}

// sameSpec guards against a template that was edited or that someone else
// created under the webhook's name: pods must get what they asked for.
func sameSpec(existing *resourceapi.ResourceClaimTemplate, spec resourceapi.ResourceClaimSpec) error {
	if !apiequality.Semantic.DeepEqual(existing.Spec.Spec, spec) {
		return fmt.Errorf("exists with a different spec (delete it: the webhook recreates it)")
	}
	return nil
}
