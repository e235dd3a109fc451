// Command vgpu-kubelet-plugin is hami-dra's node agent: it discovers the
// node's GPUs, publishes them as shareable DRA devices and prepares claims
// for the kubelet.
//
//	vgpu-kubelet-plugin [flags]            run the kubelet plugin
//	vgpu-kubelet-plugin inventory [flags]  print the ResourceSlices this node
//	                                       would publish, then exit
//	vgpu-kubelet-plugin wait-for-driver    wait until the NVIDIA driver under
//	                                       --driver-root is usable (init container)
//	vgpu-kubelet-plugin probe [flags]      check that a running plugin's
//	                                       registration and DRA sockets answer
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
