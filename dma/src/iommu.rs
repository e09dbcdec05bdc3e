//! The IOMMU model: IOVA translation with permission checks, and a direct-mapped IOTLB that
//! models PCIe ATS (the device caches translations and must drop them when the IOVA space
//! changes).
//!
//! An IOTLB entry caches the whole mapping containing a page, so one hit covers an access
//! anywhere inside that mapping. The table is flushed whenever the address space's generation
//! moves (checked with one Acquire load per access).
//!
//! Entries are looked up by 4 KiB page, or by 2 MiB block when the mapping covers the whole
//! aligned block: an IOMMU maps such a range with a superpage (VT-d second-level 2 MiB pages,
//! Linux drivers/iommu/intel/iommu.c hardware_largepage_caps), and its ATS Translation
//! Completion then reports the larger size (PCIe 6.0 10.2.3, the S bit), so one ATC entry of the
//! device covers the block. Guest RAM mapped whole by QEMU (DMA_MAP of a RAM region) or DPDK's
//! hugepages thus cost one entry per 2 MiB instead of one per page; a vIOMMU's 4 KiB mappings
//! still cost one per page.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::memory::{AddressSpace, Snapshot, PAGE_SHIFT};

/// A DMA access the IOMMU refused. Nothing was read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    /// The first byte is not mapped.
    #[error("DMA fault: IOVA {iova:#x} (len {len}) is not mapped")]
    Unmapped {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
    },
    /// The mapping does not allow this direction.
    #[error("DMA fault: {} of IOVA {iova:#x} (len {len}) not permitted by the mapping", if *write { "write" } else { "read" })]
    Permission {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
        /// True for a write.
        write: bool,
    },
    /// The start is mapped but the access runs past the end of the mapped run into a hole.
    #[error("DMA fault: access at IOVA {iova:#x} (len {len}) runs past mapping end {mapping_end:#x} into unmapped space")]
    CrossesMappingEnd {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
        /// Exclusive end of the contiguous mapped run the access starts in.
        mapping_end: u64,
    },
    /// The range is mapped without an fd (QEMU ROM ranges, RAM without `share=on`).
    #[error("DMA fault: IOVA {iova:#x} (len {len}) is mapped without backing memory (no fd)")]
    NoBacking {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
    },
    /// The mapping's backing file lost the memory under it: the client truncated it after
    /// DMA_MAP, or a hole of a sparse file could not be allocated (full tmpfs, exhausted
    /// hugetlbfs). The SIGBUS was contained (see the `guard` module); the mapping stays
    /// unusable until it is unmapped.
    #[error("DMA fault: IOVA {iova:#x} (len {len}) lies in mapping {mapping_iova:#x}+{mapping_size:#x} whose backing file lost its memory (truncated, or a hole with no space left): SIGBUS contained")]
    BackingLost {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
        /// First IOVA of the poisoned mapping.
        mapping_iova: u64,
        /// Its size.
        mapping_size: u64,
    },
    /// `iova + len` does not fit in 64 bits.
    #[error("DMA fault: IOVA {iova:#x} + len {len} overflows the 64-bit IOVA space")]
    AddressOverflow {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
    },
    /// A fault armed on purpose (`vdpa-emu ctl fault inject dma-fault`): the access that met
    /// it was refused as an IOMMU translation fault would be, whatever the mapping says.
    #[error("DMA fault: IOVA {iova:#x} (len {len}): injected translation fault")]
    Injected {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
    },
}

impl DmaFault {
    /// IOVA of the faulting access.
    pub fn iova(&self) -> u64 {
        match *self {
            DmaFault::Unmapped { iova, .. }
            | DmaFault::Permission { iova, .. }
            | DmaFault::CrossesMappingEnd { iova, .. }
            | DmaFault::NoBacking { iova, .. }
            | DmaFault::BackingLost { iova, .. }
            | DmaFault::AddressOverflow { iova, .. }
            | DmaFault::Injected { iova, .. } => iova,
        }
    }
}

/// IOTLB and fault counters of one DMA engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuStats {
    /// Accesses whose first page was found in the IOTLB.
    pub iotlb_hits: u64,
    /// Accesses that had to walk the mapping table (always, with a 0-entry IOTLB).
    pub iotlb_misses: u64,
    /// IOTLB flushes (generation change or explicit invalidation).
    pub iotlb_invalidations: u64,
    /// [`DmaFault::Unmapped`] count.
    pub faults_unmapped: u64,
    /// [`DmaFault::Permission`] count.
    pub faults_permission: u64,
    /// [`DmaFault::CrossesMappingEnd`] count.
    pub faults_crossing: u64,
    /// [`DmaFault::NoBacking`] count.
    pub faults_no_backing: u64,
    /// [`DmaFault::AddressOverflow`] count.
    pub faults_overflow: u64,
    /// [`DmaFault::BackingLost`] count.
    pub faults_backing_lost: u64,
    /// [`DmaFault::Injected`] count.
    pub faults_injected: u64,
}

impl IommuStats {
    /// Adds `o`'s counters to these (saturating): several engines counted as one.
    pub fn absorb(&mut self, o: &IommuStats) {
        let IommuStats {
            iotlb_hits,
            iotlb_misses,
            iotlb_invalidations,
            faults_unmapped,
            faults_permission,
            faults_crossing,
            faults_no_backing,
            faults_overflow,
            faults_backing_lost,
            faults_injected,
        } = *o;
        for (a, b) in [
            (&mut self.iotlb_hits, iotlb_hits),
            (&mut self.iotlb_misses, iotlb_misses),
            (&mut self.iotlb_invalidations, iotlb_invalidations),
            (&mut self.faults_unmapped, faults_unmapped),
            (&mut self.faults_permission, faults_permission),
            (&mut self.faults_crossing, faults_crossing),
            (&mut self.faults_no_backing, faults_no_backing),
            (&mut self.faults_overflow, faults_overflow),
            (&mut self.faults_backing_lost, faults_backing_lost),
            (&mut self.faults_injected, faults_injected),
        ] {
            *a = a.saturating_add(b);
        }
    }

    /// All faults together.
    pub fn faults(&self) -> u64 {
        self.faults_unmapped
            + self.faults_permission
            + self.faults_crossing
            + self.faults_no_backing
            + self.faults_overflow
            + self.faults_backing_lost
            + self.faults_injected
    }
}

/// Where a validated access goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Route {
    /// One host range starting here (the whole access lies in one mapping).
    One(*mut u8),
    /// Spread over adjacent mappings `first..=last` of the current snapshot.
    Split { first: usize, last: usize },
}

const INVALID_TAG: u64 = u64::MAX;

/// log2 of the large translation size (2 MiB).
const LARGE_SHIFT: u32 = 21;
/// Marks a 2 MiB entry's tag (its block number), apart from 4 KiB tags (page numbers, which
/// never reach bit 62).
const LARGE_TAG: u64 = 1 << 62;

/// The IOTLB tags an access at `iova` may hit: its 2 MiB block's, then its page's.
#[inline(always)]
fn tags(iova: u64) -> [u64; 2] {
    [(iova >> LARGE_SHIFT) | LARGE_TAG, iova >> PAGE_SHIFT]
}

/// One cached translation: the whole mapping containing page (or 2 MiB block) `tag`.
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    tag: u64,
    start: u64,
    end: u64,
    host: usize,
    read_ok: bool,
    write_ok: bool,
}

impl TlbEntry {
    const EMPTY: TlbEntry = TlbEntry {
        tag: INVALID_TAG,
        start: 0,
        end: 0,
        host: 0,
        read_ok: false,
        write_ok: false,
    };
}

/// Largest IOTLB accepted (requests above are clamped).
pub const MAX_IOTLB_ENTRIES: usize = 1 << 16;

/// Translation state of one engine: its snapshot of the IOVA space, the IOTLB, counters.
pub(crate) struct Iommu {
    pub(crate) space: Arc<AddressSpace>,
    generation: u64,
    snap: Arc<Snapshot>,
    tlb: Box<[TlbEntry]>,
    mask: u64,
    /// The contained-SIGBUS epoch this engine's IOTLB was checked against.
    sigbus_epoch: u64,
    /// An injected fault waits for the next translation (see [`Iommu::inject_fault`]); shared
    /// by the engines of one device ([`crate::DmaPorts`]), so the device's next access meets it
    /// whichever queue makes it.
    inject_next: Arc<AtomicBool>,
    pub(crate) stats: IommuStats,
}

#[inline(always)]
fn tlb_index(tag: u64, mask: u64) -> usize {
    // Fold high bits in so that far-apart regions (guest RAM at 0 and DPDK's log at
    // 0x1000_0000_0000) do not evict each other on every flush. 2 MiB and 4 KiB entries share
    // the table (a direct-mapped cache: they may evict each other).
    ((tag ^ (tag >> 24)) & mask) as usize
}

impl Iommu {
    pub(crate) fn new(
        space: Arc<AddressSpace>,
        iotlb_entries: usize,
        inject_next: Arc<AtomicBool>,
    ) -> Self {
        let entries = match iotlb_entries {
            0 => 0,
            n => n
                .min(MAX_IOTLB_ENTRIES)
                .checked_next_power_of_two()
                .unwrap_or(MAX_IOTLB_ENTRIES),
        };
        // Generation first, then the table: a change in between shows up as a generation
        // mismatch on the next access and is reloaded then.
        let generation = space.generation();
        let snap = space.snapshot();
        Iommu {
            space,
            generation,
            snap,
            tlb: vec![TlbEntry::EMPTY; entries].into_boxed_slice(),
            mask: entries.saturating_sub(1) as u64,
            sigbus_epoch: crate::guard::epoch(),
            inject_next,
            stats: IommuStats::default(),
        }
    }

    pub(crate) fn entries(&self) -> usize {
        self.tlb.len()
    }

    /// Generation of the snapshot in use: while it is unchanged, routes stay valid.
    pub(crate) fn cached_generation(&self) -> u64 {
        self.generation
    }

    /// Reloads the snapshot if the IOVA space changed, dropping the engine's references to
    /// unmapped regions (their mmaps and fds) right away instead of at the next access.
    pub(crate) fn sync(&mut self) {
        let g = self.space.generation();
        if g != self.generation {
            self.reload(g);
        }
    }

    /// Drops every cached translation.
    pub(crate) fn invalidate(&mut self) {
        self.tlb.fill(TlbEntry::EMPTY);
        self.stats.iotlb_invalidations += 1;
    }

    /// Arms one translation fault for the next access. The IOTLB is flushed so that the next
    /// access takes the slow path, where the fault is met: the hit path stays branch-free.
    /// An engine sharing the flag with others flushes only its own IOTLB: [`crate::DmaPorts`]
    /// flushes every one.
    pub(crate) fn inject_fault(&mut self) {
        self.inject_next.store(true, Ordering::Relaxed);
        self.invalidate();
    }

    /// Drops an injected fault that met no access yet.
    pub(crate) fn disarm_fault(&mut self) {
        self.inject_next.store(false, Ordering::Relaxed);
    }

    /// Whether an injected fault is still waiting for an access.
    pub(crate) fn fault_armed(&self) -> bool {
        self.inject_next.load(Ordering::Relaxed)
    }

    #[cold]
    #[inline(never)]
    fn reload(&mut self, generation: u64) {
        self.snap = self.space.snapshot();
        self.generation = generation;
        self.invalidate();
        tracing::trace!(generation, "IOTLB invalidated: IOVA space changed");
    }

    /// The IOTLB-hit fast path: `Some(host)` if the generation is current and the cached
    /// entry for `iova`'s page covers the whole access with the right permission (counted as
    /// a hit); `None` otherwise, with nothing counted.
    #[inline(always)]
    pub(crate) fn lookup_hit(&mut self, iova: u64, len: u64, write: bool) -> Option<*mut u8> {
        let p = self.probe(iova, len, write)?;
        self.stats.iotlb_hits += 1;
        Some(p)
    }

    /// What [`Self::lookup_hit`] finds, without counting it: for hints (a prefetch), which
    /// are not accesses.
    #[inline(always)]
    pub(crate) fn probe(&self, iova: u64, len: u64, write: bool) -> Option<*mut u8> {
        if self.space.generation_fast() != self.generation {
            return None;
        }
        for tag in tags(iova) {
            let e = self.tlb.get(tlb_index(tag, self.mask))?;
            let allowed = if write { e.write_ok } else { e.read_ok };
            // `iova < e.end` first so that `e.end - iova` cannot underflow (a page may hold the
            // end of one mapping and the start of another). `len - 1 < e.end - iova` is
            // `len <= e.end - iova` for `len > 0` and never true for `len == 0` (wraps), so
            // empty accesses take the slow path, which treats them as no-ops without counting.
            if e.tag == tag
                && allowed
                && iova >= e.start
                && iova < e.end
                && len.wrapping_sub(1) < e.end - iova
            {
                // `host` maps `[start, end)` and `iova - start < end - start`: in bounds.
                return Some((e.host + (iova - e.start) as usize) as *mut u8);
            }
        }
        None
    }

    /// Translates `[iova, iova + len)` (`len > 0`) for a read or a write.
    ///
    /// The returned route is valid until the next call (which may replace the snapshot).
    #[inline(always)]
    pub(crate) fn translate(
        &mut self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<Route, DmaFault> {
        match self.lookup_hit(iova, len, write) {
            Some(p) => Ok(Route::One(p)),
            None => self.translate_slow(iova, len, write),
        }
    }

    /// After an access through a route of this engine: if a SIGBUS was contained anywhere
    /// since the last check (one load, see `guard::epoch`), drops the IOTLB and translates the access
    /// again, which refuses it with [`DmaFault::BackingLost`] if its memory was poisoned (the
    /// access then read zeros or wrote into private memory, and its result must be dropped).
    #[inline(always)]
    pub(crate) fn check_contained(
        &mut self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<(), DmaFault> {
        if crate::guard::epoch() == self.sigbus_epoch {
            return Ok(());
        }
        self.recheck(iova, len, write)
    }

    #[cold]
    #[inline(never)]
    fn recheck(&mut self, iova: u64, len: u64, write: bool) -> Result<(), DmaFault> {
        self.sigbus_epoch = crate::guard::epoch();
        self.invalidate();
        self.translate_slow(iova, len, write).map(|_| ())
    }

    /// Full translation: generation resync, IOTLB fill, walk over adjacent mappings, faults.
    #[cold]
    #[inline(never)]
    pub(crate) fn translate_slow(
        &mut self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<Route, DmaFault> {
        let generation = self.space.generation_fast();
        if generation != self.generation {
            self.reload(generation);
        }
        // One engine takes the fault: the load keeps the swap's cache-line write off the
        // ordinary miss path.
        if self.inject_next.load(Ordering::Relaxed)
            && self.inject_next.swap(false, Ordering::Relaxed)
        {
            return Err(self.fault(DmaFault::Injected { iova, len }));
        }
        let Some(end) = iova.checked_add(len) else {
            return Err(self.fault(DmaFault::AddressOverflow { iova, len }));
        };
        let cached = tags(iova).into_iter().any(|tag| {
            self.tlb
                .get(tlb_index(tag, self.mask))
                .is_some_and(|e| e.tag == tag && iova >= e.start && iova < e.end)
        });
        if cached {
            self.stats.iotlb_hits += 1;
        } else {
            self.stats.iotlb_misses += 1;
        }
        let Some(first) = self.snap.find(iova) else {
            return Err(self.fault(DmaFault::Unmapped { iova, len }));
        };
        if !cached {
            let m = &self.snap.maps[first];
            // A 2 MiB entry when the mapping covers the access's whole aligned block.
            let [large, page] = tags(iova);
            let block = iova & !((1u64 << LARGE_SHIFT) - 1);
            let covers_block = m.iova <= block
                && block
                    .checked_add(1 << LARGE_SHIFT)
                    .is_some_and(|e| e <= m.end);
            let tag = if covers_block { large } else { page };
            if let Some(e) = self.tlb.get_mut(tlb_index(tag, self.mask)) {
                *e = TlbEntry {
                    tag,
                    start: m.iova,
                    end: m.end,
                    host: m.host,
                    read_ok: m.perms.read && m.host != 0 && m.poisoned().is_none(),
                    write_ok: m.perms.write && m.host != 0 && m.poisoned().is_none(),
                };
            }
        }
        // Walk adjacent mappings until the access is covered, before touching anything.
        let mut last = first;
        while self.snap.maps[last].end < end {
            let cur_end = self.snap.maps[last].end;
            match self.snap.maps.get(last + 1) {
                Some(next) if next.iova == cur_end => last += 1,
                _ => {
                    return Err(self.fault(DmaFault::CrossesMappingEnd {
                        iova,
                        len,
                        mapping_end: cur_end,
                    }))
                }
            }
        }
        let maps = &self.snap.maps[first..=last];
        if maps
            .iter()
            .any(|m| !(if write { m.perms.write } else { m.perms.read }))
        {
            return Err(self.fault(DmaFault::Permission { iova, len, write }));
        }
        if maps.iter().any(|m| m.host == 0) {
            return Err(self.fault(DmaFault::NoBacking { iova, len }));
        }
        if let Some(m) = maps.iter().find(|m| m.poisoned().is_some()) {
            let f = DmaFault::BackingLost {
                iova,
                len,
                mapping_iova: m.iova,
                mapping_size: m.end - m.iova,
            };
            if let (Some(addr), Some(file)) = (m.poisoned(), m.file.as_ref()) {
                tracing::warn!(
                    %f,
                    file_offset = format_args!("{:#x}", file.file_offset_of(addr)),
                    "guest memory lost under a DMA mapping"
                );
            }
            return Err(self.fault(f));
        }
        if first == last {
            let m = &self.snap.maps[first];
            Ok(Route::One((m.host + (iova - m.iova) as usize) as *mut u8))
        } else {
            Ok(Route::Split { first, last })
        }
    }

    fn fault(&mut self, f: DmaFault) -> DmaFault {
        let s = &mut self.stats;
        match f {
            DmaFault::Unmapped { .. } => s.faults_unmapped += 1,
            DmaFault::Permission { .. } => s.faults_permission += 1,
            DmaFault::CrossesMappingEnd { .. } => s.faults_crossing += 1,
            DmaFault::NoBacking { .. } => s.faults_no_backing += 1,
            DmaFault::AddressOverflow { .. } => s.faults_overflow += 1,
            DmaFault::BackingLost { .. } => s.faults_backing_lost += 1,
            DmaFault::Injected { .. } => s.faults_injected += 1,
        }
        tracing::debug!(%f, "DMA fault");
        f
    }

    /// Calls `f(host, offset_in_access, seg_len)` for each piece of a `Route::Split` access.
    pub(crate) fn for_each_segment(
        &self,
        first: usize,
        last: usize,
        iova: u64,
        len: u64,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) {
        let end = iova + len;
        for m in &self.snap.maps[first..=last] {
            let s = iova.max(m.iova);
            let e = end.min(m.end);
            f(
                (m.host + (s - m.iova) as usize) as *mut u8,
                (s - iova) as usize,
                (e - s) as usize,
            );
        }
    }
}
