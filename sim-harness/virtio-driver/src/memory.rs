//! Guest memory as the driver model sees it: a memfd (shared, as QEMU's
//! `memory-backend-memfd,share=on` is) whose "guest physical" addresses are the IOVAs the device
//! uses (DPDK maps guest memory at IOVA == GPA), with a bump allocator.

use device::DmaMapper;
use dma::{Backing, MapError, Perms, SharedMemory, ShmError, WriteTrace, PAGE_SIZE};
use parking_lot::{Mutex, RwLock};
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
}

impl GuestMemory {
    /// Creates `size` bytes of guest RAM starting at IOVA `base`.
    pub fn new(base: u64, size: u64) -> Result<Self, MemoryError> {
        Ok(GuestMemory {
            shm: SharedMemory::new("vdpa-emu-guest", size)?,
            base,
            next: Mutex::new(0),
            cpu_dirty: RwLock::new(None),
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
    pub fn set_cpu_dirty_log(&self, log: Option<Arc<WriteTrace>>) {
        *self.cpu_dirty.write() = log;
    }

    fn dirty(&self, iova: u64, len: u64) {
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
