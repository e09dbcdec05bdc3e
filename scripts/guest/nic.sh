# scripts/guest/nic.sh -- the NIC role of an e2e guest (appended after lib.sh; see there).
# Variables set by the harness before this file:
#   ROLE       host-peer: ping PEER_IP, send the blob to PEER_IP:TX_PORT, then receive one on RX_PORT
#              sender:    ping PEER_IP, send the blob to PEER_IP:TX_PORT          (peer is a guest "receiver")
#              receiver:  receive one transfer on RX_PORT                          (peer is a guest "sender")
#              stream:    send zeros to PEER_IP:TX_PORT until killed               (for kill-mid-transfer tests)
#              flap:      ping PEER_IP every 0.2 s and report carrier changes (E2E-CARRIER 0|1) until the
#                         carrier went down FLAP_DOWNS times (default 1) and came back, and 10 more
#                         pings were answered (the host pulls the link with `vdpa-emu ctl` or a
#                         scenario); at most FLAP_SECS seconds
#              offloads:  `ethtool -k` (results on_*), ping PEER_IP, send the blob to PEER_IP:TX_PORT with TSO on;
#                         `ethtool -K IF tso off` (results off_*), receive one on RX_PORT (the host reads the
#                         device's counters while the guest waits for it), send the blob again with TSO off;
#                         `ethtool -S` logged (result ethtool_tx_timeouts)
#              flows:     wait (at most FLOW_SECS) until FLOW_PKTS more packets arrived (the host sends
#                         UDP flows), then report the interrupts of each virtio input queue
#                         (rx_irqs="virtioN-input.Q=COUNT,...", summed over CPUs)
#              streams:   STREAMS (default 1) simultaneous TCP streams each way: ping PEER_IP, send the blob
#                         to PEER_IP:STREAM_TX_PORT+i each, then receive one on STREAM_RX_PORT+i each; virtio_net's
#                         per-queue kick counts (tx_q_kicks, rx_q_kicks)
#              streams-sender / streams-receiver: the sending half (to a guest) / the receiving half
#                         (on STREAM_TX_PORT+i, from a guest)
#   QUEUES     when set: `ethtool -L IF combined QUEUES` first (result queues_combined)
#   NIC_MAC    the NIC under test is the netdev with this MAC
#   NIC_DRIVER virtio-pci (built-in virtio_pci + virtio_net) | ifcvf (Linux ifcvf + vdpa + virtio_vdpa)
#   NIC_PCI    VEN:DEV of the function under test (needed for ifcvf: it is found by ID, then rebound)
#   MY_IP      address/prefix for the NIC;  PEER_IP, PINGS, BLOB_MIB, TX_PORT, RX_PORT
#   HOLD       1: after the role, print E2E-HOLD and sleep (the host resets or quits the VM)

log "role=$ROLE driver=$NIC_DRIVER mac=$NIC_MAC ip=$MY_IP peer=${PEER_IP:-}"
case "$NIC_DRIVER" in
  virtio-pci) ;;
  ifcvf)
    BDF=$(pci_find "$NIC_PCI") || fail "no PCI function $NIC_PCI"
    bind_ifcvf "$BDF"
    ;;
  *) fail "unknown NIC_DRIVER $NIC_DRIVER" ;;
esac

IF=$(retry 10 nic_by_mac "$NIC_MAC" && nic_by_mac "$NIC_MAC") || {
  list_nics
  virtio_diag
  fail "no netdev with MAC $NIC_MAC"
}
BDF=$(nic_pci_bdf "$IF") || fail "$IF is not on a PCI function"
DRV=$(pci_driver "$BDF")
res nic="$IF" mac="$(cat "/sys/class/net/$IF/address")" bdf="$BDF" pci_driver="$DRV" \
  net_driver="$(basename "$(readlink "/sys/class/net/$IF/device/driver")")" \
  mtu="$(cat "/sys/class/net/$IF/mtu")" queues="$(ls -d /sys/class/net/$IF/queues/tx-* | wc -l)"
# the negotiated virtio feature bits (bit 0 first), as the virtio core sees them
res virtio_features="$(cat "/sys/class/net/$IF/device/features" 2> /dev/null || echo none)"
# behind a vIOMMU: the group and its default domain type (DMA = strict, DMA-FQ = lazy, identity = pt)
if [ -e "/sys/bus/pci/devices/$BDF/iommu_group" ]; then
  G=$(basename "$(readlink "/sys/bus/pci/devices/$BDF/iommu_group")")
  res iommu_group="$G" iommu_domain="$(cat "/sys/kernel/iommu_groups/$G/type" 2> /dev/null || echo unknown)"
else
  res iommu_group=none
fi
case "$NIC_DRIVER" in
  virtio-pci) [ "$DRV" = virtio-pci ] || fail "$BDF is bound to $DRV, not virtio-pci" ;;
  ifcvf) [ "$DRV" = ifcvf ] || fail "$BDF is bound to $DRV, not ifcvf" ;;
esac
nic_up "$IF" "$MY_IP"
# link settings (readable once the interface is up; -1/unknown without VIRTIO_NET_F_SPEED_DUPLEX)
res speed="$(cat "/sys/class/net/$IF/speed" 2> /dev/null || echo none)" \
  duplex="$(cat "/sys/class/net/$IF/duplex" 2> /dev/null || echo none)"

if [ -n "${QUEUES:-}" ]; then
  _l=$(ethtool -L "$IF" combined "$QUEUES" 2>&1) || fail "ethtool -L $IF combined $QUEUES: $_l"
  res queues_combined="$(ethtool -l "$IF" | awk '/^Current/ { c = 1 } c && $1 == "Combined:" { print $2; exit }')"
fi

case "$ROLE" in
  host-peer)
    log make_blob; make_blob "$BLOB_MIB"
    log ping; ping_test "$PEER_IP" "$PINGS"
    log send; send_blob "$PEER_IP" "$TX_PORT"
    log recv; recv_blob "$RX_PORT"
    ;;
  sender)
    log make_blob; make_blob "$BLOB_MIB"
    log ping; ping_test "$PEER_IP" "$PINGS"
    log send; send_blob "$PEER_IP" "$TX_PORT"
    ;;
  receiver)
    log recv; recv_blob "$RX_PORT"
    ;;
  offloads)
    ethtool_k "$IF" on
    log make_blob; make_blob "$BLOB_MIB"
    log ping; ping_test "$PEER_IP" "$PINGS"
    log send with TSO; send_blob "$PEER_IP" "$TX_PORT"
    ethtool -K "$IF" tso off || fail "ethtool -K $IF tso off"
    ethtool_k "$IF" off
    log recv; recv_blob "$RX_PORT"
    log send without TSO; send_blob "$PEER_IP" "$TX_PORT"
    # VIRTIO_F_RING_RESET: ethtool -G resizes each ring through queue_reset
    # (virtnet_set_ringparam -> virtqueue_resize -> vp_modern_disable_vq_and_reset)
    _g=$(ethtool -G "$IF" rx 128 tx 128 2>&1) || fail "ethtool -G $IF rx 128 tx 128: $_g"
    res ring_rx="$(ethtool -g "$IF" | awk '/^Current/ { c = 1 } c && $1 == "RX:" { print $2; exit }')"
    # VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: rx-gro-hw off sends GUEST_OFFLOADS_SET without GUEST_TSO4/6
    ethtool -K "$IF" rx-gro-hw off || fail "ethtool -K $IF rx-gro-hw off"
    res gro_hw="$(ethtool -k "$IF" | awk -F': ' '$1 == "rx-gro-hw" { split($2, v, " "); print v[1] }')"
    log recv with rx-gro-hw off; recv_blob "$RX_PORT" gro_off_
    # virtio_net's own statistics (per queue); its TX watchdog count as a result
    _s=$(ethtool -S "$IF" 2>&1) || fail "ethtool -S $IF: $_s"
    echo "$_s" | sed "s/^/E2E-LOG ethtool -S $IF: /"
    res ethtool_tx_timeouts="$(echo "$_s" | awk '$1 == "tx_tx_timeouts:" { print $2 }')"
    ;;
  stream)
    retry "${PEER_WAIT:-60}" ping -c 1 -W 1 "$PEER_IP" || fail "peer $PEER_IP never answered a ping"
    echo "E2E-READY stream"
    dd if=/dev/zero bs=64k count=1000000 2> /dev/null | nc "$PEER_IP" "$TX_PORT"
    res stream_ended=1
    ;;
  flap)
    retry "${PEER_WAIT:-60}" ping -c 1 -W 1 "$PEER_IP" || fail "peer $PEER_IP never answered a ping"
    CAR=/sys/class/net/$IF/carrier
    last=$(cat "$CAR") seen=$last ok=0 lost=0 after=0 downs=0
    end=$(($(date +%s) + ${FLAP_SECS:-120}))
    echo "E2E-READY flap"
    while [ "$(date +%s)" -lt "$end" ]; do
      c=$(cat "$CAR")
      if [ "$c" != "$last" ]; then
        last=$c seen="$seen$c" after=0
        [ "$c" = 0 ] && downs=$((downs + 1))
        echo "E2E-CARRIER $c"
      fi
      if ping -c 1 -W 1 "$PEER_IP" > /dev/null 2>&1; then
        ok=$((ok + 1))
        [ "$downs" -ge "${FLAP_DOWNS:-1}" ] && [ "$c" = 1 ] && after=$((after + 1))
      else
        lost=$((lost + 1))
      fi
      [ "$after" -ge 10 ] && break
      sleep 0.2
    done
    res carrier_seq="$seen" flap_ok=$ok flap_lost=$lost flap_after=$after
    ;;
  flows)
    retry "${PEER_WAIT:-60}" ping -c 1 -W 1 "$PEER_IP" || fail "peer $PEER_IP never answered a ping"
    RXP=/sys/class/net/$IF/statistics/rx_packets
    base=$(cat "$RXP")
    end=$(($(date +%s) + ${FLOW_SECS:-60}))
    echo "E2E-READY flows"
    while [ $(($(cat "$RXP") - base)) -lt "${FLOW_PKTS:-200}" ] && [ "$(date +%s)" -lt "$end" ]; do
      sleep 0.2
    done
    res flow_rx=$(($(cat "$RXP") - base)) rx_irqs="$(awk 'NR == 1 { n = NF }
      /-input\./ { s = 0; for (i = 2; i <= n + 1; i++) s += $i; printf "%s=%d,", $NF, s }' /proc/interrupts)"
    ;;
  streams)
    log make_blob; make_blob "$BLOB_MIB"
    log ping; ping_test "$PEER_IP" "$PINGS"
    log send "${STREAMS:-1}" streams; send_streams "$PEER_IP" "$STREAM_TX_PORT" "${STREAMS:-1}"
    log recv "${STREAMS:-1}" streams; recv_streams "$STREAM_RX_PORT" "${STREAMS:-1}"
    queue_spread "$IF"
    ;;
  streams-sender)
    log make_blob; make_blob "$BLOB_MIB"
    log ping; ping_test "$PEER_IP" "$PINGS"
    log send "${STREAMS:-1}" streams; send_streams "$PEER_IP" "$STREAM_TX_PORT" "${STREAMS:-1}"
    queue_spread "$IF"
    ;;
  streams-receiver)
    log recv "${STREAMS:-1}" streams; recv_streams "$STREAM_TX_PORT" "${STREAMS:-1}"
    queue_spread "$IF"
    ;;
  *) fail "unknown ROLE $ROLE" ;;
esac
log role done
[ "$NIC_DRIVER" = ifcvf ] && res ifcvf_irqs="$(grep -o 'ifcvf[^ ]*' /proc/interrupts | tr '\n' ',')"
res role_done="$ROLE" nic_rx_bytes="$(cat "/sys/class/net/$IF/statistics/rx_bytes")" \
  nic_tx_bytes="$(cat "/sys/class/net/$IF/statistics/tx_bytes")" \
  nic_rx_errors="$(cat "/sys/class/net/$IF/statistics/rx_errors")" nic_tx_errors="$(cat "/sys/class/net/$IF/statistics/tx_errors")"
if [ "${HOLD:-0}" = 1 ]; then
  echo "E2E-HOLD"
  sleep 3600
fi
