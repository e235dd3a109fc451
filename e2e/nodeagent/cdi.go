package nodeagent

import (
	"fmt"
	"slices"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/hami-dra/hami-dra/e2e/podruntime"
)

// containerEdits is what the CDI devices of one container amount to once
// applied to an OCI spec the way a CDI-aware runtime (containerd, CRI-O,
// podman) applies them.
type containerEdits struct {
	Env     []string
	Mounts  []podruntime.Mount
	Devices []podruntime.Device
	// Hooks counts OCI hooks the spec asked for; they are not run here.
	Hooks int
}

// resolveCDI injects the CDI devices into an OCI spec that already holds
// the container's own environment, with the CDI library itself, and reads
// the result back. A device that cannot be resolved is an error: a pod must
// never start without the quota its claim carries (fail closed).
func resolveCDI(specDirs []string, baseEnv []string, devices []string) (*containerEdits, error) {
	cache, err := cdi.NewCache(cdi.WithSpecDirs(specDirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI cache: %w", err)
	}
	// Refresh reports every broken spec file in the directory; only the
	// devices this container needs matter, and InjectDevices says if one of
	// them is missing.
	_ = cache.Refresh()
	spec := &oci.Spec{Process: &oci.Process{Env: slices.Clone(baseEnv)}, Linux: &oci.Linux{}}
	if len(devices) > 0 {
		unresolved, err := cache.InjectDevices(spec, devices...)
		if err != nil {
			return nil, fmt.Errorf("CDI devices %v (unresolved %v): %w", devices, unresolved, err)
		}
	}
	edits := &containerEdits{Env: spec.Process.Env}
	for _, m := range spec.Mounts {
		edits.Mounts = append(edits.Mounts, podruntime.Mount{
			Source:      m.Source,
			Destination: m.Destination,
			ReadOnly:    slices.Contains(m.Options, "ro"),
		})
	}
	// Device nodes are created by the runtime from their numbers, as runc
	// does; the local runtime has no device cgroup, so their access rules
	// (spec.Linux.Resources.Devices) are not applied.
	for _, d := range spec.Linux.Devices {
		dev := podruntime.Device{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor}
		if d.FileMode != nil {
			dev.Mode = *d.FileMode
		}
		edits.Devices = append(edits.Devices, dev)
	}
	if spec.Hooks != nil {
		// Prestart is deprecated in the OCI spec, but a CDI spec's "prestart"
		// hooks still land there, so they must be counted.
		//lint:ignore SA1019 counted for CDI specs that still use prestart hooks
		edits.Hooks = len(spec.Hooks.CreateRuntime) + len(spec.Hooks.CreateContainer) + len(spec.Hooks.StartContainer) + len(spec.Hooks.Prestart) + len(spec.Hooks.Poststart)
	}
	return edits, nil
}
