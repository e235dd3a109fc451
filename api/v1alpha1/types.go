// Package v1alpha1 holds version v1alpha1 of the opaque configuration that
// users put into DeviceClass and ResourceClaim configs for the hami-dra
// driver (apiVersion vgpu.hami.io/v1alpha1, kind VgpuConfig).
package v1alpha1

import (
	"fmt"
	"strings"
)

const (
	// Group is the API group of the driver's opaque configuration.
	Group = "vgpu.hami.io"
	// Version is this package's version.
	Version = "v1alpha1"
	// APIVersion is "vgpu.hami.io/v1alpha1".
	APIVersion = Group + "/" + Version
	// KindVgpuConfig is the only kind of this version.
	KindVgpuConfig = "VgpuConfig"
)

// ComputePolicy says how libvgpu applies a claim's compute share.
type ComputePolicy string

const (
	// HardCap: the claim never uses more than its share, even on an idle
	// GPU (VGPU_COMPUTE_POLICY=hard).
	HardCap ComputePolicy = "HardCap"
	// BestEffort: the claim may use what the other claims on the GPU have
	// not reserved, and at least its own share (VGPU_COMPUTE_POLICY=besteffort).
	BestEffort ComputePolicy = "BestEffort"
)

// MemoryAuditAction says what the node's audit does when a claim's
// processes hold more device memory than its quota (as NVML reports it,
// whatever libvgpu says).
type MemoryAuditAction string

const (
	// Kill: an event and a metric, then SIGKILL to the claim's largest
	// processes on that GPU after the audit's grace period (the default).
	Kill MemoryAuditAction = "Kill"
	// Warn: the event and the metric only.
	Warn MemoryAuditAction = "Warn"
)

// Log levels of libvgpu (LIBCUDA_LOG_LEVEL).
const (
	LogLevelErrors   = 0
	LogLevelWarnings = 1
	LogLevelInfo     = 2
	LogLevelDebug    = 3
	LogLevelTrace    = 4
)

// VgpuConfig is the driver's opaque configuration. Every field is optional:
// configs are merged field by field (class configs first, then claim
// configs, later ones win), then defaulted.
//
// Memory and compute quotas are not set here: they come from the
// capacity that the scheduler allocated (ResourceClaim requests of the
// "memory" and "cores" capacities), so the scheduler and libvgpu can never
// disagree about them.
type VgpuConfig struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`

	// ComputePolicy is HardCap (default) or BestEffort.
	ComputePolicy *ComputePolicy `json:"computePolicy,omitempty"`
	// LogLevel is libvgpu's verbosity on stderr: 0 errors, 1 warnings
	// (default), 2 info, 3 and 4 debug.
	LogLevel *int `json:"logLevel,omitempty"`
	// MemoryAuditAction is Kill (default) or Warn: what the node's audit
	// does to a claim over its memory quota.
	MemoryAuditAction *MemoryAuditAction `json:"memoryAuditAction,omitempty"`
}

// DefaultHardCap etc. are the documented defaults.
const (
	DefaultComputePolicy = HardCap
	DefaultLogLevel      = LogLevelWarnings
	DefaultMemoryAudit   = Kill
)

// Merge returns a copy of c with every field that other sets taken from
// other: other is the later config and wins.
func (c VgpuConfig) Merge(other *VgpuConfig) VgpuConfig {
	out := c
	if other == nil {
		return out
	}
	if other.ComputePolicy != nil {
		p := *other.ComputePolicy
		out.ComputePolicy = &p
	}
	if other.LogLevel != nil {
		l := *other.LogLevel
		out.LogLevel = &l
	}
	if other.MemoryAuditAction != nil {
		a := *other.MemoryAuditAction
		out.MemoryAuditAction = &a
	}
	return out
}

// Default fills unset fields with the documented defaults.
func (c *VgpuConfig) Default() {
	c.APIVersion, c.Kind = APIVersion, KindVgpuConfig
	if c.ComputePolicy == nil {
		p := DefaultComputePolicy
		c.ComputePolicy = &p
	}
	if c.LogLevel == nil {
		l := DefaultLogLevel
		c.LogLevel = &l
	}
	if c.MemoryAuditAction == nil {
		a := DefaultMemoryAudit
		c.MemoryAuditAction = &a
	}
}

// Validate checks the set fields; messages name the field and the allowed
// values so users can fix their claim.
func (c *VgpuConfig) Validate() error {
	var errs []string
	if p := c.ComputePolicy; p != nil && *p != HardCap && *p != BestEffort {
		errs = append(errs, fmt.Sprintf("computePolicy: unsupported value %q, allowed values: %q, %q", *p, HardCap, BestEffort))
	}
	if l := c.LogLevel; l != nil && (*l < LogLevelErrors || *l > LogLevelTrace) {
		errs = append(errs, fmt.Sprintf("logLevel: %d out of range, allowed values: 0 (errors) to 4 (trace)", *l))
	}
	if a := c.MemoryAuditAction; a != nil && *a != Kill && *a != Warn {
		errs = append(errs, fmt.Sprintf("memoryAuditAction: unsupported value %q, allowed values: %q, %q", *a, Kill, Warn))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid %s: %s", KindVgpuConfig, strings.Join(errs, "; "))
	}
	return nil
}

// PolicyEnv is the VGPU_COMPUTE_POLICY value of a defaulted config.
func (c *VgpuConfig) PolicyEnv() string {
	if c.ComputePolicy != nil && *c.ComputePolicy == BestEffort {
		return "besteffort"
	}
	return "hard"
}
