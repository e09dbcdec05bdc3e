# scripts/e2e-guest-initramfs.sh -- the userspace of the e2e guest's initramfs (sourced by scripts/e2e-provision.sh).
#
# Its own part of the cache key (STAMP `initramfs=`, with scripts/guest/init): a change here, in the init or in
# the versions of GUEST_DEBS only repacks DEST/guest/initramfs.cpio.gz from the kernel modules the full build
# kept in DEST/guest/modules/ (seconds), instead of rebuilding QEMU's tree and ifcvf.ko (minutes).
#
# To add a tool: its Debian package (and the packages of the libraries it needs that are not here yet) to
# GUEST_DEBS, its path inside the package to GUEST_BINS; pack_initramfs copies the libraries ld.so lists.

# Debian trixie packages unpacked (dpkg-deb -x) into the initramfs tree's source
#   busybox-static: the shell and every applet; iproute2 (+ libmnl0): `vdpa`; ethtool (libc6, libmnl0)
GUEST_DEBS="busybox-static iproute2 libmnl0 ethtool"
# dynamically linked tools taken from the unpacked packages, installed as /bin/NAME
GUEST_BINS="usr/sbin/vdpa usr/sbin/ethtool"
# busybox applets the init and the tests' guest scripts (scripts/guest/*.sh) use
APPLETS="sh ash mount insmod cat cut tr sed grep awk ls ln mkdir rm basename readlink sleep seq head tail wc
  ip ifconfig ping nc udhcpc md5sum sha256sum dd timeout setsid cttyhack poweroff reboot uname printf test
  expr date kill stat mkfifo"

# pack_initramfs X MODS ROOT INIT OUT
#   X     the GUEST_DEBS unpacked;  MODS  kernel modules (NAME.ko) and their load order (MODS/order)
#   ROOT  a trixie tree whose ld.so and libc the tools run with;  INIT  the /init;  OUT  the .cpio.gz written
pack_initramfs() {
  local X=$1 MODS=$2 ROOT=$3 INIT=$4 OUT=$5
  local W=$OUT.d BB=$X/usr/bin/busybox LDSO=$ROOT/usr/lib64/ld-linux-x86-64.so.2 a b m libs have
  [ -x "$BB" ] || { echo "busybox-static did not unpack"; return 1; }
  [ -s "$MODS/order" ] || { echo "no module order in $MODS"; return 1; }
  have=$("$BB" --list)
  for a in $APPLETS; do grep -qx "$a" <<< "$have" || { echo "busybox-static lacks applet '$a'"; return 1; }; done
  "$BB" nc --help 2>&1 | grep -q -- '-l' || { echo "busybox nc has no listen mode"; return 1; }
  rm -rf "$W"; mkdir -p "$W"/{bin,sbin,proc,sys,dev,tmp,run,etc,lib/modules,lib64,lib/x86_64-linux-gnu}
  cp "$BB" "$W/bin/busybox"
  for a in $have; do [ -e "$W/bin/$a" ] || ln -s busybox "$W/bin/$a"; done
  for m in $(cat "$MODS/order"); do cp "$MODS/$m.ko" "$W/lib/modules/"; done
  cp "$MODS/order" "$W/lib/modules/order"
  cp -L "$LDSO" "$W/lib64/"
  for b in $GUEST_BINS; do
    [ -x "$X/$b" ] || { echo "$b is not in GUEST_DEBS ($GUEST_DEBS)"; return 1; }
    cp "$X/$b" "$W/bin/$(basename "$b")"
    # its libraries, from the unpacked packages first, then the tree's libc
    libs=$("$LDSO" --library-path "$X/usr/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu" --list "$X/$b" \
      | awk '$2=="=>" && $3 ~ /^\// {print $3}')
    [ -n "$libs" ] || { echo "could not list the libraries of $b"; return 1; }
    "$LDSO" --library-path "$X/usr/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu" --list "$X/$b" \
      | grep -q 'not found' && { echo "$b: a library is missing from GUEST_DEBS"; return 1; }
    for a in $libs; do cp -L "$a" "$W/lib/x86_64-linux-gnu/"; done
    echo "$b libraries: $(echo $libs)"
  done
  echo "root:x:0:0:root:/:/bin/sh" > "$W/etc/passwd"
  echo "root:x:0:" > "$W/etc/group"
  echo "127.0.0.1 localhost" > "$W/etc/hosts"
  cp "$INIT" "$W/init"; chmod 755 "$W/init"
  (cd "$W" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2> /dev/null | gzip -9n) > "$OUT"
  rm -rf "$W"
  ls -l "$OUT"
}
