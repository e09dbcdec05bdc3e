//! Guest memory as the driver model sees it: a memfd (shared, as QEMU's
//! `memory-backend-memfd,share=on` is) whose "guest physical" addresses are the IOVAs the device
//! uses (DPDK maps guest memory at IOVA == GPA), with a bump allocator.

use device::DmaMapper;
use dma::{Backing, MapError, Perms, SharedMemory, ShmError};
use parking_lot::Mutex;

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
}

impl GuestMemory {
    /// Creates `size` bytes of guest RAM starting at IOVA `base`.
    pub fn new(base: u64, size: u64) -> Result<Self, MemoryError> {
        Ok(GuestMemory { shm: SharedMemory::new("vdpa-emu-guest", size)?, base, next: Mutex::new(0) })
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
        dev.dma_map(self.base, self.size(), Perms::RW, Backing::Fd { file: self.shm.try_clone_file()?, offset: 0 })?;
        Ok(())
    }

    /// Allocates `size` bytes aligned to `align` (a power of two); returns the IOVA.
    pub fn alloc(&self, size: u64, align: u64) -> Result<u64, MemoryError> {
        let mut next = self.next.lock();
        let start = next.next_multiple_of(align.max(1));
        let end =
            start.checked_add(size).filter(|&e| e <= self.size()).ok_or(MemoryError::Exhausted { want: size, left: self.size().saturating_sub(*next) })?;
        *next = end;
        Ok(self.base + start)
    }

    fn off(&self, iova: u64) -> Result<u64, MemoryError> {
        iova.checked_sub(self.base).filter(|&o| o < self.size()).ok_or(MemoryError::Outside(iova))
    }

    /// Offset of an IOVA in the memfd.
    pub fn offset_of(&self, iova: u64) -> Result<u64, MemoryError> {
        self.off(iova)
    }

    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Ok(self.shm.read(self.off(iova)?, buf)?)
    }
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), MemoryError> {
        Ok(self.shm.write(self.off(iova)?, data)?)
    }
    pub fn read_u16(&self, iova: u64) -> Result<u16, MemoryError> {
        Ok(self.shm.read_u16(self.off(iova)?)?)
    }
    pub fn read_u32(&self, iova: u64) -> Result<u32, MemoryError> {
        Ok(self.shm.read_u32(self.off(iova)?)?)
    }
    pub fn write_u16(&self, iova: u64, v: u16) -> Result<(), MemoryError> {
        Ok(self.shm.write_u16(self.off(iova)?, v)?)
    }
    pub fn write_u32(&self, iova: u64, v: u32) -> Result<(), MemoryError> {
        Ok(self.shm.write_u32(self.off(iova)?, v)?)
    }
    pub fn write_u64(&self, iova: u64, v: u64) -> Result<(), MemoryError> {
        Ok(self.shm.write_u64(self.off(iova)?, v)?)
    }
    /// Publishes an index (avail->idx) with Release ordering.
    pub fn store_u16_release(&self, iova: u64, v: u16) -> Result<(), MemoryError> {
        Ok(self.shm.store_u16_release(self.off(iova)?, v)?)
    }
    pub fn fill(&self, iova: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        Ok(self.shm.fill(self.off(iova)?, len, byte)?)
    }
}
