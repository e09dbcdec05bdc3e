//! Driver/VMM-side shared memory: a memfd mmap'd `MAP_SHARED` through vm-memory.
//!
//! The in-process driver model writes rings and buffers through it and hands
//! [`SharedMemory::try_clone_file`] to [`crate::AddressSpace::map`] as [`crate::Backing::Fd`],
//! which is what QEMU does with a `share=on` memory backend over vfio-user.
//!
//! The memfd is sparse: a page takes memory when it is first touched through a mapping (a read
//! fault allocates it too). [`SharedMemory::data_ranges`], [`SharedMemory::pread`] and
//! [`SharedMemory::punch_hole`] let a migration copy and compare guest RAM without touching the
//! pages the guest never wrote: holes are found with `lseek(2)` SEEK_DATA / SEEK_HOLE, read through
//! the file (a hole reads as zeros and stays a hole: shmem's read path does not allocate) and given
//! back with `fallocate(2)` FALLOC_FL_PUNCH_HOLE.

use std::ffi::CString;
use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use crate::memory::{Backing, Perms};

/// A [`SharedMemory`] access that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    /// `[offset, offset + len)` is not inside the memory.
    #[error("shared memory access at {offset:#x} (len {len}) outside size {size:#x}")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Size of the memory.
        size: u64,
    },
    /// An atomic access at an offset not aligned to its size.
    #[error("shared memory atomic access at {offset:#x} not aligned to {align}")]
    Misaligned {
        /// Requested offset.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
}

/// A memfd of fixed size, mapped read-write and shared.
pub struct SharedMemory {
    region: MmapRegion,
    file: File,
    size: u64,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("size", &self.size)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.to_owned())
}

impl SharedMemory {
    /// Creates a zero-filled memfd of `size` bytes (`name` shows in /proc/PID/fd) and maps it.
    pub fn new(name: &str, size: u64) -> std::io::Result<Self> {
        if size == 0 {
            return Err(invalid("shared memory of zero bytes"));
        }
        let cname = CString::new(name).map_err(|_| invalid("memfd name contains NUL"))?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; the flags
        // are a valid combination. The returned fd is checked below.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create, is open, and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size)?;
        Self::map_file(file, 0, size)
    }

    /// Maps `size` bytes of `file` from `offset` (page-aligned), shared and read-write: a
    /// descriptor another process handed over, e.g. a vfio-user region's mmap area.
    pub fn map_file(file: File, offset: u64, size: u64) -> std::io::Result<Self> {
        if size == 0 {
            return Err(invalid("shared memory of zero bytes"));
        }
        let len = usize::try_from(size).map_err(|_| invalid("size exceeds the address space"))?;
        // A mapping past the file's end would fault (SIGBUS) on first touch: refuse it here.
        let end = offset
            .checked_add(size)
            .ok_or_else(|| invalid("offset + size overflows"))?;
        if file.metadata()?.len() < end {
            return Err(invalid("mapping runs past the end of the file"));
        }
        let region = MmapRegion::<()>::from_file(FileOffset::new(file.try_clone()?, offset), len)
            .map_err(|e| match e {
            vm_memory::mmap::MmapRegionError::Mmap(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        Ok(SharedMemory { region, file, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd itself (to hand it over by SCM_RIGHTS without a copy).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A new fd for the same memory (for [`crate::Backing::Fd`] or a vfio-user DMA_MAP).
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Convenience: `Backing::Fd` for this memory at file offset `offset`.
    pub fn backing(&self, offset: u64) -> std::io::Result<Backing> {
        Ok(Backing::Fd {
            file: self.try_clone_file()?,
            offset,
        })
    }

    /// Convenience: maps `[offset, offset + size)` of this memory at `iova` in `space`.
    pub fn map_into(
        &self,
        space: &crate::AddressSpace,
        iova: u64,
        offset: u64,
        size: u64,
        perms: Perms,
    ) -> Result<(), crate::MapError> {
        let backing = self
            .backing(offset)
            .map_err(|source| crate::MapError::Mmap { iova, size, source })?;
        space.map(iova, size, perms, backing)
    }

    fn check(&self, offset: u64, len: u64) -> Result<usize, ShmError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(offset as usize),
            _ => Err(ShmError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn check_aligned(&self, offset: u64, width: u64) -> Result<usize, ShmError> {
        let off = self.check(offset, width)?;
        if offset % width != 0 {
            return Err(ShmError::Misaligned {
                offset,
                align: width,
            });
        }
        Ok(off)
    }

    fn out_of_range(&self, offset: u64, len: u64) -> ShmError {
        ShmError::OutOfRange {
            offset,
            len,
            size: self.size,
        }
    }

    /// The byte ranges that hold pages, sorted and disjoint (page-aligned: shmem allocates whole
    /// pages); everything else is a hole that has never been touched and reads as zeros. A
    /// snapshot: a concurrent writer can add pages right after.
    pub fn data_ranges(&self) -> std::io::Result<Vec<Range<u64>>> {
        let fd = self.file.as_raw_fd();
        let seek = |pos: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
            let pos = libc::off_t::try_from(pos).map_err(|_| invalid("offset beyond off_t"))?;
            // SAFETY: lseek on a descriptor this struct owns; no memory is passed.
            let r = unsafe { libc::lseek(fd, pos, whence) };
            if r >= 0 {
                return Ok(Some(r as u64));
            }
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `pos` (SEEK_DATA), lseek(2).
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            }
        };
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.size {
            let Some(start) = seek(pos, libc::SEEK_DATA)? else {
                break;
            };
            // There is always a hole at the end of the file, so SEEK_HOLE finds one.
            let end = seek(start, libc::SEEK_HOLE)?
                .unwrap_or(self.size)
                .min(self.size);
            if end <= start {
                break;
            }
            out.push(start..end);
            pos = end;
        }
        Ok(out)
    }

    /// Bytes of memory the memfd holds (its allocated blocks): the pages touched so far.
    pub fn allocated_bytes(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.blocks() * 512)
    }

    /// Copies `buf.len()` bytes at `offset` out of the memory through the file (`pread(2)`), not
    /// the mapping: a hole reads as zeros without being allocated, so reading never grows the
    /// memory (an mmap read fault on a hole would allocate the page).
    pub fn pread(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.check(offset, buf.len() as u64)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.file.read_exact_at(buf, offset)
    }

    /// Gives `[offset, offset + len)` back to the system (`fallocate(2)` PUNCH_HOLE, size kept):
    /// the range reads as zeros and holds no memory. Page-aligned ranges free whole pages; the
    /// partial pages at unaligned ends are zeroed in place.
    pub fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check(offset, len)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        if len == 0 {
            return Ok(());
        }
        let off = libc::off_t::try_from(offset).map_err(|_| invalid("offset beyond off_t"))?;
        let n = libc::off_t::try_from(len).map_err(|_| invalid("length beyond off_t"))?;
        // SAFETY: fallocate on a descriptor this struct owns, inside its size; no memory is
        // passed. The mapping stays valid: the punched range reads as zeros through it.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` out of the memory.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ShmError> {
        let len = buf.len() as u64;
        let off = self.check(offset, len)?;
        let slice = self
            .region
            .get_slice(off, buf.len())
            .map_err(|_| self.out_of_range(offset, len))?;
        slice.copy_to(buf);
        Ok(())
    }

    /// Copies `data` into the memory at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), ShmError> {
        let len = data.len() as u64;
        let off = self.check(offset, len)?;
        let slice = self
            .region
            .get_slice(off, data.len())
            .map_err(|_| self.out_of_range(offset, len))?;
        slice.copy_from(data);
        Ok(())
    }

    /// Hints the cache lines of `[offset, offset + len)` (at most [`crate::PREFETCH_MAX`]
    /// bytes) toward this core for writing (x86 PREFETCHW), ahead of [`Self::write`]s there: a
    /// driver about to fill descriptors and buffers the device read last lets those lines'
    /// transfers overlap. Not an access; a range outside the memory is ignored.
    #[inline]
    pub fn prefetch_for_write(&self, offset: u64, len: u64) {
        let len = len.min(crate::PREFETCH_MAX);
        if len == 0 || self.check(offset, len).is_err() {
            return;
        }
        // `offset + len <= size`: inside the mapping.
        let p = self.region.as_ptr().wrapping_add(offset as usize);
        crate::prefetch::lines(p, len as usize, true);
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), ShmError> {
        self.check(offset, len)?;
        let chunk = [byte; 4096];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write(offset + done, &chunk[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// A copy of the whole memory (for memory-diff tests).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size as usize];
        self.region.as_volatile_slice().copy_to(&mut v[..]);
        v
    }

    /// Little-endian u16 load with Acquire ordering (8-byte alignment not needed; 2 is).
    pub fn read_u16(&self, offset: u64) -> Result<u16, ShmError> {
        let off = self.check_aligned(offset, 2)?;
        let a = self
            .region
            .get_atomic_ref::<AtomicU16>(off)
            .map_err(|_| self.out_of_range(offset, 2))?;
        Ok(u16::from_le(a.load(Ordering::Acquire)))
    }

    /// Little-endian u32 load with Acquire ordering (offset 4-aligned).
    pub fn read_u32(&self, offset: u64) -> Result<u32, ShmError> {
        let off = self.check_aligned(offset, 4)?;
        let a = self
            .region
            .get_atomic_ref::<AtomicU32>(off)
            .map_err(|_| self.out_of_range(offset, 4))?;
        Ok(u32::from_le(a.load(Ordering::Acquire)))
    }

    /// Little-endian u64 load with Acquire ordering (offset 8-aligned).
    pub fn read_u64(&self, offset: u64) -> Result<u64, ShmError> {
        let off = self.check_aligned(offset, 8)?;
        let a = self
            .region
            .get_atomic_ref::<AtomicU64>(off)
            .map_err(|_| self.out_of_range(offset, 8))?;
        Ok(u64::from_le(a.load(Ordering::Acquire)))
    }

    /// Plain little-endian u16 store (any alignment).
    pub fn write_u16(&self, offset: u64, v: u16) -> Result<(), ShmError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Plain little-endian u32 store (any alignment).
    pub fn write_u32(&self, offset: u64, v: u32) -> Result<(), ShmError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Plain little-endian u64 store (any alignment).
    pub fn write_u64(&self, offset: u64, v: u64) -> Result<(), ShmError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Little-endian u16 store with Release ordering (publishing avail->idx); 2-aligned.
    pub fn store_u16_release(&self, offset: u64, v: u16) -> Result<(), ShmError> {
        let off = self.check_aligned(offset, 2)?;
        let a = self
            .region
            .get_atomic_ref::<AtomicU16>(off)
            .map_err(|_| self.out_of_range(offset, 2))?;
        a.store(v.to_le(), Ordering::Release);
        Ok(())
    }

    /// Atomically replaces the little-endian u32 at `offset` (4-aligned) and returns the old
    /// value (AcqRel): how a doorbell engine consumes a doorbell slot.
    pub fn swap_u32(&self, offset: u64, new: u32) -> Result<u32, ShmError> {
        let off = self.check_aligned(offset, 4)?;
        let a = self
            .region
            .get_atomic_ref::<AtomicU32>(off)
            .map_err(|_| self.out_of_range(offset, 4))?;
        Ok(u32::from_le(a.swap(new.to_le(), Ordering::AcqRel)))
    }

    /// One naturally aligned store of `data` (1, 2, 4 or 8 bytes, little-endian) with Release
    /// ordering: a CPU's MMIO store to a mapped register page (a doorbell after the ring
    /// update it announces). Other widths or a misaligned offset are refused.
    pub fn store_release(&self, offset: u64, data: &[u8]) -> Result<(), ShmError> {
        let width = data.len() as u64;
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.out_of_range(offset, width));
        }
        let off = self.check_aligned(offset, width)?;
        let oob = |_| self.out_of_range(offset, width);
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        match width {
            1 => self
                .region
                .get_atomic_ref::<AtomicU8>(off)
                .map_err(oob)?
                .store(v as u8, Ordering::Release),
            2 => self
                .region
                .get_atomic_ref::<AtomicU16>(off)
                .map_err(oob)?
                .store((v as u16).to_le(), Ordering::Release),
            4 => self
                .region
                .get_atomic_ref::<AtomicU32>(off)
                .map_err(oob)?
                .store((v as u32).to_le(), Ordering::Release),
            _ => self
                .region
                .get_atomic_ref::<AtomicU64>(off)
                .map_err(oob)?
                .store(v.to_le(), Ordering::Release),
        }
        Ok(())
    }

    /// One naturally aligned load into `data` (1, 2, 4 or 8 bytes, little-endian) with
    /// Acquire ordering: the read counterpart of [`SharedMemory::store_release`].
    pub fn load_acquire(&self, offset: u64, data: &mut [u8]) -> Result<(), ShmError> {
        let width = data.len() as u64;
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.out_of_range(offset, width));
        }
        let off = self.check_aligned(offset, width)?;
        let oob = |_| self.out_of_range(offset, width);
        let v: u64 = match width {
            1 => self
                .region
                .get_atomic_ref::<AtomicU8>(off)
                .map_err(oob)?
                .load(Ordering::Acquire)
                .into(),
            2 => u16::from_le(
                self.region
                    .get_atomic_ref::<AtomicU16>(off)
                    .map_err(oob)?
                    .load(Ordering::Acquire),
            )
            .into(),
            4 => u32::from_le(
                self.region
                    .get_atomic_ref::<AtomicU32>(off)
                    .map_err(oob)?
                    .load(Ordering::Acquire),
            )
            .into(),
            _ => u64::from_le(
                self.region
                    .get_atomic_ref::<AtomicU64>(off)
                    .map_err(oob)?
                    .load(Ordering::Acquire),
            ),
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        Ok(())
    }

    /// Atomically replaces the little-endian u64 word at `offset` (8-aligned) and returns the
    /// old value: how a VMM harvests the dirty log (`swap_u64(w, 0)`) while the device logs.
    pub fn swap_u64(&self, offset: u64, new: u64) -> Result<u64, ShmError> {
        let off = self.check_aligned(offset, 8)?;
        let a = self
            .region
            .get_atomic_ref::<AtomicU64>(off)
            .map_err(|_| self.out_of_range(offset, 8))?;
        Ok(u64::from_le(a.swap(new.to_le(), Ordering::AcqRel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_alignment() {
        let m = SharedMemory::new("t", 0x2000).unwrap();
        assert_eq!(m.size(), 0x2000);
        assert!(SharedMemory::new("t", 0).is_err());
        assert!(SharedMemory::new("a\0b", 4096).is_err());
        let mut b = [0u8; 4];
        assert_eq!(
            m.read(0x1ffd, &mut b),
            Err(ShmError::OutOfRange {
                offset: 0x1ffd,
                len: 4,
                size: 0x2000
            })
        );
        assert!(m.read(u64::MAX, &mut b).is_err());
        assert!(m.write(0x2000, &[1]).is_err());
        assert!(m.write(0x2000, &[]).is_ok());
        assert!(m.fill(0x1000, 0x1001, 1).is_err());
        assert_eq!(
            m.read_u16(1),
            Err(ShmError::Misaligned {
                offset: 1,
                align: 2
            })
        );
        assert!(m.swap_u64(4, 0).is_err());
        assert!(m.read_u64(0x2000).is_err());
        assert!(m.store_u16_release(0x1fff, 0).is_err());
        // Plain stores do not need alignment.
        m.write_u32(0x11, 0xdead_beef).unwrap();
        m.read(0x11, &mut b).unwrap();
        assert_eq!(b, [0xef, 0xbe, 0xad, 0xde]);
    }

    #[test]
    fn sparse_pages_found_read_and_punched_without_allocating() {
        const P: u64 = 4096;
        let m = SharedMemory::new("t", 1 << 30).unwrap();
        assert_eq!(m.allocated_bytes().unwrap(), 0, "a new memfd holds nothing");
        assert!(m.data_ranges().unwrap().is_empty());
        m.write(5 * P + 7, b"x").unwrap();
        m.fill(100 * P, 3 * P, 0xab).unwrap();
        m.write((1 << 30) - 1, b"z").unwrap();
        assert_eq!(
            m.data_ranges().unwrap(),
            vec![5 * P..6 * P, 100 * P..103 * P, (1 << 30) - P..1 << 30]
        );
        let held = m.allocated_bytes().unwrap();
        assert_eq!(held, 5 * P);
        // pread: data and holes alike, and a hole stays a hole.
        let mut buf = vec![0xffu8; (8 * P) as usize];
        m.pread(0, &mut buf).unwrap();
        assert_eq!(buf[(5 * P + 7) as usize], b'x');
        assert_eq!(buf.iter().filter(|&&b| b != 0).count(), 1);
        assert_eq!(
            m.allocated_bytes().unwrap(),
            held,
            "pread allocated nothing"
        );
        assert!(m.pread((1 << 30) - 1, &mut [0u8; 2]).is_err());
        // Punch: the range reads as zeros and its memory is gone.
        m.punch_hole(100 * P, 2 * P).unwrap();
        assert_eq!(m.allocated_bytes().unwrap(), held - 2 * P);
        assert_eq!(
            m.data_ranges().unwrap(),
            vec![5 * P..6 * P, 102 * P..103 * P, (1 << 30) - P..1 << 30]
        );
        let mut page = [1u8; 4096];
        m.read(100 * P, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        assert!(m.punch_hole(1 << 30, 1).is_err());
        m.punch_hole(0, 0).unwrap();
    }

    #[test]
    fn values_and_fill() {
        let m = SharedMemory::new("t", 0x3000).unwrap();
        m.fill(0x0ff0, 0x1020, 0xab).unwrap();
        let s = m.snapshot();
        assert_eq!(s.len(), 0x3000);
        assert!(s[0x0ff0..0x2010].iter().all(|&x| x == 0xab));
        assert_eq!(s[0x0fef], 0);
        assert_eq!(s[0x2010], 0);
        m.write_u64(0x100, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(m.read_u64(0x100).unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(m.read_u32(0x100).unwrap(), 0x0506_0708);
        assert_eq!(m.read_u16(0x106).unwrap(), 0x0102);
        m.store_u16_release(0x200, 0xbeef).unwrap();
        assert_eq!(m.snapshot()[0x200..0x202], [0xef, 0xbe]);
        m.write_u16(0x202, 7).unwrap();
        assert_eq!(m.swap_u64(0x100, 5).unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(m.read_u64(0x100).unwrap(), 5);
        // A second mapping of the same memfd sees the same bytes.
        let f = m.try_clone_file().unwrap();
        assert!(f.metadata().unwrap().len() == 0x3000);
        let second = SharedMemory::map_file(f, 0x1000, 0x2000).unwrap();
        assert_eq!(second.size(), 0x2000);
        m.write_u32(0x1010, 0x1234_5678).unwrap();
        assert_eq!(second.read_u32(0x10).unwrap(), 0x1234_5678);
        assert_eq!(second.swap_u32(0x10, 7).unwrap(), 0x1234_5678);
        assert_eq!(m.read_u32(0x1010).unwrap(), 7);
        // A mapping must start on a page boundary of the file.
        assert!(SharedMemory::map_file(m.try_clone_file().unwrap(), 0x10, 0x1000).is_err());
    }

    #[test]
    fn width_stores_and_loads() {
        let m = SharedMemory::new("t", 0x1000).unwrap();
        m.fill(0, 16, 0xff).unwrap();
        m.store_release(2, &[0x34, 0x12]).unwrap();
        assert_eq!(
            m.snapshot()[..8],
            [0xff, 0xff, 0x34, 0x12, 0xff, 0xff, 0xff, 0xff]
        );
        m.store_release(8, &0x0102_0304_0506_0708u64.to_le_bytes())
            .unwrap();
        m.store_release(1, &[9]).unwrap();
        m.store_release(4, &7u32.to_le_bytes()).unwrap();
        for (off, width, want) in [
            (1u64, 1usize, 9u64),
            (2, 2, 0x1234),
            (4, 4, 7),
            (8, 8, 0x0102_0304_0506_0708),
        ] {
            let mut b = vec![0u8; width];
            m.load_acquire(off, &mut b).unwrap();
            b.resize(8, 0);
            assert_eq!(
                u64::from_le_bytes(b.try_into().unwrap()),
                want,
                "{off}/{width}"
            );
        }
        assert!(m.store_release(3, &[0, 0]).is_err(), "misaligned");
        assert!(m.store_release(0, &[0, 0, 0]).is_err(), "3 bytes");
        assert!(m.store_release(0x1000, &[0]).is_err(), "past the end");
        assert!(m.load_acquire(6, &mut [0u8; 4]).is_err(), "misaligned");
    }
}
