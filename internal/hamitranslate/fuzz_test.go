package hamitranslate

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/cel"
)

// FuzzTranslate feeds tenant-controlled input (annotations and resource
// quantities) to the translation. Whatever it accepts must be a claim the
// API server and the scheduler take: every selector compiles in the
// scheduler's CEL environment and stays within the API's length limit,
// every capacity is within the device's range, and no HAMi resource is left
// on the pod.
func FuzzTranslate(f *testing.F) {
	f.Add("A100,H100", "", "", "", "1", "20480", "", "30")
	f.Add("", "A10", "GPU-8a2f3c4d-1111-2222-3333-444455556666", "", "2", "", "50", "")
	f.Add(`A100") || true || ("`, "", "", "", "1", "", "", "")
	f.Add("", "", "GPU-1,GPU-2", "GPU-2", "1", "1k", "", "101")
	f.Add(" l4 , t4 ", "NVIDIA A100-SXM4-80GB", "", "MIG-x", "0", "1.5", "100", "-1")
	f.Add("a,,b", "\\", "\"", "", "3", "99999999999999999999", "", "")
	compiler := cel.GetCompiler(cel.Features{EnableConsumableCapacity: true})
	inv := Inventory{GPUMemory: []int64{81920 << 20, 23034 << 20, 15360 << 20}}
	f.Fuzz(func(t *testing.T, useType, noUseType, useUUID, noUseUUID, gpu, mem, pct, cores string) {
		ann := map[string]string{}
		for k, v := range map[string]string{AnnotationUseType: useType, AnnotationNoUseType: noUseType, AnnotationUseUUID: useUUID, AnnotationNoUseUUID: noUseUUID} {
			if v != "" {
				ann[k] = v
			}
		}
		limits := corev1.ResourceList{}
		for name, v := range map[corev1.ResourceName]string{DefaultResourceGPU: gpu, DefaultResourceMemory: mem, DefaultResourceMemoryPercentage: pct, DefaultResourceCores: cores} {
			if v == "" {
				continue
			}
			q, err := resource.ParseQuantity(v)
			if err != nil {
				return // the API server rejects it before admission
			}
			limits[name] = q
		}
		pod := makePod(ann, ctr{name: "app"})
		pod.Spec.Containers[0].Resources.Limits = limits
		opts := DefaultOptions()
		tr, err := Translate(pod, opts, inv)
		if err != nil {
			if !strings.Contains(err.Error(), "metadata.annotations[") && !strings.Contains(err.Error(), "spec.containers[0].resources.limits[") {
				t.Fatalf("error names no field: %v", err)
			}
			return
		}
		if len(limits) == 0 {
			if tr != nil {
				t.Fatal("translated a pod without HAMi resources")
			}
			return
		}
		if tr == nil {
			t.Fatal("pod with HAMi resources not translated")
		}
		tr.Apply(pod, "t", opts.Resources)
		for _, n := range opts.Resources.All() {
			if _, ok := pod.Spec.Containers[0].Resources.Limits[n]; ok {
				t.Fatalf("%s left on the pod", n)
			}
		}
		for _, r := range tr.Claim.Devices.Requests {
			subs := r.FirstAvailable
			if r.Exactly != nil {
				if r.Exactly.Count < 1 || r.Exactly.Count > 32 {
					t.Fatalf("count %d", r.Exactly.Count)
				}
				checkCapacity(t, r.Exactly.Capacity)
				for _, s := range r.Exactly.Selectors {
					checkCEL(t, compiler, s.CEL.Expression)
				}
			}
			if len(subs) > 8 {
				t.Fatalf("%d subrequests", len(subs))
			}
			for _, s := range subs {
				checkCapacity(t, s.Capacity)
				for _, sel := range s.Selectors {
					checkCEL(t, compiler, sel.CEL.Expression)
				}
			}
		}
	})
}

func checkCEL(t *testing.T, compiler interface {
	CompileCELExpression(string, cel.Options) cel.CompilationResult
}, expr string) {
	t.Helper()
	if len(expr) > 10*1024 {
		t.Fatalf("selector of %d bytes", len(expr))
	}
	if res := compiler.CompileCELExpression(expr, cel.Options{}); res.Error != nil {
		t.Fatalf("selector %q: %v", expr, res.Error)
	}
}

func checkCapacity(t *testing.T, c *resourceapi.CapacityRequirements) {
	t.Helper()
	if c == nil {
		return
	}
	reqs := c.Requests
	if q, ok := reqs[capacityMemory]; ok && (q.Value() < mib || q.Value() > 81920<<20) {
		t.Fatalf("memory %s outside 1Mi..the largest GPU", q.String())
	}
	if q, ok := reqs[capacityCores]; ok && (q.Value() < 1 || q.Value() > 100) {
		t.Fatalf("cores %s outside 1..100", q.String())
	}
}
