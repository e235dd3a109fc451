package discovery

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"k8s.io/klog/v2/ktesting"
)

// eventNVML is a mock NVML with two GPUs and a queue of events, as
// nvmlEventSetWait delivers them: one per call, ERROR_TIMEOUT when none.
type eventNVML struct {
	mu      sync.Mutex
	queue   []nvml.EventData
	devices map[string]*mock.Device
	// registered records the event types registered per UUID.
	registered map[string]uint64
}

func newEventNVML(reasons uint64, remapPending bool) (*eventNVML, *mock.Interface) {
	e := &eventNVML{devices: map[string]*mock.Device{}, registered: map[string]uint64{}}
	for _, uuid := range []string{"GPU-a", "GPU-b"} {
		e.devices[uuid] = &mock.Device{
			GetUUIDFunc:                func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
			GetSupportedEventTypesFunc: func() (uint64, nvml.Return) { return nvml.EventTypeAll, nvml.SUCCESS },
			RegisterEventsFunc: func(types uint64, _ nvml.EventSet) nvml.Return {
				e.mu.Lock()
				defer e.mu.Unlock()
				e.registered[uuid] = types
				return nvml.SUCCESS
			},
			GetCurrentClocksEventReasonsFunc: func() (uint64, nvml.Return) { return reasons, nvml.SUCCESS },
			GetMemoryInfoFunc:                func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.SUCCESS },
			GetRemappedRowsFunc:              func() (int, int, bool, bool, nvml.Return) { return 0, 1, remapPending, false, nvml.SUCCESS },
		}
	}
	set := &mock.EventSet{
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		WaitFunc: func(timeout uint32) (nvml.EventData, nvml.Return) {
			e.mu.Lock()
			defer e.mu.Unlock()
			if len(e.queue) == 0 {
				e.mu.Unlock()
				time.Sleep(time.Millisecond)
				e.mu.Lock()
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
			ev := e.queue[0]
			e.queue = e.queue[1:]
			return ev, nvml.SUCCESS
		},
	}
	lib := &mock.Interface{
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS },
		DeviceGetHandleByUUIDFunc: func(uuid string) (nvml.Device, nvml.Return) {
			if d, ok := e.devices[uuid]; ok {
				return d, nvml.SUCCESS
			}
			return nil, nvml.ERROR_GPU_IS_LOST
		},
	}
	return e, lib
}

func TestNVMLWatchEvents(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e, lib := newEventNVML(nvml.ClocksThrottleReasonHwThermalSlowdown, false)
	e.queue = []nvml.EventData{
		{Device: e.devices["GPU-b"], EventType: nvml.EventTypeXidCriticalError, EventData: 79},
		{Device: e.devices["GPU-a"], EventType: nvml.EventTypeDoubleBitEccError},
		{Device: e.devices["GPU-a"], EventType: nvml.EventTypeXidCriticalError, EventData: 13},
		{Device: e.devices["GPU-b"], EventType: nvml.EventTypeClock},
		{Device: nil, EventType: nvml.EventTypeXidCriticalError, EventData: 119},
	}
	d := &NVMLDiscoverer{lib: lib}
	events := make(chan Event)
	done := make(chan error, 1)
	go func() { done <- d.WatchEvents(ctx, []string{"GPU-a", "GPU-b", "GPU-gone"}, events) }()
	want := []Event{
		{UUID: "GPU-b", Kind: EventXID, XID: 79},
		{UUID: "GPU-a", Kind: EventDoubleBitECC},
		{UUID: "GPU-a", Kind: EventXID, XID: 13},
		{UUID: "GPU-b", Kind: EventThermal},
		{UUID: "", Kind: EventXID, XID: 119}, // not attributed: every GPU
	}
	for i, w := range want {
		select {
		case got := <-events:
			got.Time = time.Time{}
			if got != w {
				t.Errorf("event %d: %+v, want %+v", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d not delivered", i)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if e.registered["GPU-a"]&nvml.EventTypeXidCriticalError == 0 || e.registered["GPU-b"]&nvml.EventTypeDoubleBitEccError == 0 {
		t.Errorf("registered event types %v", e.registered)
	}
}

func TestNVMLProbe(t *testing.T) {
	tests := []struct {
		name    string
		uuid    string
		reasons uint64
		pending bool
		healthy bool
	}{
		{"healthy", "GPU-a", 0, false, true},
		{"lost", "GPU-gone", 0, false, false},
		{"row remapping pending", "GPU-a", 0, true, false},
		{"thermal slowdown", "GPU-a", nvml.ClocksThrottleReasonHwThermalSlowdown, false, false},
		{"power cap is not a fault", "GPU-a", nvml.ClocksThrottleReasonSwPowerCap, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, lib := newEventNVML(tc.reasons, tc.pending)
			err := (&NVMLDiscoverer{lib: lib}).Probe(context.Background(), tc.uuid)
			if tc.healthy != (err == nil) || (err != nil && !errors.Is(err, ErrGPUUnhealthy)) {
				t.Errorf("Probe: %v, want healthy=%v", err, tc.healthy)
			}
		})
	}
}

// FuzzParseInjectedEvent: any line is either rejected with an error or
// yields an event for an existing GPU with exactly one action.
func FuzzParseInjectedEvent(f *testing.F) {
	for _, s := range []string{`{"gpu": 0, "xid": 79}`, `{"gpu": 3, "event": "thermal"}`, `{"gpu": 1, "reset": true}`, `{"gpu": 9}`, `[]`, `{"gpu": 0, "xid": 1e99}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := ParseInjectedEvent(line, 4)
		if err != nil {
			return
		}
		actions := 0
		for _, b := range []bool{ev.XID != 0, ev.Event != "", ev.Reset} {
			if b {
				actions++
			}
		}
		if ev.GPU < 0 || ev.GPU >= 4 || actions != 1 {
			t.Fatalf("accepted %q as %+v", line, ev)
		}
	})
}
