#!/usr/bin/env bash
# scripts/e2e-provision.sh [DEST] -- QEMU with vfio-user-pci and a Linux guest for the e2e tests.
#
# Run as root on Debian 12 (bookworm) x86_64 with the Debian archive reachable through apt.
# DEST defaults to ${VDPA_E2E_DIR:-<repo>/.cache/e2e}. Builds, from scratch:
#   DEST/root/                  trixie minbase tree holding qemu-system-x86 from trixie-backports (>= 10.1 has
#                               the vfio-user client); nothing else is installed on the host but debootstrap
#   DEST/qemu                   runs root/'s qemu-system-x86_64 from the host through root/'s own ld.so (no chroot)
#   DEST/boot.sh                boots the guest with TCG and shared memfd RAM (what vfio-user needs)
#   DEST/guest/vmlinuz          Debian trixie kernel (bzImage); guest/vmlinux: the same, uncompressed (PVH ELF)
#   DEST/guest/ifcvf.ko         drivers/vdpa/ifcvf built out of tree (Debian has CONFIG_IFCVF unset)
#   DEST/guest/modules/         the guest kernel modules the initramfs loads (uncompressed) + ifcvf.ko, and their order
#   DEST/guest/initramfs.cpio.gz  busybox-static, virtio_net(+failover), vdpa, virtio_vdpa, vhost_vdpa(+deps),
#                               ifcvf.ko, iproute2's `vdpa`, ethtool; /init = scripts/guest/init
#                               (userspace: scripts/e2e-guest-initramfs.sh)
#   DEST/STAMP                  the cache key, two parts: base = this script's hash, QEMU and kernel versions;
#                               initramfs = the hash of scripts/e2e-guest-initramfs.sh and the init, and the versions
#                               of the Debian packages the initramfs unpacks
# The cache is reused when STAMP matches what the archive offers now. When only the initramfs part differs, only
# the initramfs is repacked (in DEST.repack, from DEST/guest/modules, smoke-booted, then renamed into DEST/guest);
# otherwise everything is rebuilt in DEST.tmp and renamed over DEST at the end (an interrupted run leaves DEST
# untouched).
#
# Env: VDPA_E2E_OFFLINE=1   do not ask the archive; reuse DEST if its script hash matches (else fail)
#      VDPA_E2E_FORCE=1     rebuild even if STAMP matches
#      MIRROR=URL           Debian archive (default: the first URIs: of this host's apt sources)
#      KEEP_BUILD_TOOLS=1   keep gcc and kernel headers in root/ (+~410 MB)
#      SMOKE=0              skip the smoke boot
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

SELF=$(realpath "${BASH_SOURCE[0]}")
SCRIPTS=$(dirname "$SELF")
REPO=$(dirname "$SCRIPTS")
DEST=$(realpath -m "${1:-${VDPA_E2E_DIR:-$REPO/.cache/e2e}}")
TMP=$DEST.tmp
APTD=$DEST.apt # private apt state on the host, used only to learn the versions the archive offers
T0=$EPOCHREALTIME

die() { echo "e2e-provision: ERROR: $*" >&2; exit 1; }
note() { echo "e2e-provision: $*" >&2; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
CUR_STEP=startup
CUR_LOG=
on_exit() {
  local rc=$?
  if [ -d "$TMP/root/proc" ] && mountpoint -q "$TMP/root/proc"; then umount "$TMP/root/proc" || umount -l "$TMP/root/proc" || true; fi
  if [ "$rc" != 0 ]; then
    echo "e2e-provision: FAILED (exit $rc) in step '$CUR_STEP' after $(elapsed "$T0") s" >&2
    if [ -n "$CUR_LOG" ] && [ -s "$CUR_LOG" ]; then
      echo "---- last lines of $CUR_LOG ----" >&2; tail -n 40 "$CUR_LOG" >&2; echo "----" >&2
    fi
    [ -d "$TMP" ] && echo "e2e-provision: DEST ($DEST) was left as it was; the partial build is in $TMP (the next run resumes it, or removes it if the inputs changed)" >&2
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step NAME FUNC: runs FUNC with its output in TMP/logs/NAME.log, times it
# A step that completed in an earlier, interrupted run of the same inputs (TMP/WANT) is skipped; every step
# starts by clearing what it produces, so a step cut off half-way simply runs again.
step() {
  local name=$1 s=$EPOCHREALTIME; shift
  if grep -qx "$name" "$TMP/steps.done" 2> /dev/null; then
    printf '[time] %-24s   done (earlier run)\n' "$name" >&2; return 0
  fi
  CUR_STEP=$name; CUR_LOG=$TMP/logs/$name.log
  "$@" > "$CUR_LOG" 2>&1
  printf '[time] %-24s %6.1f s\n' "$name" "$(elapsed "$s")" | tee -a "$TMP/timings.txt" >&2
  echo "$name" >> "$TMP/steps.done"
  CUR_LOG=
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"
[ "$(uname -m)" = x86_64 ] || die "x86_64 only"
MIRROR=${MIRROR:-$( (awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null;
                     awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null) | head -n1 || true)}
[ -n "$MIRROR" ] || die "no Debian archive found in /etc/apt; set MIRROR=URL"

mkdir -p "$(dirname "$DEST")"
exec 9> "$DEST.lock"
flock -w 3600 9 || die "another e2e-provision holds $DEST.lock"

# ---- cache key --------------------------------------------------------------------------------------
# shellcheck source=e2e-guest-initramfs.sh
. "$SCRIPTS/e2e-guest-initramfs.sh"
SCRIPT_HASH=$(sha256sum < "$SELF" | cut -c1-16)
INITRAMFS_HASH=$(cat "$SCRIPTS/e2e-guest-initramfs.sh" "$SCRIPTS/guest/init" | sha256sum | cut -c1-16)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
APTO=(-o "Dir::Etc::SourceList=$APTD/sources.list" -o "Dir::Etc::SourceParts=$APTD/none"
      -o "Dir::Etc::Preferences=$APTD/none" -o "Dir::Etc::PreferencesParts=$APTD/none"
      -o "Dir::State::Lists=$APTD/lists" -o "Dir::State::status=$APTD/status" -o "Dir::Cache=$APTD/cache"
      -o "APT::Architecture=amd64" -o "APT::Architectures::=amd64" -o "Acquire::Languages=none"
      -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
resolve_versions() { # sets QEMU_VER KVER KPKGVER GUEST_DEB_VERS from the archive's trixie + trixie-backports indices
  mkdir -p "$APTD/lists/partial" "$APTD/cache/archives/partial" "$APTD/none"
  : > "$APTD/status"
  printf 'deb [arch=amd64 signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" trixie "$KEYRING" "$MIRROR" trixie-backports \
    > "$APTD/sources.list"
  apt-get "${APTO[@]}" -qq update > "$APTD/update.log" 2>&1 || return 1
  QEMU_VER=$(apt-cache "${APTO[@]}" -o APT::Default-Release=trixie-backports policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  KVER=$(apt-cache "${APTO[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')
  KPKGVER=$(apt-cache "${APTO[@]}" policy "linux-image-$KVER" | awk '/Candidate:/{print $2}')
  # the initramfs' packages, pinned (pkg=version) so that the download takes what the stamp names
  local p v
  GUEST_DEB_VERS=
  for p in $GUEST_DEBS; do
    v=$(apt-cache "${APTO[@]}" policy "$p" | awk '/Candidate:/{print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || { echo "no candidate for $p" >> "$APTD/update.log"; return 1; }
    GUEST_DEB_VERS="$GUEST_DEB_VERS $p=$v"
  done
  GUEST_DEB_VERS=${GUEST_DEB_VERS# }
  [ -n "$QEMU_VER" ] && [ "$QEMU_VER" != "(none)" ] && [ -n "$KVER" ] && [ -n "$KPKGVER" ]
}
stamp_text() { # the base part (QEMU's tree, kernel, ifcvf.ko), then the initramfs part
  printf 'script=%s\nqemu-system-x86=%s\nlinux-image=%s %s\n' "$SCRIPT_HASH" "$QEMU_VER" "$KVER" "$KPKGVER"
  printf 'initramfs=%s\nguest-debs=%s\n' "$INITRAMFS_HASH" "$GUEST_DEB_VERS"
}
stamp_base() { grep -E '^(script|qemu-system-x86|linux-image)='; }
cache_usable() { # the files the tests use are all there
  [ -f "$DEST/STAMP" ] && [ -x "$DEST/qemu" ] && [ -f "$DEST/guest/vmlinuz" ] && [ -f "$DEST/guest/vmlinux" ] \
    && [ -f "$DEST/guest/initramfs.cpio.gz" ] && [ -f "$DEST/guest/ifcvf.ko" ] && [ -s "$DEST/guest/modules/order" ] \
    && "$DEST/qemu" --version > /dev/null 2>&1
}
# the GUEST_DEBS (versions of GUEST_DEB_VERS) unpacked into $2, their .debs downloaded into $1 with the private apt state
fetch_guest_debs() {
  local d
  rm -rf "$1" "$2"; mkdir -p "$1" "$2"
  # shellcheck disable=SC2086 # GUEST_DEB_VERS is a list
  (cd "$1" && apt-get "${APTO[@]}" download -q $GUEST_DEB_VERS)
  for d in "$1"/*.deb; do dpkg-deb -x "$d" "$2"; done
  ls -l "$1"
}

if [ "${VDPA_E2E_OFFLINE:-0}" = 1 ]; then
  cache_usable && grep -qx "script=$SCRIPT_HASH" "$DEST/STAMP" && grep -qx "initramfs=$INITRAMFS_HASH" "$DEST/STAMP" \
    || die "VDPA_E2E_OFFLINE=1 but $DEST is missing or was built by another version of this script"
  note "offline: reusing $DEST ($(tr '\n' ' ' < "$DEST/STAMP"))"
  exit 0
fi
s=$EPOCHREALTIME
if ! resolve_versions; then
  tail -n 20 "$APTD/update.log" >&2 || true
  if cache_usable && grep -qx "script=$SCRIPT_HASH" "$DEST/STAMP" && grep -qx "initramfs=$INITRAMFS_HASH" "$DEST/STAMP"; then
    note "WARNING: cannot read the archive's indices ($MIRROR); reusing $DEST without checking versions"
    exit 0
  fi
  die "cannot learn package versions from $MIRROR (trixie, trixie-backports); see $APTD/update.log"
fi
WANT=$(stamp_text)
note "versions resolved in $(elapsed "$s") s: $(echo "$WANT" | tr '\n' ' ')"
if [ "${VDPA_E2E_FORCE:-0}" != 1 ] && cache_usable && [ "$(cat "$DEST/STAMP")" = "$WANT" ]; then
  note "cache hit: $DEST is up to date ($(du -sh "$DEST" | cut -f1)); nothing to do"
  if [ -e "$TMP" ]; then # a build interrupted before DEST was last refreshed: nothing to resume
    if [ -d "$TMP/root/proc" ] && mountpoint -q "$TMP/root/proc"; then umount -l "$TMP/root/proc"; fi
    rm -rf "$TMP"
  fi
  exit 0
fi
[ -f "$DEST/STAMP" ] && note "cache stale: have $(tr '\n' ' ' < "$DEST/STAMP")"

# smoke INITRD BOOT_SH LOG: a real boot: every module (ifcvf.ko included) loads, then init powers off
smoke() {
  INITRD=$1 SMP=1 BOOT_TIMEOUT=120 "$2" < /dev/null > "$3" 2>&1 || true
  cat "$3"
  grep -q 'GUEST-MARKER: done' "$3" || { echo "smoke boot did not reach the end of init"; return 1; }
  grep -q 'E2E-MODULE name=ifcvf ok=1' "$3" || { echo "ifcvf.ko did not load"; return 1; }
  ! grep -q 'ok=0' "$3" || { echo "a module failed to load"; return 1; }
}

# ---- repack: only the initramfs part of the key changed -----------------------------------------------
if [ "${VDPA_E2E_FORCE:-0}" != 1 ] && cache_usable && [ "$(stamp_base < "$DEST/STAMP")" = "$(echo "$WANT" | stamp_base)" ]; then
  TMP=$DEST.repack # step() logs and times into TMP
  note "the base is up to date: repacking only the initramfs in $TMP"
  rm -rf "$TMP"; mkdir -p "$TMP/logs"; touch "$TMP/timings.txt"
  step download-guest-debs fetch_guest_debs "$TMP/debs" "$TMP/x"
  step initramfs pack_initramfs "$TMP/x" "$DEST/guest/modules" "$DEST/root" "$SCRIPTS/guest/init" "$TMP/initramfs.cpio.gz"
  [ "${SMOKE:-1}" = 1 ] && step smoke-boot smoke "$TMP/initramfs.cpio.gz" "$DEST/boot.sh" "$TMP/smoke.log"
  CUR_STEP=install
  mv "$TMP/initramfs.cpio.gz" "$DEST/guest/initramfs.cpio.gz"
  echo "$WANT" > "$DEST/STAMP.new" && mv "$DEST/STAMP.new" "$DEST/STAMP"
  sed -i '/^guest-debs /d' "$DEST/versions.txt"; echo "guest-debs $GUEST_DEB_VERS" >> "$DEST/versions.txt"
  cp "$TMP/timings.txt" "$DEST/timings-repack.txt"
  rm -rf "$TMP"
  printf '[time] %-24s %6.1f s\n' TOTAL "$(elapsed "$T0")" | tee -a "$DEST/timings-repack.txt" >&2
  note "ready: $DEST (initramfs repacked)"
  exit 0
fi
note "building into $TMP (then renamed to $DEST)"

# ---- build ------------------------------------------------------------------------------------------
if [ -e "$TMP" ]; then # leftover of an interrupted run: resume it if it was building the same inputs
  if [ -d "$TMP/root/proc" ] && mountpoint -q "$TMP/root/proc"; then umount -l "$TMP/root/proc"; fi
  if [ "$(cat "$TMP/WANT" 2> /dev/null)" = "$WANT" ] && [ "${VDPA_E2E_FORCE:-0}" != 1 ]; then
    note "resuming the interrupted build in $TMP (done: $(tr '\n' ' ' < "$TMP/steps.done" 2> /dev/null))"
  else
    rm -rf "$TMP"
  fi
fi
mkdir -p "$TMP/guest" "$TMP/logs"
echo "$WANT" > "$TMP/WANT"
touch "$TMP/timings.txt"
R=$TMP/root
X=$TMP/x
KSER=$(echo "$KVER" | cut -d. -f1-2)
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C INITRD=No "$@"; }

host_tools() {
  local need=()
  command -v debootstrap > /dev/null || need+=(debootstrap)
  command -v flock > /dev/null || need+=(util-linux)
  [ ${#need[@]} = 0 ] && { echo "host tools present"; return 0; }
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
}
step host-tools host_tools

bootstrap() {
  if [ -d "$R" ]; then rm -rf "$R"; fi
  debootstrap --variant=minbase --include=zstd,xz-utils trixie "$R" "$MIRROR"
  # reuse the indices downloaded by resolve_versions: the tree's `apt-get update` then only checks InRelease
  echo "deb $MIRROR trixie-backports main" > "$R/etc/apt/sources.list.d/backports.list"
  cp "$APTD"/lists/*_dists_trixie* "$R/var/lib/apt/lists/" 2> /dev/null || true
}
step debootstrap bootstrap

install_pkgs() {
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  in_root dpkg --configure -a # finishes what an interrupted earlier run left half-installed
  in_root apt-get update -qq
  # -t trixie-backports for the headers too: qemu pulls libelf1t64 from backports and pahole's libdw must match
  in_root apt-get install -y -q --no-install-recommends -t trixie-backports \
    "qemu-system-x86=$QEMU_VER" make "linux-headers-$KVER=$KPKGVER"
  [ -f "$R/boot/vmlinuz-$KVER" ] || { echo "linux-image-$KVER did not come with the headers"; return 1; }
}
step apt-install install_pkgs

fetch_debs() {
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  rm -rf "$R/tmp/debs"; mkdir -p "$R/tmp/debs"; chown _apt "$R/tmp/debs" 2> /dev/null || chmod 777 "$R/tmp/debs"
  in_root sh -c "cd /tmp/debs && apt-get download -q linux-source-$KSER=$KPKGVER"
  ls -l "$R"/tmp/debs
  fetch_guest_debs "$TMP/debs" "$X"
}
step download-debs fetch_debs

build_ifcvf() {
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  rm -rf "$R/build"; mkdir -p "$R/build"
  dpkg-deb --fsys-tarfile "$R"/tmp/debs/linux-source-"$KSER"_*.deb | tar -xO "./usr/src/linux-source-$KSER.tar.xz" \
    | xz -T0 -dc | tar -x -C "$R/build" --strip-components=3 "linux-source-$KSER/drivers/vdpa/ifcvf"
  in_root make -C "/usr/src/linux-headers-$KVER" M=/build/ifcvf CONFIG_IFCVF=m modules
  strip --strip-debug -o "$TMP/guest/ifcvf.ko" "$R/build/ifcvf/ifcvf.ko"
  # the module must carry the guest kernel's vermagic or insmod refuses it
  grep -aqF "vermagic=$KVER " "$TMP/guest/ifcvf.ko" || { echo "ifcvf.ko vermagic is not $KVER"; return 1; }
}
step build-ifcvf build_ifcvf

kernel() {
  cp "$R/boot/vmlinuz-$KVER" "$TMP/guest/vmlinuz"
  cp "$R/boot/config-$KVER" "$TMP/guest/config"
  echo "$KVER" > "$TMP/guest/KVER"
  # uncompressed ELF: has the Xen PVH entry note, so QEMU boots it directly (skips the decompressor under TCG)
  local off
  off=$(grep -abo "$(printf '\050\265\057\375')" "$TMP/guest/vmlinuz" | head -n1 | cut -d: -f1)
  [ -n "$off" ] || { echo "no zstd payload in vmlinuz"; return 1; }
  tail -c +$((off + 1)) "$TMP/guest/vmlinuz" | in_root zstd -dcq > "$TMP/guest/vmlinux" 2> /dev/null || true
  [ "$(head -c4 "$TMP/guest/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] || { echo "vmlinux is not an ELF"; return 1; }
  grep -q '^CONFIG_VIRTIO_PCI=y' "$TMP/guest/config" || { echo "guest kernel lacks built-in virtio_pci"; return 1; }
}
step kernel kernel

modules() { # the modules the initramfs loads (from the installed kernel image in root/), in load order, and ifcvf.ko
  local MODS=$R/usr/lib/modules/$KVER/kernel M=$TMP/guest/modules m
  rm -rf "$M"; mkdir -p "$M"
  : > "$M/order"
  for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net \
           virt/lib/irqbypass drivers/vhost/vhost_iotlb drivers/vhost/vhost \
           drivers/vdpa/vdpa drivers/virtio/virtio_vdpa drivers/vhost/vhost_vdpa; do
    [ -f "$MODS/$m.ko.xz" ] || { echo "module $m.ko.xz missing from linux-image-$KVER"; return 1; }
    xz -dc "$MODS/$m.ko.xz" > "$M/$(basename $m).ko"
    basename $m >> "$M/order"
  done
  cp "$TMP/guest/ifcvf.ko" "$M/"; echo ifcvf >> "$M/order"
  ls -l "$M"
}
step modules modules
step initramfs pack_initramfs "$X" "$TMP/guest/modules" "$R" "$SCRIPTS/guest/init" "$TMP/guest/initramfs.cpio.gz"

wrappers() {
  # relocatable: they find root/ next to themselves (the tree is built in DEST.tmp and renamed)
  cat > "$TMP/qemu" << 'EOF'
#!/bin/sh
# trixie-backports QEMU run from the host through the tree's own dynamic loader (host /dev, /tmp, sockets as usual)
D=$(cd "$(dirname "$0")" && pwd -P)
R=$D/root
export QEMU_MODULE_DIR=$R/usr/lib/x86_64-linux-gnu/qemu
exec "$R/usr/lib64/ld-linux-x86-64.so.2" --library-path "$R/usr/lib/x86_64-linux-gnu" \
  "$R/usr/bin/qemu-system-x86_64" -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" "$@"
EOF
  cat > "$TMP/boot.sh" << 'EOF'
#!/bin/sh
# boot.sh [extra qemu args]   env: MEM=512 KERNEL=guest/vmlinux INITRD=guest/initramfs.cpio.gz APPEND=... BOOT_TIMEOUT=180
# e.g. APPEND=guest.shell ./boot.sh   (a shell on the console after init; Ctrl-A X quits)
D=$(cd "$(dirname "$0")" && pwd -P)
exec timeout "${BOOT_TIMEOUT:-180}" "$D/qemu" -accel tcg -m "${MEM:-512}" -smp "${SMP:-1}" -nographic -no-reboot -nodefaults \
  -serial stdio -machine q35,memory-backend=mem -object "memory-backend-memfd,id=mem,size=${MEM:-512}M,share=on" \
  -kernel "${KERNEL:-$D/guest/vmlinux}" -initrd "${INITRD:-$D/guest/initramfs.cpio.gz}" \
  -append "console=ttyS0 panic=-1 quiet ${APPEND:-}" "$@"
EOF
  chmod +x "$TMP/qemu" "$TMP/boot.sh"
  "$TMP/qemu" --version
  "$TMP/qemu" -device help | grep -q '"vfio-user-pci"' || { echo "this QEMU has no vfio-user-pci"; return 1; }
}
step wrappers wrappers

slim() {
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  rm -rf "$R/tmp/debs" "$R/build" "$X" "$TMP/debs"
  if [ "${KEEP_BUILD_TOOLS:-0}" != 1 ]; then
    in_root apt-get purge -y -q --auto-remove "linux-headers-$KVER" "linux-image-$KVER" make initramfs-tools || true
  fi
  in_root apt-get clean
  if mountpoint -q "$R/proc"; then umount "$R/proc"; fi
  rm -rf "$R/usr/share/doc" "$R/usr/share/man" "$R/usr/share/locale" "$R/var/lib/apt/lists/"* "$R/var/cache/apt/"*.bin
  # what the wrapper needs must have survived the purge
  "$TMP/qemu" --version
}
step slim slim

[ "${SMOKE:-1}" = 1 ] && step smoke-boot smoke "$TMP/guest/initramfs.cpio.gz" "$TMP/boot.sh" "$TMP/smoke.log"

{ "$TMP/qemu" --version | head -n1; echo "guest kernel $KVER ($KPKGVER)"; echo "guest-debs $GUEST_DEB_VERS"; } > "$TMP/versions.txt"
echo "$WANT" > "$TMP/STAMP"
rm -f "$TMP/WANT" "$TMP/steps.done"
CUR_STEP=install
if [ -e "$DEST" ]; then rm -rf "$DEST.old"; mv "$DEST" "$DEST.old"; fi
mv "$TMP" "$DEST"
rm -rf "$DEST.old"
printf '[time] %-24s %6.1f s\n' TOTAL "$(elapsed "$T0")" | tee -a "$DEST/timings.txt" >&2
for d in "$DEST/root" "$DEST/guest" "$DEST"; do du -sh "$d"; done | tee -a "$DEST/timings.txt" >&2
cat "$DEST/versions.txt" >&2
note "ready: $DEST"
