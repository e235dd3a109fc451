package podruntime

import (
	"encoding/json"
	"fmt"
	"os"
)

// Mount is a bind mount into the container's view of the host filesystem.
type Mount struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	ReadOnly    bool   `json:"readOnly,omitempty"`
}

// LaunchSpec is what podinit reads: everything the container process gets.
// It is a file rather than arguments so that nothing about the container
// leaks into the environment of podinit itself.
type LaunchSpec struct {
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	WorkingDir string   `json:"workingDir,omitempty"`
	Mounts     []Mount  `json:"mounts,omitempty"`
	// ScratchDir is an empty host directory, private to this container,
	// where podinit keeps the writable layers it needs to create mount
	// points that do not exist on the host (e.g. /etc/ld.so.preload).
	ScratchDir string `json:"scratchDir"`
}

// WriteLaunchSpec stores spec as JSON at path.
func WriteLaunchSpec(path string, spec *LaunchSpec) error {
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode launch spec: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write launch spec: %w", err)
	}
	return nil
}

// ReadLaunchSpec loads a spec written by WriteLaunchSpec.
func ReadLaunchSpec(path string) (*LaunchSpec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read launch spec: %w", err)
	}
	var spec LaunchSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("decode launch spec %s: %w", path, err)
	}
	return &spec, nil
}
