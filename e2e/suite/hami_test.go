package suite

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/e2e/chart"
	"github.com/hami-dra/hami-dra/e2e/cluster"
)

// TestHAMiWebhook runs HAMi users' manifests, unchanged, on the local
// cluster with the real hami-webhook binary registered through the chart's
// MutatingWebhookConfiguration (its clientConfig pointed at the process on
// 127.0.0.1 with a CA generated here), and checks that the quota inside each
// container is what HAMi would have enforced.
func TestHAMiWebhook(t *testing.T) {
	startHAMiWebhook(t)
	examples := filepath.Join(env.RepoRoot, "deployments", "examples", "hami")

	t.Run("deployment, rollout and recreated pods", func(t *testing.T) {
		ns := newNamespace(t, "hami-deploy")
		runKubectl(t, "apply", "-n", ns, "-f", filepath.Join(examples, "deployment.yaml"))
		pods := waitHAMiPods(t, ns, "app=hami-inference", 2, "")
		for _, p := range pods {
			checkHAMiQuota(t, &p, 10240, 30)
		}
		first := templateOf(&pods[0])

		// A rollout that changes the GPU request: new pods, new template.
		d, err := client().AppsV1().Deployments(ns).Get(testContext(t, 10*time.Second), "hami-inference", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Spec.Template.Spec.Containers[0].Resources.Limits["nvidia.com/gpumem"] = resource.MustParse("8192")
		if _, err := client().AppsV1().Deployments(ns).Update(testContext(t, 10*time.Second), d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		pods = waitHAMiPods(t, ns, "app=hami-inference", 2, first)
		for _, p := range pods {
			checkHAMiQuota(t, &p, 8192, 30)
		}

		// A deleted pod is recreated by its ReplicaSet with a new claim.
		deletePod(t, ns, pods[0].Name)
		waitGone(t, ns, pods[0].Name, time.Minute)
		pods = waitHAMiPods(t, ns, "app=hami-inference", 2, first)
		for _, p := range pods {
			checkHAMiQuota(t, &p, 8192, 30)
		}
	})

	t.Run("pod running a CUDA program", func(t *testing.T) {
		ns := newNamespace(t, "hami-cuda")
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "cuda", Namespace: ns, Annotations: map[string]string{"nvidia.com/use-gputype": "a100"}},
			Spec: corev1.PodSpec{
				RestartPolicy:                 corev1.RestartPolicyAlways,
				TerminationGracePeriodSeconds: ptr.To(int64(2)),
				Containers: []corev1.Container{{
					Name:    "work",
					Image:   "busybox",
					Command: []string{"sh", "-c", strings.Join([]string{`env | grep -E '^CUDA_DEVICE_(MEMORY|SM)_LIMIT' | sort`, quotaProbe + ` 6144 6144 1`, `exec sleep 3600`}, "\n")},
					Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
						"nvidia.com/gpu": resource.MustParse("1"), "nvidia.com/gpumem": resource.MustParse("12288"), "nvidia.com/gpucores": resource.MustParse("25"),
					}},
				}},
			},
		}
		created, err := client().CoreV1().Pods(ns).Create(testContext(t, 30*time.Second), pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := created.Spec.Containers[0].Resources.Limits["nvidia.com/gpu"]; ok || len(created.Spec.ResourceClaims) != 1 {
			t.Fatalf("the webhook did not rewrite the pod: limits %v, claims %+v", created.Spec.Containers[0].Resources.Limits, created.Spec.ResourceClaims)
		}
		running := waitRunning(t, ns, "cuda", 2*time.Minute)
		log := waitLog(t, running, "alloc 1 MiB", 30*time.Second)
		t.Logf("pod log:\n%s", log)
		for _, want := range []string{
			fmt.Sprintf("CUDA_DEVICE_MEMORY_LIMIT_0=%d", int64(12288)<<20),
			"CUDA_DEVICE_SM_LIMIT_0=25",
			"alloc 1 MiB: CUDA_ERROR_OUT_OF_MEMORY",
		} {
			if !strings.Contains(log, want) {
				t.Errorf("pod log lacks %q", want)
			}
		}
		if n := strings.Count(log, "alloc 6144 MiB: CUDA_SUCCESS"); n != 2 {
			t.Errorf("%d of the two 6 GiB allocations within the 12 GiB gpumem succeeded", n)
		}
		if p := gpuProducts(t, running); len(p) != 1 || !strings.Contains(p[0], "A100") {
			t.Errorf("use-gputype a100 got %v", p)
		}
	})

	t.Run("multi-GPU pod", func(t *testing.T) {
		ns := newNamespace(t, "hami-multi")
		runKubectl(t, "apply", "-n", ns, "-f", filepath.Join(examples, "multi-gpu.yaml"))
		pod := waitRunning(t, ns, "hami-multi-gpu", 2*time.Minute)
		log := waitLog(t, pod, "NVIDIA-SMI", 30*time.Second)
		t.Logf("nvidia-smi:\n%s", log)
		if n := strings.Count(log, "/ 20480MiB"); n != 2 {
			t.Errorf("nvidia-smi shows %d GPUs with 20480MiB, want 2", n)
		}
		results := hamiClaim(t, pod).Status.Allocation.Devices.Results
		if len(results) != 2 || results[0].Device == results[1].Device {
			t.Fatalf("want two different GPUs, got %+v", results)
		}
		for _, p := range gpuProducts(t, pod) {
			if !strings.Contains(p, "H100") {
				t.Errorf("use-gputype H100 got %s", p)
			}
		}
	})

	t.Run("job with gpumem-percentage", func(t *testing.T) {
		ns := newNamespace(t, "hami-job")
		t.Cleanup(func() {
			bg := metav1.DeletePropagationBackground
			_ = client().BatchV1().Jobs(ns).Delete(context.Background(), "hami-batch", metav1.DeleteOptions{PropagationPolicy: &bg})
		})
		// The pod's generated claim, as allocated: the resourceclaim
		// controller deletes it once the pod has finished, which may be
		// before a poll sees it, so it is watched from the start.
		var mu sync.Mutex
		var claim *resourceapi.ResourceClaim
		watchCtx, stopWatch := context.WithCancel(context.Background())
		defer stopWatch()
		w, err := client().ResourceV1().ResourceClaims(ns).Watch(watchCtx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for ev := range w.ResultChan() {
				if c, ok := ev.Object.(*resourceapi.ResourceClaim); ok && c.Status.Allocation != nil {
					mu.Lock()
					claim = c.DeepCopy()
					mu.Unlock()
				}
			}
		}()
		runKubectl(t, "apply", "-n", ns, "-f", filepath.Join(examples, "job.yaml"))
		var job *batchv1.Job
		eventually(t, 2*time.Minute, "job hami-batch succeeded", func(ctx context.Context) (bool, string) {
			j, err := client().BatchV1().Jobs(ns).Get(ctx, "hami-batch", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			job = j
			pods, _ := listPods(ctx, ns, "job-name=hami-batch")
			var states []string
			for i := range pods {
				states = append(states, pods[i].Name+": "+describePod(&pods[i]))
			}
			mu.Lock()
			seen := claim != nil
			mu.Unlock()
			return j.Status.Succeeded == 1 && seen, fmt.Sprintf("job status %+v; pods: %s (no Job controller in the local cluster?)", j.Status, strings.Join(states, "; "))
		})
		pods, err := listPods(testContext(t, 10*time.Second), ns, "job-name=hami-batch")
		if err != nil || len(pods) == 0 {
			t.Fatalf("pods of job %s: %v", job.Name, err)
		}
		pod := &pods[0]
		// HAMi: gpumem-percentage 50 is half of the GPU the pod got.
		mu.Lock()
		defer mu.Unlock()
		gpuMiB := gpuMemoryMiB(t, claim)
		want := gpuMiB * 50 / 100
		log := waitLog(t, pod, "NVIDIA-SMI", 30*time.Second)
		t.Logf("GPU of %d MiB; nvidia-smi:\n%s", gpuMiB, log)
		if !strings.Contains(log, fmt.Sprintf("/ %dMiB", want)) {
			t.Errorf("nvidia-smi does not show %d MiB (50%% of %d)", want, gpuMiB)
		}
		consumed := claim.Status.Allocation.Devices.Results[0].ConsumedCapacity
		if c := consumed["cores"]; c.Value() != 50 {
			t.Errorf("consumed cores %s, want 50", c.String())
		}
	})

	t.Run("bad manifest is rejected with the field", func(t *testing.T) {
		ns := newNamespace(t, "hami-bad")
		cmd := exec.Command(kubectl, "apply", "-n", ns, "-f", filepath.Join(examples, "bad-gpucores.yaml"))
		cmd.Env = append(os.Environ(), "KUBECONFIG="+env.Cluster.Kubeconfig)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("kubectl apply accepted gpucores 150:\n%s", out)
		}
		// The webhook answers with a field error, which the API server
		// passes on as the pod being invalid.
		for _, want := range []string{`"hami-bad-gpucores" is invalid`, "spec.containers[0].resources.limits[nvidia.com/gpucores]", `Invalid value: "150"`, "must be 0..100 (percent of a GPU's compute)"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("kubectl output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("pods without HAMi resources are not sent to the webhook", func(t *testing.T) {
		ns := newNamespace(t, "hami-other")
		createTemplate(t, ns, "plain", claimSpec([]gpuRequest{{name: "gpu", memory: "1Gi"}}, nil, nil))
		before := webhookRequests(t)
		pod := createPod(t, ns, "plain", podSpec("plain", "", "nvidia-smi; exec sleep 3600"))
		waitRunning(t, ns, pod.Name, time.Minute)
		if after := webhookRequests(t); after != before {
			t.Errorf("the webhook served %d admission requests for a pod without HAMi resources", after-before)
		}
	})
}

// webhookLog is the running webhook's log file.
var webhookLog string

// webhookRequests counts the admission requests the webhook has logged.
func webhookRequests(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile(webhookLog)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "Admission request")
}

// startHAMiWebhook builds and starts cmd/hami-webhook and registers it with
// the API server for the duration of the test.
func startHAMiWebhook(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(env.RepoRoot, "e2e", "bin", "hami-webhook")
	build := exec.Command("go", "build", "-o", bin, "./cmd/hami-webhook")
	build.Dir = env.RepoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build hami-webhook: %v\n%s", err, out)
	}
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey("127.0.0.1", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	webhookLog = filepath.Join(env.WorkDir, "hami-webhook.log")
	logFile, err := os.Create(webhookLog)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--listen-address="+addr, "--tls-cert-file="+certFile, "--tls-key-file="+keyFile,
		"--kubeconfig="+env.Cluster.Kubeconfig, "-v=4")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		_ = logFile.Close()
		if t.Failed() {
			data, _ := os.ReadFile(webhookLog)
			t.Logf("hami-webhook log:\n%s", data)
		}
	})

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	httpClient := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	eventually(t, time.Minute, "hami-webhook serving /healthz", func(ctx context.Context) (bool, string) {
		resp, err := httpClient.Get("https://" + addr + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})

	// The chart's MutatingWebhookConfiguration, as installed with
	// webhook.enabled=true, pointed at this process.
	objs, err := chart.Render(map[string]any{"webhook": map[string]any{"enabled": true}})
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	found := false
	for _, o := range objs {
		if o.GetKind() == "MutatingWebhookConfiguration" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &mwc); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		t.Fatal("the chart renders no MutatingWebhookConfiguration")
	}
	url := "https://" + addr + "/mutate"
	mwc.Webhooks[0].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: certPEM}
	ctx := testContext(t, 30*time.Second)
	if _, err := client().AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client().AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), mwc.Name, metav1.DeleteOptions{})
	})
	// The API server picks up webhook configurations from an informer:
	// wait until a HAMi pod is rewritten (a dry run creates nothing).
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox", Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")},
		}}}},
	}
	eventually(t, 30*time.Second, "the API server calls the webhook", func(ctx context.Context) (bool, string) {
		p, err := client().CoreV1().Pods("default").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err.Error()
		}
		return len(p.Spec.ResourceClaims) == 1, fmt.Sprintf("claims %+v", p.Spec.ResourceClaims)
	})
}

// waitHAMiPods waits until want pods match selector, all running, none
// from the template notFrom, and returns them.
func waitHAMiPods(t *testing.T, ns, selector string, want int, notFrom string) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, 3*time.Minute, fmt.Sprintf("%d running pods %s", want, selector), func(ctx context.Context) (bool, string) {
		list, err := listPods(ctx, ns, selector)
		if err != nil {
			return false, err.Error()
		}
		pods = list
		ok := len(list) == want
		var states []string
		for i := range list {
			ok = ok && isRunning(&list[i]) && templateOf(&list[i]) != notFrom
			states = append(states, list[i].Name+" ("+templateOf(&list[i])+"): "+describePod(&list[i]))
		}
		return ok, strings.Join(states, "\n")
	})
	return pods
}

// templateOf is the ResourceClaimTemplate the webhook gave the pod.
func templateOf(p *corev1.Pod) string {
	for _, rc := range p.Spec.ResourceClaims {
		if rc.Name == "hami-gpu" && rc.ResourceClaimTemplateName != nil {
			return *rc.ResourceClaimTemplateName
		}
	}
	return ""
}

// hamiClaim is the pod's claim generated from the webhook's template.
func hamiClaim(t *testing.T, p *corev1.Pod) *resourceapi.ResourceClaim {
	t.Helper()
	ctx := testContext(t, 30*time.Second)
	for _, s := range p.Status.ResourceClaimStatuses {
		if s.Name == "hami-gpu" && s.ResourceClaimName != nil {
			c, err := client().ResourceV1().ResourceClaims(p.Namespace).Get(ctx, *s.ResourceClaimName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if c.Status.Allocation == nil {
				t.Fatalf("claim %s not allocated", c.Name)
			}
			// Owned by the pod: deleted with it.
			if len(c.OwnerReferences) != 1 || c.OwnerReferences[0].UID != p.UID {
				t.Errorf("claim %s owners %+v, want pod %s", c.Name, c.OwnerReferences, p.Name)
			}
			return c
		}
	}
	t.Fatalf("pod %s has no generated hami-gpu claim", p.Name)
	return nil
}

// checkHAMiQuota checks what HAMi would have enforced: nvidia-smi in the
// container shows gpumem MiB, and the claim holds gpumem and gpucores.
func checkHAMiQuota(t *testing.T, p *corev1.Pod, memMiB, cores int64) {
	t.Helper()
	log := waitLog(t, p, "NVIDIA-SMI", 30*time.Second)
	if !strings.Contains(log, fmt.Sprintf("/ %dMiB", memMiB)) {
		t.Errorf("nvidia-smi in %s does not show %d MiB:\n%s", p.Name, memMiB, log)
	}
	for _, r := range hamiClaim(t, p).Status.Allocation.Devices.Results {
		mem, c := r.ConsumedCapacity["memory"], r.ConsumedCapacity["cores"]
		if mem.Value() != memMiB<<20 || c.Value() != cores {
			t.Errorf("pod %s consumes memory %s, cores %s; want %dMi, %d", p.Name, mem.String(), c.String(), memMiB, cores)
		}
	}
}

// gpuProducts lists the product names of the GPUs the pod's claim got.
func gpuProducts(t *testing.T, p *corev1.Pod) []string {
	t.Helper()
	attrs := deviceAttributes(t)
	var out []string
	for _, r := range hamiClaim(t, p).Status.Allocation.Devices.Results {
		out = append(out, stringAttr(attrs[r.Pool+"/"+r.Device], "productName"))
	}
	return out
}

// gpuMemoryMiB is the memory of the (first) GPU the pod's claim got.
func gpuMemoryMiB(t *testing.T, c *resourceapi.ResourceClaim) int64 {
	t.Helper()
	r := c.Status.Allocation.Devices.Results[0]
	slices, err := client().ResourceV1().ResourceSlices().List(testContext(t, 30*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slices.Items {
		if s.Spec.Pool.Name != r.Pool {
			continue
		}
		for _, d := range s.Spec.Devices {
			if d.Name == r.Device {
				c := d.Capacity["memory"]
				return c.Value.Value() >> 20
			}
		}
	}
	t.Fatalf("device %s/%s not published", r.Pool, r.Device)
	return 0
}
