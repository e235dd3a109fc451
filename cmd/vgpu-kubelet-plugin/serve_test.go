package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
)

// TestHealthzFailsWhenThePluginCannotServe: /healthz is the liveness
// probe; it must fail when the kubelet can no longer reach the plugin or
// the publication loop is stuck, so that the kubelet restarts it.
func TestHealthzFailsWhenThePluginCannotServe(t *testing.T) {
	get := func(r *readiness) (int, string) {
		rec := httptest.NewRecorder()
		healthHandler(r).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	var r readiness
	if code, _ := get(&r); code != http.StatusOK {
		t.Fatalf("starting plugin: %d", code)
	}
	r.setCheck(func(context.Context) error { return nil })
	if code, _ := get(&r); code != http.StatusOK {
		t.Fatalf("healthy plugin: %d", code)
	}
	r.setCheck(func(context.Context) error { return errors.New("DRA socket /p/dra.sock does not accept connections") })
	if code, body := get(&r); code != http.StatusServiceUnavailable || !strings.Contains(body, "DRA socket") {
		t.Errorf("dead DRA socket: %d %q", code, body)
	}
	r.setCheck(func(context.Context) error { return nil })

	// The loop takes ticks: alive. Then it hangs: after maxSilence, not.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ticker := make(chan time.Time)
	ticks := r.heartbeat(ctx, ticker, time.Second)
	go func() { ticker <- time.Now() }()
	<-ticks
	if code, _ := get(&r); code != http.StatusOK {
		t.Fatalf("loop running: %d", code)
	}
	r.lastBeat.Store(time.Now().Add(-r.maxSilence - time.Second).UnixNano())
	if code, body := get(&r); code != http.StatusServiceUnavailable || !strings.Contains(body, "loop has not run") {
		t.Errorf("stuck loop: %d %q", code, body)
	}
}

// TestKubeAPIRateFlags: --kube-api-qps and --kube-api-burst reach the
// client; nonsense is a usage error.
func TestKubeAPIRateFlags(t *testing.T) {
	p := newFakePlugin()
	replaceDriver(t, p)
	var qps float32
	var burst int
	newKubeClient = func(_ string, q float32, b int) (kubernetes.Interface, error) {
		qps, burst = q, b
		return nil, errors.New("stop here")
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"--simulate", "1xL4", "--node-name", "n1", "--kube-api-qps", "2.5", "--kube-api-burst", "7"}, &bytes.Buffer{}, &stderr); code != exitError {
		t.Fatalf("exit %d:\n%s", code, stderr.String())
	}
	if qps != 2.5 || burst != 7 {
		t.Errorf("client got qps=%v burst=%d, want 2.5 and 7", qps, burst)
	}
	for _, args := range [][]string{{"--kube-api-qps", "0"}, {"--kube-api-burst", "-1"}} {
		stderr.Reset()
		if code := run(context.Background(), append([]string{"--simulate", "1xL4", "--node-name", "n1"}, args...), &bytes.Buffer{}, &stderr); code != exitUsage || !strings.Contains(stderr.String(), "must be positive") {
			t.Errorf("%v: exit %d, %q", args, code, stderr.String())
		}
	}
}
