package realnodesuite

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/e2e/localcluster"
)

func client() kubernetes.Interface { return env.Cluster.Client }

func needRealNode(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

func testContext(t *testing.T, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// newNamespace creates a namespace for one test and deletes it afterwards;
// the namespace controller of the cluster's kube-controller-manager removes
// what is left in it (pods first, so that their claims are unprepared).
func newNamespace(t *testing.T, name string) string {
	t.Helper()
	ns := fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%100000)
	if _, err := client().CoreV1().Namespaces().Create(testContext(t, 30*time.Second),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := client().CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", ns, err)
			return
		}
		err := wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			_, err := client().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Errorf("namespace %s not deleted within 2 minutes: %v", ns, err)
		}
	})
	return ns
}

// createTemplate creates a ResourceClaimTemplate asking vgpu.hami.io for
// one GPU share of memory and cores.
func createTemplate(t *testing.T, ns, name, memory, cores string) {
	t.Helper()
	capacity := map[resourceapi.QualifiedName]resource.Quantity{"memory": resource.MustParse(memory)}
	if cores != "" {
		capacity["cores"] = resource.MustParse(cores)
	}
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: "vgpu.hami.io",
				Capacity:        &resourceapi.CapacityRequirements{Requests: capacity},
			}}},
		}}},
	}
	if _, err := client().ResourceV1().ResourceClaimTemplates(ns).Create(testContext(t, 30*time.Second), tmpl, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create template %s: %v", name, err)
	}
}

// container is one container of the CUDA image running script with sh,
// using the pod's claim "gpu".
func container(name, script string) corev1.Container {
	return corev1.Container{
		Name:            name,
		Image:           localcluster.CUDAImage,
		ImagePullPolicy: corev1.PullNever,
		Command:         []string{"/bin/sh", "-c", script},
		Resources:       corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
		VolumeMounts:    []corev1.VolumeMount{{Name: "shared", MountPath: "/shared"}},
	}
}

// realPod is a pod for the real node: hostNetwork (the node has no pod
// network, see package realnode), the node's taint tolerated, the claim from template, an emptyDir
// "shared" between its containers.
func realPod(ns, name, template string, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			HostNetwork:                   true,
			RestartPolicy:                 corev1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: ptr.To(int64(2)),
			NodeSelector:                  map[string]string{corev1.LabelHostname: realNodeName},
			Tolerations:                   []corev1.Toleration{{Key: localcluster.RealNodeTaint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
			Containers:                    containers,
			ResourceClaims:                []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(template)}},
			Volumes:                       []corev1.Volume{{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
	}
}

func createPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	created, err := client().CoreV1().Pods(pod.Namespace).Create(testContext(t, 30*time.Second), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	return created
}

// eventually polls cond until it returns true, failing the test with the
// last reason it gave after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	ctx := testContext(t, timeout+10*time.Second)
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, reason := cond(ctx)
		if ok {
			return
		}
		last = reason
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v: %s", what, timeout, last)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// waitReady waits until every container of the pod is ready (running).
func waitReady(t *testing.T, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, timeout, "pod "+ns+"/"+name+" running", func(ctx context.Context) (bool, string) {
		p, err := client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pod = p
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.ContainersReady && c.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, describePod(ctx, p)
	})
	return pod
}

// describePod is the pod's phase, conditions, container states and events:
// what `kubectl describe` would say.
func describePod(ctx context.Context, p *corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s on %q", p.Status.Phase, p.Spec.NodeName)
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			fmt.Fprintf(&b, "; %s=%s %s %s", c.Type, c.Status, c.Reason, c.Message)
		}
	}
	for _, s := range p.Status.ContainerStatuses {
		switch {
		case s.State.Waiting != nil:
			fmt.Fprintf(&b, "; %s waiting: %s %s", s.Name, s.State.Waiting.Reason, s.State.Waiting.Message)
		case s.State.Terminated != nil:
			fmt.Fprintf(&b, "; %s terminated: %d %s", s.Name, s.State.Terminated.ExitCode, s.State.Terminated.Reason)
		}
	}
	events, err := client().CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
	if err == nil {
		for _, e := range events.Items {
			if e.Type == corev1.EventTypeWarning {
				fmt.Fprintf(&b, "; event %s: %s", e.Reason, e.Message)
			}
		}
	}
	return b.String()
}

// logs returns a container's log through the API server, which reads it
// from the kubelet.
func logs(ctx context.Context, p *corev1.Pod, container string, previous bool) (string, error) {
	data, err := client().CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: container, Previous: previous}).DoRaw(ctx)
	return string(data), err
}

// waitLog waits until a container's log contains want and returns it.
func waitLog(t *testing.T, p *corev1.Pod, container, want string, timeout time.Duration) string {
	t.Helper()
	var log string
	eventually(t, timeout, fmt.Sprintf("log of %s/%s contains %q", p.Name, container, want), func(ctx context.Context) (bool, string) {
		l, err := logs(ctx, p, container, false)
		if err != nil {
			return false, err.Error()
		}
		log = l
		return strings.Contains(l, want), l
	})
	return log
}

func podClaim(t *testing.T, p *corev1.Pod) *resourceapi.ResourceClaim {
	t.Helper()
	ctx := testContext(t, 10*time.Second)
	p, err := client().CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Status.ResourceClaimStatuses) == 0 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		t.Fatalf("pod %s has no generated claim", p.Name)
	}
	claim, err := client().ResourceV1().ResourceClaims(p.Namespace).Get(ctx, *p.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return claim
}

// wantAll reports every line of want that text lacks.
func wantAll(t *testing.T, what, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

// pluginMetrics reads the real node's plugin's /metrics.
func pluginMetrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rnode.MetricsURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}
