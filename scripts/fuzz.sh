#!/usr/bin/env bash
# Runs vdpa-emu's libFuzzer targets (fuzz/, cargo-fuzz) one after the other, each for SECONDS,
# and prints one line per target: name, executions, executions per second, crashes, leaks.
#
#   scripts/fuzz.sh SECONDS [TARGET...]        (make fuzz / make fuzz-smoke)
#
# All targets are built once (`cargo fuzz build`, AddressSanitizer with LeakSanitizer, debug
# assertions on) on the stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z
# sanitizer flags cargo-fuzz passes. Each target starts from its committed seeds
# (fuzz/corpus/TARGET, read only) plus a work corpus outside the checkout; a crash, timeout
# (-timeout=10) or out-of-memory (-rss_limit_mb=2048) stops that target, its input is kept
# under fuzz/artifacts/TARGET/ (ignored by git) and the script fails at the end.
#
# Leaks: the targets keep a device (and the vfio-user server) across inputs, so per-input
# allocation counts never balance and libFuzzer's per-input leak check (-detect_leaks=1) would
# run a full LeakSanitizer heap scan after nearly every input (about 10x slower). The fuzzing
# phase therefore runs with -detect_leaks=0 and LeakSanitizer's check at process exit; then a
# second phase runs every input of the corpus (seeds and everything found) once with
# -detect_leaks=1, which checks each input for memory it allocated and lost.
#
# Environment: FUZZ_TARGET_DIR (build directory, default $CARGO_TARGET_DIR/fuzz or
# target/fuzz), FUZZ_WORK (work corpora and logs, default FUZZ_TARGET_DIR/work),
# FUZZ_BUILD_FLAGS (more `cargo fuzz build` flags, e.g. --jobs 1).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}"
shift
ALL_TARGETS=(vfio_user_stream split_ring packed_ring device_state_stream scenario_toml)
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")

CARGO_FUZZ="$(bash scripts/fuzz-setup.sh | tail -n 1)"
TD="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}"
WORK="${FUZZ_WORK:-$TD/work}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN="$TD/$TRIPLE/release"

build_start=$(date +%s)
# shellcheck disable=SC2086
RUSTC_BOOTSTRAP=1 "$CARGO_FUZZ" build -s address --target-dir "$TD" ${FUZZ_BUILD_FLAGS:-} >&2
echo "fuzz: built ${#ALL_TARGETS[@]} targets in $(( $(date +%s) - build_start )) s" >&2

# LeakSanitizer is part of ASan on Linux x86_64; say so explicitly.
export ASAN_OPTIONS="detect_leaks=1:${ASAN_OPTIONS:-}"

failed=0
printf '%-22s %14s %10s %8s %6s\n' target executions exec/s crashes leaks
for t in "${TARGETS[@]}"; do
    seeds="fuzz/corpus/$t"
    [[ -d "$seeds" ]] || { echo "fuzz: no seed corpus $seeds" >&2; exit 1; }
    mkdir -p "$WORK/corpus/$t" "fuzz/artifacts/$t"
    log="$WORK/$t.log"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    set +e
    "$BIN/$t" "$WORK/corpus/$t" "$seeds" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -detect_leaks=0 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [[ -z "$execs" ]]; then
        # No final stats: libFuzzer died before printing them (a crash prints its own report).
        execs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
        execs=${execs:-0}
        rate=${rate:-?}
    fi
    # LeakSanitizer's check at exit reports without an artifact: a leak, not a crash.
    exit_leaks=$(grep -c 'ERROR: LeakSanitizer' "$log" || true)
    if [[ $rc -ne 0 && $crashes -eq 0 && $exit_leaks -eq 0 ]]; then
        crashes=1
    fi
    # Leak phase: every corpus input once, each checked by LeakSanitizer.
    leaks=$exit_leaks
    if [[ $rc -eq 0 ]]; then
        set +e
        "$BIN/$t" -runs=0 -detect_leaks=1 -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="fuzz/artifacts/$t/" "$WORK/corpus/$t" "$seeds" >"$log.leaks" 2>&1
        lrc=$?
        set -e
        if [[ $lrc -ne 0 ]]; then
            leaks=$(grep -c 'ERROR: LeakSanitizer' "$log.leaks" || true)
            [[ $leaks -gt 0 ]] || crashes=$((crashes + 1))
            log="$log.leaks"
            rc=$lrc
        fi
    fi
    printf '%-22s %14s %10s %8s %6s\n' "$t" "$execs" "$rate" "$crashes" "$leaks"
    if [[ $rc -ne 0 || $crashes -ne 0 || $leaks -ne 0 ]]; then
        failed=1
        echo "fuzz: $t failed (exit $rc); log $log, inputs in fuzz/artifacts/$t/:" >&2
        grep -E 'ERROR: |panicked at|SUMMARY' "$log" | head -n 5 >&2 || true
        ls "fuzz/artifacts/$t" >&2
    fi
    if [[ "$execs" == 0 ]]; then
        echo "fuzz: $t ran no input" >&2
        failed=1
    fi
done
exit $failed
