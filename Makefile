# xdpolicy — see README.md. Everything here is what CI runs (.ci/run calls
# `make test`).
GO        ?= go
BIN       := bin/xdpolicy
GOFLAGS   ?=
PKGS      := ./...

.PHONY: build test race bench demo generate vet clean deps k8s e2e-node e2e-node-smoke

build:
	$(GO) build -o $(BIN) ./cmd/xdpolicy

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

# All tests, then every benchmark once so they keep compiling and asserting,
# then a smoke of the real node (a few upstream Netpol specs against the
# DaemonSet on kubelet + containerd; `make e2e-node` runs them all).
# Privileged tests (BPF, AF_XDP, network namespaces, the real node) need
# root and skip with one line each without it. On a fresh machine `deps`
# installs the Debian packages and `k8s` builds the Kubernetes binaries
# (about 15 minutes once, cached in ~/.cache/xdpolicy afterwards).
test: vet build deps k8s
	$(GO) test -count=1 -timeout 25m $(PKGS)
	$(MAKE) --no-print-directory race
	$(GO) test -count=1 -run '^$$' -bench . -benchtime=1x -timeout 10m $(PKGS)
	@if [ "$$(id -u)" = 0 ]; then ./scripts/node/e2e.sh --cni ptp --smoke; \
	else echo "skipping the real-node smoke: needs root"; fi

# The packages with goroutines, atomics or locks, under the race detector.
# GOFLAGS=-race also reaches the `go build` of the xdpolicy binary that the
# agent, lab and CLI tests run, so the agent's own goroutines (workers,
# control loop, trace ring, ops server) run under the detector in the
# end-to-end tests; GORACE=halt_on_error=1 makes a race end the process at
# once, which fails the test that started it instead of only logging.
# bench/harness is left out: its concurrency runs in the binary it drives,
# and timing packets under the detector measures nothing.
RACE_PKGS := ./dataplane/ruleset ./dataplane/flowtable ./dataplane/trace ./dataplane/worker \
	./dataplane/afxdp ./dataplane/podwire ./control/source ./control/kubetest \
	./control/agent ./control/lab ./cmd/xdpolicy

race:
	GOFLAGS="$(GOFLAGS) -race" GORACE=halt_on_error=1 $(GO) test -race -count=1 -timeout 25m $(RACE_PKGS)

deps:
	@./scripts/deps.sh

k8s:
	@./scripts/k8s/build.sh node >/dev/null

# The benchmarks with enough iterations to read figures from, then the
# dataplane matrix of `xdpolicy bench` (needs root), written to bench/results/.
BENCH_FLAGS ?= --scenario all --policies 10,100,1000 --pods 100,10000 --duration 3s --reps 3
bench: build
	# -p 1: one package at a time, so the lab benchmarks do not load the
	# machine while the classifier's are timed.
	$(GO) test -p 1 -run '^$$' -bench . -benchmem -timeout 30m ./control/... ./dataplane/...
	./$(BIN) bench $(BENCH_FLAGS) -o table --results-dir bench/results --profile bench/results/profiles

# The demo: every scenario under deploy/examples, step by step.
demo: build
	@./scripts/demo.sh $(BIN)

# Regenerate the BPF objects (needs clang, llvm, libbpf-dev).
generate:
	$(GO) generate ./xdpprog/

# The real-node run (root; scripts/node/e2e.sh): a single-node Kubernetes
# v1.37.2 with containerd on this machine, inside its own network namespace,
# the unchanged deploy/ applied with `kubectl apply -k deploy/`, then the
# upstream e2e NetworkPolicy specs (e2e.test); torn down afterwards, also on
# failure. First run: builds the Kubernetes binaries and containerd into
# ~/.cache/xdpolicy (minutes). `scripts/node/down.sh` cleans a leftover node.
# CNI and FOCUS reach the script through the environment, so that a focus
# with quotes or spaces needs no shell quoting here.
CNI   ?= ptp
FOCUS ?= Netpol
e2e-node: export XDPN_CNI = $(CNI)
e2e-node: export XDPN_FOCUS = $(FOCUS)
e2e-node:
	./scripts/node/e2e.sh

# A few fast Netpol specs with CNI=ptp (CI).
e2e-node-smoke:
	./scripts/node/e2e.sh --cni ptp --smoke

clean:
	rm -rf bin
