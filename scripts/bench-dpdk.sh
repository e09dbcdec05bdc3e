#!/usr/bin/env bash
# scripts/bench-dpdk.sh [--host | --chroot] [--no-install] -- the DPDK that `vdpa-emu bench datapath`
# runs as its anchor (testpmd's vhost PMD in rxonly fed by a virtio-user testpmd in txonly, and the
# reverse for RX).
#
# Finds dpdk-testpmd, in this order (--host: only 1 and 3; --chroot: only 2):
#   1. host: dpdk-testpmd on PATH;
#   2. e2e-chroot: the trixie tree scripts/e2e-provision-dpdk.sh built (DPDK 24.11), at
#      ${VDPA_E2E_DPDK_DIR:-${VDPA_E2E_DIR:-$HOME/.cache/vdpa-emu/e2e}-dpdk}/root; the bench runs it
#      with chroot inside a private mount namespace (root);
#   3. apt: Debian's DPDK installed with apt-get (bookworm: 22.11; `dpdk-dev` is the package that
#      holds /usr/bin/dpdk-testpmd, `dpdk` only the runtime scripts). Root; never with --no-install.
# Prints one line on stdout, which the bench reads:
#   DPDK-TESTPMD source=host|e2e-chroot|apt root=/|DIR bin=PATH-INSIDE-ROOT version=DEBIAN-VERSION
# and what it did on stderr. Exit 1 with the reason when no testpmd can be had.
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive
note() { echo "bench-dpdk: $*" >&2; }
die() { echo "bench-dpdk: $*" >&2; exit 1; }

want=any install=1
for a in "$@"; do
  case "$a" in
    --host) want=host ;;
    --chroot) want=chroot ;;
    --no-install) install=0 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument $a (expected --host, --chroot, --no-install)" ;;
  esac
done

# version ROOT: the Debian version of the package that holds testpmd there.
version() {
  local v
  if [ "$1" = / ]; then
    v=$(dpkg-query -W -f '${Version}' dpdk-dev 2> /dev/null || true)
  else
    v=$(chroot "$1" dpkg-query -W -f '${Version}' dpdk-dev 2> /dev/null || true)
  fi
  echo "${v:-unknown}"
}

found() { # SOURCE ROOT BIN
  echo "DPDK-TESTPMD source=$1 root=$2 bin=$3 version=$(version "$2")"
  exit 0
}

if [ "$want" != chroot ]; then
  bin=$(command -v dpdk-testpmd 2> /dev/null || true)
  [ -n "$bin" ] && { note "using the host's $bin"; found host / "$bin"; }
fi

root=${VDPA_E2E_DPDK_DIR:-${VDPA_E2E_DIR:-$HOME/.cache/vdpa-emu/e2e}-dpdk}/root
if [ "$want" != host ]; then
  if [ -x "$root/usr/bin/dpdk-testpmd" ]; then
    [ "$(id -u)" = 0 ] || die "the e2e chroot's testpmd ($root) needs root (chroot, mount namespace)"
    command -v unshare > /dev/null || die "the e2e chroot's testpmd needs unshare(1) (util-linux)"
    note "using the e2e chroot's testpmd ($root)"
    found e2e-chroot "$root" /usr/bin/dpdk-testpmd
  fi
  [ "$want" = chroot ] && die "no e2e chroot with dpdk-testpmd at $root (scripts/e2e-provision-dpdk.sh builds it)"
fi

[ "$install" = 1 ] || die "no dpdk-testpmd on PATH nor in $root, and --no-install"
[ "$(id -u)" = 0 ] || die "no dpdk-testpmd: installing Debian's dpdk-dev needs root (apt-get install dpdk-dev)"
command -v apt-get > /dev/null || die "no dpdk-testpmd and no apt-get to install it"
note "dpdk-testpmd missing: installing Debian's dpdk-dev (apt-get install --no-install-recommends dpdk-dev)"
if ! apt-get install -y -qq --no-install-recommends dpdk-dev > /dev/null 2>&1; then
  apt-get update -qq > /dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends dpdk-dev > /dev/null 2>&1 || die "apt-get install dpdk-dev failed"
fi
bin=$(command -v dpdk-testpmd 2> /dev/null || true)
[ -n "$bin" ] || die "dpdk-dev is installed but brought no dpdk-testpmd"
note "installed Debian's dpdk-dev $(version /)"
found apt / "$bin"
