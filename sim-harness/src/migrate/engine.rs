//! The pre-copy live migration engine: the one implementation `vdpa-emu migrate` and the
//! scenario `migrate` step both run. It moves a guest (its driver and guest memory) from the
//! device it runs on to a destination the caller creates at the switch, with the VMM's stages
//! as QEMU's migration/ram.c and DPDK's IFC VF driver (drivers/vdpa/ifc/ifcvf_vdpa.c,
//! `ifcvf_sw_fallback_switchover` / `vdpa_ifcvf_stop`) run them:
//!
//! 1. logging on (the vhost bitmap mapped at IFCVF_LOG_BASE, LOGGING_CTRL = 1), an independent
//!    record of every device write, CPU dirty tracking; all memory copied while the guest runs;
//! 2. pre-copy rounds: harvest the device log and the CPU log, copy those pages, until a round
//!    copies fewer than the threshold or the round limit;
//! 3. pause: frames waiting in the receive FIFO taken as device state, the DPDK stop sequence,
//!    the last harvest, the used rings marked dirty in software ("the HW logs packet buffers
//!    only"), stop-and-copy;
//! 4. verification (not downtime): destination memory equals the source, every page the device
//!    wrote after logging started was in its log;
//! 5. switch: the destination gets the ring states before queue_enable, the FIFO frames, and
//!    announces (GUEST_ANNOUNCE instead of RARP).
//!
//! What the guest does while it runs (its traffic) and how the destination is wired are the
//! caller's, through [`MigratingGuest`].

use crate::dirty_bitmap;
use crate::driver::{DriverError, GuestMemory, NetDriver};
use bar_registers::lm::DPDK_LOG_IOVA;
use device::{Device, DmaMapper, InterruptRecorder};
use dma::{Backing, MapError, Perms, SharedMemory, ShmError, WriteTrace, PAGE_SIZE};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pages copied between two moments of guest activity while the guest runs.
pub const PAGES_PER_RUN: u64 = 512;

/// The guest being migrated, as the engine sees it.
pub trait MigratingGuest {
    /// The caller's error type: every failure the engine meets converts into it.
    type Error: From<DriverError> + From<std::io::Error> + From<MapError> + From<ShmError>;

    /// The guest's driver.
    fn driver(&mut self) -> Result<&mut NetDriver, Self::Error>;
    /// Lets the guest run a moment on `dev` (its traffic, both ways).
    fn run(&mut self, dev: &Arc<Device>) -> Result<(), Self::Error>;
    /// Just before the pause (e.g. the network sends a burst the guest does not receive).
    fn before_pause(&mut self, _src: &Arc<Device>) {}
    /// The destination device, created at the switch and wired to its port.
    fn destination(&mut self) -> Result<Arc<Device>, Self::Error>;
    /// A progress line (stage, round).
    fn progress(&self, _line: &str) {}
}

/// When pre-copy stops iterating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreCopy {
    /// Stop when a round copies fewer pages than this.
    pub dirty_threshold: u64,
    /// Stop after this many rounds anyway.
    pub max_rounds: u32,
}

/// One stretch of a migration's timeline (for `migrate --plot` and the JSON report).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Phase {
    /// "bulk" (stage 1: all memory), "round N" (stage 2) or "stop-and-copy" (stage 3).
    pub name: String,
    /// Milliseconds since logging was turned on.
    pub start_ms: f64,
    pub end_ms: f64,
    /// Pages copied in this phase.
    pub pages_copied: u64,
    /// Pages the device's dirty log reported for this phase.
    pub dirtied_by_device: u64,
    /// Pages the guest's CPU wrote in this phase (the VMM's own dirty tracking).
    pub dirtied_by_cpu: u64,
}

/// What one migration measured.
#[derive(Debug)]
pub struct Migration {
    /// The destination the guest now runs on (when `resume_error` is None).
    pub dst: Arc<Device>,
    pub rounds: u32,
    /// Whether pre-copy ended because a round copied fewer pages than the threshold (false:
    /// the round limit forced stop-and-copy with the last round's pages still dirty).
    pub converged: bool,
    /// Pages copied by stage 1, each pre-copy round, and stop-and-copy.
    pub pages_per_round: Vec<u64>,
    pub pages_copied: u64,
    pub log_bytes: u64,
    pub log_writes: u64,
    pub missed_dirty_pages: u64,
    pub memory_mismatch_pages: u64,
    /// Pause to resumed on the destination, verification excluded.
    pub downtime: Duration,
    /// Bulk copy, each pre-copy round, stop-and-copy (the last one ends at the resume).
    pub timeline: Vec<Phase>,
    /// Frames moved from the source's receive FIFO to the destination's.
    pub pending_frames: u64,
    /// Whether the destination's announce was acked by the driver.
    pub announce_acked: bool,
    /// The driver could not resume on the destination.
    pub resume_error: Option<DriverError>,
}

/// Migrates `guest` from `src` to the destination it creates at the switch.
pub fn migrate<G: MigratingGuest>(
    guest: &mut G,
    src: &Arc<Device>,
    p: PreCopy,
) -> Result<Migration, G::Error> {
    let _span = tracing::info_span!("precopy").entered();
    let mem = guest.driver()?.mem.clone();

    // Stage 1: the log (DPDK: mapped at IFCVF_LOG_BASE), the independent write record, CPU
    // dirty tracking, logging on, everything copied while the guest runs.
    let top = mem.base() + mem.size();
    let log_len = dirty_bitmap::len_for(top);
    let log = SharedMemory::new("vdpa-emu-dirty-log", log_len)?;
    src.dma_map(
        DPDK_LOG_IOVA,
        log_len,
        Perms::RW,
        Backing::Fd {
            file: log.try_clone_file()?,
            offset: 0,
        },
    )?;
    let device_writes = Arc::new(WriteTrace::new(top));
    src.set_write_trace(Some(device_writes.clone()));
    let cpu = Arc::new(WriteTrace::new(top));
    mem.set_cpu_dirty_log(Some(cpu.clone()));
    guest.driver()?.enable_logging(DPDK_LOG_IOVA, log_len)?;
    let log_writes_before = src.log_stats().log_writes;
    guest.progress(&format!(
        "stage 1: logging on ({log_len} B log at {DPDK_LOG_IOVA:#x}), copying {} MiB",
        mem.size() >> 20
    ));
    let dst_mem = Arc::new(mem.new_like().map_err(DriverError::from)?);
    let mut copier = Copier {
        src: &mem,
        dst: &dst_mem,
        buf: Box::new([0u8; PAGE_SIZE as usize]),
        copied: 0,
    };
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
    let bulk = copier.copy(mem.pfns(), Some((&mut *guest, src)))?;
    let mut pages_per_round = vec![bulk];
    let mut timeline = vec![Phase {
        name: "bulk".into(),
        start_ms: 0.0,
        end_ms: ms(Instant::now()),
        pages_copied: bulk,
        dirtied_by_device: 0,
        dirtied_by_cpu: 0,
    }];
    let mut logged: BTreeSet<u64> = BTreeSet::new();

    // Stage 2: pre-copy rounds until the dirty set is small.
    let mut rounds = 0;
    let converged = loop {
        let start = Instant::now();
        guest.run(src)?;
        let mut dirty = BTreeSet::new();
        dirty_bitmap::harvest(&log, log_len, &mut dirty)?;
        logged.extend(dirty.iter().copied());
        let by_device = dirty.len() as u64;
        let cpu_pages = cpu.take_pages();
        let by_cpu = cpu_pages.len() as u64;
        dirty.extend(cpu_pages);
        rounds += 1;
        let n = copier.copy(dirty, Some((&mut *guest, src)))?;
        pages_per_round.push(n);
        timeline.push(Phase {
            name: format!("round {rounds}"),
            start_ms: ms(start),
            end_ms: ms(Instant::now()),
            pages_copied: n,
            dirtied_by_device: by_device,
            dirtied_by_cpu: by_cpu,
        });
        tracing::debug!(round = rounds, pages = n, "pre-copy round");
        guest.progress(&format!("stage 2: round {rounds} copied {n} dirty pages"));
        if n < p.dirty_threshold {
            break true;
        }
        if rounds >= p.max_rounds {
            guest.progress(&format!(
                "stage 2: did not converge: {n} pages dirtied in round {rounds}, the round limit; stop-and-copy forced"
            ));
            break false;
        }
    };

    // Stage 3: pause, DPDK stop, stop-and-copy.
    guest.before_pause(src);
    let t_pause = Instant::now();
    // The receive FIFO is device state too. Take it at the pause, before the stop: the stop
    // sequence ends in a device reset, which empties the FIFO (rx_dropped_reset). With the
    // guest paused nothing new arrives, and a frame waits there only because the RX rings are
    // full, so the device could not have consumed it either.
    let pending: Vec<Vec<u8>> = std::iter::from_fn(|| src.inbox().pop()).collect();
    let states = guest.driver()?.stop()?;
    let mut dirty = BTreeSet::new();
    dirty_bitmap::harvest(&log, log_len, &mut dirty)?;
    logged.extend(dirty.iter().copied());
    src.set_write_trace(None);
    // The DPDK driver marks every used ring dirty in software at stop ("the HW logs packet
    // buffers only"): the VMM copies them whatever the device logged.
    let by_device = dirty.len() as u64;
    for (used, len) in guest.driver()?.used_rings() {
        dirty.extend(used / PAGE_SIZE..(used + len).div_ceil(PAGE_SIZE));
    }
    let cpu_pages = cpu.take_pages();
    let by_cpu = cpu_pages.len() as u64;
    dirty.extend(cpu_pages);
    mem.set_cpu_dirty_log(None);
    let n = copier.copy(dirty, None::<(&mut G, &Arc<Device>)>)?;
    pages_per_round.push(n);
    let pages_copied = copier.copied;

    // Verification of the copy, page by page (not downtime: a real VMM does not do it).
    let t_verify = Instant::now();
    let mut a = Box::new([0u8; PAGE_SIZE as usize]);
    let mut b = Box::new([0u8; PAGE_SIZE as usize]);
    let mut memory_mismatch_pages = 0;
    for pfn in mem.pfns() {
        mem.read(pfn * PAGE_SIZE, &mut a[..])
            .map_err(DriverError::from)?;
        dst_mem
            .read(pfn * PAGE_SIZE, &mut b[..])
            .map_err(DriverError::from)?;
        memory_mismatch_pages += u64::from(a != b);
    }
    // Every page the device wrote after logging started must have been in its log.
    let missed_dirty_pages = device_writes
        .pages()
        .into_iter()
        .filter(|p| !logged.contains(p))
        .count() as u64;
    let log_writes = src.log_stats().log_writes.saturating_sub(log_writes_before);
    let _ = src.dma_unmap(DPDK_LOG_IOVA, log_len);
    let verify_time = t_verify.elapsed();

    // Switch: the guest runs on the destination from now on.
    let dst = guest.destination()?;
    let irq = Arc::new(InterruptRecorder::new(dst.layout().msix_vectors));
    dst.set_interrupt_sink(irq.clone());
    let drv = guest.driver()?;
    drv.migrate_to(dst.clone(), irq, dst_mem.clone())?;
    let resumed = drv.restart(&states).and_then(|()| {
        for f in &pending {
            dst.inbox().push(f);
        }
        dst.service_rx();
        // GUEST_ANNOUNCE instead of RARP: the device raises ANNOUNCE, the driver acks.
        if dst.announce() {
            return drv.handle_config_change();
        }
        Ok(false)
    });
    let downtime = t_pause.elapsed().saturating_sub(verify_time);
    timeline.push(Phase {
        name: "stop-and-copy".into(),
        start_ms: ms(t_pause),
        end_ms: ms(t_pause) + downtime.as_secs_f64() * 1e3,
        pages_copied: n,
        dirtied_by_device: by_device,
        dirtied_by_cpu: by_cpu,
    });
    guest.progress(&format!(
        "stage 3: stopped, copied {n} pages, resumed on the destination after {:.0} us",
        downtime.as_secs_f64() * 1e6
    ));
    let (announce_acked, resume_error) = match resumed {
        Ok(acked) => (acked, None),
        Err(e) => (false, Some(e)),
    };
    Ok(Migration {
        dst,
        rounds,
        converged,
        pages_per_round,
        pages_copied,
        log_bytes: log_len,
        log_writes,
        missed_dirty_pages,
        memory_mismatch_pages,
        downtime,
        timeline,
        pending_frames: pending.len() as u64,
        announce_acked,
        resume_error,
    })
}

/// Copies pages from the source RAM to the destination RAM, letting the guest run every
/// [`PAGES_PER_RUN`] pages (pre-copy) or not (stop-and-copy).
struct Copier<'a> {
    src: &'a GuestMemory,
    dst: &'a GuestMemory,
    buf: Box<[u8; PAGE_SIZE as usize]>,
    copied: u64,
}

impl Copier<'_> {
    fn copy<G: MigratingGuest>(
        &mut self,
        pages: impl IntoIterator<Item = u64>,
        mut running: Option<(&mut G, &Arc<Device>)>,
    ) -> Result<u64, G::Error> {
        let range = self.src.pfns();
        let mut n = 0u64;
        for pfn in pages.into_iter().filter(|p| range.contains(p)) {
            self.src
                .copy_page_to(pfn, self.dst, &mut self.buf)
                .map_err(DriverError::from)?;
            n += 1;
            if n.is_multiple_of(PAGES_PER_RUN) {
                if let Some((g, dev)) = running.as_mut() {
                    g.run(dev)?;
                }
            }
        }
        self.copied += n;
        Ok(n)
    }
}
