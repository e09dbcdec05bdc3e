//! One device's DMA ports: a [`DmaEngine`] per queue, over one [`AddressSpace`].
//!
//! Each queue's ring and packet accesses go through its own port, as a NIC's queues each have
//! their own DMA context: its own IOTLB (ATS cache) and bus counters, and its own buffer of
//! pending dirty-log words, which its ring publishes flush before the used index they cover
//! (the log words are ORed into guest memory atomically, so ports never lose each other's
//! bits). So a queue's service needs only its own port, and queues can be serviced apart from
//! each other (issue #12, per-queue engines; docs/architecture.md, Concurrency).
//!
//! [`engines`] makes a device's ports; each lives with its queue. What belongs to the device as
//! a whole is set on every port at once through [`DmaPorts`], which borrows them all: the dirty log's
//! configuration, the PCIe limits, the write trace, the log-skipping quirk. One injected fault
//! is shared: the device's next access meets it, whichever port makes it. Counters are summed
//! over the ports on read (so `iotlb_invalidations` counts every port's flush, and a page two
//! queues dirty between flushes counts in `pages_marked` once per queue).

use parking_lot::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::{
    AddressSpace, BusStats, DmaEngine, DmaFault, DmaKind, IommuStats, LogConfig, LogStats,
    PcieModel, WriteTrace,
};

/// `n` DMA ports (at least one) for one device on `space`, each with an `iotlb_entries`-entry
/// IOTLB ([`DmaEngine::new`]), sharing one injected fault and one [`LogFaultSlot`].
pub fn engines(space: Arc<AddressSpace>, iotlb_entries: usize, n: usize) -> Vec<DmaEngine> {
    let inject = Arc::new(AtomicBool::new(false));
    let log_fault = LogFaultSlot::default();
    (0..n.max(1))
        .map(|_| {
            DmaEngine::sharing(
                space.clone(),
                iotlb_entries,
                inject.clone(),
                log_fault.clone(),
            )
        })
        .collect()
}

/// Where a dirty-log fault of a deferred marking waits for the device to take it (the first
/// since the last take; one DEVICE_NEEDS_RESET covers the rest). A device's ports share one,
/// so the device takes it without locking the ports, which may be busy servicing their queues
/// apart from the device (its lock is a leaf: held for a store or a take only).
#[derive(Clone, Debug, Default)]
pub struct LogFaultSlot(Arc<Mutex<Option<DmaFault>>>);

impl LogFaultSlot {
    /// Keeps `f` unless an earlier fault waits.
    pub(crate) fn note(&self, f: DmaFault) {
        self.0.lock().get_or_insert(f);
    }

    /// The waiting fault, if any; the slot is then empty.
    pub fn take(&self) -> Option<DmaFault> {
        self.0.lock().take()
    }
}

/// A device's DMA ports seen together, to set and read what belongs to the device as a whole
/// (see the module docs). The ports live wherever their queues are serviced; this borrows
/// them for one call.
pub struct DmaPorts<'a> {
    ports: Vec<&'a mut DmaEngine>,
}

impl std::fmt::Debug for DmaPorts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaPorts")
            .field("ports", &self.ports.len())
            .field("logging", &self.logging())
            .finish_non_exhaustive()
    }
}

impl<'a> DmaPorts<'a> {
    /// The ports of one device ([`engines`]), at least one.
    ///
    /// # Panics
    /// If `ports` is empty.
    pub fn over(ports: impl IntoIterator<Item = &'a mut DmaEngine>) -> Self {
        let ports: Vec<_> = ports.into_iter().collect();
        assert!(!ports.is_empty(), "a device has at least one DMA port");
        DmaPorts { ports }
    }

    /// Port `i`.
    ///
    /// # Panics
    /// If there is no port `i`.
    pub fn port(&mut self, i: u16) -> &mut DmaEngine {
        self.ports[usize::from(i)]
    }

    /// Port `i`, read-only.
    pub fn get(&self, i: u16) -> Option<&DmaEngine> {
        self.ports.get(usize::from(i)).map(|p| &**p)
    }

    /// How many ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Never true (there is at least one port).
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The IOVA space the ports translate through.
    pub fn space(&self) -> &Arc<AddressSpace> {
        self.ports[0].space()
    }

    /// Dirty logging on every port ([`DmaEngine::set_logging`]: each flushes its pending bits
    /// into the previous log first).
    pub fn set_logging(&mut self, cfg: Option<LogConfig>) {
        for p in self.ports.iter_mut() {
            p.set_logging(cfg);
        }
    }

    /// The active log config (the same on every port).
    pub fn logging(&self) -> Option<LogConfig> {
        self.ports[0].logging()
    }

    /// Flushes every port's pending log bits; returns the first fault (the other ports are
    /// still flushed).
    pub fn flush_log(&mut self) -> Result<(), DmaFault> {
        let mut first = Ok(());
        for p in self.ports.iter_mut() {
            if let Err(f) = p.flush_log() {
                if first.is_ok() {
                    first = Err(f);
                }
            }
        }
        first
    }

    /// The first log fault an implicit flush of any port hit since the last call (the others
    /// are dropped: one DEVICE_NEEDS_RESET covers them). Ports made by [`engines`] share
    /// one [`LogFaultSlot`]; ports made apart are each taken.
    pub fn take_log_fault(&mut self) -> Option<DmaFault> {
        let mut first = None;
        for p in self.ports.iter_mut() {
            let f = p.take_log_fault();
            if first.is_none() {
                first = f;
            }
        }
        first
    }

    /// Bus traffic per kind, summed over the ports.
    pub fn bus_stats(&self) -> BusStats {
        let mut sum = BusStats::with_model(self.pcie_model());
        for p in self.ports.iter() {
            sum.absorb(p.bus_stats());
        }
        sum
    }

    /// IOTLB and fault counters, summed over the ports.
    pub fn iommu_stats(&self) -> IommuStats {
        let mut sum = IommuStats::default();
        for p in self.ports.iter() {
            sum.absorb(p.iommu_stats());
        }
        sum
    }

    /// Dirty-log counters, summed over the ports.
    pub fn log_stats(&self) -> LogStats {
        let mut sum = LogStats::default();
        for p in self.ports.iter() {
            sum.absorb(p.log_stats());
        }
        sum
    }

    /// Zeroes every port's counters.
    pub fn reset_stats(&mut self) {
        for p in self.ports.iter_mut() {
            p.reset_stats();
        }
    }

    /// Arms one DMA fault for the device's next access, whichever port makes it (every port's
    /// IOTLB is flushed so that its next access takes the path that meets it).
    pub fn inject_fault(&mut self) {
        for p in self.ports.iter_mut() {
            p.inject_fault();
        }
    }

    /// Drops an injected fault that met no access yet.
    pub fn disarm_fault(&mut self) {
        self.ports[0].disarm_fault();
    }

    /// Whether an injected fault has not met an access yet.
    pub fn fault_armed(&self) -> bool {
        self.ports[0].fault_armed()
    }

    /// The function's PCIe limits on every port ([`DmaEngine::set_pcie_limits`]).
    pub fn set_pcie_limits(&mut self, mps: u32, mrrs: u32) {
        for p in self.ports.iter_mut() {
            p.set_pcie_limits(mps, mrrs);
        }
    }

    /// The PCIe model on every port ([`DmaEngine::set_pcie_model`]).
    pub fn set_pcie_model(&mut self, model: PcieModel) {
        for p in self.ports.iter_mut() {
            p.set_pcie_model(model);
        }
    }

    /// The PCIe model accesses are cut by (the same on every port).
    pub fn pcie_model(&self) -> PcieModel {
        self.ports[0].pcie_model()
    }

    /// Writes of these kinds are not logged on any port ([`DmaEngine::set_unlogged_kinds`]).
    pub fn set_unlogged_kinds(&mut self, kinds: &[DmaKind]) {
        for p in self.ports.iter_mut() {
            p.set_unlogged_kinds(kinds);
        }
    }

    /// Every port records its writes in `trace` ([`DmaEngine::set_write_trace`]).
    pub fn set_write_trace(&mut self, trace: Option<Arc<WriteTrace>>) {
        for p in self.ports.iter_mut() {
            p.set_write_trace(trace.clone());
        }
    }

    /// Every port catches up with the address space now ([`DmaEngine::sync_space`]): after a
    /// DMA_UNMAP no port holds a reference to the unmapped memory.
    pub fn sync_space(&mut self) {
        for p in self.ports.iter_mut() {
            p.sync_space();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Perms, SharedMemory, Traffic};

    const LOG_IOVA: u64 = 0x1000_0000_0000; // DPDK's IFCVF_LOG_BASE

    /// 64 KiB of guest memory at IOVA 0, and three ports on it.
    fn setup() -> (SharedMemory, Arc<AddressSpace>, Vec<DmaEngine>) {
        let shm = SharedMemory::new("guest", 0x10000).unwrap();
        let space = Arc::new(AddressSpace::new());
        shm.map_into(&space, 0, 0, 0x10000, Perms::RW).unwrap();
        let ports = engines(space.clone(), 16, 3);
        (shm, space, ports)
    }

    #[test]
    fn one_injected_fault_meets_the_next_access_of_whichever_port() {
        let (_shm, _space, mut engines) = setup();
        let mut ports = DmaPorts::over(&mut engines);
        // Warm every port's IOTLB: the fault must not hide behind a cached translation.
        for q in 0..3 {
            ports.port(q).read_u16(0x100, DmaKind::RingRead).unwrap();
        }
        ports.inject_fault();
        assert!(ports.fault_armed());
        assert!(matches!(
            ports.port(2).read_u16(0x100, DmaKind::RingRead),
            Err(DmaFault::Injected { iova: 0x100, .. })
        ));
        assert!(!ports.fault_armed());
        // Taken once: the other ports go on.
        for q in 0..3 {
            ports.port(q).read_u16(0x100, DmaKind::RingRead).unwrap();
        }
        assert_eq!(ports.iommu_stats().faults_injected, 1);
        // Disarmed before any access: nobody meets it.
        ports.inject_fault();
        ports.disarm_fault();
        assert!(!ports.fault_armed());
        for q in 0..3 {
            ports.port(q).read_u16(0x100, DmaKind::RingRead).unwrap();
        }
        assert_eq!(ports.iommu_stats().faults_injected, 1);
    }

    #[test]
    fn device_wide_settings_reach_every_port_and_counters_are_summed() {
        let (_shm, space, mut engines) = setup();
        let mut ports = DmaPorts::over(&mut engines);
        let log = SharedMemory::new("log", 0x1000).unwrap();
        log.map_into(&space, LOG_IOVA, 0, 0x1000, Perms::RW)
            .unwrap();
        let trace = Arc::new(WriteTrace::new(0x10000));
        ports.set_write_trace(Some(trace.clone()));
        ports.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
        ports.set_pcie_limits(256, 1024);
        for q in 0..3 {
            let p = ports.get(q).unwrap();
            assert_eq!(p.logging(), ports.logging());
            assert_eq!((p.pcie_model().mps, p.pcie_model().mrrs), (256, 1024));
        }
        // Port q writes 64 bytes into page q + 1 and publishes an index in the same page.
        for q in 0..3u16 {
            let p = ports.port(q);
            let page = u64::from(q + 1) << 12;
            p.write(page, &[7; 64], DmaKind::PacketWrite).unwrap();
            p.publish_u16(page + 0x800, q, DmaKind::RingWrite).unwrap();
        }
        // Each publish flushed its own port's bits: pages 1-3 are in the log.
        assert_eq!(log.snapshot()[..2], [0b1110, 0]);
        assert_eq!(trace.pages(), vec![1, 2, 3]);
        let bus = ports.bus_stats();
        assert_eq!(
            bus.get(DmaKind::PacketWrite),
            Traffic {
                transactions: 3,
                bytes: 192
            }
        );
        assert_eq!(bus.get(DmaKind::RingWrite).transactions, 3);
        assert_eq!(bus.model().mps, 256);
        let each: u64 = (0..3)
            .map(|q| ports.get(q).unwrap().bus_stats().total().bytes)
            .sum();
        assert_eq!(bus.total().bytes, each);
        // Every port wrote its own log word (the same one, ORed).
        assert_eq!(ports.log_stats().pages_marked, 3);
        assert_eq!(ports.log_stats().log_writes, 3);
        // Each port has its own IOTLB: its packet write and its log write miss, its publish
        // hits the packet write's entry. One IOTLB shared by the three would have missed four
        // times (three pages and the log) and hit five.
        let io = ports.iommu_stats();
        assert_eq!((io.iotlb_misses, io.iotlb_hits), (6, 3));
        ports.reset_stats();
        assert_eq!(ports.bus_stats().total(), Traffic::default());
        assert_eq!(ports.log_stats(), LogStats::default());
    }

    #[test]
    fn a_log_fault_of_one_port_is_reported_and_the_others_still_flush() {
        let (_shm, space, mut engines) = setup();
        let mut ports = DmaPorts::over(&mut engines);
        // The log covers pages 0-63 in its first word, and 64-127 in its second, whose page of
        // the log is unmapped: the log is 8 bytes long where 16 are needed.
        let log = SharedMemory::new("log", 0x1000).unwrap();
        log.map_into(&space, LOG_IOVA + 0x1000, 0, 0x1000, Perms::RW)
            .unwrap();
        ports.set_logging(Some(LogConfig::new(
            LOG_IOVA + 0x1000 - 8,
            LOG_IOVA + 0x2000,
        )));
        // Port 0 dirties page 1 (its word is the unmapped one), port 1 page 64 (mapped).
        // Guest memory is 16 pages: map page 64 too.
        let more = SharedMemory::new("more", 0x1000).unwrap();
        more.map_into(&space, 64 << 12, 0, 0x1000, Perms::RW)
            .unwrap();
        ports
            .port(0)
            .write(0x1000, &[1], DmaKind::PacketWrite)
            .unwrap();
        ports
            .port(1)
            .write(64 << 12, &[1], DmaKind::PacketWrite)
            .unwrap();
        assert!(matches!(ports.flush_log(), Err(DmaFault::Unmapped { .. })));
        assert_eq!(log.snapshot()[0], 1, "port 1's page 64 reached the log");
        assert_eq!(ports.log_stats().faults, 1);
        // An implicit flush's fault is kept for the device, once.
        ports
            .port(2)
            .write(0x2000, &[1], DmaKind::PacketWrite)
            .unwrap();
        ports.set_logging(None);
        assert!(ports.take_log_fault().is_some());
        assert!(ports.take_log_fault().is_none());
        // The device takes port 2's next one through port 0's slot, without the ports.
        let slot = ports.port(0).log_fault_slot();
        ports.set_logging(Some(LogConfig::new(
            LOG_IOVA + 0x1000 - 8,
            LOG_IOVA + 0x2000,
        )));
        ports
            .port(2)
            .write(0x2000, &[1], DmaKind::PacketWrite)
            .unwrap();
        ports.set_logging(None);
        drop(ports);
        assert!(matches!(slot.take(), Some(DmaFault::Unmapped { .. })));
        assert!(slot.take().is_none());
        assert!(engines.iter_mut().all(|p| p.take_log_fault().is_none()));
    }
}
