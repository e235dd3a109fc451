package driver

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// registrationSocket and draSocket are the paths the helper listens on
// (its defaults, which Start does not override).
func (d *Driver) registrationSocket() string {
	name := d.cfg.DriverName + "-reg.sock"
	if d.cfg.RollingUpdateUID != "" {
		name = kubeletplugin.RollingUpdateRegistrarSocketFile(d.cfg.RegistrarDir, d.cfg.DriverName, d.cfg.RollingUpdateUID)
	}
	return filepath.Join(d.cfg.RegistrarDir, name)
}

func (d *Driver) draSocket() string {
	name := "dra.sock"
	if d.cfg.RollingUpdateUID != "" {
		name = "dra-" + string(d.cfg.RollingUpdateUID) + ".sock"
	}
	return filepath.Join(d.cfg.PluginDataDir, name)
}

// Healthy reports whether the kubelet can still reach the plugin: the
// registration service answers GetInfo on its socket, and the DRA socket
// accepts connections. It is what /healthz checks (a liveness probe then
// restarts a plugin whose sockets were deleted or whose servers died);
// it makes no call that could wait for the instances' lock.
func (d *Driver) Healthy(ctx context.Context) error {
	if d.helper == nil {
		return fmt.Errorf("kubelet plugin not started")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+d.registrationSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("registration socket %s: %w", d.registrationSocket(), err)
	}
	defer conn.Close()
	if _, err := registerapi.NewRegistrationClient(conn).GetInfo(ctx, &registerapi.InfoRequest{}); err != nil {
		return fmt.Errorf("registration service on %s does not answer: %w", d.registrationSocket(), err)
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "unix", d.draSocket())
	if err != nil {
		return fmt.Errorf("DRA socket %s does not accept connections: %w", d.draSocket(), err)
	}
	return c.Close()
}
