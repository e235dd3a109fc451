// Package health turns GPU health events into device state: it classifies
// NVML events (the XID table below), keeps a debounced health state per GPU
// that taints quickly and recovers slowly, and reports that state as
// ResourceSlice device taints, to the kubelet (WatchHealthStatus, KEP-4680)
// and as metrics. See README.md in this directory.
package health

import (
	"fmt"
	"strconv"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// Class is what an event means for the GPU.
type Class int

const (
	// Ignored events are caused by one application (a bad kernel, an
	// illegal address); the GPU is fine and other tenants are unaffected.
	// They are counted in metrics only.
	Ignored Class = iota
	// Recoverable events make the GPU unfit for new work for a while; it
	// is tainted NoSchedule and recovers once the recovery check passes.
	Recoverable
	// Fatal events mean the GPU is broken or needs a reset; it is tainted
	// with the configured fatal effect (NoSchedule, or NoExecute to evict
	// its pods) and recovers only after the GPU was reset (the recovery
	// check passes again).
	Fatal
)

func (c Class) String() string {
	switch c {
	case Ignored:
		return "ignored"
	case Recoverable:
		return "recoverable"
	case Fatal:
		return "fatal"
	}
	return "class-" + strconv.Itoa(int(c))
}

// xidClass is one row of the XID table.
type xidClass struct {
	class Class
	what  string
}

// xidTable classifies XIDs, from NVIDIA's XID catalog. XIDs not listed are
// Recoverable: a new or rare error is never silently ignored, and a GPU
// that is fine passes the recovery check and comes back by itself.
// Keep README.md's table in step.
var xidTable = map[uint64]xidClass{
	// Application errors: one process's fault.
	13:  {Ignored, "graphics engine exception (application fault)"},
	31:  {Ignored, "GPU memory page fault (application fault)"},
	43:  {Ignored, "GPU stopped processing (application channel reset)"},
	45:  {Ignored, "preemptive cleanup after an earlier error"},
	68:  {Ignored, "video processor exception"},
	109: {Ignored, "context switch timeout (application)"},

	// Fatal: the GPU needs a reset, a node reboot or service.
	48:  {Fatal, "double-bit ECC error"},
	62:  {Fatal, "internal micro-controller halt"},
	64:  {Fatal, "ECC page retirement or row remapping failure"},
	74:  {Fatal, "NVLink error"},
	79:  {Fatal, "GPU has fallen off the bus"},
	92:  {Fatal, "high single-bit ECC error rate"},
	94:  {Fatal, "contained ECC error"},
	95:  {Fatal, "uncontained ECC error"},
	119: {Fatal, "GSP RPC timeout"},
	120: {Fatal, "GSP error"},
	140: {Fatal, "unrecovered ECC error"},

	// Recoverable: the GPU may be fine after a while or a reset.
	32:  {Recoverable, "invalid or corrupted push buffer stream"},
	38:  {Recoverable, "driver firmware error"},
	61:  {Recoverable, "internal micro-controller breakpoint or warning"},
	63:  {Recoverable, "ECC page retirement or row remapping event"},
	69:  {Recoverable, "graphics engine class error"},
	154: {Recoverable, "GPU recovery action changed"},
}

// kindClass classifies the events that are not XIDs.
var kindClass = map[discovery.EventKind]xidClass{
	discovery.EventDoubleBitECC: {Fatal, "double-bit ECC error"},
	discovery.EventGPULost:      {Fatal, "GPU lost"},
	discovery.EventPoison:       {Fatal, "uncontained poisoned memory"},
	discovery.EventThermal:      {Recoverable, "thermal slowdown"},
}

// Classify returns the class of an event and a short description.
func Classify(ev discovery.Event) (Class, string) {
	if ev.Kind == discovery.EventXID {
		if c, ok := xidTable[ev.XID]; ok {
			return c.class, c.what
		}
		return Recoverable, fmt.Sprintf("XID %d (not in the table)", ev.XID)
	}
	if c, ok := kindClass[ev.Kind]; ok {
		return c.class, c.what
	}
	return Recoverable, "unknown event " + string(ev.Kind)
}

// reason is the taint value and the metrics' event label: a label value
// ("xid-79", "ecc-double-bit").
func reason(ev discovery.Event) string {
	if ev.Kind == discovery.EventXID {
		return "xid-" + strconv.FormatUint(ev.XID, 10)
	}
	return string(ev.Kind)
}
