package hamitranslate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Inventory is what the translation needs to know about the cluster's GPUs.
type Inventory struct {
	// GPUMemory holds the distinct memory sizes (bytes) of the published
	// GPUs. Empty means unknown (no GPU published yet): gpumem is then
	// not checked against the largest GPU, and gpumem-percentage below
	// 100 cannot be translated.
	GPUMemory []int64
}

func (inv Inventory) largest() int64 {
	if len(inv.GPUMemory) == 0 {
		return 0
	}
	return slices.Max(inv.GPUMemory)
}

// Translation is a HAMi pod's DRA form.
type Translation struct {
	// Claim is the spec of the pod's claim: one request per container
	// that uses HAMi's GPUs, named after the container.
	Claim resourceapi.ResourceClaimSpec
	// Warnings are for the user (admission warnings): what was dropped.
	Warnings []string

	// edits lists the containers to rewrite.
	edits []containerEdit
}

type containerEdit struct {
	init  bool
	index int
	// request is the claim's request for this container; empty when the
	// container only loses HAMi resources (nvidia.com/gpu: 0, priority).
	request string
}

// Translate reads pod's HAMi resources and annotations. It returns nil, nil
// when the pod uses none of HAMi's resources: such pods are left alone.
// Errors are a field.ErrorList naming each offending field.
func Translate(pod *corev1.Pod, opts Options, inv Inventory) (*Translation, error) {
	t := &Translation{}
	sel, errs := selectors(pod, opts)
	specPath := field.NewPath("spec")
	type group struct {
		init       bool
		containers []corev1.Container
		path       *field.Path
	}
	uses := false
	for _, g := range []group{
		{true, pod.Spec.InitContainers, specPath.Child("initContainers")},
		{false, pod.Spec.Containers, specPath.Child("containers")},
	} {
		for i := range g.containers {
			c := &g.containers[i]
			if !usesHAMi(c, opts.Resources) {
				continue
			}
			uses = true
			req, warn, cerrs := translateContainer(c, g.path.Index(i), sel, opts, inv)
			errs = append(errs, cerrs...)
			t.Warnings = append(t.Warnings, warn...)
			edit := containerEdit{init: g.init, index: i}
			if req != nil {
				edit.request = req.Name
				t.Claim.Devices.Requests = append(t.Claim.Devices.Requests, *req)
			}
			t.edits = append(t.edits, edit)
		}
	}
	if !uses {
		return nil, nil
	}
	if sel.uuidCount > 0 {
		for _, r := range t.Claim.Devices.Requests {
			if n := requestCount(r); n > int64(sel.uuidCount) {
				errs = append(errs, field.Invalid(field.NewPath("metadata", "annotations").Key(AnnotationUseUUID), pod.Annotations[AnnotationUseUUID],
					fmt.Sprintf("container %q asks for %d GPUs but only %d UUIDs are allowed: each GPU of a container is a different GPU", r.Name, n, sel.uuidCount)))
			}
		}
	}
	if len(t.Claim.Devices.Requests) > 0 {
		for _, rc := range pod.Spec.ResourceClaims {
			if rc.Name == ClaimName {
				errs = append(errs, field.Duplicate(specPath.Child("resourceClaims").Key(ClaimName), "the webhook adds a claim of this name for HAMi's resources"))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs.ToAggregate()
	}
	return t, nil
}

func usesHAMi(c *corev1.Container, names ResourceNames) bool {
	for _, n := range names.All() {
		if _, ok := c.Resources.Limits[n]; ok {
			return true
		}
		if _, ok := c.Resources.Requests[n]; ok {
			return true
		}
	}
	return false
}

// lookup returns a resource's value as HAMi reads it: limits first, then
// requests; and the field path it came from.
func lookup(c *corev1.Container, path *field.Path, name corev1.ResourceName) (resource.Quantity, *field.Path, bool) {
	if q, ok := c.Resources.Limits[name]; ok {
		return q, path.Child("resources", "limits").Key(string(name)), true
	}
	if q, ok := c.Resources.Requests[name]; ok {
		return q, path.Child("resources", "requests").Key(string(name)), true
	}
	return resource.Quantity{}, nil, false
}

func translateContainer(c *corev1.Container, path *field.Path, sel selection, opts Options, inv Inventory) (*resourceapi.DeviceRequest, []string, field.ErrorList) {
	var errs field.ErrorList
	var warnings []string
	names := opts.Resources
	if _, p, ok := lookup(c, path, names.Priority); ok {
		warnings = append(warnings, fmt.Sprintf("%s: HAMi's task priority has no hami-dra equivalent and was removed; reserve compute with %s instead", p, names.Cores))
	}

	gpuQ, gpuPath, hasGPU := lookup(c, path, names.GPU)
	memQ, memPath, hasMem := lookup(c, path, names.Memory)
	pctQ, pctPath, hasPct := lookup(c, path, names.MemoryPercentage)
	coresQ, coresPath, hasCores := lookup(c, path, names.Cores)

	count := int64(0)
	switch {
	case hasGPU:
		n, err := parseInt(gpuQ, 0, resourceapi.AllocationResultsMaxSize)
		if err != nil {
			errs = append(errs, field.Invalid(gpuPath, gpuQ.String(), err.Error()))
		}
		count = n
	case hasMem || hasPct || hasCores:
		// HAMi's webhook adds nvidia.com/gpu: defaultGPUNum here.
		count = opts.DefaultGPUNum
		if count == 0 {
			errs = append(errs, field.Required(path.Child("resources", "limits").Key(string(names.GPU)),
				fmt.Sprintf("%s, %s and %s need a number of GPUs", names.Memory, names.MemoryPercentage, names.Cores)))
		}
	}

	var memMiB int64 // 0: the whole GPU (no memory request)
	var pct int64
	switch {
	case hasMem && hasPct:
		errs = append(errs, field.Forbidden(pctPath, fmt.Sprintf("give either %s or %s, not both", names.Memory, names.MemoryPercentage)))
	case hasMem:
		v, err := parseInt(memQ, 1, math.MaxInt64/mib)
		if err != nil {
			errs = append(errs, field.Invalid(memPath, memQ.String(), err.Error()+" (MiB)"))
			break
		}
		if largest := inv.largest(); largest > 0 && v*mib > largest {
			errs = append(errs, field.Invalid(memPath, memQ.String(),
				fmt.Sprintf("%d MiB is more than the largest GPU in the cluster has (%d MiB)", v, largest/mib)))
			break
		}
		memMiB = v
	case hasPct:
		v, err := parseInt(pctQ, 1, 100)
		if err != nil {
			errs = append(errs, field.Invalid(pctPath, pctQ.String(), err.Error()+" (percent of a GPU's memory)"))
			break
		}
		pct = v
		if pct < 100 && len(inv.GPUMemory) == 0 {
			errs = append(errs, field.Invalid(pctPath, pctQ.String(),
				"no GPU is published yet, so the percentage cannot be turned into memory; retry later or ask for "+string(names.Memory)+" in MiB"))
		}
		if distinct := len(inv.GPUMemory); pct < 100 && distinct > resourceapi.FirstAvailableDeviceRequestMaxSize {
			errs = append(errs, field.Invalid(pctPath, pctQ.String(),
				fmt.Sprintf("the cluster's GPUs come in %d memory sizes, more than the %d alternatives a request can list; ask for %s in MiB", distinct, resourceapi.FirstAvailableDeviceRequestMaxSize, names.Memory)))
		}
	default:
		memMiB = opts.DefaultMemoryMiB
		if largest := inv.largest(); memMiB > 0 && largest > 0 && memMiB*mib > largest {
			errs = append(errs, field.Invalid(path.Child("resources", "limits").Key(string(names.Memory)), memMiB,
				fmt.Sprintf("the webhook's default memory (%d MiB, --default-mem) is more than the largest GPU in the cluster has (%d MiB): ask for %s explicitly", memMiB, largest/mib, names.Memory)))
		}
	}

	cores := opts.DefaultCores
	if hasCores {
		v, err := parseInt(coresQ, 0, 100)
		if err != nil {
			errs = append(errs, field.Invalid(coresPath, coresQ.String(), err.Error()+" (percent of a GPU's compute)"))
		}
		cores = v
	}
	if len(errs) > 0 || count == 0 {
		return nil, warnings, errs
	}

	exact := func(extra ...string) resourceapi.ExactDeviceRequest {
		r := resourceapi.ExactDeviceRequest{
			DeviceClassName: opts.DeviceClassName,
			AllocationMode:  resourceapi.DeviceAllocationModeExactCount,
			Count:           count,
		}
		for _, expr := range append(slices.Clone(sel.exprs), extra...) {
			r.Selectors = append(r.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: expr}})
		}
		reqs := map[resourceapi.QualifiedName]resource.Quantity{}
		if memMiB > 0 {
			reqs[capacityMemory] = *resource.NewQuantity(memMiB*mib, resource.BinarySI)
		}
		if cores > 0 {
			reqs[capacityCores] = *resource.NewQuantity(cores, resource.DecimalSI)
		}
		if len(reqs) > 0 {
			r.Capacity = &resourceapi.CapacityRequirements{Requests: reqs}
		}
		return r
	}

	req := &resourceapi.DeviceRequest{Name: c.Name}
	if pct == 0 || pct == 100 {
		e := exact()
		req.Exactly = &e
		return req, warnings, nil
	}
	// A percentage is a share of the chosen GPU's memory, which DRA
	// requests cannot express directly: list one alternative per memory
	// size in the cluster, each selecting GPUs of that size and asking for
	// the share of it (HAMi: total MiB * percent / 100), largest first.
	sizes := slices.Clone(inv.GPUMemory)
	slices.Sort(sizes)
	slices.Reverse(sizes)
	for _, size := range sizes {
		share := size / mib * pct / 100
		if share < 1 {
			continue
		}
		memMiB = share
		e := exact(fmt.Sprintf(`device.capacity[%q].%s.compareTo(quantity(%q)) == 0`, opts.DriverName, capacityMemory, resource.NewQuantity(size, resource.BinarySI).String()))
		req.FirstAvailable = append(req.FirstAvailable, resourceapi.DeviceSubRequest{
			Name:            fmt.Sprintf("gpu-%dmib", size/mib),
			DeviceClassName: e.DeviceClassName,
			Selectors:       e.Selectors,
			AllocationMode:  e.AllocationMode,
			Count:           e.Count,
			Capacity:        e.Capacity,
		})
	}
	return req, warnings, nil
}

func requestCount(r resourceapi.DeviceRequest) int64 {
	if r.Exactly != nil {
		return r.Exactly.Count
	}
	if len(r.FirstAvailable) > 0 {
		return r.FirstAvailable[0].Count
	}
	return 0
}

// selection is the pod-wide GPU selection from HAMi's annotations.
type selection struct {
	exprs     []string
	uuidCount int // number of allowed UUIDs; 0: not restricted
}

// selectors turns the annotations into CEL selectors, with HAMi's
// semantics: a type matches a GPU whose product name contains it, ignoring
// case (so "A100" matches "NVIDIA A100-SXM4-80GB"; like HAMi's, "A10" also
// matches an A100: users tell them apart with nouse-gputype or UUIDs);
// UUIDs match exactly.
func selectors(pod *corev1.Pod, opts Options) (selection, field.ErrorList) {
	var sel selection
	var errs field.ErrorList
	annPath := field.NewPath("metadata", "annotations")
	attr := func(name string) string { return fmt.Sprintf("device.attributes[%q].%s", opts.DriverName, name) }
	get := func(key string, parse func(string) ([]string, error)) []string {
		v, ok := pod.Annotations[key]
		if !ok {
			return nil
		}
		list, err := parse(v)
		if err != nil {
			errs = append(errs, field.Invalid(annPath.Key(key), v, err.Error()))
			return nil
		}
		return list
	}
	useTypes := get(AnnotationUseType, parseTypes)
	noUseTypes := get(AnnotationNoUseType, parseTypes)
	useUUIDs := get(AnnotationUseUUID, parseUUIDs)
	noUseUUIDs := get(AnnotationNoUseUUID, parseUUIDs)

	if mode, ok := pod.Annotations[AnnotationMode]; ok && mode != "hami-core" {
		errs = append(errs, field.NotSupported(annPath.Key(AnnotationMode), mode, []string{"hami-core"}))
	}
	// A type to use that contains a type not to use can never match.
	for _, u := range useTypes {
		for _, n := range noUseTypes {
			if strings.Contains(u, n) {
				errs = append(errs, field.Invalid(annPath.Key(AnnotationNoUseType), pod.Annotations[AnnotationNoUseType],
					fmt.Sprintf("excludes every GPU of type %q that %s asks for", u, AnnotationUseType)))
			}
		}
	}
	for _, n := range noUseUUIDs {
		if slices.Contains(useUUIDs, n) {
			errs = append(errs, field.Invalid(annPath.Key(AnnotationNoUseUUID), pod.Annotations[AnnotationNoUseUUID],
				fmt.Sprintf("UUID %q is also in %s", n, AnnotationUseUUID)))
		}
	}

	if len(useTypes) > 0 {
		sel.exprs = append(sel.exprs, fmt.Sprintf("%s.exists(t, %s.upperAscii().contains(t))", celList(useTypes), attr("productName")))
	}
	if len(noUseTypes) > 0 {
		sel.exprs = append(sel.exprs, fmt.Sprintf("!%s.exists(t, %s.upperAscii().contains(t))", celList(noUseTypes), attr("productName")))
	}
	if len(useUUIDs) > 0 {
		sel.exprs = append(sel.exprs, fmt.Sprintf("%s in %s", attr("uuid"), celList(useUUIDs)))
		sel.uuidCount = len(useUUIDs)
	}
	if len(noUseUUIDs) > 0 {
		sel.exprs = append(sel.exprs, fmt.Sprintf("!(%s in %s)", attr("uuid"), celList(noUseUUIDs)))
	}
	return sel, errs
}

// celList writes a CEL list of string literals. The entries passed the
// annotation patterns (no quotes or backslashes), so Go's quoting is CEL's.
func celList(items []string) string {
	quoted := make([]string, len(items))
	for i, s := range items {
		quoted[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// TemplateName is the name of the ResourceClaimTemplate holding spec:
// derived from its content, so every pod asking for the same GPUs (the
// replicas of a Deployment, a Job's pods) shares one template and a
// changed pod template (a rollout) gets its own.
func TemplateName(spec resourceapi.ResourceClaimSpec) (string, error) {
	data, err := json.Marshal(spec)
	if err != nil {
		return "", fmt.Errorf("encode claim spec: %w", err)
	}
	sum := sha256.Sum256(data)
	return ClaimName + "-" + hex.EncodeToString(sum[:8]), nil
}

// Apply rewrites pod in place: HAMi's resources are removed from the
// translated containers, which reference their request of the claim, and
// the pod gets the claim from template.
func (t *Translation) Apply(pod *corev1.Pod, template string, names ResourceNames) {
	for _, e := range t.edits {
		c := &pod.Spec.Containers
		if e.init {
			c = &pod.Spec.InitContainers
		}
		ctr := &(*c)[e.index]
		for _, n := range names.All() {
			delete(ctr.Resources.Limits, n)
			delete(ctr.Resources.Requests, n)
		}
		if e.request != "" {
			ctr.Resources.Claims = append(ctr.Resources.Claims, corev1.ResourceClaim{Name: ClaimName, Request: e.request})
		}
	}
	if len(t.Claim.Devices.Requests) > 0 {
		pod.Spec.ResourceClaims = append(pod.Spec.ResourceClaims, corev1.PodResourceClaim{Name: ClaimName, ResourceClaimTemplateName: &template})
	}
}

// Changed reports which containers Apply rewrites, for building a patch.
func (t *Translation) Changed() (containers, initContainers []int) {
	for _, e := range t.edits {
		if e.init {
			initContainers = append(initContainers, e.index)
		} else {
			containers = append(containers, e.index)
		}
	}
	return containers, initContainers
}
