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
// stop the old pod before the new one can take claims. It also holds what
// /healthz checks.
type readiness struct {
	ready atomic.Bool

	// check reports whether the kubelet can still reach the plugin
	// (driver.Driver.Healthy); nil until the driver runs.
	check atomic.Pointer[func(context.Context) error]
	// lastBeat is when the re-discovery and publication loop last took a
	// tick (unix nanoseconds); maxSilence is how long it may go without.
	lastBeat   atomic.Int64
	maxSilence time.Duration
}

func (r *readiness) setCheck(check func(context.Context) error) { r.check.Store(&check) }

// heartbeat forwards ticks to the loop and notes each one the loop takes:
// a loop stuck (in a hung NVML call, say) stops taking them, and /healthz
// fails once it has missed a few.
func (r *readiness) heartbeat(ctx context.Context, ticks <-chan time.Time, interval time.Duration) <-chan time.Time {
	r.maxSilence = 3*interval + time.Minute
	r.lastBeat.Store(time.Now().UnixNano())
	out := make(chan time.Time)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case tick := <-ticks:
				select {
				case out <- tick:
					r.lastBeat.Store(time.Now().UnixNano())
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// alive is the liveness check of /healthz.
func (r *readiness) alive(ctx context.Context) error {
	if last := r.lastBeat.Load(); last != 0 && r.maxSilence > 0 {
		if silent := time.Since(time.Unix(0, last)); silent > r.maxSilence {
			return fmt.Errorf("the re-discovery and publication loop has not run for %v", silent.Round(time.Second))
		}
	}
	if check := r.check.Load(); check != nil {
		return (*check)(ctx)
	}
	return nil
}

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
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, req *http.Request) {
		// Failing makes the kubelet restart the plugin: only for what a
		// restart repairs (sockets gone, servers or the loop stuck).
		if err := r.alive(req.Context()); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
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
