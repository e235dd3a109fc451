package health

import (
	"fmt"
	"sort"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// Config tunes the state machine. Zero values select the defaults.
type Config struct {
	// TaintKey is the key of the taint on a sick GPU's device, e.g.
	// "vgpu.hami.io/unhealthy"; its value is the reason ("xid-79").
	TaintKey string
	// FatalEffect is the taint effect of fatal events: NoSchedule (the
	// default) keeps new claims off the GPU; NoExecute also evicts the pods
	// whose claims use it. Recoverable events always taint NoSchedule.
	FatalEffect resourceapi.DeviceTaintEffect
	// KeepFatal keeps a GPU that had a fatal event tainted until the plugin
	// restarts, whatever the recovery check says.
	KeepFatal bool
	// QuietPeriod is how long a sick GPU must go without a new event
	// before it may recover. Default 5 minutes.
	QuietPeriod time.Duration
	// MaxQuietPeriod caps the quiet period, which doubles each time a GPU
	// falls sick again soon after it recovered. Default 1 hour.
	MaxQuietPeriod time.Duration
	// RecoveryProbes is how many recovery checks in a row must pass after
	// the last event. Default 3.
	RecoveryProbes int
	// Now is the clock; tests replace it. Default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.TaintKey == "" {
		c.TaintKey = "vgpu.hami.io/unhealthy"
	}
	if c.FatalEffect == "" {
		c.FatalEffect = resourceapi.DeviceTaintEffectNoSchedule
	}
	if c.QuietPeriod <= 0 {
		c.QuietPeriod = 5 * time.Minute
	}
	if c.MaxQuietPeriod < c.QuietPeriod {
		c.MaxQuietPeriod = max(time.Hour, c.QuietPeriod)
	}
	if c.RecoveryProbes <= 0 {
		c.RecoveryProbes = 3
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate checks what a user sets on the command line.
func (c Config) Validate() error {
	switch c.FatalEffect {
	case "", resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNoExecute:
	default:
		return fmt.Errorf("fatal taint effect %q: want %s or %s", c.FatalEffect, resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNoExecute)
	}
	if c.QuietPeriod < 0 || c.MaxQuietPeriod < 0 || c.RecoveryProbes < 0 {
		return fmt.Errorf("health recovery settings must not be negative")
	}
	return nil
}

// Status is one GPU's health.
type Status struct {
	Healthy bool
	// Class, Reason and Message describe the worst event since the GPU
	// fell sick; empty when healthy.
	Class   Class
	Reason  string
	Message string
	// Since is when the GPU last changed between healthy and sick.
	Since time.Time
	// LastProbeError is the last failed recovery check ("" if it passed).
	LastProbeError string
}

type gpuState struct {
	gpu discovery.GPU
	Status
	lastEvent   time.Time
	passes      int
	quiet       time.Duration
	recoveredAt time.Time
}

// eventKey counts events for metrics.
type eventKey struct {
	uuid, event string
	class       Class
}

// Tracker is the debounced health state of the node's GPUs. A GPU turns
// sick on its first non-ignored event (new work must stop at once) and
// turns healthy only when (a) no event came for the quiet period and (b)
// the recovery check passed RecoveryProbes times in a row since the last
// event. A GPU that falls sick again within twice the quiet period of
// recovering gets a doubled quiet period (up to MaxQuietPeriod), so a GPU
// that keeps failing stays tainted instead of flapping. It is safe for
// concurrent use.
type Tracker struct {
	cfg Config

	mu     sync.Mutex
	gpus   map[string]*gpuState // by UUID
	events map[eventKey]uint64
	subs   map[int]chan struct{}
	nextID int
}

// NewTracker returns a tracker with no GPUs; call SetGPUs.
func NewTracker(cfg Config) *Tracker {
	cfg.setDefaults()
	return &Tracker{cfg: cfg, gpus: map[string]*gpuState{}, events: map[eventKey]uint64{}, subs: map[int]chan struct{}{}}
}

// SetGPUs sets the GPUs tracked. New ones start healthy; the state of GPUs
// still present is kept; GPUs no longer present are forgotten.
func (t *Tracker) SetGPUs(gpus []discovery.GPU) {
	t.mu.Lock()
	defer t.mu.Unlock()
	next := make(map[string]*gpuState, len(gpus))
	changed := len(gpus) != len(t.gpus)
	for _, g := range gpus {
		st, ok := t.gpus[g.UUID]
		if !ok {
			st = &gpuState{Status: Status{Healthy: true, Since: t.cfg.Now()}, quiet: t.cfg.QuietPeriod}
			changed = true
		}
		st.gpu = g
		next[g.UUID] = st
	}
	t.gpus = next
	if changed {
		t.notifyLocked()
	}
}

// Reconcile takes a fresh discovery and returns the GPUs to publish: the
// discovered ones, plus every tracked GPU that discovery no longer finds.
// Such a GPU is lost (fallen off the bus, or its driver gave up): it stays
// published, tainted, so that the scheduler keeps new claims away and the
// pods using it see it in their status, instead of the device silently
// vanishing under them. It comes back healthy once discovery finds it and
// its recovery check passes. (A GPU removed on purpose goes with the
// plugin's next restart.)
func (t *Tracker) Reconcile(discovered []discovery.GPU) []discovery.GPU {
	found := make(map[string]bool, len(discovered))
	for _, g := range discovered {
		found[g.UUID] = true
	}
	all := append([]discovery.GPU(nil), discovered...)
	var lost []string
	for _, g := range t.GPUs() {
		if !found[g.UUID] {
			all = append(all, g)
			lost = append(lost, g.UUID)
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Index < all[j].Index })
	t.SetGPUs(all)
	for _, uuid := range lost {
		t.Observe(discovery.Event{UUID: uuid, Kind: discovery.EventGPULost, Time: t.cfg.Now()})
	}
	return all
}

// GPUs returns the tracked GPUs in index order.
func (t *Tracker) GPUs() []discovery.GPU {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]discovery.GPU, 0, len(t.gpus))
	for _, st := range t.gpus {
		out = append(out, st.gpu)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// Observe applies an event. An event without a UUID concerns every GPU.
// It reports whether any GPU's taints changed.
func (t *Tracker) Observe(ev discovery.Event) bool {
	class, what := Classify(ev)
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	changed := false
	for uuid, st := range t.gpus {
		if ev.UUID != "" && ev.UUID != uuid {
			continue
		}
		t.events[eventKey{uuid, reason(ev), class}]++
		if class == Ignored {
			continue
		}
		st.lastEvent, st.passes = now, 0
		msg := fmt.Sprintf("%s: %s", ev, what)
		switch {
		case st.Healthy:
			if !st.recoveredAt.IsZero() && now.Sub(st.recoveredAt) < 2*st.quiet {
				// Sick again soon after recovering: wait longer this time.
				st.quiet = min(2*st.quiet, t.cfg.MaxQuietPeriod)
			}
			st.Status = Status{Class: class, Reason: reason(ev), Message: msg, Since: now, LastProbeError: st.LastProbeError}
			changed = true
		case class > st.Class:
			st.Class, st.Reason, st.Message = class, reason(ev), msg
			changed = true
		}
	}
	if changed {
		t.notifyLocked()
	}
	return changed
}

// Probe records the result of one recovery check of a GPU (nil: passed).
// A check failing on a healthy GPU makes it sick (Recoverable): NVML sees
// a problem even though no event said so. It reports whether the GPU's
// taints changed.
func (t *Tracker) Probe(uuid string, err error) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.gpus[uuid]
	if !ok {
		return false
	}
	now := t.cfg.Now()
	if err != nil {
		st.LastProbeError = err.Error()
		st.passes = 0
		if !st.Healthy {
			return false
		}
		if !st.recoveredAt.IsZero() && now.Sub(st.recoveredAt) < 2*st.quiet {
			st.quiet = min(2*st.quiet, t.cfg.MaxQuietPeriod)
		}
		st.lastEvent = now
		st.Status = Status{Class: Recoverable, Reason: "probe-failed", Message: "recovery check failed: " + err.Error(), Since: now, LastProbeError: err.Error()}
		t.events[eventKey{uuid, "probe-failed", Recoverable}]++
		t.notifyLocked()
		return true
	}
	st.LastProbeError = ""
	if st.Healthy {
		return false
	}
	st.passes++
	if st.passes < t.cfg.RecoveryProbes || now.Sub(st.lastEvent) < st.quiet {
		return false
	}
	if st.Class == Fatal && t.cfg.KeepFatal {
		return false
	}
	st.Status = Status{Healthy: true, Since: now}
	st.recoveredAt = now
	st.passes = 0
	t.notifyLocked()
	return true
}

// Status returns a GPU's health; ok is false for an unknown GPU.
func (t *Tracker) Status(uuid string) (Status, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.gpus[uuid]
	if !ok {
		return Status{}, false
	}
	return st.Status, true
}

// Taints returns the taints of a GPU's device: none when healthy.
func (t *Tracker) Taints(uuid string) []resourceapi.DeviceTaint {
	st, ok := t.Status(uuid)
	if !ok || st.Healthy {
		return nil
	}
	effect := resourceapi.DeviceTaintEffectNoSchedule
	if st.Class == Fatal {
		effect = t.cfg.FatalEffect
	}
	// TimeAdded is left to the API server, which sets it on create; the
	// slice controller keeps it across republishing.
	return []resourceapi.DeviceTaint{{Key: t.cfg.TaintKey, Value: st.Reason, Effect: effect}}
}

// Subscribe returns a channel that receives a value after every change of
// any GPU's health (coalesced: one pending value at most), and a function
// that ends the subscription.
func (t *Tracker) Subscribe() (<-chan struct{}, func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := t.nextID
	t.nextID++
	ch := make(chan struct{}, 1)
	t.subs[id] = ch
	return ch, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		delete(t.subs, id)
	}
}

func (t *Tracker) notifyLocked() {
	for _, ch := range t.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
