#!/usr/bin/env bash
# scripts/e2e-provision-dpdk.sh [DEST] -- Debian's DPDK for the e2e guest (issue: the seed's own software).
#
# Run as root after scripts/e2e-provision.sh (it reads the guest kernel version from its output). Builds
# DEST (default ${VDPA_E2E_DPDK_DIR:-${VDPA_E2E_DIR:-<repo>/.cache/e2e}-dpdk}):
#   DEST/root/        a trixie minbase tree with Debian's DPDK (dpdk-dev: dpdk-testpmd and every PMD, the
#                     ifc vDPA driver librte-vdpa-ifc25), the guest's own kernel modules (linux-image-KVER,
#                     so `modprobe` works in the chroot), and the `vdpa` example built from dpdk-doc's
#                     sources (/usr/share/dpdk/examples/vdpa) as /opt/vdpa-emu/bin/dpdk-vdpa. The guest
#                     mounts this tree read-only over 9p and chroots into it: nothing of ours is in it.
#   DEST/modules/     9p + vfio modules (uncompressed) and their load order, for the initramfs side: the
#                     guest must load 9p before it can reach DEST/root
#   DEST/STAMP        the cache key: this script's hash, the DPDK version, the guest kernel
# Cached like scripts/e2e-provision.sh: rebuilt in DEST.tmp when STAMP changes, then renamed over DEST.
# Env: VDPA_E2E_OFFLINE=1 (reuse DEST if its script hash matches), VDPA_E2E_FORCE=1, MIRROR=URL.
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

SELF=$(realpath "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SELF")")
MAIN=$(realpath -m "${VDPA_E2E_DIR:-$REPO/.cache/e2e}")
DEST=$(realpath -m "${1:-${VDPA_E2E_DPDK_DIR:-$MAIN-dpdk}}")
TMP=$DEST.tmp
T0=$EPOCHREALTIME
die() { echo "e2e-provision-dpdk: ERROR: $*" >&2; exit 1; }
note() { echo "e2e-provision-dpdk: $*" >&2; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
R=$TMP/root
umount_proc() { if [ -d "$R/proc" ] && mountpoint -q "$R/proc"; then umount "$R/proc" || umount -l "$R/proc"; fi; }
LOG=
on_exit() {
  local rc=$?
  umount_proc || true
  if [ "$rc" != 0 ]; then
    echo "e2e-provision-dpdk: FAILED (exit $rc) after $(elapsed "$T0") s" >&2
    [ -n "$LOG" ] && [ -s "$LOG" ] && { echo "---- last lines of $LOG ----" >&2; tail -n 40 "$LOG" >&2; }
  fi
}
trap on_exit EXIT

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
[ -f "$MAIN/guest/KVER" ] && [ -f "$MAIN/STAMP" ] || die "$MAIN is not provisioned: run scripts/e2e-provision.sh first"
KVER=$(cat "$MAIN/guest/KVER")
KPKGVER=$(awk -v k="$KVER" '$1 == "linux-image=" k {print $2} $0 ~ "^linux-image=" k " " {print $2}' "$MAIN/STAMP" | head -n1)
[ -n "$KPKGVER" ] || die "cannot read the guest kernel's package version from $MAIN/STAMP"
MIRROR=${MIRROR:-$( (awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null;
                     awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null) | head -n1 || true)}
[ -n "$MIRROR" ] || die "no Debian archive found in /etc/apt; set MIRROR=URL"
exec 9> "$DEST.lock"
flock -w 3600 9 || die "another run holds $DEST.lock"

SCRIPT_HASH=$(sha256sum < "$SELF" | cut -c1-16)
# The DPDK version the archive offers now, from the main provisioning's private apt indices (trixie).
APTD=$MAIN.apt
DPDK_VER=
if [ "${VDPA_E2E_OFFLINE:-0}" != 1 ] && [ -d "$APTD/lists" ]; then
  DPDK_VER=$(apt-cache -o "Dir::Etc::SourceList=$APTD/sources.list" -o "Dir::Etc::SourceParts=$APTD/none" \
    -o "Dir::State::Lists=$APTD/lists" -o "Dir::State::status=$APTD/status" -o "Dir::Cache=$APTD/cache" \
    policy dpdk-dev 2> /dev/null | awk '/Candidate:/{print $2}')
fi
usable() { [ -f "$DEST/STAMP" ] && [ -x "$DEST/root/usr/bin/dpdk-testpmd" ] && [ -x "$DEST/root/opt/vdpa-emu/bin/dpdk-vdpa" ] \
  && [ -s "$DEST/modules/order" ]; }
if [ -z "$DPDK_VER" ] || [ "$DPDK_VER" = "(none)" ]; then
  usable && grep -qx "script=$SCRIPT_HASH" "$DEST/STAMP" && grep -qx "kernel=$KVER $KPKGVER" "$DEST/STAMP" \
    && { note "reusing $DEST without asking the archive ($(tr '\n' ' ' < "$DEST/STAMP"))"; exit 0; }
  die "cannot learn the DPDK version (run scripts/e2e-provision.sh first, or VDPA_E2E_OFFLINE=1 with a cache)"
fi
WANT=$(printf 'script=%s\ndpdk=%s\nkernel=%s %s\n' "$SCRIPT_HASH" "$DPDK_VER" "$KVER" "$KPKGVER")
if [ "${VDPA_E2E_FORCE:-0}" != 1 ] && usable && [ "$(cat "$DEST/STAMP")" = "$WANT" ]; then
  note "cache hit: $DEST is up to date ($(du -sh "$DEST" | cut -f1))"
  exit 0
fi
note "building into $TMP: $(echo "$WANT" | tr '\n' ' ')"
rm -rf "$TMP"
mkdir -p "$TMP/logs" "$TMP/modules"
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C INITRD=No "$@"; }
step() {
  local name=$1 s=$EPOCHREALTIME; shift
  LOG=$TMP/logs/$name.log
  "$@" > "$LOG" 2>&1
  printf '[time] %-24s %6.1f s\n' "$name" "$(elapsed "$s")" >&2
  LOG=
}

bootstrap() {
  command -v debootstrap > /dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap; }
  debootstrap --variant=minbase --include=xz-utils,kmod trixie "$R" "$MIRROR"
}
step debootstrap bootstrap

install_pkgs() {
  mount -t proc proc "$R/proc"
  in_root apt-get update -qq
  # dpdk-dev: dpdk-testpmd and, through libdpdk-dev, every PMD (net_virtio, vdpa ifc) and the headers the
  # vdpa example builds against. linux-image: the guest kernel's own modules (vfio-pci, 9p).
  in_root apt-get install -y -q --no-install-recommends "dpdk-dev=$DPDK_VER" "librte-vdpa-ifc25=$DPDK_VER" \
    "dpdk-doc=$DPDK_VER" make gcc libc6-dev pkg-config "linux-image-$KVER=$KPKGVER"
  [ -x "$R/usr/bin/dpdk-testpmd" ] || { echo "dpdk-dev did not bring dpdk-testpmd"; return 1; }
}
step apt-install install_pkgs

build_vdpa_example() {
  # DPDK's examples/vdpa, unmodified, with its own Makefile (pkg-config libdpdk)
  local src=/usr/share/dpdk/examples/vdpa
  [ -f "$R$src/main.c" ] || { echo "dpdk-doc has no $src"; ls "$R/usr/share/dpdk/examples" || true; return 1; }
  rm -rf "$R/build"; cp -r "$R$src" "$R/build"
  in_root make -C /build
  mkdir -p "$R/opt/vdpa-emu/bin"
  cp "$R/build/build/vdpa" "$R/opt/vdpa-emu/bin/dpdk-vdpa"
  rm -rf "$R/build"
}
step build-vdpa-example build_vdpa_example

modules() {
  local k=$R/usr/lib/modules/$KVER m
  [ -f "$k/modules.dep" ] || { echo "no modules.dep for $KVER"; return 1; }
  : > "$TMP/modules/order"
  # in dependency order (modules.dep); irqbypass comes with the main initramfs
  for m in fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p \
           drivers/vfio/vfio drivers/vfio/vfio_iommu_type1 drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci; do
    [ -f "$k/kernel/$m.ko.xz" ] || { echo "module $m missing"; return 1; }
    xz -dc "$k/kernel/$m.ko.xz" > "$TMP/modules/$(basename "$m").ko"
    basename "$m" >> "$TMP/modules/order"
  done
  cat "$TMP/modules/order"
}
step modules modules

slim() {
  in_root apt-get clean
  umount_proc
  rm -rf "$R/usr/share/doc" "$R/usr/share/man" "$R/usr/share/locale" "$R/var/lib/apt/lists/"* "$R/boot/"*
  mkdir -p "$R/mnt/huge" "$R/run" "$R/tmp"
}
step slim slim

echo "$WANT" > "$TMP/STAMP"
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$TMP" "$DEST"
rm -rf "$DEST.old"
note "ready: $DEST ($(du -sh "$DEST" | cut -f1)) in $(elapsed "$T0") s"
