//! Datapath and control-path counters (the datapath counts; it does not log).

use crate::fault::FAULT_KINDS;
use crate::net::offload::hdr::BadTxHdr;

/// Per-queue counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Doorbells rung for this queue.
    pub doorbells: u64,
    /// Chains completed (used elements written).
    pub chains: u64,
    /// Frames carried (TX sent or RX delivered).
    pub frames: u64,
    /// Frame bytes carried (without the virtio header).
    pub bytes: u64,
    /// Interrupts requested.
    pub interrupts: u64,
    /// Interrupts the driver suppressed (used_event or NO_INTERRUPT).
    pub interrupts_suppressed: u64,
    /// TX services that used up their budget ([`crate::DeviceConfig::service_budget`]) and let
    /// others have the device lock before going on (the next round may find the ring empty:
    /// the budget is checked before the avail index is read again).
    pub budget_yields: u64,
}

/// What a TX queue's service counts. Kept in the queue's lane ([`crate::net::lane::Lane`]),
/// so that the service needs nothing of the device's counters, and added into
/// [`DeviceCounters`] (the fields of the same names, and the queue's own) on read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxCounters {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped_oversize: u64,
    pub tx_dropped_runt: u64,
    pub tx_port_drops: u64,
    pub tx_bad_hdr: [u64; BadTxHdr::ALL.len()],
    pub tx_hdr_unknown_flags: u64,
    pub tx_csum: u64,
    pub tx_gso_frames: u64,
    pub tx_gso_segments: u64,
    pub tx_port_busy: u64,
    /// The queue's own counters (chains, frames, bytes, interrupts_suppressed,
    /// budget_yields; its doorbells and interrupts are counted by the device).
    pub queue: QueueCounters,
}

impl TxCounters {
    /// Counts a TX frame dropped for a bad header.
    pub fn bad_tx_hdr(&mut self, r: BadTxHdr) {
        self.tx_bad_hdr[r as usize] += 1;
    }

    /// Adds these into the device's counters, queue `q`'s among them.
    pub(crate) fn add_to(&self, c: &mut DeviceCounters, q: u16) {
        let TxCounters {
            tx_frames,
            tx_bytes,
            tx_dropped_oversize,
            tx_dropped_runt,
            tx_port_drops,
            tx_bad_hdr,
            tx_hdr_unknown_flags,
            tx_csum,
            tx_gso_frames,
            tx_gso_segments,
            tx_port_busy,
            queue,
        } = self;
        c.tx_frames += tx_frames;
        c.tx_bytes += tx_bytes;
        c.tx_dropped_oversize += tx_dropped_oversize;
        c.tx_dropped_runt += tx_dropped_runt;
        c.tx_port_drops += tx_port_drops;
        for (a, b) in c.tx_bad_hdr.iter_mut().zip(tx_bad_hdr) {
            *a += b;
        }
        c.tx_hdr_unknown_flags += tx_hdr_unknown_flags;
        c.tx_csum += tx_csum;
        c.tx_gso_frames += tx_gso_frames;
        c.tx_gso_segments += tx_gso_segments;
        c.tx_port_busy += tx_port_busy;
        if let Some(qc) = c.queues.get_mut(usize::from(q)) {
            qc.add(queue);
        }
    }
}

impl QueueCounters {
    /// Adds `o` into these.
    pub(crate) fn add(&mut self, o: &QueueCounters) {
        let QueueCounters {
            doorbells,
            chains,
            frames,
            bytes,
            interrupts,
            interrupts_suppressed,
            budget_yields,
        } = o;
        self.doorbells += doorbells;
        self.chains += chains;
        self.frames += frames;
        self.bytes += bytes;
        self.interrupts += interrupts;
        self.interrupts_suppressed += interrupts_suppressed;
        self.budget_yields += budget_yields;
    }
}

/// Device-wide counters. A snapshot is returned by `Device::counters`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// TX frames longer than MTU + Ethernet header + VLAN tag: dropped, chain completed.
    pub tx_dropped_oversize: u64,
    /// TX frames shorter than an Ethernet header: dropped, chain completed.
    pub tx_dropped_runt: u64,
    /// TX frames the port refused.
    pub tx_port_drops: u64,
    /// TX frames dropped for a bad virtio_net_hdr, by reason (see `BadTxHdr::ALL`; counter
    /// names `BadTxHdr::name`): the chain is completed, the device goes on.
    pub tx_bad_hdr: [u64; BadTxHdr::ALL.len()],
    /// TX headers with flag bits the device does not recognise (ignored, 5.1.6.2.2; sent).
    pub tx_hdr_unknown_flags: u64,
    /// TX frames with NEEDS_CSUM whose checksum the device completed (or handed to a port that
    /// completes it).
    pub tx_csum: u64,
    /// TX GSO frames taken (gso_type TCPV4/TCPV6).
    pub tx_gso_frames: u64,
    /// Segments the device cut GSO frames into (for ports that cannot take GSO frames).
    pub tx_gso_segments: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// RX frames delivered with DATA_VALID (GUEST_CSUM: the TCP/UDP checksum verified).
    pub rx_csum_valid: u64,
    /// RX frames whose TCP/UDP checksum did not verify (delivered without DATA_VALID).
    pub rx_csum_bad: u64,
    /// RX frames handed to the driver whole as GSO frames (gso_type TCPV4/TCPV6, NEEDS_CSUM:
    /// GUEST_TSO4/6 on, 5.1.6.4).
    pub rx_gso_frames: u64,
    /// GSO frames from the port the driver does not take now: the device segmented them.
    pub rx_gso_segmented: u64,
    /// Segments those were cut into (each then delivered as an RX frame).
    pub rx_gso_segments: u64,
    /// GSO frames the device built by coalescing TCP segments (LRO) for a driver that takes
    /// them (each also counts in `rx_gso_frames` once delivered).
    pub rx_coalesced_frames: u64,
    /// Segments taken into those.
    pub rx_coalesced_segments: u64,
    /// RX frames handed on with NEEDS_CSUM (the checksum left to the driver, GUEST_CSUM on).
    pub rx_csum_partial: u64,
    /// NEEDS_CSUM frames from the port whose checksum the device completed (GUEST_CSUM off).
    pub rx_csum_completed: u64,
    /// Frames from the port whose virtio_net_hdr does not describe them (checksum outside the
    /// frame, a GSO type that is not the frame's TCP/IP, gso_size 0, unknown gso_type): dropped.
    pub rx_bad_offload: u64,
    /// Frames the RX filter (promiscuous / MAC table) rejected.
    pub rx_filtered: u64,
    /// RX frames that took the receive path's express lane (device/src/net/rx_express.rs:
    /// plain wire frames for a driver that takes no receive offload), delivered or dropped.
    pub rx_express_frames: u64,
    /// Frames dropped because the RX chain cannot hold them (no MRG_RXBUF, 5.1.6.3.1).
    pub rx_dropped_too_small: u64,
    /// Frames discarded from the inbox by a device reset.
    pub rx_dropped_reset: u64,
    /// Frames steered by their RSS hash through the indirection table (5.1.6.5.7), counted
    /// once each when delivered or dropped (a frame waiting for buffers is steered again on
    /// every try).
    pub rx_rss_hashed: u64,
    /// RX frames whose virtio_net_hdr_v1_hash carries a hash (HASH_REPORT, a type other than
    /// VIRTIO_NET_HASH_REPORT_NONE).
    pub rx_hash_reported: u64,
    /// Frames RSS sent to unclassified_queue (no enabled hash type covers them).
    pub rx_rss_unclassified: u64,
    pub ctrl_commands: u64,
    /// Control commands answered VIRTIO_NET_ERR.
    pub ctrl_errors: u64,
    /// Doorbells for a queue that is not running (ignored).
    pub spurious_doorbells: u64,
    /// Doorbells whose VIRTIO_F_NOTIFICATION_DATA vqn named another queue than their address
    /// (ignored: nothing serviced).
    pub bad_notification_data: u64,
    /// Frames dropped because every RX queue in use was being reset (virtio 1.2 5.1.6.5.6.1).
    pub rx_dropped_queue_reset: u64,
    /// Frames steered to an RX queue being reset and delivered to another one instead.
    pub rx_resteered_queue_reset: u64,
    /// Queues reset alone through queue_reset (VIRTIO_F_RING_RESET).
    pub queue_resets: u64,
    /// queue_reset writes refused: RING_RESET not negotiated, or a value other than 1.
    pub queue_reset_refused: u64,
    /// Doorbells taken from the shared notify window (a subset of the per-queue `doorbells`;
    /// the rest were trapped register writes).
    pub shared_doorbells: u64,
    /// Of those, the ones a register access took ahead of itself (PCIe ordering: an access
    /// does not pass an earlier doorbell store), not the doorbell engine.
    pub shared_doorbells_at_access: u64,
    /// TX budgets that ran on their queue's lane with the device lock free (the doorbell
    /// engine's: register reads and received frames went on meanwhile;
    /// docs/architecture.md, Concurrency).
    pub tx_budgets_off_lock: u64,
    /// Doorbells ignored because bus mastering is off.
    pub dma_blocked_no_bus_master: u64,
    pub config_interrupts: u64,
    /// Interrupts held in the PBA because the vector was masked.
    pub interrupts_pending_masked: u64,
    /// Interrupts not sent because the vector register holds NO_VECTOR.
    pub interrupts_no_vector: u64,
    /// Register accesses of a width/alignment the register does not accept, or to reserved space.
    pub bad_register_accesses: u64,
    /// Well-formed writes the device ignored in its current state (e.g. ring state while enabled).
    pub ignored_register_writes: u64,
    /// Device status writes that break the virtio 2.1 rules (cleared bits, skipped steps).
    pub bad_status_writes: u64,
    /// FEATURES_OK refused.
    pub features_refused: u64,
    /// Times DEVICE_NEEDS_RESET was entered.
    pub needs_reset: u64,
    /// Faults by kind (see `fault::FAULT_KINDS`), including ones after the first.
    pub faults: [u64; FAULT_KINDS.len()],
    /// Device resets (status 0 or function reset).
    pub resets: u64,
    /// Frames the port took and lost afterwards ([`crate::Port::lost`], copied in by
    /// [`crate::Device::counters`]).
    pub tx_port_lost: u64,
    /// TX services that stopped at a chain boundary because the port was full
    /// ([`crate::Port::ready`]): the chains left wait in the ring for the port's waker.
    pub tx_port_busy: u64,
    /// Frames a port delivered while the receive FIFO was full, dropped there (the FIFO's own
    /// count, copied in by [`crate::Device::counters`]; a device reset does not clear it).
    pub rx_dropped_backlog: u64,
    /// Times a port reader found the receive FIFO full and waited for room instead of reading
    /// on (the FIFO's own count, like `rx_dropped_backlog`): the wire backed up to its sender.
    pub rx_port_waits: u64,
    /// Frames that left the receive FIFO to wait on their RX queue's own list (its buffers ran
    /// out, or frames waited there already) while the delivery went on for the other queues
    /// (device/src/port/waiting.rs). A frame steered again after a steering change counts
    /// again if it waits again.
    pub rx_queue_waits: u64,
    /// Deliveries that stopped after [`crate::DeviceConfig::service_budget`] frames with more
    /// waiting and let go of the device lock (to a waiting register access or doorbell first)
    /// before the next budget.
    pub rx_budget_yields: u64,
    /// ISR reads answered without the device lock ([`crate::interrupt::IsrStatus`]; counted
    /// by [`crate::Device`] and copied in by [`crate::Device::counters`]).
    pub isr_reads_unlocked: u64,
    pub queues: Vec<QueueCounters>,
}

impl DeviceCounters {
    /// Counts a TX frame dropped for a bad header.
    pub fn bad_tx_hdr(&mut self, r: BadTxHdr) {
        self.tx_bad_hdr[r as usize] += 1;
    }

    /// TX frames dropped for a bad header, all reasons.
    pub fn tx_bad_hdr_total(&self) -> u64 {
        self.tx_bad_hdr.iter().sum()
    }

    /// Fault count by stable name.
    pub fn fault(&self, kind: &str) -> u64 {
        FAULT_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.faults[i])
    }

    /// Name/value pairs of the scalar counters (for reports).
    pub fn scalars(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("tx_frames", self.tx_frames),
            ("tx_bytes", self.tx_bytes),
            ("tx_dropped_oversize", self.tx_dropped_oversize),
            ("tx_dropped_runt", self.tx_dropped_runt),
            ("tx_port_drops", self.tx_port_drops),
            ("tx_port_busy", self.tx_port_busy),
            ("tx_port_lost", self.tx_port_lost),
            ("tx_hdr_unknown_flags", self.tx_hdr_unknown_flags),
            ("tx_csum", self.tx_csum),
            ("tx_gso_frames", self.tx_gso_frames),
            ("tx_gso_segments", self.tx_gso_segments),
            ("rx_frames", self.rx_frames),
            ("rx_bytes", self.rx_bytes),
            ("rx_csum_valid", self.rx_csum_valid),
            ("rx_csum_bad", self.rx_csum_bad),
            ("rx_gso_frames", self.rx_gso_frames),
            ("rx_gso_segmented", self.rx_gso_segmented),
            ("rx_gso_segments", self.rx_gso_segments),
            ("rx_coalesced_frames", self.rx_coalesced_frames),
            ("rx_coalesced_segments", self.rx_coalesced_segments),
            ("rx_csum_partial", self.rx_csum_partial),
            ("rx_csum_completed", self.rx_csum_completed),
            ("rx_bad_offload", self.rx_bad_offload),
            ("rx_filtered", self.rx_filtered),
            ("rx_express_frames", self.rx_express_frames),
            ("rx_dropped_too_small", self.rx_dropped_too_small),
            ("rx_dropped_reset", self.rx_dropped_reset),
            ("rx_dropped_backlog", self.rx_dropped_backlog),
            ("rx_port_waits", self.rx_port_waits),
            ("rx_queue_waits", self.rx_queue_waits),
            ("rx_budget_yields", self.rx_budget_yields),
            ("isr_reads_unlocked", self.isr_reads_unlocked),
            ("rx_rss_hashed", self.rx_rss_hashed),
            ("rx_rss_unclassified", self.rx_rss_unclassified),
            ("rx_hash_reported", self.rx_hash_reported),
            ("ctrl_commands", self.ctrl_commands),
            ("ctrl_errors", self.ctrl_errors),
            ("spurious_doorbells", self.spurious_doorbells),
            ("bad_notification_data", self.bad_notification_data),
            ("rx_dropped_queue_reset", self.rx_dropped_queue_reset),
            ("rx_resteered_queue_reset", self.rx_resteered_queue_reset),
            ("queue_resets", self.queue_resets),
            ("queue_reset_refused", self.queue_reset_refused),
            ("shared_doorbells", self.shared_doorbells),
            (
                "shared_doorbells_at_access",
                self.shared_doorbells_at_access,
            ),
            ("tx_budgets_off_lock", self.tx_budgets_off_lock),
            ("dma_blocked_no_bus_master", self.dma_blocked_no_bus_master),
            ("config_interrupts", self.config_interrupts),
            ("interrupts_pending_masked", self.interrupts_pending_masked),
            ("interrupts_no_vector", self.interrupts_no_vector),
            ("bad_register_accesses", self.bad_register_accesses),
            ("ignored_register_writes", self.ignored_register_writes),
            ("bad_status_writes", self.bad_status_writes),
            ("features_refused", self.features_refused),
            ("needs_reset", self.needs_reset),
            ("resets", self.resets),
        ];
        for (i, r) in BadTxHdr::ALL.iter().enumerate() {
            v.push((r.name(), self.tx_bad_hdr[i]));
        }
        for (i, k) in FAULT_KINDS.iter().enumerate() {
            v.push((k, self.faults[i]));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every TX counter of a lane lands in the device counter of the same name, and the
    /// queue's own in that queue's, added to what is there.
    #[test]
    fn tx_counters_add_into_the_device_counters_of_the_same_names() {
        let mut t = TxCounters {
            tx_frames: 1,
            tx_bytes: 2,
            tx_dropped_oversize: 3,
            tx_dropped_runt: 4,
            tx_port_drops: 5,
            tx_bad_hdr: [0; BadTxHdr::ALL.len()],
            tx_hdr_unknown_flags: 6,
            tx_csum: 7,
            tx_gso_frames: 8,
            tx_gso_segments: 9,
            tx_port_busy: 10,
            queue: QueueCounters {
                doorbells: 11,
                chains: 12,
                frames: 13,
                bytes: 14,
                interrupts: 15,
                interrupts_suppressed: 16,
                budget_yields: 17,
            },
        };
        for (i, r) in BadTxHdr::ALL.iter().enumerate() {
            for _ in 0..=i {
                t.bad_tx_hdr(*r);
            }
        }
        let mut c = DeviceCounters {
            tx_frames: 100,
            queues: vec![QueueCounters::default(); 3],
            ..Default::default()
        };
        t.add_to(&mut c, 1);
        let got: std::collections::HashMap<_, _> = c.scalars().into_iter().collect();
        for (name, want) in [
            ("tx_frames", 101),
            ("tx_bytes", 2),
            ("tx_dropped_oversize", 3),
            ("tx_dropped_runt", 4),
            ("tx_port_drops", 5),
            ("tx_hdr_unknown_flags", 6),
            ("tx_csum", 7),
            ("tx_gso_frames", 8),
            ("tx_gso_segments", 9),
            ("tx_port_busy", 10),
        ] {
            assert_eq!(got[name], want, "{name}");
        }
        for (i, r) in BadTxHdr::ALL.iter().enumerate() {
            assert_eq!(got[r.name()], i as u64 + 1, "{}", r.name());
        }
        let nonzero = got.values().filter(|&&v| v != 0).count();
        assert_eq!(nonzero, 10 + BadTxHdr::ALL.len(), "nothing else moved");
        assert_eq!(c.queues[1], t.queue);
        assert_eq!(c.queues[0], QueueCounters::default());
        // Out of range: the device's own counters only.
        t.add_to(&mut c, 9);
        assert_eq!(c.tx_frames, 102);
    }
}
