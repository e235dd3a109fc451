package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type fakeSource []ClaimQuota

func (f fakeSource) PreparedClaims() []ClaimQuota { return f }

func TestHandler(t *testing.T) {
	src := fakeSource{
		{Namespace: "ns", Name: "a", UID: "u1", GPUs: []GPUQuota{{Index: 0, UUID: "GPU-1", MemoryBytes: 100, Cores: 30}}},
		{Namespace: "ns", Name: "b", UID: "u2", GPUs: []GPUQuota{{Index: 0, UUID: "GPU-1", MemoryBytes: 50, Cores: 20}}},
	}
	ready := false
	srv := httptest.NewServer(Handler(src, func() bool { return ready }))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Fatalf("readyz before registration %d", code)
	}
	ready = true
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	_, body := get("/metrics")
	for _, want := range []string{
		`hami_dra_claim_memory_limit_bytes{claim="a",gpu_uuid="GPU-1",index="0",namespace="ns",uid="u1"} 100`,
		`hami_dra_claim_cores_limit_percent{claim="b",gpu_uuid="GPU-1",index="0",namespace="ns",uid="u2"} 20`,
		`hami_dra_prepared_claims 2`,
		`hami_dra_gpu_allocated_memory_bytes{gpu_uuid="GPU-1"} 150`,
		`hami_dra_gpu_allocated_cores_percent{gpu_uuid="GPU-1"} 50`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
