# vdpa-emu: the two commands of the README are `make demo` and `make test`.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all build demo test unit lint fmt docs bench clean soak fuzz fuzz-smoke

all: build

build:
	$(CARGO) build --release --workspace

# The main job on the built-in model: the vDPA HW prerequisite report, the bundled regression
# scenarios, then loopback traffic through the NIC with its counters.
demo: build
	RUST_LOG=error ./target/release/vdpa-emu validate
	RUST_LOG=error ./target/release/vdpa-emu scenario run scenarios/
	RUST_LOG=error ./target/release/vdpa-emu demo --queue-pairs 4 --frames 10000

# Every test: formatting, lints, unit and integration tests (the registers doc staleness check
# is one of them), a short run of every fuzz target, and the end-to-end tests with a real QEMU
# and Linux guest.
test: lint unit fuzz-smoke e2e

unit: host-tools
	$(CARGO) test --workspace --all-targets

# tcpdump for the capture tests (scripts/host-tools.sh installs what is missing).
.PHONY: host-tools
host-tools:
	bash scripts/host-tools.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

fmt:
	$(CARGO) fmt --all

# Regenerate docs/registers.md from the declarations in bar-registers/, and write the man pages
# (one per command) into docs/man/.
docs:
	$(CARGO) run -q -p sim-harness -- registers > docs/registers.md
	$(CARGO) run -q -p sim-harness -- man docs/man

# Criterion benchmarks (TX dequeue of 64-byte frames, IOMMU on, logging off/on; dma hot paths).
bench:
	$(CARGO) bench --workspace

clean:
	$(CARGO) clean

# Long runs, not part of `make test` (about 30 minutes):
# - the robustness soak: 10 minutes (VDPA_SOAK_SECS) of traffic, device resets, DMA remaps under
#   running queues, reconnects and SIGKILLed clients against one server, counters, descriptors
#   and RSS checked at the end (the 100-killed-clients test against a `vdpa-emu serve` process
#   is part of `make test`: it takes a few seconds);
# - the validator proof: 200 `validate --socket` runs against a healthy `serve` on a loaded
#   machine with 0 FAILs, and every quirk caught by its own check 25 times.
soak:
	$(CARGO) test -p sim-harness --test soak -- --ignored --nocapture --test-threads=1
	$(CARGO) test --release -p sim-harness --test validator_proof -- --ignored --nocapture

# libFuzzer targets (fuzz/README.md): one build of all targets (ASan + LeakSanitizer, stable
# toolchain with RUSTC_BOOTSTRAP=1, cargo-fuzz installed by scripts/fuzz-setup.sh), then each
# target for FUZZ_SECONDS from its committed seeds; prints executions, exec/s, crashes and
# leaks per target and fails on any. `make test` runs each for FUZZ_SMOKE_SECONDS.
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 10
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke:
	bash scripts/fuzz.sh $(FUZZ_SMOKE_SECONDS)

# End-to-end tests with a real QEMU (>= 10.1, vfio-user-pci) and a Linux guest under TCG (docs/e2e.md).
# Provisioning needs root and the Debian archive; its result is cached outside the checkout (so a
# fresh clone on the same machine reuses it) and rebuilt when the script or the archive's
# versions change.
.PHONY: e2e-provision e2e
export VDPA_E2E_DIR ?= $(HOME)/.cache/vdpa-emu/e2e
E2E_CARGO_FLAGS ?=
e2e-provision:
	bash scripts/e2e-provision.sh
	bash scripts/e2e-provision-dpdk.sh

# The throughput matrix (matrix::throughput_matrix) is a benchmark: `make bench-e2e` runs it.
e2e: e2e-provision
	$(CARGO) build $(E2E_CARGO_FLAGS) -p vdpa-lm-frontend
	$(CARGO) test $(E2E_CARGO_FLAGS) -p sim-harness --test e2e_qemu -- --ignored --test-threads=1 --nocapture --skip matrix::

# TCP throughput of Linux guests on our device next to QEMU's own virtio-net-pci in the same run:
# 1/2 vCPUs x 1/4 queue pairs, virtio_net and ifcvf, guest->host, host->guest, guest->guest (docs/e2e.md).
.PHONY: bench-e2e
bench-e2e: e2e-provision
	$(CARGO) test --release -p sim-harness --test e2e_qemu -- --ignored --test-threads=1 --nocapture --exact matrix::throughput_matrix
