package hamitranslate

import (
	"testing"
)

// BenchmarkTranslate is the webhook's per-pod work: a HAMi pod with type
// and UUID annotations and a gpumem-percentage (the largest claim spec),
// translated, named and applied.
func BenchmarkTranslate(b *testing.B) {
	inv := Inventory{GPUMemory: []int64{81920 << 20, 81559 << 20, 40960 << 20, 23034 << 20}}
	pod := makePod(map[string]string{AnnotationUseType: "A100,H100,L4", AnnotationNoUseUUID: "GPU-8a2f3c4d-1111-2222-3333-444455556666"},
		ctr{name: "train", limits: map[string]string{"nvidia.com/gpu": "2", "nvidia.com/gpumem-percentage": "50", "nvidia.com/gpucores": "30"}},
		ctr{name: "infer", limits: map[string]string{"nvidia.com/gpu": "1", "nvidia.com/gpumem": "8192"}})
	opts := DefaultOptions()
	b.ReportAllocs()
	for b.Loop() {
		p := pod.DeepCopy()
		tr, err := Translate(p, opts, inv)
		if err != nil {
			b.Fatal(err)
		}
		name, err := TemplateName(tr.Claim)
		if err != nil {
			b.Fatal(err)
		}
		tr.Apply(p, name, opts.Resources)
	}
}
