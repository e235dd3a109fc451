package webhook

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// CertLoader serves the certificate in certFile/keyFile and picks up a
// renewed one (cert-manager rewrites the Secret's files in place) without
// a restart: it re-reads the pair when either file's modification time
// changed, checked at most once per second.
type CertLoader struct {
	certFile, keyFile string

	mu        sync.Mutex
	cert      *tls.Certificate
	certMod   time.Time
	keyMod    time.Time
	lastCheck time.Time
}

// NewCertLoader loads the pair once, so that a bad pair fails at start.
func NewCertLoader(certFile, keyFile string) (*CertLoader, error) {
	l := &CertLoader{certFile: certFile, keyFile: keyFile}
	if err := l.reload(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *CertLoader) reload() error {
	certInfo, err := os.Stat(l.certFile)
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	keyInfo, err := os.Stat(l.keyFile)
	if err != nil {
		return fmt.Errorf("TLS key: %w", err)
	}
	if l.cert != nil && certInfo.ModTime().Equal(l.certMod) && keyInfo.ModTime().Equal(l.keyMod) {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(l.certFile, l.keyFile)
	if err != nil {
		return fmt.Errorf("TLS key pair %s, %s: %w", l.certFile, l.keyFile, err)
	}
	l.cert, l.certMod, l.keyMod = &cert, certInfo.ModTime(), keyInfo.ModTime()
	return nil
}

// GetCertificate is tls.Config's hook. A pair that fails to load while
// being rewritten keeps the previous one in use.
func (l *CertLoader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); now.Sub(l.lastCheck) >= time.Second {
		l.lastCheck = now
		_ = l.reload()
	}
	return l.cert, nil
}
