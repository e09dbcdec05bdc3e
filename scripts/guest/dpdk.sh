# scripts/guest/dpdk.sh -- the DPDK roles of an e2e guest (appended after lib.sh; see there).
# The guest runs Debian's own DPDK, unmodified, from the tree scripts/e2e-provision-dpdk.sh built: it
# is shared read-only over 9p (mount tag dpdkroot) and entered with chroot. The harness appends the 9p
# and vfio modules (/dpdk/modules) and, for the live-migration role, our vhost-user frontend
# (/dpdk/vdpa-lm-frontend) to the initramfs.
# Variables set by the harness before this file:
#   ROLE      testpmd: dpdk-testpmd's net_virtio PMD drives the device (bound to vfio-pci)
#             vdpa:    DPDK's ifc vDPA driver (examples/vdpa, devarg vdpa=1) + a vhost-user frontend
#             vhost-vdpa: Linux ifcvf + vhost_vdpa (/dev/vhost-vdpa-0) driven by testpmd's
#                      net_virtio_user (io forwarding, --tx-first) over the device's loopback port
#             csum:    dpdk-testpmd's csum forwarding engine (app/test-pmd/csumonly.c) on the net_virtio PMD,
#                      TCP and UDP checksums offloaded (`csum set tcp hw 0`, `csum set udp hw 0`; IPv4's in
#                      software: the PMD does not offer RTE_ETH_TX_OFFLOAD_IPV4_CKSUM), verbose: one
#                      "tx: flags=" line per frame; results csum_* and the counts of those lines
#   NIC_PCI   VEN:DEV of the function under test;  RUN_SECS: how long traffic runs
#   FWD       (testpmd) txonly | io;  ETH_PEER: destination MAC of txonly frames
#   FRONTEND  (vdpa) virtio-user: testpmd --vdev net_virtio_user (io forwarding, --tx-first)
#             lm: our vhost-user frontend, which checks the driver's hardware (or software) logging
#   VDPA_ARGS (vdpa) extra devargs for the ifc driver, e.g. ",sw-live-migration=1"
#   ROLE=validate: VALIDATE="NAME=BDF ..." -- each function is bound to vfio-pci and checked with
#             `vdpa-emu validate --vfio BDF` (the binary: /dpdk/vdpa-emu, run in the DPDK tree's
#             chroot for its glibc); the JUnit report goes to the console between
#             E2E-JUNIT-BEGIN NAME / E2E-JUNIT-END NAME, one "E2E-JUNIT " line per XML line
# Lines: E2E-RESULT testpmd_rx=N testpmd_tx=N ...; the frontend prints its own E2E-RESULT lines.

C=/mnt/dpdk
in_c() { chroot "$C" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

dpdk_setup() {
  for m in $(cat /dpdk/modules/order); do
    insmod "/dpdk/modules/$m.ko" || fail "insmod $m"
  done
  mkdir -p "$C"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro dpdkroot "$C" || fail "mount the DPDK tree over 9p"
  mount -t proc proc "$C/proc"
  mount -t sysfs sys "$C/sys"
  mount -o bind /dev "$C/dev"
  mount -t tmpfs tmp "$C/tmp"
  mount -t tmpfs -o mode=755 run "$C/run"
  mount -t hugetlbfs -o pagesize=2M huge "$C/mnt/huge" || fail "hugetlbfs"
  # EAL loads every PMD in its plugin directory (Debian builds DPDK with a default -d path): ~450
  # shared objects over 9p under TCG. Mount a directory over it in which only the PMDs we use end in
  # .so (what EAL loads: eal_plugindir_init takes *.so and *.so.ABI); every other library there keeps
  # its soname link (*.so.25), which the binaries link against.
  P=$(ls -d "$C"/usr/lib/x86_64-linux-gnu/dpdk/pmds-* | head -n1)
  mkdir -p "$C/run/pmds-real" "$C/run/pmds"
  mount -o bind "$P" "$C/run/pmds-real" || fail "bind $P"
  for f in "$P"/*.so.*.*; do
    b=$(basename "$f")
    case "$b" in *.so.[0-9]*.[0-9]*) ;; *) continue ;; esac
    ln -s "/run/pmds-real/$b" "$C/run/pmds/${b%.*}"
  done
  for so in librte_bus_pci librte_bus_vdev librte_mempool_ring librte_net_virtio librte_vdpa_ifc librte_net_vhost; do
    real=$(basename "$(ls "$P/$so".so.*.* | head -n1)") || fail "no $so in $P"
    ln -s "/run/pmds-real/$real" "$C/run/pmds/$so.so"
  done
  mount -o bind "$C/run/pmds" "$P" || fail "bind the PMD subset over $P"
  res hugepages="$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)" \
    dpdk="$(in_c dpkg-query -W -f='${Version}' dpdk-dev)"
}

# vfio_bind BDF: the function leaves its kernel driver for vfio-pci (needs the vIOMMU: no noiommu mode)
vfio_bind() {
  [ -e "/sys/bus/pci/devices/$1/iommu_group" ] || fail "$1 has no IOMMU group (is intel-iommu in front of it?)"
  echo vfio-pci > "/sys/bus/pci/devices/$1/driver_override"
  [ -e "/sys/bus/pci/devices/$1/driver" ] && echo "$1" > "/sys/bus/pci/devices/$1/driver/unbind"
  echo "$1" > /sys/bus/pci/drivers_probe
  [ "$(pci_driver "$1")" = vfio-pci ] || fail "$1 did not bind to vfio-pci"
  res vfio_group="$(basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")")"
}

# testpmd_stats FILE PREFIX: the accumulated forward statistics testpmd prints when it stops
testpmd_stats() {
  awk -v p="$2" '/Accumulated forward statistics for all ports/ { acc = 1 }
    acc && /RX-packets:/ { rx = $2 } acc && /TX-packets:/ { tx = $2 }
    END { printf "%s_rx=%s %s_tx=%s\n", p, rx == "" ? "none" : rx, p, tx == "" ? "none" : tx }' "$1"
}

# vhost_vdpa_bind BDF: ifcvf takes the function, `vdpa dev add` creates vdpa0, which is bound to
# vhost_vdpa (not virtio_vdpa): /dev/vhost-vdpa-0
vhost_vdpa_bind() {
  _d=/sys/bus/pci/devices/$1
  [ -e "$_d/driver" ] && echo "$1" > "$_d/driver/unbind"
  echo ifcvf > "$_d/driver_override"
  echo "$1" > /sys/bus/pci/drivers_probe
  [ "$(pci_driver "$1")" = ifcvf ] || fail "ifcvf did not bind $1"
  echo 0 > /sys/bus/vdpa/drivers_autoprobe
  vdpa dev add name vdpa0 mgmtdev "pci/$1" || fail "vdpa dev add on pci/$1"
  echo vdpa0 > /sys/bus/vdpa/drivers/vhost_vdpa/bind || fail "vhost_vdpa did not take vdpa0"
  retry 10 test -c /dev/vhost-vdpa-0 || fail "no /dev/vhost-vdpa-0"
  res vdpa_driver="$(basename "$(readlink /sys/bus/vdpa/devices/vdpa0/driver)")"
}

# testpmd_feed LOG: stdin for a non-interactive testpmd whose output goes to LOG. testpmd without
# -i forwards from "Press enter to exit" until its stdin reaches EOF, then prints the statistics
# and exits (app/test-pmd/testpmd.c main). RUN_SECS count from that line, not from the launch:
# EAL init and port start take 6-19 s of TCG, and a `sleep N | testpmd` that ran out before
# forwarding started left a window of a few milliseconds (one ring's worth of frames posted, none
# completed: TX-packets 256, every later burst dropped). Run testpmd under `stdbuf -oL` so the
# line reaches LOG when it is printed. After 90 s without it, stdin closes anyway.
testpmd_feed() {
  t0=$(now_cs)
  retry 90 grep -q 'Press enter to exit' "$1"
  log "testpmd forwarding after $(( ($(now_cs) - t0) / 100 )) s of init; running it ${RUN_SECS} s" >&2
  sleep "$RUN_SECS"
}

BDF=$(pci_find "$NIC_PCI") || fail "no PCI function $NIC_PCI"
log "role=$ROLE bdf=$BDF"
dpdk_setup
case "$ROLE" in
  vhost-vdpa) vhost_vdpa_bind "$BDF" ;;
  validate) ;; # binds each function of VALIDATE itself
  *) vfio_bind "$BDF" ;;
esac
EAL="-l 0-1 -n 1 --file-prefix=e2e --huge-dir=/mnt/huge -m 256"

case "$ROLE" in
  testpmd)
    echo "E2E-READY traffic"
    testpmd_feed /tmp/testpmd.log \
      | in_c stdbuf -oL dpdk-testpmd $EAL -a "$BDF" -- --forward-mode="$FWD" --eth-peer="0,$ETH_PEER" \
      --txd=256 --rxd=256 --total-num-mbufs=4096 > /tmp/testpmd.log 2>&1
    rc=$?
    sed 's/^/E2E-LOG testpmd: /' /tmp/testpmd.log | tail -n 60
    [ "$rc" = 0 ] || fail "dpdk-testpmd exit $rc"
    res $(testpmd_stats /tmp/testpmd.log testpmd) \
      ring="$(grep -q 'packed' /tmp/testpmd.log && echo packed-mentioned || echo -)"
    ;;
  csum)
    # testpmd runs the command file once its ports are started, then forwards (not interactive).
    # `csum set` and `csum show` need the port stopped (app/test-pmd/cmdline.c cmd_csum_parsed);
    # `csum set ip hw` is asked first to record the PMD's refusal.
    printf '%s\n' 'show port 0 tx_offload capabilities' 'port stop 0' 'csum set ip hw 0' 'csum set ip sw 0' \
      'csum set tcp hw 0' 'csum set udp hw 0' 'csum show 0' 'port start 0' \
      'show port 0 tx_offload configuration' 'set verbose 1' > "$C/tmp/csum.cmds"
    echo "E2E-READY traffic"
    testpmd_feed /tmp/testpmd.log \
      | in_c stdbuf -oL dpdk-testpmd $EAL -a "$BDF" -- --forward-mode=csum --cmdline-file=/tmp/csum.cmds \
      --txd=256 --rxd=256 --total-num-mbufs=4096 > /tmp/testpmd.log 2>&1
    rc=$?
    L=/tmp/testpmd.log
    # the command file's output and the end (statistics); not the per-frame lines
    grep -v '^port [0-9]*/queue\|^  src=\|^  ol_flags\|^-----\|^port=\|^rx: \|^tx: \|^ *$' $L | sed 's/^/E2E-LOG testpmd: /' | tail -n 150
    [ "$rc" = 0 ] || fail "dpdk-testpmd exit $rc"
    capa=$(awk '/Tx Offloading Capabilities of port 0/ { f = 1 } f && /Per Port/ { sub(/.*Per Port *:/, ""); print; exit }' $L)
    conf=$(awk '/Tx Offloading Configuration of port 0/ { f = 1 } f && /^  Port :/ { sub(/.*Port :/, ""); print; exit }' $L)
    res $(testpmd_stats $L testpmd) \
      csum_tx_capa="$(echo $capa | tr ' ' ',')" csum_tx_conf="$(echo $conf | tr ' ' ',')" \
      csum_ip_hw_refused="$(grep -c 'IP checksum offload is not supported by port 0' $L)" \
      csum_ip="$(awk '/^IP checksum offload is/ { v = $NF } END { print v }' $L)" \
      csum_tcp="$(awk '/^TCP checksum offload is/ { v = $NF } END { print v }' $L)" \
      csum_udp="$(awk '/^UDP checksum offload is/ { v = $NF } END { print v }' $L)" \
      csum_tx_tcp_cksum="$(grep -c '^tx: flags=.*RTE_MBUF_F_TX_TCP_CKSUM' $L)" \
      csum_tx_udp_cksum="$(grep -c '^tx: flags=.*RTE_MBUF_F_TX_UDP_CKSUM' $L)" \
      csum_tx_lines="$(grep -c '^tx: flags=' $L)"
    ;;
  vdpa)
    # DPDK's vdpa example probes the function with the ifc driver (devarg vdpa=1) and serves a
    # vhost-user socket per vDPA device (server mode: /tmp/vdpa-s0); stdin must block (see e2e.md)
    ( sleep $((RUN_SECS + 120)) | in_c /opt/vdpa-emu/bin/dpdk-vdpa -l 0 -n 1 --file-prefix=vdpa \
        --huge-dir=/mnt/huge -m 128 --log-level=pmd.vdpa.ifcvf:debug -a "$BDF,vdpa=1${VDPA_ARGS:-}" \
        -- --iface /tmp/vdpa-s > /tmp/vdpa.log 2>&1 ) &
    retry 90 test -S "$C/tmp/vdpa-s0" || { sed 's/^/E2E-LOG vdpa: /' /tmp/vdpa.log; fail "no vhost-user socket from the vdpa example"; }
    log "vdpa example is up"
    case "$FRONTEND" in
      virtio-user)
        echo "E2E-READY traffic"
        testpmd_feed /tmp/fe.log | in_c stdbuf -oL dpdk-testpmd -l 0-1 -n 1 --file-prefix=fe \
          --no-pci --single-file-segments -m 256 \
          --huge-dir=/mnt/huge --vdev "net_virtio_user0,path=/tmp/vdpa-s0" -- --forward-mode=io --tx-first \
          --txd=256 --rxd=256 --total-num-mbufs=2048 > /tmp/fe.log 2>&1
        rc=$?
        sed 's/^/E2E-LOG frontend: /' /tmp/fe.log | tail -n 40
        [ "$rc" = 0 ] || fail "frontend testpmd exit $rc"
        res $(testpmd_stats /tmp/fe.log frontend)
        ;;
      lm)
        cp /dpdk/vdpa-lm-frontend "$C/tmp/" || fail "no frontend binary"
        in_c /tmp/vdpa-lm-frontend --socket /tmp/vdpa-s0 ${LM_ARGS:-} > /tmp/fe.log 2>&1
        rc=$?
        cat /tmp/fe.log
        if [ "$rc" != 0 ]; then
          sleep 1
          sed 's/^/E2E-LOG vdpa: /' /tmp/vdpa.log | grep -v 'read message\|^E2E-LOG vdpa: VHOST_CONFIG: (/tmp/vdpa-s0) \s' | tail -n 80
          fail "vdpa-lm-frontend exit $rc"
        fi
        ;;
      *) fail "unknown FRONTEND $FRONTEND" ;;
    esac
    sleep 1
    sed 's/^/E2E-LOG vdpa: /' /tmp/vdpa.log | tail -n 40
    # ifcvf_dev_config() logs once the driver has started the hardware for the frontend's rings
    grep -q 'ifcvf_dev_config' /tmp/vdpa.log && res vdpa_configured=1 || res vdpa_configured=0
    ;;
  vhost-vdpa)
    # vhost_vdpa_pa_map pins the frontend's memory against RLIMIT_MEMLOCK even for root (8 MiB
    # by default), and vhost_chr_write_iter turns its -ENOMEM into -EFAULT ("Bad address")
    ulimit -l unlimited || fail "ulimit -l"
    ( for _ in $(seq 60); do
        grep -o 'ifcvf[^ ]*' /proc/interrupts > /tmp/ifcvf-irqs.new 2> /dev/null
        [ -s /tmp/ifcvf-irqs.new ] && { tr '\n' ',' < /tmp/ifcvf-irqs.new > /tmp/ifcvf-irqs; break; }
        sleep 0.5
      done ) &
    echo "E2E-READY traffic"
    testpmd_feed /tmp/testpmd.log | timeout -s KILL $((RUN_SECS + 150)) chroot "$C" /usr/bin/env -i \
      PATH=/usr/sbin:/usr/bin:/sbin:/bin stdbuf -oL dpdk-testpmd $EAL --no-pci --single-file-segments \
      --vdev "net_virtio_user0,path=/dev/vhost-vdpa-0" -- --forward-mode=io --tx-first \
      --txd=256 --rxd=256 --total-num-mbufs=2048 > /tmp/testpmd.log 2>&1
    rc=$?
    sed 's/^/E2E-LOG testpmd: /' /tmp/testpmd.log | tail -n 60
    if [ "$rc" != 0 ]; then
      dmesg | grep -i 'vhost\|vdpa\|dmar\|iommu\|ifcvf' | tail -n 30 | sed 's/^/E2E-LOG dmesg: /'
      fail "dpdk-testpmd exit $rc"
    fi
    res $(testpmd_stats /tmp/testpmd.log testpmd)
    # how ifcvf wired its MSI-X vectors (ifcvf_request_irq: per vq, vqs sharing one, or one for
    # everything), from the names it gave them; they are freed at stop, so read the log of them
    res ifcvf_irqs="$(cat /tmp/ifcvf-irqs 2> /dev/null || echo none)"
    ;;
  validate)
    cp /dpdk/vdpa-emu "$C/tmp/" || fail "no vdpa-emu binary"
    # the functions are independent: validate them side by side (most of the time is spent
    # waiting for trapped register accesses, not computing)
    for nb in $VALIDATE; do
      name=${nb%%=*}
      bdf=${nb#*=}
      vfio_bind "$bdf"
      ( t0=$(now_cs)
        in_c env RUST_LOG=sim_harness::validate=info /tmp/vdpa-emu validate --vfio "$bdf" \
          --no-wraparound --format junit > "/tmp/v-$name.xml" 2> "/tmp/v-$name.err"
        echo "$? $(($(now_cs) - t0))" > "/tmp/v-$name.rc" ) &
    done
    wait
    for nb in $VALIDATE; do
      name=${nb%%=*}
      echo "E2E-JUNIT-BEGIN $name"
      sed 's/^/E2E-JUNIT /' "/tmp/v-$name.xml"
      echo "E2E-JUNIT-END $name"
      sed "s/^/E2E-LOG validate $name: /" "/tmp/v-$name.err" | tail -n 40
      read -r rc cs < "/tmp/v-$name.rc"
      res "validate_${name}_exit=$rc" "validate_${name}_cs=$cs"
    done
    ;;
  *) fail "unknown ROLE $ROLE" ;;
esac
res role_done="$ROLE"
