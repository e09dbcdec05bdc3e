//! The vfio-user wire format (QEMU docs/interop/vfio-user.rst): the 16-byte header, command
//! numbers, and the payload structures, encoded field by field in host byte order on the
//! `vfio-bindings` structs where the protocol reuses the kernel's (`vfio_region_info`,
//! `vfio_irq_info`, `vfio_irq_set`, `vfio_iommu_type1_dma_map/unmap`).
//!
//! Sizes are the protocol's, which differ from the kernel structs in two places: DEVICE_GET_INFO
//! carries 16 bytes (the kernel's `vfio_device_info` has grown to 24), and DMA_MAP's `vaddr`
//! field is the file offset of the passed descriptor.

use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_irq_info, vfio_irq_set,
    vfio_region_info, VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS,
};

/// Header length; `size` in the header counts it.
pub const HEADER_SIZE: usize = 16;
/// DEVICE_GET_INFO payload: argsz, flags, num_regions, num_irqs.
pub const DEVICE_INFO_SIZE: usize = 16;
/// DEVICE_GET_REGION_INFO payload (struct vfio_region_info without capabilities).
pub const REGION_INFO_SIZE: usize = std::mem::size_of::<vfio_region_info>();
/// DEVICE_GET_IRQ_INFO payload (struct vfio_irq_info).
pub const IRQ_INFO_SIZE: usize = std::mem::size_of::<vfio_irq_info>();
/// DEVICE_SET_IRQS fixed part (struct vfio_irq_set without data).
pub const IRQ_SET_SIZE: usize = std::mem::size_of::<vfio_irq_set>();
/// DMA_MAP payload.
pub const DMA_MAP_SIZE: usize = std::mem::size_of::<vfio_iommu_type1_dma_map>();
/// DMA_UNMAP payload (without a dirty bitmap).
pub const DMA_UNMAP_SIZE: usize = std::mem::size_of::<vfio_iommu_type1_dma_unmap>();
/// REGION_READ/WRITE fixed part: offset u64, region u32, count u32.
pub const REGION_RW_SIZE: usize = 16;
/// One REGION_WRITE_MULTI entry: offset u64, region u32, count u32, data [u8; 8].
pub const WRITE_MULTI_ENTRY_SIZE: usize = 24;
/// VERSION fixed part: major u16, minor u16.
pub const VERSION_SIZE: usize = 4;

/// Header flag bits.
pub mod flags {
    /// Message type field.
    pub const TYPE_MASK: u32 = 0xf;
    /// Type: command.
    pub const TYPE_COMMAND: u32 = 0x0;
    /// Type: reply.
    pub const TYPE_REPLY: u32 = 0x1;
    /// The sender wants no reply.
    pub const NO_REPLY: u32 = 0x10;
    /// Reply: the command failed; the header's error field holds an errno.
    pub const ERROR: u32 = 0x20;
}

/// DMA_UNMAP flags as QEMU sends them (the kernel's `VFIO_DMA_UNMAP_FLAG_*` values; the
/// `vfio_user` crate's `DmaUnmapFlags` are one bit off).
pub mod unmap_flags {
    pub use vfio_bindings::bindings::vfio::{
        VFIO_DMA_UNMAP_FLAG_ALL as ALL, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP as GET_DIRTY_BITMAP,
    };
}

/// Command numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    Version = 1,
    DmaMap = 2,
    DmaUnmap = 3,
    DeviceGetInfo = 4,
    DeviceGetRegionInfo = 5,
    DeviceGetRegionIoFds = 6,
    DeviceGetIrqInfo = 7,
    DeviceSetIrqs = 8,
    RegionRead = 9,
    RegionWrite = 10,
    DmaRead = 11,
    DmaWrite = 12,
    DeviceReset = 13,
    DirtyPages = 14,
    RegionWriteMulti = 15,
    DeviceFeature = 16,
    MigDataRead = 17,
    MigDataWrite = 18,
}

impl Command {
    /// The command with number `n`, if the protocol defines one.
    pub fn from_u16(n: u16) -> Option<Self> {
        use Command::*;
        Some(match n {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            14 => DirtyPages,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => return None,
        })
    }

    /// The spec's name without the VFIO_USER_ prefix.
    pub fn name(self) -> &'static str {
        use Command::*;
        match self {
            Version => "VERSION",
            DmaMap => "DMA_MAP",
            DmaUnmap => "DMA_UNMAP",
            DeviceGetInfo => "DEVICE_GET_INFO",
            DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            DeviceGetRegionIoFds => "DEVICE_GET_REGION_IO_FDS",
            DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            DeviceSetIrqs => "DEVICE_SET_IRQS",
            RegionRead => "REGION_READ",
            RegionWrite => "REGION_WRITE",
            DmaRead => "DMA_READ",
            DmaWrite => "DMA_WRITE",
            DeviceReset => "DEVICE_RESET",
            DirtyPages => "DIRTY_PAGES",
            RegionWriteMulti => "REGION_WRITE_MULTI",
            DeviceFeature => "DEVICE_FEATURE",
            MigDataRead => "MIG_DATA_READ",
            MigDataWrite => "MIG_DATA_WRITE",
        }
    }
}

/// Name of command number `n` for logs ("UNKNOWN" if undefined).
pub fn command_name(n: u16) -> &'static str {
    Command::from_u16(n).map_or("UNKNOWN", Command::name)
}

/// The message header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Message id (echoed in the reply).
    pub id: u16,
    /// Command number.
    pub command: u16,
    /// Whole message size, header included.
    pub size: u32,
    /// Type, NO_REPLY, ERROR.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Decodes 16 bytes.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Self {
        let mut r = Reader::new(b);
        Header {
            id: r.u16(),
            command: r.u16(),
            size: r.u32(),
            flags: r.u32(),
            error: r.u32(),
        }
    }

    /// Encodes to 16 bytes.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut w = Vec::with_capacity(HEADER_SIZE);
        put16(&mut w, self.id);
        put16(&mut w, self.command);
        put32(&mut w, self.size);
        put32(&mut w, self.flags);
        put32(&mut w, self.error);
        w.try_into().expect("16 bytes")
    }

    /// A command header for `payload_len` bytes of payload.
    pub fn command(id: u16, command: u16, payload_len: usize, extra_flags: u32) -> Self {
        Header {
            id,
            command,
            size: (HEADER_SIZE + payload_len) as u32,
            flags: flags::TYPE_COMMAND | extra_flags,
            error: 0,
        }
    }

    /// Payload length the header declares; `None` if `size` is smaller than the header itself.
    pub fn payload_len(&self) -> Option<usize> {
        (self.size as usize).checked_sub(HEADER_SIZE)
    }

    /// Message type (flags bits 0-3).
    pub fn msg_type(&self) -> u32 {
        self.flags & flags::TYPE_MASK
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        self.flags & flags::ERROR != 0
    }
}

/// Little cursor over a payload; reads past the end yield 0 (callers check lengths first).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(s) = self.buf.get(self.pos..self.pos + N) {
            out.copy_from_slice(s);
        }
        self.pos += N;
        out
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_ne_bytes(self.take())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }
}

pub fn put16(w: &mut Vec<u8>, v: u16) {
    w.extend_from_slice(&v.to_ne_bytes());
}
pub fn put32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_ne_bytes());
}
pub fn put64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_ne_bytes());
}

/// DEVICE_GET_INFO payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

impl DeviceInfo {
    pub fn parse(b: &[u8]) -> Option<Self> {
        (b.len() >= DEVICE_INFO_SIZE).then(|| {
            let mut r = Reader::new(b);
            DeviceInfo {
                argsz: r.u32(),
                flags: r.u32(),
                num_regions: r.u32(),
                num_irqs: r.u32(),
            }
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(DEVICE_INFO_SIZE);
        put32(&mut w, self.argsz);
        put32(&mut w, self.flags);
        put32(&mut w, self.num_regions);
        put32(&mut w, self.num_irqs);
        w
    }
}

/// Decodes a `vfio_region_info` (32 bytes).
pub fn parse_region_info(b: &[u8]) -> Option<vfio_region_info> {
    (b.len() >= REGION_INFO_SIZE).then(|| {
        let mut r = Reader::new(b);
        vfio_region_info {
            argsz: r.u32(),
            flags: r.u32(),
            index: r.u32(),
            cap_offset: r.u32(),
            size: r.u64(),
            offset: r.u64(),
        }
    })
}

/// Encodes a `vfio_region_info`.
pub fn encode_region_info(i: &vfio_region_info) -> Vec<u8> {
    let mut w = Vec::with_capacity(REGION_INFO_SIZE);
    put32(&mut w, i.argsz);
    put32(&mut w, i.flags);
    put32(&mut w, i.index);
    put32(&mut w, i.cap_offset);
    put64(&mut w, i.size);
    put64(&mut w, i.offset);
    w
}

/// One sparse mmap area of a region (`struct vfio_region_sparse_mmap_area`): the client may
/// map `[offset, offset + size)` of the region; everything else traps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    pub offset: u64,
    pub size: u64,
}

/// `struct vfio_info_cap_header` + nr_areas + reserved.
pub const SPARSE_MMAP_CAP_HEADER: usize = 16;
/// One `struct vfio_region_sparse_mmap_area`.
pub const SPARSE_MMAP_AREA_SIZE: usize = 16;
/// Most sparse areas a reply may carry and a client accepts (the server offers one).
pub const MAX_SPARSE_AREAS: usize = 64;

/// Encodes a `VFIO_REGION_INFO_CAP_SPARSE_MMAP` capability (version 1, the last in its chain:
/// `next` 0) for `areas`, to follow a `vfio_region_info` at `cap_offset` 32.
pub fn encode_sparse_mmap_cap(areas: &[SparseArea]) -> Vec<u8> {
    let mut w = Vec::with_capacity(SPARSE_MMAP_CAP_HEADER + areas.len() * SPARSE_MMAP_AREA_SIZE);
    put16(&mut w, VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16);
    put16(&mut w, 1);
    put32(&mut w, 0);
    put32(&mut w, areas.len() as u32);
    put32(&mut w, 0);
    for a in areas {
        put64(&mut w, a.offset);
        put64(&mut w, a.size);
    }
    w
}

/// Finds the sparse mmap capability in a region info reply (`b` starts at the
/// `vfio_region_info`) by walking its capability chain from `cap_offset`, as QEMU's
/// `vfio_get_region_info_cap` does. `Ok(None)`: no such capability; `Err`: a chain or
/// capability that points outside the reply, loops, or announces more areas than it holds.
pub fn parse_sparse_mmap_cap(b: &[u8]) -> Result<Option<Vec<SparseArea>>, String> {
    let info = parse_region_info(b).ok_or("short region info")?;
    if info.flags & VFIO_REGION_INFO_FLAG_CAPS == 0 {
        return Ok(None);
    }
    let mut off = info.cap_offset as usize;
    for _ in 0..16 {
        if off == 0 {
            return Ok(None);
        }
        if off < REGION_INFO_SIZE || off + 8 > b.len() {
            return Err(format!(
                "capability at {off} outside the {}-byte reply",
                b.len()
            ));
        }
        let mut r = Reader::new(&b[off..]);
        let (id, _version, next) = (r.u16(), r.u16(), r.u32());
        if u32::from(id) == VFIO_REGION_INFO_CAP_SPARSE_MMAP {
            if off + SPARSE_MMAP_CAP_HEADER > b.len() {
                return Err("sparse mmap capability cut short".into());
            }
            let n = r.u32() as usize;
            if n > MAX_SPARSE_AREAS {
                return Err(format!("{n} sparse mmap areas"));
            }
            let start = off + SPARSE_MMAP_CAP_HEADER;
            let end = start + n * SPARSE_MMAP_AREA_SIZE;
            if end > b.len() {
                return Err(format!("{n} sparse mmap areas do not fit the reply"));
            }
            let areas = b[start..end]
                .chunks_exact(SPARSE_MMAP_AREA_SIZE)
                .map(|c| {
                    let mut r = Reader::new(c);
                    SparseArea {
                        offset: r.u64(),
                        size: r.u64(),
                    }
                })
                .collect();
            return Ok(Some(areas));
        }
        off = next as usize;
    }
    Err("capability chain too long (a loop?)".into())
}

/// Decodes a `vfio_irq_info` (16 bytes).
pub fn parse_irq_info(b: &[u8]) -> Option<vfio_irq_info> {
    (b.len() >= IRQ_INFO_SIZE).then(|| {
        let mut r = Reader::new(b);
        vfio_irq_info {
            argsz: r.u32(),
            flags: r.u32(),
            index: r.u32(),
            count: r.u32(),
        }
    })
}

/// Encodes a `vfio_irq_info`.
pub fn encode_irq_info(i: &vfio_irq_info) -> Vec<u8> {
    let mut w = Vec::with_capacity(IRQ_INFO_SIZE);
    put32(&mut w, i.argsz);
    put32(&mut w, i.flags);
    put32(&mut w, i.index);
    put32(&mut w, i.count);
    w
}

/// Decodes the fixed part of a `vfio_irq_set` (20 bytes; data follows).
pub fn parse_irq_set(b: &[u8]) -> Option<vfio_irq_set> {
    (b.len() >= IRQ_SET_SIZE).then(|| {
        let mut r = Reader::new(b);
        vfio_irq_set {
            argsz: r.u32(),
            flags: r.u32(),
            index: r.u32(),
            start: r.u32(),
            count: r.u32(),
            ..Default::default()
        }
    })
}

/// Encodes the fixed part of a `vfio_irq_set`.
pub fn encode_irq_set(s: &vfio_irq_set) -> Vec<u8> {
    let mut w = Vec::with_capacity(IRQ_SET_SIZE);
    put32(&mut w, s.argsz);
    put32(&mut w, s.flags);
    put32(&mut w, s.index);
    put32(&mut w, s.start);
    put32(&mut w, s.count);
    w
}

/// Decodes DMA_MAP (`vaddr` is the file offset).
pub fn parse_dma_map(b: &[u8]) -> Option<vfio_iommu_type1_dma_map> {
    (b.len() >= DMA_MAP_SIZE).then(|| {
        let mut r = Reader::new(b);
        vfio_iommu_type1_dma_map {
            argsz: r.u32(),
            flags: r.u32(),
            vaddr: r.u64(),
            iova: r.u64(),
            size: r.u64(),
        }
    })
}

/// Encodes DMA_MAP.
pub fn encode_dma_map(m: &vfio_iommu_type1_dma_map) -> Vec<u8> {
    let mut w = Vec::with_capacity(DMA_MAP_SIZE);
    put32(&mut w, m.argsz);
    put32(&mut w, m.flags);
    put64(&mut w, m.vaddr);
    put64(&mut w, m.iova);
    put64(&mut w, m.size);
    w
}

/// Decodes DMA_UNMAP (without bitmap).
pub fn parse_dma_unmap(b: &[u8]) -> Option<vfio_iommu_type1_dma_unmap> {
    (b.len() >= DMA_UNMAP_SIZE).then(|| {
        let mut r = Reader::new(b);
        vfio_iommu_type1_dma_unmap {
            argsz: r.u32(),
            flags: r.u32(),
            iova: r.u64(),
            size: r.u64(),
            ..Default::default()
        }
    })
}

/// Encodes DMA_UNMAP (without bitmap).
pub fn encode_dma_unmap(m: &vfio_iommu_type1_dma_unmap) -> Vec<u8> {
    let mut w = Vec::with_capacity(DMA_UNMAP_SIZE);
    put32(&mut w, m.argsz);
    put32(&mut w, m.flags);
    put64(&mut w, m.iova);
    put64(&mut w, m.size);
    w
}

/// REGION_READ/WRITE fixed part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionRw {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

impl RegionRw {
    pub fn parse(b: &[u8]) -> Option<Self> {
        (b.len() >= REGION_RW_SIZE).then(|| {
            let mut r = Reader::new(b);
            RegionRw {
                offset: r.u64(),
                region: r.u32(),
                count: r.u32(),
            }
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(REGION_RW_SIZE);
        put64(&mut w, self.offset);
        put32(&mut w, self.region);
        put32(&mut w, self.count);
        w
    }
}

/// DEVICE_FEATURE fixed part: argsz u32, flags u32 (struct vfio_user_device_feature).
pub const DEVICE_FEATURE_SIZE: usize = 8;
/// VFIO_DEVICE_FEATURE_MIGRATION data: flags u64.
pub const FEATURE_MIGRATION_SIZE: usize = 8;
/// VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE data: device_state u32, data_fd u32.
pub const FEATURE_MIG_STATE_SIZE: usize = 8;
/// VFIO_DEVICE_FEATURE_DMA_LOGGING_START data, fixed part: page_size u64, num_ranges u32,
/// reserved u32; `num_ranges` ranges follow.
pub const DMA_LOGGING_CONTROL_SIZE: usize = 16;
/// One DMA logging range: iova u64, length u64.
pub const DMA_LOGGING_RANGE_SIZE: usize = 16;
/// VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT data, fixed part: iova u64, length u64, page_size
/// u64; the reply appends the bitmap (u64 words).
pub const DMA_LOGGING_REPORT_SIZE: usize = 24;
/// MIG_DATA_READ / MIG_DATA_WRITE fixed part: argsz u32, size u32 (data follows).
pub const MIG_DATA_SIZE: usize = 8;

/// DEVICE_FEATURE flags and feature indexes (the kernel's `VFIO_DEVICE_FEATURE_*`), the
/// migration flags and the `vfio_device_mig_state` values.
pub mod feature {
    pub use vfio_bindings::bindings::vfio::{
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT as DMA_LOGGING_REPORT,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START as DMA_LOGGING_START,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP as DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET as GET,
        VFIO_DEVICE_FEATURE_MASK as MASK, VFIO_DEVICE_FEATURE_MIGRATION as MIGRATION,
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE as MIG_DEVICE_STATE,
        VFIO_DEVICE_FEATURE_PROBE as PROBE, VFIO_DEVICE_FEATURE_SET as SET,
        VFIO_MIGRATION_P2P as MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY as MIGRATION_PRE_COPY,
        VFIO_MIGRATION_STOP_COPY as MIGRATION_STOP_COPY,
    };
}

/// `enum vfio_device_mig_state`.
pub mod mig_state {
    pub use vfio_bindings::bindings::vfio::{
        vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR as ERROR,
        vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
        vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
        vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING as RESUMING,
        vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING as RUNNING,
        vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
        vfio_device_mig_state_VFIO_DEVICE_STATE_STOP as STOP,
        vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
    };

    /// The state's name without the VFIO_DEVICE_STATE_ prefix.
    pub fn name(s: u32) -> &'static str {
        match s {
            ERROR => "ERROR",
            STOP => "STOP",
            RUNNING => "RUNNING",
            STOP_COPY => "STOP_COPY",
            RESUMING => "RESUMING",
            RUNNING_P2P => "RUNNING_P2P",
            PRE_COPY => "PRE_COPY",
            PRE_COPY_P2P => "PRE_COPY_P2P",
            _ => "UNKNOWN",
        }
    }
}

/// A DEVICE_FEATURE payload: argsz, flags, data.
pub fn encode_feature(argsz: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(DEVICE_FEATURE_SIZE + data.len());
    put32(&mut w, argsz);
    put32(&mut w, flags);
    w.extend_from_slice(data);
    w
}

/// Decodes the fixed part of a DEVICE_FEATURE payload: (argsz, flags, data).
pub fn parse_feature(b: &[u8]) -> Option<(u32, u32, &[u8])> {
    (b.len() >= DEVICE_FEATURE_SIZE).then(|| {
        let mut r = Reader::new(b);
        (r.u32(), r.u32(), &b[DEVICE_FEATURE_SIZE..])
    })
}

/// The DMA_LOGGING_START data: page size and ranges (iova, length).
pub fn encode_dma_logging_control(page_size: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut w =
        Vec::with_capacity(DMA_LOGGING_CONTROL_SIZE + ranges.len() * DMA_LOGGING_RANGE_SIZE);
    put64(&mut w, page_size);
    put32(&mut w, ranges.len() as u32);
    put32(&mut w, 0);
    for &(iova, len) in ranges {
        put64(&mut w, iova);
        put64(&mut w, len);
    }
    w
}

/// The DMA_LOGGING_REPORT data (without bitmap).
pub fn encode_dma_logging_report(iova: u64, length: u64, page_size: u64) -> Vec<u8> {
    let mut w = Vec::with_capacity(DMA_LOGGING_REPORT_SIZE);
    put64(&mut w, iova);
    put64(&mut w, length);
    put64(&mut w, page_size);
    w
}

/// Bytes of a DMA_LOGGING_REPORT bitmap: one bit per `page_size` of `length`, in u64 words.
pub fn dirty_bitmap_bytes(length: u64, page_size: u64) -> u64 {
    length.div_ceil(page_size).div_ceil(64) * 8
}

/// A MIG_DATA_READ / MIG_DATA_WRITE payload: argsz, size, data.
pub fn encode_mig_data(argsz: u32, size: u32, data: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(MIG_DATA_SIZE + data.len());
    put32(&mut w, argsz);
    put32(&mut w, size);
    w.extend_from_slice(data);
    w
}

/// Encodes a VERSION payload: major, minor, NUL-terminated JSON.
pub fn encode_version(major: u16, minor: u16, json: &str) -> Vec<u8> {
    let mut w = Vec::with_capacity(VERSION_SIZE + json.len() + 1);
    put16(&mut w, major);
    put16(&mut w, minor);
    w.extend_from_slice(json.as_bytes());
    w.push(0);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            id: 0x1234,
            command: 9,
            size: 48,
            flags: flags::NO_REPLY,
            error: 0,
        };
        assert_eq!(Header::parse(&h.to_bytes()), h);
        assert_eq!(h.payload_len(), Some(32));
        assert_eq!(Header { size: 8, ..h }.payload_len(), None);
    }

    #[test]
    fn sizes_are_the_protocols() {
        assert_eq!(
            (
                REGION_INFO_SIZE,
                IRQ_INFO_SIZE,
                IRQ_SET_SIZE,
                DMA_MAP_SIZE,
                DMA_UNMAP_SIZE
            ),
            (32, 16, 20, 32, 24)
        );
        let r = vfio_region_info {
            argsz: 32,
            flags: 3,
            index: 7,
            cap_offset: 0,
            size: 4096,
            offset: 0,
        };
        assert_eq!(parse_region_info(&encode_region_info(&r)), Some(r));
        let m = vfio_iommu_type1_dma_map {
            argsz: 32,
            flags: 3,
            vaddr: 0x1000,
            iova: 0x4000_0000,
            size: 0x20_0000,
        };
        assert_eq!(parse_dma_map(&encode_dma_map(&m)), Some(m));
        assert!(parse_dma_map(&encode_dma_map(&m)[..31]).is_none());
    }

    #[test]
    fn sparse_mmap_capability_round_trip_and_bad_chains() {
        let areas = [
            SparseArea {
                offset: 0x3000,
                size: 0x1000,
            },
            SparseArea {
                offset: 0x8000,
                size: 0x2000,
            },
        ];
        let info = |flags: u32, cap_offset: u32| {
            encode_region_info(&vfio_region_info {
                argsz: 80,
                flags,
                index: 0,
                cap_offset,
                size: 0x10000,
                offset: 0,
            })
        };
        let mut b = info(VFIO_REGION_INFO_FLAG_CAPS, 32);
        b.extend(encode_sparse_mmap_cap(&areas));
        assert_eq!(b.len(), 32 + 16 + 32);
        assert_eq!(parse_sparse_mmap_cap(&b), Ok(Some(areas.to_vec())));
        // No CAPS flag: no capabilities, whatever follows.
        assert_eq!(parse_sparse_mmap_cap(&info(0, 32)), Ok(None));
        // A capability offset inside the fixed part, or past the end.
        assert!(parse_sparse_mmap_cap(&info(VFIO_REGION_INFO_FLAG_CAPS, 8)).is_err());
        assert!(parse_sparse_mmap_cap(&info(VFIO_REGION_INFO_FLAG_CAPS, 32)).is_err());
        // More areas announced than carried.
        let mut short = b.clone();
        short.truncate(b.len() - 8);
        assert!(parse_sparse_mmap_cap(&short).is_err());
        // A chain that points at itself.
        let mut looped = info(VFIO_REGION_INFO_FLAG_CAPS, 32);
        looped.extend([9, 0, 1, 0, 32, 0, 0, 0]);
        assert!(parse_sparse_mmap_cap(&looped).is_err());
        // Another capability first, then the sparse one.
        let mut chained = info(VFIO_REGION_INFO_FLAG_CAPS, 32);
        chained.extend([9, 0, 1, 0, 40, 0, 0, 0]);
        chained.extend(encode_sparse_mmap_cap(&areas[..1]));
        assert_eq!(
            parse_sparse_mmap_cap(&chained),
            Ok(Some(areas[..1].to_vec()))
        );
    }
}
