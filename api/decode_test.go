package api

import (
	"strings"
	"testing"
)

func TestDecodeConfig(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"minimal", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig"}`, ""},
		{"full", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","computePolicy":"BestEffort","logLevel":3}`, ""},
		{"unknown field", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","gpuMem":5}`, `unknown field "gpuMem"`},
		{"wrong kind", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"GpuConfig"}`, `unsupported kind "GpuConfig"`},
		{"wrong version", `{"apiVersion":"vgpu.hami.io/v9","kind":"VgpuConfig"}`, `unsupported apiVersion`},
		{"bad policy", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","computePolicy":"hard"}`, `computePolicy: unsupported value "hard", allowed values: "HardCap", "BestEffort"`},
		{"bad log level", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig","logLevel":7}`, `logLevel: 7 out of range`},
		{"trailing", `{"apiVersion":"vgpu.hami.io/v1alpha1","kind":"VgpuConfig"} {}`, `after top-level value`},
		{"not json", `xx`, `decode config`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeConfig([]byte(tc.in))
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
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
