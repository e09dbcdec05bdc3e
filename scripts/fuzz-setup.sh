#!/usr/bin/env bash
# Installs cargo-fuzz (https://github.com/rust-fuzz/cargo-fuzz) from crates.io into a cache
# outside the checkout, once per version; later runs find it and return at once.
# Prints the path of the cargo-fuzz binary on stdout (the last line).
#
# No nightly toolchain is needed: the fuzz make targets run the stable toolchain with
# RUSTC_BOOTSTRAP=1, which accepts the `-Z sanitizer=address` and coverage flags that cargo-fuzz
# passes. libFuzzer itself is compiled from source by libfuzzer-sys's build script with the
# machine's C++ compiler.
set -euo pipefail

CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
ROOT="${VDPA_FUZZ_TOOLS:-$HOME/.cache/vdpa-emu/cargo-fuzz}"
BIN="$ROOT/bin/cargo-fuzz"

if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "$BIN"
    exit 0
fi

if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz-setup: a C++ compiler (g++) is needed to build libFuzzer" >&2
    exit 1
fi

echo "fuzz-setup: installing cargo-fuzz $CARGO_FUZZ_VERSION into $ROOT" >&2
cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$ROOT" >&2
"$BIN" --version >&2
echo "$BIN"
