package nodeagent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/hami-dra/hami-dra/e2e/podruntime"
)

// Reasons of the events the agent records, the kubelet's own where it has one.
const (
	reasonFailedPrepare = "FailedPrepareDynamicResources"
	reasonStarted       = "Started"
	reasonFailed        = "Failed"
	reasonKilling       = "Killing"
	reasonBackOff       = "BackOff"
	reasonCDI           = "FailedCDIInjection"

	annotationPodKey = "nodeagent.e2e.hami.io/pod"
	annotationCDI    = "nodeagent.e2e.hami.io/cdi-devices"

	// maxGrace caps the termination grace period: the tests delete pods
	// that sleep, and waiting their default 30 s would only slow them down.
	maxGrace = 5 * time.Second
	// maxBackOff caps the restart back-off (the kubelet's is 5 min).
	maxBackOff = 20 * time.Second
)

// podState is what the agent knows about a pod beyond the API object. It is
// rebuilt after an agent restart from the pod status and the runtime.
type podState struct {
	pod       *v1.Pod
	prepared  bool
	external  bool
	startTime metav1.Time
	// prepareError is the last failure to prepare, shown in the status.
	prepareError string
	containers   map[string]*containerState
}

type containerState struct {
	restarts   int32
	nextStart  time.Time
	waiting    *v1.ContainerStateWaiting
	lastTerm   *v1.ContainerStateTerminated
	finalExit  *v1.ContainerStateTerminated
	cdiDevices []string
}

func containerID(pod *v1.Pod, name string) string { return string(pod.UID) + "/" + name }

func (a *Agent) state(key string, pod *v1.Pod) *podState {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.pods[key]
	if st != nil && pod != nil && st.pod.UID != pod.UID {
		// Same name, new pod: the old one is gone (handled by the caller).
		st = nil
	}
	if st == nil && pod != nil {
		st = &podState{pod: pod, containers: map[string]*containerState{}, startTime: metav1.Now()}
		if pod.Status.StartTime != nil {
			st.startTime = *pod.Status.StartTime
		}
		for _, cs := range pod.Status.ContainerStatuses {
			st.containers[cs.Name] = &containerState{restarts: cs.RestartCount, lastTerm: cs.LastTerminationState.Terminated}
		}
		a.pods[key] = st
	}
	if st != nil && pod != nil {
		st.pod = pod
	}
	return st
}

// syncPod brings one pod to its desired state. A positive duration asks to
// be called again after it (restart back-off).
func (a *Agent) syncPod(ctx context.Context, key string) (time.Duration, error) {
	obj, exists, err := a.podInformer.GetStore().GetByKey(key)
	if err != nil {
		return 0, err
	}
	a.mu.Lock()
	old := a.pods[key]
	a.mu.Unlock()
	if !exists {
		if old == nil {
			return 0, nil
		}
		return 0, a.teardown(ctx, key, old.pod, false)
	}
	pod := obj.(*v1.Pod)
	if old != nil && old.pod.UID != pod.UID {
		if err := a.teardown(ctx, key, old.pod, false); err != nil {
			return 0, err
		}
	}
	st := a.state(key, pod)

	if a.cfg.ExternalPodLabel != "" && pod.Labels[a.cfg.ExternalPodLabel] == "true" {
		if pod.DeletionTimestamp != nil {
			return 0, a.teardown(ctx, key, pod, true)
		}
		st.external, st.prepared = true, true
		return 0, a.updateStatus(ctx, st)
	}
	if pod.DeletionTimestamp != nil {
		return 0, a.teardown(ctx, key, pod, true)
	}
	if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		// Finished pods keep their status but not their devices.
		a.stopContainers(ctx, pod, 0)
		if err := a.draManager.UnprepareResources(ctx, pod); err != nil {
			return 0, fmt.Errorf("unprepare finished pod: %w", err)
		}
		st.prepared = false
		return 0, nil
	}

	if !st.prepared {
		// The kubelet's DRA manager: checks the claim is reserved for this
		// pod, calls NodePrepareResources on the driver's socket,
		// checkpoints the result. Idempotent, and called again after an
		// agent restart as the kubelet does.
		if err := a.draManager.PrepareResources(ctx, pod); err != nil {
			msg := fmt.Sprintf("Failed to prepare dynamic resources: %v", err)
			if st.prepareError != msg {
				a.recorder.Event(pod, v1.EventTypeWarning, reasonFailedPrepare, msg)
			}
			st.prepareError = msg
			if uerr := a.updateStatus(ctx, st); uerr != nil {
				klog.FromContext(ctx).V(1).Info("Status update failed", "err", uerr)
			}
			return 0, err
		}
		st.prepared = true
		st.prepareError = ""
	}

	var requeue time.Duration
	for i := range pod.Spec.Containers {
		after, err := a.syncContainer(ctx, st, &pod.Spec.Containers[i])
		if err != nil {
			klog.FromContext(ctx).V(1).Info("Container not started", "container", pod.Spec.Containers[i].Name, "err", err)
			if after == 0 {
				after = time.Second
			}
		}
		if after > 0 && (requeue == 0 || after < requeue) {
			requeue = after
		}
	}
	return requeue, a.updateStatus(ctx, st)
}

// syncContainer starts a container that is not running, applying the pod's
// restart policy to one that has exited.
func (a *Agent) syncContainer(ctx context.Context, st *podState, c *v1.Container) (time.Duration, error) {
	pod := st.pod
	cs := st.containers[c.Name]
	if cs == nil {
		cs = &containerState{}
		st.containers[c.Name] = cs
	}
	id := containerID(pod, c.Name)
	if running := a.cfg.Runtime.Get(id); running != nil {
		exited, code, reason, finished := running.Exited()
		if !exited {
			cs.waiting = nil
			return 0, nil
		}
		term := &v1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason,
			StartedAt: metav1.NewTime(running.StartedAt), FinishedAt: metav1.NewTime(finished),
			ContainerID: runtimeContainerID(running)}
		restart := pod.Spec.RestartPolicy == v1.RestartPolicyAlways ||
			(pod.Spec.RestartPolicy == v1.RestartPolicyOnFailure && code != 0)
		if !restart {
			cs.finalExit = term
			return 0, nil
		}
		a.cfg.Runtime.Remove(id)
		cs.lastTerm = term
		cs.restarts++
		backOff := min(maxBackOff, time.Second<<min(cs.restarts-1, 5))
		cs.nextStart = time.Now().Add(backOff)
		cs.waiting = &v1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %v restarting failed container=%s pod=%s", backOff, c.Name, pod.Name)}
		a.recorder.Eventf(pod, v1.EventTypeWarning, reasonBackOff, "Back-off restarting failed container %s", c.Name)
	}
	if cs.finalExit != nil {
		return 0, nil
	}
	if wait := time.Until(cs.nextStart); wait > 0 {
		return wait, nil
	}

	// The CDI device IDs the kubelet would pass to the runtime, from the
	// DRA manager's claim info cache.
	info, err := a.draManager.GetResources(pod, c)
	if err != nil {
		cs.waiting = &v1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: err.Error()}
		return 0, fmt.Errorf("CDI devices of container %s: %w", c.Name, err)
	}
	devices := make([]string, 0, len(info.CDIDevices))
	for _, d := range info.CDIDevices {
		devices = append(devices, d.Name)
	}
	env, err := containerEnv(pod, c)
	if err != nil {
		cs.waiting = &v1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: err.Error()}
		return 0, err
	}
	edits, err := resolveCDI(a.cfg.CDIDirs, env, devices)
	if err != nil {
		msg := fmt.Sprintf("CDI injection failed: %v", err)
		if cs.waiting == nil || cs.waiting.Message != msg {
			a.recorder.Event(pod, v1.EventTypeWarning, reasonCDI, msg)
		}
		cs.waiting = &v1.ContainerStateWaiting{Reason: "CreateContainerError", Message: msg}
		return 0, err
	}
	if edits.Hooks > 0 {
		klog.FromContext(ctx).Info("CDI hooks are not run by the local runtime", "container", c.Name, "hooks", edits.Hooks)
	}
	args := append(slices.Clone(c.Command), c.Args...)
	spec := podruntime.ContainerSpec{
		ID:         id,
		Args:       args,
		Env:        edits.Env,
		WorkingDir: c.WorkingDir,
		Mounts:     edits.Mounts,
		Devices:    edits.Devices,
		LogPath:    logFileName(a.cfg.LogDir, pod.Namespace, pod.Name, string(pod.UID), c.Name),
		Annotations: map[string]string{
			annotationPodKey: pod.Namespace + "/" + pod.Name,
			annotationCDI:    strings.Join(devices, ","),
		},
	}
	started, err := a.cfg.Runtime.Start(spec)
	if err != nil {
		msg := err.Error()
		if cs.waiting == nil || cs.waiting.Message != msg {
			a.recorder.Event(pod, v1.EventTypeWarning, reasonFailed, "Error: "+msg)
		}
		cs.waiting = &v1.ContainerStateWaiting{Reason: "CreateContainerError", Message: msg}
		cs.nextStart = time.Now().Add(2 * time.Second)
		return 2 * time.Second, err
	}
	cs.waiting = nil
	cs.cdiDevices = devices
	a.recorder.Eventf(pod, v1.EventTypeNormal, reasonStarted, "Started container %s (pid %d, CDI devices %v)", c.Name, started.Pid, devices)
	return 0, nil
}

func runtimeContainerID(c *podruntime.Container) string {
	return fmt.Sprintf("hami-e2e-process://%s/%d", c.Spec.ID, c.Pid)
}

// containerEnv is the container's environment as the kubelet builds it,
// for the sources that make sense without volumes: literal values and the
// pod's own fields. ConfigMap and Secret references are not supported.
func containerEnv(pod *v1.Pod, c *v1.Container) ([]string, error) {
	env := []string{"HOSTNAME=" + pod.Name}
	for _, e := range c.Env {
		value := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				return nil, fmt.Errorf("env %s: only value and fieldRef are supported by the local runtime", e.Name)
			}
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				value = pod.Name
			case "metadata.namespace":
				value = pod.Namespace
			case "metadata.uid":
				value = string(pod.UID)
			case "spec.nodeName":
				value = pod.Spec.NodeName
			case "spec.serviceAccountName":
				value = pod.Spec.ServiceAccountName
			case "status.podIP", "status.hostIP":
				value = "127.0.0.1"
			default:
				return nil, fmt.Errorf("env %s: fieldRef %s is not supported by the local runtime", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		env = append(env, e.Name+"="+value)
	}
	return env, nil
}

// stopContainers stops the pod's containers with the pod's grace period
// (capped).
func (a *Agent) stopContainers(ctx context.Context, pod *v1.Pod, grace time.Duration) {
	for _, c := range pod.Spec.Containers {
		id := containerID(pod, c.Name)
		if running := a.cfg.Runtime.Get(id); running != nil {
			if exited, _, _, _ := running.Exited(); !exited {
				a.recorder.Eventf(pod, v1.EventTypeNormal, reasonKilling, "Stopping container %s", c.Name)
				klog.FromContext(ctx).V(2).Info("Stopping container", "container", c.Name, "pid", running.Pid)
			}
			a.cfg.Runtime.Stop(id, grace)
		}
	}
}

// teardown stops a pod that is being deleted (or is already gone),
// unprepares its claims and, when the API object is still there, finishes
// the deletion as the kubelet does (grace period 0, UID precondition). The
// resourceclaim controller then releases the claims.
func (a *Agent) teardown(ctx context.Context, key string, pod *v1.Pod, deleteObject bool) error {
	grace := maxGrace
	if pod.DeletionGracePeriodSeconds != nil {
		grace = min(grace, time.Duration(*pod.DeletionGracePeriodSeconds)*time.Second)
	}
	a.stopContainers(ctx, pod, grace)
	if err := a.draManager.UnprepareResources(ctx, pod); err != nil {
		// Retried: the pod stays Terminating until the driver answers,
		// so its devices are never handed to another pod too early.
		return fmt.Errorf("unprepare: %w", err)
	}
	for _, c := range pod.Spec.Containers {
		a.cfg.Runtime.Remove(containerID(pod, c.Name))
	}
	if deleteObject {
		err := a.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To(int64(0)),
			Preconditions:      metav1.NewUIDPreconditions(string(pod.UID)),
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete pod: %w", err)
		}
	}
	a.mu.Lock()
	if st := a.pods[key]; st != nil && st.pod.UID == pod.UID {
		delete(a.pods, key)
	}
	a.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("Pod torn down", "uid", pod.UID)
	return nil
}

// updateStatus writes the pod status computed from the agent's state.
func (a *Agent) updateStatus(ctx context.Context, st *podState) error {
	pod := st.pod
	status := a.computeStatus(st)
	if apiequality.Semantic.DeepEqual(pod.Status, status) {
		return nil
	}
	updated := pod.DeepCopy()
	updated.Status = status
	_, err := a.cfg.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("update pod status: %w", err)
	}
	return nil
}

func (a *Agent) computeStatus(st *podState) v1.PodStatus {
	pod := st.pod
	old := pod.Status
	status := v1.PodStatus{
		Phase:     v1.PodPending,
		HostIP:    "127.0.0.1",
		HostIPs:   []v1.HostIP{{IP: "127.0.0.1"}},
		StartTime: ptr.To(st.startTime),
		QOSClass:  old.QOSClass,
		// Claim status written by the scheduler/controllers is kept.
		ResourceClaimStatuses:       old.ResourceClaimStatuses,
		ExtendedResourceClaimStatus: old.ExtendedResourceClaimStatus,
		NominatedNodeName:           old.NominatedNodeName,
	}
	running, succeeded, failed, total := 0, 0, 0, len(pod.Spec.Containers)
	for _, c := range pod.Spec.Containers {
		cs := st.containers[c.Name]
		if cs == nil {
			cs = &containerState{}
		}
		s := v1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "", RestartCount: cs.restarts, Started: ptr.To(false)}
		if cs.lastTerm != nil {
			s.LastTerminationState = v1.ContainerState{Terminated: cs.lastTerm}
		}
		r := a.cfg.Runtime.Get(containerID(pod, c.Name))
		switch {
		case cs.finalExit != nil:
			s.State = v1.ContainerState{Terminated: cs.finalExit}
			s.ContainerID = cs.finalExit.ContainerID
			if cs.finalExit.ExitCode == 0 {
				succeeded++
			} else {
				failed++
			}
		case st.external:
			s.State = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: st.startTime}}
			s.Ready, s.Started = true, ptr.To(true)
			running++
		case r != nil && cs.waiting == nil:
			if exited, _, _, _ := r.Exited(); !exited {
				s.State = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: metav1.NewTime(r.StartedAt)}}
				s.ContainerID = runtimeContainerID(r)
				s.Ready, s.Started = true, ptr.To(true)
				running++
			} else {
				s.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}}
			}
		case cs.waiting != nil:
			s.State = v1.ContainerState{Waiting: cs.waiting}
		default:
			s.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}}
			if st.prepareError != "" {
				s.State.Waiting.Message = st.prepareError
			}
		}
		status.ContainerStatuses = append(status.ContainerStatuses, s)
	}
	switch {
	case succeeded+failed == total && failed > 0:
		status.Phase = v1.PodFailed
	case succeeded == total:
		status.Phase = v1.PodSucceeded
	case running > 0 || succeeded+failed > 0:
		status.Phase = v1.PodRunning
	}
	if running == total {
		status.PodIP, status.PodIPs = "127.0.0.1", []v1.PodIP{{IP: "127.0.0.1"}}
	} else if old.PodIP != "" {
		status.PodIP, status.PodIPs = old.PodIP, old.PodIPs
	}

	ready := running == total
	cond := func(t v1.PodConditionType, ok bool, reason, msg string) v1.PodCondition {
		s := v1.ConditionFalse
		if ok {
			s = v1.ConditionTrue
			reason, msg = "", ""
		}
		c := v1.PodCondition{Type: t, Status: s, Reason: reason, Message: msg, LastTransitionTime: metav1.Now()}
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == s {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		return c
	}
	var conditions []v1.PodCondition
	for _, c := range old.Conditions {
		// The scheduler's condition and any added by others stay.
		switch c.Type {
		case v1.PodReadyToStartContainers, v1.PodInitialized, v1.ContainersReady, v1.PodReady:
		default:
			conditions = append(conditions, c)
		}
	}
	conditions = append(conditions,
		cond(v1.PodReadyToStartContainers, st.prepared, "PrepareDynamicResources", st.prepareError),
		cond(v1.PodInitialized, true, "", ""),
		cond(v1.ContainersReady, ready, "ContainersNotReady", "containers not running"),
		cond(v1.PodReady, ready, "ContainersNotReady", "containers not running"),
	)
	status.Conditions = conditions
	return status
}

// logPath returns the log file of a container and a function that reports
// whether the container still runs (for `kubectl logs -f`).
func (a *Agent) logPath(namespace, name, container string) (string, func() bool) {
	obj, exists, err := a.podInformer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !exists {
		return "", nil
	}
	pod := obj.(*v1.Pod)
	id := containerID(pod, container)
	running := func() bool {
		c := a.cfg.Runtime.Get(id)
		if c == nil {
			return false
		}
		exited, _, _, _ := c.Exited()
		return !exited
	}
	return logFileName(a.cfg.LogDir, namespace, name, string(pod.UID), container), running
}

// ContainerCDIDevices returns the CDI devices a running container was
// started with (tests compare them across restarts).
func (a *Agent) ContainerCDIDevices(pod *v1.Pod, container string) []string {
	c := a.cfg.Runtime.Get(containerID(pod, container))
	if c == nil {
		return nil
	}
	if v := c.Spec.Annotations[annotationCDI]; v != "" {
		return strings.Split(v, ",")
	}
	return nil
}
