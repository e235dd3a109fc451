package chart

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	etcd3testing "k8s.io/apiserver/pkg/storage/etcd3/testing"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	dracel "k8s.io/dynamic-resource-allocation/cel"
	apiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/internal/gpumodel"
)

// startAPIServer runs etcd and a kube-apiserver (1.37, default feature gates)
// in this process, with RBAC authorization so that permissions are real, and
// returns an admin client configuration.
func startAPIServer(t *testing.T, extraFlags ...string) *rest.Config {
	t.Helper()
	_, etcdConfig := etcd3testing.NewUnsecuredEtcd3TestClientServer(t)
	storage := storagebackend.NewDefaultConfig(etcdConfig.Prefix, nil)
	storage.Transport = etcdConfig.Transport
	opts := apiservertesting.NewDefaultTestServerOptions()
	opts.DisableInvariantChecks = true
	srv, err := apiservertesting.StartTestServer(t, opts, append([]string{
		"--authorization-mode=RBAC",
		// As on every real cluster: the plugin must run privileged.
		"--allow-privileged=true",
		// Serve an older DRA version too, to show the policy covers it.
		"--runtime-config=resource.k8s.io/v1beta2=true",
		// Hand-made Nodes would otherwise be tainted not-ready.
		"--disable-admission-plugins=TaintNodesByCondition",
	}, extraFlags...), storage)
	if err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	t.Cleanup(srv.TearDownFn)
	return srv.ClientConfig
}

// TestAPIServer applies the chart's objects and the examples to a real
// kube-apiserver, then runs the plugin's identity against the RBAC and the
// admission policy.
func TestAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	cfg := startAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(cfg)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Server-side dry run: every object passes validation (schemas, CEL
	// selectors, the policy's CEL) and admission, nothing is stored.
	t.Run("dry-run defaults", func(t *testing.T) {
		objs := mustRender(t, nil)
		if err := Apply(ctx, cfg, objs, ApplyOptions{DryRun: true}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("dry-run full values", func(t *testing.T) {
		objs := mustRender(t, fullValues())
		if err := Apply(ctx, cfg, objs, ApplyOptions{DryRun: true}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("dry-run other release and namespace", func(t *testing.T) {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "gpu-system"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		objs, err := RenderWithOptions(Options{ReleaseName: "gpus", Namespace: "gpu-system"}, map[string]any{
			"driverName": "gpu.example.com",
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := Apply(ctx, cfg, objs, ApplyOptions{DryRun: true}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("dry-run examples", func(t *testing.T) {
		// No service account controller runs here; the ServiceAccount
		// admission plugin needs "default" to exist.
		if _, err := admin.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := Apply(ctx, cfg, examples(t), ApplyOptions{DryRun: true, Namespace: "default"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the API server rejects what the chart must not render", func(t *testing.T) {
		// A broken CEL selector is caught by the API server, which is
		// what the dry runs above rely on.
		objs := mustRender(t, nil)
		class := Find(objs, KindDeviceClass, "h100.vgpu.hami.io").DeepCopy()
		sels := []any{map[string]any{"cel": map[string]any{"expression": `device.attributes["vgpu.hami.io"].productName.contains(`}}}
		class.Object["spec"].(map[string]any)["selectors"] = sels
		err := Apply(ctx, cfg, []*unstructured.Unstructured{class}, ApplyOptions{DryRun: true})
		if err == nil || !strings.Contains(err.Error(), "compilation failed") {
			t.Fatalf("broken CEL accepted or unexpected error: %v", err)
		}
	})
	t.Run("admission policy type-checks", func(t *testing.T) {
		testPolicyTypeCheck(t, cfg)
	})
	t.Run("no API warnings", func(t *testing.T) {
		warned := &warnings{}
		wcfg := rest.CopyConfig(cfg)
		wcfg.WarningHandler = warned
		for _, values := range []map[string]any{nil, fullValues()} {
			if err := Apply(ctx, wcfg, mustRender(t, values), ApplyOptions{DryRun: true}); err != nil {
				t.Fatal(err)
			}
		}
		if len(warned.texts) > 0 {
			t.Errorf("the API server warned: %q", warned.texts)
		}
	})
	t.Run("dry-run platform profiles", func(t *testing.T) {
		names, err := Platforms()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			values, err := PlatformValues(name)
			if err != nil {
				t.Fatal(err)
			}
			opts := Options{}
			if name == "openshift" {
				// As OpenShift serves it: the SCC binding is rendered.
				opts.APIVersions = []string{"security.openshift.io/v1"}
			}
			objs, err := RenderWithOptions(opts, values)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if err := Apply(ctx, cfg, objs, ApplyOptions{DryRun: true}); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			t.Logf("%s: %v", name, kindsOf(objs))
		}
	})
	t.Run("helm install, upgrade, uninstall", func(t *testing.T) {
		testHelmInstall(ctx, t, cfg)
	})
	t.Run("helm install and uninstall each platform profile", func(t *testing.T) {
		testHelmInstallPlatforms(ctx, t, cfg)
	})
	t.Run("helm install next to NVIDIA's device plugin", func(t *testing.T) {
		testHelmDevicePlugin(ctx, t, cfg, admin)
	})
	t.Run("plugin identity", func(t *testing.T) {
		testPluginIdentity(ctx, t, cfg, admin)
	})
}

type warnings struct{ texts []string }

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.texts = append(w.texts, text)
}

// testPolicyTypeCheck runs the type checker of kube-controller-manager's
// ValidatingAdmissionPolicy status controller (which fills
// status.typeChecking in a real cluster) over the chart's policy, with the
// live API server's OpenAPI schemas: every expression must type-check
// against ResourceSlice of every served version.
func testPolicyTypeCheck(t *testing.T, cfg *rest.Config) {
	objs := mustRender(t, nil)
	u := Find(objs, KindValidatingAdmissionPolicy, "hami-dra-resourceslices")
	var policy admissionregistrationv1.ValidatingAdmissionPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &policy); err != nil {
		t.Fatal(err)
	}
	disc := discovery.NewDiscoveryClientForConfigOrDie(cfg)
	checker := &validating.TypeChecker{
		SchemaResolver: &resolver.ClientDiscoveryResolver{Discovery: disc},
		RestMapper:     restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
	}
	if w := checker.Check(&policy); len(w) > 0 {
		t.Errorf("type checking warnings: %+v", w)
	}
	// The checker does catch mistakes.
	broken := policy.DeepCopy()
	broken.Spec.Validations[1].Expression = "object.spec.nodeNam == variables.userNodeName"
	if w := checker.Check(broken); len(w) == 0 {
		t.Error("a misspelt field passed type checking; the check above proves nothing")
	}
}

const (
	nodeA = "gpu-node-a"
	nodeB = "gpu-node-b"
)

func testSlice(name, node string) *resourceapi.ResourceSlice {
	return &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourceapi.ResourceSliceSpec{
			Driver:   "vgpu.hami.io",
			NodeName: ptr.To(node),
			Pool:     resourceapi.ResourcePool{Name: node, Generation: 1, ResourceSliceCount: 1},
			Devices: []resourceapi.Device{{
				Name: "gpu-0",
				Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
					"productName": {StringValue: ptr.To("NVIDIA H100 80GB HBM3")},
				},
				Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
					"memory": {Value: resource.MustParse("80Gi")},
				},
			}},
		},
	}
}

// testPluginIdentity installs the chart's ServiceAccount, RBAC and admission
// policy for real, runs "the plugin" as a pod bound to node A and acts with
// that pod's token.
func testPluginIdentity(ctx context.Context, t *testing.T, cfg *rest.Config, admin kubernetes.Interface) {
	objs := mustRender(t, nil)
	if err := Apply(ctx, cfg, SelectKinds(objs, RBACKinds...), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, cfg, SelectKinds(objs, KindDeviceClass), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	ns, saName, err := ServiceAccount(objs)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{nodeA, nodeB} {
		if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The plugin's identity on node A, as the DaemonSet's pod there has it.
	pluginCfg, err := PluginIdentity(ctx, cfg, objs, nodeA)
	if err != nil {
		t.Fatal(err)
	}
	plugin := kubernetes.NewForConfigOrDie(pluginCfg)
	pod, err := admin.CoreV1().Pods(ns).Get(ctx, "hami-dra-kubelet-plugin-"+nodeA, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A token of the same ServiceAccount that is not bound to a pod.
	token := func() string {
		tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, saName, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("token request: %v", err)
		}
		return tr.Status.Token
	}
	clientFor := func(tok string) kubernetes.Interface {
		c := rest.AnonymousClientConfig(cfg)
		c.BearerToken = tok
		return kubernetes.NewForConfigOrDie(c)
	}

	// The pod-bound token carries node A.
	review, err := plugin.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	user := review.Status.UserInfo
	if want := fmt.Sprintf("system:serviceaccount:%s:%s", ns, saName); user.Username != want {
		t.Fatalf("plugin is %q, want %q", user.Username, want)
	}
	if got := user.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != nodeA {
		t.Fatalf("token's node name %v, want %s", got, nodeA)
	}

	denied := func(err error, want string) bool {
		return err != nil && (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && strings.Contains(err.Error(), want)
	}
	const otherNodeMsg = `may only write ResourceSlices of that node, not of node "` + nodeB + `"`

	// RBAC and the policy are enforced from informers: wait until a dry run
	// for node A passes and one for node B is refused by the policy.
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	var lastA, lastB error
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, lastA = plugin.ResourceV1().ResourceSlices().Create(ctx, testSlice("probe-a", nodeA), dry)
		_, lastB = plugin.ResourceV1().ResourceSlices().Create(ctx, testSlice("probe-b", nodeB), dry)
		return lastA == nil && denied(lastB, otherNodeMsg), nil
	}); err != nil {
		t.Fatalf("RBAC and policy not in effect: node A: %v; node B: %v", lastA, lastB)
	}

	slices := plugin.ResourceV1().ResourceSlices()
	t.Run("own node's slices", func(t *testing.T) {
		s, err := slices.Create(ctx, testSlice("gpu-node-a-vgpu", nodeA), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create own slice: %v", err)
		}
		s.Spec.Pool.Generation++
		s.Spec.Devices[0].Attributes["driverVersion"] = resourceapi.DeviceAttribute{VersionValue: ptr.To("580.82.7")}
		if s, err = slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update own slice: %v", err)
		}
		if _, err := slices.List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeA}); err != nil {
			t.Fatalf("list slices: %v", err)
		}
		w, err := slices.Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeA})
		if err != nil {
			t.Fatalf("watch slices: %v", err)
		}
		w.Stop()
		if err := slices.Delete(ctx, s.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}}); err != nil {
			t.Fatalf("delete own slice: %v", err)
		}
	})
	t.Run("other node's slices", func(t *testing.T) {
		_, err := slices.Create(ctx, testSlice("gpu-node-b-vgpu", nodeB), metav1.CreateOptions{})
		if !denied(err, otherNodeMsg) {
			t.Fatalf("create for node B: %v", err)
		}
		t.Logf("create for node B refused: %v", err)
		// The admin (not the plugin) is not restricted.
		theirs, err := admin.ResourceV1().ResourceSlices().Create(ctx, testSlice("gpu-node-b-vgpu", nodeB), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		theirs.Spec.Pool.Generation++
		if _, err := slices.Update(ctx, theirs, metav1.UpdateOptions{}); !denied(err, otherNodeMsg) {
			t.Errorf("update of node B's slice: %v", err)
		}
		if err := slices.Delete(ctx, theirs.Name, metav1.DeleteOptions{}); !denied(err, otherNodeMsg) {
			t.Errorf("delete of node B's slice: %v", err)
		}
		// Other served versions of the API are converted and checked too
		// (matchPolicy Equivalent).
		pluginDyn := dynamic.NewForConfigOrDie(pluginCfg)
		for _, version := range []string{"v1beta2"} {
			gv := schema.GroupVersion{Group: "resource.k8s.io", Version: version}
			if _, err := admin.Discovery().ServerResourcesForGroupVersion(gv.String()); err != nil {
				t.Logf("%s not served, not checked: %v", gv, err)
				continue
			}
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": gv.String(), "kind": "ResourceSlice",
				"metadata": map[string]any{"name": "beta-b"},
				"spec": map[string]any{
					"driver": "vgpu.hami.io", "nodeName": nodeB,
					"pool":    map[string]any{"name": nodeB, "generation": int64(1), "resourceSliceCount": int64(1)},
					"devices": []any{map[string]any{"name": "gpu-0"}},
				},
			}}
			_, err := pluginDyn.Resource(gv.WithResource("resourceslices")).Create(ctx, obj, metav1.CreateOptions{})
			if !denied(err, otherNodeMsg) {
				t.Errorf("create for node B through %s: %v", gv, err)
			}
		}
		// Neither may it publish slices for all nodes.
		all := testSlice("all-nodes", nodeA)
		all.Spec.NodeName = nil
		all.Spec.AllNodes = ptr.To(true)
		if _, err := slices.Create(ctx, all, metav1.CreateOptions{}); !denied(err, `not of node ""`) {
			t.Errorf("create of an all-nodes slice: %v", err)
		}
	})
	t.Run("token without node", func(t *testing.T) {
		unbound := clientFor(token())
		_, err := unbound.ResourceV1().ResourceSlices().Create(ctx, testSlice("unbound", nodeA), metav1.CreateOptions{})
		if !denied(err, "pod-bound service account token") {
			t.Fatalf("create with a token not bound to a pod: %v", err)
		}
	})
	t.Run("permissions", func(t *testing.T) {
		type check struct {
			group, resource, verb string
			allowed               bool
		}
		checks := []check{
			{"resource.k8s.io", "resourceclaims", "get", true},
			{"resource.k8s.io", "resourceclaims", "list", true},
			{"resource.k8s.io", "resourceclaims", "watch", true},
			{"", "nodes", "get", true},
			{"resource.k8s.io", "resourceslices", "create", true},
			{"resource.k8s.io", "resourceslices", "update", true},
			{"resource.k8s.io", "resourceslices", "delete", true},
			{"resource.k8s.io", "resourceslices", "list", true},
			{"resource.k8s.io", "resourceslices", "watch", true},
			{"resource.k8s.io", "resourceclaims", "update", false},
			{"resource.k8s.io", "resourceclaims", "delete", false},
			{"resource.k8s.io", "resourceclaims/status", "update", false},
			{"resource.k8s.io", "resourceslices", "deletecollection", false},
			{"resource.k8s.io", "deviceclasses", "create", false},
			{"", "pods", "delete", false},
			{"", "pods", "create", false},
			// the node audit (on by default) watches its node's pods and
			// reports over-quota claims with events
			{"", "pods", "list", true},
			{"", "pods", "watch", true},
			{"", "pods", "update", false},
			{"", "pods/exec", "create", false},
			{"", "events", "create", true},
			{"", "events", "delete", false},
			{"", "secrets", "get", false},
			{"", "nodes", "update", false},
			{"", "nodes", "list", false},
			{"admissionregistration.k8s.io", "validatingadmissionpolicies", "delete", false},
		}
		for _, c := range checks {
			sub := ""
			res := c.resource
			if i := strings.Index(res, "/"); i >= 0 {
				res, sub = res[:i], res[i+1:]
			}
			r, err := plugin.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: "default", Group: c.group, Resource: res, Subresource: sub, Verb: c.verb,
				}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.Allowed != c.allowed {
				t.Errorf("%s %s (group %q): allowed=%v, want %v", c.verb, c.resource, c.group, r.Status.Allowed, c.allowed)
			}
		}
		// And for real: what the plugin does works, the rest is refused.
		if _, err := plugin.ResourceV1().ResourceClaims("").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("list claims: %v", err)
		}
		if _, err := plugin.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{}); err != nil {
			t.Errorf("get own node: %v", err)
		}
		if err := plugin.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("delete pod: %v, want forbidden", err)
		}
		if _, err := plugin.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list secrets: %v, want forbidden", err)
		}
	})
}

// TestDeviceClassSelectors evaluates the chart's CEL selectors against
// devices as the plugin publishes them, with the scheduler's CEL library.
func TestDeviceClassSelectors(t *testing.T) {
	objs := mustRender(t, fullValues())
	device := func(driver, product, memory string) dracel.Device {
		return dracel.Device{
			Driver: driver,
			Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				"productName": {StringValue: ptr.To(product)},
				"model":       {StringValue: ptr.To(gpumodel.Name(product))},
				"family":      {StringValue: ptr.To(gpumodel.Family(product))},
				"uuid":        {StringValue: ptr.To("GPU-00000000-0000-0000-0000-000000000000")},
			},
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				"memory": {Value: resource.MustParse(memory)},
				"cores":  {Value: resource.MustParse("100")},
			},
		}
	}
	h100 := device("vgpu.hami.io", "NVIDIA H100 80GB HBM3", "81559Mi")
	h100pcie := device("vgpu.hami.io", "NVIDIA H100 PCIe", "40Gi")
	l4 := device("vgpu.hami.io", "NVIDIA L4", "23034Mi")
	a100 := device("vgpu.hami.io", "NVIDIA A100-SXM4-40GB", "40Gi")
	other := device("gpu.nvidia.com", "NVIDIA H100 80GB HBM3", "80Gi")
	other.Attributes = map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{}
	for _, tc := range []struct {
		class   string
		matches []dracel.Device
		misses  []dracel.Device
	}{
		{"gpu.vgpu.hami.io", []dracel.Device{h100, l4, a100}, []dracel.Device{other}},
		{"h100.vgpu.hami.io", []dracel.Device{h100}, []dracel.Device{h100pcie, l4, a100, other}},
		{"l4.vgpu.hami.io", []dracel.Device{l4}, []dracel.Device{h100, other}},
		{"a100-40g.vgpu.hami.io", []dracel.Device{a100}, []dracel.Device{h100, other}},
	} {
		t.Run(tc.class, func(t *testing.T) {
			expr := celOf(t, Find(objs, KindDeviceClass, tc.class))
			compiled := dracel.GetCompiler(dracel.Features{EnableConsumableCapacity: true}).CompileCELExpression(expr, dracel.Options{})
			if compiled.Error != nil {
				t.Fatalf("compile %s: %v", expr, compiled.Error)
			}
			for want, devs := range map[bool][]dracel.Device{true: tc.matches, false: tc.misses} {
				for _, d := range devs {
					name := d.Driver
					if p := d.Attributes["productName"].StringValue; p != nil {
						name += "/" + *p
					}
					got, _, err := compiled.DeviceMatches(context.Background(), d)
					if err != nil {
						t.Errorf("%s on %s: %v", expr, name, err)
					} else if got != want {
						t.Errorf("%s on %s = %v, want %v", expr, name, got, want)
					}
				}
			}
		})
	}
}
