//! Guest memory as the driver model sees it: a memfd (shared, as QEMU's
//! `memory-backend-memfd,share=on` is) whose "guest physical" addresses are the IOVAs the device
//! uses (DPDK maps guest memory at IOVA == GPA), with a bump allocator.
//!
//! The memfd is sparse, like a guest's RAM on a host that allocates on first touch: a page
//! holds memory once the driver or the device writes it. A migration reads it page range by
//! page range through [`GuestMemory::data_pfns`] and [`GuestMemory::peek`], which never
//! allocate a page the guest did not write.

use device::DmaMapper;
use dma::{Backing, MapError, Perms, SharedMemory, ShmError, WriteTrace, PAGE_SIZE};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Errors of the guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory exhausted: {want} bytes wanted, {left} left")]
    Exhausted { want: u64, left: u64 },
    #[error("address {0:#x} is outside guest memory")]
    Outside(u64),
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("creating the memfd: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Map(#[from] MapError),
}

/// Guest RAM at IOVA [base, base + size).
#[derive(Debug)]
pub struct GuestMemory {
    shm: SharedMemory,
    base: u64,
    next: Mutex<u64>,
    /// The "CPU" dirty log (KVM's, in a real VMM): pages the guest itself writes.
    cpu_dirty: RwLock<Option<Arc<WriteTrace>>>,
    /// Whether `cpu_dirty` holds a log: every guest write checks this plain load first, so
    /// writes without a log take no lock. Taking the read lock on each write (two atomic
    /// read-modify-writes) cost 30% of the driver's CPU in `vdpa-emu bench datapath`.
    cpu_dirty_on: AtomicBool,
}

impl GuestMemory {
    /// Creates `size` bytes of guest RAM starting at IOVA `base`.
    pub fn new(base: u64, size: u64) -> Result<Self, MemoryError> {
        Ok(GuestMemory {
            shm: SharedMemory::new("vdpa-emu-guest", size)?,
            base,
            next: Mutex::new(0),
            cpu_dirty: RwLock::new(None),
            cpu_dirty_on: AtomicBool::new(false),
        })
    }

    /// Fresh memory with the same base, size and allocation state (a migration destination's
    /// RAM before the copy).
    pub fn new_like(&self) -> Result<Self, MemoryError> {
        let m = GuestMemory::new(self.base, self.size())?;
        *m.next.lock() = *self.next.lock();
        Ok(m)
    }

    /// Starts (Some) or stops (None) recording the pages the guest writes.
    ///
    /// A write that starts after this returns is recorded (the flag is stored while the write
    /// lock is held, and a write that sees it set takes the read lock); a write racing with
    /// the call may or may not be, as with any log switched on while the guest runs.
    pub fn set_cpu_dirty_log(&self, log: Option<Arc<WriteTrace>>) {
        let mut slot = self.cpu_dirty.write();
        self.cpu_dirty_on.store(log.is_some(), Ordering::Release);
        *slot = log;
    }

    #[inline]
    fn dirty(&self, iova: u64, len: u64) {
        if !self.cpu_dirty_on.load(Ordering::Acquire) {
            return;
        }
        if let Some(t) = self.cpu_dirty.read().as_ref() {
            t.record(iova, len);
        }
    }

    /// Copies page `pfn` (IOVA / 4 KiB) of this memory into `dst`.
    pub fn copy_page_to(
        &self,
        pfn: u64,
        dst: &GuestMemory,
        buf: &mut [u8; PAGE_SIZE as usize],
    ) -> Result<(), MemoryError> {
        let iova = pfn * PAGE_SIZE;
        self.shm.read(self.off(iova)?, buf)?;
        dst.shm.write(dst.off(iova)?, buf)?;
        Ok(())
    }

    /// Page numbers (IOVA / 4 KiB) of the pages that hold memory (written at least once, by
    /// the driver, the device or a copy), as sorted disjoint ranges; every other page of
    /// [`GuestMemory::pfns`] is a hole and reads as zeros.
    pub fn data_pfns(&self) -> Result<Vec<std::ops::Range<u64>>, MemoryError> {
        let first = self.base / PAGE_SIZE;
        Ok(self
            .shm
            .data_ranges()?
            .into_iter()
            .map(|r| first + r.start / PAGE_SIZE..first + r.end.div_ceil(PAGE_SIZE))
            .collect())
    }

    /// Reads `buf.len()` bytes at `iova` without allocating anything: a hole reads as zeros and
    /// stays a hole (through the file, not the mapping).
    pub fn peek(&self, iova: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Ok(self.shm.pread(self.off(iova)?, buf)?)
    }

    /// Turns pages `pfns` back into holes (they read as zeros and hold no memory): what a
    /// migration destination does with a page the source sent as a zero page.
    pub fn discard(&self, pfns: std::ops::Range<u64>) -> Result<(), MemoryError> {
        if pfns.is_empty() {
            return Ok(());
        }
        let off = self.off(pfns.start * PAGE_SIZE)?;
        Ok(self
            .shm
            .punch_hole(off, (pfns.end - pfns.start) * PAGE_SIZE)?)
    }

    /// Bytes of this memory that hold pages (the rest has never been touched).
    pub fn resident_bytes(&self) -> Result<u64, MemoryError> {
        Ok(self.shm.allocated_bytes()?)
    }

    /// Bytes the driver has allocated (rings, buffers, tables): everything it and the device
    /// can ever write, hence a bound on the guest's working set.
    pub fn allocated(&self) -> u64 {
        *self.next.lock()
    }

    /// Page numbers (IOVA / 4 KiB) this memory spans.
    pub fn pfns(&self) -> std::ops::Range<u64> {
        self.base / PAGE_SIZE..(self.base + self.size()).div_ceil(PAGE_SIZE)
    }

    /// First IOVA.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.shm.size()
    }

    /// The shared memory itself (for snapshots and log harvesting).
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// Maps all of guest RAM into the device, read-write (what QEMU's DMA_MAP burst does).
    pub fn map_into(&self, dev: &dyn DmaMapper) -> Result<(), MemoryError> {
        dev.dma_map(
            self.base,
            self.size(),
            Perms::RW,
            Backing::Fd {
                file: self.shm.try_clone_file()?,
                offset: 0,
            },
        )?;
        Ok(())
    }

    /// Allocates `size` bytes aligned to `align` (a power of two); returns the IOVA.
    pub fn alloc(&self, size: u64, align: u64) -> Result<u64, MemoryError> {
        let mut next = self.next.lock();
        let start = next.next_multiple_of(align.max(1));
        let end = start
            .checked_add(size)
            .filter(|&e| e <= self.size())
            .ok_or(MemoryError::Exhausted {
                want: size,
                left: self.size().saturating_sub(*next),
            })?;
        *next = end;
        Ok(self.base + start)
    }

    /// Allocates like [`GuestMemory::alloc`] and zeroes the bytes (ring areas start zeroed).
    pub fn alloc_zeroed(&self, size: u64, align: u64) -> Result<u64, MemoryError> {
        let iova = self.alloc(size, align)?;
        self.fill(iova, size, 0)?;
        Ok(iova)
    }

    fn off(&self, iova: u64) -> Result<u64, MemoryError> {
        iova.checked_sub(self.base)
            .filter(|&o| o < self.size())
            .ok_or(MemoryError::Outside(iova))
    }

    /// Offset of an IOVA in the memfd.
    pub fn offset_of(&self, iova: u64) -> Result<u64, MemoryError> {
        self.off(iova)
    }

    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Ok(self.shm.read(self.off(iova)?, buf)?)
    }
    /// Hints the lines at `iova` toward this core for writing (`SharedMemory::prefetch_for_write`);
    /// not an access, and an IOVA outside this memory is ignored.
    pub fn prefetch_for_write(&self, iova: u64, len: u64) {
        if let Ok(off) = self.off(iova) {
            self.shm.prefetch_for_write(off, len);
        }
    }
    /// [`GuestMemory::prefetch_for_write`] of `n` consecutive entries of a ring of `size`
    /// entries of `elem` bytes at `ring`, from entry `first` (below `size`) on, wrapping at the
    /// ring's end: one hint per contiguous piece.
    pub fn prefetch_ring_for_write(&self, ring: u64, elem: u64, size: u16, first: u16, n: usize) {
        let n = n.min(usize::from(size)) as u16;
        let mut k = 0;
        while k < n {
            let slot = (first + k) % size;
            let span = (n - k).min(size - slot);
            self.prefetch_for_write(ring + elem * u64::from(slot), elem * u64::from(span));
            k += span;
        }
    }
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.shm.write(self.off(iova)?, data)?;
        self.dirty(iova, data.len() as u64);
        Ok(())
    }
    pub fn read_u16(&self, iova: u64) -> Result<u16, MemoryError> {
        Ok(self.shm.read_u16(self.off(iova)?)?)
    }
    pub fn read_u32(&self, iova: u64) -> Result<u32, MemoryError> {
        Ok(self.shm.read_u32(self.off(iova)?)?)
    }
    pub fn write_u16(&self, iova: u64, v: u16) -> Result<(), MemoryError> {
        self.shm.write_u16(self.off(iova)?, v)?;
        self.dirty(iova, 2);
        Ok(())
    }
    pub fn write_u32(&self, iova: u64, v: u32) -> Result<(), MemoryError> {
        self.shm.write_u32(self.off(iova)?, v)?;
        self.dirty(iova, 4);
        Ok(())
    }
    pub fn write_u64(&self, iova: u64, v: u64) -> Result<(), MemoryError> {
        self.shm.write_u64(self.off(iova)?, v)?;
        self.dirty(iova, 8);
        Ok(())
    }
    /// Publishes an index (avail->idx) with Release ordering.
    pub fn store_u16_release(&self, iova: u64, v: u16) -> Result<(), MemoryError> {
        self.shm.store_u16_release(self.off(iova)?, v)?;
        self.dirty(iova, 2);
        Ok(())
    }
    pub fn fill(&self, iova: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        self.shm.fill(self.off(iova)?, len, byte)?;
        self.dirty(iova, len);
        Ok(())
    }
}
