//! An independent record of every 4 KiB IOVA page the device wrote.
//!
//! It is filled by the DMA engine on every successful write (not through the dirty log), so
//! tests and the migration checker can find pages the log missed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::memory::PAGE_SHIFT;

/// Pages tracked in the dense bitmap at most (64 GiB of IOVA, a 2 MiB bitmap); pages above
/// `max_iova` or this cap go to a sparse interval set.
const MAX_DENSE_PAGES: u64 = 1 << 24;

/// Set of written 4 KiB IOVA pages. `Sync`: recording is lock-free for pages below the
/// `max_iova` given at construction, and takes a mutex for pages above it (e.g. DPDK's
/// mediated used rings at 0x2000_0000_0000).
#[derive(Debug)]
pub struct WriteTrace {
    dense: Box<[AtomicU64]>,
    dense_pages: u64,
    /// Inclusive page intervals `start -> last`, disjoint and non-adjacent.
    sparse: Mutex<BTreeMap<u64, u64>>,
}

fn range_mask(lo: u64, hi: u64) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

impl WriteTrace {
    /// A trace with a lock-free bitmap covering IOVAs below `max_iova` (capped at 64 GiB);
    /// higher pages are still recorded, in a slower sparse set.
    pub fn new(max_iova: u64) -> Self {
        let pages = max_iova.div_ceil(crate::PAGE_SIZE).min(MAX_DENSE_PAGES);
        let words = pages.div_ceil(64);
        WriteTrace {
            dense: (0..words).map(|_| AtomicU64::new(0)).collect(),
            dense_pages: words * 64,
            sparse: Mutex::new(BTreeMap::new()),
        }
    }

    /// Bytes of the dense bitmap a trace built with `max_iova` allocates (what it costs
    /// whatever is recorded).
    pub fn dense_bytes(max_iova: u64) -> u64 {
        max_iova
            .div_ceil(crate::PAGE_SIZE)
            .min(MAX_DENSE_PAGES)
            .div_ceil(64)
            * 8
    }

    /// Records a write of `[iova, iova + len)` (clamped at the top of the IOVA space).
    pub fn record(&self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = iova >> PAGE_SHIFT;
        let last = iova.saturating_add(len - 1) >> PAGE_SHIFT;
        if first < self.dense_pages {
            let dlast = last.min(self.dense_pages - 1);
            for w in (first >> 6)..=(dlast >> 6) {
                let lo = if w == first >> 6 { first & 63 } else { 0 };
                let hi = if w == dlast >> 6 { dlast & 63 } else { 63 };
                self.dense[w as usize].fetch_or(range_mask(lo, hi), Ordering::Release);
            }
        }
        if last >= self.dense_pages {
            self.record_sparse(first.max(self.dense_pages), last);
        }
    }

    fn record_sparse(&self, mut start: u64, mut last: u64) {
        let mut map = self.sparse.lock();
        // Merge with an interval that starts before and reaches `start - 1` or beyond.
        if let Some((&s, &l)) = map.range(..=start).next_back() {
            if l.saturating_add(1) >= start {
                if l >= last {
                    return;
                }
                map.remove(&s);
                start = s;
            }
        }
        // Swallow intervals starting inside `[start, last + 1]`.
        let upper = last.saturating_add(1);
        let inside: Vec<u64> = map.range(start..=upper).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some(l) = map.remove(&s) {
                last = last.max(l);
            }
        }
        map.insert(start, last);
    }

    /// True if page `pfn` (IOVA >> 12) was written.
    pub fn contains_page(&self, pfn: u64) -> bool {
        if pfn < self.dense_pages {
            let w = self.dense[(pfn >> 6) as usize].load(Ordering::Acquire);
            return w & (1 << (pfn & 63)) != 0;
        }
        let map = self.sparse.lock();
        map.range(..=pfn)
            .next_back()
            .is_some_and(|(_, &l)| l >= pfn)
    }

    /// Every written page number, sorted. Expands sparse intervals: a trace fed a hostile
    /// multi-terabyte `record` would make this large.
    pub fn pages(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.dense.iter().enumerate() {
            push_bits(&mut out, i as u64, w.load(Ordering::Acquire));
        }
        let map = self.sparse.lock();
        for (&s, &l) in map.iter() {
            out.extend(s..=l);
        }
        out
    }

    /// Like [`pages`](Self::pages) but atomically clears each word as it is read, so
    /// concurrent records are either returned now or kept for the next call.
    pub fn take_pages(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.dense.iter().enumerate() {
            // A plain load first: most words of a big trace are zero, and a swap of each would
            // cost a locked instruction per 64 pages. A bit set after the load is kept for the
            // next call.
            if w.load(Ordering::Relaxed) != 0 {
                push_bits(&mut out, i as u64, w.swap(0, Ordering::AcqRel));
            }
        }
        let map = std::mem::take(&mut *self.sparse.lock());
        for (s, l) in map {
            out.extend(s..=l);
        }
        out
    }

    /// Forgets every page.
    pub fn clear(&self) {
        for w in self.dense.iter() {
            w.store(0, Ordering::Release);
        }
        self.sparse.lock().clear();
    }

    /// True if no page was recorded.
    pub fn is_empty(&self) -> bool {
        self.dense.iter().all(|w| w.load(Ordering::Acquire) == 0) && self.sparse.lock().is_empty()
    }
}

fn push_bits(out: &mut Vec<u64>, word: u64, mut bits: u64) {
    while bits != 0 {
        let b = bits.trailing_zeros() as u64;
        out.push(word * 64 + b);
        bits &= bits - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse() {
        let t = WriteTrace::new(1 << 20); // 256 pages dense
        assert!(t.is_empty());
        assert_eq!(WriteTrace::dense_bytes(1 << 20), t.dense.len() as u64 * 8);
        assert_eq!(
            WriteTrace::dense_bytes(1 << 50),
            2 << 20,
            "capped at 64 GiB of pages"
        );
        t.record(0, 1);
        t.record(0x1fff, 2); // pages 1 and 2
        t.record(0x5000, 0); // nothing
        t.record(0xff000, 0x3000); // 255 dense, 256/257 sparse
        t.record(0x200000, 0x1000); // 512 sparse
        t.record(0x101000, 0x1000); // 257 again (merged)
        t.record(0x102000, 0x1000); // 258 adjacent (merged)
        t.record(u64::MAX, 100); // clamped to the last page
        assert_eq!(
            t.pages(),
            vec![0, 1, 2, 255, 256, 257, 258, 512, u64::MAX >> 12]
        );
        assert!(t.contains_page(257));
        assert!(!t.contains_page(259));
        assert!(!t.contains_page(3));
        assert_eq!(t.sparse.lock().len(), 3);
        assert_eq!(t.take_pages().len(), 9);
        assert!(t.is_empty());
        assert!(t.pages().is_empty());
        t.record(0x3000, 0x2001);
        assert_eq!(t.pages(), vec![3, 4, 5]);
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn sparse_merges_overlaps() {
        let t = WriteTrace::new(0);
        t.record(10 << 12, 1);
        t.record(20 << 12, 1);
        t.record(30 << 12, 1);
        t.record(9 << 12, 22 << 12); // pages 9..=30 swallow all three
        assert_eq!(*t.sparse.lock(), BTreeMap::from([(9, 30)]));
        t.record(5 << 12, 1 << 12);
        t.record(6 << 12, 3 << 12); // 6..=8, bridges 5 and 9..30
        assert_eq!(*t.sparse.lock(), BTreeMap::from([(5, 30)]));
        // A huge record stays one interval (no per-page work).
        t.record(1 << 40, u64::MAX);
        assert_eq!(t.sparse.lock().len(), 2);
        assert!(t.contains_page(u64::MAX >> 12));
    }
}
