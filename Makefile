# hami-dra: top-level build. `make test` is everything CI runs; `make demo` is
# the product's main job on a local cluster with simulated GPUs.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/hami-dra/hami-dra/internal/version.Version=$(VERSION)
BIN := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# The driver module's own packages (the e2e module is separate and vetted by
# its own Makefile: vetting k8s.io/kubernetes would take minutes).
GO_PKGS := ./...

.PHONY: all build kubectl-hami vgpu-core test test-unit test-vgpu-core test-vgpu-core-asan test-e2e lint bench \
        bench-go bench-vgpu-core demo test-gpu inventory clean fmt

all: build

## build: the plugin binary, the HAMi webhook, kubectl-hami and libvgpu.so
build: vgpu-core kubectl-hami
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/vgpu-kubelet-plugin ./cmd/vgpu-kubelet-plugin
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/hami-webhook ./cmd/hami-webhook

## kubectl-hami: the kubectl plugin (bin/ on the PATH, then `kubectl hami gpus`)
kubectl-hami:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/kubectl-hami ./cmd/kubectl-hami

## vgpu-core: libvgpu.so, the fake CUDA/NVML drivers and the C tests' programs
vgpu-core:
	$(MAKE) -C vgpu-core all

## test: everything CI runs (lint, C tests, Go unit tests, end-to-end tests)
test: lint test-vgpu-core test-vgpu-core-asan test-unit test-e2e

test-vgpu-core:
	$(MAKE) -C vgpu-core test

## test-vgpu-core-asan: the C tests again, built with AddressSanitizer and UBSan
test-vgpu-core-asan:
	$(MAKE) -C vgpu-core test-asan

# vgpu-core first: internal/region's tests run the real libvgpu.
test-unit: vgpu-core
	$(GO) test -count=1 $(GO_PKGS)

test-e2e: vgpu-core
	$(MAKE) -C e2e lint
	$(MAKE) -C e2e test

## lint: go vet, gofmt and staticcheck on the project's own packages
lint:
	@out=$$(gofmt -l cmd internal api cdi e2e 2>/dev/null); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(GO_PKGS)
	$(GO) run $(STATICCHECK) $(GO_PKGS)

fmt:
	gofmt -w cmd internal api cdi e2e

## bench: Go hot paths and the C launch/alloc harness, each side by side
bench: bench-go bench-vgpu-core

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem $(GO_PKGS)

bench-vgpu-core:
	$(MAKE) -C vgpu-core bench

## demo: a local cluster (real control plane, simulated GPUs) to try the driver
demo: vgpu-core
	$(MAKE) -C e2e demo

## test-gpu: real CUDA and PyTorch under libvgpu (needs an NVIDIA GPU; CI never runs it)
test-gpu:
	$(MAKE) -C vgpu-core test-gpu

## inventory: what this node's plugin would publish, with a simulated profile
inventory:
	$(GO) run ./cmd/vgpu-kubelet-plugin inventory --simulate $${SIMULATE:-4xA100-80GB,2xL4} --node-name $${NODE_NAME:-local}

clean:
	rm -rf $(BIN)
	$(MAKE) -C vgpu-core clean || true
