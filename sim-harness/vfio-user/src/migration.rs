//! vfio-user migration v2 (QEMU docs/interop/vfio-user.rst, "Migration"; the state machine of
//! Linux `enum vfio_device_mig_state`): VFIO_USER_DEVICE_FEATURE with
//! VFIO_DEVICE_FEATURE_MIGRATION, MIG_DEVICE_STATE and DMA_LOGGING_START/STOP/REPORT, and
//! VFIO_USER_MIG_DATA_READ / MIG_DATA_WRITE carrying the device state stream
//! (for vdpa-emu's NIC, `device::snapshot`).
//!
//! States and arcs (VFIO_MIGRATION_STOP_COPY only: no PRE_COPY, no P2P):
//!
//! ```text
//! RUNNING --> STOP          the device pauses: in-flight work finished, used rings published, no DMA
//! STOP --> RUNNING          the device resumes: doorbells and frames that came meanwhile are serviced
//! STOP --> STOP_COPY        the state stream is saved; MIG_DATA_READ serves it until a read returns 0 bytes
//! STOP_COPY --> STOP        the stream is dropped (the device is still paused, unchanged)
//! STOP --> RESUMING         MIG_DATA_WRITE appends to an empty stream
//! RESUMING --> STOP         the stream is restored; if it is refused the reply is an error and the state ERROR
//! ```
//!
//! Any other pair of supported states is reached through STOP (the spec's "complex
//! transitions", shortest path, no saving state inside a path), like libvfio-user. Refused
//! with EINVAL and the state unchanged: ERROR, PRE_COPY, the P2P states or an unknown value as
//! a target, and anything from ERROR, which only VFIO_USER_DEVICE_RESET leaves (to RUNNING).
//!
//! Dirty page tracking: DMA_LOGGING_START gives the device a [`WriteTrace`] (every page its DMA
//! engine writes is recorded, independently of the IFC VF dirty log in guest memory) for the
//! IOVA ranges asked (none: everything). DMA_LOGGING_REPORT harvests it and returns, for the
//! requested range and page size, a bitmap of the pages written since the previous report of
//! those pages, which are then clean again. DMA_LOGGING_STOP drops the trace.
//!
//! A client going away ends the migration session: logging stops, buffered streams are
//! dropped, the state goes back to RUNNING (the server then resets the device).

use crate::backend::Backend;
use crate::errno::{Errno, Handled, E2BIG, EFBIG, EINVAL, ENOTTY};
use crate::wire::{self, feature, mig_state};
use dma::{WriteTrace, PAGE_SIZE};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Most ranges a DMA_LOGGING_START may carry (the kernel's LOG_MAX_RANGES).
pub const MAX_LOGGING_RANGES: usize = 256;

/// The migration states this server supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigState {
    Error,
    Stop,
    Running,
    StopCopy,
    Resuming,
}

impl MigState {
    /// The `vfio_device_mig_state` value.
    pub fn raw(self) -> u32 {
        match self {
            MigState::Error => mig_state::ERROR,
            MigState::Stop => mig_state::STOP,
            MigState::Running => mig_state::RUNNING,
            MigState::StopCopy => mig_state::STOP_COPY,
            MigState::Resuming => mig_state::RESUMING,
        }
    }

    /// A state a client may ask for (ERROR never is).
    fn target(raw: u32) -> Option<Self> {
        match raw {
            mig_state::STOP => Some(MigState::Stop),
            mig_state::RUNNING => Some(MigState::Running),
            mig_state::STOP_COPY => Some(MigState::StopCopy),
            mig_state::RESUMING => Some(MigState::Resuming),
            _ => None,
        }
    }
}

/// Dirty page tracking asked by DMA_LOGGING_START.
#[derive(Debug)]
struct Logging {
    page_size: u64,
    /// Tracked IOVA ranges [start, end); empty: everything.
    ranges: Vec<(u64, u64)>,
    trace: Arc<WriteTrace>,
    /// 4 KiB pages harvested from the trace and not yet reported.
    dirty: BTreeSet<u64>,
}

impl Logging {
    fn tracks(&self, start: u64, end: u64) -> bool {
        self.ranges.is_empty() || self.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    fn harvest(&mut self) {
        for pfn in self.trace.take_pages() {
            let a = pfn.saturating_mul(PAGE_SIZE);
            if self.ranges.is_empty() || self.ranges.iter().any(|&(s, e)| s <= a && a < e) {
                self.dirty.insert(pfn);
            }
        }
    }
}

/// The migration side of one server (one device, one client at a time).
#[derive(Debug)]
pub struct Migration {
    state: MigState,
    /// STOP_COPY: the saved stream and how much of it was read.
    out: Vec<u8>,
    read: usize,
    /// RESUMING: what was written so far.
    incoming: Vec<u8>,
    logging: Option<Logging>,
}

impl Default for Migration {
    fn default() -> Self {
        Migration {
            state: MigState::Running,
            out: Vec::new(),
            read: 0,
            incoming: Vec::new(),
            logging: None,
        }
    }
}

impl Migration {
    /// Current state.
    pub fn state(&self) -> MigState {
        self.state
    }

    /// Whether DMA logging is on.
    pub fn logging(&self) -> bool {
        self.logging.is_some()
    }

    /// VFIO_USER_DEVICE_RESET: the device is reset by the caller; the migration state goes
    /// back to RUNNING (the way out of ERROR). Dirty logging is left as it is.
    pub fn device_reset(&mut self) {
        if self.state != MigState::Running {
            tracing::info!(
                from = mig_state::name(self.state.raw()),
                "device reset: migration state RUNNING"
            );
        }
        self.state = MigState::Running;
        self.out = Vec::new();
        self.read = 0;
        self.incoming = Vec::new();
    }

    /// The client is gone: logging off, streams dropped, RUNNING (the caller resets the device).
    pub fn end_session(&mut self, dev: &impl Backend) {
        if self.logging.take().is_some() {
            dev.set_write_trace(None);
        }
        self.device_reset();
    }

    /// VFIO_USER_DEVICE_FEATURE.
    pub fn device_feature(&mut self, dev: &impl Backend, p: &[u8], max_xfer: u32) -> Handled {
        let (argsz, flags, data) = wire::parse_feature(p).ok_or(EINVAL)?;
        let index = flags & feature::MASK;
        let ops = flags & !feature::MASK;
        if ops & !(feature::GET | feature::SET | feature::PROBE) != 0 {
            tracing::debug!(
                flags = format_args!("{flags:#x}"),
                "DEVICE_FEATURE: unknown flag bits"
            );
            return Err(EINVAL);
        }
        let supported = match index {
            feature::MIGRATION | feature::DMA_LOGGING_REPORT => feature::GET,
            feature::MIG_DEVICE_STATE => feature::GET | feature::SET,
            feature::DMA_LOGGING_START | feature::DMA_LOGGING_STOP => feature::SET,
            _ => {
                tracing::debug!(index, "DEVICE_FEATURE: feature not supported");
                return Err(ENOTTY);
            }
        };
        if ops & (feature::GET | feature::SET) & !supported != 0 {
            return Err(EINVAL);
        }
        if ops & feature::PROBE != 0 {
            // Supported as asked: the reply is the request.
            return Ok(p.to_vec());
        }
        let get = ops & feature::GET != 0;
        if get == (ops & feature::SET != 0) {
            // Neither, or both without PROBE.
            return Err(EINVAL);
        }
        let reply = |len: usize, body: &[u8]| -> Handled {
            if (argsz as usize) < len {
                tracing::debug!(
                    argsz,
                    need = len,
                    "DEVICE_FEATURE: argsz too small for the reply"
                );
                return Err(EINVAL);
            }
            Ok(wire::encode_feature(len as u32, flags, body))
        };
        match (index, get) {
            (feature::MIGRATION, true) => reply(
                wire::DEVICE_FEATURE_SIZE + wire::FEATURE_MIGRATION_SIZE,
                &u64::from(feature::MIGRATION_STOP_COPY).to_ne_bytes(),
            ),
            (feature::MIG_DEVICE_STATE, true) => reply(
                wire::DEVICE_FEATURE_SIZE + wire::FEATURE_MIG_STATE_SIZE,
                &self.mig_state_data(),
            ),
            (feature::MIG_DEVICE_STATE, false) => {
                if data.len() < wire::FEATURE_MIG_STATE_SIZE {
                    return Err(EINVAL);
                }
                let target = u32::from_ne_bytes(data[..4].try_into().expect("4 bytes"));
                reply(p.len(), &[])?;
                self.set_state(dev, target)?;
                reply(
                    wire::DEVICE_FEATURE_SIZE + wire::FEATURE_MIG_STATE_SIZE,
                    &self.mig_state_data(),
                )
            }
            (feature::DMA_LOGGING_START, false) => {
                reply(p.len(), &[])?;
                let page_size = self.logging_start(dev, data)?;
                let mut body = data.to_vec();
                body[..8].copy_from_slice(&page_size.to_ne_bytes());
                reply(p.len(), &body)
            }
            (feature::DMA_LOGGING_STOP, false) => {
                reply(p.len(), &[])?;
                if self.logging.take().is_some() {
                    dev.set_write_trace(None);
                    tracing::info!("DMA logging stopped");
                }
                reply(p.len(), data)
            }
            (feature::DMA_LOGGING_REPORT, true) => {
                self.logging_report(argsz, flags, data, max_xfer)
            }
            _ => Err(EINVAL),
        }
    }

    fn mig_state_data(&self) -> Vec<u8> {
        let mut d = self.state.raw().to_ne_bytes().to_vec();
        // data_fd: unused by vfio-user (MIG_DATA_READ/WRITE carry the data); -1 as the kernel sets.
        d.extend_from_slice(&(-1i32).to_ne_bytes());
        d
    }

    /// Moves to `target`, through STOP when there is no direct arc.
    fn set_state(&mut self, dev: &impl Backend, target: u32) -> Result<(), Errno> {
        let from = self.state;
        let Some(to) = MigState::target(target) else {
            tracing::warn!(
                from = mig_state::name(from.raw()),
                to = mig_state::name(target),
                target,
                "migration state not supported"
            );
            return Err(EINVAL);
        };
        if from == MigState::Error {
            tracing::warn!(
                to = mig_state::name(target),
                "device in ERROR: only a device reset leaves it"
            );
            return Err(EINVAL);
        }
        while self.state != to {
            let next = if self.state == MigState::Stop || to == MigState::Stop {
                to
            } else {
                MigState::Stop
            };
            self.arc(dev, next)?;
        }
        tracing::info!(
            from = mig_state::name(from.raw()),
            to = mig_state::name(target),
            "migration state"
        );
        Ok(())
    }

    /// One direct arc.
    fn arc(&mut self, dev: &impl Backend, next: MigState) -> Result<(), Errno> {
        match (self.state, next) {
            (MigState::Running, MigState::Stop) => dev.pause(),
            (MigState::Stop, MigState::Running) => dev.resume(),
            (MigState::Stop, MigState::StopCopy) => {
                self.out = dev.save_state();
                self.read = 0;
                tracing::info!(bytes = self.out.len(), "device state saved");
            }
            (MigState::StopCopy, MigState::Stop) => {
                if self.read < self.out.len() {
                    tracing::warn!(
                        read = self.read,
                        of = self.out.len(),
                        "STOP_COPY left before the whole state was read"
                    );
                }
                self.out = Vec::new();
                self.read = 0;
            }
            (MigState::Stop, MigState::Resuming) => self.incoming = Vec::new(),
            (MigState::Resuming, MigState::Stop) => {
                let data = std::mem::take(&mut self.incoming);
                if let Err(e) = dev.restore_state(&data) {
                    tracing::warn!(error = %e, bytes = data.len(), "device state refused: migration state ERROR");
                    self.state = MigState::Error;
                    return Err(EINVAL);
                }
                tracing::info!(bytes = data.len(), "device state restored");
            }
            (from, to) => {
                // Not reachable from set_state (every path goes through STOP).
                tracing::error!(?from, ?to, "no such arc");
                return Err(EINVAL);
            }
        }
        self.state = next;
        Ok(())
    }

    /// DMA_LOGGING_START: validates the control, starts the trace; returns the page size used.
    fn logging_start(&mut self, dev: &impl Backend, data: &[u8]) -> Result<u64, Errno> {
        if data.len() < wire::DMA_LOGGING_CONTROL_SIZE {
            return Err(EINVAL);
        }
        let mut r = wire::Reader::new(data);
        let (page_size, n, _reserved) = (r.u64(), r.u32() as usize, r.u32());
        if self.logging.is_some() {
            tracing::warn!("DMA_LOGGING_START while logging");
            return Err(EINVAL);
        }
        if page_size == 0 || !page_size.is_power_of_two() {
            return Err(EINVAL);
        }
        if n > MAX_LOGGING_RANGES {
            return Err(E2BIG);
        }
        if data.len() < wire::DMA_LOGGING_CONTROL_SIZE + n * wire::DMA_LOGGING_RANGE_SIZE {
            return Err(EINVAL);
        }
        // The device tracks 4 KiB pages: a finer hint is answered with 4 KiB.
        let page_size = page_size.max(PAGE_SIZE);
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let (iova, len) = (r.u64(), r.u64());
            let end = iova.checked_add(len).ok_or(EINVAL)?;
            if len == 0 || iova % page_size != 0 || len % page_size != 0 {
                return Err(EINVAL);
            }
            if ranges.iter().any(|&(s, e)| iova < e && s < end) {
                return Err(EINVAL);
            }
            ranges.push((iova, end));
        }
        ranges.sort_unstable();
        let top = match ranges.iter().map(|r| r.1).max() {
            Some(top) => top,
            None => dev
                .mappings()
                .iter()
                .map(|m| m.iova.saturating_add(m.size))
                .max()
                .unwrap_or(0),
        };
        let trace = Arc::new(WriteTrace::new(top));
        dev.set_write_trace(Some(trace.clone()));
        tracing::info!(page_size, ranges = ?ranges, "DMA logging started");
        self.logging = Some(Logging {
            page_size,
            ranges,
            trace,
            dirty: BTreeSet::new(),
        });
        Ok(page_size)
    }

    /// DMA_LOGGING_REPORT: the bitmap of pages written in [iova, iova + length) at
    /// `page_size`, bit i for [iova + i * page_size, iova + (i + 1) * page_size); reported
    /// pages are clean afterwards.
    fn logging_report(&mut self, argsz: u32, flags: u32, data: &[u8], max_xfer: u32) -> Handled {
        let Some(log) = self.logging.as_mut() else {
            tracing::warn!("DMA_LOGGING_REPORT without DMA_LOGGING_START");
            return Err(EINVAL);
        };
        if data.len() < wire::DMA_LOGGING_REPORT_SIZE {
            return Err(EINVAL);
        }
        let mut r = wire::Reader::new(data);
        let (iova, length, page_size) = (r.u64(), r.u64(), r.u64());
        if page_size < PAGE_SIZE || !page_size.is_power_of_two() {
            tracing::debug!(
                page_size,
                "DMA_LOGGING_REPORT: page size must be a power of two >= 4 KiB"
            );
            return Err(EINVAL);
        }
        let end = iova.checked_add(length).ok_or(EINVAL)?;
        if length == 0 || iova % PAGE_SIZE != 0 || !log.tracks(iova, end) {
            tracing::debug!(
                iova = format_args!("{iova:#x}"),
                length,
                "DMA_LOGGING_REPORT: range not tracked"
            );
            return Err(EINVAL);
        }
        let bitmap_len = wire::dirty_bitmap_bytes(length, page_size);
        if bitmap_len > u64::from(max_xfer) {
            return Err(E2BIG);
        }
        let reply_len =
            wire::DEVICE_FEATURE_SIZE + wire::DMA_LOGGING_REPORT_SIZE + bitmap_len as usize;
        if (argsz as usize) < reply_len {
            tracing::debug!(
                argsz,
                need = reply_len,
                "DMA_LOGGING_REPORT: argsz too small for the bitmap"
            );
            return Err(EINVAL);
        }
        log.harvest();
        let mut words = vec![0u64; bitmap_len as usize / 8];
        let first = iova / PAGE_SIZE;
        let last = (end - 1) / PAGE_SIZE;
        let pages: Vec<u64> = log.dirty.range(first..=last).copied().collect();
        for pfn in &pages {
            let bit = (pfn * PAGE_SIZE - iova) / page_size;
            words[(bit / 64) as usize] |= 1 << (bit % 64);
            log.dirty.remove(pfn);
        }
        tracing::debug!(
            iova = format_args!("{iova:#x}"),
            length,
            page_size,
            pages = pages.len(),
            tracked_page_size = log.page_size,
            "dirty report"
        );
        let mut out = wire::encode_feature(
            reply_len as u32,
            flags,
            &data[..wire::DMA_LOGGING_REPORT_SIZE],
        );
        for w in words {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        Ok(out)
    }

    /// VFIO_USER_MIG_DATA_READ: up to `size` bytes of the saved state; 0 bytes at its end.
    pub fn data_read(&mut self, p: &[u8], max_xfer: u32) -> Handled {
        if p.len() < wire::MIG_DATA_SIZE {
            return Err(EINVAL);
        }
        let mut r = wire::Reader::new(p);
        let (argsz, size) = (r.u32(), r.u32());
        if self.state != MigState::StopCopy {
            tracing::warn!(
                state = mig_state::name(self.state.raw()),
                "MIG_DATA_READ outside STOP_COPY"
            );
            return Err(EINVAL);
        }
        if size > max_xfer || (argsz as usize) < wire::MIG_DATA_SIZE + size as usize {
            return Err(EINVAL);
        }
        let n = (size as usize).min(self.out.len() - self.read);
        let chunk = &self.out[self.read..self.read + n];
        self.read += n;
        Ok(wire::encode_mig_data(
            (wire::MIG_DATA_SIZE + n) as u32,
            n as u32,
            chunk,
        ))
    }

    /// VFIO_USER_MIG_DATA_WRITE: appends to the state being resumed.
    pub fn data_write(&mut self, dev: &impl Backend, p: &[u8], max_xfer: u32) -> Handled {
        if p.len() < wire::MIG_DATA_SIZE {
            return Err(EINVAL);
        }
        let mut r = wire::Reader::new(p);
        let (_argsz, size) = (r.u32(), r.u32());
        if self.state != MigState::Resuming {
            tracing::warn!(
                state = mig_state::name(self.state.raw()),
                "MIG_DATA_WRITE outside RESUMING"
            );
            return Err(EINVAL);
        }
        if size > max_xfer || p.len() != wire::MIG_DATA_SIZE + size as usize {
            return Err(EINVAL);
        }
        if self.incoming.len() + size as usize > dev.max_state_len() {
            tracing::warn!(
                bytes = self.incoming.len() + size as usize,
                limit = dev.max_state_len(),
                "device state larger than this device's can be"
            );
            return Err(EFBIG);
        }
        self.incoming.extend_from_slice(&p[wire::MIG_DATA_SIZE..]);
        Ok(Vec::new())
    }
}
