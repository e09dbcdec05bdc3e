#!/bin/bash
# Instructions the device executes per 64-byte frame, counted by callgrind (valgrind) in the
# in-process criterion benches (sim-harness/benches/datapath.rs): deterministic, so a change of
# a few percent shows where the timed benches on a noisy 2-core machine cannot see it
# (docs/bench.md, "Instructions per frame").
#
# usage: scripts/instructions-per-frame.sh [BENCH_ID...]
#   default: tx_dequeue/64B/iotlb64_log_off tx_dequeue/64B/packed_iotlb64_log_off
#            rx_deliver/64B/log_off rx_deliver/64B/packed_log_off
#            rx_deliver/64B/4qp_log_off rx_deliver/64B/packed_4qp_log_off
#            rx_deliver/64B/gen_log_off rx_deliver/64B/packed_gen_log_off
# needs: valgrind (apt-get install valgrind)
#
# A bench iteration moves one ring of 256 frames; the count is the inclusive instructions of
# the timed call (tx and loopback: the driver's kick, which runs the device inline; rx: the
# device's delivery; rx gen_*: the generator's pushes and the deliveries) over the iterations x
# 256.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }
ids=("$@")
[ ${#ids[@]} -gt 0 ] || ids=(tx_dequeue/64B/iotlb64_log_off tx_dequeue/64B/packed_iotlb64_log_off
    rx_deliver/64B/log_off rx_deliver/64B/packed_log_off
    rx_deliver/64B/4qp_log_off rx_deliver/64B/packed_4qp_log_off
    rx_deliver/64B/gen_log_off rx_deliver/64B/packed_gen_log_off)
cargo bench -p sim-harness --bench datapath --no-run 2>/dev/null
bin=$(ls -t target/release/deps/datapath-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for id in "${ids[@]}"; do
    case "$id" in
        tx_*|loopback/*) fn='vdpa_virtio_driver::net::NetDriver::kick' ;;
        rx_*/gen_*|rx_*/packed_gen_*) fn='datapath::gen_round' ;;
        rx_*) fn='device::device::Device::deliver_rx' ;;
        *) echo "$id: not a tx_dequeue, loopback or rx_deliver bench" >&2; exit 2 ;;
    esac
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" --bench --profile-time 1 "^${id}\$" \
        >"$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
    callgrind_annotate --inclusive=yes --tree=caller "$out/cg" >"$out/tree" 2>/dev/null
    python3 - "$id" "$fn" "$out/tree" <<'P'
import re, sys
bench, fn, path = sys.argv[1:]
lines = open(path).read().split('\n')
# Each entry of the function ("*"; inlining may give it several) follows its callers ("<",
# each with the instructions of its calls, inclusive, and how many): the bench's timed call
# site is the caller that ran the most.
best = None
for i, l in enumerate(lines):
    if re.search(r'\*\s+\S*:' + re.escape(fn) + r'( \[|$)', l):
        j = i - 1
        while j >= 0 and '<' in lines[j]:
            m = re.match(r'\s*([\d,]+) .*\(([\d,]+)x\)', lines[j])
            if m:
                ir, calls = (int(g.replace(',', '')) for g in m.groups())
                if best is None or ir > best[0]:
                    best = (ir, calls)
            j -= 1
if not best:
    sys.exit(f"{bench}: no call of {fn} in the profile")
ir, calls = best
print(f"{bench:45s} {ir / (calls * 256):7.0f} instructions/frame ({calls} rings)")
P
done
