package suite

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestInsidePod: what a container of a claim sees. The quota environment,
// libvgpu preloaded through a read-only /etc/ld.so.preload, the per-claim
// directory; nvidia-smi and a CUDA program built against the fake driver
// report the quota as the GPU's memory, allocations below it succeed and
// the one past it fails.
func TestInsidePod(t *testing.T) {
	ns := newNamespace(t, "inside")
	createTemplate(t, ns, "gpu-20gi-30", claimSpec([]gpuRequest{{name: "gpu", memory: "20Gi", cores: "30"}}, nil, nil))
	script := strings.Join([]string{
		`env | grep -E '^(CUDA_|VGPU_|LIBCUDA_|GPU_CORE_|LD_PRELOAD)' | sort`,
		`echo "preload: $(cat /etc/ld.so.preload)"`,
		`if echo x > /etc/ld.so.preload 2>/dev/null; then echo "preload: writable"; else echo "preload: read-only"; fi`,
		`if echo x > /usr/local/vgpu/libvgpu.so 2>/dev/null; then echo "libvgpu: writable"; else echo "libvgpu: read-only"; fi`,
		`touch /run/hami-dra/claim/probe && echo "claim dir: writable"`,
		`nvidia-smi`,
		quotaProbe + ` 10240 10240 1`,
		`ls /run/hami-dra/claim`,
		// Keep 3 GiB in use, for the plugin's usage metrics.
		`exec ` + quotaProbe + ` --hold 3072`,
	}, "\n")
	pod := waitRunning(t, ns, createPod(t, ns, "inside", podSpec("gpu-20gi-30", "node-a100", script)).Name, time.Minute)
	log := waitLog(t, pod, "holding", 30*time.Second)
	t.Logf("pod log:\n%s", log)

	wantLines := []string{
		fmt.Sprintf("CUDA_DEVICE_MEMORY_LIMIT_0=%d", int64(20)<<30),
		"CUDA_DEVICE_SM_LIMIT_0=30",
		"CUDA_DEVICE_MEMORY_SHARED_CACHE=/run/hami-dra/claim/vgpu.shr",
		"CUDA_DEVICE_ORDER=PCI_BUS_ID",
		"preload: /usr/local/vgpu/libvgpu.so",
		"preload: read-only",
		"libvgpu: read-only",
		"claim dir: writable",
		"alloc 10240 MiB: CUDA_SUCCESS",
		"alloc 1 MiB: CUDA_ERROR_OUT_OF_MEMORY",
		"free after allocations: 0 MiB",
		"nvml 0 total_mib=20480 free_mib=20480",
	}
	for _, want := range wantLines {
		if !strings.Contains(log, want) {
			t.Errorf("pod log lacks %q", want)
		}
	}
	if n := strings.Count(log, "alloc 10240 MiB: CUDA_SUCCESS"); n != 2 {
		t.Errorf("%d of the two 10 GiB allocations succeeded, want both", n)
	}
	if !strings.Contains(log, "total_mib=20480 free_mib=20480 device_total_mib=20480") {
		t.Errorf("cuMemGetInfo/cuDeviceTotalMem do not report the 20 GiB quota")
	}
	if !strings.Contains(log, "/ 20480MiB") {
		t.Errorf("nvidia-smi does not show the 20 GiB quota")
	}
	// libvgpu created the claim's accounting region in the per-claim
	// directory, on the host side of the mount.
	if !strings.Contains(log, "vgpu.shr") {
		t.Errorf("the claim directory holds no accounting region after a CUDA program ran")
	}
	claim, err := podClaim(testContext(t, 10*time.Second), pod)
	if err != nil {
		t.Fatal(err)
	}
	region := filepath.Join(env.Node("node-a100").Plugin.Config().StateDir, "claims", string(claim.UID), "vgpu.shr")
	if _, err := os.Stat(region); err != nil {
		t.Errorf("accounting region on the host: %v", err)
	}

	// The plugin's metrics: the claim's quota, and the usage libvgpu
	// accounts in the region (the holding process's 3 GiB).
	labels := fmt.Sprintf(`{claim="%s",containers="",gpu_uuid="%s",index="0",namespace="%s",node="node-a100",pod="",uid="%s"}`,
		claim.Name, stringAttr(deviceAttributes(t)["node-a100/"+claim.Status.Allocation.Devices.Results[0].Device], "uuid"), ns, claim.UID)
	for _, want := range []string{
		"hami_dra_claim_memory_limit_bytes" + labels + " 2.147483648e+10",
		"hami_dra_claim_cores_limit_percent" + labels + " 30",
		"hami_dra_claim_memory_used_bytes" + labels + " 3.221225472e+09",
	} {
		eventually(t, 10*time.Second, "plugin metric "+want, func(ctx context.Context) (bool, string) {
			body, err := scrape(ctx, env.Node("node-a100").MetricsURL)
			if err != nil {
				return false, err.Error()
			}
			return strings.Contains(body, want), body
		})
	}
}

func scrape(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return string(data), err
}
