package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hami-dra/hami-dra/internal/region"
)

type fakeSource []ClaimQuota

func (f fakeSource) PreparedClaims() []ClaimQuota { return f }

// TestUsageFromRegion: the usage metrics come from the claim's region, only
// for the claim's own GPUs; a missing or corrupt region drops only them.
func TestUsageFromRegion(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.shr")
	img := region.Image(
		region.Device{UUID: "GPU-1", MemoryUsedBytes: 1 << 30, GPUTimeNs: 3e9, ThrottledNs: 5e8},
		region.Device{UUID: "GPU-not-ours", MemoryUsedBytes: 7, GPUTimeNs: 7, ThrottledNs: 7},
	)
	if err := os.WriteFile(good, img, 0o644); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(dir, "corrupt.shr")
	if err := os.WriteFile(corrupt, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := fakeSource{
		{Namespace: "ns", Name: "a", UID: "u1", RegionPath: good, GPUs: []GPUQuota{{Index: 0, UUID: "GPU-1", MemoryBytes: 2 << 30}}},
		{Namespace: "ns", Name: "b", UID: "u2", RegionPath: corrupt, GPUs: []GPUQuota{{Index: 0, UUID: "GPU-1", MemoryBytes: 1 << 30}}},
		{Namespace: "ns", Name: "c", UID: "u3", RegionPath: filepath.Join(dir, "none.shr"), GPUs: []GPUQuota{{Index: 0, UUID: "GPU-2", MemoryBytes: 1}}},
	}
	srv := httptest.NewServer(Handler(src, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	for _, want := range []string{
		`hami_dra_claim_memory_used_bytes{claim="a",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u1"} 1.073741824e+09`,
		`hami_dra_claim_gpu_time_seconds_total{claim="a",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u1"} 3`,
		`hami_dra_claim_throttled_seconds_total{claim="a",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u1"} 0.5`,
		`hami_dra_claim_memory_used_bytes{claim="b",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u2"} 0`,
		`hami_dra_claim_memory_used_bytes{claim="c",containers="",gpu_uuid="GPU-2",index="0",namespace="ns",node="",pod="",uid="u3"} 0`,
		`hami_dra_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 1.073741824e+09`,
		`hami_dra_claim_memory_limit_bytes{claim="b",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u2"} 1.073741824e+09`,
		// libvgpu's region: readable, damaged, or none.
		`hami_dra_claim_libvgpu_region{claim="a",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u1"} 1`,
		`hami_dra_claim_libvgpu_region{claim="b",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u2"} 0`,
		`hami_dra_claim_libvgpu_region{claim="c",containers="",gpu_uuid="GPU-2",index="0",namespace="ns",node="",pod="",uid="u3"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, "GPU-not-ours") {
		t.Errorf("metrics report a GPU that is not the claim's (the region is container-writable)")
	}
}

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
		`hami_dra_claim_memory_limit_bytes{claim="a",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u1"} 100`,
		`hami_dra_claim_cores_limit_percent{claim="b",containers="",gpu_uuid="GPU-1",index="0",namespace="ns",node="",pod="",uid="u2"} 20`,
		`hami_dra_prepared_claims 2`,
		`hami_dra_gpu_allocated_memory_bytes{gpu_uuid="GPU-1"} 150`,
		`hami_dra_gpu_allocated_cores_percent{gpu_uuid="GPU-1"} 50`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
