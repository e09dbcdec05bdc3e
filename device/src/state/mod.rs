//! The device's mutable state and its register semantics (everything behind the device lock).

mod access;
pub mod common_cfg;
pub mod lm_block;
pub mod pci_function;
mod queue_slot;

use crate::config::DeviceConfig;
use crate::counters::{DeviceCounters, QueueCounters};
use crate::fault::DeviceFault;
use crate::interrupt::InterruptSink;
use crate::pci::ConfigEffect;
use crate::port::{Port, RxInbox};
use crate::queue::chain::{Chain, Desc, RingSetup};
use crate::queue::Ring;
use crate::quirks::Quirk;
use crate::transport::StatusChange;
use access::{mask, merge, put, to_u64};
use bar_registers::model::{Access, Decoded, Register};
use bar_registers::virtio::{bits, common, device_status, isr, net_cfg, net_status};
use bar_registers::virtio::{offered_mask, NO_VECTOR};
use bar_registers::DeviceLayout;
use common_cfg::{CommonCfg, CommonRead, CommonWrite};
use dma::DmaEngine;
use lm_block::{LmBlock, LmRead, LmWrite};
use pci_function::{PciFunction, Raised};
pub use queue_slot::{QueueSlot, QueueState};
use std::sync::Arc;

/// virtio-net device state beyond registers: config fields, RX mode, steering.
#[derive(Debug)]
pub struct NetState {
    pub mac: [u8; 6],
    pub status: u16,
    /// Queue pairs in use (1 until VQ_PAIRS_SET, 5.1.6.5.5).
    pub curr_pairs: u16,
    pub promisc: bool,
    pub allmulti: bool,
    pub uc_table: Vec<[u8; 6]>,
    pub mc_table: Vec<[u8; 6]>,
    /// Automatic receive steering (5.1.6.5.6.1): flow hash bucket -> last TX queue pair.
    pub flows: Vec<u16>,
}

pub const FLOW_BUCKETS: usize = 1024;

/// A packed queue's LM ring state index at reset: offset 0, wrap counter 1 (2.8.1).
pub use bar_registers::ring::PACKED_RESET_INDEX;

impl NetState {
    fn new(mac: [u8; 6]) -> Self {
        NetState {
            mac,
            status: net_status::LINK_UP,
            curr_pairs: 1,
            promisc: true,
            allmulti: true,
            uc_table: Vec::new(),
            mc_table: Vec::new(),
            flows: vec![u16::MAX; FLOW_BUCKETS],
        }
    }
}

/// All device state.
pub struct DeviceState {
    pub layout: Arc<DeviceLayout>,
    pub cfg: DeviceConfig,
    pub function: PciFunction,
    pub common: CommonCfg,
    pub queues: Vec<QueueSlot>,
    pub net: NetState,
    pub lm: LmBlock,
    pub dma: DmaEngine,
    pub port: Arc<dyn Port>,
    pub inbox: Arc<RxInbox>,
    pub counters: DeviceCounters,
    /// The first fault since the last reset (DEVICE_NEEDS_RESET is set while this is Some).
    pub fault: Option<DeviceFault>,
    pub chain: Chain,
    pub rx_descs: Vec<Desc>,
    pub buf: Vec<u8>,
    /// Paused (migration STOP, see snapshot.rs): no queue is serviced and no DMA is done;
    /// doorbells and inbox frames wait for the resume.
    pub paused: bool,
}

/// Feature bits a device with this configuration offers (the declared set, less what a quirk
/// or the configuration removes).
fn offered(cfg: &DeviceConfig) -> u64 {
    let mut m = offered_mask();
    if cfg.quirks.has(Quirk::NoGuestAnnounce) {
        m &= !(1u64 << bits::GUEST_ANNOUNCE);
    }
    if !cfg.offer_packed {
        m &= !(1u64 << bits::RING_PACKED);
    }
    m
}

impl DeviceState {
    pub fn new(
        layout: Arc<DeviceLayout>,
        cfg: DeviceConfig,
        dma: DmaEngine,
        port: Arc<dyn Port>,
        inbox: Arc<RxInbox>,
        sink: Arc<dyn InterruptSink>,
    ) -> Self {
        let nq = layout.num_queues;
        let mut dma = dma;
        if cfg.quirks.has(Quirk::LogSkipsUsedRing) {
            dma.set_unlogged_kinds(&[dma::DmaKind::RingWrite]);
        }
        DeviceState {
            function: PciFunction::new(&layout, cfg.msix_owner, sink),
            common: CommonCfg::new(offered(&cfg), nq, layout.msix_vectors),
            queues: (0..nq)
                .map(|_| QueueSlot::new(cfg.layout.queue_size_max))
                .collect(),
            net: NetState::new(cfg.layout.mac),
            lm: LmBlock::new(cfg.layout.lm_layout, nq),
            dma,
            port,
            inbox,
            counters: DeviceCounters {
                queues: vec![QueueCounters::default(); nq.into()],
                ..Default::default()
            },
            fault: None,
            chain: Chain::default(),
            rx_descs: Vec::new(),
            buf: Vec::with_capacity(65 * 1024),
            paused: false,
            layout,
            cfg,
        }
    }

    /// Feature bits this device offers (the declared set, less what a quirk removes).
    pub fn offered(&self) -> u64 {
        self.common.offered()
    }

    /// Whether a quirk is on.
    pub fn quirk(&self, q: Quirk) -> bool {
        self.cfg.quirks.has(q)
    }

    /// Whether feature `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.common.has(bit)
    }

    // ---------------------------------------------------------------- reset

    /// Device reset (virtio 1.2 2.4): status 0 write or function reset. Everything the driver
    /// programmed goes back to its reset value; the MSI-X table and PCI config are not touched
    /// (they belong to the PCI function, reset only by FLR).
    pub fn virtio_reset(&mut self) {
        let _span = tracing::debug_span!("virtio_reset").entered();
        let _ = self.dma.flush_log();
        self.common.reset();
        let size = self.cfg.layout.queue_size_max;
        for q in &mut self.queues {
            *q = QueueSlot::new(size);
        }
        self.function.intx_line_low();
        self.net = NetState::new(self.cfg.layout.mac);
        self.lm.reset();
        self.dma.set_logging(None);
        self.fault = None;
        self.counters.rx_dropped_reset += self.inbox.clear() as u64;
        self.counters.resets += 1;
    }

    /// Function level reset (PCIe FLR, vfio DEVICE_RESET): virtio reset plus PCI state.
    pub fn function_reset(&mut self) {
        self.virtio_reset();
        self.function.reset();
        let (mps, mrrs) = self.function.pcie_mps_mrrs();
        self.dma.set_pcie_limits(mps, mrrs);
    }

    // ---------------------------------------------------------------- faults and interrupts

    /// Enters DEVICE_NEEDS_RESET (2.1.2): stop every queue, tell the driver via the config
    /// interrupt, count the cause.
    pub fn fail(&mut self, fault: DeviceFault) {
        self.counters.faults[fault.kind_index()] += 1;
        if self.fault.is_some() {
            return;
        }
        tracing::warn!(%fault, "device needs reset");
        self.counters.needs_reset += 1;
        self.fault = Some(fault);
        self.common.set_needs_reset();
        self.config_interrupt();
    }

    /// Raises the configuration change interrupt (4.1.4.5: ISR bit 1 and the config vector).
    pub fn config_interrupt(&mut self) {
        self.counters.config_interrupts += 1;
        self.common.raise_isr(isr::CONFIG);
        self.raise(self.common.config_msix_vector());
    }

    /// Raises queue `q`'s interrupt.
    pub fn queue_interrupt(&mut self, q: u16) {
        self.common.raise_isr(isr::QUEUE);
        self.counters.queues[usize::from(q)].interrupts += 1;
        let v = self.queues[usize::from(q)].msix_vector;
        self.raise(v);
    }

    fn raise(&mut self, vector: u16) {
        match self.function.raise(vector) {
            Raised::Delivered => {}
            Raised::NoVector => self.counters.interrupts_no_vector += 1,
            Raised::PendingMasked => self.counters.interrupts_pending_masked += 1,
        }
    }

    // ---------------------------------------------------------------- config space

    pub fn config_read(&mut self, off: u64, data: &mut [u8]) {
        if let Some((bar, boff, blen)) = self.function.pci_cfg_read_window(off, data.len()) {
            let mut v = [0u8; 4];
            let n = blen.min(4);
            if matches!(n, 1 | 2 | 4) {
                self.bar_read(bar.into(), boff, &mut v[..n]);
            }
            self.function.set_pci_cfg_data(u32::from_le_bytes(v));
        }
        self.function.config_read(off, data);
    }

    pub fn config_write(&mut self, off: u64, data: &[u8]) {
        match self.function.config_write(off, data) {
            ConfigEffect::None | ConfigEffect::Command | ConfigEffect::MsixControl => {}
            ConfigEffect::FunctionLevelReset => self.function_reset(),
            ConfigEffect::PciCfgWrite(bar, boff, blen, v) => {
                let n = blen.min(4);
                if matches!(n, 1 | 2 | 4) {
                    self.bar_write(bar.into(), boff, &v.to_le_bytes()[..n]);
                }
            }
        }
        // Device Control's MPS / MRRS feed the bus model's TLP sizes.
        let (mps, mrrs) = self.function.pcie_mps_mrrs();
        self.dma.set_pcie_limits(mps, mrrs);
    }

    // ---------------------------------------------------------------- BAR dispatch

    /// Decodes an access against the block it falls in; None (and counted) if illegal.
    fn decode<'a>(
        layout: &'a DeviceLayout,
        counters: &mut DeviceCounters,
        bar: u8,
        off: u64,
        len: usize,
    ) -> Option<(&'a Register, u64, u64)> {
        let Some((block, rel)) = layout.bar_block(bar, off) else {
            counters.bad_register_accesses += 1;
            return None;
        };
        match block.decode(rel, len as u64) {
            Decoded::Reg { reg, rel: r } => Some((reg, r, rel)),
            _ => {
                counters.bad_register_accesses += 1;
                None
            }
        }
    }

    /// A BAR read; bytes the device does not decode read as 0.
    pub fn bar_read(&mut self, bar: u32, off: u64, data: &mut [u8]) {
        data.fill(0);
        let layout = self.layout.clone();
        let Ok(bar) = u8::try_from(bar) else { return };
        if let Some(res) = self.function.msix_read(&layout, bar, off, data) {
            if res.is_err() {
                self.counters.bad_register_accesses += 1;
            }
            return;
        }
        let Some((reg, r, _)) = Self::decode(&layout, &mut self.counters, bar, off, data.len())
        else {
            return;
        };
        if reg.access == Access::Wo {
            return;
        }
        let v = if let Some(w) = layout.common.contains(bar, off) {
            self.common_read(w - r)
        } else if layout.isr.contains(bar, off).is_some() {
            // 4.1.4.5.1: reading ISR clears it and deasserts INTx.
            let v = self.common.take_isr();
            self.function.intx_deassert();
            v.into()
        } else if let Some(w) = layout.device_cfg.contains(bar, off) {
            self.net_cfg_read(w - r, reg.reset)
        } else if let Some(w) = layout.lm.contains(bar, off) {
            self.lm_read(w - r, r, data.len())
        } else {
            0
        };
        put(data, (v >> (8 * r)) & mask(data.len()));
    }

    /// A BAR write; writes the device does not decode are ignored (and counted).
    pub fn bar_write(&mut self, bar: u32, off: u64, data: &[u8]) {
        let layout = self.layout.clone();
        let Ok(bar) = u8::try_from(bar) else { return };
        let val = to_u64(data);
        if let Some(res) = self.function.msix_write(&layout, bar, off, data.len(), val) {
            if res.is_err() {
                self.counters.bad_register_accesses += 1;
            }
            return;
        }
        if let Some(rel) = layout.notify.contains(bar, off) {
            // Doorbell: 16-bit queue index (32-bit accepted). The address selects the queue.
            match layout.doorbell_queue(off) {
                Some(q) if q < layout.num_queues && matches!(data.len(), 2 | 4) => self.doorbell(q),
                _ => {
                    let _ = rel;
                    self.counters.bad_register_accesses += 1;
                }
            }
            return;
        }
        let Some((reg, r, _)) = Self::decode(&layout, &mut self.counters, bar, off, data.len())
        else {
            return;
        };
        if matches!(reg.access, Access::Ro | Access::Rc) {
            self.counters.ignored_register_writes += 1;
            return;
        }
        if let Some(w) = layout.common.contains(bar, off) {
            self.common_write(w - r, r, data.len(), val);
        } else if let Some(w) = layout.lm.contains(bar, off) {
            self.lm_write(w - r, r, data.len(), val);
        } else {
            self.counters.ignored_register_writes += 1;
        }
    }

    // ---------------------------------------------------------------- common cfg

    fn common_read(&mut self, reg: u64) -> u64 {
        match self.common.read(reg) {
            CommonRead::Value(v) => v,
            CommonRead::Queue(q) => self.queue_read(q, reg),
        }
    }

    /// A queue register of queue `q` (4.1.4.3).
    fn queue_read(&mut self, q: u16, reg: u64) -> u64 {
        let slot = &mut self.queues[usize::from(q)];
        match reg {
            common::QUEUE_SIZE => slot.size.into(),
            common::QUEUE_MSIX_VECTOR => slot.msix_vector.into(),
            common::QUEUE_ENABLE => match &mut slot.state {
                QueueState::Enabled(_) => 1,
                QueueState::Disabled => 0,
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
            common::QUEUE_NOTIFY_OFF => q.into(),
            common::QUEUE_DESC => slot.desc,
            common::QUEUE_DRIVER => slot.driver,
            common::QUEUE_DEVICE => slot.device,
            _ => 0,
        }
    }

    fn common_write(&mut self, reg: u64, rel: u64, len: usize, val: u64) {
        match self.common.write(reg, val) {
            CommonWrite::Done => {}
            CommonWrite::Ignored => self.counters.ignored_register_writes += 1,
            CommonWrite::Status(change) => self.status_changed(change),
            CommonWrite::Queue(q) => self.queue_write(usize::from(q), reg, rel, len, val),
        }
    }

    fn queue_write(&mut self, q: usize, reg: u64, rel: u64, len: usize, val: u64) {
        let enabled = !matches!(self.queues[q].state, QueueState::Disabled);
        if reg == common::QUEUE_ENABLE {
            match (val as u16, enabled) {
                (1, false) => self.enable_queue(q as u16),
                (0, true) => self.disable_queue(q as u16),
                _ => self.counters.ignored_register_writes += 1,
            }
            return;
        }
        // 4.1.4.3.2: the driver MUST NOT change queue configuration while the queue is enabled.
        if enabled && reg != common::QUEUE_MSIX_VECTOR {
            self.counters.ignored_register_writes += 1;
            return;
        }
        let nvec = self.layout.msix_vectors;
        let max = self.cfg.layout.queue_size_max;
        let packed = self.has(bits::RING_PACKED);
        let slot = &mut self.queues[q];
        match reg {
            common::QUEUE_SIZE => {
                let v = val as u16;
                // 2.7: a split queue's size is a power of two; 2.8: a packed one's need not be.
                if v == 0 || v > max || (!packed && !v.is_power_of_two()) {
                    self.counters.ignored_register_writes += 1;
                } else {
                    slot.size = v;
                }
            }
            common::QUEUE_MSIX_VECTOR => {
                let v = val as u16;
                slot.msix_vector = if v < nvec { v } else { NO_VECTOR };
            }
            common::QUEUE_DESC => slot.desc = merge(slot.desc, rel, len, val),
            common::QUEUE_DRIVER => slot.driver = merge(slot.driver, rel, len, val),
            common::QUEUE_DEVICE => slot.device = merge(slot.device, rel, len, val),
            _ => self.counters.ignored_register_writes += 1,
        }
    }

    /// What a device_status write did beyond the register.
    fn status_changed(&mut self, change: StatusChange) {
        let _span = tracing::debug_span!("device_status", ?change).entered();
        match change {
            StatusChange::Reset => self.virtio_reset(),
            StatusChange::Accepted => {}
            StatusChange::FeaturesAccepted => {
                if self.has(bits::RING_PACKED) {
                    // 2.8.1: both wrap counters start at 1, so a packed queue's LM ring state
                    // resets to offset 0, wrap 1 (vhost-user's 0x8000) unless the driver set it.
                    for q in &mut self.queues {
                        if q.ring_state == (0, 0) && matches!(q.state, QueueState::Disabled) {
                            q.ring_state = (PACKED_RESET_INDEX, PACKED_RESET_INDEX);
                        }
                    }
                }
                let features = self.common.negotiated();
                tracing::debug!(
                    features = format_args!("{features:#x}"),
                    "features negotiated"
                );
            }
            StatusChange::FeaturesRefused => {
                self.counters.features_refused += 1;
                if let Some(e) = self.common.feature_error() {
                    tracing::info!(%e, "FEATURES_OK refused");
                }
            }
            StatusChange::DriverOk => self.service_all(),
            StatusChange::Failed => {}
            StatusChange::Rejected => self.counters.bad_status_writes += 1,
        }
    }

    pub(crate) fn enable_queue(&mut self, q: u16) {
        let _span = tracing::debug_span!("queue_enable", queue = q).entered();
        // Queues are configured after FEATURES_OK (3.1.1 step 7): the ring format depends on them.
        if !self.common.status().features_ok() {
            self.counters.ignored_register_writes += 1;
            return;
        }
        let ctrl = q == self.layout.ctrl_queue();
        if ctrl && !self.has(bits::CTRL_VQ) {
            self.counters.ignored_register_writes += 1;
            return;
        }
        let slot = &self.queues[usize::from(q)];
        let (avail, used) = slot.ring_state;
        let setup = RingSetup {
            queue: q,
            size: slot.size,
            desc: slot.desc,
            avail: slot.driver,
            used: slot.device,
            last_avail: avail,
            last_used: used,
            event_idx: self.has(bits::EVENT_IDX),
            indirect: self.has(bits::INDIRECT_DESC),
        };
        match Ring::new(setup, self.has(bits::RING_PACKED)) {
            Ok(mut ring) => {
                ring.set_ignore_used_event(self.quirk(Quirk::IgnoresEventIdx));
                let slot = &mut self.queues[usize::from(q)];
                slot.resumed = (avail, used);
                slot.late_final = None;
                slot.state = QueueState::Enabled(Box::new(ring));
                if self.common.status().running() {
                    self.service(q);
                }
            }
            Err(f) => self.fail(f),
        }
    }

    fn disable_queue(&mut self, q: u16) {
        let _span = tracing::debug_span!("queue_disable", queue = q).entered();
        let slot = &mut self.queues[usize::from(q)];
        if let QueueState::Enabled(ring) = &mut slot.state {
            // In-flight work: used elements not yet published are published now, so the ring
            // state that becomes readable equals used->idx in memory.
            let res = ring.flush_used(&mut self.dma);
            let last = ring.ring_state();
            if self.cfg.quirks.has(Quirk::EarlyQueueDisable) {
                // Bug: reads 0 at once; the ring state still shows where the queue resumed.
                slot.ring_state = slot.resumed;
                slot.late_final = Some((last, self.cfg.disable_latency_reads.max(1)));
                slot.state = QueueState::Disabled;
            } else {
                slot.ring_state = last;
                slot.state = QueueState::Stopping {
                    reads_left: self.cfg.disable_latency_reads,
                };
            }
            self.check(res);
        }
    }

    // ---------------------------------------------------------------- device config

    fn net_cfg_read(&self, reg: u64, reset: u64) -> u64 {
        match reg {
            net_cfg::MAC => self
                .net
                .mac
                .iter()
                .enumerate()
                .fold(0u64, |v, (i, b)| v | (u64::from(*b) << (8 * i))),
            // 5.1.4.2: without VIRTIO_NET_F_STATUS the driver assumes the link is up; we report it anyway.
            net_cfg::STATUS => self.net.status.into(),
            // max_virtqueue_pairs, mtu, speed, duplex: constants, as declared.
            _ => reset,
        }
    }

    /// Changes the device config and tells the driver (2.5.1 config_generation, 4.1.4.5 ISR).
    pub fn config_changed(&mut self) {
        self.common.bump_generation();
        if self.common.status().value() & device_status::DRIVER_OK != 0 {
            self.config_interrupt();
        }
    }

    // ---------------------------------------------------------------- LM block

    fn lm_read(&mut self, reg: u64, rel: u64, len: usize) -> u64 {
        match self.lm.read(reg) {
            LmRead::Value(v) => v,
            LmRead::LoggingActive => u64::from(self.dma.logging().is_some()),
            LmRead::RingState(q) => {
                let stale = self.quirk(Quirk::StaleUsedIdx);
                let state = self.queues[usize::from(q)].lm_ring_state(stale);
                self.lm
                    .ring_state_value(state, self.has(bits::RING_PACKED), rel, len)
            }
        }
    }

    fn lm_write(&mut self, reg: u64, rel: u64, len: usize, val: u64) {
        match self.lm.write(reg, rel, len, val) {
            LmWrite::Logging => self.apply_logging(),
            LmWrite::MqPairs(n) => {
                if (1..=u32::from(self.cfg.layout.queue_pairs)).contains(&n) {
                    self.net.curr_pairs = n as u16;
                }
            }
            LmWrite::RingState(q) => self.ring_state_write(q, rel, len, val),
            LmWrite::Ignored => self.counters.ignored_register_writes += 1,
        }
    }

    fn ring_state_write(&mut self, q: u16, rel: u64, len: usize, val: u64) {
        let packed = self.has(bits::RING_PACKED);
        let slot = &mut self.queues[usize::from(q)];
        // Writable only while the queue is disabled (the vDPA talk: "R/W vring index").
        if !matches!(slot.state, QueueState::Disabled)
            || self.cfg.quirks.has(Quirk::RingStateReadOnly)
        {
            self.counters.ignored_register_writes += 1;
            return;
        }
        slot.late_final = None;
        slot.ring_state = self
            .lm
            .ring_state_written(slot.ring_state, packed, rel, len, val);
    }

    pub(crate) fn apply_logging(&mut self) {
        let cfg = self
            .lm
            .log_config(self.cfg.log_granularity, self.quirk(Quirk::LogIgnoresEnd));
        if self.dma.logging() != cfg {
            tracing::debug!(?cfg, "dirty logging");
            self.dma.set_logging(cfg);
        }
    }

    // ---------------------------------------------------------------- datapath entry points

    /// A doorbell for queue `q`.
    pub fn doorbell(&mut self, q: u16) {
        self.counters.queues[usize::from(q)].doorbells += 1;
        if !self.common.status().running()
            || !matches!(self.queues[usize::from(q)].state, QueueState::Enabled(_))
        {
            self.counters.spurious_doorbells += 1;
            return;
        }
        self.service(q);
    }

    /// Runs every enabled queue once (DRIVER_OK, resume after restore).
    pub fn service_all(&mut self) {
        for q in 0..self.layout.num_queues {
            if matches!(self.queues[usize::from(q)].state, QueueState::Enabled(_)) {
                self.service(q);
            }
        }
    }

    /// Processes queue `q` until it has no more work (RX: until the inbox is empty or buffers
    /// run out).
    pub fn service(&mut self, q: u16) {
        if !self.common.status().running() || self.paused {
            return;
        }
        if !self.function.bus_master() {
            self.counters.dma_blocked_no_bus_master += 1;
            return;
        }
        let res = if q == self.layout.ctrl_queue() {
            self.service_ctrl(q)
        } else if q.is_multiple_of(2) {
            self.service_rx()
        } else {
            self.service_tx(q).and_then(|()| self.service_rx())
        };
        self.check(res);
    }

    /// Turns a datapath result into DEVICE_NEEDS_RESET when it failed, attributing faults in
    /// the dirty log (a publish flushes the log first) to the log, and picks up log faults of
    /// writes whose marking was deferred.
    pub(crate) fn check(&mut self, res: Result<(), DeviceFault>) {
        if let Err(f) = res {
            let f = match f {
                DeviceFault::Dma { fault, .. } if self.in_log(fault.iova()) => {
                    DeviceFault::LogDma(fault)
                }
                f => f,
            };
            self.fail(f);
        }
        if let Some(f) = self.dma.take_log_fault() {
            self.fail(DeviceFault::LogDma(f));
        }
    }

    fn in_log(&self, iova: u64) -> bool {
        self.dma
            .logging()
            .is_some_and(|l| iova >= l.base && iova < l.end)
    }

    /// Delivers waiting frames if the device can take them.
    pub fn service_inbox(&mut self) {
        if self.common.status().running()
            && !self.paused
            && self.function.bus_master()
            && !self.inbox.is_empty()
        {
            let res = self.service_rx();
            self.check(res);
        }
    }

    /// Pokes the datapath after the link or announce state changed.
    pub fn set_link(&mut self, up: bool) {
        let s = if up {
            self.net.status | net_status::LINK_UP
        } else {
            self.net.status & !net_status::LINK_UP
        };
        if s != self.net.status {
            self.net.status = s;
            self.config_changed();
        }
    }

    /// Asks the driver to announce itself (GUEST_ANNOUNCE, 5.1.6.5.4): ANNOUNCE status bit and a
    /// config interrupt. Returns false when the driver did not negotiate GUEST_ANNOUNCE.
    pub fn announce(&mut self) -> bool {
        if !self.has(bits::GUEST_ANNOUNCE) || !self.has(bits::STATUS) {
            return false;
        }
        self.net.status |= net_status::ANNOUNCE;
        self.config_changed();
        true
    }
}
