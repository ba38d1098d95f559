# xdpolicy — see README.md. Everything here is what CI runs (.ci/run calls
# `make test`).
GO        ?= go
BIN       := bin/xdpolicy
GOFLAGS   ?=
PKGS      := ./...

.PHONY: build test bench demo generate vet clean

build:
	$(GO) build -o $(BIN) ./cmd/xdpolicy

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

# All tests, then every benchmark once so they keep compiling and asserting.
# Privileged tests (BPF, AF_XDP, network namespaces) need root and skip with
# one line each without it.
test: vet build
	$(GO) test -count=1 -timeout 25m $(PKGS)
	$(GO) test -count=1 -run '^$$' -bench . -benchtime=1x -timeout 10m $(PKGS)

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

clean:
	rm -rf bin
