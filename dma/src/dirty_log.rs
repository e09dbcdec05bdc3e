//! The dirty-page log, in the vhost-user bitmap format the IFC VF hardware writes.
//!
//! One bit per 4 KiB page of IOVA: `log[pfn / 8] |= 1 << (pfn % 8)` at IOVA `base + pfn / 8`
//! (DPDK's ifcvf driver maps the vhost log at IOVA 0x1000_0000_0000 and programs base/end
//! into the LM block; guest memory is mapped at IOVA == GPA, so the device logs by IOVA).
//! Marks are collected in a small per-engine buffer of (u64 word, mask) pairs, duplicates
//! coalesced, and flushed with atomic `fetch_or` through the IOMMU: a VMM harvesting words
//! with an atomic swap concurrently never loses a bit.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::bus_stats::{BusStats, DmaKind};
use crate::iommu::{DmaFault, Iommu, Route};
use crate::memory::{PAGE_SHIFT, PAGE_SIZE};

/// Where and how finely the device logs, as programmed through the LM block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// IOVA of the first log byte (`IFCVF_LM_BASE_ADDR`).
    pub base: u64,
    /// Exclusive end IOVA of the log (`IFCVF_LM_END_ADDR`: an address, not a size); bits whose
    /// byte would fall at or past it are dropped and counted in [`LogStats::beyond_end`].
    pub end: u64,
    /// Dirty-tracking granule in bytes (power of two, >= 4 KiB): a write marks every 4 KiB
    /// bit of every granule it touches. Invalid values are rounded up (see
    /// [`LogConfig::sanitized`]).
    pub granularity: u64,
}

/// Largest granularity accepted (1 GiB); larger requests are clamped.
pub const MAX_LOG_GRANULARITY: u64 = 1 << 30;

impl LogConfig {
    /// A 4 KiB-granular log at `[base, end)`.
    pub fn new(base: u64, end: u64) -> Self {
        LogConfig {
            base,
            end,
            granularity: PAGE_SIZE,
        }
    }

    /// The config the engine actually uses: granularity rounded up to a power of two in
    /// `[4 KiB, 1 GiB]`.
    pub fn sanitized(self) -> Self {
        let g = self
            .granularity
            .clamp(PAGE_SIZE, MAX_LOG_GRANULARITY)
            .next_power_of_two()
            .min(MAX_LOG_GRANULARITY);
        LogConfig {
            granularity: g,
            ..self
        }
    }
}

/// Dirty-log counters of one engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// 4 KiB bits newly added to the pending buffer (a bit already pending is not counted).
    pub pages_marked: u64,
    /// Write transactions to the log (one per u64 word, or per byte on the unaligned path).
    pub log_writes: u64,
    /// Page bits not written because their byte is at or past `end`.
    pub beyond_end: u64,
    /// Log writes that faulted in the IOMMU (the bits of that word/byte are dropped).
    pub faults: u64,
}

impl LogStats {
    /// Adds `o`'s counters to these (saturating): several engines counted as one.
    pub fn absorb(&mut self, o: &LogStats) {
        let LogStats {
            pages_marked,
            log_writes,
            beyond_end,
            faults,
        } = *o;
        self.pages_marked = self.pages_marked.saturating_add(pages_marked);
        self.log_writes = self.log_writes.saturating_add(log_writes);
        self.beyond_end = self.beyond_end.saturating_add(beyond_end);
        self.faults = self.faults.saturating_add(faults);
    }
}

/// Distinct log words held before a forced flush.
pub(crate) const PENDING_CAPACITY: usize = 256;
const SLOTS: usize = 512;
const NO_WORD: u64 = u64::MAX;
/// No granule: an address shifted right by at least 12 never equals it.
const NO_GRANULE: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Pending {
    word: u64,
    mask: u64,
    slot: u16,
}

/// Logging state of one engine.
pub(crate) struct DirtyLog {
    cfg: Option<LogConfig>,
    /// `granularity / 4 KiB - 1`.
    granule_pages_mask: u64,
    entries: Vec<Pending>,
    /// Open-addressed index word -> `entries` position + 1 (0 = empty).
    index: Box<[u16]>,
    last_word: u64,
    last_pos: usize,
    /// Times the pending buffer was emptied (flushed or dropped).
    empties: u64,
    /// log2 of the granularity in bytes.
    granule_shift: u32,
    /// Per kind of write, the granule (`address >> granule_shift`) whose bits the last mark of
    /// that kind, a write within that one granule, left pending, or [`NO_GRANULE`]: another
    /// write of the kind within it has nothing to add. Emptying the pending buffer forgets
    /// them all (the next write must mark again: the VMM may have harvested the bits since).
    /// One entry per kind because a ring's used writes and the packets they publish alternate
    /// between their own pages.
    hot: [u64; DmaKind::ALL.len()],
    pub(crate) stats: LogStats,
}

#[inline(always)]
fn bit_range(lo: u64, hi: u64) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// The pages (bits) in `bits`: nearly always none or one (a write within one page), counted
/// without `count_ones`, which the baseline x86-64 target (no POPCNT) builds as a software
/// popcount of about 19 instructions: a fifth of the dirty log's cost per received frame
/// (callgrind, `rx_deliver/64B/log_on`).
#[inline(always)]
fn pages_in(bits: u64) -> u64 {
    if bits & bits.wrapping_sub(1) == 0 {
        u64::from(bits != 0)
    } else {
        u64::from(bits.count_ones())
    }
}

#[inline(always)]
fn slot_of(word: u64) -> usize {
    (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

impl DirtyLog {
    pub(crate) fn new() -> Self {
        DirtyLog {
            cfg: None,
            granule_pages_mask: 0,
            entries: Vec::with_capacity(PENDING_CAPACITY),
            index: vec![0u16; SLOTS].into_boxed_slice(),
            last_word: NO_WORD,
            last_pos: 0,
            empties: 0,
            granule_shift: PAGE_SHIFT,
            hot: [NO_GRANULE; DmaKind::ALL.len()],
            stats: LogStats::default(),
        }
    }

    #[inline(always)]
    pub(crate) fn enabled(&self) -> bool {
        self.cfg.is_some()
    }

    pub(crate) fn config(&self) -> Option<LogConfig> {
        self.cfg
    }

    pub(crate) fn pending_words(&self) -> usize {
        self.entries.len()
    }

    /// Installs a new config. The caller flushes first; anything still pending is dropped.
    pub(crate) fn configure(&mut self, cfg: Option<LogConfig>) {
        self.clear_pending();
        self.cfg = cfg.map(LogConfig::sanitized);
        self.granule_pages_mask = self
            .cfg
            .map_or(0, |c| (c.granularity >> PAGE_SHIFT).saturating_sub(1));
        self.granule_shift = self
            .cfg
            .map_or(PAGE_SHIFT, |c| c.granularity.trailing_zeros());
    }

    fn clear_pending(&mut self) {
        for e in &self.entries {
            self.index[e.slot as usize] = 0;
        }
        self.entries.clear();
        self.last_word = NO_WORD;
        self.hot = [NO_GRANULE; DmaKind::ALL.len()];
        self.empties = self.empties.wrapping_add(1);
    }

    /// Marks the pages of a `kind` write of `[iova, iova + len)`; `len > 0` and the range must
    /// not overflow (it was just written). A forced flush's fault is returned (bits kept as far
    /// as they could be written).
    ///
    /// Inlined into every write: a write within the granule the previous write of its kind
    /// marked (a ring's used entries, the packets of one receive buffer page) costs a
    /// comparison, not a call (`rx_deliver/64B/log_on`: two marks per frame, one of them nearly
    /// always within the last one's granule).
    #[inline(always)]
    pub(crate) fn mark(
        &mut self,
        iova: u64,
        len: u64,
        kind: DmaKind,
        iommu: &mut Iommu,
        bus: &mut BusStats,
    ) -> Result<(), DmaFault> {
        debug_assert!(len > 0 && iova.checked_add(len).is_some());
        let g = iova >> self.granule_shift;
        if g == self.hot[kind as usize] && (iova + (len - 1)) >> self.granule_shift == g {
            return Ok(());
        }
        self.mark_range(iova, len, kind, iommu, bus)
    }

    #[inline(never)]
    fn mark_range(
        &mut self,
        iova: u64,
        len: u64,
        kind: DmaKind,
        iommu: &mut Iommu,
        bus: &mut BusStats,
    ) -> Result<(), DmaFault> {
        let first = (iova >> PAGE_SHIFT) & !self.granule_pages_mask;
        let last = ((iova + (len - 1)) >> PAGE_SHIFT) | self.granule_pages_mask;
        let (w0, w1) = (first >> 6, last >> 6);
        let empties = self.empties;
        let result = if w0 == w1 {
            self.add(w0, bit_range(first & 63, last & 63), iommu, bus)
        } else {
            let mut result = Ok(());
            for w in w0..=w1 {
                let lo = if w == w0 { first & 63 } else { 0 };
                let hi = if w == w1 { last & 63 } else { 63 };
                if let Err(f) = self.add(w, bit_range(lo, hi), iommu, bus) {
                    result = result.and(Err(f));
                }
            }
            result
        };
        // Hot only if every bit of the granule is pending now: a buffer-full flush during the
        // mark (a granule of more words than the buffer holds, 128 MiB and up) wrote some of
        // them out already, and a harvest may clear those before the next write.
        let g = iova >> self.granule_shift;
        if result.is_ok()
            && self.empties == empties
            && (iova + (len - 1)) >> self.granule_shift == g
        {
            self.hot[kind as usize] = g;
        }
        result
    }

    #[inline(always)]
    fn add(
        &mut self,
        word: u64,
        mask: u64,
        iommu: &mut Iommu,
        bus: &mut BusStats,
    ) -> Result<(), DmaFault> {
        if word == self.last_word {
            let e = &mut self.entries[self.last_pos];
            let new = mask & !e.mask;
            e.mask |= new;
            self.stats.pages_marked += pages_in(new);
            return Ok(());
        }
        self.add_slow(word, mask, iommu, bus)
    }

    fn add_slow(
        &mut self,
        word: u64,
        mask: u64,
        iommu: &mut Iommu,
        bus: &mut BusStats,
    ) -> Result<(), DmaFault> {
        let mut slot = slot_of(word);
        loop {
            let v = self.index[slot];
            if v == 0 {
                break;
            }
            let pos = usize::from(v - 1);
            if self.entries[pos].word == word {
                let e = &mut self.entries[pos];
                let new = mask & !e.mask;
                e.mask |= new;
                self.stats.pages_marked += pages_in(new);
                self.last_word = word;
                self.last_pos = pos;
                return Ok(());
            }
            slot = (slot + 1) & (SLOTS - 1);
        }
        let mut result = Ok(());
        if self.entries.len() >= PENDING_CAPACITY {
            result = self.flush(iommu, bus);
            slot = slot_of(word); // the index is empty again
        }
        self.entries.push(Pending {
            word,
            mask,
            slot: slot as u16,
        });
        self.index[slot] = self.entries.len() as u16;
        self.stats.pages_marked += pages_in(mask);
        self.last_word = word;
        self.last_pos = self.entries.len() - 1;
        result
    }

    /// Writes every pending word into the log and empties the buffer. Returns the first
    /// fault; the other words are still attempted.
    pub(crate) fn flush(&mut self, iommu: &mut Iommu, bus: &mut BusStats) -> Result<(), DmaFault> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let mut result = Ok(());
        if let Some(cfg) = self.cfg {
            // Bus model: consecutive words whose 64 bits are all set (coarse granules) can be
            // written as plain all-ones stores, which no concurrent harvest can lose, so a device
            // sends them as one posted write per Max_Payload_Size burst. Any other word is its
            // own atomic read-modify-write transaction.
            self.entries.sort_unstable_by_key(|e| e.word);
            let mut burst: Option<(u64, u64)> = None; // (last word, words in burst)
            for i in 0..self.entries.len() {
                let e = self.entries[i];
                let full = e.mask == u64::MAX;
                let cont =
                    full && matches!(burst, Some((w, n)) if w + 1 == e.word && n < MAX_BURST_WORDS);
                match write_word(&cfg, e.word, e.mask, iommu, bus, &mut self.stats, !cont) {
                    Ok(true) if full => {
                        burst = Some((
                            e.word,
                            if cont {
                                burst.map_or(1, |b| b.1 + 1)
                            } else {
                                1
                            },
                        ))
                    }
                    Ok(_) => burst = None,
                    Err(f) => {
                        burst = None;
                        result = result.and(Err(f));
                    }
                }
            }
        }
        self.clear_pending();
        result
    }
}

/// Most log words in one burst: a 256-byte Max_Payload_Size.
const MAX_BURST_WORDS: u64 = 32;

/// ORs `mask` (bits of pages `64 * word ..`) into the log. `new_txn` false: the word continues
/// the previous word's burst (bytes are counted, not a transaction). Returns whether the whole
/// word was written with one aligned 8-byte access.
fn write_word(
    cfg: &LogConfig,
    word: u64,
    mask: u64,
    iommu: &mut Iommu,
    bus: &mut BusStats,
    stats: &mut LogStats,
    new_txn: bool,
) -> Result<bool, DmaFault> {
    // word <= 2^46 (page numbers are 52-bit), so `word * 8` cannot overflow.
    let Some(addr) = cfg.base.checked_add(word * 8) else {
        stats.beyond_end += u64::from(mask.count_ones());
        return Ok(false);
    };
    let in_range = cfg.end.saturating_sub(addr).min(8);
    let keep = if in_range == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * in_range)) - 1
    };
    stats.beyond_end += u64::from((mask & !keep).count_ones());
    let mask = mask & keep;
    if mask == 0 {
        return Ok(false);
    }
    if in_range == 8 {
        match iommu.translate(addr, 8, true) {
            Ok(Route::One(p)) if (p as usize) % std::mem::align_of::<AtomicU64>() == 0 => {
                // SAFETY: the IOMMU checked that `[addr, addr + 8)` lies in one writable,
                // fd-backed mapping whose mmap is kept alive by the engine's snapshot; `p` is
                // 8-aligned; all access to guest memory from this process is atomic or
                // volatile-style copies, and other processes' accesses are outside Rust's model.
                let a = unsafe { AtomicU64::from_ptr(p.cast::<u64>()) };
                // Little-endian: byte k of the word holds pages 64*word + 8k ..= +7.
                a.fetch_or(mask.to_le(), Ordering::Release);
                if let Err(f) = iommu.check_contained(addr, 8, true) {
                    stats.faults += 1;
                    return Err(f);
                }
                stats.log_writes += u64::from(new_txn);
                bus.access(DmaKind::LogWrite, addr, 8, u64::from(new_txn), !new_txn);
                return Ok(true);
            }
            // Unaligned host address or split across mappings: per byte below.
            Ok(_) => {}
            Err(f) => {
                stats.faults += 1;
                return Err(f);
            }
        }
    }
    let mut result = Ok(());
    for k in 0..8u64 {
        let byte = (mask >> (8 * k)) as u8;
        if byte == 0 {
            continue;
        }
        // addr + k < end (kept bytes only), so no overflow.
        match iommu.translate(addr + k, 1, true) {
            Ok(Route::One(p)) => {
                // SAFETY: as above, for the single byte `[addr + k, addr + k + 1)`, which the
                // IOMMU checked is writable and backed; u8 needs no alignment.
                let a = unsafe { AtomicU8::from_ptr(p) };
                a.fetch_or(byte, Ordering::Release);
                if let Err(f) = iommu.check_contained(addr + k, 1, true) {
                    stats.faults += 1;
                    result = result.and(Err(f));
                    continue;
                }
                stats.log_writes += 1;
                bus.access(DmaKind::LogWrite, addr + k, 1, 1, false);
            }
            Ok(Route::Split { .. }) => {} // a 1-byte access never splits
            Err(f) => {
                stats.faults += 1;
                result = result.and(Err(f));
            }
        }
    }
    result.map(|()| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_granularity() {
        let g = |x| {
            LogConfig {
                base: 0,
                end: 0,
                granularity: x,
            }
            .sanitized()
            .granularity
        };
        assert_eq!(g(0), 4096);
        assert_eq!(g(4096), 4096);
        assert_eq!(g(5000), 8192);
        assert_eq!(g(1 << 21), 1 << 21);
        assert_eq!(g(u64::MAX), 1 << 30);
    }

    #[test]
    fn pages_in_counts_every_bit() {
        for bits in [0, 1, 1 << 63, 0b1010, 0xf0, u64::MAX, 1 << 17 | 1] {
            assert_eq!(
                super::pages_in(bits),
                u64::from(bits.count_ones()),
                "{bits:#x}"
            );
        }
    }

    #[test]
    fn bit_ranges() {
        assert_eq!(bit_range(0, 63), u64::MAX);
        assert_eq!(bit_range(0, 0), 1);
        assert_eq!(bit_range(63, 63), 1 << 63);
        assert_eq!(bit_range(4, 7), 0xf0);
    }
}
