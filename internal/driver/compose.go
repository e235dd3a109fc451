package driver

import (
	"fmt"
	"strings"
	"sync"

	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/hami-dra/hami-dra/internal/checkpoint"
)

// toolkitDevices resolves the NVIDIA Container Toolkit's CDI devices that a
// claim composes with (Config.ComposeNvidiaCDI) the way the runtime will:
// through the CDI registry of the spec directories. A device the runtime
// cannot resolve fails the container with "unresolvable CDI devices" long
// after Prepare said yes; checking here fails the claim with the reason.
type toolkitDevices struct {
	mu    sync.Mutex
	dirs  []string
	cache *cdiapi.Cache
}

func newToolkitDevices(dirs []string) (*toolkitDevices, error) {
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(dirs...), cdiapi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI registry of %v: %w", dirs, err)
	}
	return &toolkitDevices{dirs: dirs, cache: cache}, nil
}

// check re-reads the spec directories (the toolkit may have written or
// removed its spec since) and reports the first of rec's devices of kind
// that does not resolve.
func (t *toolkitDevices) check(kind string, rec checkpoint.Claim) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	// Errors of unrelated spec files do not matter here; a missing device
	// does, and is reported below.
	_ = t.cache.Refresh()
	for _, ids := range rec.CDIDeviceIDs {
		for _, id := range ids {
			if !strings.HasPrefix(id, kind+"=") {
				continue
			}
			if t.cache.GetDevice(id) != nil {
				continue
			}
			return fmt.Errorf("CDI device %s is not defined by any CDI spec in %s, so the container runtime could not start the container; "+
				"generate the NVIDIA Container Toolkit's per-GPU spec (nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml, "+
				"again after every driver update and reboot) or run the plugin without --compose-nvidia-cdi, which gives claims the driver from --driver-root",
				id, strings.Join(t.dirs, ", "))
		}
	}
	return nil
}
