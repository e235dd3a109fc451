package discovery

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Simulated GPUs can be made sick for tests: lines appended to an
// injection file (JSON, one object a line) become the NVML events a real
// GPU would raise, and change the simulated hardware as the real fault
// would, so that the recovery check sees what it would see on a node:
//
//	{"gpu": 0, "xid": 79}              fallen off the bus: GPU 0 disappears from discovery, probes fail
//	{"gpu": 0, "xid": 48}              double-bit ECC: row remapping pending until reset
//	{"gpu": 0, "event": "ecc-double-bit"}
//	{"gpu": 0, "event": "thermal"}     thermal slowdown until reset
//	{"gpu": 0, "xid": 13}              application error: no lasting effect
//	{"gpu": 0, "reset": true}          GPU reset: the GPU is back and clean
//
// "gpu" is the GPU's position in the profile (its simulated NVML index).
// Only the plugin's --simulate mode reads such a file; a real node has none.

// InjectedEvent is one line of the injection file.
type InjectedEvent struct {
	GPU   int       `json:"gpu"`
	XID   uint64    `json:"xid,omitempty"`
	Event EventKind `json:"event,omitempty"`
	Reset bool      `json:"reset,omitempty"`
}

// ParseInjectedEvent decodes and checks one line for a node with gpus GPUs.
func ParseInjectedEvent(line []byte, gpus int) (InjectedEvent, error) {
	var ev InjectedEvent
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return InjectedEvent{}, fmt.Errorf("injected event %q: %w", line, err)
	}
	if dec.More() {
		return InjectedEvent{}, fmt.Errorf("injected event %q: one JSON object per line", line)
	}
	if ev.GPU < 0 || ev.GPU >= gpus {
		return InjectedEvent{}, fmt.Errorf("injected event %q: gpu %d is not in 0..%d", line, ev.GPU, gpus-1)
	}
	set := 0
	for _, b := range []bool{ev.XID != 0, ev.Event != "", ev.Reset} {
		if b {
			set++
		}
	}
	if set != 1 {
		return InjectedEvent{}, fmt.Errorf("injected event %q: give exactly one of xid, event, reset", line)
	}
	switch ev.Event {
	case "", EventDoubleBitECC, EventGPULost, EventThermal, EventPoison:
	default:
		return InjectedEvent{}, fmt.Errorf("injected event %q: unknown event %q (want %s, %s, %s or %s)", line, ev.Event, EventDoubleBitECC, EventGPULost, EventThermal, EventPoison)
	}
	return ev, nil
}

// simulatedFault is the lasting state a fault leaves on a simulated GPU.
type simulatedFault struct {
	lost, remapPending, thermal bool
}

// injection is the simulated hardware's fault state and the file it is
// driven by.
type injection struct {
	path string
	mu   sync.Mutex
	// faults by GPU position.
	faults map[int]simulatedFault
	// offset is how far the file has been applied.
	offset int64
}

// injectionPoll is how often the injection file is read for new lines.
const injectionPoll = 100 * time.Millisecond

// EnableEventInjection makes the simulated GPUs read injected events from
// path (see the format above). The file need not exist yet. What it holds
// already is the hardware's state when the plugin starts (faults persist
// across plugin restarts, as on a real node); those lines raise no events.
// Lines appended later are events, reported by WatchEvents.
func (d *SimulatedDiscoverer) EnableEventInjection(ctx context.Context, path string) error {
	d.injection = &injection{path: path, faults: map[int]simulatedFault{}}
	lines, offset, err := readNewLines(path, 0)
	if err != nil {
		return err
	}
	d.injection.offset = offset
	for _, line := range lines {
		in, err := ParseInjectedEvent(line, len(d.gpus))
		if err != nil {
			klog.FromContext(ctx).Error(err, "Ignoring an injected event")
			continue
		}
		d.apply(in)
	}
	return nil
}

func (d *SimulatedDiscoverer) lost(index int) bool {
	if d.injection == nil {
		return false
	}
	d.injection.mu.Lock()
	defer d.injection.mu.Unlock()
	return d.injection.faults[index].lost
}

var _ HealthSource = (*SimulatedDiscoverer)(nil)

// WatchEvents follows the injection file from its current end and turns
// each new line into the event the real GPU would report. Without
// injection it just waits: simulated GPUs do not fail by themselves.
func (d *SimulatedDiscoverer) WatchEvents(ctx context.Context, uuids []string, events chan<- Event) error {
	if d.injection == nil {
		<-ctx.Done()
		return nil
	}
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(injectionPoll)
	defer ticker.Stop()
	for {
		d.injection.mu.Lock()
		offset := d.injection.offset
		d.injection.mu.Unlock()
		lines, next, err := readNewLines(d.injection.path, offset)
		if err != nil {
			return err
		}
		d.injection.mu.Lock()
		d.injection.offset = next
		d.injection.mu.Unlock()
		for _, line := range lines {
			in, err := ParseInjectedEvent(line, len(d.gpus))
			if err != nil {
				logger.Error(err, "Ignoring an injected event")
				continue
			}
			ev, ok := d.apply(in)
			if !ok {
				continue
			}
			if !send(ctx, events, ev) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// apply changes the simulated hardware and returns the event NVML would
// raise (a reset raises none).
func (d *SimulatedDiscoverer) apply(in InjectedEvent) (Event, bool) {
	d.injection.mu.Lock()
	defer d.injection.mu.Unlock()
	f := d.injection.faults[in.GPU]
	ev := Event{UUID: SimulatedUUID(d.nodeName, in.GPU, d.gpus[in.GPU].ProductName), Kind: in.Event, XID: in.XID, Time: time.Now()}
	if in.XID != 0 {
		ev.Kind = EventXID
	}
	switch {
	case in.Reset:
		delete(d.injection.faults, in.GPU)
		return Event{}, false
	case in.XID == 79 || in.Event == EventGPULost:
		f.lost = true
	case in.XID == 48 || in.XID == 94 || in.XID == 95 || in.Event == EventDoubleBitECC || in.Event == EventPoison:
		// Uncorrectable memory errors leave a row remapping pending that
		// only a GPU reset applies.
		f.remapPending = true
	case in.Event == EventThermal:
		f.thermal = true
	}
	d.injection.faults[in.GPU] = f
	return ev, true
}

// Probe reports the simulated GPU's fault state as the NVML probe would.
func (d *SimulatedDiscoverer) Probe(_ context.Context, uuid string) error {
	for i, g := range d.gpus {
		if SimulatedUUID(d.nodeName, i, g.ProductName) != uuid {
			continue
		}
		if d.injection == nil {
			return nil
		}
		d.injection.mu.Lock()
		f := d.injection.faults[i]
		d.injection.mu.Unlock()
		switch {
		case f.lost:
			return fmt.Errorf("%w: %s not found by NVML: GPU is lost", ErrGPUUnhealthy, uuid)
		case f.remapPending:
			return fmt.Errorf("%w: %s: row remapping pending; reset the GPU", ErrGPUUnhealthy, uuid)
		case f.thermal:
			return fmt.Errorf("%w: %s: thermal slowdown active", ErrGPUUnhealthy, uuid)
		}
		return nil
	}
	return fmt.Errorf("%w: %s not found by NVML", ErrGPUUnhealthy, uuid)
}

// readNewLines returns the complete lines after offset and the offset past
// them; a partly written last line waits for the next call.
func readNewLines(path string, offset int64) ([][]byte, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, offset, nil
	}
	if err != nil {
		return nil, offset, fmt.Errorf("open injected events: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, offset, fmt.Errorf("stat injected events: %w", err)
	}
	if fi.Size() < offset {
		offset = 0 // truncated: start over
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, offset, fmt.Errorf("seek injected events: %w", err)
	}
	var lines [][]byte
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			// io.EOF with a partial line: leave it for later.
			break
		}
		offset += int64(len(line))
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			lines = append(lines, trimmed)
		}
	}
	return lines, offset, nil
}
