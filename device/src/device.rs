//! The public face of the NIC: one PCI function behind a lock, reached through
//! [`RegionAccess`] (register reads and writes) and [`DmaMapper`] (the VMM's DMA mappings).
//! The vfio-user server and the in-process driver model both use exactly these calls.

use crate::capture::FrameCapture;
use crate::config::DeviceConfig;
use crate::counters::DeviceCounters;
use crate::fault::DeviceFault;
use crate::interrupt::{InterruptSink, IsrStatus, NullSink};
use crate::port::{NullPort, Port, RxInbox};
use crate::quirks::{Quirk, Quirks};
use crate::snapshot::SnapshotError;
use crate::state::{DeviceState, QueueState};
use bar_registers::pci::CONFIG_SPACE_SIZE;
use bar_registers::{DeviceLayout, LayoutError, REGION_CONFIG};
use dma::{
    AddressSpace, Backing, BusStats, IommuStats, LogStats, MapError, MappingInfo, Perms, WriteTrace,
};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why a region access was refused outright (a vfio-user server turns this into an error reply).
/// Accesses inside a region that hit no register are not errors: they read 0 / are ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("region {0} does not exist")]
    NoSuchRegion(u32),
    #[error("access of {len} bytes at {offset:#x} runs past the end of region {region} ({size:#x} bytes)")]
    OutOfRange {
        region: u32,
        offset: u64,
        len: usize,
        size: u64,
    },
    #[error("access of {0} bytes: only 1, 2, 4 and 8 byte accesses exist")]
    BadWidth(usize),
    /// The device is remote and the transport to it failed (vfio-user client side).
    #[error("transport to the device failed: {0}")]
    Transport(String),
}

/// The one way in to the device's registers.
pub trait RegionAccess {
    /// Reads `data.len()` bytes at `offset` of vfio region `region` (BAR n = n, config = 7).
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError>;
    /// Writes `data` at `offset` of vfio region `region`.
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError>;
}

/// What vfio-user DMA_MAP / DMA_UNMAP become.
pub trait DmaMapper {
    /// Maps [iova, iova+size) to `backing` with `perms`.
    fn dma_map(&self, iova: u64, size: u64, perms: Perms, backing: Backing)
        -> Result<(), MapError>;
    /// Unmaps every mapping inside [iova, iova+size).
    fn dma_unmap(&self, iova: u64, size: u64) -> Result<u64, MapError>;
    /// Unmaps everything.
    fn dma_unmap_all(&self) -> u64;
}

/// A fault a running device can be made to suffer from outside (`vdpa-emu ctl fault inject`).
///
/// The hostile-chain faults of the scenario `inject` step need a driver that writes the rings;
/// these need nothing from the driver, so they apply to a device a real guest drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedFault {
    /// The device enters DEVICE_NEEDS_RESET at once (virtio 1.2 2.1.2), as after an internal
    /// error: queues stop, the config interrupt is raised, fault kind `injected` is counted.
    NeedsReset,
    /// The device's next DMA access fails as an IOMMU translation fault would: the device
    /// enters DEVICE_NEEDS_RESET with fault kind `dma_fault` (or `log_dma_fault` when the
    /// access was a dirty-log write) when it next touches guest memory. A device reset first
    /// disarms it.
    DmaFault,
}

impl InjectedFault {
    /// Every kind.
    pub const ALL: [InjectedFault; 2] = [InjectedFault::NeedsReset, InjectedFault::DmaFault];

    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            InjectedFault::NeedsReset => "needs-reset",
            InjectedFault::DmaFault => "dma-fault",
        }
    }

    /// Parses a CLI name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// A snapshot of one queue for reports and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub enabled: bool,
    pub size: u16,
    pub last_avail: u16,
    pub last_used: u16,
    pub msix_vector: u16,
}

/// The NIC.
pub struct Device {
    /// This device, for the wakers it hands to its ports (a port must not keep it alive).
    me: std::sync::Weak<Device>,
    /// A port has room again and its held-back queues are still to run ([`Device::port_ready`]).
    port_wake: std::sync::atomic::AtomicBool,
    state: Mutex<DeviceState>,
    inbox: Arc<RxInbox>,
    space: Arc<AddressSpace>,
    layout: Arc<DeviceLayout>,
    /// The ISR byte, read here without the lock when that read is pure ([`IsrStatus`]).
    isr: IsrStatus,
    /// ISR reads answered that way (counter `isr_reads_unlocked`).
    isr_reads_unlocked: std::sync::atomic::AtomicU64,
    /// Signalled when the last TX budget outside the lock is back ([`Device::quiesce`]).
    tx_idle: Condvar,
    /// A lock holder is delivering the receive FIFO budget by budget and, between two, has
    /// lent the lock to a waiting thread ([`Device::deliver_held`]). Set and cleared only
    /// under the lock, so a holder that sees it set knows that deliverer will take the lock
    /// back and go on, and leaves the FIFO to it.
    rx_delivering: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("queues", &self.layout.num_queues)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device with no port (frames are discarded) and no interrupt sink yet.
    pub fn new(cfg: DeviceConfig) -> Result<Arc<Self>, LayoutError> {
        cfg.profile.check().map_err(|source| LayoutError::Profile {
            name: cfg.profile.name.clone(),
            source,
        })?;
        let layout = Arc::new(DeviceLayout::new(cfg.layout.clone())?);
        let space = Arc::new(AddressSpace::new());
        let inbox = Arc::new(RxInbox::new(cfg.rx_backlog));
        let dma = dma::ports::engines(space.clone(), cfg.iotlb_entries, layout.num_queues.into());
        let isr = IsrStatus::default();
        let state = DeviceState::new(
            layout.clone(),
            cfg,
            dma,
            Arc::new(NullPort),
            inbox.clone(),
            Arc::new(NullSink),
            isr.clone(),
        );
        Ok(Arc::new_cyclic(|me| Device {
            me: me.clone(),
            port_wake: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(state),
            inbox,
            space,
            layout,
            isr,
            isr_reads_unlocked: std::sync::atomic::AtomicU64::new(0),
            tx_idle: Condvar::new(),
            rx_delivering: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The register layout.
    pub fn layout(&self) -> &Arc<DeviceLayout> {
        &self.layout
    }

    /// The device's IOVA space.
    pub fn address_space(&self) -> &Arc<AddressSpace> {
        &self.space
    }

    /// The receive FIFO ports deliver into.
    pub fn inbox(&self) -> &Arc<RxInbox> {
        &self.inbox
    }

    /// Connects the device to a port, and gives the port its waker ([`Port::ready`]).
    pub fn set_port(&self, port: Arc<dyn Port>) {
        let me = self.me.clone();
        port.set_ready_waker(Some(Arc::new(move || {
            if let Some(dev) = me.upgrade() {
                dev.port_ready();
            }
        })));
        self.with(|s| s.engine.set_port(port));
        // Queues the old port held back go on through the new one.
        self.port_ready();
    }

    /// The port has room again: the TX queues it held back go on where they stopped (what a
    /// port's waker calls; harmless at any time). Never waits for the device lock: the waker
    /// may run on a thread that holds another device's lock (a linked peer draining its FIFO).
    /// If the lock is taken, its holder runs the queues before it lets go (`Device::finish`).
    pub fn port_ready(&self) {
        self.port_wake.store(true, Ordering::SeqCst);
        self.try_port_ready();
    }

    /// Runs the held-back queues if a port asked and the lock is free; loops while wakes come.
    /// On a thread that runs a TX budget outside a device lock, the wake waits until the
    /// budget is done (device/src/on_lanes.rs says why).
    fn try_port_ready(&self) {
        if crate::on_lanes::active() {
            if self.port_wake.load(Ordering::SeqCst) {
                crate::on_lanes::hold_wake(&self.me);
            }
            return;
        }
        while self.port_wake.load(Ordering::SeqCst) {
            let Some(mut s) = self.state.try_lock() else {
                // The holder looks again after it lets go.
                return;
            };
            if s.unlocked_tx > 0 {
                // A budget outside the lock may have found the port full and not told the
                // device yet which queue waits: spent now, the wake would miss that queue.
                // The budget's thread looks again once it is back (it ends in `finish`).
                return;
            }
            let runs_rounds = !s.has_pending();
            if self.port_wake.swap(false, Ordering::SeqCst) {
                s.port_ready();
            }
            // `release`, not `finish`: a wake that came meanwhile is this loop's next round, so
            // sustained traffic through a port's waker does not nest calls without bound.
            self.release(s, runs_rounds);
        }
    }

    /// Loops the device's transmit side back into its own receive side.
    pub fn set_loopback(&self) {
        self.set_port(Arc::new(crate::port::LoopbackPort::new(self.inbox.clone())));
    }

    /// Where interrupts go.
    pub fn set_interrupt_sink(&self, sink: Arc<dyn InterruptSink>) {
        self.with(|s| s.function.set_sink(sink));
    }

    /// Doorbells also arrive through `area` (shared memory polled by a
    /// [`crate::doorbell::DoorbellEngine`]): every device reset clears its slots.
    pub fn attach_notify_area(&self, area: Arc<crate::doorbell::NotifyArea>) {
        self.with(|s| s.notify_area = Some(area));
    }

    /// Rings queue `q`'s doorbell, exactly as a write to its notify address does (a queue
    /// that is not running counts a spurious doorbell; a paused device services it at
    /// resume). A queue the device does not have counts a bad register access.
    pub fn doorbell(&self, q: u16) {
        self.with(|s| {
            if q < s.layout.num_queues {
                s.doorbell(q);
            } else {
                s.counters.bad_register_accesses += 1;
            }
        });
    }

    /// Takes every kick waiting in the attached notify area and rings those doorbells (what
    /// the doorbell engine calls when its lock-free scan saw one). Returns how many it took
    /// (0 also when another holder took them first).
    ///
    /// A transmit queue's budgets run on its lane with the device lock free
    /// (`Device::tx_off_lock`), so register reads, received frames and the other queues'
    /// doorbells do not wait for a TX burst; everything else runs under the lock, as a
    /// trapped doorbell does.
    pub fn take_shared_doorbells(&self) -> u32 {
        self.locked(false, |s| {
            let mut tx = std::mem::take(&mut s.off_lock_queues);
            let mut n = s.take_kicks(false, Some(&mut tx));
            self.tx_off_lock(s, &mut tx, &mut n);
            s.off_lock_queues = tx;
            n
        })
    }

    /// Runs the TX queues of `round` outside the device lock, one budget each per round, round
    /// after round while any has more (each budget lets the lock go, so whoever waits for it
    /// gets it between budgets), delivering received frames after each budget, as a service
    /// under the lock does (a loopback port's frames wait in the FIFO for it). Between rounds
    /// it takes the kicks that came meanwhile: an RX refill or a control command is serviced
    /// after at most one budget of each busy TX queue, not after the whole burst, and a TX
    /// queue kicked meanwhile joins the rounds. A queue that may no longer leave the lock
    /// ([`DeviceState::tx_may_leave_lock`]: a caller waits to quiesce the device, the queue
    /// stopped, the device failed) is serviced under it instead, and from there goes on as any
    /// queue does. `round` ends empty; `taken` counts the kicks taken.
    fn tx_off_lock(
        &self,
        s: &mut MutexGuard<'_, DeviceState>,
        round: &mut Vec<u16>,
        taken: &mut u32,
    ) {
        while !round.is_empty() {
            round.retain(|&q| {
                if !s.tx_may_leave_lock(q) {
                    s.service(q);
                    return false;
                }
                let more = self.tx_budget_off_lock(s, q);
                s.service_inbox();
                more
            });
            // The queues of this round that have more stay first, in order; the newly kicked
            // ones go after them, each once (take_kicks does not push one already there).
            *taken += s.take_kicks(false, Some(round));
        }
    }

    /// One budget of TX queue `q` on its lane with the device lock free. The lane is locked
    /// before the device lock is let go (so nothing reaches the queue in between) and let go
    /// before the device lock is taken back (lock order: device, then lane). The budget
    /// needs only its lane and what [`DeviceState::tx_env`] took under the lock; the device
    /// then does what it left ([`DeviceState::finish_off_lock_tx`]). Whoever must not run
    /// beside it (a reset, a queue stop, a pause, every register write) waits for it
    /// ([`Device::quiesce`]). Returns whether the queue has more to do.
    fn tx_budget_off_lock(&self, s: &mut MutexGuard<'_, DeviceState>, q: u16) -> bool {
        let env = s.tx_env(q);
        let lanes = s.engine.lanes().clone();
        let mut flows = std::mem::take(&mut s.off_lock_flows);
        let mut lane = lanes.lock(q);
        s.unlocked_tx += 1;
        let res = MutexGuard::unlocked(s, || {
            std::mem::swap(&mut lane.scratch.flows, &mut flows);
            // A panic in the budget (a bug, or the port's) fails the device instead of
            // unwinding through here with `unlocked_tx` still counting it (every later
            // register write would wait for it forever).
            let res = crate::fault::contain_panic("a TX budget outside the device lock", || {
                let _on = crate::on_lanes::OnLanes::enter();
                crate::net::tx::tx_budget(&mut lane, &env)
            });
            std::mem::swap(&mut lane.scratch.flows, &mut flows);
            drop(lane);
            for dev in crate::on_lanes::take_held_wakes() {
                if let Some(dev) = dev.upgrade() {
                    dev.try_port_ready();
                }
            }
            res
        });
        s.unlocked_tx -= 1;
        if s.unlocked_tx == 0 && s.quiescing > 0 {
            self.tx_idle.notify_all();
        }
        let more = s.finish_off_lock_tx(q, &mut flows, res);
        flows.clear();
        s.off_lock_flows = flows;
        more
    }

    /// Waits, with `s` let go meanwhile, until no TX budget runs outside the lock; while it
    /// waits, no new one leaves it. Every caller that changes what a budget reads (queue and
    /// device state, the port, the DMA settings) or that must see the datapath settled (a
    /// saved state) quiesces first.
    fn quiesce(&self, s: &mut MutexGuard<'_, DeviceState>) {
        if s.unlocked_tx == 0 {
            return;
        }
        debug_assert!(
            !crate::on_lanes::active(),
            "a budget outside the lock waits for itself"
        );
        s.quiescing += 1;
        while s.unlocked_tx > 0 {
            self.tx_idle.wait(s);
        }
        s.quiescing -= 1;
    }

    /// Records every page the device writes, independently of the dirty log.
    pub fn set_write_trace(&self, trace: Option<Arc<WriteTrace>>) {
        self.with(|s| s.engine.dma(|d| d.set_write_trace(trace)));
    }

    /// Starts (Some) or stops (None) copying every carried frame to `capture` (see
    /// [`crate::capture`]).
    pub fn set_capture(&self, capture: Option<Arc<dyn FrameCapture>>) {
        self.with(|s| s.engine.set_capture(capture));
    }

    /// Switches an injectable bug on or off on the running device (where each one takes
    /// effect: `DeviceState::set_quirk`).
    pub fn set_quirk(&self, quirk: Quirk, on: bool) {
        tracing::info!(quirk = quirk.name(), on, "quirk switched");
        self.with(|s| s.set_quirk(quirk, on));
    }

    /// The quirks now on.
    pub fn quirks(&self) -> Quirks {
        self.read(|s| s.cfg.quirks)
    }

    /// Injects a fault into the running device (see [`InjectedFault`]).
    pub fn inject(&self, fault: InjectedFault) {
        tracing::info!(fault = fault.name(), "fault injected");
        self.with(|s| match fault {
            InjectedFault::NeedsReset => s.fail(DeviceFault::Injected("needs-reset")),
            InjectedFault::DmaFault => s.engine.dma(|d| d.inject_fault()),
        });
    }

    /// Something outside the datapath panicked while it worked on this device (a vfio-user
    /// message's handler, in `context`): the device enters DEVICE_NEEDS_RESET with
    /// [`DeviceFault::Internal`], as it does for a panic in its datapath (device/src/fault.rs),
    /// so the driver sees it and its reset recovers.
    pub fn fail_internal(&self, context: &'static str, message: String) {
        self.with(|s| s.fail(DeviceFault::Internal { context, message }));
    }

    /// Whether an injected DMA fault still waits for the device's next DMA access.
    pub fn dma_fault_armed(&self) -> bool {
        self.read(|s| s.engine.dma(|d| d.fault_armed()))
    }

    /// Function level reset (vfio DEVICE_RESET). A paused device runs again (reset).
    pub fn reset(&self) {
        self.with(|s| {
            s.function_reset();
            s.paused = false;
            s.engine.dma(|d| d.sync_space());
        });
    }

    /// Stops the datapath for a migration: in-flight work is finished exactly as at a queue
    /// stop (used rings published, ring states final), then the device does no DMA at all
    /// until [`Device::resume`]; doorbells and received frames wait. Registers stay reachable.
    pub fn pause(&self) {
        self.with(|s| s.pause());
    }

    /// Ends [`Device::pause`]: every enabled queue and the receive FIFO are serviced (what
    /// came meanwhile).
    pub fn resume(&self) {
        self.with(|s| s.resume());
    }

    /// Whether the device is paused.
    pub fn is_paused(&self) -> bool {
        self.read(|s| s.paused)
    }

    /// The device state as a versioned, self-describing byte stream (see
    /// [`crate::snapshot`]). Consistent when the device is paused; frames waiting in the
    /// receive FIFO are copied, not taken.
    pub fn save_state(&self) -> Vec<u8> {
        let mut s = self.state.lock();
        self.quiesce(&mut s);
        s.save()
    }

    /// Restores a state saved by [`Device::save_state`] on a compatible device: enabled queues
    /// are enabled again through the normal enable path and resume at their ring state (when
    /// the device is not paused, at once; when paused, at [`Device::resume`]). A malformed or
    /// incompatible stream is refused with a typed error and leaves the device reset. DMA
    /// mappings and the port are not part of the state.
    pub fn restore_state(&self, data: &[u8]) -> Result<(), SnapshotError> {
        self.with(|s| s.restore(data))
    }

    /// Upper bound of a [`Device::save_state`] stream for this device.
    pub fn max_state_len(&self) -> usize {
        let backlog = self.read(|s| s.cfg.rx_backlog);
        crate::snapshot::max_state_len(self.layout.num_queues, self.layout.msix_vectors, backlog)
    }

    /// Link up/down (config status LINK_UP, config interrupt).
    pub fn set_link(&self, up: bool) {
        self.with(|s| s.set_link(up));
    }

    /// Whether the config status says LINK_UP.
    pub fn link_up(&self) -> bool {
        self.read(|s| s.engine.net().status & bar_registers::virtio::net_status::LINK_UP != 0)
    }

    /// Requests a guest announce (GUEST_ANNOUNCE); false if not negotiated.
    pub fn announce(&self) -> bool {
        self.with(|s| s.announce())
    }

    /// Counter snapshot.
    pub fn counters(&self) -> DeviceCounters {
        let mut c = self.read(|s| {
            let mut c = s.counters.clone();
            s.engine.add_lane_counters(&mut c);
            c.tx_port_lost = s.engine.port().lost();
            c
        });
        c.rx_dropped_backlog = self.inbox.dropped();
        c.rx_port_waits = self.inbox.room_waits();
        c.isr_reads_unlocked = self.isr_reads_unlocked.load(Ordering::Relaxed);
        c
    }

    /// Bus accounting snapshot.
    pub fn bus_stats(&self) -> BusStats {
        self.read(|s| s.engine.dma(|d| d.bus_stats()))
    }

    /// IOMMU counters.
    pub fn iommu_stats(&self) -> IommuStats {
        self.read(|s| s.engine.dma(|d| d.iommu_stats()))
    }

    /// Dirty-log counters.
    pub fn log_stats(&self) -> LogStats {
        self.read(|s| s.engine.dma(|d| d.log_stats()))
    }

    /// The fault that put the device in DEVICE_NEEDS_RESET, if any.
    pub fn fault(&self) -> Option<DeviceFault> {
        self.read(|s| s.fault.clone())
    }

    /// device_status as the driver would read it.
    pub fn status(&self) -> u8 {
        self.read(|s| s.common.status().value())
    }

    /// The device's profile (its name and the feature set it was configured with).
    pub fn profile(&self) -> bar_registers::Profile {
        self.read(|s| s.cfg.profile.clone())
    }

    /// The features the device offers now: its profile's, less what a quirk removes.
    pub fn offered_features(&self) -> u64 {
        self.read(|s| s.common.offered())
    }

    /// Negotiated features (0 before FEATURES_OK).
    pub fn negotiated_features(&self) -> u64 {
        self.read(|s| s.common.negotiated())
    }

    /// Queue pairs in use for RX steering.
    pub fn active_queue_pairs(&self) -> u16 {
        self.read(|s| s.engine.net().curr_pairs)
    }

    /// The receive-side scaling configuration the driver set, while RSS is on.
    pub fn rss_config(&self) -> Option<crate::net::rss::RssConfig> {
        self.read(|s| s.engine.net().rss.clone())
    }

    /// The receive offloads the driver takes now (virtio 1.2 5.1.6.5.6.1): as negotiated, or
    /// as its last CTRL_GUEST_OFFLOADS_SET left them.
    pub fn guest_offloads(&self) -> crate::net::offload::guest::GuestOffloads {
        self.read(|s| s.engine.guest_offloads(s.common.negotiated()))
    }

    /// Queue `q`'s state.
    pub fn queue(&self, q: u16) -> Option<QueueSnapshot> {
        self.read(|s| {
            let lane = s.engine.queue(q)?;
            let slot = &lane.slot;
            let (last_avail, last_used) = slot.ring_state();
            Some(QueueSnapshot {
                enabled: matches!(slot.state, QueueState::Enabled(_)),
                size: slot.size,
                last_avail,
                last_used,
                msix_vector: slot.msix_vector,
            })
        })
    }

    /// Current DMA mappings.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.space.mappings()
    }

    /// Number of live DMA mappings (O(1); DMA_MAP checks it against max_dma_maps).
    pub fn mapping_count(&self) -> usize {
        self.space.len()
    }

    /// DMA_MAP / DMA_UNMAP counters of the device's IOVA space.
    pub fn map_stats(&self) -> dma::MapStats {
        self.space.stats()
    }

    /// Runs `f` on the locked state once no TX budget runs outside the lock
    /// ([`Device::quiesce`]), then delivers frames that arrived meanwhile (see
    /// [`Device::try_service_rx`]).
    fn with<R>(&self, f: impl FnOnce(&mut DeviceState) -> R) -> R {
        self.locked(true, |s| f(s))
    }

    /// Runs `f` on the locked state to read it, then does what arrived while the lock was
    /// held ([`Device::try_service_rx`]): a port's frame or room wake that found the lock
    /// taken counts on its holder to do it, readers included.
    fn read<R>(&self, f: impl FnOnce(&DeviceState) -> R) -> R {
        let s = self.state.lock();
        let r = f(&s);
        drop(s);
        self.try_service_rx();
        r
    }

    /// [`Device::with`] beside TX budgets running outside the lock: for what only reads the
    /// state a budget changes, or reaches it through the queue's lane (which waits for the
    /// budget): register reads, received frames.
    fn with_shared<R>(&self, f: impl FnOnce(&mut DeviceState) -> R) -> R {
        self.locked(false, |s| f(s))
    }

    /// The one way a call takes the device lock to act: quiescing first if asked, then `f`
    /// (which may let the lock go and take it back: [`Device::tx_off_lock`]), then
    /// [`Device::finish`].
    fn locked<R>(&self, quiesce: bool, f: impl FnOnce(&mut MutexGuard<'_, DeviceState>) -> R) -> R {
        let mut s = self.state.lock();
        if quiesce {
            self.quiesce(&mut s);
        }
        // Queues left pending when we got the lock belong to a caller waiting in `finish` to
        // take it back: that caller runs their rounds, we only do our own access.
        let runs_rounds = !s.has_pending();
        let r = f(&mut s);
        self.finish(s, runs_rounds);
        r
    }

    /// Ends every locked call: delivers waiting frames, then (`runs_rounds`: no queue was
    /// pending when the call took the lock, so this call made them pending) finishes the
    /// queues that used up their service budget, one round at a time, offering the lock to
    /// whoever waits for it before each round (`MutexGuard::bump`, a fair hand-over): a
    /// register access or another queue's doorbell then waits for at most one budget of a busy
    /// TX queue, not for the whole burst a driver keeps feeding (issue #12: one busy queue must
    /// not starve the others or the control path). Whoever gets the lock in between does only
    /// its own access; its queues that run out of budget join the rounds of the call that owns
    /// them. So the lock is never free while a queue is pending, and a doorbell returns when
    /// its chains are done, unless it came while another call's rounds ran (which then finish
    /// them).
    ///
    /// Then a port that got room again while we held the lock is served
    /// ([`Device::try_port_ready`]).
    fn finish(&self, s: MutexGuard<'_, DeviceState>, runs_rounds: bool) {
        self.release(s, runs_rounds);
        self.try_port_ready();
    }

    /// [`Device::finish`] up to the release of the lock, and the inbox look after it.
    fn release(&self, mut s: MutexGuard<'_, DeviceState>, runs_rounds: bool) {
        self.deliver_held(&mut s);
        while runs_rounds && s.has_pending() {
            MutexGuard::bump(&mut s);
            s.service_pending();
            self.deliver_held(&mut s);
        }
        drop(s);
        // A peer may have pushed a frame after our last drain and failed to take the lock
        // because we held it: look once more now that it is free.
        self.deliver_rx();
    }

    /// Delivers inbox frames, waiting for the device lock: for port reader threads (TAP,
    /// sockets) that hold no device lock themselves.
    pub fn service_rx(&self) {
        self.with_shared(|_| ());
    }

    /// Delivers inbox frames if the device lock is free; if it is held, the holder delivers
    /// them after releasing it. This is what lets two linked devices transmit into each other
    /// from inside their own datapaths without a lock-order deadlock. Then runs the queues a
    /// port's wake held back if that wake found the lock taken (by this call or another).
    pub fn try_service_rx(&self) {
        self.deliver_rx();
        self.try_port_ready();
    }

    /// [`Device::try_service_rx`] without the port wake: what every release of the lock ends
    /// with ([`Device::try_port_ready`] follows it, or loops around it).
    ///
    /// It never waits for the lock, so it cannot lend it between budgets either: it delivers
    /// the whole FIFO while it has the lock, unless a deliverer lent it the lock
    /// ([`Device::deliver_held`]), who goes on once it has it back.
    fn deliver_rx(&self) {
        while !self.inbox.is_empty() {
            let Some(mut s) = self.state.try_lock() else {
                return;
            };
            if self.rx_delivering.load(Ordering::Acquire) {
                return;
            }
            let before = self.inbox.len();
            s.drain_inbox();
            let stuck = self.inbox.len() >= before;
            drop(s);
            if stuck {
                // No RX buffers: frames wait for the driver's next RX doorbell.
                return;
            }
        }
    }

    /// Delivers the receive FIFO under the lock `s` that a call took (and so may wait for),
    /// one budget of frames at a time ([`DeviceConfig::service_budget`]), lending the lock
    /// fairly to whoever waits for it between two (`MutexGuard::bump`): a register access or a
    /// doorbell waits for one budget of a busy wire, not for the whole FIFO. The thread that
    /// borrows the lock sees `rx_delivering` and leaves the frames to this one. Returns with
    /// the FIFO empty or waiting for RX buffers.
    fn deliver_held(&self, s: &mut MutexGuard<'_, DeviceState>) {
        if self.rx_delivering.load(Ordering::Acquire) {
            // We borrowed the lock from a deliverer waiting to take it back.
            return;
        }
        while s.service_inbox() {
            self.rx_delivering.store(true, Ordering::Release);
            MutexGuard::bump(s);
            self.rx_delivering.store(false, Ordering::Release);
        }
    }
}

fn check(region_size: u64, region: u32, offset: u64, len: usize) -> Result<(), AccessError> {
    if !matches!(len, 1 | 2 | 4 | 8) {
        return Err(AccessError::BadWidth(len));
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= region_size => Ok(()),
        _ => Err(AccessError::OutOfRange {
            region,
            offset,
            len,
            size: region_size,
        }),
    }
}

impl Device {
    fn region_size(&self, region: u32) -> Result<u64, AccessError> {
        if region == REGION_CONFIG {
            return Ok(CONFIG_SPACE_SIZE);
        }
        match u8::try_from(region).map(|r| self.layout.bar_size(r)) {
            Ok(size) if size > 0 => Ok(size),
            _ => Err(AccessError::NoSuchRegion(region)),
        }
    }
}

impl Device {
    /// A legal ISR read (the one byte, 4.1.4.5), answered and cleared without the device lock
    /// when that read has no other effect ([`IsrStatus`] says why and when). It also does not
    /// ring the kicks waiting in the shared notify window first, unlike every other register
    /// access: a PCIe read is ordered after earlier posted writes, not after the device's
    /// processing of them, and the ISR reports the interrupts raised so far. `None`: the locked
    /// path (another register, another width, or a read that also deasserts INTx).
    fn isr_read_unlocked(&self, region: u32, offset: u64, len: usize) -> Option<u8> {
        let bar = u8::try_from(region).ok()?;
        // The ISR window is in a BAR, so config space (REGION_CONFIG) never matches.
        if len != 1 || self.layout.isr.contains(bar, offset) != Some(0) {
            return None;
        }
        let v = self.isr.take_unlocked()?;
        self.isr_reads_unlocked.fetch_add(1, Ordering::Relaxed);
        Some(v)
    }
}

impl RegionAccess for Device {
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let size = self.region_size(region)?;
        check(size, region, offset, data.len())?;
        if let Some(v) = self.isr_read_unlocked(region, offset, data.len()) {
            data.fill(0);
            data[0] = v;
            return Ok(());
        }
        self.with_shared(|s| {
            s.take_shared_doorbells(true);
            if region == REGION_CONFIG {
                s.config_read(offset, data);
            } else {
                s.bar_read(region, offset, data);
            }
        });
        Ok(())
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let size = self.region_size(region)?;
        check(size, region, offset, data.len())?;
        self.with(|s| {
            s.take_shared_doorbells(true);
            if region == REGION_CONFIG {
                s.config_write(offset, data);
            } else {
                s.bar_write(region, offset, data);
            }
        });
        Ok(())
    }
}

impl DmaMapper for Device {
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        backing: Backing,
    ) -> Result<(), MapError> {
        let _span =
            tracing::debug_span!("dma_map", iova = format_args!("{iova:#x}"), size).entered();
        self.space.map(iova, size, perms, backing)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        let _span =
            tracing::debug_span!("dma_unmap", iova = format_args!("{iova:#x}"), size).entered();
        let r = self.space.unmap(iova, size);
        // Drop the engine's references to what was unmapped right away (only if anything was).
        if matches!(r, Ok(n) if n > 0) {
            self.with(|s| s.engine.dma(|d| d.sync_space()));
        }
        r
    }

    fn dma_unmap_all(&self) -> u64 {
        let n = self.space.unmap_all();
        self.with(|s| s.engine.dma(|d| d.sync_space()));
        n
    }
}
