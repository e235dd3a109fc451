//go:build tools

// Package tools pins the heavy dependencies of the end-to-end harness so that
// `go mod tidy` keeps them before every package that uses them exists.
package tools

import (
	_ "helm.sh/helm/v4/pkg/chart/v2/loader"
	_ "k8s.io/apiserver/pkg/storage/etcd3/testing"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app/testing"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app/testing"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
	_ "k8s.io/kubernetes/pkg/controller/deployment"
	_ "k8s.io/kubernetes/pkg/controller/replicaset"
	_ "k8s.io/kubernetes/pkg/controller/resourceclaim"
	_ "k8s.io/kubernetes/pkg/kubelet/cm/dra"
	_ "k8s.io/kubernetes/pkg/kubelet/pluginmanager"
	_ "tags.cncf.io/container-device-interface/pkg/cdi"
)
