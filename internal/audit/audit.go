// Package audit enforces from the node what libvgpu enforces inside the
// container, where the tenant can defeat it (a static binary, a process
// that drops the preload, direct ioctls on /dev/nvidia*, a rewritten
// accounting region). Every interval it reads what the GPU itself reports
// through NVML (per-process device memory and per-process utilisation),
// maps each host PID to its pod by the PID's cgroup and to the pod's
// prepared claims, and then:
//   - memory: a claim whose processes hold more than its quota plus a
//     margin is over quota: an event on the pod and the claim, a metric,
//     and, unless the claim's action is Warn, SIGKILL to its largest
//     processes on that GPU after a grace period, until it is back under;
//   - compute: a claim with a hard-capped share whose measured share stays
//     above it by more than a margin over a window is reported (event and
//     metric); nothing is killed for compute;
//   - processes on a GPU that belong to no prepared claim of that GPU are
//     counted per GPU.
//
// Nothing the container can write is used: quotas come from the checkpoint,
// usage from NVML, the pod from the cgroup.
package audit

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/hami-dra/hami-dra/internal/region"
)

// Action is what happens to a claim over its memory quota.
type Action string

const (
	// ActionKill reports, then kills the claim's largest processes on the
	// GPU after the grace period (the default).
	ActionKill Action = "Kill"
	// ActionWarn only reports.
	ActionWarn Action = "Warn"
)

// GPUQuota is a claim's quota on one GPU.
type GPUQuota struct {
	UUID        string
	MemoryBytes int64
	// Cores is the compute share in percent; HardCap says it is a ceiling
	// (only then is exceeding it reported).
	Cores   int64
	HardCap bool
}

// Claim is a prepared claim.
type Claim struct {
	UID, Namespace, Name string
	GPUs                 []GPUQuota
	MemoryAction         Action
	// RegionPath is the host path of the claim's accounting region, where
	// libvgpu keeps what it counted ("" if none). It is container-written:
	// only quoted next to NVML's figure, so that an event shows when the
	// two disagree (a process bypassing libvgpu, or a rewritten region).
	RegionPath string
}

// Pod is a pod of the node and the claims it uses, by namespace/name.
type Pod struct {
	UID, Namespace, Name string
	Claims               []string
}

// Process is one process NVML lists on a GPU.
type Process struct {
	PID         uint32
	MemoryBytes uint64
}

// Sample is one of NVML's per-process utilisation samples: the percent of
// one sample period during which the process's kernels ran.
type Sample struct {
	PID         uint32
	TimestampUs uint64
	SMUtil      uint32
}

// GPUs is what the GPUs report (NVML, or the simulated GPUs).
type GPUs interface {
	// Processes lists the processes holding memory or contexts on a GPU
	// (compute and graphics), by host PID.
	Processes(uuid string) ([]Process, error)
	// Utilization returns the samples newer than sinceUs.
	Utilization(uuid string, sinceUs uint64) ([]Sample, error)
}

// Reporter publishes findings: events on the pods and the claim.
type Reporter interface {
	Report(ctx context.Context, f Finding)
}

// Reason names a finding (the event's reason).
type Reason string

const (
	ReasonMemoryOverQuota Reason = "GPUMemoryOverQuota"
	ReasonKilled          Reason = "GPUMemoryOverQuotaKilled"
	ReasonComputeOver     Reason = "GPUComputeOverShare"
)

// Finding is one report about the claims of one group on one GPU.
type Finding struct {
	Reason  Reason
	GPU     string
	Claims  []Claim
	Pods    []Pod
	Message string
}

// Config is the audit's inputs and policy.
type Config struct {
	GPUs GPUs
	// NodeGPUs lists the UUIDs of the node's GPUs.
	NodeGPUs func() []string
	// Claims lists the prepared claims (admin-access claims left out).
	Claims func() []Claim
	// Pod returns the pod of the node with this UID.
	Pod func(uid string) (Pod, bool)
	// PodOf maps a host PID to its pod (CgroupReader.PodOf).
	PodOf func(pid uint32) (PodProcess, error)
	// Kill sends SIGKILL to a host PID.
	Kill     func(pid uint32) error
	Reporter Reporter
	Metrics  *Metrics
	Now      func() time.Time

	// MemoryMargin is tolerated above the quota: NVML counts the
	// process's CUDA context and the driver's allocation granularity,
	// which libvgpu's accounting may not see exactly.
	MemoryMargin int64
	// Grace is how long a claim may stay over quota before it is killed.
	Grace time.Duration
	// ComputeMargin is tolerated above a hard-capped share, in
	// percentage points, averaged over ComputeWindow.
	ComputeMargin float64
	ComputeWindow time.Duration
}

// Auditor keeps the state between rounds (when a claim went over, the
// utilisation samples of the window). Not safe for concurrent Rounds.
type Auditor struct {
	cfg       Config
	over      map[string]time.Time // group key: first seen over quota
	reported  map[string]bool      // group key: over-quota event sent this episode
	computeHi map[string]bool      // group key: compute event sent this episode
	lastTS    map[string]uint64    // GPU: newest sample seen
	samples   map[string][]periodUse
	firstSeen map[string]time.Time // group key: first round it was seen using the GPU
}

// periodUse is one sample period of a GPU: the group's summed percent.
type periodUse struct {
	ts    uint64
	at    time.Time
	group map[string]uint32
}

// New returns an Auditor.
func New(cfg Config) *Auditor {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Auditor{
		cfg: cfg, over: map[string]time.Time{}, reported: map[string]bool{}, computeHi: map[string]bool{},
		lastTS: map[string]uint64{}, samples: map[string][]periodUse{}, firstSeen: map[string]time.Time{},
	}
}

// Run audits every interval until ctx ends.
func (a *Auditor) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		a.Round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// group is the claims a process is charged to on one GPU: those of its pod
// that hold a share of the GPU (usually one).
type group struct {
	key    string
	gpu    string
	claims []Claim
	quotas []GPUQuota
	pods   map[string]Pod
	procs  []Process
	used   uint64
}

func (g *group) limit() int64 {
	var l int64
	for _, q := range g.quotas {
		l += q.MemoryBytes
	}
	return l
}

func (g *group) hardCap() (int64, bool) {
	var c int64
	for _, q := range g.quotas {
		if !q.HardCap || q.Cores <= 0 || q.Cores >= 100 {
			return 0, false
		}
		c += q.Cores
	}
	return c, true
}

func (g *group) action() Action {
	for _, c := range g.claims {
		if c.MemoryAction == ActionWarn {
			return ActionWarn
		}
	}
	return ActionKill
}

func (g *group) names() string {
	n := make([]string, len(g.claims))
	for i, c := range g.claims {
		n[i] = c.Namespace + "/" + c.Name
	}
	return strings.Join(n, ",")
}

// Round is one audit of every GPU of the node.
func (a *Auditor) Round(ctx context.Context) {
	logger := klog.FromContext(ctx)
	now := a.cfg.Now()
	claims := a.cfg.Claims()
	byName := map[string]Claim{}
	for _, c := range claims {
		byName[c.Namespace+"/"+c.Name] = c
	}
	m := a.cfg.Metrics
	m.beginRound()
	seen := map[string]bool{}
	for _, uuid := range a.cfg.NodeGPUs() {
		procs, err := a.cfg.GPUs.Processes(uuid)
		if err != nil {
			logger.Error(err, "Audit: cannot list the GPU's processes", "gpu", uuid)
			m.errors.WithLabelValues(uuid).Inc()
			continue
		}
		groups, pidGroup, unclaimed, unclaimedMem := a.attribute(ctx, uuid, procs, byName)
		m.unclaimed.WithLabelValues(uuid).Set(float64(unclaimed))
		m.unclaimedMemory.WithLabelValues(uuid).Set(float64(unclaimedMem))
		for _, g := range groups {
			seen[g.key] = true
			if _, ok := a.firstSeen[g.key]; !ok {
				a.firstSeen[g.key] = now
			}
			for _, c := range g.claims {
				m.memory.WithLabelValues(c.Namespace, c.Name, uuid).Set(float64(g.used) / float64(len(g.claims)))
			}
			a.checkMemory(ctx, g, now)
		}
		a.checkCompute(ctx, uuid, groups, pidGroup, now)
	}
	// Episodes of groups that no longer use a GPU end.
	for key := range a.firstSeen {
		if !seen[key] {
			delete(a.firstSeen, key)
			delete(a.over, key)
			delete(a.reported, key)
			delete(a.computeHi, key)
		}
	}
	m.rounds.Inc()
}

// attribute maps the GPU's processes to groups of claims.
func (a *Auditor) attribute(ctx context.Context, uuid string, procs []Process, byName map[string]Claim) (map[string]*group, map[uint32]string, int, uint64) {
	logger := klog.FromContext(ctx)
	groups := map[string]*group{}
	pidGroup := map[uint32]string{}
	unclaimed, unclaimedMem := 0, uint64(0)
	for _, p := range procs {
		where, err := a.cfg.PodOf(p.PID)
		var g *group
		if err == nil {
			g = a.groupOf(uuid, where.PodUID, byName)
		}
		if g == nil {
			unclaimed++
			unclaimedMem += p.MemoryBytes
			logger.V(4).Info("Audit: a process on the GPU belongs to no prepared claim of it", "gpu", uuid, "pid", p.PID, "memoryBytes", p.MemoryBytes, "cgroup", err)
			continue
		}
		if prev, ok := groups[g.key]; ok {
			// several pods sharing the claim
			for uid, pod := range g.pods {
				prev.pods[uid] = pod
			}
			g = prev
		} else {
			groups[g.key] = g
		}
		g.procs = append(g.procs, p)
		g.used += p.MemoryBytes
		pidGroup[p.PID] = g.key
	}
	return groups, pidGroup, unclaimed, unclaimedMem
}

func (a *Auditor) groupOf(uuid, podUID string, byName map[string]Claim) *group {
	pod, ok := a.cfg.Pod(podUID)
	if !ok {
		return nil
	}
	g := &group{gpu: uuid, pods: map[string]Pod{pod.UID: pod}}
	for _, name := range pod.Claims {
		c, ok := byName[pod.Namespace+"/"+name]
		if !ok {
			continue
		}
		for _, q := range c.GPUs {
			if q.UUID == uuid {
				g.claims = append(g.claims, c)
				g.quotas = append(g.quotas, q)
			}
		}
	}
	if len(g.claims) == 0 {
		return nil
	}
	uids := make([]string, len(g.claims))
	for i, c := range g.claims {
		uids[i] = c.UID
	}
	sort.Strings(uids)
	g.key = uuid + "/" + strings.Join(uids, "+")
	return g
}

func (a *Auditor) checkMemory(ctx context.Context, g *group, now time.Time) {
	logger := klog.FromContext(ctx)
	m := a.cfg.Metrics
	limit := g.limit() + a.cfg.MemoryMargin
	if int64(g.used) <= limit {
		delete(a.over, g.key)
		delete(a.reported, g.key)
		return
	}
	for _, c := range g.claims {
		m.overQuota.WithLabelValues(c.Namespace, c.Name, g.gpu).Set(1)
	}
	since, ok := a.over[g.key]
	if !ok {
		since = now
		a.over[g.key] = now
	}
	procs := slices.Clone(g.procs)
	sort.Slice(procs, func(i, j int) bool { return procs[i].MemoryBytes > procs[j].MemoryBytes })
	action := g.action()
	if !a.reported[g.key] {
		a.reported[g.key] = true
		counted := a.regionSays(g) // read only for the event, once per episode
		what := "only reported (memory action Warn)"
		if action == ActionKill {
			what = fmt.Sprintf("its largest processes on the GPU are killed if it is still over in %s", a.cfg.Grace)
		}
		a.report(ctx, Finding{Reason: ReasonMemoryOverQuota, GPU: g.gpu, Claims: g.claims, Pods: podList(g.pods),
			Message: fmt.Sprintf("claim %s holds %s of device memory on GPU %s (NVML%s), over its quota of %s plus a margin of %s; largest process: host PID %d with %s; %s",
				g.names(), mib(int64(g.used)), g.gpu, counted, mib(g.limit()), mib(a.cfg.MemoryMargin), procs[0].PID, mib(int64(procs[0].MemoryBytes)), what)})
	}
	if action != ActionKill || now.Sub(since) < a.cfg.Grace {
		return
	}
	used := int64(g.used)
	for _, p := range procs {
		if used <= limit {
			break
		}
		// The PID may have exited (its memory with it) and been reused
		// since NVML listed it: kill only a process that is still in the
		// same pod; the next round sees what is really held.
		where, err := a.cfg.PodOf(p.PID)
		if err != nil || g.pods[where.PodUID].UID == "" {
			used -= int64(p.MemoryBytes)
			continue
		}
		if err := a.cfg.Kill(p.PID); err != nil {
			logger.Error(err, "Audit: cannot kill a process over its claim's memory quota", "pid", p.PID, "claims", g.names())
			continue
		}
		used -= int64(p.MemoryBytes)
		for _, c := range g.claims {
			m.kills.WithLabelValues(c.Namespace, c.Name, g.gpu).Inc()
		}
		a.report(ctx, Finding{Reason: ReasonKilled, GPU: g.gpu, Claims: g.claims, Pods: podList(g.pods),
			Message: fmt.Sprintf("killed host PID %d (%s of device memory on GPU %s): claim %s held %s for %s, over its quota of %s plus a margin of %s",
				p.PID, mib(int64(p.MemoryBytes)), g.gpu, g.names(), mib(int64(g.used)), now.Sub(since).Round(time.Second), mib(g.limit()), mib(a.cfg.MemoryMargin))})
	}
	delete(a.over, g.key)
	delete(a.reported, g.key)
}

// checkCompute adds the GPU's new utilisation samples to the window and
// reports groups whose hard-capped share is exceeded over the whole window.
func (a *Auditor) checkCompute(ctx context.Context, uuid string, groups map[string]*group, pidGroup map[uint32]string, now time.Time) {
	m := a.cfg.Metrics
	samples, err := a.cfg.GPUs.Utilization(uuid, a.lastTS[uuid])
	if err != nil {
		klog.FromContext(ctx).V(2).Info("Audit: no utilisation samples", "gpu", uuid, "err", err)
		return
	}
	byTS := map[uint64]*periodUse{}
	for _, s := range samples {
		if s.TimestampUs <= a.lastTS[uuid] {
			continue
		}
		pu := byTS[s.TimestampUs]
		if pu == nil {
			pu = &periodUse{ts: s.TimestampUs, at: now, group: map[string]uint32{}}
			byTS[s.TimestampUs] = pu
		}
		if key, ok := pidGroup[s.PID]; ok {
			pu.group[key] += s.SMUtil
		}
	}
	window := a.samples[uuid]
	for _, pu := range byTS {
		window = append(window, *pu)
		if pu.ts > a.lastTS[uuid] {
			a.lastTS[uuid] = pu.ts
		}
	}
	cut := 0
	for cut < len(window) && now.Sub(window[cut].at) > a.cfg.ComputeWindow {
		cut++
	}
	window = window[cut:]
	a.samples[uuid] = window
	for key, g := range groups {
		share, capped := g.hardCap()
		var sum float64
		for _, pu := range window {
			sum += float64(pu.group[key])
		}
		measured := 0.0
		if len(window) > 0 {
			measured = sum / float64(len(window))
		}
		for _, c := range g.claims {
			m.compute.WithLabelValues(c.Namespace, c.Name, uuid).Set(measured / float64(len(g.claims)))
		}
		full := now.Sub(a.firstSeen[key]) >= a.cfg.ComputeWindow
		if !capped || !full || len(window) == 0 {
			continue
		}
		if measured <= float64(share)+a.cfg.ComputeMargin {
			delete(a.computeHi, key)
			continue
		}
		for _, c := range g.claims {
			m.computeOver.WithLabelValues(c.Namespace, c.Name, uuid).Set(1)
		}
		if a.computeHi[key] {
			continue
		}
		a.computeHi[key] = true
		a.report(ctx, Finding{Reason: ReasonComputeOver, GPU: uuid, Claims: g.claims, Pods: podList(g.pods),
			Message: fmt.Sprintf("claim %s used %.1f%% of GPU %s over the last %s (NVML), above its hard-capped share of %d%% plus a margin of %.0f points; compute is reported, not killed",
				g.names(), measured, uuid, a.cfg.ComputeWindow, share, a.cfg.ComputeMargin)})
	}
}

// regionSays quotes what libvgpu counted for the group on its GPU, for the
// event: ", libvgpu counted 1024 MiB", or "" when there is no readable
// region (no process used libvgpu, or the file is not a region).
func (a *Auditor) regionSays(g *group) string {
	var total uint64
	found := false
	for _, c := range g.claims {
		if c.RegionPath == "" {
			continue
		}
		devs, err := region.ReadFile(c.RegionPath)
		if err != nil {
			continue
		}
		for _, d := range devs {
			if d.UUID == g.gpu {
				total += d.MemoryUsedBytes
				found = true
			}
		}
	}
	if !found {
		return ", no libvgpu accounting"
	}
	return ", libvgpu counted " + mib(int64(total))
}

func (a *Auditor) report(ctx context.Context, f Finding) {
	klog.FromContext(ctx).Info("Audit: "+f.Message, "reason", f.Reason)
	if a.cfg.Reporter != nil {
		a.cfg.Reporter.Report(ctx, f)
	}
}

func podList(pods map[string]Pod) []Pod {
	out := make([]Pod, 0, len(pods))
	for _, p := range pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

func mib(b int64) string {
	return fmt.Sprintf("%d MiB", b>>20)
}
