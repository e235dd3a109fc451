//go:build tools

// Package tools pins the container runtime of the real node: containerd v2,
// runc and the CNI loopback plugin, built from their Go modules by
// e2e/Makefile (`make realnode`).
// They live in their own module so that their dependencies never move the
// Kubernetes versions of the e2e module.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/opencontainers/runc"
)
