//! The net engine: the queues (registers, stop state machine, live rings), the DMA engine
//! every ring and packet access goes through, the port frames leave by, the receive FIFO they
//! arrive in, the virtio-net state (5.1.4 config fields, 5.1.6.5 RX mode and MAC tables,
//! steering), and the scratch buffers the datapath reuses. The datapath itself is in
//! [`super::tx`], [`super::rx`] and [`super::ctrl`]; it reaches the rest of the device only
//! through a `Datapath`: the negotiated features in, counters and the interrupts and config
//! changes it leaves for the device out.

use super::lane::{Lane, Lanes};
use crate::capture::FrameCapture;
use crate::config::DeviceConfig;
use crate::counters::DeviceCounters;
use crate::fault::DeviceFault;
use crate::port::{Port, PortOffloads, ReaderScratch, RxInbox};
use crate::queue::chain::{Chain, Desc, RingSetup};
use crate::queue::Ring;
use crate::quirks::{Quirk, Quirks};
use crate::state::access::merge;
use crate::state::{QueueSlot, QueueState};
use bar_registers::ring::PACKED_RESET_INDEX;
use bar_registers::virtio::{bits, common, net_status, NO_VECTOR};
use dma::{DmaEngine, DmaPorts};
use std::sync::Arc;

use super::offload::guest::GuestOffloads;
use super::{ETH_HLEN, VLAN_HLEN};

/// Flow hash buckets of automatic receive steering.
pub const FLOW_BUCKETS: usize = 1024;

/// virtio-net device state beyond registers: config fields, RX mode, steering.
#[derive(Debug)]
pub struct NetState {
    pub(crate) mac: [u8; 6],
    pub(crate) status: u16,
    /// Queue pairs in use (1 until VQ_PAIRS_SET, 5.1.6.5.5).
    pub(crate) curr_pairs: u16,
    pub(crate) promisc: bool,
    pub(crate) allmulti: bool,
    pub(crate) uc_table: Vec<[u8; 6]>,
    pub(crate) mc_table: Vec<[u8; 6]>,
    /// Automatic receive steering (5.1.6.5.6.1): flow hash bucket -> last TX queue pair.
    pub(crate) flows: Vec<u16>,
    /// Receive-side scaling, while the driver has it on (5.1.6.5.7): replaces the flows.
    pub(crate) rss: Option<super::rss::RssConfig>,
    /// The receive offloads CTRL_GUEST_OFFLOADS_SET left on (5.1.6.5.6.1); `None` until the
    /// driver sends one: then negotiation decides ([`NetEngine::guest_offloads`]).
    pub(crate) guest_offloads: Option<GuestOffloads>,
    /// Hash reporting without RSS steering (VIRTIO_NET_CTRL_MQ_HASH_CONFIG), while on.
    pub(crate) hash_cfg: Option<super::rss::HashConfig>,
    /// The Toeplitz table of the key in use (RSS's, or HASH_CONFIG's).
    pub(crate) toeplitz: super::rss::ToeplitzCache,
}

impl NetState {
    /// Reset state: link up, one pair, promiscuous (5.1.6.5.1: "the device starts in
    /// promiscuous and all-multicast mode" until the driver sets RX mode).
    pub(crate) fn new(mac: [u8; 6]) -> Self {
        NetState {
            mac,
            status: net_status::LINK_UP,
            curr_pairs: 1,
            promisc: true,
            allmulti: true,
            uc_table: Vec::new(),
            mc_table: Vec::new(),
            flows: vec![u16::MAX; FLOW_BUCKETS],
            rss: None,
            guest_offloads: None,
            hash_cfg: None,
            toeplitz: Default::default(),
        }
    }
}

/// What one service call needs from the rest of the device, and what it leaves for it.
pub(crate) struct Datapath<'a> {
    /// The negotiated feature bits.
    pub features: u64,
    pub counters: &'a mut DeviceCounters,
    /// Queues whose used buffer notification is due, in the order they became due.
    pub interrupts: &'a mut Vec<u16>,
    /// How many times the device configuration changed (config_generation steps, 2.5.1).
    pub config_changes: u8,
}

impl Datapath<'_> {
    /// Publishes what queue `q`'s service wrote into `ring`'s used ring, then notes the
    /// queue's interrupt if the driver wants one (2.7.7.2), else counts it suppressed.
    pub fn publish(
        &mut self,
        ring: &mut Ring,
        dma: &mut DmaEngine,
        q: u16,
    ) -> Result<(), DeviceFault> {
        ring.flush_used(dma)?;
        if ring.interrupt_decision(dma)? {
            self.interrupts.push(q);
        } else {
            self.counters.queues[usize::from(q)].interrupts_suppressed += 1;
        }
        Ok(())
    }

    /// Whether feature `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }
}

/// How a queue service ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    /// The queue has no more work (or cannot go on: no buffers, disabled).
    Done,
    /// The budget ran out at a batch boundary (used ring published, interrupt decided); chains
    /// may remain (the next round reads the avail index and finds out).
    More,
}

/// The configuration the engine works with (taken from [`DeviceConfig`] once).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineParams {
    pub mac: [u8; 6],
    pub queue_pairs: u16,
    pub queue_size_max: u16,
    pub ctrl_queue: u16,
    pub batch: u16,
    /// Most TX chains per service before it yields ([`DeviceConfig::service_budget`]).
    pub service_budget: u32,
    /// Largest frame TX sends: MTU + Ethernet header + one VLAN tag.
    pub max_frame: usize,
    pub quirks: Quirks,
    pub disable_latency_reads: u32,
    /// Frames the receive FIFO holds.
    pub rx_backlog: usize,
    /// [`DeviceConfig::rx_express`].
    pub rx_express: bool,
    /// [`DeviceConfig::desc_runs`].
    pub desc_runs: bool,
}

/// Queues, DMA, port, receive FIFO, net state and datapath scratch.
pub struct NetEngine {
    /// Each queue's registers, ring and DMA port, behind the queue's own lock.
    pub(super) lanes: Lanes,
    pub(super) port: Arc<dyn Port>,
    pub(super) inbox: Arc<RxInbox>,
    pub(super) net: NetState,
    pub(super) params: EngineParams,
    /// The chain being processed (reused between pops).
    pub(super) chain: Chain,
    /// RX: the descriptors of every chain one frame is spread over.
    pub(super) rx_descs: Vec<Desc>,
    /// RX: the chains one frame is spread over.
    pub(super) rx_slots: Vec<super::rx::Slot>,
    /// TX frame / control command bytes.
    pub(super) buf: Vec<u8>,
    /// TX: the segment being built from a GSO frame.
    pub(super) seg_buf: Vec<u8>,
    /// The delivery loop's inbox reader storage, kept between deliveries
    /// ([`crate::port::InboxReader`]).
    pub(super) rx_scratch: ReaderScratch,
    /// Where carried frames are copied for a capture, if one runs.
    pub(super) capture: Option<Arc<dyn FrameCapture>>,
    /// What the port was last told the driver takes on receive ([`Port::set_rx_offloads`]).
    pub(super) port_rx_offloads: PortOffloads,
    /// TX queues that stopped because the port was full ([`Port::ready`]), each once, in the
    /// order they stopped: the port's waker runs them again ([`NetEngine::take_port_blocked`]).
    pub(super) port_blocked: Vec<u16>,
    /// The dirty log every port writes (the ports each hold it too; this copy answers
    /// without locking the lanes, which a TX budget may hold apart from the device lock).
    logging: Option<dma::LogConfig>,
    /// Where the ports' deferred log faults wait (shared by them: [`dma::LogFaultSlot`]).
    log_fault: dma::LogFaultSlot,
}

impl std::fmt::Debug for NetEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetEngine")
            .field("lanes", &self.lanes)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

impl NetEngine {
    /// The engine of a device with `num_queues` queues (the last one `ctrl_queue`).
    pub(crate) fn new(
        cfg: &DeviceConfig,
        num_queues: u16,
        ctrl_queue: u16,
        mut ports: Vec<DmaEngine>,
        port: Arc<dyn Port>,
        inbox: Arc<RxInbox>,
    ) -> Self {
        if cfg.quirks.has(Quirk::LogSkipsUsedRing) {
            DmaPorts::over(&mut ports).set_unlogged_kinds(&[dma::DmaKind::RingWrite]);
        }
        let params = EngineParams {
            mac: cfg.layout.mac,
            queue_pairs: cfg.layout.queue_pairs,
            queue_size_max: cfg.layout.queue_size_max,
            ctrl_queue,
            batch: cfg.batch,
            service_budget: cfg.service_budget.max(1),
            max_frame: usize::from(cfg.layout.mtu) + ETH_HLEN + VLAN_HLEN,
            quirks: cfg.quirks,
            disable_latency_reads: cfg.disable_latency_reads,
            rx_backlog: cfg.rx_backlog,
            rx_express: cfg.rx_express,
            desc_runs: cfg.desc_runs,
        };
        debug_assert_eq!(ports.len(), usize::from(num_queues));
        let log_fault = ports[0].log_fault_slot();
        NetEngine {
            lanes: Lanes::new(ports, params.queue_size_max),
            logging: None,
            log_fault,
            port,
            inbox,
            net: NetState::new(params.mac),
            params,
            chain: Chain::default(),
            rx_descs: Vec::new(),
            rx_slots: Vec::new(),
            buf: Vec::with_capacity(65 * 1024),
            seg_buf: Vec::new(),
            rx_scratch: ReaderScratch::default(),
            capture: None,
            port_rx_offloads: PortOffloads::NONE,
            port_blocked: Vec::new(),
        }
    }

    /// Device reset (2.4): the dirty log flushed and off, every queue back to its reset
    /// registers, the net state reset, the receive FIFO emptied. Returns the frames dropped.
    pub(crate) fn reset(&mut self) -> usize {
        let size = self.params.queue_size_max;
        for l in &mut self.lanes.all() {
            let _ = l.dma.flush_log();
            l.slot = QueueSlot::new(size);
            l.dma.set_logging(None);
            l.dma.disarm_fault();
        }
        self.logging = None;
        self.net = NetState::new(self.params.mac);
        self.port_blocked.clear();
        self.set_port_rx_offloads(PortOffloads::NONE);
        self.inbox.clear()
    }

    /// Starts (Some) or stops (None) copying carried frames to a capture.
    pub fn set_capture(&mut self, capture: Option<Arc<dyn FrameCapture>>) {
        self.capture = capture;
    }

    /// Applies a changed quirk set to what the engine decides at run time: the per-frame and
    /// ring-state quirks at once, the dirty log's unlogged kinds at once, and used_event
    /// handling on every ring now running (new rings take it at enable).
    pub(crate) fn set_quirks(&mut self, quirks: Quirks) {
        self.params.quirks = quirks;
        let unlogged: &[dma::DmaKind] = if quirks.has(Quirk::LogSkipsUsedRing) {
            &[dma::DmaKind::RingWrite]
        } else {
            &[]
        };
        let ignore = quirks.has(Quirk::IgnoresEventIdx);
        let out_of_order = quirks.has(Quirk::CompletesOutOfOrder);
        for l in &mut self.lanes.all() {
            l.dma.set_unlogged_kinds(unlogged);
            if let QueueState::Enabled(ring) = &mut l.slot.state {
                ring.set_ignore_used_event(ignore);
                ring.set_out_of_order(out_of_order);
            }
        }
    }

    /// Runs `f` on the DMA ports (one per queue) seen together: to configure them (logging,
    /// PCIe limits, write trace, mappings changed) or read their counters. Every queue's lane
    /// is locked meanwhile.
    pub fn dma<R>(&self, f: impl FnOnce(&mut DmaPorts<'_>) -> R) -> R {
        self.lanes.ports(f)
    }

    /// The dirty log the ports write, if logging is on.
    pub(crate) fn logging(&self) -> Option<dma::LogConfig> {
        self.logging
    }

    /// Dirty logging on every port (each flushes its pending bits into the previous log
    /// first: [`DmaPorts::set_logging`]).
    pub(crate) fn set_logging(&mut self, cfg: Option<dma::LogConfig>) {
        self.dma(|d| d.set_logging(cfg));
        self.logging = cfg;
    }

    /// The first dirty-log fault a port's deferred marking hit since the last call, taken
    /// without locking the lanes ([`dma::LogFaultSlot`]).
    pub(crate) fn take_log_fault(&self) -> Option<dma::DmaFault> {
        self.log_fault.take()
    }

    /// Connects the transmit side to a port (its waker is the caller's to set; the queues the
    /// old port held back stay noted, for the caller to run on the new one).
    pub fn set_port(&mut self, port: Arc<dyn Port>) {
        port.set_rx_offloads(self.port_rx_offloads);
        self.port = port;
    }

    /// The port frames leave by.
    pub fn port(&self) -> &Arc<dyn Port> {
        &self.port
    }

    /// The TX queues the port held back, to run again now that it has room (the list empties).
    pub(crate) fn take_port_blocked(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.port_blocked)
    }

    /// The receive offloads the driver takes now, with `features` negotiated (5.1.6.5.6.1).
    pub fn guest_offloads(&self, features: u64) -> GuestOffloads {
        self.net
            .guest_offloads
            .unwrap_or(GuestOffloads::negotiated(features))
    }

    /// Tells the port what the driver takes now (after negotiation, CTRL_GUEST_OFFLOADS_SET,
    /// a restore).
    pub(crate) fn apply_guest_offloads(&mut self, features: u64) {
        let o = self.guest_offloads(features).to_port();
        self.set_port_rx_offloads(o);
    }

    fn set_port_rx_offloads(&mut self, o: PortOffloads) {
        if o != self.port_rx_offloads {
            tracing::debug!(offloads = ?o, port = %self.port.describe(), "port receive offloads");
            self.port_rx_offloads = o;
            self.port.set_rx_offloads(o);
        }
    }

    /// The receive FIFO.
    pub fn inbox(&self) -> &Arc<RxInbox> {
        &self.inbox
    }

    /// The virtio-net state.
    pub fn net(&self) -> &NetState {
        &self.net
    }

    /// The virtio-net state, to change (link, announce, queue pairs, restore).
    pub fn net_mut(&mut self) -> &mut NetState {
        &mut self.net
    }

    /// Queue `q`'s lane (registers, ring, DMA port), locked; None if there is no queue `q`.
    pub fn queue(&self, q: u16) -> Option<parking_lot::MutexGuard<'_, Lane>> {
        self.lanes.get(q)
    }

    /// Adds what the queues counted in their lanes into `c`.
    pub(crate) fn add_lane_counters(&self, c: &mut crate::counters::DeviceCounters) {
        for (q, lane) in self.lanes.all().iter().enumerate() {
            lane.tx.add_to(c, q as u16);
        }
    }

    /// Every queue's lane.
    pub(crate) fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    /// Whether queue `q` is a transmit queue (virtio 1.2 5.1.2: transmitq N is queue 2N+1;
    /// the control queue is the last, after the pairs).
    pub(crate) fn is_tx_queue(&self, q: u16) -> bool {
        q != self.params.ctrl_queue && q % 2 == 1
    }

    /// Number of queues.
    pub fn num_queues(&self) -> u16 {
        self.lanes.len()
    }

    /// Whether queue `q` has a live ring.
    pub fn is_enabled(&self, q: u16) -> bool {
        matches!(self.lanes.lock(q).slot.state, QueueState::Enabled(_))
    }

    /// A queue register of queue `q` (4.1.4.3). queue_enable of a stopping queue reads 1 for
    /// as many reads as the stop takes (IFC VF, DPDK ifcvf_hw_disable polls it).
    pub(crate) fn queue_read(&mut self, q: u16, reg: u64) -> u64 {
        let mut lane = self.lanes.lock(q);
        let slot = &mut lane.slot;
        match reg {
            common::QUEUE_SIZE => slot.size.into(),
            common::QUEUE_MSIX_VECTOR => slot.msix_vector.into(),
            common::QUEUE_ENABLE => match &mut slot.state {
                QueueState::Enabled(_) => 1,
                QueueState::Disabled | QueueState::Resetting { .. } | QueueState::Reset => 0,
                QueueState::Stopping { reads_left } => {
                    if *reads_left == 0 {
                        slot.state = QueueState::Disabled;
                        0
                    } else {
                        *reads_left -= 1;
                        1
                    }
                }
            },
            // 4.1.4.3.1: 1 while the reset is ongoing, then 0 (with queue_enable 0). The caller
            // reads 0 here when VIRTIO_F_RING_RESET was not negotiated.
            common::QUEUE_RESET => match &mut slot.state {
                QueueState::Resetting { reads_left } => {
                    if *reads_left == 0 {
                        slot.state = QueueState::Reset;
                        0
                    } else {
                        *reads_left -= 1;
                        1
                    }
                }
                _ => 0,
            },
            common::QUEUE_NOTIFY_OFF => q.into(),
            common::QUEUE_DESC => slot.desc,
            common::QUEUE_DRIVER => slot.driver,
            common::QUEUE_DEVICE => slot.device,
            _ => 0,
        }
    }

    /// A write to a queue register of queue `q` other than queue_enable. False when refused
    /// (4.1.4.3.2: no configuration change while the queue is enabled, except its vector; a
    /// size the ring layout cannot have; a register that is not writable).
    pub(crate) fn queue_write(
        &mut self,
        q: u16,
        reg: u64,
        (rel, len): (u64, usize),
        val: u64,
        packed: bool,
        msix_vectors: u16,
    ) -> bool {
        let max = self.params.queue_size_max;
        let mut lane = self.lanes.lock(q);
        let slot = &mut lane.slot;
        let enabled = !slot.state.is_programmable();
        if enabled && reg != common::QUEUE_MSIX_VECTOR {
            return false;
        }
        match reg {
            common::QUEUE_SIZE => {
                let v = val as u16;
                // 2.7: a split queue's size is a power of two; 2.8: a packed one's need not be.
                if v == 0 || v > max || (!packed && !v.is_power_of_two()) {
                    return false;
                }
                slot.size = v;
            }
            common::QUEUE_MSIX_VECTOR => {
                let v = val as u16;
                slot.msix_vector = if v < msix_vectors { v } else { NO_VECTOR };
            }
            common::QUEUE_DESC => slot.desc = merge(slot.desc, rel, len, val),
            common::QUEUE_DRIVER => slot.driver = merge(slot.driver, rel, len, val),
            common::QUEUE_DEVICE => slot.device = merge(slot.device, rel, len, val),
            _ => return false,
        }
        true
    }

    /// FEATURES_OK with VIRTIO_F_RING_PACKED: 2.8.1, both wrap counters start at 1, so a
    /// packed queue's LM ring state resets to offset 0, wrap 1 (vhost-user's 0x8000) unless the
    /// driver set it.
    pub(crate) fn packed_negotiated(&mut self) {
        for l in &mut self.lanes.all() {
            let q = &mut l.slot;
            if q.ring_state == (0, 0) && matches!(q.state, QueueState::Disabled) {
                q.ring_state = (PACKED_RESET_INDEX, PACKED_RESET_INDEX);
            }
        }
    }

    /// Builds queue `q`'s ring at its LM ring state (queue_enable = 1).
    pub(crate) fn enable(&mut self, q: u16, features: u64) -> Result<(), DeviceFault> {
        let has = |bit: u32| features & (1u64 << bit) != 0;
        let mut lane = self.lanes.lock(q);
        let slot = &mut lane.slot;
        let (avail, used) = slot.ring_state;
        let setup = RingSetup {
            queue: q,
            size: slot.size,
            desc: slot.desc,
            avail: slot.driver,
            used: slot.device,
            last_avail: avail,
            last_used: used,
            event_idx: has(bits::EVENT_IDX),
            indirect: has(bits::INDIRECT_DESC),
            in_order: has(bits::IN_ORDER),
        };
        let mut ring = Ring::new(setup, has(bits::RING_PACKED))?;
        ring.set_ignore_used_event(self.params.quirks.has(Quirk::IgnoresEventIdx));
        ring.set_out_of_order(self.params.quirks.has(Quirk::CompletesOutOfOrder));
        ring.set_desc_runs(self.params.desc_runs);
        slot.resumed = (avail, used);
        slot.late_final = None;
        slot.state = QueueState::Enabled(Box::new(ring));
        Ok(())
    }

    /// Stops queue `q` (queue_enable = 0): in-flight work is published and the queue's dirty
    /// bits are in the log (its port may hold some of writes after its last publish, e.g. the
    /// avail_event of a re-armed notification), so the ring state that becomes readable equals
    /// used->idx in memory and every page the queue wrote is logged; queue_enable reads 1 for a
    /// while longer.
    pub(crate) fn disable(&mut self, q: u16) -> Result<(), DeviceFault> {
        let quirks = self.params.quirks;
        let latency = self.params.disable_latency_reads;
        let mut lane = self.lanes.lock(q);
        let Lane { slot, dma, .. } = &mut *lane;
        let QueueState::Enabled(ring) = &mut slot.state else {
            return Ok(());
        };
        let res = ring.flush_used(dma).and_then(|()| {
            dma.flush_log()
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })
        });
        let last = ring.ring_state();
        if quirks.has(Quirk::EarlyQueueDisable) {
            // Bug: reads 0 at once; the ring state still shows where the queue resumed.
            slot.ring_state = slot.resumed;
            slot.late_final = Some((last, latency.max(1)));
            slot.state = QueueState::Disabled;
        } else {
            slot.ring_state = last;
            slot.state = QueueState::Stopping {
                reads_left: latency,
            };
        }
        res
    }

    /// Resets queue `q` alone (queue_reset = 1, virtio 1.2 2.6.1.1): the ring and its
    /// in-flight work are dropped unpublished (2.6.1.1.1: no request of the queue executed and
    /// no notification for it after the reset), every register goes back to its reset value
    /// and the ring state to the default one (split 0/0; packed offset 0 with both wrap counters
    /// 1, 2.8.1), as the LM block then reads it. Nothing of another queue, of the receive FIFO
    /// or of the dirty log changes. queue_reset reads 1 for `disable_latency_reads` reads.
    pub(crate) fn reset_queue(&mut self, q: u16, packed: bool) {
        let keep = self.params.quirks.has(Quirk::RingResetKeepsState);
        let latency = self.params.disable_latency_reads;
        let mut lane = self.lanes.lock(q);
        let slot = &mut lane.slot;
        let old = slot.ring_state();
        let mut fresh = QueueSlot::new(self.params.queue_size_max);
        fresh.ring_state = if keep {
            // Bug (quirk ring-reset-keeps-state): the indices survive the reset.
            old
        } else if packed {
            (PACKED_RESET_INDEX, PACKED_RESET_INDEX)
        } else {
            (0, 0)
        };
        fresh.resumed = fresh.ring_state;
        fresh.state = if latency == 0 {
            QueueState::Reset
        } else {
            QueueState::Resetting {
                reads_left: latency,
            }
        };
        *slot = fresh;
    }

    /// Publishes queue `q`'s completed work (pause).
    pub(crate) fn flush(&mut self, q: u16) -> Result<(), DeviceFault> {
        let mut lane = self.lanes.lock(q);
        let Lane { slot, dma, .. } = &mut *lane;
        match &mut slot.state {
            QueueState::Enabled(ring) => ring.flush_used(dma),
            _ => Ok(()),
        }
    }

    /// Queue `q`'s ring state as the LM block reads it.
    pub(crate) fn lm_ring_state(&mut self, q: u16) -> (u16, u16) {
        let stale = self.params.quirks.has(Quirk::StaleUsedIdx);
        self.lanes.lock(q).slot.lm_ring_state(stale)
    }

    /// Sets queue `q`'s ring state from an LM write (`f` maps the current state to the new
    /// one). False when refused: only a disabled queue's state is writable (the vDPA talk:
    /// "R/W vring index").
    pub(crate) fn write_ring_state(
        &mut self,
        q: u16,
        f: impl FnOnce((u16, u16)) -> (u16, u16),
    ) -> bool {
        let mut lane = self.lanes.lock(q);
        let slot = &mut lane.slot;
        if !slot.state.is_programmable() || self.params.quirks.has(Quirk::RingStateReadOnly) {
            return false;
        }
        slot.late_final = None;
        slot.ring_state = f(slot.ring_state);
        true
    }

    /// Sets the queue pairs in use from DPDK's IFCVF_MQ_OFFSET register if it is in range.
    pub(crate) fn set_mq_pairs(&mut self, n: u32) {
        if (1..=u32::from(self.params.queue_pairs)).contains(&n) {
            self.net.curr_pairs = n as u16;
            self.steering_changed();
        }
    }

    /// Processes queue `q` until it has no more work (RX: until the inbox is empty or buffers
    /// run out; TX also delivers what it looped back).
    ///
    /// Returns [`Service::More`] when a TX queue used up its budget: the caller services it
    /// again after letting others take the lock.
    pub(crate) fn service(
        &mut self,
        q: u16,
        dp: &mut Datapath<'_>,
    ) -> Result<Service, DeviceFault> {
        if q == self.params.ctrl_queue {
            self.service_ctrl(q, dp).map(|()| Service::Done)
        } else if !self.is_tx_queue(q) {
            // Frames left past the RX budget are delivered before the call lets the lock go
            // (`Device::deliver_held`), budget by budget.
            self.service_rx(dp, self.rx_budget()).map(|_| Service::Done)
        } else {
            let s = self.service_tx(q, dp)?;
            self.service_rx(dp, self.rx_budget())?;
            Ok(s)
        }
    }

    /// Most received frames one delivery takes before the lock is offered: a TX queue's
    /// budget ([`crate::DeviceConfig::service_budget`]) per queue pair in use, as a round of
    /// TX services gives each busy queue one budget.
    pub(crate) fn rx_budget(&self) -> u32 {
        self.params
            .service_budget
            .saturating_mul(u32::from(self.net.curr_pairs.max(1)))
    }

    /// Whether `iova` is inside the dirty log.
    pub(crate) fn in_log(&self, iova: u64) -> bool {
        self.logging.is_some_and(|l| iova >= l.base && iova < l.end)
    }
}
