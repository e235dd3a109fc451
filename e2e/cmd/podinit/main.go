// Command podinit is the first process of every container the node agent
// runs: started in a new mount namespace, it applies the container's bind
// mounts (from the claim's CDI spec) and executes the container's command
// with the container's environment. It is tiny on purpose: the node agent
// cannot run code between fork and exec itself.
package main

import (
	"fmt"
	"os"

	"github.com/hami-dra/hami-dra/e2e/podruntime"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--probe" {
		// The runtime checks once that mount namespaces work here.
		os.Exit(0)
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: podinit LAUNCH-SPEC.json")
		os.Exit(2)
	}
	spec, err := podruntime.ReadLaunchSpec(os.Args[1])
	if err == nil {
		err = podruntime.Enter(spec)
	}
	fmt.Fprintf(os.Stderr, "podinit: %v\n", err)
	// 127 like a shell whose command could not run.
	os.Exit(127)
}
