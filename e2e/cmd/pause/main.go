// Command pause is the real node's pod sandbox image and minimal image: a
// static program that does nothing until SIGTERM or SIGINT, as the
// registry.k8s.io/pause image does. No registry is reachable here, so the
// real node imports this one under the sandbox image's name.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
