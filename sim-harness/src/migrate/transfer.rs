//! Moving guest RAM from the source to the destination the way a VMM sends it: a page that
//! reads as zeros goes as a "zero page" (QEMU migration/ram.c `save_zero_page`: a flag, no
//! data; the destination's `ram_handle_zero` leaves a zero page alone), any other page with its
//! 4 KiB. Guest RAM is a sparse memfd, so the bulk copy skips the holes (pages never written:
//! zero pages without reading them) and reads only the data ranges (through the mapping: those
//! pages exist); a dirty page that is a hole is a zero page too. The verification reads through
//! the file ([`GuestMemory::peek`]: a hole reads as zeros and stays one), so neither the copy
//! nor the verification ever allocates a page the guest did not write, on either side. The
//! destination writes non-zero pages and turns a zero page back into a hole.
//!
//! Copy time is measured without the guest's own time in between, so that a phase's rate is the
//! rate stop-and-copy will get (the guest is paused then).

use crate::driver::{DriverError, GuestMemory};
use dma::PAGE_SIZE;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Pages copied between two moments of guest activity while the guest runs.
pub const PAGES_PER_RUN: u64 = 512;

/// Pages read at a time (256 KiB).
const CHUNK_PAGES: u64 = 64;

/// What one copy phase sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Pages sent with their data.
    pub normal: u64,
    /// Pages sent as zero pages: holes, and pages that read as zeros.
    pub zero: u64,
    /// Pages read (all but the holes the bulk copy skips): what the copy time was spent on.
    pub read: u64,
    /// Time spent copying (reads, zero checks, writes), the guest's turns excluded.
    pub busy: Duration,
}

impl Sent {
    /// Every page the phase sent.
    pub fn pages(&self) -> u64 {
        self.normal + self.zero
    }
}

/// Whether a page is all zeros (QEMU `buffer_is_zero`); 64-byte blocks so it vectorizes.
fn is_zero(page: &[u8]) -> bool {
    page.chunks(64)
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Sorted page numbers grouped into runs of consecutive pages, at most `max` long.
fn runs(pfns: impl IntoIterator<Item = u64>, max: u64) -> impl Iterator<Item = Range<u64>> {
    let mut it = pfns.into_iter().peekable();
    std::iter::from_fn(move || {
        let start = it.next()?;
        let mut end = start + 1;
        while end - start < max && it.peek() == Some(&end) {
            it.next();
            end += 1;
        }
        Some(start..end)
    })
}

/// Copies pages from the source RAM to the destination RAM, calling `run` (the guest's turn
/// while pre-copy runs; nothing in stop-and-copy) every [`PAGES_PER_RUN`] pages read.
pub struct Transfer<'a> {
    src: &'a GuestMemory,
    dst: &'a GuestMemory,
    buf: Vec<u8>,
    /// Pages read since the guest last ran.
    since_run: u64,
    /// Totals over every phase.
    pub total: Sent,
}

impl<'a> Transfer<'a> {
    /// A transfer between two memories of the same base and size.
    pub fn new(src: &'a GuestMemory, dst: &'a GuestMemory) -> Self {
        Transfer {
            src,
            dst,
            buf: vec![0; (CHUNK_PAGES * PAGE_SIZE) as usize],
            since_run: 0,
            total: Sent::default(),
        }
    }

    /// Stage 1: all of guest RAM. The holes are zero pages without a read (the destination is
    /// fresh: its pages are holes already); the data ranges are read and sent page by page.
    pub fn bulk<E: From<DriverError>>(
        &mut self,
        run: impl FnMut() -> Result<(), E>,
    ) -> Result<Sent, E> {
        let all = self.src.pfns();
        let data = self.src.data_pfns().map_err(DriverError::from)?;
        let data_pages: u64 = data.iter().map(|r| r.end - r.start).sum();
        let mut sent = self.send(data.clone().into_iter().flatten(), &data, false, run)?;
        let holes = (all.end - all.start).saturating_sub(data_pages);
        sent.zero += holes;
        self.total.zero += holes;
        Ok(sent)
    }

    /// Stage 2 and 3: the dirty pages `pfns` (pages outside guest RAM are ignored). A page
    /// that is a hole on the source (a coarse dirty-log granule marks pages never written) is a
    /// zero page without a read; a zero page discards the destination's copy, which may hold
    /// an older version.
    pub fn pages<E: From<DriverError>>(
        &mut self,
        pfns: impl IntoIterator<Item = u64>,
        run: impl FnMut() -> Result<(), E>,
    ) -> Result<Sent, E> {
        let range = self.src.pfns();
        // Where the source holds pages now. A hole written after this is in the dirty logs,
        // so the next round (or stop-and-copy, with everything stopped) sends it.
        let data = self.src.data_pfns().map_err(DriverError::from)?;
        self.send(
            pfns.into_iter().filter(|p| range.contains(p)),
            &data,
            true,
            run,
        )
    }

    /// Sends `pfns`, given `data`, the sorted page ranges where the source holds pages: a hole
    /// is not read, a data page is read through the mapping (it exists, so nothing is
    /// allocated).
    fn send<E: From<DriverError>>(
        &mut self,
        pfns: impl IntoIterator<Item = u64>,
        data: &[Range<u64>],
        discard_zero: bool,
        mut run: impl FnMut() -> Result<(), E>,
    ) -> Result<Sent, E> {
        let mut sent = Sent::default();
        for chunk in runs(pfns, CHUNK_PAGES) {
            let t = Instant::now();
            let mut pfn = chunk.start;
            while pfn < chunk.end {
                let next = data.get(data.partition_point(|r| r.end <= pfn));
                match next {
                    Some(r) if r.start <= pfn => {
                        let end = chunk.end.min(r.end);
                        self.copy(pfn..end, discard_zero, &mut sent)?;
                        pfn = end;
                    }
                    _ => {
                        let end = chunk.end.min(next.map_or(u64::MAX, |r| r.start));
                        sent.zero += end - pfn;
                        if discard_zero {
                            self.dst.discard(pfn..end).map_err(DriverError::from)?;
                        }
                        pfn = end;
                    }
                }
            }
            sent.busy += t.elapsed();
            if self.since_run >= PAGES_PER_RUN {
                self.since_run = 0;
                run()?;
            }
        }
        self.total.normal += sent.normal;
        self.total.zero += sent.zero;
        self.total.read += sent.read;
        self.total.busy += sent.busy;
        Ok(sent)
    }

    /// Reads the source's data pages `pfns` and sends each: with its data, or as a zero page.
    fn copy(
        &mut self,
        pfns: Range<u64>,
        discard_zero: bool,
        sent: &mut Sent,
    ) -> Result<(), DriverError> {
        let n = pfns.end - pfns.start;
        let buf = &mut self.buf[..(n * PAGE_SIZE) as usize];
        self.src.read(pfns.start * PAGE_SIZE, buf)?;
        // Zero pages in a row are discarded with one call.
        let mut zeros: Option<Range<u64>> = None;
        for (i, page) in buf.chunks(PAGE_SIZE as usize).enumerate() {
            let pfn = pfns.start + i as u64;
            if is_zero(page) {
                sent.zero += 1;
                zeros = Some(zeros.map_or(pfn..pfn + 1, |z| z.start..pfn + 1));
                continue;
            }
            sent.normal += 1;
            if let Some(z) = zeros.take().filter(|_| discard_zero) {
                self.dst.discard(z)?;
            }
            self.dst.write(pfn * PAGE_SIZE, page)?;
        }
        if let Some(z) = zeros.filter(|_| discard_zero) {
            self.dst.discard(z)?;
        }
        sent.read += n;
        self.since_run += n;
        Ok(())
    }
}

/// Pages whose contents differ between `a` and `b` (same base and size), found without
/// allocating a page in either: only the pages that hold data on at least one side are read
/// (through the file), a hole reads as zeros, and a page that is a hole on both sides is equal.
pub fn mismatched_pages(a: &GuestMemory, b: &GuestMemory) -> Result<u64, DriverError> {
    let mut ranges = a.data_pfns()?;
    ranges.extend(b.data_pfns()?);
    ranges.sort_by_key(|r| r.start);
    let mut x = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
    let mut y = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
    let mut mismatched = 0;
    let mut done = 0; // every page below this is compared
    for r in ranges {
        let mut pfn = r.start.max(done);
        while pfn < r.end {
            let n = (r.end - pfn).min(CHUNK_PAGES);
            let len = (n * PAGE_SIZE) as usize;
            a.peek(pfn * PAGE_SIZE, &mut x[..len])?;
            b.peek(pfn * PAGE_SIZE, &mut y[..len])?;
            mismatched += x[..len]
                .chunks(PAGE_SIZE as usize)
                .zip(y[..len].chunks(PAGE_SIZE as usize))
                .filter(|(p, q)| p != q)
                .count() as u64;
            pfn += n;
        }
        done = done.max(r.end);
    }
    Ok(mismatched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_consecutive_pages() {
        let r: Vec<_> = runs([1, 2, 3, 7, 8, 20], 64).collect();
        assert_eq!(r, vec![1..4, 7..9, 20..21]);
        let r: Vec<_> = runs(0..10, 4).collect();
        assert_eq!(r, vec![0..4, 4..8, 8..10]);
        assert_eq!(runs(std::iter::empty(), 4).count(), 0);
    }

    #[test]
    fn zero_check() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero(&p));
        p[4095] = 1;
        assert!(!is_zero(&p));
        p[4095] = 0;
        p[0] = 0x80;
        assert!(!is_zero(&p));
    }

    /// The bulk copy reads only data, sends zero-filled pages without data, and a later zero
    /// page turns the destination's copy back into a hole.
    #[test]
    fn zero_pages_are_not_copied_and_discard_stale_copies() {
        const P: u64 = PAGE_SIZE;
        let base = 0x4000_0000;
        let src = GuestMemory::new(base, 1 << 30).unwrap();
        let dst = src.new_like().unwrap();
        src.write(base + 3 * P, &[1; 10]).unwrap();
        src.fill(base + 4 * P, 2 * P, 0).unwrap(); // allocated, all zeros
        src.write(base + 9 * P + 100, &[2]).unwrap();
        let mut x = Transfer::new(&src, &dst);
        let mut turns = 0;
        let bulk = x
            .bulk(|| {
                turns += 1;
                Ok::<_, DriverError>(())
            })
            .unwrap();
        assert_eq!(bulk.normal, 2);
        assert_eq!(bulk.pages(), (1 << 30) / P, "every page sent once");
        assert_eq!(bulk.read, 4, "only the data ranges are read");
        assert_eq!(turns, 0, "fewer than PAGES_PER_RUN pages read");
        assert_eq!(
            dst.resident_bytes().unwrap(),
            2 * P,
            "zero pages written nowhere"
        );
        assert_eq!(mismatched_pages(&src, &dst).unwrap(), 0);
        // Page 3 becomes zeros, page 9 changes, page 700 is new; 500 is a hole on both.
        src.fill(base + 3 * P, P, 0).unwrap();
        src.write(base + 9 * P, &[5]).unwrap();
        src.write(base + 700 * P, &[6]).unwrap();
        assert_eq!(mismatched_pages(&src, &dst).unwrap(), 3);
        let sent = x
            .pages([3, 9, 500, 700].map(|p| base / P + p), || {
                Ok::<_, DriverError>(())
            })
            .unwrap();
        assert_eq!(
            (sent.normal, sent.zero, sent.read),
            (2, 2, 3),
            "page 500 not read"
        );
        assert_eq!(mismatched_pages(&src, &dst).unwrap(), 0);
        assert_eq!(
            dst.data_pfns().unwrap(),
            vec![base / P + 9..base / P + 10, base / P + 700..base / P + 701],
            "page 3 discarded, page 500 not allocated"
        );
        // Pages outside guest RAM are ignored; the totals add up.
        let none = x.pages([0, u64::MAX], || Ok::<_, DriverError>(())).unwrap();
        assert_eq!(none.pages(), 0);
        assert_eq!(x.total.pages(), bulk.pages() + sent.pages());
    }

    /// `mismatched_pages` is exact and reads the RAM without allocating it.
    #[test]
    fn comparison_is_exact_and_allocates_nothing() {
        const P: u64 = PAGE_SIZE;
        let base = 0x4000_0000;
        let a = GuestMemory::new(base, 1 << 30).unwrap();
        let b = a.new_like().unwrap();
        assert_eq!(mismatched_pages(&a, &b).unwrap(), 0, "two empty memories");
        // Same data on both sides, and a page of zeros on one side against a hole.
        a.write(base + 10 * P, &[7; 100]).unwrap();
        b.write(base + 10 * P, &[7; 100]).unwrap();
        a.fill(base + 20 * P, P, 0).unwrap();
        assert_eq!(mismatched_pages(&a, &b).unwrap(), 0);
        // One byte differs; data against a hole; overlapping data ranges counted once.
        b.write(base + 10 * P + 4095, &[1]).unwrap();
        a.write(base + 500 * P, &[1]).unwrap();
        b.fill(base + 30 * P, 4 * P, 9).unwrap();
        a.fill(base + 31 * P, 4 * P, 9).unwrap();
        let held = (a.resident_bytes().unwrap(), b.resident_bytes().unwrap());
        assert_eq!(mismatched_pages(&a, &b).unwrap(), 1 + 1 + 2);
        assert_eq!(
            (a.resident_bytes().unwrap(), b.resident_bytes().unwrap()),
            held,
            "the comparison allocated pages"
        );
        // The last page of the memory counts like any other.
        a.write(base + (1 << 30) - 1, &[3]).unwrap();
        assert_eq!(mismatched_pages(&a, &b).unwrap(), 5);
    }
}
