# scripts/guest/lib.sh -- shell helpers for the e2e guest scripts (busybox ash).
# The harness (sim-harness/tests/e2e_qemu.rs) builds /extra.sh as: variable assignments + this file + a
# role script, and appends it to the initramfs as a second cpio archive; /init runs it.
# Lines for the harness (it parses them from the serial log):
#   E2E-RESULT key=value ...   results
#   E2E-READY what ...         the guest waits for the host to do something (e.g. connect)
#   E2E-FAIL reason            a check failed (the script then exits 1)
#   E2E-LOG text               progress, for humans

res() { echo "E2E-RESULT $*"; }
log() { echo "E2E-LOG [$(cut -d' ' -f1 /proc/uptime)] $*"; }
fail() {
  echo "E2E-FAIL $*"
  exit 1
}

# centiseconds since boot
now_cs() { awk '{ printf "%d\n", $1 * 100 }' /proc/uptime; }
# mbps BYTES CENTISECONDS -> MB/s (10^6 bytes) with one decimal
mbps() { awk -v b="$1" -v c="$2" 'BEGIN { if (c < 1) c = 1; printf "%.1f\n", b / (c / 100) / 1000000 }'; }

# retry SECONDS CMD...: run CMD every 0.2 s until it succeeds; 1 when SECONDS pass
retry() {
  _deadline=$(($(now_cs) + $1 * 100))
  shift
  while ! "$@" > /dev/null 2>&1; do
    [ "$(now_cs)" -ge "$_deadline" ] && return 1
    sleep 0.2
  done
  return 0
}

# the PCI function's driver name, "-" when none
pci_driver() {
  if [ -e "/sys/bus/pci/devices/$1/driver" ]; then basename "$(readlink "/sys/bus/pci/devices/$1/driver")"; else echo -; fi
}

# pci_find VEN:DEV [SVEN:SDEV]: the first matching BDF
pci_find() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(sed 's/^0x//' "$d/vendor"):$(sed 's/^0x//' "$d/device")" = "$1" ] || continue
    [ -z "${2:-}" ] || [ "$(sed 's/^0x//' "$d/subsystem_vendor"):$(sed 's/^0x//' "$d/subsystem_device")" = "$2" ] || continue
    basename "$d"
    return 0
  done
  return 1
}

# nic_by_mac MAC: the netdev with that MAC
nic_by_mac() {
  for n in /sys/class/net/*; do
    [ "$(cat "$n/address")" = "$1" ] && basename "$n" && return 0
  done
  return 1
}

list_nics() {
  for n in /sys/class/net/*; do
    echo "E2E-LOG nic $(basename "$n") mac=$(cat "$n/address") operstate=$(cat "$n/operstate") dev=$(readlink "$n/device")"
  done
}

# nic_pci_bdf IF: the PCI function under the netdev (virtio_pci: IF -> virtioN -> BDF; vdpa: -> vdpaN -> BDF)
nic_pci_bdf() {
  _p=$(readlink -f "/sys/class/net/$1/device")
  while [ "$_p" != / ] && [ -n "$_p" ]; do
    case "$(basename "$_p")" in
      [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7])
        basename "$_p"
        return 0
        ;;
    esac
    _p=$(dirname "$_p")
  done
  return 1
}

# virtio_diag: the virtio devices, their drivers, status bytes and features; the end of dmesg
virtio_diag() {
  for v in /sys/bus/virtio/devices/*; do
    [ -e "$v" ] || continue
    _drv=-
    [ -e "$v/driver" ] && _drv=$(basename "$(readlink "$v/driver")")
    log "virtio $(basename "$v") parent=$(basename "$(dirname "$(readlink -f "$v")")") device=$(cat "$v/device") driver=$_drv" \
      "status=$(cat "$v/status" 2> /dev/null) features=$(cat "$v/features" 2> /dev/null)"
  done
  dmesg | tail -n 25 | sed 's/^/E2E-LOG dmesg: /'
}

# bind_ifcvf BDF: move the function from virtio-pci to the Linux ifcvf driver and create vdpa0 on it;
# prints the netdev virtio_vdpa + virtio_net create
bind_ifcvf() {
  _bdf=$1
  _d=/sys/bus/pci/devices/$_bdf
  [ -e "$_d/driver" ] && echo "$_bdf" > "$_d/driver/unbind"
  echo ifcvf > "$_d/driver_override" || fail "driver_override on $_bdf"
  echo "$_bdf" > /sys/bus/pci/drivers_probe
  [ "$(pci_driver "$_bdf")" = ifcvf ] || fail "ifcvf did not bind $_bdf (driver: $(pci_driver "$_bdf")); dmesg: $(dmesg | grep -i ifcvf | tail -n 5 | tr '\n' '|')"
  res ifcvf_bound=1 bdf="$_bdf"
  vdpa mgmtdev show | sed 's/^/E2E-LOG vdpa mgmtdev: /'
  vdpa dev add name vdpa0 mgmtdev "pci/$_bdf" || fail "vdpa dev add on pci/$_bdf; dmesg: $(dmesg | tail -n 5 | tr '\n' '|')"
  vdpa dev show vdpa0 | sed 's/^/E2E-LOG vdpa dev: /'
  # virtio_vdpa parents the virtio device on the vDPA device's DMA device: the PCI function itself
  if ! retry 30 sh -c "ls $_d/virtio*/net/"; then
    virtio_diag
    fail "no netdev on vdpa0 after 30 s (vdpa driver: $(basename "$(readlink /sys/bus/vdpa/devices/vdpa0/driver)" 2> /dev/null))"
  fi
  _vd=$(basename "$(readlink /sys/bus/vdpa/devices/vdpa0/driver)")
  res vdpa_dev=vdpa0 vdpa_driver="$_vd"
}

# nic_up IF ADDR/PREFIX: address, link up, wait for carrier
nic_up() {
  ip addr add "$2" dev "$1" || fail "ip addr add $2 dev $1"
  ip link set "$1" up || fail "ip link set $1 up"
  retry 10 sh -c "[ \"\$(cat /sys/class/net/$1/carrier)\" = 1 ]" || fail "no carrier on $1 after 10 s"
  res link="$1" carrier=1 operstate="$(cat "/sys/class/net/$1/operstate")"
}

# ethtool_k IF TAG: `ethtool -k IF` logged (but the "off [fixed]" lines); the checksum and segmentation
# features as results TAG_FEATURE=on|off (FEATURE with - as _, e.g. on_tx_tcp_segmentation=on; "[fixed]" dropped)
ethtool_k() {
  _k=$(ethtool -k "$1" 2>&1) || fail "ethtool -k $1: $_k"
  echo "$_k" | grep -v 'off \[fixed\]' | sed "s/^/E2E-LOG ethtool -k $1 ($2): /"
  res $(echo "$_k" | awk -v t="$2" -F': ' '{ sub(/^[ \t]+/, "", $1) }
    $1 ~ /^(rx-checksumming|tx-checksumming|tx-checksum-ip-generic|scatter-gather|tcp-segmentation-offload|tx-tcp-segmentation|tx-tcp6-segmentation|tx-tcp-ecn-segmentation|generic-segmentation-offload)$/ {
      f = $1; gsub(/-/, "_", f); split($2, v, " "); printf "%s_%s=%s ", t, f, v[1] }')
}

# ping_test PEER COUNT: wait until PEER answers, then COUNT pings, 0.05 s apart
ping_test() {
  retry "${PEER_WAIT:-60}" ping -c 1 -W 1 "$1" || fail "peer $1 never answered a ping"
  _out=$(ping -c "$2" -i 0.05 -W 5 "$1" 2>&1)
  _sum=$(echo "$_out" | grep 'packets transmitted')
  _tx=$(echo "$_sum" | awk '{ print $1 }')
  _rx=$(echo "$_sum" | awk '{ print $4 }')
  _rtt=$(echo "$_out" | awk -F'= ' '/round-trip/ { print $2 }' | cut -d' ' -f1)
  res ping_tx="${_tx:-0}" ping_rx="${_rx:-0}" ping_rtt_min_avg_max="${_rtt:-none}"
  [ "${_tx:-0}" = "$2" ] && [ "${_rx:-0}" = "$2" ] || fail "ping: $_sum"
}

# make_blob MIB: /tmp/blob of random bytes; prints its md5 as a result
make_blob() {
  _t0=$(now_cs)
  dd if=/dev/urandom of=/tmp/blob bs=1M count="$1" 2> /dev/null || fail "dd /tmp/blob"
  _md5=$(md5sum /tmp/blob | cut -d' ' -f1)
  res blob_md5="$_md5" blob_bytes="$(stat -c %s /tmp/blob)" blob_cs=$(($(now_cs) - _t0))
}

# nc_send PEER PORT PAUSE: nc /tmp/blob to PEER:PORT, retrying every PAUSE seconds while the
# connection is refused (for SEND_WAIT seconds, default 60); an attempt that ran over 3 s and
# failed is not retried. Sets _t0 (when the successful attempt began) and _n (attempts); on
# failure returns 1 with the reason in _why
nc_send() {
  _deadline=$(($(now_cs) + ${SEND_WAIT:-60} * 100))
  _n=0
  while :; do
    _n=$((_n + 1))
    _t0=$(now_cs)
    if nc -w 5 "$1" "$2" < /tmp/blob 2> "/tmp/nc.err.$2"; then return 0; fi
    if [ $(($(now_cs) - _t0)) -gt 300 ]; then
      _why="nc to $1:$2 failed after $(($(now_cs) - _t0)) cs (attempt $_n): $(cat "/tmp/nc.err.$2")"
      return 1
    fi
    if [ "$(now_cs)" -ge "$_deadline" ]; then
      _why="nc to $1:$2: no connection for ${SEND_WAIT:-60} s: $(cat "/tmp/nc.err.$2")"
      return 1
    fi
    sleep "$3"
  done
}

# send_blob PEER PORT: nc the blob to PEER:PORT (retrying while the connection is refused)
send_blob() {
  nc_send "$1" "$2" 0.5 || fail "$_why"
  _cs=$(($(now_cs) - _t0))
  _b=$(stat -c %s /tmp/blob)
  res tx_peer="$1:$2" tx_bytes="$_b" tx_cs="$_cs" tx_mbps="$(mbps "$_b" "$_cs")" tx_attempts="$_n"
}

# recv_blob PORT: listen once on PORT, store what arrives in /tmp/rx, print its md5 and size
recv_blob() {
  rm -f /tmp/rx /tmp/rx.fifo
  mkfifo /tmp/rx.fifo
  # stdin is a FIFO nobody writes: nc must not see EOF on stdin (it would half-close the connection)
  nc -l -p "$1" 0<> /tmp/rx.fifo > /tmp/rx &
  _pid=$!
  sleep 0.3
  echo "E2E-READY recv port=$1"
  _t0=$(now_cs)
  # the clock starts at READY; the host connects right after it sees the line
  wait "$_pid" || fail "nc -l -p $1 exited with $?"
  _cs=$(($(now_cs) - _t0))
  _b=$(stat -c %s /tmp/rx)
  _md5=$(md5sum /tmp/rx | cut -d' ' -f1)
  rm -f /tmp/rx /tmp/rx.fifo
  res "${2}rx_port=$1" "${2}rx_bytes=$_b" "${2}rx_md5=$_md5" "${2}rx_cs=$_cs" "${2}rx_mbps=$(mbps "$_b" "$_cs")"
}

# send_streams PEER BASEPORT N: N simultaneous TCP streams, the blob to PEER:BASEPORT+i each (each
# retrying while refused, as send_blob); the time runs from the first successful connection attempt
# to the last stream's end. Results streams_tx_bytes (all streams) streams_tx_cs streams_tx_mbps
send_streams() {
  rm -f /tmp/st.*
  _i=0 _pids=""
  while [ "$_i" -lt "$3" ]; do
    (
      if ! nc_send "$1" $(($2 + _i)) 0.2; then
        echo "$_why" > "/tmp/st.err.$_i"
        exit 1
      fi
      echo "$_t0 $(now_cs)" > "/tmp/st.t.$_i"
    ) &
    _pids="$_pids $!"
    _i=$((_i + 1))
  done
  _bad=0
  for _p in $_pids; do wait "$_p" || _bad=1; done
  [ "$_bad" = 0 ] || fail "send_streams to $1:$2+$3: $(cat /tmp/st.err.* 2> /dev/null | tr '\n' '|')"
  _cs=$(cat /tmp/st.t.* | awk 'NR == 1 || $1 < s { s = $1 } $2 > e { e = $2 } END { print e - s }')
  _b=$(($(stat -c %s /tmp/blob) * $3))
  res streams_tx_bytes="$_b" streams_tx_cs="$_cs" streams_tx_mbps="$(mbps "$_b" "$_cs")"
}

# recv_streams BASEPORT N: listen on BASEPORT+i (i < N) at once, then E2E-READY; each stream's size
# and md5 as results (streams_rx_bytes = the sum, streams_rx_md5s = the md5s in port order, comma
# separated), the time from READY to the last stream's end
recv_streams() {
  rm -f /tmp/sr.*
  _i=0 _pids=""
  while [ "$_i" -lt "$2" ]; do
    mkfifo "/tmp/sr.fifo.$_i"
    nc -l -p $(($1 + _i)) 0<> "/tmp/sr.fifo.$_i" > "/tmp/sr.data.$_i" &
    _pids="$_pids $!"
    _i=$((_i + 1))
  done
  sleep 0.3
  echo "E2E-READY recv port=$1 streams=$2"
  _t0=$(now_cs)
  for _p in $_pids; do wait "$_p" || fail "nc -l on a port from $1 exited with $?"; done
  _cs=$(($(now_cs) - _t0))
  _b=0 _m=""
  _i=0
  while [ "$_i" -lt "$2" ]; do
    _b=$((_b + $(stat -c %s "/tmp/sr.data.$_i")))
    _m="$_m$(md5sum "/tmp/sr.data.$_i" | cut -d' ' -f1),"
    _i=$((_i + 1))
  done
  rm -f /tmp/sr.*
  res streams_rx_bytes="$_b" streams_rx_md5s="${_m%,}" streams_rx_cs="$_cs" streams_rx_mbps="$(mbps "$_b" "$_cs")"
}

# queue_spread IF: doorbells per TX and RX queue from virtio_net's `ethtool -S` (txN_kicks, rxN_kicks:
# since 6.10 the per-queue packet and byte counts are netdev queue stats, no longer in ethtool -S;
# drivers/net/virtio_net.c virtnet_sq_stats_desc, virtnet_rq_stats_desc); results tx_q_kicks and
# rx_q_kicks, comma separated in queue order; the per-queue lines logged
queue_spread() {
  _s=$(ethtool -S "$1" 2>&1) || fail "ethtool -S $1: $_s"
  echo "$_s" | grep -E '^ +(rx|tx)[0-9]+_' | sed "s/^ */E2E-LOG ethtool -S $1: /"
  echo "$_s" | grep -qE '^ +tx[0-9]+_kicks:' || echo "$_s" | sed "s/^/E2E-LOG ethtool -S $1 (no txN_kicks): /"
  res tx_q_kicks="$(echo "$_s" | awk '$1 ~ /^tx[0-9]+_kicks:$/ { printf "%s%s", c, $2; c = "," }')" \
    rx_q_kicks="$(echo "$_s" | awk '$1 ~ /^rx[0-9]+_kicks:$/ { printf "%s%s", c, $2; c = "," }')"
}
