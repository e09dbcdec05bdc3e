//! A small blocking vfio-user client: what QEMU's `vfio-user-pci` does, without QEMU.
//!
//! It speaks the same messages as QEMU 11 (VERSION with the same capabilities, DEVICE_GET_INFO,
//! region and IRQ infos, DMA_MAP with the memory's descriptor, SET_IRQS with eventfds,
//! REGION_READ/WRITE, posted writes, DEVICE_RESET, mmap of the areas a region offers) and
//! implements [`RegionAccess`] and [`DmaMapper`], so the driver model
//! (`sim_harness::driver::NetDriver`) runs unchanged against a device behind a socket. [`Client::request`] sends arbitrary (also malformed) messages for
//! tests.

use crate::irq::{ACTION_TRIGGER, DATA_EVENTFD};
use crate::sock::{self, recv_with_fds, send_with_fds, Stop, MAX_MSG_FDS};
use crate::wire::{self, flags, Command, DeviceInfo, Header, RegionRw, SparseArea, HEADER_SIZE};
use device::{AccessError, DmaMapper, InterruptSink, RegionAccess};
use dma::{Backing, MapError, Perms, SharedMemory};
use parking_lot::Mutex;
use std::fs::File;
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_irq_info, vfio_irq_set,
    vfio_region_info, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};

/// Largest reply the client reads (a REGION_READ of the server's limit fits easily).
const MAX_REPLY: usize = 64 << 20;

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("{command} failed: {}", io::Error::from_raw_os_error(*errno))]
    Remote { command: &'static str, errno: i32 },
    #[error("bad reply to {command}: {what}")]
    BadReply { command: &'static str, what: String },
}

impl ClientError {
    /// The errno of a [`ClientError::Remote`] error reply.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ClientError::Remote { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A reply as received.
#[derive(Debug)]
pub struct Reply {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// `Some(errno)` for an error reply.
    pub fn errno(&self) -> Option<i32> {
        self.header.is_error().then_some(self.header.error as i32)
    }
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    next_id: u16,
}

/// A region's info as the client ended up with it: QEMU's two-step query done, the sparse
/// mmap areas parsed and the descriptor (if the server sent one with the final reply).
#[derive(Debug)]
pub struct RegionInfo {
    pub info: vfio_region_info,
    /// The areas the client may map (FLAG_MMAP without a sparse capability: the whole
    /// region), empty if the region has no FLAG_MMAP.
    pub areas: Vec<SparseArea>,
    pub fd: Option<OwnedFd>,
}

/// One mapped area of a region.
#[derive(Debug)]
struct Mapped {
    region: u32,
    /// Region offset of the area.
    offset: u64,
    mem: SharedMemory,
}

/// A connected vfio-user client.
#[derive(Debug)]
pub struct Client {
    conn: Mutex<Conn>,
    info: DeviceInfo,
    server_caps: serde_json::Value,
    regions: Vec<vfio_region_info>,
    posted_writes: AtomicBool,
    /// Some region info carried FLAG_MMAP: like QEMU, the client then posts no write.
    mmap_offered: bool,
    /// The areas it mapped (MAP_SHARED), as QEMU maps them into the BAR.
    mapped: Vec<Mapped>,
    /// Accesses inside a mapped area go to the mapping (default), not the socket.
    use_mmap: AtomicBool,
}

/// The capabilities QEMU 11.1 proposes.
pub fn qemu_capabilities() -> serde_json::Value {
    serde_json::json!({ "capabilities": {
        "max_msg_fds": MAX_MSG_FDS,
        "max_data_xfer_size": 1 << 20,
        "pgsizes": 4096,
        "max_dma_maps": 65535,
        "migration": { "pgsize": 4096, "max_bitmap_size": 256u64 << 20 },
        "write_multiple": true,
    }})
}

impl Client {
    /// Connects to `path` and does what QEMU does first: VERSION, DEVICE_GET_INFO and every
    /// region's info.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
        Self::from_stream(stream)
    }

    /// Like [`Client::connect`] on an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Result<Self, ClientError> {
        let mut c = Client {
            conn: Mutex::new(Conn { stream, next_id: 0 }),
            info: DeviceInfo::default(),
            server_caps: serde_json::Value::Null,
            regions: Vec::new(),
            posted_writes: AtomicBool::new(false),
            mmap_offered: false,
            mapped: Vec::new(),
            use_mmap: AtomicBool::new(true),
        };
        c.server_caps = c.version(&qemu_capabilities())?;
        let r = c.call(
            Command::DeviceGetInfo,
            &DeviceInfo {
                argsz: wire::DEVICE_INFO_SIZE as u32,
                ..Default::default()
            }
            .encode(),
            &[],
        )?;
        c.info = DeviceInfo::parse(&r).ok_or(ClientError::BadReply {
            command: "DEVICE_GET_INFO",
            what: format!("{} bytes", r.len()),
        })?;
        // QEMU refuses more than 100 regions from a server; so do we.
        for i in 0..c.info.num_regions.min(100) {
            let r = c.region_info_full(i)?;
            c.mmap_offered |= r.info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0;
            // QEMU maps BARs only (hw/vfio/pci.c maps each BAR's region; config space and
            // the rest always trap).
            if i < VFIO_PCI_CONFIG_REGION_INDEX {
                c.map_areas(&r)?;
            }
            c.regions.push(r.info);
        }
        Ok(c)
    }

    /// Maps the areas of `r` MAP_SHARED from its descriptor (hw/vfio/region.c
    /// `vfio_region_mmap`). A region with FLAG_MMAP but no descriptor, or whose mapping
    /// fails, traps: QEMU too falls back to trapping the whole BAR then.
    fn map_areas(&mut self, r: &RegionInfo) -> Result<(), ClientError> {
        let Some(fd) = &r.fd else {
            return Ok(());
        };
        let mut mapped = Vec::new();
        for a in &r.areas {
            let file = File::from(fd.try_clone()?);
            match SharedMemory::map_file(file, r.info.offset + a.offset, a.size) {
                Ok(mem) => mapped.push(Mapped {
                    region: r.info.index,
                    offset: a.offset,
                    mem,
                }),
                Err(e) => {
                    tracing::warn!(region = r.info.index, area = ?a, error = %e, "mmap of a region area failed: the region traps");
                    return Ok(());
                }
            }
        }
        self.mapped.extend(mapped);
        Ok(())
    }
    /// Sends VERSION with `caps`; returns the server's capabilities.
    fn version(&self, caps: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let r = self.call(
            Command::Version,
            &wire::encode_version(0, 0, &caps.to_string()),
            &[],
        )?;
        let bad = |what: &str| ClientError::BadReply {
            command: "VERSION",
            what: what.into(),
        };
        if r.len() < wire::VERSION_SIZE {
            return Err(bad("short"));
        }
        let mut rd = wire::Reader::new(&r);
        let (major, minor) = (rd.u16(), rd.u16());
        if major != 0 || minor != 0 {
            return Err(bad(&format!("version {major}.{minor}")));
        }
        let json = &r[wire::VERSION_SIZE..];
        match json.split_last() {
            None => Ok(serde_json::Value::Null),
            Some((0, text)) => serde_json::from_slice(text).map_err(|e| bad(&e.to_string())),
            Some(_) => Err(bad("capabilities not NUL-terminated")),
        }
    }

    /// DEVICE_GET_INFO as received at connect.
    pub fn device_info(&self) -> DeviceInfo {
        self.info
    }

    /// The server's VERSION capabilities (`{"capabilities": {...}}`).
    pub fn server_caps(&self) -> &serde_json::Value {
        &self.server_caps
    }

    /// Region infos as received at connect.
    pub fn regions(&self) -> &[vfio_region_info] {
        &self.regions
    }

    /// Sends posted (NO_REPLY) REGION_WRITEs from [`RegionAccess::region_write`], as QEMU does
    /// when no region is mmappable. Without effect when some region info carried FLAG_MMAP:
    /// QEMU then posts no write (hw/vfio-user/device.c `vfio_user_get_region_info`).
    pub fn set_posted_writes(&self, on: bool) {
        self.posted_writes.store(on, Ordering::Relaxed);
    }

    /// Whether [`RegionAccess::region_write`] posts its writes now.
    pub fn posts_writes(&self) -> bool {
        self.posted_writes.load(Ordering::Relaxed) && !self.mmap_offered
    }

    /// Whether some region info carried FLAG_MMAP.
    pub fn mmap_offered(&self) -> bool {
        self.mmap_offered
    }

    /// The mapped areas: (region, region offset, length).
    pub fn mapped_areas(&self) -> Vec<(u32, u64, u64)> {
        self.mapped
            .iter()
            .map(|m| (m.region, m.offset, m.mem.size()))
            .collect()
    }

    /// Accesses inside a mapped area go to the mapping (true, the default: what QEMU's guest
    /// does) or to the socket as REGION_READ/WRITE (false: trapped doorbells, e.g. for checks
    /// that need a doorbell's work done when its write returns).
    pub fn set_use_mmap(&self, on: bool) {
        self.use_mmap.store(on, Ordering::Relaxed);
    }

    /// The mapping that holds `[offset, offset + len)` of `region`, with the offset in it.
    fn mapping(&self, region: u32, offset: u64, len: usize) -> Option<(&SharedMemory, u64)> {
        if !self.use_mmap.load(Ordering::Relaxed) {
            return None;
        }
        self.mapped.iter().find_map(|m| {
            let rel = offset.checked_sub(m.offset)?;
            (m.region == region && rel.checked_add(len as u64)? <= m.mem.size())
                .then_some((&m.mem, rel))
        })
    }

    /// Shuts the socket down (both directions): what the server sees when the VMM dies.
    /// Every later request fails.
    pub fn disconnect(&self) {
        let _ = self.conn.lock().stream.shutdown(std::net::Shutdown::Both);
    }

    /// Sets a receive timeout on the socket (tests: a server that stops answering).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.conn.lock().stream.set_read_timeout(t)
    }

    /// DEVICE_GET_REGION_INFO with argsz 32 (the fixed part only).
    pub fn region_info(&self, index: u32) -> Result<vfio_region_info, ClientError> {
        self.region_info_full(index).map(|r| r.info)
    }

    /// DEVICE_GET_REGION_INFO as QEMU asks it (hw/vfio/device.c
    /// `vfio_device_get_region_info`): argsz 32 first, again with the argsz the reply asks
    /// for if it is larger (closing a descriptor that came with the short reply), then the
    /// sparse mmap capability parsed and the final reply's descriptor kept.
    pub fn region_info_full(&self, index: u32) -> Result<RegionInfo, ClientError> {
        let bad = |what: String| ClientError::BadReply {
            command: "DEVICE_GET_REGION_INFO",
            what,
        };
        let mut argsz = wire::REGION_INFO_SIZE as u32;
        for _ in 0..2 {
            let req = vfio_region_info {
                argsz,
                index,
                ..Default::default()
            };
            let mut p = wire::encode_region_info(&req);
            p.resize(argsz as usize, 0);
            let r = self.request(Command::DeviceGetRegionInfo as u16, 0, &p, &[])?;
            if let Some(errno) = r.errno() {
                return Err(ClientError::Remote {
                    command: "DEVICE_GET_REGION_INFO",
                    errno,
                });
            }
            let info = wire::parse_region_info(&r.payload)
                .ok_or_else(|| bad(format!("{} bytes", r.payload.len())))?;
            if r.fds.len() > 1 {
                return Err(bad(format!("{} descriptors", r.fds.len())));
            }
            if info.argsz > argsz {
                // Dropping the reply closes its descriptor, if any.
                argsz = info.argsz;
                if argsz as usize > wire::REGION_INFO_SIZE + 4096 {
                    return Err(bad(format!("argsz {argsz}")));
                }
                continue;
            }
            let areas = if info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
                Vec::new()
            } else {
                match wire::parse_sparse_mmap_cap(&r.payload).map_err(bad)? {
                    Some(areas) => areas,
                    None => vec![SparseArea {
                        offset: 0,
                        size: info.size,
                    }],
                }
            };
            return Ok(RegionInfo {
                info,
                areas,
                fd: r.fds.into_iter().next(),
            });
        }
        Err(bad("argsz grew twice".into()))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&self, index: u32) -> Result<vfio_irq_info, ClientError> {
        let req = vfio_irq_info {
            argsz: wire::IRQ_INFO_SIZE as u32,
            index,
            ..Default::default()
        };
        let r = self.call(Command::DeviceGetIrqInfo, &wire::encode_irq_info(&req), &[])?;
        wire::parse_irq_info(&r).ok_or(ClientError::BadReply {
            command: "DEVICE_GET_IRQ_INFO",
            what: format!("{} bytes", r.len()),
        })
    }

    /// DEVICE_SET_IRQS; `data` follows the fixed part (DATA_BOOL bytes), `fds` go as
    /// SCM_RIGHTS (DATA_EVENTFD).
    pub fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let req = vfio_irq_set {
            argsz: (wire::IRQ_SET_SIZE + data.len()) as u32,
            flags,
            index,
            start,
            count,
            ..Default::default()
        };
        let mut p = wire::encode_irq_set(&req);
        p.extend_from_slice(data);
        self.call(Command::DeviceSetIrqs, &p, fds).map(drop)
    }

    /// DMA_MAP of `[iova, iova + size)`; `fd` is the memory's descriptor and the offset of
    /// `iova` in it (None: memory the server cannot map).
    pub fn map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), ClientError> {
        let flags = if perms.read {
            VFIO_DMA_MAP_FLAG_READ
        } else {
            0
        } | if perms.write {
            VFIO_DMA_MAP_FLAG_WRITE
        } else {
            0
        };
        let req = vfio_iommu_type1_dma_map {
            argsz: wire::DMA_MAP_SIZE as u32,
            flags,
            vaddr: fd.map_or(0, |f| f.1),
            iova,
            size,
        };
        let fds: Vec<BorrowedFd<'_>> = fd.map(|f| f.0).into_iter().collect();
        self.call(Command::DmaMap, &wire::encode_dma_map(&req), &fds)
            .map(drop)
    }

    /// DMA_UNMAP with raw `flags` (2 = unmap all).
    pub fn unmap(&self, iova: u64, size: u64, flags: u32) -> Result<(), ClientError> {
        let req = vfio_iommu_type1_dma_unmap {
            argsz: wire::DMA_UNMAP_SIZE as u32,
            flags,
            iova,
            size,
            ..Default::default()
        };
        self.call(Command::DmaUnmap, &wire::encode_dma_unmap(&req), &[])
            .map(drop)
    }

    /// REGION_READ of `buf.len()` bytes.
    pub fn read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        let rw = RegionRw {
            offset,
            region,
            count: buf.len() as u32,
        };
        let r = self.call(Command::RegionRead, &rw.encode(), &[])?;
        let back = RegionRw::parse(&r);
        if back != Some(rw) || r.len() != wire::REGION_RW_SIZE + buf.len() {
            return Err(ClientError::BadReply {
                command: "REGION_READ",
                what: format!("{back:?}, {} bytes", r.len()),
            });
        }
        buf.copy_from_slice(&r[wire::REGION_RW_SIZE..]);
        Ok(())
    }

    fn write_payload(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut p = RegionRw {
            offset,
            region,
            count: data.len() as u32,
        }
        .encode();
        p.extend_from_slice(data);
        p
    }

    /// REGION_WRITE, waiting for the reply.
    pub fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.call(
            Command::RegionWrite,
            &Self::write_payload(region, offset, data),
            &[],
        )
        .map(drop)
    }

    /// Posted REGION_WRITE (NO_REPLY): errors are the server's to log.
    pub fn write_posted(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.post(
            Command::RegionWrite as u16,
            &Self::write_payload(region, offset, data),
            &[],
        )
    }

    /// DEVICE_RESET.
    pub fn reset(&self) -> Result<(), ClientError> {
        self.call(Command::DeviceReset, &[], &[]).map(drop)
    }

    // ------------------------------------------------------------ migration v2

    /// DEVICE_FEATURE with `flags` (feature index | GET/SET/PROBE) and `data`; `argsz` is the
    /// reply room announced. Returns the reply payload (argsz, flags, data).
    pub fn device_feature(
        &self,
        flags: u32,
        data: &[u8],
        argsz: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let r = self.call(
            Command::DeviceFeature,
            &wire::encode_feature(argsz, flags, data),
            &[],
        )?;
        if r.len() < wire::DEVICE_FEATURE_SIZE {
            return Err(ClientError::BadReply {
                command: "DEVICE_FEATURE",
                what: format!("{} bytes", r.len()),
            });
        }
        Ok(r)
    }

    fn feature_data(
        &self,
        flags: u32,
        data: &[u8],
        reply_data: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let argsz = (wire::DEVICE_FEATURE_SIZE + data.len().max(reply_data)) as u32;
        let r = self.device_feature(flags, data, argsz)?;
        if r.len() < wire::DEVICE_FEATURE_SIZE + reply_data {
            return Err(ClientError::BadReply {
                command: "DEVICE_FEATURE",
                what: format!("{} bytes for {reply_data} of data", r.len()),
            });
        }
        Ok(r[wire::DEVICE_FEATURE_SIZE..].to_vec())
    }

    /// GET VFIO_DEVICE_FEATURE_MIGRATION: the migration flags (VFIO_MIGRATION_STOP_COPY ...).
    pub fn migration_flags(&self) -> Result<u64, ClientError> {
        let d = self.feature_data(
            wire::feature::MIGRATION | wire::feature::GET,
            &[],
            wire::FEATURE_MIGRATION_SIZE,
        )?;
        Ok(wire::Reader::new(&d).u64())
    }

    /// GET VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE.
    pub fn mig_state(&self) -> Result<u32, ClientError> {
        let d = self.feature_data(
            wire::feature::MIG_DEVICE_STATE | wire::feature::GET,
            &[],
            wire::FEATURE_MIG_STATE_SIZE,
        )?;
        Ok(wire::Reader::new(&d).u32())
    }

    /// SET VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE; returns the state the reply reports.
    pub fn set_mig_state(&self, state: u32) -> Result<u32, ClientError> {
        let mut data = state.to_ne_bytes().to_vec();
        data.extend_from_slice(&(-1i32).to_ne_bytes());
        let d = self.feature_data(
            wire::feature::MIG_DEVICE_STATE | wire::feature::SET,
            &data,
            wire::FEATURE_MIG_STATE_SIZE,
        )?;
        Ok(wire::Reader::new(&d).u32())
    }

    /// SET VFIO_DEVICE_FEATURE_DMA_LOGGING_START for `ranges` (iova, length); returns the
    /// page size the server chose.
    pub fn dma_logging_start(
        &self,
        page_size: u64,
        ranges: &[(u64, u64)],
    ) -> Result<u64, ClientError> {
        let data = wire::encode_dma_logging_control(page_size, ranges);
        let d = self.feature_data(
            wire::feature::DMA_LOGGING_START | wire::feature::SET,
            &data,
            wire::DMA_LOGGING_CONTROL_SIZE,
        )?;
        Ok(wire::Reader::new(&d).u64())
    }

    /// SET VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP.
    pub fn dma_logging_stop(&self) -> Result<(), ClientError> {
        self.feature_data(wire::feature::DMA_LOGGING_STOP | wire::feature::SET, &[], 0)
            .map(drop)
    }

    /// GET VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: the dirty bitmap of [iova, iova + length)
    /// at `page_size` (bit i: the page at iova + i * page_size), as u64 words.
    pub fn dma_logging_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<Vec<u64>, ClientError> {
        let bitmap = wire::dirty_bitmap_bytes(length, page_size.max(1)) as usize;
        let d = self.feature_data(
            wire::feature::DMA_LOGGING_REPORT | wire::feature::GET,
            &wire::encode_dma_logging_report(iova, length, page_size),
            wire::DMA_LOGGING_REPORT_SIZE + bitmap,
        )?;
        Ok(
            d[wire::DMA_LOGGING_REPORT_SIZE..wire::DMA_LOGGING_REPORT_SIZE + bitmap]
                .chunks_exact(8)
                .map(|c| wire::Reader::new(c).u64())
                .collect(),
        )
    }

    /// MIG_DATA_READ of up to `size` bytes (fewer, or none, at the end of the state).
    pub fn mig_data_read(&self, size: u32) -> Result<Vec<u8>, ClientError> {
        let r = self.call(
            Command::MigDataRead,
            &wire::encode_mig_data(wire::MIG_DATA_SIZE as u32 + size, size, &[]),
            &[],
        )?;
        let mut rd = wire::Reader::new(&r);
        let (argsz, n) = (rd.u32() as usize, rd.u32() as usize);
        if r.len() < wire::MIG_DATA_SIZE
            || n > size as usize
            || r.len() != wire::MIG_DATA_SIZE + n
            || argsz != r.len()
        {
            return Err(ClientError::BadReply {
                command: "MIG_DATA_READ",
                what: format!("{} bytes, size {n}, argsz {argsz}", r.len()),
            });
        }
        Ok(r[wire::MIG_DATA_SIZE..].to_vec())
    }

    /// MIG_DATA_WRITE of `data`.
    pub fn mig_data_write(&self, data: &[u8]) -> Result<(), ClientError> {
        let p = wire::encode_mig_data(
            (wire::MIG_DATA_SIZE + data.len()) as u32,
            data.len() as u32,
            data,
        );
        self.call(Command::MigDataWrite, &p, &[]).map(drop)
    }

    /// Reads the whole device state in STOP_COPY, `chunk` bytes per MIG_DATA_READ, until a
    /// read returns nothing.
    pub fn read_device_state(&self, chunk: u32) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        loop {
            let d = self.mig_data_read(chunk)?;
            if d.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&d);
        }
    }

    /// Writes a device state in RESUMING, `chunk` bytes per MIG_DATA_WRITE.
    pub fn write_device_state(&self, state: &[u8], chunk: usize) -> Result<(), ClientError> {
        state
            .chunks(chunk.max(1))
            .try_for_each(|c| self.mig_data_write(c))
    }

    /// Sends a command and returns its payload, an error reply as [`ClientError::Remote`].
    fn call(
        &self,
        cmd: Command,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, ClientError> {
        let r = self.request(cmd as u16, 0, payload, fds)?;
        if let Some(errno) = r.errno() {
            return Err(ClientError::Remote {
                command: cmd.name(),
                errno,
            });
        }
        Ok(r.payload)
    }

    /// Sends any command (`flags` are added to the header) and waits for its reply, which is
    /// returned as is (error replies included).
    pub fn request(
        &self,
        command: u16,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, ClientError> {
        let mut c = self.conn.lock();
        let id = c.next_id;
        c.next_id = c.next_id.wrapping_add(1);
        let hdr = Header::command(id, command, payload.len(), flags);
        send_message(&c.stream, &hdr.to_bytes(), payload, fds)?;
        let r = recv_reply(&c.stream)?;
        if r.header.id != id || r.header.command != command {
            return Err(ClientError::BadReply {
                command: wire::command_name(command),
                what: format!(
                    "reply id {} command {} to request id {id}",
                    r.header.id, r.header.command
                ),
            });
        }
        Ok(r)
    }

    /// Sends a command with NO_REPLY.
    pub fn post(
        &self,
        command: u16,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let mut c = self.conn.lock();
        let id = c.next_id;
        c.next_id = c.next_id.wrapping_add(1);
        let hdr = Header::command(id, command, payload.len(), flags::NO_REPLY);
        send_message(&c.stream, &hdr.to_bytes(), payload, fds)?;
        Ok(())
    }

    /// Gives every MSI-X vector an eventfd (SET_IRQS in chunks of the server's max_msg_fds,
    /// as QEMU does) and forwards their signals to `sink` from a thread.
    pub fn wire_interrupts(
        &self,
        sink: Arc<dyn InterruptSink>,
    ) -> Result<InterruptPump, ClientError> {
        let n = self.irq_info(VFIO_PCI_MSIX_IRQ_INDEX)?.count;
        let efds: Vec<File> = (0..n).map(|_| sock::eventfd()).collect::<io::Result<_>>()?;
        let chunk = self.server_caps["capabilities"]["max_msg_fds"]
            .as_u64()
            .unwrap_or(1)
            .clamp(1, MAX_MSG_FDS as u64) as usize;
        for (i, part) in efds.chunks(chunk).enumerate() {
            let fds: Vec<BorrowedFd<'_>> = part.iter().map(|f| f.as_fd()).collect();
            self.set_irqs(
                VFIO_PCI_MSIX_IRQ_INDEX,
                DATA_EVENTFD | ACTION_TRIGGER,
                (i * chunk) as u32,
                part.len() as u32,
                &[],
                &fds,
            )?;
        }
        Ok(InterruptPump::spawn(efds, sink)?)
    }
}

/// The client's MSI-X eventfds and where their signals go.
struct Vectors {
    efds: Vec<File>,
    sink: Arc<dyn InterruptSink>,
    /// Held from an eventfd read until its signals reach the sink, so [`InterruptPump::drain`]
    /// never returns while the pump thread holds signals it has read but not yet forwarded.
    forwarding: Mutex<()>,
}

impl Vectors {
    /// Reads each eventfd `ready` says may hold signals and forwards every signal: the eventfd
    /// counter is the number of writes since the last read, so interrupts that arrived close
    /// together merge into one read and each one still counts (the server writes 1 per MSI-X
    /// message). The eventfds are non-blocking: an empty one reads EAGAIN.
    fn forward(&self, ready: impl Fn(usize) -> bool) {
        let _g = self.forwarding.lock();
        for (v, f) in self.efds.iter().enumerate() {
            if ready(v) {
                let mut b = [0u8; 8];
                if (&*f).read(&mut b).is_ok() {
                    for _ in 0..u64::from_ne_bytes(b).min(1 << 20) {
                        self.sink.msix(v as u16);
                    }
                }
            }
        }
    }
}

fn pump(vectors: &Vectors, stop: &Stop) {
    let mut fds: Vec<BorrowedFd<'_>> = vectors.efds.iter().map(|f| f.as_fd()).collect();
    fds.push(stop.as_fd());
    loop {
        let Ok(ready) = sock::poll_in(&fds, None) else {
            return;
        };
        if ready[vectors.efds.len()] {
            return;
        }
        vectors.forward(|v| ready[v]);
    }
}

/// Forwards eventfd signals to an [`InterruptSink`] until dropped.
#[derive(Debug)]
pub struct InterruptPump {
    stop: Arc<Stop>,
    vectors: Arc<Vectors>,
    thread: Option<JoinHandle<()>>,
}

impl InterruptPump {
    /// Forwards every signal already in the eventfds, now, on the calling thread. A server
    /// that raises interrupts while handling a message (as `vdpa-emu serve` does for a
    /// doorbell) has written them before its reply, so after a non-posted write returns, a
    /// drain delivers every interrupt that write caused: counting needs no waiting and no
    /// guess at the pump thread's scheduling.
    pub fn drain(&self) {
        self.vectors.forward(|_| true);
    }

    /// Forwards the signals of `efds` (eventfd `v` = MSI-X vector `v`) to `sink` from a
    /// thread: the pump of [`Client::wire_interrupts`], also used for eventfds given to Linux
    /// VFIO (VFIO_DEVICE_SET_IRQS), whose counters hold signals the same way.
    pub fn spawn(efds: Vec<File>, sink: Arc<dyn InterruptSink>) -> io::Result<InterruptPump> {
        let vectors = Arc::new(Vectors {
            efds,
            sink,
            forwarding: Mutex::new(()),
        });
        let stop = Arc::new(Stop::new()?);
        let (s2, v2) = (stop.clone(), vectors.clone());
        let thread = std::thread::Builder::new()
            .name("irq-pump".into())
            .spawn(move || pump(&v2, &s2))?;
        Ok(InterruptPump {
            stop,
            vectors,
            thread: Some(thread),
        })
    }
}

impl std::fmt::Debug for Vectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vectors")
            .field("eventfds", &self.efds.len())
            .finish()
    }
}

impl Drop for InterruptPump {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one message (header bytes + payload) with `fds`, blocking.
pub fn send_message(
    stream: &UnixStream,
    head: &[u8],
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let total = head.len() + payload.len();
    let mut sent = send_with_fds(
        stream.as_fd(),
        &[IoSlice::new(head), IoSlice::new(payload)],
        fds,
        0,
    )?;
    while sent < total {
        let n = if sent < head.len() {
            send_with_fds(
                stream.as_fd(),
                &[IoSlice::new(&head[sent..]), IoSlice::new(payload)],
                &[],
                0,
            )?
        } else {
            send_with_fds(
                stream.as_fd(),
                &[IoSlice::new(&payload[sent - head.len()..])],
                &[],
                0,
            )?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

fn read_full(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), ClientError> {
    let mut got = 0;
    while got < buf.len() {
        let r = recv_with_fds(stream.as_fd(), &mut buf[got..], 0)?;
        if r.len == 0 {
            return Err(ClientError::Closed);
        }
        fds.extend(r.fds);
        got += r.len;
    }
    Ok(())
}

/// Reads one reply (bounded to 64 MiB).
pub fn recv_reply(stream: &UnixStream) -> Result<Reply, ClientError> {
    let mut hb = [0u8; HEADER_SIZE];
    let mut fds = Vec::new();
    read_full(stream, &mut hb, &mut fds)?;
    let header = Header::parse(&hb);
    let bad = |what: String| ClientError::BadReply {
        command: wire::command_name(header.command),
        what,
    };
    if header.msg_type() != flags::TYPE_REPLY {
        return Err(bad(format!(
            "message type {} is not a reply",
            header.msg_type()
        )));
    }
    let len = header
        .payload_len()
        .ok_or_else(|| bad(format!("size {}", header.size)))?;
    if len > MAX_REPLY {
        return Err(bad(format!("size {}", header.size)));
    }
    let mut payload = vec![0u8; len];
    read_full(stream, &mut payload, &mut fds)?;
    Ok(Reply {
        header,
        payload,
        fds,
    })
}

/// Waits up to `t` for the server to close `stream`, discarding whatever it still sends;
/// true if it closed.
pub fn wait_closed(stream: &UnixStream, t: Duration) -> bool {
    let deadline = std::time::Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero()
            || !matches!(
                sock::poll_in(&[stream.as_fd()], Some(left)).as_deref(),
                Ok([true])
            )
        {
            return false;
        }
        let mut b = [0u8; 256];
        match recv_with_fds(stream.as_fd(), &mut b, libc::MSG_DONTWAIT) {
            Ok(r) if r.len == 0 => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
    }
}

impl Client {
    fn access_error(&self, region: u32, offset: u64, len: usize, e: ClientError) -> AccessError {
        let size = self.regions.get(region as usize).map_or(0, |r| r.size);
        if !matches!(e, ClientError::Remote { .. }) {
            return AccessError::Transport(e.to_string());
        }
        if size == 0 {
            AccessError::NoSuchRegion(region)
        } else {
            AccessError::OutOfRange {
                region,
                offset,
                len,
                size,
            }
        }
    }
}

impl RegionAccess for Client {
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        if let Some((mem, rel)) = self.mapping(region, offset, data.len()) {
            if mem.load_acquire(rel, data).is_ok() {
                return Ok(());
            }
        }
        self.read(region, offset, data)
            .map_err(|e| self.access_error(region, offset, data.len(), e))
    }

    /// Inside a mapped area (and with [`Client::set_use_mmap`] on) a write is one store to the
    /// shared memory, with Release ordering (what the driver published before it is visible
    /// first); a width or alignment a single store cannot do goes to the socket.
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        if let Some((mem, rel)) = self.mapping(region, offset, data.len()) {
            if mem.store_release(rel, data).is_ok() {
                return Ok(());
            }
        }
        let r = if self.posts_writes() {
            self.write_posted(region, offset, data)
        } else {
            self.write(region, offset, data)
        };
        r.map_err(|e| self.access_error(region, offset, data.len(), e))
    }
}

fn map_error(iova: u64, size: u64, e: ClientError) -> MapError {
    match e {
        ClientError::Remote { errno, .. } if errno == libc::EEXIST => MapError::Overlap {
            iova,
            size,
            existing_iova: iova,
            existing_size: 0,
        },
        ClientError::Remote { errno, .. } => MapError::Mmap {
            iova,
            size,
            source: io::Error::from_raw_os_error(errno),
        },
        ClientError::Io(source) => MapError::Mmap { iova, size, source },
        other => MapError::Mmap {
            iova,
            size,
            source: io::Error::other(other.to_string()),
        },
    }
}

impl DmaMapper for Client {
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        backing: Backing,
    ) -> Result<(), MapError> {
        let r = match &backing {
            Backing::Fd { file, offset } => {
                self.map(iova, size, perms, Some((file.as_fd(), *offset)))
            }
            Backing::None => self.map(iova, size, perms, None),
        };
        r.map_err(|e| map_error(iova, size, e))
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        // The range checks the server also makes, here, so that its EINVAL can only mean an
        // unmap covering part of a mapping (vfio semantics; dma::AddressSpace::unmap).
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        if iova.checked_add(size - 1).is_none() {
            return Err(MapError::AddressOverflow { iova, size });
        }
        self.unmap(iova, size, 0)
            .map(|()| size)
            .map_err(|e| match e {
                ClientError::Remote { errno, .. } if errno == libc::EINVAL => {
                    MapError::PartialUnmap { iova, size }
                }
                e => map_error(iova, size, e),
            })
    }

    fn dma_unmap_all(&self) -> u64 {
        if let Err(e) = self.unmap(0, 0, wire::unmap_flags::ALL) {
            tracing::error!(error = %e, "DMA_UNMAP all failed");
        }
        // The protocol does not report how much was unmapped.
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use device::InterruptRecorder;
    use std::io::Write;

    #[test]
    fn a_drain_forwards_every_pending_signal_on_the_calling_thread() {
        let rec = Arc::new(InterruptRecorder::new(3));
        let efds: Vec<File> = (0..3).map(|_| sock::eventfd().unwrap()).collect();
        // Five MSI-X messages on vector 1 and two on vector 2, merged in their counters.
        for _ in 0..5 {
            (&efds[1]).write_all(&1u64.to_ne_bytes()).unwrap();
        }
        for _ in 0..2 {
            (&efds[2]).write_all(&1u64.to_ne_bytes()).unwrap();
        }
        let v = Vectors {
            efds,
            sink: rec.clone(),
            forwarding: Mutex::new(()),
        };
        v.forward(|_| true);
        assert_eq!((rec.count(0), rec.count(1), rec.count(2)), (0, 5, 2));
        // Read once: a second drain finds the (non-blocking) eventfds empty and adds nothing.
        v.forward(|_| true);
        assert_eq!(rec.total(), 7);
    }
}
