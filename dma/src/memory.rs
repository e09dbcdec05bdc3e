//! The IOVA space of one device, assembled from vfio-user `DMA_MAP` / `DMA_UNMAP`.
//!
//! The mapping table is an immutable, `Arc`'d snapshot that is replaced on every change
//! (the `GuestMemoryAtomic` pattern of vm-memory), plus a generation counter bumped after
//! every successful change so that DMA engines can invalidate their IOTLB with one load.
//! fd-backed mappings are mmap'd `MAP_SHARED` through vm-memory's `MmapRegionBuilder` +
//! `FileOffset` and held as `GuestRegionMmap`s; the snapshot keeps them alive, so an engine
//! that still holds an old snapshot can never touch unmapped host memory.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

/// Size of the pages the IOTLB, the dirty log and the write trace work in.
pub const PAGE_SIZE: u64 = 4096;
pub(crate) const PAGE_SHIFT: u32 = 12;

/// DMA permissions of a mapping (vfio `VFIO_DMA_MAP_FLAG_READ` / `_WRITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl Perms {
    /// Read-only (device may read, e.g. a TX buffer or QEMU's ROM ranges).
    pub const RO: Perms = Perms {
        read: true,
        write: false,
    };
    /// Write-only.
    pub const WO: Perms = Perms {
        read: false,
        write: true,
    };
    /// Read-write (what QEMU asks for RAM).
    pub const RW: Perms = Perms {
        read: true,
        write: true,
    };
}

/// What backs a DMA mapping.
///
/// `Fd` is a vfio-user `DMA_MAP` that carried an fd: it is mmap'd `MAP_SHARED` at `offset`.
/// `None` is what QEMU sends for ROM/BIOS ranges, and for all RAM when the memory backend is
/// not `share=on`: the range is recorded but any device access to it faults with
/// [`crate::DmaFault::NoBacking`] (vfio_user 0.1.7 has no DMA_READ/DMA_WRITE fallback).
#[derive(Debug)]
pub enum Backing {
    /// A file (memfd, hugetlbfs, ...) and the offset of the mapping's first byte in it.
    Fd {
        /// The file to map; the mapping keeps its own reference.
        file: File,
        /// Offset in the file; must be page-aligned (an `mmap` requirement).
        offset: u64,
    },
    /// No memory the device can reach.
    None,
}

/// Why a `DMA_MAP` / `DMA_UNMAP` was refused.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A map or unmap of zero bytes.
    #[error("DMA map/unmap of zero bytes")]
    ZeroSize,
    /// `iova + size` does not fit in 64 bits.
    #[error("DMA range {iova:#x}+{size:#x} overflows the 64-bit IOVA space")]
    AddressOverflow {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// The new mapping intersects an existing one.
    #[error("DMA map {iova:#x}+{size:#x} overlaps existing mapping {existing_iova:#x}+{existing_size:#x}")]
    Overlap {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
        /// IOVA of the first existing mapping it hits.
        existing_iova: u64,
        /// Size of that mapping.
        existing_size: u64,
    },
    /// An unmap that covers no mapping, or only part of one (vfio semantics: mappings are
    /// removed whole or not at all).
    #[error("DMA unmap {iova:#x}+{size:#x} covers no mapping or only part of one")]
    NotFound {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// The backing file could not be mapped (bad offset, file too short, mmap failure).
    #[error("cannot mmap DMA mapping {iova:#x}+{size:#x}: {source}")]
    Mmap {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One mapping as reported by [`AddressSpace::mappings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingInfo {
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// Device permissions.
    pub perms: Perms,
    /// True when the mapping is backed by an fd (device-accessible).
    pub has_fd: bool,
}

/// A mapping inside a snapshot.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) iova: u64,
    /// Exclusive end; `iova + size` is checked at map time, so this never overflows.
    pub(crate) end: u64,
    pub(crate) perms: Perms,
    /// Host address of the byte at `iova`, 0 for `Backing::None`.
    pub(crate) host: usize,
    /// Keeps the mmap alive for as long as any snapshot refers to it.
    pub(crate) region: Option<Arc<GuestRegionMmap>>,
}

impl Mapping {
    pub(crate) fn info(&self) -> MappingInfo {
        MappingInfo {
            iova: self.iova,
            size: self.end - self.iova,
            perms: self.perms,
            has_fd: self.region.is_some(),
        }
    }
}

/// An immutable mapping table, sorted by IOVA, non-overlapping.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) maps: Vec<Mapping>,
}

impl Snapshot {
    /// Index of the mapping containing `iova`.
    #[inline]
    pub(crate) fn find(&self, iova: u64) -> Option<usize> {
        let idx = self.maps.partition_point(|m| m.iova <= iova);
        let idx = idx.checked_sub(1)?;
        (iova < self.maps[idx].end).then_some(idx)
    }

    fn clone_table(&self) -> Vec<Mapping> {
        self.maps
            .iter()
            .map(|m| Mapping {
                iova: m.iova,
                end: m.end,
                perms: m.perms,
                host: m.host,
                region: m.region.clone(),
            })
            .collect()
    }
}

/// The IOVA space of one device: `DMA_MAP` / `DMA_UNMAP` land here.
///
/// `Send + Sync`; readers take cheap snapshots, writers swap the table and then bump
/// [`generation`](AddressSpace::generation) (Release), which engines check on every access.
#[derive(Debug)]
pub struct AddressSpace {
    generation: AtomicU64,
    current: Mutex<Arc<Snapshot>>,
}

impl Default for AddressSpace {
    fn default() -> Self {
        Self::new()
    }
}

fn mmap_backing(
    iova: u64,
    size: u64,
    perms: Perms,
    file: File,
    offset: u64,
) -> Result<Arc<GuestRegionMmap>, MapError> {
    let err = |source: std::io::Error| MapError::Mmap { iova, size, source };
    let len = usize::try_from(size).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "mapping larger than the host address space",
        ))
    })?;
    let file_end = offset.checked_add(size).ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "file offset + size overflows",
        ))
    })?;
    if offset > i64::MAX as u64 {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "file offset does not fit off_t",
        )));
    }
    // Touching a MAP_SHARED page past EOF raises SIGBUS: refuse such mappings up front
    // (only regular files have a meaningful length; memfds and hugetlbfs files are regular).
    let meta = file.metadata().map_err(err)?;
    if meta.file_type().is_file() && meta.len() < file_end {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "file offset {offset:#x} + size {size:#x} runs past end of file ({:#x})",
                meta.len()
            ),
        )));
    }
    // Map only what the device may do (defence in depth: a bug that writes a read-only
    // mapping faults in the host instead of corrupting guest memory). Writable mappings
    // are also readable because the dirty log is updated with atomic read-modify-writes.
    let prot = match (perms.read, perms.write) {
        (_, true) => libc::PROT_READ | libc::PROT_WRITE,
        (true, false) => libc::PROT_READ,
        (false, false) => libc::PROT_NONE,
    };
    let region = MmapRegionBuilder::<()>::new(len)
        .with_file_offset(FileOffset::new(file, offset))
        .with_mmap_prot(prot)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .map_err(|e| match e {
            vm_memory::mmap::MmapRegionError::Mmap(io) => err(io),
            other => err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                other.to_string(),
            )),
        })?;
    let region = GuestRegionMmap::new(region, GuestAddress(iova)).ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "guest region overflows",
        ))
    })?;
    Ok(Arc::new(region))
}

impl AddressSpace {
    /// An empty IOVA space at generation 0.
    pub fn new() -> Self {
        AddressSpace {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Snapshot::default())),
        }
    }

    /// Adds a mapping of `[iova, iova + size)`. Fails on zero size, 64-bit overflow (the
    /// exclusive end must fit in a `u64`), overlap with an existing mapping, or mmap failure.
    pub fn map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        backing: Backing,
    ) -> Result<(), MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        let end = iova
            .checked_add(size)
            .ok_or(MapError::AddressOverflow { iova, size })?;
        // Cheap early overlap check so that a refused map does not cost an mmap.
        self.check_overlap(&self.snapshot(), iova, end, size)?;
        let region = match backing {
            Backing::Fd { file, offset } => Some(mmap_backing(iova, size, perms, file, offset)?),
            Backing::None => None,
        };
        let host = region.as_ref().map_or(0, |r| r.as_ptr() as usize);
        let mut cur = self.current.lock();
        // Re-check under the lock: another thread may have mapped meanwhile.
        self.check_overlap(&cur, iova, end, size)?;
        let mut maps = cur.clone_table();
        let pos = maps.partition_point(|m| m.iova < iova);
        maps.insert(
            pos,
            Mapping {
                iova,
                end,
                perms,
                host,
                region,
            },
        );
        *cur = Arc::new(Snapshot { maps });
        self.generation.fetch_add(1, Ordering::Release);
        drop(cur);
        tracing::debug!(iova = format_args!("{iova:#x}"), size, ?perms, "dma map");
        Ok(())
    }

    fn check_overlap(
        &self,
        snap: &Snapshot,
        iova: u64,
        end: u64,
        size: u64,
    ) -> Result<(), MapError> {
        if let Some(m) = snap.maps.iter().find(|m| m.iova < end && iova < m.end) {
            return Err(MapError::Overlap {
                iova,
                size,
                existing_iova: m.iova,
                existing_size: m.end - m.iova,
            });
        }
        Ok(())
    }

    /// Removes every mapping lying wholly inside `[iova, iova + size)` and returns the bytes
    /// unmapped. `NotFound` if none does, or if any mapping is only partly covered (then
    /// nothing is removed), as vfio does.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        let end = iova
            .checked_add(size)
            .ok_or(MapError::AddressOverflow { iova, size })?;
        let mut cur = self.current.lock();
        let mut removed = 0u64;
        for m in cur.maps.iter().filter(|m| m.iova < end && iova < m.end) {
            if m.iova < iova || m.end > end {
                return Err(MapError::NotFound { iova, size });
            }
            removed += m.end - m.iova;
        }
        if removed == 0 {
            return Err(MapError::NotFound { iova, size });
        }
        let maps = cur
            .clone_table()
            .into_iter()
            .filter(|m| !(m.iova >= iova && m.end <= end))
            .collect();
        *cur = Arc::new(Snapshot { maps });
        self.generation.fetch_add(1, Ordering::Release);
        drop(cur);
        tracing::debug!(iova = format_args!("{iova:#x}"), size, removed, "dma unmap");
        Ok(removed)
    }

    /// Removes every mapping (QEMU's unmap-all flag, device reset); returns the bytes
    /// unmapped. The generation is bumped only if something was mapped.
    pub fn unmap_all(&self) -> u64 {
        let mut cur = self.current.lock();
        let removed = cur.maps.iter().map(|m| m.end - m.iova).sum();
        if !cur.maps.is_empty() {
            *cur = Arc::new(Snapshot::default());
            self.generation.fetch_add(1, Ordering::Release);
        }
        drop(cur);
        tracing::debug!(removed, "dma unmap all");
        removed
    }

    /// All mappings, sorted by IOVA.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.snapshot().maps.iter().map(Mapping::info).collect()
    }

    /// The mapping containing `iova`, if any.
    pub fn mapping_at(&self, iova: u64) -> Option<MappingInfo> {
        let snap = self.snapshot();
        snap.find(iova).map(|i| snap.maps[i].info())
    }

    /// Number of successful changes so far; engines compare it on every access.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current table.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.lock().clone()
    }

    /// Fast-path generation load (the same as [`generation`](Self::generation)).
    #[inline(always)]
    pub(crate) fn generation_fast(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(iova: u64, size: u64, perms: Perms, has_fd: bool) -> MappingInfo {
        MappingInfo {
            iova,
            size,
            perms,
            has_fd,
        }
    }

    #[test]
    fn map_unmap_and_errors() {
        let s = AddressSpace::new();
        assert_eq!(s.generation(), 0);
        s.map(0x2000, 0x1000, Perms::RW, Backing::None).unwrap();
        s.map(0x1000, 0x1000, Perms::RO, Backing::None).unwrap();
        assert_eq!(s.generation(), 2);
        assert_eq!(
            s.mappings(),
            vec![
                info(0x1000, 0x1000, Perms::RO, false),
                info(0x2000, 0x1000, Perms::RW, false)
            ]
        );
        assert!(matches!(
            s.map(0x5000, 0, Perms::RW, Backing::None),
            Err(MapError::ZeroSize)
        ));
        assert!(matches!(
            s.map(0x2800, 0x1000, Perms::RW, Backing::None),
            Err(MapError::Overlap {
                iova: 0x2800,
                size: 0x1000,
                existing_iova: 0x2000,
                existing_size: 0x1000
            })
        ));
        // Covering an existing mapping entirely is an overlap too.
        assert!(matches!(
            s.map(0, 0x10000, Perms::RW, Backing::None),
            Err(MapError::Overlap {
                existing_iova: 0x1000,
                ..
            })
        ));
        assert!(matches!(
            s.map(u64::MAX - 0xfff, 0x1000, Perms::RW, Backing::None),
            Err(MapError::AddressOverflow { .. })
        ));
        // The last full page below 2^64 is mappable.
        s.map(u64::MAX - 0x1000, 0x1000, Perms::RW, Backing::None)
            .unwrap();
        assert_eq!(s.generation(), 3);
        // Failed operations do not bump the generation.
        assert!(matches!(
            s.unmap(0x1800, 0x1000),
            Err(MapError::NotFound {
                iova: 0x1800,
                size: 0x1000
            })
        ));
        assert!(matches!(
            s.unmap(0x8000, 0x1000),
            Err(MapError::NotFound { .. })
        ));
        assert!(matches!(s.unmap(0x1000, 0), Err(MapError::ZeroSize)));
        assert!(matches!(
            s.unmap(u64::MAX, 2),
            Err(MapError::AddressOverflow { .. })
        ));
        assert_eq!(s.generation(), 3);
        // Partial coverage of one mapping refuses the whole unmap: nothing removed.
        assert!(matches!(
            s.unmap(0x1000, 0x1800),
            Err(MapError::NotFound { .. })
        ));
        assert_eq!(s.mappings().len(), 3);
        // A range covering two whole mappings removes both.
        assert_eq!(s.unmap(0, 0x4000).unwrap(), 0x2000);
        assert_eq!(s.generation(), 4);
        assert_eq!(
            s.mappings(),
            vec![info(u64::MAX - 0x1000, 0x1000, Perms::RW, false)]
        );
        assert_eq!(s.mapping_at(u64::MAX - 1).unwrap().iova, u64::MAX - 0x1000);
        assert_eq!(s.mapping_at(u64::MAX), None);
    }

    #[test]
    fn unmap_all_counts_bytes() {
        let s = AddressSpace::default();
        assert_eq!(s.unmap_all(), 0);
        assert_eq!(s.generation(), 0);
        s.map(0, 0x3000, Perms::RW, Backing::None).unwrap();
        s.map(0x10000, 0x1000, Perms::RO, Backing::None).unwrap();
        assert_eq!(s.unmap_all(), 0x4000);
        assert!(s.mappings().is_empty());
        assert_eq!(s.generation(), 3);
        // Mappable again after unmap-all.
        s.map(0, 0x3000, Perms::RW, Backing::None).unwrap();
    }

    #[test]
    fn mmap_errors_are_reported() {
        let s = AddressSpace::new();
        let shm = crate::SharedMemory::new("short", 0x2000).unwrap();
        // Past EOF.
        let e = s
            .map(
                0,
                0x3000,
                Perms::RW,
                Backing::Fd {
                    file: shm.try_clone_file().unwrap(),
                    offset: 0,
                },
            )
            .unwrap_err();
        assert!(matches!(e, MapError::Mmap { .. }), "{e}");
        // Unaligned file offset: mmap refuses it with EINVAL.
        let e = s
            .map(
                0,
                0x1000,
                Perms::RW,
                Backing::Fd {
                    file: shm.try_clone_file().unwrap(),
                    offset: 0x10,
                },
            )
            .unwrap_err();
        assert!(matches!(e, MapError::Mmap { .. }), "{e}");
        // Offset + size overflow.
        let e = s
            .map(
                0,
                0x1000,
                Perms::RW,
                Backing::Fd {
                    file: shm.try_clone_file().unwrap(),
                    offset: u64::MAX - 0x10,
                },
            )
            .unwrap_err();
        assert!(matches!(e, MapError::Mmap { .. }), "{e}");
        assert_eq!(s.generation(), 0);
        assert!(s.mappings().is_empty());
    }
}
