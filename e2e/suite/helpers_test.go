package suite

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/e2e/plugin"
)

const driver = plugin.DriverName

func client() kubernetes.Interface { return env.Cluster.Client }

func testContext(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// newNamespace creates a namespace for one test and, when the test ends,
// deletes its workloads and waits until their pods are gone and their
// claims released, so that the next test starts on free GPUs. (No namespace
// controller runs, so the namespace itself stays.)
func newNamespace(t *testing.T, name string) string {
	t.Helper()
	ctx := testContext(t, time.Minute)
	ns := fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%100000)
	if _, err := client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() { cleanNamespace(t, ns) })
	return ns
}

func cleanNamespace(t *testing.T, ns string) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := client()
	bg := metav1.DeletePropagationBackground
	// Controllers first, or they recreate the pods deleted below.
	_ = c.AppsV1().Deployments(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
	_ = c.AppsV1().StatefulSets(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
	_ = c.BatchV1().Jobs(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
	_ = c.AppsV1().ReplicaSets(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
	_ = c.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("cleanup: pods of %s not gone: %v", ns, err)
		return
	}
	_ = c.ResourceV1().ResourceClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		claims, err := c.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(claims.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("cleanup: claims of %s not gone: %v", ns, err)
	}
	t.Logf("cleanup of %s took %v", ns, time.Since(start).Round(100*time.Millisecond))
}

// gpuRequest is one request of a claim.
type gpuRequest struct {
	name      string
	class     string // default: the driver's class
	count     int64
	memory    string // "" = not requested
	cores     string
	selectors []string
}

func (r gpuRequest) build() resourceapi.DeviceRequest {
	exact := &resourceapi.ExactDeviceRequest{DeviceClassName: r.class}
	if exact.DeviceClassName == "" {
		exact.DeviceClassName = driver
	}
	if r.count > 0 {
		exact.AllocationMode, exact.Count = resourceapi.DeviceAllocationModeExactCount, r.count
	}
	for _, expr := range r.selectors {
		exact.Selectors = append(exact.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: expr}})
	}
	reqs := map[resourceapi.QualifiedName]resource.Quantity{}
	if r.memory != "" {
		reqs["memory"] = resource.MustParse(r.memory)
	}
	if r.cores != "" {
		reqs["cores"] = resource.MustParse(r.cores)
	}
	if len(reqs) > 0 {
		exact.Capacity = &resourceapi.CapacityRequirements{Requests: reqs}
	}
	return resourceapi.DeviceRequest{Name: r.name, Exactly: exact}
}

// claimSpec builds a claim spec; config, if not nil, is the claim's opaque
// VgpuConfig parameters for all requests.
func claimSpec(requests []gpuRequest, constraints []resourceapi.DeviceConstraint, config map[string]any) resourceapi.ResourceClaimSpec {
	spec := resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Constraints: constraints}}
	for _, r := range requests {
		spec.Devices.Requests = append(spec.Devices.Requests, r.build())
	}
	if config != nil {
		raw, err := json.Marshal(config)
		if err != nil {
			panic(err)
		}
		spec.Devices.Config = []resourceapi.DeviceClaimConfiguration{{
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: driver, Parameters: runtime.RawExtension{Raw: raw},
			}},
		}}
	}
	return spec
}

func createTemplate(t *testing.T, ns, name string, spec resourceapi.ResourceClaimSpec) {
	t.Helper()
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: spec},
	}
	if _, err := client().ResourceV1().ResourceClaimTemplates(ns).Create(testContext(t, 30*time.Second), tmpl, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ResourceClaimTemplate %s: %v", name, err)
	}
}

// podSpec is a pod whose one container runs script with sh and uses the
// claim made from template. node, if set, pins it to a node.
func podSpec(template, node, script string) corev1.PodSpec {
	spec := corev1.PodSpec{
		RestartPolicy:                 corev1.RestartPolicyAlways,
		TerminationGracePeriodSeconds: ptr.To(int64(2)),
		Containers: []corev1.Container{{
			Name:      "work",
			Image:     "busybox", // not pulled: the local runtime runs the command on the host
			Command:   []string{"sh", "-c", script},
			Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
		}},
		ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(template)}},
	}
	if node != "" {
		spec.NodeSelector = map[string]string{corev1.LabelHostname: node}
	}
	return spec
}

func createPod(t *testing.T, ns, name string, spec corev1.PodSpec) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	created, err := client().CoreV1().Pods(ns).Create(testContext(t, 30*time.Second), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return created
}

func createDeployment(t *testing.T, ns, name string, replicas int32, spec corev1.PodSpec) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	if _, err := client().AppsV1().Deployments(ns).Create(testContext(t, 30*time.Second), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment %s: %v", name, err)
	}
}

// eventually polls cond until it returns true, failing the test with the
// last reason it gave after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	ctx := testContext(t, timeout+10*time.Second)
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, why := cond(ctx)
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %v: %s", what, timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func listPods(ctx context.Context, ns, selector string) ([]corev1.Pod, error) {
	pods, err := client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Name < pods.Items[j].Name })
	return pods.Items, nil
}

func isRunning(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podCondition(p, corev1.PodReady) == corev1.ConditionTrue
}

func podCondition(p *corev1.Pod, typ corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return corev1.ConditionUnknown
}

// unschedulable returns the scheduler's message for a pod it could not
// place, or "" if the pod is not marked unschedulable.
func unschedulable(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return c.Message
		}
	}
	return ""
}

func waitRunning(t *testing.T, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, timeout, "pod "+ns+"/"+name+" running", func(ctx context.Context) (bool, string) {
		p, err := client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pod = p
		return isRunning(p), describePod(p)
	})
	return pod
}

func describePod(p *corev1.Pod) string {
	s := fmt.Sprintf("phase %s node %q", p.Status.Phase, p.Spec.NodeName)
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			s += fmt.Sprintf("; %s=%s: %s", c.Type, c.Status, c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Message != "" {
			s += fmt.Sprintf("; container %s waiting (%s): %s", cs.Name, w.Reason, w.Message)
		}
		if term := cs.State.Terminated; term != nil {
			s += fmt.Sprintf("; container %s exited %d", cs.Name, term.ExitCode)
		}
	}
	return s
}

// podClaim returns the allocated claim of the pod's claim "gpu".
func podClaim(ctx context.Context, p *corev1.Pod) (*resourceapi.ResourceClaim, error) {
	for _, s := range p.Status.ResourceClaimStatuses {
		if s.Name == "gpu" && s.ResourceClaimName != nil {
			return client().ResourceV1().ResourceClaims(p.Namespace).Get(ctx, *s.ResourceClaimName, metav1.GetOptions{})
		}
	}
	return nil, fmt.Errorf("pod %s has no generated claim yet", p.Name)
}

func allocation(t *testing.T, p *corev1.Pod) []resourceapi.DeviceRequestAllocationResult {
	t.Helper()
	claim, err := podClaim(testContext(t, 30*time.Second), p)
	if err != nil {
		t.Fatal(err)
	}
	if claim.Status.Allocation == nil {
		t.Fatalf("claim %s of pod %s is not allocated", claim.Name, p.Name)
	}
	return claim.Status.Allocation.Devices.Results
}

// deviceAttributes maps "<pool>/<device>" to the device's attributes, from
// every published ResourceSlice of the driver.
func deviceAttributes(t *testing.T) map[string]map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	t.Helper()
	slices, err := client().ResourceV1().ResourceSlices().List(testContext(t, 30*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{}
	for _, s := range slices.Items {
		if s.Spec.Driver != driver {
			continue
		}
		for _, d := range s.Spec.Devices {
			out[s.Spec.Pool.Name+"/"+d.Name] = d.Attributes
		}
	}
	return out
}

func podLogs(ctx context.Context, p *corev1.Pod) (string, error) {
	data, err := client().CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	return string(data), err
}

// waitLog waits until the pod's log contains want and returns the log.
func waitLog(t *testing.T, p *corev1.Pod, want string, timeout time.Duration) string {
	t.Helper()
	var log string
	eventually(t, timeout, fmt.Sprintf("log of %s/%s contains %q", p.Namespace, p.Name, want), func(ctx context.Context) (bool, string) {
		var err error
		log, err = podLogs(ctx, p)
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(log, want), "log so far:\n" + log
	})
	return log
}

// runKubectl runs the suite's kubectl against the local cluster.
func runKubectl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(kubectl, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env.Cluster.Kubeconfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func deletePod(t *testing.T, ns, name string) {
	t.Helper()
	if err := client().CoreV1().Pods(ns).Delete(testContext(t, 30*time.Second), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s: %v", name, err)
	}
}

func waitGone(t *testing.T, ns, name string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "pod "+ns+"/"+name+" gone", func(ctx context.Context) (bool, string) {
		p, err := client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		return false, describePod(p)
	})
}
