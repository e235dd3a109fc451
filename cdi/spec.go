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
	// DriverEdits give the container the node's NVIDIA driver: the control
	// device nodes that exist, the driver's libraries and binaries, and the
	// hooks that make them usable (internal/drivercdi generates them). Nil
	// when another CDI spec provides the driver (the NVIDIA Container
	// Toolkit's, composed) or there is none (simulated nodes): the claim
	// device then lists /dev/nvidiactl and /dev/nvidia-uvm* itself.
	DriverEdits *cdispec.ContainerEdits
}

// VisibleDevicesVoid is in every claim's environment: the legacy
// nvidia-container-runtime hook reads NVIDIA_VISIBLE_DEVICES (images such
// as nvidia/cuda set it to "all") and would otherwise add every GPU of the
// node to a container that was given a share of some.
const VisibleDevicesVoid = "NVIDIA_VISIBLE_DEVICES=void"

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
	edits := cdispec.ContainerEdits{
		DeviceNodes: []*cdispec.DeviceNode{
			c.node("nvidiactl"), c.node("nvidia-uvm"), c.node("nvidia-uvm-tools"),
		},
	}
	if c.DriverEdits != nil {
		copied, err := deepCopyEdits(c.DriverEdits)
		if err != nil {
			return nil, err
		}
		edits = *copied
	}
	// The quota environment last: it wins over anything the driver's edits
	// might set.
	edits.Env = append(withoutEnv(edits.Env, c.Env, VisibleDevicesVoid), c.Env...)
	edits.Env = append(edits.Env, VisibleDevicesVoid)
	if !c.AdminAccess {
		edits.Mounts = append(edits.Mounts,
			&cdispec.Mount{HostPath: c.LibvgpuHostPath, ContainerPath: ContainerLibvgpuPath, Options: ro},
			&cdispec.Mount{HostPath: c.PreloadHostPath, ContainerPath: ContainerPreloadPath, Options: ro},
			&cdispec.Mount{HostPath: c.ClaimHostDir, ContainerPath: ContainerClaimDir, Options: []string{"rw", "nosuid", "nodev", "bind"}},
			&cdispec.Mount{HostPath: c.GPUStateHostDir, ContainerPath: ContainerGPUStateDir, Options: ro},
		)
	}
	claimDev := cdispec.Device{Name: ClaimDeviceName(c.ClaimUID), ContainerEdits: edits}
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

// deepCopyEdits copies e so that a spec never shares slices or pointers
// with the node-wide edits every claim starts from.
func deepCopyEdits(e *cdispec.ContainerEdits) (*cdispec.ContainerEdits, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode the driver's CDI edits: %w", err)
	}
	out := &cdispec.ContainerEdits{}
	if err := json.Unmarshal(data, out); err != nil {
		return nil, fmt.Errorf("decode the driver's CDI edits: %w", err)
	}
	return out, nil
}

// withoutEnv drops from env the variables that the later lists set.
func withoutEnv(env []string, later []string, more ...string) []string {
	names := map[string]bool{}
	for _, kv := range append(append([]string(nil), later...), more...) {
		name, _, _ := strings.Cut(kv, "=")
		names[name] = true
	}
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if name, _, _ := strings.Cut(kv, "="); !names[name] {
			out = append(out, kv)
		}
	}
	return out
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
