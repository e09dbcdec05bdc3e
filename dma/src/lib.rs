//! vdpa-emu DMA: everything the device does to guest memory goes through here.
//!
//! - [`AddressSpace`]: the IOVA space assembled from vfio-user `DMA_MAP` / `DMA_UNMAP`.
//! - [`DmaEngine`]: a DMA port: IOMMU translation with permission checks and an
//!   IOTLB (PCIe ATS), bus accounting per [`DmaKind`], the dirty-page log, the write trace.
//! - [`DmaPorts`]: a device's ports, one per queue, configured and counted as one.
//! - [`SharedMemory`]: the memfd the driver model (or a VMM) shares with the device.
//! - [`WriteTrace`]: an independent record of written pages, the oracle for the dirty log.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod bus_stats;
mod dirty_log;
mod guard;
mod iommu;
mod memory;
pub mod ports;
pub(crate) mod prefetch;
mod shm;
mod write_trace;

use std::mem::MaybeUninit;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub use bus_stats::{BusStats, DmaKind, PcieModel, PcieTraffic, Traffic, RING_INDEX_WRITE_MAX};
pub use dirty_log::{LogConfig, LogStats, MAX_LOG_GRANULARITY};
pub use guard::contained_sigbus;
pub use iommu::{DmaFault, IommuStats, MAX_IOTLB_ENTRIES};
pub use memory::{
    AddressSpace, Backing, MapError, MapStats, MappingInfo, Perms, MAX_BACKING_FILES, PAGE_SIZE,
};
pub use ports::{DmaPorts, LogFaultSlot};
pub use shm::{SharedMemory, ShmError};
pub use write_trace::WriteTrace;

use dirty_log::DirtyLog;
use iommu::{Iommu, Route};

/// Accesses of [`DmaEngine::write_gather`] up to this many bytes are joined on the stack and
/// copied into guest memory once.
const GATHER_STAGE: usize = 256;

/// A readable window of guest memory ([`DmaEngine::peek_window`]), valid while the engine it
/// came from is borrowed: the engine's snapshot keeps the mapping's mmap alive, and only a
/// `&mut` call can replace the snapshot.
#[derive(Debug)]
pub struct PeekWindow<'a> {
    p: *const u8,
    len: usize,
    _engine: std::marker::PhantomData<&'a DmaEngine>,
}

impl PeekWindow<'_> {
    /// The 16 bytes at `offset` into the window, or `None` past its end.
    #[inline]
    pub fn get16(&self, offset: usize) -> Option<[u8; 16]> {
        if offset.checked_add(16)? > self.len {
            return None;
        }
        // SAFETY: `[p, p + len)` is the host mapping of the window, readable and kept mapped
        // while the engine is borrowed (the type's doc), and `offset + 16 <= len`. As in
        // `DmaEngine::peek16`: the peer may write it concurrently (the value is a hint), and a
        // SIGBUS is taken by the guard and seen by the next real access.
        Some(unsafe { std::ptr::read_unaligned(self.p.add(offset).cast::<[u8; 16]>()) })
    }
}

/// A DMA port: one per queue of a device ([`DmaPorts`]), used by whoever services that queue
/// (`&mut self`).
///
/// Reads and writes are translated through the IOMMU (IOTLB first), checked against the
/// mapping's permissions, counted per [`DmaKind`], logged in the dirty log when logging is
/// on, and recorded in the [`WriteTrace`] when one is set. A faulted access touches nothing.
pub struct DmaEngine {
    iommu: Iommu,
    bus: BusStats,
    log: DirtyLog,
    trace: Option<Arc<WriteTrace>>,
    /// Where a deferred-marking log fault waits (shared by a device's ports: [`ports`]).
    log_fault: LogFaultSlot,
    /// Kinds whose writes are deliberately not logged (bit per `DmaKind as u8`): fault
    /// injection for the device's `log-skips-used-ring` quirk, never set by a healthy device.
    unlogged: u8,
}

impl std::fmt::Debug for DmaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaEngine")
            .field("iotlb_entries", &self.iommu.entries())
            .field("logging", &self.log.config())
            .field("bus", &self.bus)
            .field("iommu", &self.iommu.stats)
            .field("log", &self.log.stats)
            .finish_non_exhaustive()
    }
}

macro_rules! atomic_read {
    ($(#[$doc:meta])* $name:ident, $t:ty, $atomic:ty) => {
        $(#[$doc])*
        pub fn $name(&mut self, iova: u64, kind: DmaKind) -> Result<$t, DmaFault> {
            const N: usize = std::mem::size_of::<$t>();
            let route = self.iommu.translate(iova, N as u64, false)?;
            if let Route::One(p) = route {
                if (p as usize) % std::mem::align_of::<$atomic>() == 0 {
                    // SAFETY: the IOMMU checked `[iova, iova + N)` is one readable, backed
                    // mapping, kept mapped by the engine's snapshot until the next translate;
                    // `p` is aligned for the atomic type.
                    let v = unsafe { <$atomic>::from_ptr(p.cast::<$t>()) }.load(Ordering::Acquire);
                    self.iommu.check_contained(iova, N as u64, false)?;
                    self.bus.access(kind, iova, N as u64, 1, false);
                    return Ok(<$t>::from_le(v));
                }
            }
            let mut b = [0u8; N];
            let txns = self.copy_in(route, iova, &mut b);
            fence(Ordering::Acquire);
            self.iommu.check_contained(iova, N as u64, false)?;
            self.bus.access(kind, iova, N as u64, txns, false);
            Ok(<$t>::from_le_bytes(b))
        }
    };
}

/// The most [`DmaEngine::prefetch`] asks for at once: two cache lines, a small frame and its
/// virtio-net header. Longer buffers are streams the CPU's own prefetchers follow.
pub const PREFETCH_MAX: u64 = 128;

impl DmaEngine {
    /// A DMA port on `space` with an `iotlb_entries`-entry direct-mapped IOTLB (rounded up to
    /// a power of two, at most [`MAX_IOTLB_ENTRIES`]; 0 = walk the mapping table every time).
    pub fn new(space: Arc<AddressSpace>, iotlb_entries: usize) -> Self {
        Self::sharing(
            space,
            iotlb_entries,
            Arc::default(),
            LogFaultSlot::default(),
        )
    }

    /// [`DmaEngine::new`] whose injected fault is `inject` and whose log faults wait in
    /// `log_fault` (both shared by a device's ports).
    pub(crate) fn sharing(
        space: Arc<AddressSpace>,
        iotlb_entries: usize,
        inject: Arc<AtomicBool>,
        log_fault: LogFaultSlot,
    ) -> Self {
        DmaEngine {
            iommu: Iommu::new(space, iotlb_entries, inject),
            bus: BusStats::default(),
            log: DirtyLog::new(),
            trace: None,
            log_fault,
            unlogged: 0,
        }
    }

    /// Arms one DMA fault: the next access that needs a translation fails with
    /// [`DmaFault::Injected`] (the IOTLB is flushed so that this is the very next access).
    pub fn inject_fault(&mut self) {
        self.iommu.inject_fault();
    }

    /// Drops an injected fault that met no access yet (device reset).
    pub fn disarm_fault(&mut self) {
        self.iommu.disarm_fault();
    }

    /// Whether an injected fault has not met an access yet.
    pub fn fault_armed(&self) -> bool {
        self.iommu.fault_armed()
    }

    /// The IOVA space this engine translates through.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.iommu.space
    }

    /// Number of IOTLB entries actually allocated.
    pub fn iotlb_entries(&self) -> usize {
        self.iommu.entries()
    }

    /// Copies a validated route into `buf`; returns the transaction count.
    #[inline(always)]
    fn copy_in(&self, route: Route, iova: u64, buf: &mut [u8]) -> u64 {
        match route {
            Route::One(p) => {
                // SAFETY: the IOMMU validated `[iova, iova + buf.len())` as one readable,
                // fd-backed mapping; `p` is its host address and the mmap is kept alive by the
                // engine's snapshot. `buf` is a distinct Rust allocation so the ranges cannot
                // overlap. Guest memory may change concurrently (the peer is another process
                // or the driver model), as with vm-memory's copies.
                unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
                1
            }
            Route::Split { first, last } => {
                self.iommu
                    .for_each_segment(first, last, iova, buf.len() as u64, |p, off, n| {
                        // SAFETY: each segment is a validated, backed piece of the access
                        // inside its mapping, and `off + n <= buf.len()` by construction.
                        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr().add(off), n) };
                    });
                (last - first + 1) as u64
            }
        }
    }

    /// Copies `data` out through a validated route; returns the transaction count.
    #[inline(always)]
    fn copy_out(&self, route: Route, iova: u64, data: &[u8]) -> u64 {
        match route {
            Route::One(p) => {
                // SAFETY: the IOMMU validated `[iova, iova + data.len())` as one writable,
                // fd-backed mapping; `p` is its host address and the mmap is kept alive by the
                // engine's snapshot; `data` is a distinct Rust allocation.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
                1
            }
            Route::Split { first, last } => {
                self.iommu
                    .for_each_segment(first, last, iova, data.len() as u64, |p, off, n| {
                        // SAFETY: each segment is a validated, writable, backed piece of the
                        // access, and `off + n <= data.len()` by construction.
                        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(off), p, n) };
                    });
                (last - first + 1) as u64
            }
        }
    }

    /// The 16 bytes at `iova` when the IOTLB holds them for reading right now, else `None`.
    ///
    /// Not an access: nothing is counted, checked or logged, and a miss does not walk the
    /// mapping table. It is for deciding what to [`Self::prefetch`] (a split descriptor's
    /// buffer address); what the device acts on is read again with [`Self::read`], which
    /// translates and checks as always.
    #[inline]
    pub fn peek16(&self, iova: u64) -> Option<[u8; 16]> {
        let p = self.iommu.probe(iova, 16, false)?;
        // SAFETY: as in `read`: `[iova, iova + 16)` lies in one readable, fd-backed mapping of
        // the current generation, kept mapped by the engine's snapshot. The peer may write it
        // concurrently; the value is only a hint. A SIGBUS (the backing file shrank) is taken
        // by the guard and seen by the next real access's `check_contained`.
        Some(unsafe { std::ptr::read_unaligned(p.cast::<[u8; 16]>()) })
    }

    /// [`Self::peek16`] for many reads of one area, with one translation: the window
    /// `[iova, iova + len)` when the IOTLB holds all of it for reading right now (in one
    /// mapping), else `None`. For hints only, as `peek16`: a split ring's descriptor table,
    /// whose heads' descriptors are peeked to prefetch their buffers.
    #[inline]
    pub fn peek_window(&self, iova: u64, len: u64) -> Option<PeekWindow<'_>> {
        let p = self.iommu.probe(iova, len, false)?;
        Some(PeekWindow {
            p: p.cast_const(),
            len: usize::try_from(len).ok()?,
            _engine: std::marker::PhantomData,
        })
    }

    /// Asks the CPU to bring the cache lines of `[iova, iova + len)` (at most
    /// [`PREFETCH_MAX`] bytes) toward this core before a [`Self::read`] of them, as a NIC's
    /// DMA engine issues its reads ahead of the data it works on.
    ///
    /// The data a driver just wrote sits in its own core's cache; a device's read of it is a
    /// cross-core transfer (55-90 ns on the machines of docs/bench.md), and a frame copy
    /// that waits for each one in turn is bound by that latency. Hints for the next chains
    /// let those transfers overlap. Not an access: nothing is counted, checked or logged; an
    /// address the IOTLB does not hold right now is skipped (the read translates as always),
    /// and a prefetch never faults.
    #[inline]
    pub fn prefetch(&self, iova: u64, len: u64) {
        self.prefetch_lines(iova, len, false);
    }

    /// [`Self::prefetch`] ahead of a [`Self::write`]: the lines come with the intent to write
    /// them (x86 PREFETCHW), so the write does not wait for the driver's core to give up its
    /// copy. The IOTLB must hold the range as writable.
    #[inline]
    pub fn prefetch_for_write(&self, iova: u64, len: u64) {
        self.prefetch_lines(iova, len, true);
    }

    #[inline(always)]
    fn prefetch_lines(&self, iova: u64, len: u64, write: bool) {
        let len = len.min(PREFETCH_MAX);
        if len == 0 {
            return;
        }
        let Some(p) = self.iommu.probe(iova, len, write) else {
            return;
        };
        prefetch::lines(p, len as usize, write);
    }

    /// DMA read of `buf.len()` bytes at `iova` (an empty read succeeds without translation).
    #[inline]
    pub fn read(&mut self, iova: u64, buf: &mut [u8], kind: DmaKind) -> Result<(), DmaFault> {
        match self.read_if_cached(iova, buf, kind) {
            Some(read) => read,
            None => self.read_slow(iova, buf, kind),
        }
    }

    /// [`Self::read`] when the IOTLB holds the translation of all of `[iova, iova +
    /// buf.len())` right now: `Some` with the read's result (counted, checked and accounted as
    /// `read` does); `None`, with nothing read, counted or faulted, when it does not. For a
    /// read ahead that is worth it only when cheap and whose miss or fault, if any, belongs to
    /// the access that needs the bytes (a split ring's run of head descriptors).
    #[inline(always)]
    pub fn read_if_cached(
        &mut self,
        iova: u64,
        buf: &mut [u8],
        kind: DmaKind,
    ) -> Option<Result<(), DmaFault>> {
        let len = buf.len() as u64;
        let p = self.iommu.lookup_hit(iova, len, false)?;
        // SAFETY: an IOTLB hit of the current generation: `[iova, iova + len)` lies in one
        // readable, fd-backed mapping whose mmap the engine's snapshot keeps alive, and `p` is
        // its host address. `buf` is a distinct Rust allocation, so the ranges do not overlap.
        // Guest memory may change concurrently (the peer is another process or the driver
        // model), as with vm-memory's copies.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        if let Err(f) = self.iommu.check_contained(iova, len, false) {
            return Some(Err(f));
        }
        self.bus.access(kind, iova, len, 1, false);
        Some(Ok(()))
    }

    /// DMA read of `N` bytes at `iova` into an array: [`Self::read`] with the length known at
    /// compile time, so an IOTLB hit copies with a few loads instead of a call to `memcpy`
    /// (a split ring descriptor, 16 bytes, is read once per descriptor). The bytes go into
    /// `buf` rather than into the returned `Result`: there an array of bytes sits unaligned
    /// behind the discriminant, the caller moved it out piecewise and read it back as words,
    /// and a third of the split ring's `pop` samples sat on that store-forwarding stall.
    #[inline(always)]
    pub fn read_array<const N: usize>(
        &mut self,
        iova: u64,
        buf: &mut [u8; N],
        kind: DmaKind,
    ) -> Result<(), DmaFault> {
        if let Some(p) = self.iommu.lookup_hit(iova, N as u64, false) {
            // SAFETY: as in `read`: an IOTLB hit of the current generation, so `[iova,
            // iova + N)` lies in one readable, fd-backed mapping kept alive by the engine's
            // snapshot and `p` is its host address. Guest memory may change concurrently.
            *buf = unsafe { std::ptr::read_unaligned(p.cast::<[u8; N]>()) };
            self.iommu.check_contained(iova, N as u64, false)?;
            self.bus.access(kind, iova, N as u64, 1, false);
            return Ok(());
        }
        self.read_slow(iova, buf, kind)
    }

    /// DMA read of `N` little-endian 64-bit words at `iova` (N <= 8): [`Self::read_array`]
    /// for a record read as words (a split ring descriptor is two), returned in registers.
    #[inline(always)]
    pub fn read_words<const N: usize>(
        &mut self,
        iova: u64,
        kind: DmaKind,
    ) -> Result<[u64; N], DmaFault> {
        const { assert!(N <= 8) };
        let len = 8 * N as u64;
        if let Some(p) = self.iommu.lookup_hit(iova, len, false) {
            // SAFETY: as in `read_array`: an IOTLB hit of the current generation, so `[iova,
            // iova + 8 N)` lies in one readable, fd-backed mapping kept alive by the engine's
            // snapshot and `p` is its host address. Guest memory may change concurrently.
            let w = unsafe { std::ptr::read_unaligned(p.cast::<[u64; N]>()) };
            self.iommu.check_contained(iova, len, false)?;
            self.bus.access(kind, iova, len, 1, false);
            return Ok(w.map(u64::from_le));
        }
        let mut b = [0u8; 64];
        self.read_slow(iova, &mut b[..8 * N], kind)?;
        Ok(std::array::from_fn(|i| {
            u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"))
        }))
    }

    #[inline(never)]
    fn read_slow(&mut self, iova: u64, buf: &mut [u8], kind: DmaKind) -> Result<(), DmaFault> {
        if buf.is_empty() {
            return Ok(());
        }
        let route = self.iommu.translate_slow(iova, buf.len() as u64, false)?;
        let txns = self.copy_in(route, iova, buf);
        self.iommu.check_contained(iova, buf.len() as u64, false)?;
        self.bus.access(kind, iova, buf.len() as u64, txns, false);
        Ok(())
    }

    /// DMA read of a ring of `record`-byte entries, each published by the little-endian u16
    /// at `flag_at` inside it (a packed virtqueue's descriptors: the driver writes a
    /// descriptor's body, then its flags after a barrier, virtio 1.2 2.8.21.1).
    ///
    /// Returns how many leading records `ready(flags)` accepts; those records are copied into
    /// `buf` with every byte of each at least as new as the flags that published it (the rest
    /// of `buf` is unspecified). The flags words are loaded first, then an Acquire
    /// fence, then the ready records are copied: every byte is read once, as a device that
    /// reads the window in one request (a 16-byte descriptor never straddles a cache line)
    /// sees it. Accounted as one read of all of `buf` (the request the device issues before it
    /// can look at any flags), translated and checked as one access; a fault reads nothing.
    ///
    /// `buf.len()` must be a multiple of `record` and `flag_at + 2 <= record` (panics
    /// otherwise: a caller's constant, not input). An empty `buf` returns 0 without an access.
    pub fn read_published(
        &mut self,
        iova: u64,
        buf: &mut [u8],
        record: usize,
        flag_at: usize,
        kind: DmaKind,
        mut ready: impl FnMut(u16) -> bool,
    ) -> Result<usize, DmaFault> {
        assert!(
            flag_at + 2 <= record && buf.len() % record == 0,
            "read_published: {} bytes are not whole {record}-byte records with flags at {flag_at}",
            buf.len()
        );
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len() as u64;
        let route = match self.iommu.lookup_hit(iova, len, false) {
            Some(p) => Route::One(p),
            None => self.iommu.translate_slow(iova, len, false)?,
        };
        let (ready_n, txns) = match route {
            Route::One(p) => {
                let mut n = 0;
                // Every flags word has the alignment of the first when records are even-sized.
                let aligned = record % 2 == 0
                    && (p as usize + flag_at) % std::mem::align_of::<AtomicU16>() == 0;
                for r in 0..buf.len() / record {
                    // SAFETY: `r * record + flag_at + 2 <= buf.len()`, and the IOMMU validated
                    // `[iova, iova + buf.len())` as one readable, backed mapping whose mmap the
                    // engine's snapshot keeps alive; `p` is its host address.
                    let fp = unsafe { p.add(r * record + flag_at) };
                    let flags = if aligned {
                        // SAFETY: as above, and `fp` is aligned for the atomic type.
                        unsafe { AtomicU16::from_ptr(fp.cast::<u16>()) }.load(Ordering::Relaxed)
                    } else {
                        // SAFETY: as above; an unaligned read of two bytes.
                        unsafe { std::ptr::read_unaligned(fp.cast::<u16>()) }
                    };
                    if !ready(u16::from_le(flags)) {
                        break;
                    }
                    n += 1;
                }
                // Pairs with the driver's barrier between a descriptor's body and its flags.
                fence(Ordering::Acquire);
                // SAFETY: `n * record <= buf.len()` bytes of the validated range above into
                // `buf`, a distinct Rust allocation (no overlap). Guest memory may change
                // concurrently, as with vm-memory's copies.
                unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n * record) };
                (n, 1)
            }
            route @ Route::Split { .. } => {
                // Over adjacent mappings (rare: a ring across two DMA_MAPs): the window is
                // copied, its flags looked at, and the ready records copied again after the
                // fence. The device still issues one request; only the model copies twice.
                let txns = self.copy_in(route, iova, buf);
                let n = buf
                    .chunks_exact(record)
                    .take_while(|c| ready(u16::from_le_bytes([c[flag_at], c[flag_at + 1]])))
                    .count();
                fence(Ordering::Acquire);
                if n > 0 {
                    self.copy_in(route, iova, buf);
                }
                (n, txns)
            }
        };
        self.iommu.check_contained(iova, len, false)?;
        self.bus.access(kind, iova, len, txns, false);
        Ok(ready_n)
    }

    /// DMA write of `data` at `iova`; marks the pages in the dirty log (pending) when logging
    /// is on and records them in the write trace. Kind `LogWrite` is never logged or traced.
    #[inline]
    pub fn write(&mut self, iova: u64, data: &[u8], kind: DmaKind) -> Result<(), DmaFault> {
        let len = data.len() as u64;
        if let Some(p) = self.iommu.lookup_hit(iova, len, true) {
            // SAFETY: an IOTLB hit of the current generation: `[iova, iova + len)` lies in
            // one writable, fd-backed mapping whose mmap the engine's snapshot keeps alive,
            // and `p` is its host address; `data` is a distinct Rust allocation.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
            self.iommu.check_contained(iova, len, true)?;
            self.bus
                .access(kind, iova, len, 1, kind == DmaKind::PacketWrite);
            self.after_write(iova, len, kind);
            return Ok(());
        }
        self.write_slow(iova, data, kind)
    }

    /// DMA write of `head` then `tail` as one access of `head.len() + tail.len()` bytes at
    /// `iova`: one translation, one check, one transaction in the bus model and the dirty log,
    /// as a device writes a received frame and the header it builds for it in one request.
    /// A fault writes nothing.
    #[inline]
    pub fn write_gather(
        &mut self,
        iova: u64,
        head: &[u8],
        tail: &[u8],
        kind: DmaKind,
    ) -> Result<(), DmaFault> {
        let len = (head.len() + tail.len()) as u64;
        if let Some(p) = self.iommu.lookup_hit(iova, len, true) {
            if len as usize <= GATHER_STAGE {
                // Small (a short frame and its header): joined on the stack first, so guest
                // memory gets one copy. Measured 8% more 64-byte RX frames per second than two
                // copies into guest memory (docs/bench.md). The stage is not zeroed first: only
                // its first `len` bytes, written here, are read (zeroing all 256 cost the 1-QP
                // RX cell 3-4%).
                let mut stage = MaybeUninit::<[u8; GATHER_STAGE]>::uninit();
                let sp = stage.as_mut_ptr().cast::<u8>();
                // SAFETY: `stage` is a local of GATHER_STAGE >= len bytes: `head` fills its
                // first `head.len()`, `tail` the rest of `len`, and only those `len` bytes are
                // read, by the last copy. As in `write`: `[iova, iova + len)` lies in one
                // writable, fd-backed mapping kept alive by the engine's snapshot and `p` is
                // its host address. All are distinct allocations (no overlap).
                unsafe {
                    std::ptr::copy_nonoverlapping(head.as_ptr(), sp, head.len());
                    std::ptr::copy_nonoverlapping(tail.as_ptr(), sp.add(head.len()), tail.len());
                    std::ptr::copy_nonoverlapping(sp.cast_const(), p, len as usize);
                }
            } else {
                // SAFETY: as above; `head` goes to `p`, `tail` right after it, together
                // exactly `len` bytes; both are distinct Rust allocations.
                unsafe {
                    std::ptr::copy_nonoverlapping(head.as_ptr(), p, head.len());
                    std::ptr::copy_nonoverlapping(tail.as_ptr(), p.add(head.len()), tail.len());
                }
            }
            self.iommu.check_contained(iova, len, true)?;
            self.bus
                .access(kind, iova, len, 1, kind == DmaKind::PacketWrite);
            self.after_write(iova, len, kind);
            return Ok(());
        }
        // A miss, or a mapping boundary inside the access: rare, so one copy into a buffer.
        let mut both = Vec::with_capacity(head.len() + tail.len());
        both.extend_from_slice(head);
        both.extend_from_slice(tail);
        self.write_slow(iova, &both, kind)
    }

    #[inline(never)]
    fn write_slow(&mut self, iova: u64, data: &[u8], kind: DmaKind) -> Result<(), DmaFault> {
        if data.is_empty() {
            return Ok(());
        }
        let route = self.iommu.translate_slow(iova, data.len() as u64, true)?;
        let txns = self.copy_out(route, iova, data);
        self.iommu.check_contained(iova, data.len() as u64, true)?;
        self.bus.access(
            kind,
            iova,
            data.len() as u64,
            txns,
            kind == DmaKind::PacketWrite,
        );
        self.after_write(iova, data.len() as u64, kind);
        Ok(())
    }

    /// Dirty-log marking and write tracing of a successful write.
    #[inline(always)]
    fn after_write(&mut self, iova: u64, len: u64, kind: DmaKind) {
        if kind == DmaKind::LogWrite {
            return;
        }
        if self.log.enabled() && self.unlogged & (1 << kind as u8) == 0 {
            if let Err(f) = self
                .log
                .mark(iova, len, kind, &mut self.iommu, &mut self.bus)
            {
                self.note_log_fault(f);
            }
        }
        if let Some(t) = &self.trace {
            t.record(iova, len);
        }
    }

    #[cold]
    fn note_log_fault(&mut self, f: DmaFault) {
        tracing::warn!(%f, "dirty log write faulted");
        self.log_fault.note(f);
    }

    atomic_read!(
        /// Little-endian u16 DMA read with Acquire ordering (reading `avail->idx`); a
        /// misaligned or split access falls back to a byte copy followed by an Acquire fence.
        read_u16, u16, AtomicU16
    );
    atomic_read!(
        /// Little-endian u32 DMA read with Acquire ordering (see [`read_u16`](Self::read_u16)).
        read_u32, u32, AtomicU32
    );
    atomic_read!(
        /// Little-endian u64 DMA read with Acquire ordering (see [`read_u16`](Self::read_u16)).
        read_u64, u64, AtomicU64
    );

    /// Plain little-endian u16 DMA write (logged like [`write`](Self::write)).
    pub fn write_u16(&mut self, iova: u64, val: u16, kind: DmaKind) -> Result<(), DmaFault> {
        self.write(iova, &val.to_le_bytes(), kind)
    }

    /// Plain little-endian u32 DMA write (logged like [`write`](Self::write)).
    pub fn write_u32(&mut self, iova: u64, val: u32, kind: DmaKind) -> Result<(), DmaFault> {
        self.write(iova, &val.to_le_bytes(), kind)
    }

    /// Plain little-endian u64 DMA write (logged like [`write`](Self::write)).
    pub fn write_u64(&mut self, iova: u64, val: u64, kind: DmaKind) -> Result<(), DmaFault> {
        self.write(iova, &val.to_le_bytes(), kind)
    }

    /// Publishes an index (`used->idx`): checks the address, marks its page, flushes ALL
    /// pending log bits (so every log bit for the writes it publishes is visible first), then
    /// stores `val` little-endian with Release ordering. If the flush faults, the index is
    /// NOT stored and the log fault is returned (the log is broken; the device should stop).
    #[inline]
    pub fn publish_u16(&mut self, iova: u64, val: u16, kind: DmaKind) -> Result<(), DmaFault> {
        let mut route = self.iommu.translate(iova, 2, true)?;
        let generation = self.iommu.cached_generation();
        if kind != DmaKind::LogWrite && self.log.enabled() && self.unlogged & (1 << kind as u8) == 0
        {
            // The translation succeeded, so `iova + 2` does not overflow. A fault of a
            // buffer-full flush inside `mark` also stops the publish.
            self.log
                .mark(iova, 2, kind, &mut self.iommu, &mut self.bus)?;
        }
        self.flush_log()?;
        if self.iommu.cached_generation() != generation {
            // A log flush reloaded the snapshot: `route` may point into a dropped mmap.
            route = self.iommu.translate(iova, 2, true)?;
        }
        let txns = match route {
            Route::One(p) if (p as usize) % std::mem::align_of::<AtomicU16>() == 0 => {
                // SAFETY: validated writable, backed 2-byte range of the current snapshot
                // (the generation did not move since, or it was re-translated); aligned.
                unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }
                    .store(val.to_le(), Ordering::Release);
                1
            }
            route => {
                fence(Ordering::Release);
                self.copy_out(route, iova, &val.to_le_bytes())
            }
        };
        self.iommu.check_contained(iova, 2, true)?;
        self.bus.access(kind, iova, 2, txns, false);
        if kind != DmaKind::LogWrite {
            if let Some(t) = &self.trace {
                t.record(iova, 2);
            }
        }
        Ok(())
    }

    /// Turns dirty logging on (`Some`) or off (`None`). Pending bits are flushed into the
    /// previous log first; a fault there is counted and kept for [`take_log_fault`](Self::take_log_fault).
    pub fn set_logging(&mut self, cfg: Option<LogConfig>) {
        if let Err(f) = self.flush_log() {
            self.note_log_fault(f);
        }
        if let Some(c) = cfg {
            let s = c.sanitized();
            if s != c {
                tracing::warn!(
                    requested = c.granularity,
                    used = s.granularity,
                    "dirty log granularity adjusted"
                );
            }
        }
        self.log.configure(cfg);
        tracing::debug!(?cfg, "dirty logging");
    }

    /// The active log config (granularity sanitized), `None` when logging is off.
    pub fn logging(&self) -> Option<LogConfig> {
        self.log.config()
    }

    /// Writes all pending log bits into the log now. Returns the first fault (the other
    /// words are still written; faulted bits are dropped and counted in [`LogStats::faults`]).
    #[inline]
    pub fn flush_log(&mut self) -> Result<(), DmaFault> {
        if self.log.pending_words() == 0 {
            return Ok(());
        }
        self.log.flush(&mut self.iommu, &mut self.bus)
    }

    /// Distinct log words waiting for a flush.
    pub fn pending_log_words(&self) -> usize {
        self.log.pending_words()
    }

    /// The first dirty-log fault hit by an implicit flush (buffer full, logging switched,
    /// engine dropped) since the last call; for ports made by [`ports::engines`], of any of
    /// the device's ports (they share one [`LogFaultSlot`]).
    pub fn take_log_fault(&mut self) -> Option<DmaFault> {
        self.log_fault.take()
    }

    /// Where this port's log faults wait: [`DmaEngine::take_log_fault`] without the port (a
    /// device's ports share one, so a device takes every port's fault without locking them).
    pub fn log_fault_slot(&self) -> LogFaultSlot {
        self.log_fault.clone()
    }

    /// Bus traffic per kind.
    pub fn bus_stats(&self) -> &BusStats {
        &self.bus
    }

    /// The function's PCIe Max_Payload_Size and Max_Read_Request_Size in bytes (from its Device
    /// Control register; rounded down to a power of two in 128..=4096): later accesses are cut
    /// into TLPs by them (see [`PcieModel`]). The reset value is MPS 128, MRRS 512.
    pub fn set_pcie_limits(&mut self, mps: u32, mrrs: u32) {
        let m = self.bus.model();
        if (m.mps, m.mrrs) != (mps, mrrs) {
            self.bus.set_model(PcieModel { mps, mrrs, ..m });
        }
    }

    /// Replaces the whole PCIe model (completer RCB and completion size, header overheads).
    pub fn set_pcie_model(&mut self, model: PcieModel) {
        self.bus.set_model(model);
    }

    /// The PCIe model accesses are cut by.
    pub fn pcie_model(&self) -> PcieModel {
        self.bus.model()
    }

    /// IOTLB and fault counters.
    pub fn iommu_stats(&self) -> &IommuStats {
        &self.iommu.stats
    }

    /// Dirty-log counters.
    pub fn log_stats(&self) -> &LogStats {
        &self.log.stats
    }

    /// Zeroes the bus, IOMMU and log counters (the PCIe model stays).
    pub fn reset_stats(&mut self) {
        self.bus.clear();
        self.iommu.stats = IommuStats::default();
        self.log.stats = LogStats::default();
    }

    /// Writes of these kinds are no longer marked in the dirty log (they are still traced).
    /// Fault injection: models a device that forgets to log, e.g., its used-ring writes.
    pub fn set_unlogged_kinds(&mut self, kinds: &[DmaKind]) {
        self.unlogged = kinds.iter().fold(0, |m, &k| m | (1 << k as u8));
    }

    /// Records every later successful write (except `LogWrite`) in `trace`; `None` stops.
    pub fn set_write_trace(&mut self, trace: Option<Arc<WriteTrace>>) {
        self.trace = trace;
    }

    /// The write trace in use, if any.
    pub fn write_trace(&self) -> Option<&Arc<WriteTrace>> {
        self.trace.as_ref()
    }

    /// Drops every cached translation (counted as an invalidation), like an ATS
    /// invalidation request.
    pub fn invalidate_iotlb(&mut self) {
        self.iommu.invalidate();
    }

    /// Catches up with the address space now: after a DMA_UNMAP the engine must hold no
    /// reference to the unmapped memory (vfio-user: all references are released before the
    /// unmap is acknowledged), so the VMM's memfd is really let go.
    pub fn sync_space(&mut self) {
        self.iommu.sync();
    }
}

impl Drop for DmaEngine {
    fn drop(&mut self) {
        // Best effort: pending bits of a dropped engine still reach the log.
        if let Err(f) = self.flush_log() {
            tracing::warn!(%f, "dirty log flush on drop faulted");
        }
    }
}

#[cfg(test)]
mod tests;
