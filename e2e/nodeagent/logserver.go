package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/util/cert"
	"k8s.io/klog/v2"
)

// logServer is the one part of the kubelet's HTTPS API that the local
// cluster offers: GET /containerLogs/{namespace}/{pod}/{container}, which
// the apiserver proxies `kubectl logs` (and the pods/log subresource) to.
// It serves a self-signed certificate; the apiserver does not verify kubelet
// certificates unless --kubelet-certificate-authority is set, and it is not.
// exec, attach and port-forward are not offered.
type logServer struct {
	agent  *Agent
	port   int
	server *http.Server
}

func startLogServer(ctx context.Context, a *Agent) (*logServer, error) {
	logger := klog.FromContext(ctx).WithName("logserver")
	certPEM, keyPEM, err := cert.GenerateSelfSignedCertKey("127.0.0.1", []net.IP{net.ParseIP("127.0.0.1")}, []string{a.cfg.NodeName})
	if err != nil {
		return nil, fmt.Errorf("log server certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("log server certificate: %w", err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, fmt.Errorf("log server listen: %w", err)
	}
	s := &logServer{agent: a, port: l.Addr().(*net.TCPAddr).Port}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.containerLogs)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	s.server = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		if err := s.server.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(err, "Log server stopped")
		}
	}()
	logger.V(1).Info("Serving container logs", "port", s.port)
	return s, nil
}

func (s *logServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.server.Shutdown(ctx)
	_ = s.server.Close()
}

func (s *logServer) containerLogs(w http.ResponseWriter, r *http.Request) {
	ns, podName, container := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	path, running := s.agent.logPath(ns, podName, container)
	if path == "" {
		http.Error(w, fmt.Sprintf("no logs of container %q in pod %s/%s on node %s", container, ns, podName, s.agent.cfg.NodeName), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	if q.Get("previous") == "true" {
		// Restarts append to the same file; there is no separate previous log.
		http.Error(w, "previous container logs are not kept separately here: the log holds every run", http.StatusBadRequest)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if n, err := strconv.Atoi(q.Get("tailLines")); err == nil && n >= 0 {
		data = tailLines(data, n)
	}
	if n, err := strconv.Atoi(q.Get("limitBytes")); err == nil && n >= 0 && len(data) > n {
		data = data[:n]
	}
	w.Header().Set("Content-Type", "text/plain")
	if _, err := w.Write(data); err != nil {
		return
	}
	if q.Get("follow") != "true" {
		return
	}
	// Follow: poll the file until the client leaves or the container ends.
	flusher, _ := w.(http.Flusher)
	reader := bufio.NewReader(f)
	buf := make([]byte, 32*1024)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		n, err := reader.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		if !running() {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tailLines(data []byte, n int) []byte {
	if n == 0 {
		return nil
	}
	trimmed := bytes.TrimSuffix(data, []byte("\n"))
	idx := len(trimmed)
	for i := 0; i < n; i++ {
		j := bytes.LastIndexByte(trimmed[:idx], '\n')
		if j < 0 {
			return data
		}
		idx = j
	}
	return data[idx+1:]
}

// logFileName is where a container's output goes: one directory per pod
// (namespace, name and UID, like /var/log/pods), one file per container.
func logFileName(dir, namespace, pod, uid, container string) string {
	return filepath.Join(dir, strings.Join([]string{namespace, pod, uid}, "_"), container+".log")
}
