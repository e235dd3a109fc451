// Package version holds the build's version, set by the linker from the
// Makefile (`-X .../internal/version.Version=...`).
package version

// Version is the release of hami-dra this binary was built from.
var Version = "dev"
