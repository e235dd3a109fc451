package nodeagent

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

// KubeletVersion is what the simulated nodes report: the Kubernetes version
// whose kubelet code (the DRA manager, the plugin watcher) they run.
const KubeletVersion = "v1.37.1"

// heartbeatPeriod is how often the Ready condition and the node Lease are
// renewed. Nothing here would mark the node NotReady (no node lifecycle
// controller runs), but `kubectl get nodes` and anything that reads the
// heartbeat see a live node.
const heartbeatPeriod = 10 * time.Second

func (a *Agent) desiredNode() *v1.Node {
	labels := map[string]string{
		v1.LabelHostname:   a.cfg.NodeName,
		v1.LabelOSStable:   "linux",
		v1.LabelArchStable: "amd64",
	}
	for k, v := range a.cfg.Labels {
		labels[k] = v
	}
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Labels: labels}}
}

func (a *Agent) nodeStatus(now metav1.Time, old *v1.NodeStatus) v1.NodeStatus {
	capacity := v1.ResourceList{
		v1.ResourceCPU:              resource.MustParse("16"),
		v1.ResourceMemory:           resource.MustParse("128Gi"),
		v1.ResourcePods:             resource.MustParse("110"),
		v1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	cond := func(t v1.NodeConditionType, s v1.ConditionStatus, reason, msg string) v1.NodeCondition {
		c := v1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		if old != nil {
			for _, o := range old.Conditions {
				if o.Type == t && o.Status == s {
					c.LastTransitionTime = o.LastTransitionTime
				}
			}
		}
		return c
	}
	return v1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Conditions: []v1.NodeCondition{
			cond(v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", "simulated node"),
			cond(v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", "simulated node"),
			cond(v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", "simulated node"),
			cond(v1.NodeReady, v1.ConditionTrue, "KubeletReady", "hami-dra e2e node agent is posting ready status"),
		},
		// The apiserver proxies `kubectl logs` to this address and port.
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: v1.NodeHostName, Address: a.cfg.NodeName},
		},
		DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: int32(a.logServer.port)}},
		NodeInfo: v1.NodeSystemInfo{
			KubeletVersion:          KubeletVersion,
			OperatingSystem:         "linux",
			Architecture:            "amd64",
			ContainerRuntimeVersion: "hami-e2e-process://" + string(a.cfg.Runtime.Mode()),
			OSImage:                 "simulated (hami-dra e2e)",
		},
	}
}

// registerNode creates the Node (or takes over an existing one after an
// agent restart) and posts its status.
func (a *Agent) registerNode(ctx context.Context) error {
	nodes := a.cfg.Client.CoreV1().Nodes()
	node, err := nodes.Create(ctx, a.desiredNode(), metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		node, err = nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("register node %s: %w", a.cfg.NodeName, err)
	}
	a.nodeUID = node.UID
	return a.heartbeat(ctx)
}

func (a *Agent) heartbeat(ctx context.Context) error {
	now := metav1.Now()
	nodes := a.cfg.Client.CoreV1().Nodes()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		node.Status = a.nodeStatus(now, &node.Status)
		_, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("update status of node %s: %w", a.cfg.NodeName, err)
	}
	leases := a.cfg.Client.CoordinationV1().Leases(v1.NamespaceNodeLease)
	lease, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name:            a.cfg.NodeName,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: a.cfg.NodeName, UID: a.nodeUID}},
			},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(a.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(40)),
				RenewTime:            &metav1.MicroTime{Time: now.Time},
			},
		}, metav1.CreateOptions{})
	case err == nil:
		lease.Spec.RenewTime = &metav1.MicroTime{Time: now.Time}
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("renew lease of node %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

func (a *Agent) heartbeatLoop(ctx context.Context) {
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(heartbeatPeriod)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
			logger.Error(err, "Node heartbeat failed")
		}
	}
}
