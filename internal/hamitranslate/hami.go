// Package hamitranslate turns a pod written for HAMi (extended resources
// nvidia.com/gpu, gpumem, gpumem-percentage, gpucores and HAMi's GPU
// selection annotations) into the DRA form hami-dra serves: one
// ResourceClaimSpec with one request per GPU-using container, and the pod
// edits that make the containers use it instead of HAMi's resources.
//
// It is pure: no API calls. The admission webhook (internal/webhook) feeds
// it the cluster's GPU memory sizes and manages the ResourceClaimTemplate.
// The mapping, and where it differs from HAMi, is documented in
// deployments/README.md ("Migrating from HAMi").
package hamitranslate

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// HAMi's default resource names (HAMi's resourceName, resourceMem,
// resourceMemPercentage, resourceCores and resourcePriority).
const (
	DefaultResourceGPU              corev1.ResourceName = "nvidia.com/gpu"
	DefaultResourceMemory           corev1.ResourceName = "nvidia.com/gpumem"
	DefaultResourceMemoryPercentage corev1.ResourceName = "nvidia.com/gpumem-percentage"
	DefaultResourceCores            corev1.ResourceName = "nvidia.com/gpucores"
	DefaultResourcePriority         corev1.ResourceName = "nvidia.com/priority"
)

// HAMi's pod annotations for choosing GPUs.
const (
	// AnnotationUseType lists GPU types (comma-separated); a GPU is used
	// only if its product name contains one of them, ignoring case.
	AnnotationUseType = "nvidia.com/use-gputype"
	// AnnotationNoUseType lists GPU types a GPU must not contain.
	AnnotationNoUseType = "nvidia.com/nouse-gputype"
	// AnnotationUseUUID lists the only GPU UUIDs to use.
	AnnotationUseUUID = "nvidia.com/use-gpuuuid"
	// AnnotationNoUseUUID lists GPU UUIDs not to use.
	AnnotationNoUseUUID = "nvidia.com/nouse-gpuuuid"
	// AnnotationMode is HAMi's device mode: hami-core, mig or mps.
	AnnotationMode = "nvidia.com/vgpu-mode"
)

// ClaimName is the name of the pod's claim (spec.resourceClaims[].name) that
// the translation adds.
const ClaimName = "hami-gpu"

// capacity names of the plugin's devices (internal/inventory).
const (
	capacityMemory = "memory"
	capacityCores  = "cores"
)

const mib = 1 << 20

// ResourceNames are the extended resource names HAMi users ask for. HAMi
// lets operators rename them; so does the webhook.
type ResourceNames struct {
	GPU              corev1.ResourceName
	Memory           corev1.ResourceName
	MemoryPercentage corev1.ResourceName
	Cores            corev1.ResourceName
	// Priority is HAMi's task priority. hami-dra has no equivalent (see
	// internal/driver/README.md); the resource is removed with a warning.
	Priority corev1.ResourceName
}

// All returns the names in a fixed order.
func (r ResourceNames) All() []corev1.ResourceName {
	return []corev1.ResourceName{r.GPU, r.Memory, r.MemoryPercentage, r.Cores, r.Priority}
}

// Options are the translation's settings: where claims go and HAMi's
// defaults (the hami-scheduler-device ConfigMap's nvidia.defaultMem,
// defaultCores and defaultGPUNum).
type Options struct {
	// DeviceClassName is the class every request uses (the chart's
	// default class, "vgpu.hami.io").
	DeviceClassName string
	// DriverName is the driver's name: the domain of the devices'
	// attributes and capacities in CEL selectors.
	DriverName string
	Resources  ResourceNames
	// DefaultMemoryMiB is the memory of a GPU whose container asks for
	// neither gpumem nor gpumem-percentage. 0, HAMi's default, means the
	// whole GPU.
	DefaultMemoryMiB int64
	// DefaultCores is the compute share (percent) of a GPU whose
	// container does not ask for gpucores. 0, HAMi's default, reserves
	// nothing.
	DefaultCores int64
	// DefaultGPUNum is the number of GPUs of a container that asks for
	// gpumem, gpumem-percentage or gpucores without nvidia.com/gpu. 0
	// rejects such containers.
	DefaultGPUNum int64
}

// DefaultOptions are HAMi's defaults and the chart's class and driver name.
func DefaultOptions() Options {
	return Options{
		DeviceClassName: "vgpu.hami.io",
		DriverName:      "vgpu.hami.io",
		Resources: ResourceNames{
			GPU:              DefaultResourceGPU,
			Memory:           DefaultResourceMemory,
			MemoryPercentage: DefaultResourceMemoryPercentage,
			Cores:            DefaultResourceCores,
			Priority:         DefaultResourcePriority,
		},
		DefaultGPUNum: 1,
	}
}

// Validate reports settings that would make every translation wrong.
func (o Options) Validate() error {
	if errs := validation.IsDNS1123Subdomain(o.DeviceClassName); len(errs) > 0 {
		return fmt.Errorf("device class name %q: %v", o.DeviceClassName, errs)
	}
	if errs := validation.IsDNS1123Subdomain(o.DriverName); len(errs) > 0 {
		return fmt.Errorf("driver name %q: %v", o.DriverName, errs)
	}
	seen := map[corev1.ResourceName]bool{}
	for _, name := range o.Resources.All() {
		if errs := validation.IsQualifiedName(string(name)); name == "" || len(errs) > 0 {
			return fmt.Errorf("resource name %q: not a qualified name %v", name, errs)
		}
		if seen[name] {
			return fmt.Errorf("resource name %q given twice", name)
		}
		seen[name] = true
	}
	if o.DefaultMemoryMiB < 0 {
		return fmt.Errorf("default memory %d MiB: must be 0 (whole GPU) or more", o.DefaultMemoryMiB)
	}
	if o.DefaultCores < 0 || o.DefaultCores > 100 {
		return fmt.Errorf("default cores %d: must be 0..100", o.DefaultCores)
	}
	if o.DefaultGPUNum < 0 {
		return fmt.Errorf("default GPU number %d: must be 0 or more", o.DefaultGPUNum)
	}
	return nil
}
