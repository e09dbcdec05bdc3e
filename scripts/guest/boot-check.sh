# scripts/guest/boot-check.sh -- what the e2e tests rely on inside the guest (appended after lib.sh).

for a in sh ping nc udhcpc md5sum sha256sum dd ip ifconfig awk mkfifo timeout stat; do
  busybox --list | grep -qx "$a" || fail "busybox applet $a missing"
done
res applets=ok
vdpa mgmtdev show > /tmp/mgmt 2>&1 || fail "vdpa mgmtdev show: $(cat /tmp/mgmt)"
res vdpa_tool=ok
# ethtool (Debian's, scripts/e2e-guest-initramfs.sh): runs with its libraries and reads features over netlink
_v=$(ethtool --version 2>&1) || fail "ethtool --version: $_v"
_k=$(ethtool -k lo 2>&1) || fail "ethtool -k lo: $_k"
echo "$_k" | grep -q '^tx-checksumming: ' || fail "ethtool -k lo: no tx-checksumming line: $_k"
res ethtool_version="$(echo "$_v" | awk '{ print $NF; exit }')"
[ -d /sys/bus/pci/drivers/ifcvf ] && res ifcvf_driver=registered
[ -d /sys/bus/vdpa ] && res vdpa_bus=present
[ -d /sys/bus/pci/drivers/virtio-pci ] && res virtio_pci=builtin
res mem_kb="$(awk '/MemTotal/ { print $2 }' /proc/meminfo)" cpus="$(grep -c ^processor /proc/cpuinfo)"
# the transfer helpers over loopback: nc's half-close and the md5 bookkeeping
recv_blob 7000 &
make_blob 4
send_blob 127.0.0.1 7000
wait
res boot_check=done
