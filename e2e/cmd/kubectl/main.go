// Command kubectl is the upstream kubectl (k8s.io/kubectl at the pinned
// staging version), built from this module so that the demo and the tests
// use a client of exactly the cluster's version without downloading one.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
