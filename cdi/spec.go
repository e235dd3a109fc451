// Package cdi builds and writes the per-claim CDI spec of hami-dra: one
// spec file per ResourceClaim, written atomically, declaring the lowest CDI
// version its content needs (older runtimes reject newer versions).
package cdi

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/hami-dra/hami-dra/internal/atomicfile"
)

const (
	// Vendor and Class form the CDI kind "hami.io/vgpu" of our devices.
	Vendor = "hami.io"
	Class  = "vgpu"
	Kind   = Vendor + "/" + Class

	// Container paths, see vgpu-core/CONTRACT.md.
	ContainerLibvgpuPath = "/usr/local/vgpu/libvgpu.so"
	ContainerPreloadPath = "/etc/ld.so.preload"
	ContainerClaimDir    = "/run/hami-dra/claim"
	ContainerGPUStateDir = "/run/hami-dra/gpus"
	SharedRegionPath     = ContainerClaimDir + "/vgpu.shr"
)

// GPU is one GPU of a claim in quota-index order.
type GPU struct {
	UUID  string
	Minor int
}

// ClaimSpec is what the per-claim spec is made of.
type ClaimSpec struct {
	ClaimUID string
	// GPUs in quota-index order (PCI bus order).
	GPUs []GPU
	// Env is the quota environment of CONTRACT.md.
	Env []string
	// DevRoot is the host directory holding dev/nvidia*; "/" on a node.
	DevRoot string
	// LibvgpuHostPath, PreloadHostPath, ClaimHostDir, GPUStateHostDir are
	// the host sides of the read-only and read-write mounts.
	LibvgpuHostPath string
	PreloadHostPath string
	ClaimHostDir    string
	GPUStateHostDir string
	// AdminAccess leaves libvgpu out: no library, no ld.so.preload, no
	// claim or reservation directories. Admin-access claims (monitoring)
	// get whole GPUs without a quota.
	AdminAccess bool
}

// ClaimDeviceName is the claim-wide device: env, mounts, control nodes.
func ClaimDeviceName(uid string) string { return "claim-" + uid }

// GPUDeviceName is the device of quota index i: its /dev/nvidia<minor>.
func GPUDeviceName(uid string, i int) string { return fmt.Sprintf("claim-%s-gpu%d", uid, i) }

// QualifiedName is "hami.io/vgpu=<name>".
func QualifiedName(name string) string { return Kind + "=" + name }

// SpecFileName is the claim's spec file name inside the CDI root.
func SpecFileName(uid string) string {
	return cdiapi.GenerateTransientSpecName(Vendor, Class, uid) + ".json"
}

// ClaimUIDFromFile returns the claim UID of one of our spec files.
func ClaimUIDFromFile(name string) (string, bool) {
	prefix := cdiapi.GenerateTransientSpecName(Vendor, Class, "")
	if !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, ".json") {
		return "", false
	}
	return strings.TrimSuffix(strings.TrimPrefix(name, prefix), ".json"), true
}

func (c ClaimSpec) hostDev(name string) (container, host string) {
	container = "/dev/" + name
	if c.DevRoot == "" || c.DevRoot == "/" {
		return container, "" // same path: keeps the spec at the lowest version
	}
	return container, filepath.Join(c.DevRoot, "dev", name)
}

func (c ClaimSpec) node(name string) *cdispec.DeviceNode {
	p, h := c.hostDev(name)
	return &cdispec.DeviceNode{Path: p, HostPath: h}
}

// Build returns the spec with its minimal version set.
func (c ClaimSpec) Build() (*cdispec.Spec, error) {
	ro := []string{"ro", "nosuid", "nodev", "bind"}
	claimDev := cdispec.Device{
		Name: ClaimDeviceName(c.ClaimUID),
		ContainerEdits: cdispec.ContainerEdits{
			Env: append([]string(nil), c.Env...),
			DeviceNodes: []*cdispec.DeviceNode{
				c.node("nvidiactl"), c.node("nvidia-uvm"), c.node("nvidia-uvm-tools"),
			},
			Mounts: []*cdispec.Mount{
				{HostPath: c.LibvgpuHostPath, ContainerPath: ContainerLibvgpuPath, Options: ro},
				{HostPath: c.PreloadHostPath, ContainerPath: ContainerPreloadPath, Options: ro},
				{HostPath: c.ClaimHostDir, ContainerPath: ContainerClaimDir, Options: []string{"rw", "nosuid", "nodev", "bind"}},
				{HostPath: c.GPUStateHostDir, ContainerPath: ContainerGPUStateDir, Options: ro},
			},
		},
	}
	if c.AdminAccess {
		claimDev.ContainerEdits.Mounts = nil
	}
	spec := &cdispec.Spec{Kind: Kind, Devices: []cdispec.Device{claimDev}}
	for i, g := range c.GPUs {
		spec.Devices = append(spec.Devices, cdispec.Device{
			Name:           GPUDeviceName(c.ClaimUID, i),
			ContainerEdits: cdispec.ContainerEdits{DeviceNodes: []*cdispec.DeviceNode{c.node(fmt.Sprintf("nvidia%d", g.Minor))}},
		})
	}
	v, err := cdispec.MinimumRequiredVersion(spec)
	if err != nil {
		return nil, fmt.Errorf("compute CDI spec version: %w", err)
	}
	spec.Version = v
	return spec, nil
}

// Write validates spec with the CDI library and writes it atomically
// (temp, fsync, rename, fsync dir) as the claim's spec file in dir.
//
// The copy that is validated is written to a private directory under
// $TMPDIR, never into dir: runtimes scan dir for *.json and *.yaml, and a
// second spec defining the same devices is a conflict that may drop both.
// The temp file of the atomic write is invisible to them (atomicfile).
func Write(dir, uid string, spec *cdispec.Spec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode CDI spec: %w", err)
	}
	if err := validate(uid, data); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create CDI dir: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, SpecFileName(uid)), data, 0o644, true); err != nil {
		return fmt.Errorf("write CDI spec: %w", err)
	}
	return nil
}

// validate parses exactly the bytes that will be written, the way runtimes
// read them (the library reads specs only from files).
func validate(uid string, data []byte) error {
	scratch, err := os.MkdirTemp("", "hami-dra-cdi-")
	if err != nil {
		return fmt.Errorf("create scratch directory to validate the CDI spec (is $TMPDIR writable?): %w", err)
	}
	defer os.RemoveAll(scratch)
	p := filepath.Join(scratch, SpecFileName(uid))
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return fmt.Errorf("write CDI spec to validate: %w", err)
	}
	if _, err := cdiapi.ReadSpec(p, 0); err != nil {
		return fmt.Errorf("invalid CDI spec for claim %s: %w", uid, err)
	}
	return nil
}

// Remove deletes the claim's spec file; a missing file is not an error.
func Remove(dir, uid string) error {
	err := os.Remove(filepath.Join(dir, SpecFileName(uid)))
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove CDI spec: %w", err)
	}
	return nil
}

// Exists reports whether the claim's spec file is present.
func Exists(dir, uid string) bool {
	_, err := os.Stat(filepath.Join(dir, SpecFileName(uid)))
	return err == nil
}
