// Command kubectl-hami is a kubectl plugin (install it on the PATH, then run
// `kubectl hami`) that shows the GPUs of the hami-dra driver, the shares
// allocated on them and where a share of a given size fits. It reads
// ResourceSlices, ResourceClaims and DeviceClasses with the user's
// kubeconfig; see internal/kubectlhami.
package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/hami-dra/hami-dra/internal/kubectlhami"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := kubectlhami.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, kubectlhami.DefaultClient)
	stop()
	os.Exit(code)
}
