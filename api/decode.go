// Package api decodes the driver's opaque configuration from DeviceClass and
// ResourceClaim configs, whatever version it is written in.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hami-dra/hami-dra/api/v1alpha1"
)

// DecodeConfig strictly decodes one opaque parameters object: the
// apiVersion and kind must be known, unknown fields are rejected, and the
// result is validated (not defaulted: defaults apply after merging).
func DecodeConfig(raw []byte) (*v1alpha1.VgpuConfig, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("decode config: %w", err)
	}
	if meta.APIVersion != v1alpha1.APIVersion {
		return nil, fmt.Errorf("decode config: unsupported apiVersion %q, supported: %q", meta.APIVersion, v1alpha1.APIVersion)
	}
	if meta.Kind != v1alpha1.KindVgpuConfig {
		return nil, fmt.Errorf("decode config: unsupported kind %q for %s, supported: %q", meta.Kind, meta.APIVersion, v1alpha1.KindVgpuConfig)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var cfg v1alpha1.VgpuConfig
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("decode %s: %w", v1alpha1.KindVgpuConfig, err)
	}
	if dec.More() {
		return nil, errors.New("decode config: trailing data after the object")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}
