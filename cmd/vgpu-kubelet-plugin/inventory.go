package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"sigs.k8s.io/yaml"

	"github.com/hami-dra/hami-dra/internal/inventory"
)

// runInventory prints, as a YAML stream, the ResourceSlices this node would
// publish. It never talks to an API server, so it answers "what would the
// scheduler see?" on a node (or with --simulate, anywhere) before deploying.
func runInventory(ctx context.Context, opts options, out io.Writer) error {
	if opts.nodeName == "" {
		// Outside a cluster the host name is what the Node would be called.
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --node-name and no host name: %w", err)
		}
		opts.nodeName = host
	}
	d, err := openDiscoverer(ctx, opts)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	gpus, err := d.Discover(ctx)
	if err != nil {
		return fmt.Errorf("discover GPUs: %w", err)
	}
	res, _ := inventory.Build(ctx, opts.nodeName, gpus)
	for i, slice := range inventory.ResourceSlices(opts.driverName, opts.nodeName, res) {
		data, err := yaml.Marshal(slice)
		if err != nil {
			return fmt.Errorf("encode ResourceSlice %s: %w", slice.Name, err)
		}
		sep := "---\n"
		if i == 0 {
			sep = ""
		}
		if _, err := fmt.Fprintf(out, "%s%s", sep, data); err != nil {
			return fmt.Errorf("write inventory: %w", err)
		}
	}
	return nil
}
