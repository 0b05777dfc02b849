# ringwarden — see README.md. Every target installs what it needs (`deps`).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
AGENT := target/release/ringwarden-agent
RUN_SECONDS ?= 20

.PHONY: deps build run test fuzz lint fmt crds bench clean

## deps: install toolchain pieces, LLVM, bpf-linker; mount tracefs and bpffs (idempotent)
deps:
	@scripts/deps.sh

## build: the eBPF object and every binary, release mode
build: deps
	$(CARGO) build --release --bins

## run: the standalone agent on examples/probeset.yaml and examples/slo.yaml for $(RUN_SECONDS)s, with some load
run: build
	@scripts/demo-load.sh $(RUN_SECONDS) & \
	$(AGENT) standalone -f examples/probeset.yaml -f examples/slo.yaml --interval 5s --duration $(RUN_SECONDS)s --top 12; \
	status=$$?; wait; exit $$status

## test: unit, schema and live-kernel tests (needs root), then every fuzz target for $(FUZZ_SECONDS)s
test: deps
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory fuzz

FUZZ_SECONDS ?= 20
FUZZ_TARGETS := ring_record agent_message go_binary crafted_elf
## fuzz: each cargo-fuzz target (fuzz/) for FUZZ_SECONDS; a crash fails and leaves its input in fuzz/artifacts
fuzz: deps
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done

## lint: formatting and clippy, warnings are errors
lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The kernel programs only compile for the BPF target; lint them there too.
	RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/bpf-lint $(CARGO) clippy -p ringwarden-ebpf \
		--bins --release --target bpfel-unknown-none -Z build-std=core -- -D warnings

## bench: added CPU per probed syscall (both paths), consumer cost per record, agent CPU/RSS at 100k events/s, histogram read cost by series and CPUs, added ns per traced Go call, scrape cost (see BENCHMARKS.md)
bench: deps
	$(CARGO) build --release -p ringwarden-e2e -p ringwarden-node-agent --bins
	target/release/bench-syscalls --calls $${CALLS:-3000000} --reps $${REPS:-5}
	target/release/bench-agent --rate $${RATE:-100000} --seconds $${SECONDS_AT_RATE:-10}
	@# One read of a probe's histograms against series and CPUs (also on 64- and 192-CPU layouts).
	target/release/bench-hist-reads --reps $${HIST_REPS:-15}
	@# A traced Go function (uprobes at entry and RET) against a C-ABI uprobe + uretprobe.
	target/release/bench-go --calls $${GO_CALLS:-200000} --reps $${REPS:-5}
	@# The agent's /metrics: text (classic) against protobuf (native histograms) per scrape.
	target/release/bench-exposition --probes 8 --series 64
	@# Report ingest over TLS: simulated agents against an operator process (docs/operator.md).
	@# The two target points, then growth with agents (16 series) and with series (1 000 agents).
	$(CARGO) build --release -p ringwarden-operator --features test-support --bin bench-ingest
	@# Two sockets per agent: raise the open-file limit to the hard limit.
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; target/release/bench-ingest \
		--points $${POINTS:-1000x5x64,2000x5x16,250x5x16,500x5x16,1000x5x16,1000x5x4} \
		--interval $${INTERVAL:-10s} --duration $${DURATION:-30s}

## crds: regenerate crds/ringwarden.dev_crds.yaml and docs/reference.md from the Rust types (tests check both)
crds:
	$(CARGO) run --quiet -p ringwarden-crds --bin crdgen > crds/ringwarden.dev_crds.yaml
	cp crds/ringwarden.dev_crds.yaml charts/ringwarden/files/crds.yaml
	$(CARGO) run --quiet -p ringwarden-crds --bin crdref > docs/reference.md

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

.PHONY: images chart-test
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_PREFIX ?= ringwarden
IMAGE_TAG ?= v$(VERSION)

## images: the operator and agent container images ($(IMAGE_PREFIX)/operator, $(IMAGE_PREFIX)/agent :$(IMAGE_TAG)); needs a Docker engine
images:
	@docker info >/dev/null 2>&1 || { echo "images: no Docker engine answers (\`docker info\` failed); build the images on a machine that runs Docker" >&2; exit 1; }
	DOCKER_BUILDKIT=1 docker build -f images/operator.Dockerfile -t $(IMAGE_PREFIX)/operator:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 docker build -f images/agent.Dockerfile -t $(IMAGE_PREFIX)/agent:$(IMAGE_TAG) .

## chart-test: helm lint, helm template and schema checks of charts/ringwarden (also part of `make test`)
chart-test: deps
	$(CARGO) test -p ringwarden-e2e --test chart

.PHONY: e2e-cluster
## e2e-cluster: on the cluster KUBECONFIG points at, install the chart, apply the examples, wait until agents report and the SLO has a state (docs/install.md); KEEP=1 leaves it installed
e2e-cluster:
	IMAGE_PREFIX=$(IMAGE_PREFIX) IMAGE_TAG=$(IMAGE_TAG) scripts/e2e-cluster.sh
