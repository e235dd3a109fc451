package chart

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// TestKubernetesVersions runs the chart against kube-apiserver 1.37
// emulating older releases (KEP-4330 compatibility versions:
// --emulated-version gives the API and the feature gates' defaults of that
// release; the floor is the binary's minor version minus 3, so 1.34). For
// each version the chart, rendered for it, applies (defaults and every
// platform profile), and a ResourceSlice as the plugin publishes it for
// sharing keeps or loses its consumable-capacity fields: on 1.34 the API
// server drops them (DRAConsumableCapacity is alpha and off), which is what
// the plugin detects to publish whole GPUs instead.
func TestKubernetesVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver per version")
	}
	for _, tc := range []struct {
		emulated   string
		minor      int
		consumable bool
	}{
		{"1.34", 34, false},
		{"1.36", 36, true},
		{"1.37", 37, true},
	} {
		t.Run(tc.emulated, func(t *testing.T) {
			cfg := startAPIServer(t, "--emulated-version=kube="+tc.emulated)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			admin := kubernetes.NewForConfigOrDie(cfg)
			info, err := admin.Discovery().ServerVersion()
			if err != nil {
				t.Fatal(err)
			}
			if got := info.EmulationMajor + "." + info.EmulationMinor; got != tc.emulated {
				t.Fatalf("API server emulates %q, want %s (%+v)", got, tc.emulated, info)
			}
			if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			kubeVersion := fmt.Sprintf("v1.%d.0", tc.minor)
			objs, err := RenderWithOptions(Options{KubeVersion: kubeVersion}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := Apply(ctx, cfg, objs, ApplyOptions{}); err != nil {
				t.Fatalf("apply the chart: %v", err)
			}
			names, err := Platforms()
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range names {
				values, err := PlatformValues(name)
				if err != nil {
					t.Fatal(err)
				}
				objs, err := RenderWithOptions(Options{KubeVersion: kubeVersion}, values)
				if err != nil {
					t.Fatal(err)
				}
				if err := Apply(ctx, cfg, objs, ApplyOptions{DryRun: true}); err != nil {
					t.Errorf("platform %s: %v", name, err)
				}
			}

			slice := sharedSlice()
			got, err := admin.ResourceV1().ResourceSlices().Create(ctx, slice, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			dev := got.Spec.Devices[0]
			kept := dev.AllowMultipleAllocations != nil && *dev.AllowMultipleAllocations && dev.Capacity["memory"].RequestPolicy != nil
			if kept != tc.consumable {
				t.Errorf("consumable capacity fields kept: %v, want %v (device %+v)", kept, tc.consumable, dev)
			}
			if mem := dev.Capacity["memory"].Value; mem.Cmp(resource.MustParse("80Gi")) != 0 {
				t.Errorf("memory capacity %s: the capacity itself must survive", mem.String())
			}
		})
	}
}

// sharedSlice is one GPU as the plugin publishes it for sharing: several
// allocations, memory consumable in 1Mi steps.
func sharedSlice() *resourceapi.ResourceSlice {
	return &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "versions-gpu"},
		Spec: resourceapi.ResourceSliceSpec{
			Driver:   "vgpu.hami.io",
			NodeName: ptr.To("gpu-node"),
			Pool:     resourceapi.ResourcePool{Name: "gpu-node", Generation: 1, ResourceSliceCount: 1},
			Devices: []resourceapi.Device{{
				Name:                     "gpu-0",
				AllowMultipleAllocations: ptr.To(true),
				Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
					"productName": {StringValue: ptr.To("NVIDIA H100 80GB HBM3")},
				},
				Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
					"memory": {
						Value: resource.MustParse("80Gi"),
						RequestPolicy: &resourceapi.CapacityRequestPolicy{
							Default:    ptr.To(resource.MustParse("80Gi")),
							ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: ptr.To(resource.MustParse("1Mi")), Step: ptr.To(resource.MustParse("1Mi"))},
						},
					},
				},
			}},
		},
	}
}
