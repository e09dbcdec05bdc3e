//! `vdpa-emu migrate`: live migration of a guest using the NIC, between two device instances,
//! under traffic, with the VMM's stages modelled as the vDPA talk describes them and the result
//! verified: every page the device wrote was logged, destination memory equals the source, and
//! every frame arrived exactly once, in order.
//!
//! Stage 1: logging on (log mapped at IFCVF_LOG_BASE, base/end programmed, LOGGING_CTRL = 1),
//!          CPU dirty tracking on, all memory copied while the guest runs.
//! Stage 2: harvest and clear the dirty log (device) and the CPU dirty log (guest), copy those
//!          pages, repeat until the dirty set is under a threshold or the round limit.
//! Stage 3: pause the guest; stop the queues with the DPDK stop sequence (poll queue_enable),
//!          read each ring state; mark the used rings dirty as DPDK does; copy what is left and
//!          the device state (ring states, frames waiting in the receive FIFO); on the
//!          destination write the ring states before queue_enable, start, announce
//!          (GUEST_ANNOUNCE), and resume the guest.

pub mod peer;

use crate::driver::{DriverError, DriverOptions, GuestMemory, NetDriver};
use crate::frames::{self, Tracker};
use bar_registers::lm::DPDK_LOG_IOVA;
use bar_registers::LmLayout;
use device::{Device, DeviceConfig, DmaMapper, InterruptRecorder, Quirks};
use dma::{Backing, Perms, SharedMemory, WriteTrace, PAGE_SIZE};
use peer::{PeerPort, PeerSender, PEER_MAC};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to migrate and how.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// Guest RAM.
    pub memory: u64,
    pub queue_pairs: u16,
    /// Guest transmit rate in frames per second per direction (0 = as fast as possible).
    pub rate: u64,
    /// Dirty-log granularity of the source device.
    pub log_granularity: u64,
    pub lm_layout: LmLayout,
    pub quirks: Quirks,
    /// Stop iterating when a round finds fewer dirty pages than this.
    pub dirty_threshold: usize,
    pub max_rounds: u32,
    /// Traffic time on the destination after the switch.
    pub after: Duration,
    pub seed: u64,
    /// Print a progress line per stage/round on stderr.
    pub progress: bool,
    /// Back-to-back migrations of the same guest.
    pub count: u32,
    /// Frames per pair the peer sends just before the guest pauses, without the guest
    /// receiving them: more than the RX rings hold, so some wait in the receive FIFO at the switch.
    pub burst_at_switch: usize,
    /// Run every queue on the packed layout (VIRTIO_F_RING_PACKED): the ring states carried
    /// across are then `offset | wrap counter << 15` per index.
    pub packed: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            memory: 64 << 20,
            queue_pairs: 1,
            rate: 20_000,
            log_granularity: 4096,
            lm_layout: LmLayout::Dpdk,
            quirks: Quirks::NONE,
            dirty_threshold: 256,
            max_rounds: 30,
            after: Duration::from_millis(50),
            seed: 1,
            progress: false,
            count: 1,
            burst_at_switch: 0,
            packed: false,
        }
    }
}

/// The report.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MigrateReport {
    pub migrations: u32,
    pub total_ms: f64,
    /// The longest downtime (pause to resume) over the migrations.
    pub downtime_us: f64,
    pub rounds: u32,
    pub pages_per_round: Vec<u64>,
    pub pages_copied: u64,
    pub log_bytes: u64,
    pub log_writes: u64,
    pub missed_dirty_pages: u64,
    pub memory_mismatch_pages: u64,
    pub frames_sent: u64,
    pub frames_delivered: u64,
    pub lost_frames: u64,
    pub duplicated_frames: u64,
    pub reordered_frames: u64,
    pub corrupted_frames: u64,
    /// Driver or device errors after the switch (a broken resume).
    pub errors: Vec<String>,
}

impl MigrateReport {
    /// Whether nothing was lost.
    pub fn clean(&self) -> bool {
        self.missed_dirty_pages == 0
            && self.memory_mismatch_pages == 0
            && self.lost_frames == 0
            && self.duplicated_frames == 0
            && self.reordered_frames == 0
            && self.corrupted_frames == 0
            && self.errors.is_empty()
    }

    /// Human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let rows: Vec<(&str, String)> = vec![
            ("migrations", self.migrations.to_string()),
            ("total_ms", format!("{:.3}", self.total_ms)),
            ("downtime_us", format!("{:.1}", self.downtime_us)),
            ("rounds", self.rounds.to_string()),
            ("pages_per_round", format!("{:?}", self.pages_per_round)),
            ("pages_copied", self.pages_copied.to_string()),
            ("log_bytes", self.log_bytes.to_string()),
            ("log_writes", self.log_writes.to_string()),
            ("missed_dirty_pages", self.missed_dirty_pages.to_string()),
            (
                "memory_mismatch_pages",
                self.memory_mismatch_pages.to_string(),
            ),
            ("frames_sent", self.frames_sent.to_string()),
            ("frames_delivered", self.frames_delivered.to_string()),
            ("lost_frames", self.lost_frames.to_string()),
            ("duplicated_frames", self.duplicated_frames.to_string()),
            ("reordered_frames", self.reordered_frames.to_string()),
            ("corrupted_frames", self.corrupted_frames.to_string()),
            (
                "errors",
                if self.errors.is_empty() {
                    "none".into()
                } else {
                    self.errors.join("; ")
                },
            ),
            (
                "verdict",
                if self.clean() {
                    "PASS: nothing lost".into()
                } else {
                    "FAIL".into()
                },
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "{k:<24} {v}");
        }
        s
    }

    /// JSON object: every field, and `clean`.
    pub fn json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            report: &'a MigrateReport,
            clean: bool,
        }
        crate::report_json::to_json(&Json {
            report: self,
            clean: self.clean(),
        })
    }
}

/// Why the migration could not run at all (as opposed to a run whose checks failed).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("device: {0}")]
    Layout(#[from] bar_registers::LayoutError),
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error("log memory: {0}")]
    Io(#[from] std::io::Error),
    #[error("mapping the log: {0}")]
    Map(#[from] dma::MapError),
    #[error("reading the log: {0}")]
    Shm(#[from] dma::ShmError),
}

/// The guest: the driver plus its traffic bookkeeping, paced at `rate`.
struct Guest {
    drv: NetDriver,
    pairs: u16,
    rng: SmallRng,
    sent: HashMap<u16, u64>,
    received: Tracker,
    peer: PeerSender,
    rate: u64,
    t0: Instant,
    done: u64,
}

impl Guest {
    /// Sends (and lets the peer send) whatever the rate allows by now; receives everything.
    fn step(&mut self, dev: &Arc<Device>) -> Result<(), DriverError> {
        let due = if self.rate == 0 {
            self.done + 32 * u64::from(self.pairs)
        } else {
            (self.t0.elapsed().as_secs_f64() * self.rate as f64) as u64
        };
        let n = due
            .saturating_sub(self.done)
            .min(64 * u64::from(self.pairs));
        if n == 0 {
            return Ok(());
        }
        let per_pair = (n / u64::from(self.pairs)).max(1) as usize;
        let mac = self.drv.mac()?;
        for p in 0..self.pairs {
            self.drv.reclaim_tx(p)?;
            let fs: Vec<Vec<u8>> = (0..per_pair)
                .map(|i| {
                    let seq = self.sent.get(&p).copied().unwrap_or(0) + i as u64;
                    frames::build(
                        mac,
                        PEER_MAC,
                        p,
                        seq,
                        self.rng.gen_range(frames::MIN_FRAME..=1514),
                        &mut self.rng,
                    )
                })
                .collect();
            let refs: Vec<&[u8]> = fs.iter().map(Vec::as_slice).collect();
            let k = self.drv.send(p, &refs)?;
            *self.sent.entry(p).or_insert(0) += k as u64;
        }
        self.peer.send(dev, per_pair);
        for p in 0..self.pairs {
            for f in self.drv.recv(p)? {
                self.received.record(&f);
            }
        }
        self.done += per_pair as u64 * u64::from(self.pairs);
        Ok(())
    }
}

fn log_len_for(mem: &GuestMemory) -> u64 {
    ((mem.base() + mem.size()) / PAGE_SIZE)
        .div_ceil(8)
        .next_multiple_of(8)
}

/// Harvests and clears the device's dirty log (vhost bitmap) into `out`.
fn harvest(log: &SharedMemory, len: u64, out: &mut BTreeSet<u64>) -> Result<(), MigrateError> {
    for w in (0..len).step_by(8) {
        let mut bits = log.swap_u64(w, 0)?;
        while bits != 0 {
            let b = u64::from(bits.trailing_zeros());
            out.insert(w * 8 + b);
            bits &= bits - 1;
        }
    }
    Ok(())
}

/// Runs `o.count` back-to-back migrations of one guest (A -> B -> C ...), each between the
/// device the guest runs on and a fresh device, under continuous traffic, and verifies.
pub fn run(o: &MigrateOptions) -> Result<MigrateReport, MigrateError> {
    let _span = tracing::info_span!("migrate").entered();
    let mut cfg = DeviceConfig::with_queue_pairs(o.queue_pairs.max(1)).lm_layout(o.lm_layout);
    cfg.log_granularity = o.log_granularity;
    // Source and destination are the same silicon: a quirk is on both.
    cfg.quirks = o.quirks;
    let peer_port = Arc::new(PeerPort::default());
    let mut dev = Device::new(cfg.clone())?;
    dev.set_port(peer_port.clone());
    let opts = DriverOptions {
        queue_pairs: o.queue_pairs.max(1),
        memory: o.memory,
        lm_layout: o.lm_layout,
        ..Default::default()
    }
    .with_packed(o.packed);
    let mut drv = crate::driver::in_process(&dev, opts)?;
    drv.start()?;
    let mac = drv.mac()?;
    let mut guest = Guest {
        drv,
        pairs: o.queue_pairs.max(1),
        rng: SmallRng::seed_from_u64(o.seed),
        sent: HashMap::new(),
        received: Tracker::default(),
        peer: PeerSender::new(mac, o.queue_pairs.max(1), o.seed ^ 0x5eed),
        rate: o.rate,
        t0: Instant::now(),
        done: 0,
    };
    // Warm up: traffic before migration starts.
    for _ in 0..8 {
        guest.step(&dev)?;
    }
    let mut report = MigrateReport::default();
    let t_start = Instant::now();
    for i in 0..o.count.max(1) {
        let dst = Device::new(cfg.clone())?;
        dst.set_port(peer_port.clone());
        let ok = migrate_once(o, i, &mut guest, &dev, &dst, &mut report)?;
        dev = dst;
        if !ok {
            break;
        }
    }
    report.total_ms = t_start.elapsed().as_secs_f64() * 1e3;

    // Drain: the guest receives until nothing is left in its rings or the device's FIFO.
    for _ in 0..64 {
        let mut got = 0;
        for p in 0..guest.pairs {
            if let Ok(fs) = guest.drv.recv(p) {
                got += fs.len();
                fs.iter().for_each(|f| guest.received.record(f));
            }
        }
        if got == 0 && dev.inbox().is_empty() {
            break;
        }
    }
    // Frames: guest -> peer (streams = pairs), peer -> guest (streams 100+).
    let mut to_peer = std::mem::take(&mut *peer_port.received.lock());
    to_peer.finish(&guest.sent);
    let mut to_guest = guest.received.clone();
    to_guest.finish(&guest.peer.sent);
    for t in [&to_peer, &to_guest] {
        report.frames_delivered += t.delivered;
        report.lost_frames += t.lost;
        report.duplicated_frames += t.duplicated;
        report.reordered_frames += t.reordered;
        report.corrupted_frames += t.corrupted;
    }
    report.frames_sent = guest.sent.values().sum::<u64>() + guest.peer.sent.values().sum::<u64>();
    Ok(report)
}

/// One migration of the guest from `src` to `dst`. Returns false when the destination did not
/// come up (the report says why).
fn migrate_once(
    o: &MigrateOptions,
    index: u32,
    guest: &mut Guest,
    src: &Arc<Device>,
    dst: &Arc<Device>,
    report: &mut MigrateReport,
) -> Result<bool, MigrateError> {
    let _span = tracing::info_span!("migration", index).entered();
    let progress = |s: String| {
        if o.progress {
            eprintln!("[{index}] {s}");
        }
    };
    let mem = guest.drv.mem.clone();
    report.migrations += 1;
    // Stage 1: the log (DPDK: mapped at IFCVF_LOG_BASE), the independent write record, CPU dirty tracking.
    let log_len = log_len_for(&mem);
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
    let top = mem.base() + mem.size();
    let device_writes = Arc::new(WriteTrace::new(top));
    src.set_write_trace(Some(device_writes.clone()));
    let cpu = Arc::new(WriteTrace::new(top));
    mem.set_cpu_dirty_log(Some(cpu.clone()));
    guest.drv.enable_logging(DPDK_LOG_IOVA, log_len)?;
    report.log_bytes = log_len;
    let log_writes_before = src.log_stats().log_writes;
    progress(format!(
        "stage 1: logging on ({log_len} B log at {DPDK_LOG_IOVA:#x}), copying {} MiB",
        o.memory >> 20
    ));

    let dst_mem = Arc::new(mem.new_like().map_err(DriverError::from)?);
    let mut logged: BTreeSet<u64> = BTreeSet::new();
    let mut copier = Copier {
        src: &mem,
        dst: &dst_mem,
        buf: Box::new([0u8; PAGE_SIZE as usize]),
    };
    let n = copier.copy(mem.pfns(), Some((&mut *guest, src)), report)?;
    report.pages_per_round.push(n);

    // Stage 2: iterate.
    let mut rounds = 0;
    loop {
        guest.step(src)?;
        let mut dirty = BTreeSet::new();
        harvest(&log, log_len, &mut dirty)?;
        logged.extend(dirty.iter().copied());
        dirty.extend(cpu.take_pages());
        rounds += 1;
        let n = copier.copy(dirty.iter().copied(), Some((&mut *guest, src)), report)?;
        report.pages_per_round.push(n);
        progress(format!("stage 2: round {rounds} copied {n} dirty pages"));
        if (n as usize) < o.dirty_threshold || rounds >= o.max_rounds {
            break;
        }
    }
    report.rounds += rounds;

    // Stage 3: pause the guest, stop the source with the DPDK stop sequence.
    if o.burst_at_switch > 0 {
        guest.peer.send(src, o.burst_at_switch);
    }
    let t_pause = Instant::now();
    // Frames waiting in the source's receive FIFO are device state: take them before the stop
    // sequence, whose final reset would discard them.
    let pending: Vec<Vec<u8>> = std::iter::from_fn(|| src.inbox().pop()).collect();
    let states = guest.drv.stop()?;
    let mut dirty = BTreeSet::new();
    harvest(&log, log_len, &mut dirty)?;
    logged.extend(dirty.iter().copied());
    src.set_write_trace(None);
    // The DPDK driver marks every used ring dirty in software at stop ("the HW logs packet
    // buffers only"): the VMM copies them whatever the device logged.
    for (used, len) in guest.drv.used_rings() {
        dirty.extend(used / PAGE_SIZE..(used + len).div_ceil(PAGE_SIZE));
    }
    dirty.extend(cpu.take_pages());
    mem.set_cpu_dirty_log(None);
    let n = copier.copy(dirty.iter().copied(), None, report)?;
    report.pages_per_round.push(n);
    // Verification of the copy, page by page (not part of the downtime: a real VMM does not do it).
    let t_verify = Instant::now();
    let mut a = [0u8; PAGE_SIZE as usize];
    let mut b = [0u8; PAGE_SIZE as usize];
    for pfn in mem.pfns() {
        let iova = pfn * PAGE_SIZE;
        mem.read(iova, &mut a).map_err(DriverError::from)?;
        dst_mem.read(iova, &mut b).map_err(DriverError::from)?;
        if a != b {
            report.memory_mismatch_pages += 1;
        }
    }
    // Every page the device wrote after logging started must have been in its log.
    report.missed_dirty_pages += device_writes
        .pages()
        .into_iter()
        .filter(|p| !logged.contains(p))
        .count() as u64;
    let verify_time = t_verify.elapsed();
    report.log_writes += src.log_stats().log_writes - log_writes_before;

    // Switch: the guest now runs on the destination.
    let irq = Arc::new(InterruptRecorder::new(dst.layout().msix_vectors));
    dst.set_interrupt_sink(irq.clone());
    guest.drv.migrate_to(dst.clone(), irq, dst_mem.clone())?;
    let resumed = guest.drv.restart(&states).and_then(|()| {
        for f in &pending {
            dst.inbox().push(f);
        }
        dst.service_rx();
        // GUEST_ANNOUNCE instead of RARP: the device raises ANNOUNCE, the driver acks.
        if dst.announce() {
            guest.drv.handle_config_change()?;
        }
        Ok(())
    });
    let downtime = (t_pause.elapsed() - verify_time).as_secs_f64() * 1e6;
    report.downtime_us = report.downtime_us.max(downtime);
    progress(format!(
        "stage 3: stopped, copied {n} pages, resumed on the destination after {downtime:.0} us"
    ));
    if let Err(e) = resumed {
        report
            .errors
            .push(format!("migration {index}: resume on the destination: {e}"));
        return Ok(false);
    }
    let t = Instant::now();
    while t.elapsed() < o.after {
        if let Err(e) = guest.step(dst) {
            report
                .errors
                .push(format!("migration {index}: after the switch: {e}"));
            return Ok(false);
        }
    }
    if let Some(f) = dst.fault() {
        report
            .errors
            .push(format!("migration {index}: destination device: {f}"));
        return Ok(false);
    }
    if let Some(f) = src.fault() {
        report
            .errors
            .push(format!("migration {index}: source device: {f}"));
    }
    Ok(true)
}

/// Copies pages from the source RAM to the destination RAM, letting the guest run between
/// chunks (pre-copy) or not (stop-and-copy).
struct Copier<'a> {
    src: &'a GuestMemory,
    dst: &'a GuestMemory,
    buf: Box<[u8; PAGE_SIZE as usize]>,
}

impl Copier<'_> {
    fn copy(
        &mut self,
        pages: impl IntoIterator<Item = u64>,
        mut running: Option<(&mut Guest, &Arc<Device>)>,
        report: &mut MigrateReport,
    ) -> Result<u64, MigrateError> {
        let range = self.src.pfns();
        let mut n = 0u64;
        for pfn in pages.into_iter().filter(|p| range.contains(p)) {
            self.src
                .copy_page_to(pfn, self.dst, &mut self.buf)
                .map_err(DriverError::from)?;
            n += 1;
            if n.is_multiple_of(512) {
                if let Some((g, dev)) = running.as_mut() {
                    g.step(dev)?;
                }
            }
        }
        report.pages_copied += n;
        Ok(n)
    }
}
