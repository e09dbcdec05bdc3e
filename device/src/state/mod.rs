//! The device's mutable state and its register semantics (everything behind the device lock).
//!
//! [`DeviceState`] is composed of parts that each own their state and its section of the
//! device-state stream:
//!
//! - [`pci_function::PciFunction`]: config space, MSI-X, interrupt delivery (PCI 3.0 6.8.2);
//! - [`common_cfg::CommonCfg`]: the virtio common configuration, ISR and device_status
//!   (virtio 1.2 4.1.4.3, 2.1, the table in [`crate::transport`]);
//! - [`lm_block::LmBlock`]: the live-migration registers (DPDK ifcvf.h / Linux ifcvf_base.h);
//! - [`crate::net::engine::NetEngine`]: queues, DMA, port, receive FIFO, virtio-net state and
//!   the datapath.
//!
//! This module decodes BAR and config accesses to the part they address and keeps the rules
//! that involve several parts: resets (2.4, FLR), DEVICE_NEEDS_RESET (2.1.2), queue enable only
//! after FEATURES_OK (3.1.1 step 7), the datapath only with DRIVER_OK and bus mastering, and the
//! interrupts and config changes the datapath leaves behind.

pub(crate) mod access;
pub mod common_cfg;
pub mod lm_block;
mod off_lock;
pub mod pci_function;
mod queue_slot;
#[cfg(test)]
mod ring_reset_tests;

use crate::config::DeviceConfig;
use crate::counters::{DeviceCounters, QueueCounters};
use crate::fault::DeviceFault;
use crate::interrupt::{InterruptSink, IsrStatus};
use crate::net::engine::{Datapath, NetEngine, Service};
use crate::pci::ConfigEffect;
use crate::port::{Port, RxInbox};
use crate::quirks::Quirk;
use crate::transport::StatusChange;
use access::{mask, put, to_u64};
use bar_registers::model::{Access, Decoded, Dir, Register};
use bar_registers::virtio::{bits, common, device_status, isr, net_cfg, net_status};
use bar_registers::DeviceLayout;
use common_cfg::{CommonCfg, CommonRead, CommonWrite};
use dma::DmaEngine;
use lm_block::{LmBlock, LmRead, LmWrite};
use pci_function::{PciFunction, Raised};
pub use queue_slot::{QueueSlot, QueueState};
use std::sync::Arc;

pub use crate::net::engine::{NetState, FLOW_BUCKETS};
/// A packed queue's LM ring state index at reset: offset 0, wrap counter 1 (2.8.1).
pub use bar_registers::ring::PACKED_RESET_INDEX;

/// All device state: the parts, the counters, the fault and the paused flag.
pub struct DeviceState {
    pub(crate) layout: Arc<DeviceLayout>,
    pub(crate) cfg: DeviceConfig,
    pub(crate) function: PciFunction,
    pub(crate) common: CommonCfg,
    pub(crate) lm: LmBlock,
    pub(crate) engine: NetEngine,
    pub(crate) counters: DeviceCounters,
    /// The first fault since the last reset (DEVICE_NEEDS_RESET is set while this is Some).
    pub(crate) fault: Option<DeviceFault>,
    /// Queues whose interrupt a service call left to raise (reused between calls).
    interrupts: Vec<u16>,
    /// Paused (migration STOP, see snapshot.rs): no queue is serviced and no DMA is done;
    /// doorbells and inbox frames wait for the resume.
    pub(crate) paused: bool,
    /// The notify window in shared memory, if doorbells also come that way: every reset
    /// clears its slots (a kick from before the reset is not delivered after it).
    pub(crate) notify_area: Option<Arc<crate::doorbell::NotifyArea>>,
    /// TX queues whose last service used up its budget (chains may remain), in the order they
    /// ran out, each once: [`crate::Device`] services them again after offering the
    /// lock to whoever waits for it ([`DeviceState::service_pending`]).
    pending: Vec<u16>,
    /// TX budgets running on their lanes outside the device lock now ([`crate::Device`];
    /// `off_lock.rs`).
    pub(crate) unlocked_tx: u32,
    /// Callers waiting for those budgets to end before they act ([`crate::Device`]'s
    /// quiesce): while any waits, no new budget leaves the lock.
    pub(crate) quiescing: u32,
    /// Flow buckets a TX budget outside the lock noted, between its lane and the flow table
    /// (kept for its capacity).
    pub(crate) off_lock_flows: Vec<u16>,
    /// The TX queues a doorbell take defers to run outside the lock (kept for its capacity).
    pub(crate) off_lock_queues: Vec<u16>,
}

/// Feature bits a device with this configuration offers (its profile's set, less what a quirk
/// removes).
pub(crate) fn offered(cfg: &DeviceConfig) -> u64 {
    let mut m = cfg.profile.features;
    if cfg.quirks.has(Quirk::NoGuestAnnounce) {
        m &= !(1u64 << bits::GUEST_ANNOUNCE);
    }
    m
}

impl DeviceState {
    pub(crate) fn new(
        layout: Arc<DeviceLayout>,
        cfg: DeviceConfig,
        dma: Vec<DmaEngine>,
        port: Arc<dyn Port>,
        inbox: Arc<RxInbox>,
        sink: Arc<dyn InterruptSink>,
        isr: IsrStatus,
    ) -> Self {
        let nq = layout.num_queues;
        DeviceState {
            function: PciFunction::new(&layout, cfg.msix_owner, sink, isr.clone()),
            common: CommonCfg::new(offered(&cfg), nq, layout.msix_vectors, isr),
            lm: LmBlock::new(cfg.layout.lm_layout, nq),
            engine: NetEngine::new(&cfg, nq, layout.ctrl_queue(), dma, port, inbox),
            counters: DeviceCounters {
                queues: vec![QueueCounters::default(); nq.into()],
                ..Default::default()
            },
            fault: None,
            interrupts: Vec::new(),
            paused: false,
            notify_area: None,
            pending: Vec::new(),
            unlocked_tx: 0,
            quiescing: 0,
            off_lock_flows: Vec::new(),
            off_lock_queues: Vec::new(),
            layout,
            cfg,
        }
    }

    /// Whether a quirk is on.
    pub(crate) fn quirk(&self, q: Quirk) -> bool {
        self.cfg.quirks.has(q)
    }

    /// Switches a quirk on a running device. Each quirk takes effect where the device decides
    /// it: the datapath and ring-state quirks at once, `log-ignores-end` at the next logging
    /// start, `no-guest-announce` at the next feature negotiation (the offered set changes,
    /// what was negotiated stays).
    pub(crate) fn set_quirk(&mut self, q: Quirk, on: bool) {
        self.cfg.quirks = if on {
            self.cfg.quirks.with(q)
        } else {
            self.cfg.quirks.without(q)
        };
        self.common.set_offered(offered(&self.cfg));
        self.engine.set_quirks(self.cfg.quirks);
    }

    /// Whether feature `bit` was negotiated.
    pub(crate) fn has(&self, bit: u32) -> bool {
        self.common.has(bit)
    }

    // ---------------------------------------------------------------- reset

    /// Device reset (virtio 1.2 2.4): status 0 write or function reset. Everything the driver
    /// programmed goes back to its reset value; the MSI-X table and PCI config are not touched
    /// (they belong to the PCI function, reset only by FLR).
    pub(crate) fn virtio_reset(&mut self) {
        let _span = tracing::debug_span!("virtio_reset").entered();
        let dropped = self.engine.reset();
        self.common.reset();
        self.function.intx_line_low();
        self.lm.reset();
        if let Some(area) = &self.notify_area {
            area.clear();
        }
        self.fault = None;
        self.counters.rx_dropped_reset += dropped as u64;
        self.counters.resets += 1;
    }

    /// Function level reset (PCIe FLR, vfio DEVICE_RESET): virtio reset plus PCI state.
    pub(crate) fn function_reset(&mut self) {
        self.virtio_reset();
        self.function.reset();
        self.sync_pcie_limits();
    }

    /// Device Control's MPS / MRRS feed the bus model's TLP sizes.
    pub(crate) fn sync_pcie_limits(&mut self) {
        let (mps, mrrs) = self.function.pcie_mps_mrrs();
        self.engine.dma(|d| d.set_pcie_limits(mps, mrrs));
    }

    // ---------------------------------------------------------------- faults and interrupts

    /// Enters DEVICE_NEEDS_RESET (2.1.2): stop every queue, tell the driver via the config
    /// interrupt, count the cause.
    pub(crate) fn fail(&mut self, fault: DeviceFault) {
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
    pub(crate) fn config_interrupt(&mut self) {
        self.counters.config_interrupts += 1;
        self.common.raise_isr(isr::CONFIG);
        self.raise(self.common.config_msix_vector());
    }

    /// Raises queue `q`'s interrupt.
    pub(crate) fn queue_interrupt(&mut self, q: u16) {
        self.common.raise_isr(isr::QUEUE);
        self.counters.queues[usize::from(q)].interrupts += 1;
        let v = self
            .engine
            .queue(q)
            .map_or(bar_registers::virtio::NO_VECTOR, |l| l.slot.msix_vector);
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

    pub(crate) fn config_read(&mut self, off: u64, data: &mut [u8]) {
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

    pub(crate) fn config_write(&mut self, off: u64, data: &[u8]) {
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
        self.sync_pcie_limits();
    }

    // ---------------------------------------------------------------- BAR dispatch

    /// Decodes an access against the block it falls in; None (and counted) if illegal.
    fn decode<'a>(
        layout: &'a DeviceLayout,
        counters: &mut DeviceCounters,
        bar: u8,
        off: u64,
        len: usize,
        dir: Dir,
    ) -> Option<(&'a Register, u64, u64)> {
        let Some((block, rel)) = layout.bar_block(bar, off) else {
            counters.bad_register_accesses += 1;
            return None;
        };
        match block.decode(rel, len as u64, dir) {
            Decoded::Reg { reg, rel: r } => Some((reg, r, rel)),
            _ => {
                counters.bad_register_accesses += 1;
                None
            }
        }
    }

    /// A BAR read; bytes the device does not decode read as 0.
    pub(crate) fn bar_read(&mut self, bar: u32, off: u64, data: &mut [u8]) {
        data.fill(0);
        let layout = self.layout.clone();
        let Ok(bar) = u8::try_from(bar) else { return };
        if let Some(res) = self.function.msix_read(&layout, bar, off, data) {
            if res.is_err() {
                self.counters.bad_register_accesses += 1;
            }
            return;
        }
        let Some((reg, r, _)) =
            Self::decode(&layout, &mut self.counters, bar, off, data.len(), Dir::Read)
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
    pub(crate) fn bar_write(&mut self, bar: u32, off: u64, data: &[u8]) {
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
                Some(q) if q < layout.num_queues && matches!(data.len(), 2 | 4) => {
                    if self.notification_data_ok(q, val as u32) {
                        self.doorbell(q);
                    }
                }
                _ => {
                    let _ = rel;
                    self.counters.bad_register_accesses += 1;
                }
            }
            return;
        }
        let Some((reg, r, _)) = Self::decode(
            &layout,
            &mut self.counters,
            bar,
            off,
            data.len(),
            Dir::Write,
        ) else {
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
            // 4.1.4.3: queue_reset "exists only if VIRTIO_F_RING_RESET has been negotiated".
            CommonRead::Queue(_) if reg == common::QUEUE_RESET && !self.has(bits::RING_RESET) => 0,
            CommonRead::Queue(q) => self.engine.queue_read(q, reg),
        }
    }

    fn common_write(&mut self, reg: u64, rel: u64, len: usize, val: u64) {
        match self.common.write(reg, val) {
            CommonWrite::Done => {}
            CommonWrite::Ignored => self.counters.ignored_register_writes += 1,
            CommonWrite::Status(change) => self.status_changed(change),
            CommonWrite::Queue(q) => self.queue_write(q, reg, rel, len, val),
        }
    }

    fn queue_write(&mut self, q: u16, reg: u64, rel: u64, len: usize, val: u64) {
        let enabled = self
            .engine
            .queue(q)
            .is_some_and(|l| !l.slot.state.is_programmable());
        if reg == common::QUEUE_RESET {
            self.queue_reset_write(q, val);
            return;
        }
        if reg == common::QUEUE_ENABLE {
            match (val as u16, enabled) {
                (1, false) => self.enable_queue(q),
                (0, true) => self.disable_queue(q),
                _ => self.counters.ignored_register_writes += 1,
            }
            return;
        }
        let packed = self.has(bits::RING_PACKED);
        let nvec = self.layout.msix_vectors;
        if !self
            .engine
            .queue_write(q, reg, (rel, len), val, packed, nvec)
        {
            self.counters.ignored_register_writes += 1;
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
                    self.engine.packed_negotiated();
                }
                let features = self.common.negotiated();
                self.engine.apply_guest_offloads(features);
                // Once per driver bring-up: what the driver took is worth a line in serve's log.
                tracing::info!(
                    features = format_args!("{features:#x}"),
                    names = %(0..64)
                        .filter(|b| features & (1u64 << b) != 0)
                        .map(|b| bar_registers::virtio::feature_name(b).unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join(","),
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
        match self.engine.enable(q, self.common.negotiated()) {
            Ok(()) if self.common.status().running() => self.service(q),
            Ok(()) => {}
            Err(f) => self.fail(f),
        }
    }

    /// A queue_reset write (virtio 1.2 4.1.4.3, 2.6.1.1): 1 resets queue `q` alone when
    /// VIRTIO_F_RING_RESET was negotiated; anything else changes nothing and is counted
    /// (`queue_reset_refused`). A kick of the queue waiting in the shared notify window is
    /// dropped with it.
    fn queue_reset_write(&mut self, q: u16, val: u64) {
        let _span = tracing::debug_span!("queue_reset", queue = q).entered();
        let refused = if !self.has(bits::RING_RESET) {
            Some("VIRTIO_F_RING_RESET not negotiated")
        } else if val != 1 {
            Some("only 1 resets a queue")
        } else {
            None
        };
        if let Some(why) = refused {
            self.counters.queue_reset_refused += 1;
            tracing::info!(queue = q, value = val, why, "queue_reset write refused");
            return;
        }
        self.engine.reset_queue(q, self.has(bits::RING_PACKED));
        if let Some(area) = &self.notify_area {
            area.clear_slot(q);
        }
        self.counters.queue_resets += 1;
        tracing::info!(queue = q, "queue reset");
    }

    fn disable_queue(&mut self, q: u16) {
        let _span = tracing::debug_span!("queue_disable", queue = q).entered();
        let res = self.engine.disable(q);
        self.check(res);
    }

    // ---------------------------------------------------------------- device config

    fn net_cfg_read(&self, reg: u64, reset: u64) -> u64 {
        match reg {
            net_cfg::MAC => self
                .engine
                .net()
                .mac
                .iter()
                .enumerate()
                .fold(0u64, |v, (i, b)| v | (u64::from(*b) << (8 * i))),
            // 5.1.4.2: without VIRTIO_NET_F_STATUS the driver assumes the link is up; we report it anyway.
            net_cfg::STATUS => self.engine.net().status.into(),
            // max_virtqueue_pairs, mtu, speed, duplex: constants, as declared.
            _ => reset,
        }
    }

    /// Changes the device config and tells the driver (2.5.1 config_generation, 4.1.4.5 ISR).
    pub(crate) fn config_changed(&mut self) {
        self.common.bump_generation();
        if self.common.status().value() & device_status::DRIVER_OK != 0 {
            self.config_interrupt();
        }
    }

    // ---------------------------------------------------------------- LM block

    fn lm_read(&mut self, reg: u64, rel: u64, len: usize) -> u64 {
        match self.lm.read(reg) {
            LmRead::Value(v) => v,
            LmRead::LoggingActive => u64::from(self.engine.logging().is_some()),
            LmRead::RingState(q) => {
                let state = self.engine.lm_ring_state(q);
                // control path (a driver reads it when it stops a queue): worth a line
                tracing::info!(
                    queue = q,
                    last_avail = state.0,
                    last_used = state.1,
                    rel,
                    len,
                    "LM ring state read"
                );
                self.lm
                    .ring_state_value(state, self.has(bits::RING_PACKED), rel, len)
            }
        }
    }

    fn lm_write(&mut self, reg: u64, rel: u64, len: usize, val: u64) {
        match self.lm.write(reg, rel, len, val) {
            LmWrite::Logging => self.apply_logging(),
            LmWrite::MqPairs(n) => self.engine.set_mq_pairs(n),
            LmWrite::RingState(q) => self.ring_state_write(q, rel, len, val),
            LmWrite::Ignored => self.counters.ignored_register_writes += 1,
        }
    }

    fn ring_state_write(&mut self, q: u16, rel: u64, len: usize, val: u64) {
        let packed = self.has(bits::RING_PACKED);
        let lm = &self.lm;
        let written = self
            .engine
            .write_ring_state(q, |cur| lm.ring_state_written(cur, packed, rel, len, val));
        if !written {
            self.counters.ignored_register_writes += 1;
        }
    }

    pub(crate) fn apply_logging(&mut self) {
        let cfg = self
            .lm
            .log_config(self.cfg.log_granularity, self.quirk(Quirk::LogIgnoresEnd));
        if self.engine.logging() != cfg {
            tracing::info!(?cfg, "dirty logging");
            self.engine.set_logging(cfg);
        }
    }

    // ---------------------------------------------------------------- datapath entry points

    /// Rings every doorbell waiting in the shared notify window (each slot consumed before
    /// its queue runs: device/src/doorbell/area.rs). Only ever called under the device lock,
    /// by the doorbell engine and ahead of every register access, so an access never passes a
    /// doorbell stored before it (PCIe: a request does not pass an earlier posted write) and a
    /// kick is never taken by one and serviced after the other's access. Returns how many.
    pub(crate) fn take_shared_doorbells(&mut self, at_access: bool) -> u32 {
        self.take_kicks(at_access, None)
    }

    /// [`DeviceState::take_shared_doorbells`]; with `defer`, the TX queues whose budget may
    /// run outside the device lock ([`DeviceState::tx_may_leave_lock`]) are pushed there,
    /// each once, instead of serviced: the caller runs them (`off_lock.rs`).
    pub(crate) fn take_kicks(&mut self, at_access: bool, mut defer: Option<&mut Vec<u16>>) -> u32 {
        let Some(area) = self.notify_area.clone() else {
            return 0;
        };
        let mut n = 0;
        for q in 0..area.queues().min(self.layout.num_queues) {
            if let Some(data) = area.take_value(q) {
                n += 1;
                self.counters.shared_doorbells += 1;
                if at_access {
                    self.counters.shared_doorbells_at_access += 1;
                }
                if !self.notification_data_ok(q, data) || !self.doorbell_counted(q) {
                    continue;
                }
                match defer.as_deref_mut() {
                    Some(tx) if self.tx_may_leave_lock(q) => {
                        if !tx.contains(&q) {
                            tx.push(q);
                        }
                    }
                    _ => self.service(q),
                }
            }
        }
        n
    }

    /// With VIRTIO_F_NOTIFICATION_DATA negotiated, whether a doorbell of queue `q` carrying
    /// `data` may ring: its vqn (bits 0-15, virtio 1.2 2.9) must name `q`, the queue of the
    /// address it was written to (4.1.5.2). A mismatch is a bad doorbell: counted
    /// (`bad_notification_data`), no queue serviced. The rest of the data (next_idx, or
    /// next_off and next_wrap) is a hint the device does not need: it reads the ring itself.
    /// Without the feature the value is not looked at (the address selects the queue).
    fn notification_data_ok(&mut self, q: u16, data: u32) -> bool {
        if !self.has(bits::NOTIFICATION_DATA) {
            return true;
        }
        let vqn = if self.quirk(Quirk::NotificationDataVqnFromHighBits) {
            // Bug (quirk notification-data-vqn-from-high-bits).
            (data >> 16) as u16
        } else {
            data as u16
        };
        if vqn != q {
            self.counters.bad_notification_data += 1;
            return false;
        }
        true
    }

    /// A doorbell for queue `q`.
    pub(crate) fn doorbell(&mut self, q: u16) {
        if self.doorbell_counted(q) {
            self.service(q);
        }
    }

    /// Counts a doorbell of queue `q`; whether the queue runs (a queue that is not running
    /// counts a spurious doorbell).
    fn doorbell_counted(&mut self, q: u16) -> bool {
        self.counters.queues[usize::from(q)].doorbells += 1;
        if !self.common.status().running() || !self.engine.is_enabled(q) {
            self.counters.spurious_doorbells += 1;
            return false;
        }
        true
    }

    /// Runs every enabled queue once (DRIVER_OK, resume after restore).
    pub(crate) fn service_all(&mut self) {
        for q in 0..self.layout.num_queues {
            if self.engine.is_enabled(q) {
                self.service(q);
            }
        }
    }

    /// Whether the datapath may run: DRIVER_OK (and no failure), not paused, bus master.
    fn datapath_runs(&mut self) -> bool {
        if !self.common.status().running() || self.paused {
            return false;
        }
        if !self.function.bus_master() {
            self.counters.dma_blocked_no_bus_master += 1;
            return false;
        }
        true
    }

    /// [`DeviceState::datapath_runs`] without counting why not.
    fn datapath_open(&self) -> bool {
        self.common.status().running() && !self.paused && self.function.bus_master()
    }

    /// Processes queue `q` until it has no more work (RX: until the inbox is empty or buffers
    /// run out).
    /// A TX queue stops after its budget ([`DeviceConfig::service_budget`]) and is noted as
    /// pending; the caller goes on with [`DeviceState::service_pending`].
    pub(crate) fn service(&mut self, q: u16) {
        if self.datapath_runs()
            && self.run_datapath(|engine, dp| engine.service(q, dp)) == Some(Service::More)
            && !self.pending.contains(&q)
        {
            self.pending.push(q);
        }
    }

    /// The port has room again: runs the TX queues it held back, in the order they stopped (a
    /// queue reset, disabled or paused meanwhile is skipped by the checks of
    /// [`DeviceState::service`]; a paused device runs every queue at resume anyway).
    pub(crate) fn port_ready(&mut self) {
        let held = self.engine.take_port_blocked();
        self.service_enabled(held);
    }

    /// Services each of `queues` that is still enabled, in order.
    fn service_enabled(&mut self, queues: Vec<u16>) {
        for q in queues {
            if self.engine.is_enabled(q) {
                self.service(q);
            }
        }
    }

    /// Whether a queue waits for another round ([`DeviceState::service`]).
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// One round over the queues that ran out of budget: each gets one more budget, in the
    /// order they ran out (a queue reset, disabled, stopped or paused meanwhile is skipped: the
    /// checks of [`DeviceState::service`] and of the ring state apply again).
    pub(crate) fn service_pending(&mut self) {
        let round = std::mem::take(&mut self.pending);
        self.service_enabled(round);
    }

    /// Delivers waiting frames if the device can take them, one budget of them
    /// (`NetEngine::rx_budget`, [`NetEngine::service_rx`]): true when more wait behind it.
    pub(crate) fn service_inbox(&mut self) -> bool {
        let budget = self.engine.rx_budget();
        self.deliver_inbox(budget)
    }

    /// Delivers every waiting frame the device can take now: for a caller that cannot lend
    /// the lock between budgets anyway (`Device::deliver_rx`).
    pub(crate) fn drain_inbox(&mut self) {
        self.deliver_inbox(u32::MAX);
    }

    fn deliver_inbox(&mut self, budget: u32) -> bool {
        if self.datapath_open() && !self.engine.inbox().is_empty() {
            return self
                .run_datapath(|engine, dp| engine.service_rx(dp, budget))
                .unwrap_or(false);
        }
        false
    }

    /// Runs the engine with the negotiated features, then does what it left to do: the
    /// interrupts that became due (in order), the config changes, and the fault if it failed
    /// (a panic in it is one: [`crate::fault::contain_panic`]).
    fn run_datapath<T>(
        &mut self,
        f: impl FnOnce(&mut NetEngine, &mut Datapath<'_>) -> Result<T, DeviceFault>,
    ) -> Option<T> {
        let mut interrupts = std::mem::take(&mut self.interrupts);
        let mut dp = Datapath {
            features: self.common.negotiated(),
            counters: &mut self.counters,
            interrupts: &mut interrupts,
            config_changes: 0,
        };
        let engine = &mut self.engine;
        let res = crate::fault::contain_panic("the datapath under the device lock", || {
            f(engine, &mut dp)
        });
        let (res, out) = match res {
            Ok(v) => (Ok(()), Some(v)),
            Err(e) => (Err(e), None),
        };
        let changes = dp.config_changes;
        for _ in 0..changes {
            self.common.bump_generation();
        }
        for &q in &interrupts {
            self.queue_interrupt(q);
        }
        // Tell a doorbell engine that a kick is likely soon: an interrupt went to the driver
        // (it answers with RX refills and more TX), or received frames wait for RX buffers
        // (the device needs the refill's kick to go on). Frames merely moving are not enough:
        // polling fast through a whole transfer costs more CPU than it saves
        // (device/src/doorbell/poll.rs).
        if let Some(area) = &self.notify_area {
            if !interrupts.is_empty() || !self.engine.inbox().is_empty() {
                area.note_activity();
            }
        }
        interrupts.clear();
        self.interrupts = interrupts;
        self.check(res);
        out
    }

    /// Turns a datapath result into DEVICE_NEEDS_RESET when it failed, attributing faults in
    /// the dirty log (a publish flushes the log first) to the log, and picks up log faults of
    /// writes whose marking was deferred.
    pub(crate) fn check(&mut self, res: Result<(), DeviceFault>) {
        if let Err(f) = res {
            let f = match f {
                DeviceFault::Dma { fault, .. } if self.engine.in_log(fault.iova()) => {
                    DeviceFault::LogDma(fault)
                }
                f => f,
            };
            self.fail(f);
        }
        if let Some(f) = self.engine.take_log_fault() {
            self.fail(DeviceFault::LogDma(f));
        }
    }

    /// Pokes the datapath after the link or announce state changed.
    pub(crate) fn set_link(&mut self, up: bool) {
        let net = self.engine.net_mut();
        let s = if up {
            net.status | net_status::LINK_UP
        } else {
            net.status & !net_status::LINK_UP
        };
        if s != net.status {
            net.status = s;
            self.config_changed();
        }
    }

    /// Asks the driver to announce itself (GUEST_ANNOUNCE, 5.1.6.5.4): ANNOUNCE status bit and a
    /// config interrupt. Returns false when the driver did not negotiate GUEST_ANNOUNCE.
    pub(crate) fn announce(&mut self) -> bool {
        if !self.has(bits::GUEST_ANNOUNCE) || !self.has(bits::STATUS) {
            return false;
        }
        self.engine.net_mut().status |= net_status::ANNOUNCE;
        self.config_changed();
        true
    }
}
