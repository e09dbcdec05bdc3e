//! The IOVA space of one device, assembled from vfio-user `DMA_MAP` / `DMA_UNMAP`.
//!
//! The mappings live in a `BTreeMap` by IOVA (O(log n) map and unmap: a guest vIOMMU in strict
//! mode maps and unmaps every buffer); engines translate with an immutable, `Arc`'d sorted
//! snapshot (the `GuestMemoryAtomic` pattern of vm-memory) that is rebuilt lazily after a
//! change, plus a generation counter bumped after every successful change so that DMA engines
//! can invalidate their IOTLB with one load. fd-backed mappings point into one `MAP_SHARED`
//! mmap of the whole backing file, shared by every mapping of that file and keeping no
//! descriptor open; snapshots keep it alive, so an engine that still holds an old
//! snapshot can never touch unmapped host memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::guard::Guarded;

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
    /// An unmap that covers only part of a mapping (vfio semantics: mappings are removed
    /// whole or not at all).
    #[error("DMA unmap {iova:#x}+{size:#x} covers only part of a mapping")]
    PartialUnmap {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// As many distinct backing files are mapped as the SIGBUS guard can watch.
    #[error("cannot map DMA mapping {iova:#x}+{size:#x}: {limit} distinct backing files are mapped already")]
    TooManyFiles {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
        /// The limit (`MAX_BACKING_FILES`).
        limit: usize,
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
    /// Keeps the file's mmap alive for as long as any snapshot refers to this mapping.
    pub(crate) file: Option<Arc<FileMmap>>,
}

impl Mapping {
    /// The host address of a contained SIGBUS in this mapping's mmap, if any.
    #[inline]
    pub(crate) fn poisoned(&self) -> Option<usize> {
        self.file.as_ref().and_then(|f| f.poisoned())
    }

    pub(crate) fn info(&self) -> MappingInfo {
        MappingInfo {
            iova: self.iova,
            size: self.end - self.iova,
            perms: self.perms,
            has_fd: self.file.is_some(),
        }
    }
}

/// An immutable mapping table, sorted by IOVA, non-overlapping: what engines translate with.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) maps: Vec<Arc<Mapping>>,
}

impl Snapshot {
    /// Index of the mapping containing `iova`.
    #[inline]
    pub(crate) fn find(&self, iova: u64) -> Option<usize> {
        let idx = self.maps.partition_point(|m| m.iova <= iova);
        let idx = idx.checked_sub(1)?;
        (iova < self.maps[idx].end).then_some(idx)
    }
}

/// Counters of the DMA_MAP / DMA_UNMAP traffic one IOVA space has seen (a guest vIOMMU in
/// strict mode maps and unmaps every buffer, so these tell how hard the map path works).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapStats {
    /// Successful maps.
    pub maps: u64,
    /// Unmap requests that removed at least one mapping.
    pub unmaps: u64,
    /// Unmap requests that covered nothing mapped (they succeed, as in the kernel's type1
    /// IOMMU; intel-iommu sends power-of-two unmaps over the whole aperture).
    pub unmaps_of_nothing: u64,
    /// Maps refused because they overlapped an existing mapping (EEXIST).
    pub overlaps_refused: u64,
    /// Mappings removed by unmap-all (client reset, disconnect, DMA_UNMAP's ALL flag).
    pub unmapped_by_reset: u64,
    /// Live mappings now, and the most there ever were at once.
    pub live: u64,
    /// See `live`.
    pub live_peak: u64,
    /// The lowest IOVA and the highest exclusive end ever mapped (`u64::MAX`/0 when none).
    pub iova_min: u64,
    /// See `iova_min`.
    pub iova_end_max: u64,
    /// fd-backed maps whose IOVA differs from their offset in the backing file. QEMU backs
    /// guest RAM below 4 GiB with one memfd whose offset is the guest-physical address, so
    /// without a vIOMMU this stays 0 for RAM; behind a vIOMMU every IOTLB entry counts.
    pub fd_maps_iova_not_offset: u64,
    /// Whole-file mmaps made, and maps served from an existing one (same file, by identity).
    pub file_mmaps: u64,
    /// See `file_mmaps`.
    pub file_mmap_reuses: u64,
    /// Whole-file mmaps of files sealed against shrinking (`F_SEAL_SHRINK`, memfd_create(2)):
    /// those cannot lose pages to an `ftruncate`. Every fd-backed mmap is guarded against
    /// SIGBUS all the same (holes of sparse files; see `guard.rs`).
    pub shrink_sealed: u64,
}

/// A whole backing file mmap'd once, shared by every mapping into it (found by file identity).
///
/// QEMU behind a vIOMMU sends one DMA_MAP per IOTLB entry, each with its own fd of the same
/// RAM memfd: mapping the file once turns each of those into a table insert, closes the fd at
/// once (no fd per map), and maps hugetlbfs-backed RAM, whose mmap offsets must be huge-page
/// aligned, although QEMU's 4 KiB IOTLB entries are not.
#[derive(Debug)]
pub(crate) struct FileMmap {
    /// Declared before `region`: unregistered from the SIGBUS guard before the munmap.
    guard: Guarded,
    region: RawMmap,
    /// File offset of the region's first byte (0 for whole-file mmaps).
    file_offset: u64,
    len: u64,
}

impl FileMmap {
    /// The region back when the SIGBUS guard has no room for another mmap.
    fn new(region: RawMmap, file_offset: u64, len: u64) -> Result<FileMmap, RawMmap> {
        let Some(guard) = Guarded::new(region.as_ptr() as usize, len as usize) else {
            return Err(region);
        };
        Ok(FileMmap {
            guard,
            region,
            file_offset,
            len,
        })
    }

    /// Host address of the first contained SIGBUS in this mmap (see [`crate::guard`]): the
    /// file lost the page under it, and every mapping into it now faults.
    #[inline]
    pub(crate) fn poisoned(&self) -> Option<usize> {
        self.guard.poisoned()
    }

    /// The file offset of host address `addr` inside this mmap.
    pub(crate) fn file_offset_of(&self, addr: usize) -> u64 {
        self.file_offset + (addr - self.region.as_ptr() as usize) as u64
    }
}

/// Identity of a backing file and the protection it is mapped with.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    writable: bool,
}

/// The mutable side: mappings by IOVA, the snapshot engines use (rebuilt lazily after a
/// change, so a burst of maps costs O(log n) each and one O(n) rebuild at the next DMA),
/// the whole-file mmaps by identity, the counters.
#[derive(Debug, Default)]
struct Table {
    maps: BTreeMap<u64, Arc<Mapping>>,
    snapshot: Option<Arc<Snapshot>>,
    /// Strong: a vIOMMU guest in strict mode often unmaps every mapping of its RAM file
    /// between two buffers, and re-mmapping (and munmapping) the whole file each time cost
    /// ~50 us per DMA_MAP. Only files whose mmap nothing else uses are evicted, and only past
    /// `MAX_IDLE_FILES`; unmap-all (reset, disconnect) drops them all.
    files: HashMap<FileKey, Arc<FileMmap>>,
    stats: MapStats,
}

/// Distinct backing files mapped at once (each whole-file mmap is watched by the SIGBUS guard).
pub const MAX_BACKING_FILES: usize = crate::guard::MAX_GUARDED;

/// Whole-file mmaps kept while no mapping uses them (see [`Table::files`]).
const MAX_IDLE_FILES: usize = 16;

impl Table {
    /// The first mapping intersecting `[iova, end)`.
    fn first_overlap(&self, iova: u64, end: u64) -> Option<&Arc<Mapping>> {
        // The mapping starting at or below iova (it may reach into the range), then the
        // first one starting inside the range.
        let below = self.maps.range(..=iova).next_back().map(|(_, m)| m);
        below
            .filter(|m| m.end > iova)
            .or_else(|| self.maps.range(iova..end).next().map(|(_, m)| m))
    }

    /// `region` registered with the SIGBUS guard; when the guard is full, the idle cached
    /// mmaps (which hold slots too) are dropped and it is tried once more. `None` (the region
    /// unmapped) when live mappings really use every slot.
    fn guarded(&mut self, region: RawMmap, file_offset: u64, len: u64) -> Option<FileMmap> {
        match FileMmap::new(region, file_offset, len) {
            Ok(m) => Some(m),
            Err(region) => {
                self.files.retain(|_, f| Arc::strong_count(f) > 1);
                FileMmap::new(region, file_offset, len).ok()
            }
        }
    }

    fn changed(&mut self) {
        self.snapshot = None;
        self.stats.live_peak = self.stats.live_peak.max(self.maps.len() as u64);
    }
}

/// The IOVA space of one device: `DMA_MAP` / `DMA_UNMAP` land here.
///
/// `Send + Sync`; readers take cheap snapshots, writers change the table and then bump
/// [`generation`](AddressSpace::generation) (Release), which engines check on every access.
#[derive(Debug)]
pub struct AddressSpace {
    generation: AtomicU64,
    table: Mutex<Table>,
}

impl Default for AddressSpace {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
}

/// Checks `[offset, offset + size)` against the file and returns the file's metadata, or
/// `None` when the file is not a regular file (its length then means nothing).
fn check_file_range(
    file: &File,
    offset: u64,
    size: u64,
) -> std::io::Result<Option<std::fs::Metadata>> {
    let file_end = offset
        .checked_add(size)
        .ok_or_else(|| invalid("file offset + size overflows"))?;
    if offset > i64::MAX as u64 {
        return Err(invalid("file offset does not fit off_t"));
    }
    if usize::try_from(size).is_err() {
        return Err(invalid("mapping larger than the host address space"));
    }
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    // Touching a MAP_SHARED page past EOF raises SIGBUS: refuse such mappings up front
    // (memfds and hugetlbfs files are regular files).
    if meta.len() < file_end {
        return Err(invalid(format!(
            "file offset {offset:#x} + size {size:#x} runs past end of file ({:#x})",
            meta.len()
        )));
    }
    Ok(Some(meta))
}

/// Whether `file` is sealed against shrinking (`fcntl(F_GET_SEALS)`; files that do not
/// support seals answer EINVAL and count as unsealed).
fn shrink_sealed(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// A `MAP_SHARED` mmap, unmapped on drop. It keeps no descriptor: the mapping holds its own
/// reference to the file (mmap(2): "closing the file descriptor does not unmap the region"),
/// so a client's many backing files cost no slot in our descriptor table.
#[derive(Debug)]
struct RawMmap {
    addr: usize,
    len: usize,
}

impl RawMmap {
    fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }
}

impl Drop for RawMmap {
    fn drop(&mut self) {
        // SAFETY: `[addr, addr + len)` is the mapping mmap returned to us; nothing refers to it
        // any more (mappings and snapshots hold the `FileMmap` that owns it).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// mmaps `len` bytes of `file` at `offset`, `MAP_SHARED`, with only the access the device
/// may make (defence in depth: a bug that writes a read-only mapping faults in the host
/// instead of corrupting guest memory). Writable mappings are also readable because the dirty
/// log is updated with atomic read-modify-writes. `file` is closed on return.
fn mmap_file(file: File, offset: u64, len: u64, perms: Perms) -> std::io::Result<RawMmap> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(len).map_err(|_| invalid("mapping too large"))?;
    if len == 0 {
        return Err(invalid("mapping of zero bytes"));
    }
    let off =
        libc::off_t::try_from(offset).map_err(|_| invalid("file offset does not fit off_t"))?;
    let prot = match (perms.read, perms.write) {
        (_, true) => libc::PROT_READ | libc::PROT_WRITE,
        (true, false) => libc::PROT_READ,
        (false, false) => libc::PROT_NONE,
    };
    // SAFETY: a new mapping at an address the kernel chooses (no MAP_FIXED), so no existing
    // memory is affected; the descriptor is open for the call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            off,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(RawMmap {
        addr: p as usize,
        len,
    })
}

impl AddressSpace {
    /// An empty IOVA space at generation 0.
    pub fn new() -> Self {
        crate::guard::install();
        AddressSpace {
            generation: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
        }
    }

    /// Adds a mapping of `[iova, iova + size)`. Fails on zero size, 64-bit overflow (the
    /// exclusive end must fit in a `u64`), overlap with an existing mapping, or mmap failure.
    /// O(log n) in the number of mappings; an fd of a file already mapped (same device and
    /// inode) reuses that mmap and is closed at once.
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
        let mut t = self.table.lock();
        if let Some(m) = t.first_overlap(iova, end) {
            let e = MapError::Overlap {
                iova,
                size,
                existing_iova: m.iova,
                existing_size: m.end - m.iova,
            };
            t.stats.overlaps_refused += 1;
            return Err(e);
        }
        let translated = matches!(&backing, Backing::Fd { offset, .. } if *offset != iova);
        let (host, file) = match backing {
            Backing::None => (0, None),
            Backing::Fd { file, offset } => {
                let whole = self.file_mmap(&mut t, file, iova, offset, size, perms)?;
                let host = whole.region.as_ptr() as usize + (offset - whole.file_offset) as usize;
                (host, Some(whole))
            }
        };
        t.maps.insert(
            iova,
            Arc::new(Mapping {
                iova,
                end,
                perms,
                host,
                file,
            }),
        );
        t.stats.maps += 1;
        t.stats.fd_maps_iova_not_offset += u64::from(translated);
        t.stats.iova_min = if t.stats.maps == 1 {
            iova
        } else {
            t.stats.iova_min.min(iova)
        };
        t.stats.iova_end_max = t.stats.iova_end_max.max(end);
        t.changed();
        self.generation.fetch_add(1, Ordering::Release);
        drop(t);
        tracing::trace!(iova = format_args!("{iova:#x}"), size, ?perms, "dma map");
        Ok(())
    }

    /// The whole-file mmap covering `[offset, offset + size)` of `file`: an existing one of the
    /// same file (by identity) when it is large enough, else a new one.
    fn file_mmap(
        &self,
        t: &mut Table,
        file: File,
        iova: u64,
        offset: u64,
        size: u64,
        perms: Perms,
    ) -> Result<Arc<FileMmap>, MapError> {
        use std::os::unix::fs::MetadataExt;
        let err = |source: std::io::Error| MapError::Mmap { iova, size, source };
        let full = MapError::TooManyFiles {
            iova,
            size,
            limit: MAX_BACKING_FILES,
        };
        // mmap offsets are page-aligned (EINVAL, as mmap(2) would answer)
        if offset % PAGE_SIZE != 0 {
            return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let Some(meta) = check_file_range(&file, offset, size).map_err(err)? else {
            // Not a regular file (a device node, say): map just the range, unshared.
            let region = mmap_file(file, offset, size, perms).map_err(err)?;
            return Ok(Arc::new(t.guarded(region, offset, size).ok_or(full)?));
        };
        let file_len = meta.len();
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            writable: perms.write,
        };
        if t.files.get(&key).is_some_and(|m| m.poisoned().is_some()) {
            // Its pages were lost (contained SIGBUS): never hand it out again.
            t.files.remove(&key);
        }
        if let Some(m) = t.files.get(&key) {
            if m.len >= offset + size {
                t.stats.file_mmap_reuses += 1;
                return Ok(m.clone()); // `file` (the fd) is closed here
            }
        }
        // Writable maps need a read-write mmap; a read-only map of a file opened read-write
        // shares the read-write mmap only through its own key (the IOMMU enforces perms).
        t.stats.shrink_sealed += u64::from(shrink_sealed(&file));
        let region = mmap_file(file, 0, file_len, perms).map_err(err)?;
        if t.files.len() >= MAX_IDLE_FILES {
            t.files.retain(|_, f| Arc::strong_count(f) > 1);
        }
        let m = Arc::new(t.guarded(region, 0, file_len).ok_or(full)?);
        t.files.insert(key, m.clone());
        t.stats.file_mmaps += 1;
        Ok(m)
    }

    /// Removes every mapping lying wholly inside `[iova, iova + size)` and returns the bytes
    /// unmapped; 0 when nothing is mapped there (that succeeds, as in the kernel's type1 IOMMU
    /// driver, vfio_dma_do_unmap). `PartialUnmap` if a mapping is only partly covered (then
    /// nothing is removed), as vfio does.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        // A range whose last byte is the top of the 64-bit space is valid (QEMU's vfio
        // listener unmaps up to 2^64); no mapping can hold that byte, so clamp the end.
        let last = iova
            .checked_add(size - 1)
            .ok_or(MapError::AddressOverflow { iova, size })?;
        let end = last.saturating_add(1);
        let mut t = self.table.lock();
        if let Some(m) = t.first_overlap(iova, end) {
            if m.iova < iova {
                return Err(MapError::PartialUnmap { iova, size });
            }
        }
        let keys: Vec<u64> = t.maps.range(iova..end).map(|(k, _)| *k).collect();
        if keys.last().is_some_and(|k| t.maps[k].end > end) {
            return Err(MapError::PartialUnmap { iova, size });
        }
        if keys.is_empty() {
            t.stats.unmaps_of_nothing += 1;
            return Ok(0);
        }
        let mut removed = 0u64;
        for k in keys {
            if let Some(m) = t.maps.remove(&k) {
                removed += m.end - m.iova;
            }
        }
        t.stats.unmaps += 1;
        t.changed();
        self.generation.fetch_add(1, Ordering::Release);
        drop(t);
        tracing::trace!(iova = format_args!("{iova:#x}"), size, removed, "dma unmap");
        Ok(removed)
    }

    /// Removes every mapping (QEMU's unmap-all flag, device reset); returns the bytes
    /// unmapped. The generation is bumped only if something was mapped.
    pub fn unmap_all(&self) -> u64 {
        let mut t = self.table.lock();
        let removed = t.maps.values().map(|m| m.end - m.iova).sum();
        t.files.clear();
        if !t.maps.is_empty() {
            t.stats.unmapped_by_reset += t.maps.len() as u64;
            t.maps.clear();
            t.changed();
            self.generation.fetch_add(1, Ordering::Release);
        }
        drop(t);
        tracing::debug!(removed, "dma unmap all");
        removed
    }

    /// All mappings, sorted by IOVA.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.table.lock().maps.values().map(|m| m.info()).collect()
    }

    /// Number of live mappings (O(1)).
    pub fn len(&self) -> usize {
        self.table.lock().maps.len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mapping containing `iova`, if any.
    pub fn mapping_at(&self, iova: u64) -> Option<MappingInfo> {
        let t = self.table.lock();
        let m = t.maps.range(..=iova).next_back().map(|(_, m)| m)?;
        (iova < m.end).then(|| m.info())
    }

    /// The map/unmap counters.
    pub fn stats(&self) -> MapStats {
        let t = self.table.lock();
        MapStats {
            live: t.maps.len() as u64,
            ..t.stats
        }
    }

    /// Number of successful changes so far; engines compare it on every access.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current table (rebuilt here, once, after a change).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        let mut t = self.table.lock();
        if let Some(s) = &t.snapshot {
            return s.clone();
        }
        let s = Arc::new(Snapshot {
            maps: t.maps.values().cloned().collect(),
        });
        t.snapshot = Some(s.clone());
        s
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
            Err(MapError::PartialUnmap {
                iova: 0x1800,
                size: 0x1000
            })
        ));
        // Nothing mapped there: succeeds with 0 bytes, no change (vfio type1 semantics).
        assert_eq!(s.unmap(0x8000, 0x1000).unwrap(), 0);
        assert!(matches!(s.unmap(0x1000, 0), Err(MapError::ZeroSize)));
        assert!(matches!(
            s.unmap(u64::MAX, 2),
            Err(MapError::AddressOverflow { .. })
        ));

        assert_eq!(s.generation(), 3);
        // Partial coverage of one mapping refuses the whole unmap: nothing removed.
        assert!(matches!(
            s.unmap(0x1000, 0x1800),
            Err(MapError::PartialUnmap { .. })
        ));
        // A range that ends inside a mapping likewise.
        assert!(matches!(
            s.unmap(0, 0x2800),
            Err(MapError::PartialUnmap { .. })
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
        // An unmap up to 2^64 (QEMU's listener sends them) is valid and takes the top page.
        assert_eq!(
            s.unmap(0xfef0_0000, 0u64.wrapping_sub(0xfef0_0000))
                .unwrap(),
            0x1000
        );
        assert!(s.is_empty());
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

    /// The table against a naive model: random maps and unmaps (aligned to a coarse grid so
    /// that overlaps, touching neighbours and partial unmaps all happen often).
    #[test]
    fn table_matches_a_naive_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
        let s = AddressSpace::new();
        let mut model: Vec<(u64, u64)> = Vec::new(); // (iova, end)
        for _ in 0..20_000 {
            let iova = rng.gen_range(0..64u64) * 0x1000;
            let size = rng.gen_range(1..6u64) * 0x1000;
            let end = iova + size;
            if rng.gen_bool(0.5) {
                let overlaps = model.iter().any(|&(a, e)| a < end && iova < e);
                let r = s.map(iova, size, Perms::RW, Backing::None);
                assert_eq!(r.is_ok(), !overlaps, "map {iova:#x}+{size:#x}: {r:?}");
                if !overlaps {
                    model.push((iova, end));
                }
            } else {
                let hit: Vec<_> = model
                    .iter()
                    .filter(|&&(a, e)| a < end && iova < e)
                    .collect();
                let partial = hit.iter().any(|&&(a, e)| a < iova || e > end);
                let r = s.unmap(iova, size);
                if partial {
                    assert!(matches!(r, Err(MapError::PartialUnmap { .. })), "{r:?}");
                } else {
                    let bytes: u64 = hit.iter().map(|&&(a, e)| e - a).sum();
                    assert_eq!(r.unwrap(), bytes);
                    model.retain(|&(a, e)| !(a >= iova && e <= end));
                }
            }
            model.sort();
            let got: Vec<_> = s
                .mappings()
                .iter()
                .map(|m| (m.iova, m.iova + m.size))
                .collect();
            assert_eq!(got, model);
            let probe = rng.gen_range(0..70u64) * 0x1000 + 0x800;
            let want = model
                .iter()
                .find(|&&(a, e)| a <= probe && probe < e)
                .map(|m| m.0);
            assert_eq!(s.mapping_at(probe).map(|m| m.iova), want);
            assert_eq!(
                s.snapshot().find(probe).map(|i| s.snapshot().maps[i].iova),
                want
            );
        }
        let st = s.stats();
        assert_eq!(st.live, model.len() as u64);
        assert!(st.maps > 1000 && st.unmaps > 1000 && st.unmaps_of_nothing > 100);
        assert!(st.overlaps_refused > 1000 && st.live_peak >= st.live);
    }

    /// Maps of the same file share one mmap (found by file identity) and keep no fd; they
    /// alias the same memory; a writable map of a file does not reuse a read-only mmap.
    #[test]
    fn maps_of_one_file_share_one_mmap() {
        let s = AddressSpace::new();
        let shm = crate::SharedMemory::new("ram", 0x10_0000).unwrap();
        let fd = || Backing::Fd {
            file: shm.try_clone_file().unwrap(),
            offset: 0,
        };
        let at = |offset| Backing::Fd {
            file: shm.try_clone_file().unwrap(),
            offset,
        };
        // QEMU behind a vIOMMU: one 4 KiB map per IOTLB entry, IOVAs unrelated to offsets.
        for i in 0..64u64 {
            s.map(0xfff0_0000 + i * 0x1000, 0x1000, Perms::RW, at(i * 0x2000))
                .unwrap();
        }
        let st = s.stats();
        assert_eq!((st.file_mmaps, st.file_mmap_reuses), (1, 63));
        // The same file again at another IOVA aliases the same host memory.
        s.map(0, 0x10_0000, Perms::RW, fd()).unwrap();
        let snap = s.snapshot();
        let host = |iova: u64| {
            let m = &snap.maps[snap.find(iova).unwrap()];
            m.host + (iova - m.iova) as usize
        };
        assert_eq!(host(0xfff0_0000 + 5 * 0x1000), host(5 * 0x2000));
        assert_eq!(s.stats().file_mmaps, 1);
        // Read-only maps get their own read-only mmap.
        s.map(0x2000_0000, 0x1000, Perms::RO, at(0)).unwrap();
        assert_eq!(s.stats().file_mmaps, 2);
        // Everything unmapped: the file's mmap stays cached (strict-mode guests unmap all of it
        // between buffers), so the next map reuses it.
        drop(snap);
        assert_eq!(
            s.unmap(0, u64::MAX).unwrap(),
            64 * 0x1000 + 0x10_0000 + 0x1000
        );
        assert!(s.is_empty());
        s.map(0, 0x1000, Perms::RW, fd()).unwrap();
        assert_eq!(s.stats().file_mmaps, 2);
        // Unmap of nothing: success, counted.
        assert_eq!(s.unmap(0x10_0000, 1 << 47).unwrap(), 0);
        assert_eq!(s.stats().unmaps_of_nothing, 1);
        // Unmap-all (reset, disconnect) drops the cached mmaps too.
        s.unmap_all();
        s.map(0, 0x1000, Perms::RW, fd()).unwrap();
        assert_eq!(s.stats().file_mmaps, 3, "a new mmap after unmap-all");
    }
}
