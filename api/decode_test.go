package api

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/api/v1alpha1"
)

func TestDecodeConfig(t *testing.T) {
	meta := v1alpha1.VgpuConfig{APIVersion: v1alpha1.APIVersion, Kind: v1alpha1.KindVgpuConfig}
	with := func(policy *v1alpha1.ComputePolicy, level *int) *v1alpha1.VgpuConfig {
		c := meta
		c.ComputePolicy, c.LogLevel = policy, level
		return &c
	}
	for _, tc := range []struct {
		name, in, wantErr string
		want              *v1alpha1.VgpuConfig
	}{
		// Decoding does not default: unset fields stay nil so that merging
		// can tell them from values set explicitly.
		{"minimal", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig"}`, "", with(nil, nil)},
		{"full", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","computePolicy":"BestEffort","logLevel":3}`, "", with(ptr.To(v1alpha1.BestEffort), ptr.To(3))},
		{"hard cap, level zero", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","computePolicy":"HardCap","logLevel":0}`, "", with(ptr.To(v1alpha1.HardCap), ptr.To(0))},
		{"unknown field", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","gpuMem":5}`, `unknown field "gpuMem"`, nil},
		{"wrong kind", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"GpuConfig"}`, `unsupported kind "GpuConfig"`, nil},
		{"wrong version", `{"apiVersion":"vgpu.hami.io/v9","kind":"VgpuConfig"}`, `unsupported apiVersion`, nil},
		{"bad policy", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","computePolicy":"hard"}`, `computePolicy: unsupported value "hard", allowed values: "HardCap", "BestEffort"`, nil},
		{"bad log level", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","logLevel":7}`, `logLevel: 7 out of range`, nil},
		{"memory audit warn", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","memoryAuditAction":"Warn"}`, "", func() *v1alpha1.VgpuConfig {
			c := with(nil, nil)
			c.MemoryAuditAction = ptr.To(v1alpha1.Warn)
			return c
		}()},
		{"bad memory audit action", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","memoryAuditAction":"Ignore"}`, `memoryAuditAction: unsupported value "Ignore", allowed values: "Kill", "Warn"`, nil},
		{"trailing", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig"} {}`, `after top-level value`, nil},
		{"not json", `xx`, `decode config`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeConfig([]byte(tc.in))
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr == "" && !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("decoded %s, want %s", describe(got), describe(tc.want))
			}
			if tc.wantErr != "" && got != nil {
				t.Fatalf("a failed decode returned %s", describe(got))
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","computePolicy":"BestEffort","logLevel":3}`))
	f.Add([]byte(`{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","x":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := DecodeConfig(data)
		if err != nil {
			return
		}
		// Whatever decodes must be valid and stay valid once defaulted.
		cfg.Default()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("decoded config fails validation after defaulting: %v", err)
		}
	})
}

func describe(c *v1alpha1.VgpuConfig) string {
	if c == nil {
		return "nil"
	}
	s := c.APIVersion + "/" + c.Kind
	if c.ComputePolicy != nil {
		s += " computePolicy=" + string(*c.ComputePolicy)
	}
	if c.LogLevel != nil {
		s += fmt.Sprintf(" logLevel=%d", *c.LogLevel)
	}
	if c.MemoryAuditAction != nil {
		s += " memoryAuditAction=" + string(*c.MemoryAuditAction)
	}
	return s
}
