package chart

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
)

// The HAMi webhook's templates (webhook-*.yaml): off by default, both
// certificate modes, the values that reach the MutatingWebhookConfiguration,
// and an API server that accepts what they render.

const webhookName = DefaultReleaseName + "-webhook"

func webhookValues(extra map[string]any) map[string]any {
	w := map[string]any{"enabled": true}
	for k, v := range extra {
		w[k] = v
	}
	return map[string]any{"webhook": w}
}

func TestWebhookOffByDefault(t *testing.T) {
	for _, o := range mustRender(t, nil) {
		if strings.Contains(o.GetName(), "webhook") || o.GetKind() == "MutatingWebhookConfiguration" {
			t.Errorf("rendered %s/%s with the webhook disabled", o.GetKind(), o.GetName())
		}
	}
}

func TestWebhookSelfManagedCertificate(t *testing.T) {
	objs := mustRender(t, webhookValues(nil))
	secret := Find(objs, "Secret", webhookName+"-tls")
	if secret == nil {
		t.Fatalf("no Secret %s-tls in %v", webhookName, kindsOf(objs))
	}
	data := func(key string) []byte {
		s, _, _ := unstructured.NestedString(secret.Object, "data", key)
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(raw) == 0 {
			t.Fatalf("Secret data %s: %v", key, err)
		}
		return raw
	}
	ca := parseCert(t, data("ca.crt"))
	serving := parseCert(t, data("tls.crt"))
	if block, _ := pem.Decode(data("tls.key")); block == nil {
		t.Error("tls.key is not PEM")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	svc := webhookName + "." + DefaultNamespace + ".svc"
	if _, err := serving.Verify(x509.VerifyOptions{DNSName: svc, Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("serving certificate does not verify for %s against the CA: %v", svc, err)
	}
	if left := time.Until(serving.NotAfter); left < 9*365*24*time.Hour {
		t.Errorf("serving certificate valid for %v, want webhook.selfSigned.validityDays (10 years)", left)
	}

	mwc := mutatingWebhook(t, objs)
	caBundle, _, _ := unstructured.NestedString(mwc, "clientConfig", "caBundle")
	if caBundle != base64.StdEncoding.EncodeToString(data("ca.crt")) {
		t.Error("caBundle is not the generated CA")
	}
	if svcName, _, _ := unstructured.NestedString(mwc, "clientConfig", "service", "name"); svcName != webhookName || Find(objs, "Service", webhookName) == nil {
		t.Errorf("clientConfig service %q, rendered %v", svcName, kindsOf(objs))
	}
	for _, kind := range []string{"Issuer", "Certificate"} {
		if len(SelectKinds(objs, kind)) > 0 {
			t.Errorf("%s rendered without cert-manager", kind)
		}
	}
}

func TestWebhookCertManager(t *testing.T) {
	objs := mustRender(t, webhookValues(map[string]any{"certManager": map[string]any{"enabled": true}}))
	issuer := Find(objs, "Issuer", webhookName)
	cert := Find(objs, "Certificate", webhookName)
	if issuer == nil || cert == nil {
		t.Fatalf("want an Issuer and a Certificate, got %v", kindsOf(objs))
	}
	if secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName"); secretName != webhookName+"-tls" {
		t.Errorf("Certificate secretName %q", secretName)
	}
	dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	if !slices.Contains(dns, webhookName+"."+DefaultNamespace+".svc") {
		t.Errorf("Certificate dnsNames %v", dns)
	}
	if Find(objs, "Secret", webhookName+"-tls") != nil {
		t.Error("the chart renders the Secret that cert-manager owns")
	}
	var mwcObj *unstructured.Unstructured
	for _, o := range SelectKinds(objs, "MutatingWebhookConfiguration") {
		mwcObj = o
	}
	if got := mwcObj.GetAnnotations()["cert-manager.io/inject-ca-from"]; got != DefaultNamespace+"/"+webhookName {
		t.Errorf("inject-ca-from %q", got)
	}
	if caBundle, found, _ := unstructured.NestedString(mutatingWebhook(t, objs), "clientConfig", "caBundle"); found {
		t.Errorf("caBundle %q rendered; cert-manager's CA injector fills it", caBundle)
	}

	// An existing ClusterIssuer: no Issuer of the chart's own.
	objs = mustRender(t, webhookValues(map[string]any{"certManager": map[string]any{"enabled": true, "issuerRef": map[string]any{"name": "corp-ca", "kind": "ClusterIssuer"}}}))
	if len(SelectKinds(objs, "Issuer")) != 0 {
		t.Error("Issuer rendered next to an issuerRef")
	}
	kind, _, _ := unstructured.NestedString(Find(objs, "Certificate", webhookName).Object, "spec", "issuerRef", "kind")
	if kind != "ClusterIssuer" {
		t.Errorf("issuerRef kind %q", kind)
	}
}

func TestWebhookValues(t *testing.T) {
	objs := mustRender(t, webhookValues(map[string]any{
		"failurePolicy":     "Ignore",
		"timeoutSeconds":    5,
		"namespaceSelector": map[string]any{"matchLabels": map[string]any{"hami.io/dra": "true"}},
		"objectSelector":    map[string]any{"matchExpressions": []any{map[string]any{"key": "legacy-hami", "operator": "DoesNotExist"}}},
		"deviceClass":       "a100.vgpu.hami.io",
		"hami":              map[string]any{"defaultMem": 4096, "defaultCores": 20, "defaultGPUNum": 2, "resourceName": "nvidia.com/vgpu"},
	}))
	mwc := mutatingWebhook(t, objs)
	if fp, _, _ := unstructured.NestedString(mwc, "failurePolicy"); fp != "Ignore" {
		t.Errorf("failurePolicy %q", fp)
	}
	if ts, _, _ := unstructured.NestedInt64(mwc, "timeoutSeconds"); ts != 5 {
		t.Errorf("timeoutSeconds %d", ts)
	}
	if l, _, _ := unstructured.NestedString(mwc, "namespaceSelector", "matchLabels", "hami.io/dra"); l != "true" {
		t.Errorf("namespaceSelector %v", mwc["namespaceSelector"])
	}
	if exprs, _, _ := unstructured.NestedSlice(mwc, "objectSelector", "matchExpressions"); len(exprs) != 1 {
		t.Errorf("objectSelector %v", mwc["objectSelector"])
	}
	conds, _, _ := unstructured.NestedSlice(mwc, "matchConditions")
	if len(conds) != 1 || !strings.Contains(conds[0].(map[string]any)["expression"].(string), "'nvidia.com/vgpu'") {
		t.Errorf("matchConditions %v do not test the renamed resource", conds)
	}
	args := webhookArgs(t, objs)
	for _, want := range []string{"--device-class=a100.vgpu.hami.io", "--driver-name=vgpu.hami.io", "--default-mem=4096", "--default-cores=20", "--default-gpu-num=2", "--resource-name=nvidia.com/vgpu", "--resource-mem=nvidia.com/gpumem"} {
		if !slices.Contains(args, want) {
			t.Errorf("webhook args %q lack %q", args, want)
		}
	}

	// Defaults: the chart's default class, HAMi's defaults.
	args = webhookArgs(t, mustRender(t, webhookValues(nil)))
	for _, want := range []string{"--device-class=vgpu.hami.io", "--default-mem=0", "--default-cores=0", "--default-gpu-num=1"} {
		if !slices.Contains(args, want) {
			t.Errorf("default webhook args %q lack %q", args, want)
		}
	}
}

func TestWebhookValuesSchema(t *testing.T) {
	for name, w := range map[string]map[string]any{
		"failurePolicy":   {"failurePolicy": "Sometimes"},
		"cores above 100": {"hami": map[string]any{"defaultCores": 101}},
		"unknown key":     {"failurPolicy": "Fail"},
		"bad selector":    {"namespaceSelector": map[string]any{"matchLabel": map[string]any{"a": "b"}}},
	} {
		if _, err := Render(webhookValues(w)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestWebhookAPIServer applies what the webhook templates render to a real
// kube-apiserver (dry run): it compiles the matchConditions CEL and
// validates the webhook configuration, the Deployment and the RBAC.
func TestWebhookAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	cfg := startAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(cfg)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	objs := mustRender(t, webhookValues(map[string]any{
		"namespaceSelector": map[string]any{"matchExpressions": []any{map[string]any{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": []any{"kube-system"}}}},
	}))
	if err := Apply(ctx, cfg, objs, ApplyOptions{DryRun: true}); err != nil {
		t.Fatal(err)
	}
}

func mutatingWebhook(t *testing.T, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	mwcs := SelectKinds(objs, "MutatingWebhookConfiguration")
	if len(mwcs) != 1 {
		t.Fatalf("want one MutatingWebhookConfiguration, got %v", kindsOf(objs))
	}
	hooks, _, _ := unstructured.NestedSlice(mwcs[0].Object, "webhooks")
	if len(hooks) != 1 {
		t.Fatalf("want one webhook, got %d", len(hooks))
	}
	return hooks[0].(map[string]any)
}

func webhookArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	d := Find(objs, "Deployment", webhookName)
	if d == nil {
		t.Fatalf("no Deployment %s in %v", webhookName, kindsOf(objs))
	}
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
	return args
}

func parseCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("not PEM: %q", data)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
