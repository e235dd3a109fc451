package drivercdi

import oci "github.com/opencontainers/runtime-spec/specs-go"

// newOCISpec is the part of a runtime's OCI spec that CDI edits touch.
func newOCISpec() *oci.Spec {
	return &oci.Spec{Process: &oci.Process{Env: []string{"PATH=/usr/bin"}}, Linux: &oci.Linux{}}
}
