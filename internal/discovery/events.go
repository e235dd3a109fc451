package discovery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
)

// EventKind is what happened to a GPU. The values are stable: they appear
// in metrics and in the simulated event file.
type EventKind string

const (
	// EventXID is a critical error NVML reports with an XID number.
	EventXID EventKind = "xid"
	// EventDoubleBitECC is an uncorrectable (double-bit) memory error.
	EventDoubleBitECC EventKind = "ecc-double-bit"
	// EventGPULost is a GPU that no longer answers (fallen off the bus,
	// NVML_ERROR_GPU_IS_LOST, GPU-unavailable event).
	EventGPULost EventKind = "gpu-lost"
	// EventThermal is a hardware thermal slowdown.
	EventThermal EventKind = "thermal"
	// EventPoison is an uncontained poisoned-memory error.
	EventPoison EventKind = "poison"
)

// Event is one health event of one GPU. An event NVML could not attribute
// to a GPU has an empty UUID: it concerns every GPU of the node.
type Event struct {
	UUID string
	Kind EventKind
	// XID is the XID number of EventXID events, 0 otherwise.
	XID  uint64
	Time time.Time
}

func (e Event) String() string {
	if e.Kind == EventXID {
		return fmt.Sprintf("XID %d", e.XID)
	}
	return string(e.Kind)
}

// HealthSource reports GPU health: the events as they happen and, on
// request, whether a GPU is fit for work again.
type HealthSource interface {
	// WatchEvents sends the events of the GPUs with the given UUIDs until
	// ctx ends. It returns an error only when events cannot be watched at
	// all (the caller then relies on Probe alone).
	WatchEvents(ctx context.Context, uuids []string, events chan<- Event) error
	// Probe checks one GPU: it answers NVML, has no memory repair pending
	// that needs a reset, and is not in thermal slowdown. A nil error
	// means healthy.
	Probe(ctx context.Context, uuid string) error
}

// nvmlWatchedEvents are the NVML event types that concern health. Clock
// events are watched because a thermal slowdown shows as one; the reasons
// are read when it arrives.
const nvmlWatchedEvents = nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError |
	nvml.EventTypeGpuUnavailableError | nvml.EventTypeFatalPoisonError | nvml.EventTypeClock

// thermalReasons are the clock-event reasons that mean the GPU is too hot.
const thermalReasons = nvml.ClocksThrottleReasonHwThermalSlowdown | nvml.ClocksThrottleReasonSwThermalSlowdown

// eventWaitTimeout bounds each NVML wait so that cancellation is noticed.
const eventWaitTimeout = 1000 // milliseconds

var _ HealthSource = (*NVMLDiscoverer)(nil)

// WatchEvents registers for NVML's health events on every GPU that supports
// them and translates what arrives. A GPU that cannot register (older
// boards do not support some types) is logged and watched by Probe only.
func (d *NVMLDiscoverer) WatchEvents(ctx context.Context, uuids []string, events chan<- Event) error {
	logger := klog.FromContext(ctx)
	set, ret := d.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("create NVML event set: %w", ret)
	}
	defer set.Free()
	byHandle := map[nvml.Device]string{}
	for _, uuid := range uuids {
		dev, ret := d.lib.DeviceGetHandleByUUID(uuid)
		if ret != nvml.SUCCESS {
			logger.Info("Cannot watch a GPU's events", "uuid", uuid, "err", ret)
			continue
		}
		types := uint64(nvmlWatchedEvents)
		if supported, ret := dev.GetSupportedEventTypes(); ret == nvml.SUCCESS {
			types &= supported
		}
		if ret := dev.RegisterEvents(types, set); ret != nvml.SUCCESS {
			logger.Info("Cannot register for a GPU's events; relying on probes", "uuid", uuid, "err", ret)
			continue
		}
		byHandle[dev] = uuid
	}
	for ctx.Err() == nil {
		data, ret := set.Wait(eventWaitTimeout)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		case nvml.ERROR_GPU_IS_LOST:
			// The wait itself failed because a GPU vanished; which one the
			// probes will tell.
			if !send(ctx, events, Event{Kind: EventGPULost, Time: time.Now()}) {
				return nil
			}
			continue
		default:
			return fmt.Errorf("wait for NVML events: %w", ret)
		}
		ev, ok := translate(data, byHandle)
		if !ok {
			continue
		}
		logger.V(2).Info("GPU health event", "uuid", ev.UUID, "event", ev.String())
		if !send(ctx, events, ev) {
			return nil
		}
	}
	return nil
}

// translate turns NVML's event data into an Event; ok is false for events
// that say nothing about health (a clock change without thermal reasons).
func translate(data nvml.EventData, byHandle map[nvml.Device]string) (Event, bool) {
	ev := Event{Time: time.Now()}
	if data.Device != nil {
		if uuid, ok := byHandle[data.Device]; ok {
			ev.UUID = uuid
		} else if uuid, ret := data.Device.GetUUID(); ret == nvml.SUCCESS {
			ev.UUID = uuid
		}
	}
	switch {
	case data.EventType&nvml.EventTypeXidCriticalError != 0:
		ev.Kind, ev.XID = EventXID, data.EventData
	case data.EventType&nvml.EventTypeDoubleBitEccError != 0:
		ev.Kind = EventDoubleBitECC
	case data.EventType&nvml.EventTypeGpuUnavailableError != 0:
		ev.Kind = EventGPULost
	case data.EventType&nvml.EventTypeFatalPoisonError != 0:
		ev.Kind = EventPoison
	case data.EventType&nvml.EventTypeClock != 0:
		if data.Device == nil {
			return Event{}, false
		}
		reasons, ret := data.Device.GetCurrentClocksEventReasons()
		if ret != nvml.SUCCESS || reasons&thermalReasons == 0 {
			return Event{}, false
		}
		ev.Kind = EventThermal
	default:
		return Event{}, false
	}
	return ev, true
}

// ErrGPUUnhealthy wraps every reason Probe finds a GPU unfit.
var ErrGPUUnhealthy = errors.New("GPU unhealthy")

// Probe is the recovery check: the GPU is found by UUID and answers a
// memory query, has no row remapping pending or failed (those need a GPU
// reset), and no thermal slowdown is active. Checks a GPU does not
// support are skipped.
func (d *NVMLDiscoverer) Probe(_ context.Context, uuid string) error {
	dev, ret := d.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("%w: %s not found by NVML: %w", ErrGPUUnhealthy, uuid, ret)
	}
	if _, ret := dev.GetMemoryInfo(); ret != nvml.SUCCESS {
		return fmt.Errorf("%w: %s does not answer: %w", ErrGPUUnhealthy, uuid, ret)
	}
	if _, _, pending, failed, ret := dev.GetRemappedRows(); ret == nvml.SUCCESS {
		if failed {
			return fmt.Errorf("%w: %s: row remapping failed; the GPU needs service", ErrGPUUnhealthy, uuid)
		}
		if pending {
			return fmt.Errorf("%w: %s: row remapping pending; reset the GPU", ErrGPUUnhealthy, uuid)
		}
	}
	if reasons, ret := dev.GetCurrentClocksEventReasons(); ret == nvml.SUCCESS && reasons&thermalReasons != 0 {
		return fmt.Errorf("%w: %s: thermal slowdown active", ErrGPUUnhealthy, uuid)
	}
	return nil
}

func send(ctx context.Context, events chan<- Event, ev Event) bool {
	select {
	case events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}
