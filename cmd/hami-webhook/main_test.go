package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRunRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, exitOK, "-default-gpu-num int"},
		{"no certificate", []string{}, exitUsage, "--tls-cert-file and --tls-key-file are required"},
		{"cores above 100", []string{"--default-cores=101", "--tls-cert-file=c", "--tls-key-file=k"}, exitUsage, "default cores 101"},
		{"bad class", []string{"--device-class=Not_A_Class", "--tls-cert-file=c", "--tls-key-file=k"}, exitUsage, "device class name"},
		{"duplicate resource", []string{"--resource-mem=nvidia.com/gpu", "--tls-cert-file=c", "--tls-key-file=k"}, exitUsage, `resource name "nvidia.com/gpu" given twice`},
		{"stray argument", []string{"serve"}, exitUsage, "unexpected arguments"},
		{"missing certificate file", []string{"--tls-cert-file=/nonexistent/c", "--tls-key-file=/nonexistent/k"}, exitError, "TLS certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			code := run(context.Background(), tc.args, &out)
			if code != tc.code {
				t.Errorf("exit %d, want %d; output:\n%s", code, tc.code, out.String())
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out.String())
			}
		})
	}
}
