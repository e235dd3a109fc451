package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Metrics of the inventory side of the plugin. They are registered in
// Prometheus' default registry so that the driver package can add its own
// next to them and one /metrics serves both.
var (
	gpusGauge = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "hami_dra",
		Name:      "gpus",
		Help:      "GPUs on this node: discovered, and published as shareable devices (MIG GPUs are discovered but not published).",
	}, []string{"state"})
	publishesCounter = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "hami_dra",
		Name:      "resourceslice_publishes_total",
		Help:      "ResourceSlice publications handed to the kubelet plugin helper, by result.",
	}, []string{"result"})
	discoveryErrorsCounter = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "hami_dra",
		Name:      "discovery_errors_total",
		Help:      "Failed GPU re-discoveries (the published inventory is kept).",
	})
)

func recordInventory(discovered, published int) {
	gpusGauge.WithLabelValues("discovered").Set(float64(discovered))
	gpusGauge.WithLabelValues("published").Set(float64(published))
}

func recordPublish(err error) {
	result := "success"
	if err != nil {
		result = "error"
	}
	publishesCounter.WithLabelValues(result).Inc()
}

// readiness is what /readyz reports: ready once the driver is serving and
// the first ResourceSlices are published, so that a rolling update does not
// stop the old pod before the new one can take claims.
type readiness struct{ ready atomic.Bool }

// serveHTTP starts an HTTP server on port (0: none) and stops it when ctx
// ends. Listening happens here, so a port in use is an error at start-up
// rather than a log line later.
func serveHTTP(ctx context.Context, name string, port int, handler http.Handler) error {
	if port == 0 {
		return nil
	}
	if port < 0 || port > 65535 {
		return fmt.Errorf("--%s-port %d is not a port", name, port)
	}
	listener, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listen for %s: %w", name, err)
	}
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	logger := klog.FromContext(ctx)
	go func() {
		if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(err, "HTTP server stopped", "server", name)
		}
	}()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdownCtx)
	}()
	logger.V(2).Info("Serving", "server", name, "address", listener.Addr().String())
	return nil
}

func healthHandler(r *readiness) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.ready.Load() {
			http.Error(w, "not ready: driver not started or ResourceSlices not published yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

func metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	return mux
}
