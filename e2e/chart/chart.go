// Package chart renders the hami-dra Helm chart (deployments/helm/hami-dra)
// with the Helm v4 SDK and applies the result to an API server.
//
// The end-to-end cluster takes the chart's DeviceClasses, RBAC and admission
// policy from here instead of hand-written copies:
//
//	objs, err := chart.Render(nil)                       // default values
//	classes := chart.SelectKinds(objs, chart.KindDeviceClass)
//	rbac := chart.SelectKinds(objs, chart.RBACKinds...)
//	err = chart.Apply(ctx, restConfig, append(classes, rbac...), chart.ApplyOptions{})
package chart

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartv2util "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	sigsyaml "sigs.k8s.io/yaml"
)

const (
	// DefaultReleaseName is the release name Render uses.
	DefaultReleaseName = "hami-dra"
	// DefaultNamespace is the namespace Render installs into.
	DefaultNamespace = "hami-dra"
	// DefaultKubeVersion is the Kubernetes version the chart is rendered for.
	DefaultKubeVersion = "v1.37.1"

	// ChartDirEnv overrides where the chart is looked up.
	ChartDirEnv = "HAMI_DRA_CHART_DIR"
	// chartRelDir is the chart's place in the repository.
	chartRelDir = "deployments/helm/hami-dra"
)

// Kinds the chart renders.
const (
	KindServiceAccount                   = "ServiceAccount"
	KindClusterRole                      = "ClusterRole"
	KindClusterRoleBinding               = "ClusterRoleBinding"
	KindValidatingAdmissionPolicy        = "ValidatingAdmissionPolicy"
	KindValidatingAdmissionPolicyBinding = "ValidatingAdmissionPolicyBinding"
	KindDeviceClass                      = "DeviceClass"
	KindDaemonSet                        = "DaemonSet"
)

// RBACKinds are the objects that give the kubelet plugin its identity and
// permissions: its ServiceAccount, the ClusterRole and binding, and the
// admission policy that limits it to its own node's ResourceSlices.
var RBACKinds = []string{
	KindServiceAccount,
	KindClusterRole,
	KindClusterRoleBinding,
	KindValidatingAdmissionPolicy,
	KindValidatingAdmissionPolicyBinding,
}

// Options select the release the chart is rendered as. Zero fields take the
// defaults above.
type Options struct {
	ReleaseName string
	Namespace   string
	KubeVersion string
	// APIVersions are served in addition to Helm's defaults, for
	// .Capabilities.APIVersions.Has (e.g. "security.openshift.io/v1" to
	// render as on OpenShift, "monitoring.coreos.com/v1" for the Prometheus
	// Operator's monitors).
	APIVersions []string
	// ChartDir overrides Dir().
	ChartDir string
}

func (o Options) withDefaults() (Options, error) {
	if o.ReleaseName == "" {
		o.ReleaseName = DefaultReleaseName
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.KubeVersion == "" {
		o.KubeVersion = DefaultKubeVersion
	}
	if o.ChartDir == "" {
		dir, err := Dir()
		if err != nil {
			return o, err
		}
		o.ChartDir = dir
	}
	return o, nil
}

// Dir returns the chart's directory: $HAMI_DRA_CHART_DIR if set, else
// deployments/helm/hami-dra in the first parent of the working directory (or
// of this source file) that has it.
func Dir() (string, error) {
	if dir := os.Getenv(ChartDirEnv); dir != "" {
		return dir, nil
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, start := range starts {
		for dir := start; ; dir = filepath.Dir(dir) {
			candidate := filepath.Join(dir, chartRelDir)
			if _, err := os.Stat(filepath.Join(candidate, "Chart.yaml")); err == nil {
				return candidate, nil
			}
			if parent := filepath.Dir(dir); parent == dir {
				break
			}
		}
	}
	return "", fmt.Errorf("chart %s not found above %v; set %s", chartRelDir, starts, ChartDirEnv)
}

// Load loads the chart from Dir().
func Load() (*chartv2.Chart, error) {
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	return loader.Load(dir)
}

// Render renders the chart as release "hami-dra" in namespace "hami-dra"
// with values merged over the chart's values.yaml (nil: the defaults). Values
// that break values.schema.json are rejected with the schema's message.
// The objects come in install order (ServiceAccounts and RBAC before the
// DaemonSet), NOTES.txt excluded.
func Render(values map[string]any) ([]*unstructured.Unstructured, error) {
	return RenderWithOptions(Options{}, values)
}

// RenderWithOptions is Render for another release name, namespace or
// Kubernetes version.
func RenderWithOptions(opts Options, values map[string]any) ([]*unstructured.Unstructured, error) {
	manifests, err := RenderManifests(opts, values)
	if err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	for _, name := range sortedKeys(manifests) {
		decoded, err := decodeManifest(name, manifests[name])
		if err != nil {
			return nil, err
		}
		objs = append(objs, decoded...)
	}
	sortInstallOrder(objs)
	return objs, nil
}

// RenderManifests renders the chart and returns each template's output by
// file name (as `helm template` prints them), NOTES.txt and partials excluded.
func RenderManifests(opts Options, values map[string]any) (map[string]string, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	chrt, err := loader.Load(opts.ChartDir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", opts.ChartDir, err)
	}
	caps, err := capabilities(opts.KubeVersion, opts.APIVersions...)
	if err != nil {
		return nil, err
	}
	if kv := chrt.Metadata.KubeVersion; kv != "" && !chartv2util.IsCompatibleRange(kv, caps.KubeVersion.String()) {
		return nil, fmt.Errorf("chart requires kubeVersion %s, which is incompatible with Kubernetes %s", chrt.Metadata.KubeVersion, caps.KubeVersion.String())
	}
	if values == nil {
		values = map[string]any{}
	}
	renderValues, err := chartutil.ToRenderValuesWithSchemaValidation(chrt, values, common.ReleaseOptions{
		Name:      opts.ReleaseName,
		Namespace: opts.Namespace,
		Revision:  1,
		IsInstall: true,
	}, caps, false)
	if err != nil {
		return nil, err
	}
	rendered, err := engine.Render(chrt, renderValues)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for name, content := range rendered {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") || strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		if strings.TrimSpace(content) == "" {
			continue
		}
		out[name] = content
	}
	return out, nil
}

// RenderNotes returns the rendered NOTES.txt.
func RenderNotes(opts Options, values map[string]any) (string, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return "", err
	}
	chrt, err := loader.Load(opts.ChartDir)
	if err != nil {
		return "", err
	}
	caps, err := capabilities(opts.KubeVersion, opts.APIVersions...)
	if err != nil {
		return "", err
	}
	if values == nil {
		values = map[string]any{}
	}
	renderValues, err := chartutil.ToRenderValuesWithSchemaValidation(chrt, values, common.ReleaseOptions{
		Name: opts.ReleaseName, Namespace: opts.Namespace, Revision: 1, IsInstall: true,
	}, caps, false)
	if err != nil {
		return "", err
	}
	rendered, err := engine.Render(chrt, renderValues)
	if err != nil {
		return "", err
	}
	for name, content := range rendered {
		if strings.HasSuffix(name, "NOTES.txt") {
			return content, nil
		}
	}
	return "", errors.New("chart has no NOTES.txt")
}

// Lint runs the Helm SDK's chart linter (what `helm lint` runs) with values
// merged over the chart's defaults, and returns its messages of severity
// warning or above as one error.
func Lint(opts Options, values map[string]any) error {
	opts, err := opts.withDefaults()
	if err != nil {
		return err
	}
	kv, err := common.ParseKubeVersion(opts.KubeVersion)
	if err != nil {
		return err
	}
	if values == nil {
		values = map[string]any{}
	}
	result := lint.RunAll(opts.ChartDir, values, opts.Namespace, lint.WithKubeVersion(kv))
	var msgs []string
	for _, m := range result.Messages {
		if m.Severity >= support.WarningSev {
			msgs = append(msgs, m.Error())
		}
	}
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "\n"))
	}
	return nil
}

func capabilities(kubeVersion string, apiVersions ...string) (*common.Capabilities, error) {
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, fmt.Errorf("kube version %q: %w", kubeVersion, err)
	}
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	caps.APIVersions = append(slices.Clone(caps.APIVersions), apiVersions...)
	return caps, nil
}

func decodeManifest(name, content string) ([]*unstructured.Unstructured, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(content)))
	var objs []*unstructured.Unstructured
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i, err)
		}
		data, err := sigsyaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i, err)
		}
		if s := strings.TrimSpace(string(data)); s == "null" || s == "{}" || s == "" {
			continue
		}
		// Unstructured's JSON decoding keeps integers as int64, as
		// client-go does.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i, err)
		}
		if u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("%s: document %d has no apiVersion", name, i)
		}
		objs = append(objs, u)
	}
}

// installOrder ranks kinds so that an object's dependencies come first.
var installOrder = map[string]int{
	"Namespace":                          0,
	KindServiceAccount:                   1,
	"ConfigMap":                          2,
	KindClusterRole:                      3,
	"Role":                               3,
	KindClusterRoleBinding:               4,
	"RoleBinding":                        4,
	KindValidatingAdmissionPolicy:        5,
	KindValidatingAdmissionPolicyBinding: 6,
	KindDeviceClass:                      7,
	"Service":                            8,
	KindDaemonSet:                        9,
}

func sortInstallOrder(objs []*unstructured.Unstructured) {
	rank := func(u *unstructured.Unstructured) int {
		if r, ok := installOrder[u.GetKind()]; ok {
			return r
		}
		return len(installOrder)
	}
	sort.SliceStable(objs, func(i, j int) bool {
		ri, rj := rank(objs[i]), rank(objs[j])
		if ri != rj {
			return ri < rj
		}
		return objs[i].GetName() < objs[j].GetName()
	})
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// SelectKinds returns the objects whose kind is one of kinds, in their order.
func SelectKinds(objs []*unstructured.Unstructured, kinds ...string) []*unstructured.Unstructured {
	want := map[string]bool{}
	for _, k := range kinds {
		want[k] = true
	}
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if want[o.GetKind()] {
			out = append(out, o)
		}
	}
	return out
}

// Find returns the object of that kind and name, or nil.
func Find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// ServiceAccount returns the namespace and name of the kubelet plugin's
// ServiceAccount in a rendering (taken from the ClusterRoleBinding, so it is
// right also when the chart does not create the ServiceAccount).
func ServiceAccount(objs []*unstructured.Unstructured) (namespace, name string, err error) {
	for _, o := range SelectKinds(objs, KindClusterRoleBinding) {
		subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
		for _, s := range subjects {
			sm, ok := s.(map[string]any)
			if ok && sm["kind"] == "ServiceAccount" {
				ns, _ := sm["namespace"].(string)
				n, _ := sm["name"].(string)
				return ns, n, nil
			}
		}
	}
	return "", "", errors.New("no ClusterRoleBinding with a ServiceAccount subject in the rendering")
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// DryRun asks the API server to validate and admit each object without
	// persisting it (server-side dry run).
	DryRun bool
	// FieldManager defaults to "hami-dra-chart".
	FieldManager string
	// Namespace is used for namespaced objects that have none.
	Namespace string
}

// Apply server-side-applies the objects in order and returns every failure,
// each naming its object.
func Apply(ctx context.Context, cfg *rest.Config, objs []*unstructured.Unstructured, opts ApplyOptions) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	if opts.FieldManager == "" {
		opts.FieldManager = "hami-dra-chart"
	}
	var errs []error
	for _, obj := range objs {
		if _, err := ApplyOne(ctx, dyn, mapper, obj, opts); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ApplyOne server-side-applies one object.
func ApplyOne(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, obj *unstructured.Unstructured, opts ApplyOptions) (*unstructured.Unstructured, error) {
	id := fmt.Sprintf("%s %s", obj.GetKind(), obj.GetName())
	gvk := obj.GroupVersionKind()
	mapping, err := mapper.RESTMapping(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind}, gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := obj.GetNamespace()
		if ns == "" {
			ns = opts.Namespace
		}
		if ns == "" {
			return nil, fmt.Errorf("%s: namespaced object without namespace", id)
		}
		ri = dyn.Resource(mapping.Resource).Namespace(ns)
	}
	fieldManager := opts.FieldManager
	if fieldManager == "" {
		fieldManager = "hami-dra-chart"
	}
	applyOpts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	if opts.DryRun {
		applyOpts.DryRun = []string{metav1.DryRunAll}
	}
	data, err := obj.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	// Patch with the apply content type instead of ri.Apply so that the
	// object is sent exactly as rendered.
	patchOpts := metav1.PatchOptions{FieldManager: applyOpts.FieldManager, Force: &applyOpts.Force, DryRun: applyOpts.DryRun}
	out, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, patchOpts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	return out, nil
}

// Platforms returns the names of the chart's per-platform values files
// (platforms/<name>.yaml), sorted.
func Platforms() ([]string, error) {
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(dir, "platforms", "*.yaml"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".yaml"))
	}
	sort.Strings(names)
	return names, nil
}

// PlatformValues reads the chart's platforms/<name>.yaml, the values a user
// passes with -f for that platform.
func PlatformValues(name string) (map[string]any, error) {
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	vals, err := common.ReadValuesFile(filepath.Join(dir, "platforms", name+".yaml"))
	if err != nil {
		return nil, fmt.Errorf("platform %s: %w", name, err)
	}
	return vals.AsMap(), nil
}
