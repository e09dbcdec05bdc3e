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

pub mod engine;
pub mod peer;
pub mod plot;

use crate::driver::{DriverError, DriverOptions, NetDriver};
use crate::frames::{self, Tracker};
use bar_registers::LmLayout;
use device::{Device, DeviceConfig, Quirks};
use engine::{MigratingGuest, PreCopy};
use peer::{PeerPort, PeerSender, PEER_MAC};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
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
    /// Migrations whose pre-copy hit the round limit instead of converging under the dirty
    /// threshold (nothing is lost, but the downtime is the last round's dirty set).
    pub unconverged: u32,
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
    /// Per migration: bulk copy, pre-copy rounds, stop-and-copy, with times and page counts.
    pub timelines: Vec<Vec<engine::Phase>>,
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
            (
                "converged",
                if self.unconverged == 0 {
                    "yes".into()
                } else {
                    format!(
                        "no: {} of {} migrations hit the round limit (stop-and-copy forced)",
                        self.unconverged, self.migrations
                    )
                },
            ),
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
                if self.clean() && self.unconverged > 0 {
                    "PASS: nothing lost (pre-copy did not converge)".into()
                } else if self.clean() {
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
    #[error(
        "--memory {memory_mib} MiB needs {needed_mib} MiB (the source's and the destination's guest RAM are both filled), \
         but this machine has {available_mib} MiB available (MemAvailable in /proc/meminfo)"
    )]
    TooBig {
        memory_mib: u64,
        needed_mib: u64,
        available_mib: u64,
    },
}

/// Memory the kernel says can be allocated without swapping (MemAvailable), in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a guest the machine cannot hold twice over, before allocating anything.
fn check_fits(memory: u64) -> Result<(), MigrateError> {
    let needed = memory.saturating_mul(2);
    match mem_available() {
        Some(available) if needed > available => Err(MigrateError::TooBig {
            memory_mib: memory >> 20,
            needed_mib: needed >> 20,
            available_mib: available >> 20,
        }),
        _ => Ok(()),
    }
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

/// Runs `o.count` back-to-back migrations of one guest (A -> B -> C ...), each between the
/// device the guest runs on and a fresh device, under continuous traffic, and verifies.
pub fn run(o: &MigrateOptions) -> Result<MigrateReport, MigrateError> {
    let _span = tracing::info_span!("migrate").entered();
    check_fits(o.memory)?;
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
    let mut progress =
        crate::progress::Progress::new(o.progress, u64::from(o.count.max(1)), "migrations");
    for i in 0..o.count.max(1) {
        progress.set_prefix(&format!("[{i}] "));
        let ctx = Ctx {
            o,
            cfg: &cfg,
            peer_port: &peer_port,
            progress: &progress,
        };
        let (dst, ok) = migrate_once(&ctx, i, &mut guest, &dev, &mut report)?;
        progress.inc();
        dev = dst;
        if !ok {
            break;
        }
    }
    progress.finish();
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

/// The guest of `migrate` as the engine sees it: its own traffic and the peer's, a burst from
/// the peer at the pause, a fresh device wired to the same peer as the destination.
struct Migrating<'a> {
    guest: &'a mut Guest,
    cfg: &'a DeviceConfig,
    peer_port: &'a Arc<PeerPort>,
    burst_at_switch: usize,
    progress: &'a crate::progress::Progress,
}

impl MigratingGuest for Migrating<'_> {
    type Error = MigrateError;

    fn driver(&mut self) -> Result<&mut NetDriver, MigrateError> {
        Ok(&mut self.guest.drv)
    }

    fn run(&mut self, dev: &Arc<Device>) -> Result<(), MigrateError> {
        Ok(self.guest.step(dev)?)
    }

    fn before_pause(&mut self, src: &Arc<Device>) {
        if self.burst_at_switch > 0 {
            self.guest.peer.send(src, self.burst_at_switch);
        }
    }

    fn destination(&mut self) -> Result<Arc<Device>, MigrateError> {
        let dst = Device::new(self.cfg.clone())?;
        dst.set_port(self.peer_port.clone());
        Ok(dst)
    }

    fn progress(&self, line: &str) {
        self.progress.message(line);
    }
}

/// One migration of the guest from `src` to a fresh device. Returns the device the guest runs
/// on afterwards and false when the destination did not come up (the report says why).
/// What every migration of a run shares.
struct Ctx<'a> {
    o: &'a MigrateOptions,
    cfg: &'a DeviceConfig,
    peer_port: &'a Arc<PeerPort>,
    progress: &'a crate::progress::Progress,
}

fn migrate_once(
    ctx: &Ctx<'_>,
    index: u32,
    guest: &mut Guest,
    src: &Arc<Device>,
    report: &mut MigrateReport,
) -> Result<(Arc<Device>, bool), MigrateError> {
    let Ctx {
        o,
        cfg,
        peer_port,
        progress,
    } = *ctx;
    let _span = tracing::info_span!("migration", index).entered();
    report.migrations += 1;
    let m = engine::migrate(
        &mut Migrating {
            guest: &mut *guest,
            cfg,
            peer_port,
            burst_at_switch: o.burst_at_switch,
            progress,
        },
        src,
        PreCopy {
            dirty_threshold: o.dirty_threshold as u64,
            max_rounds: o.max_rounds,
        },
    )?;
    report.rounds += m.rounds;
    report.unconverged += u32::from(!m.converged);
    report.pages_per_round.extend(&m.pages_per_round);
    report.pages_copied += m.pages_copied;
    report.log_bytes = m.log_bytes;
    report.log_writes += m.log_writes;
    report.missed_dirty_pages += m.missed_dirty_pages;
    report.memory_mismatch_pages += m.memory_mismatch_pages;
    report.downtime_us = report.downtime_us.max(m.downtime.as_secs_f64() * 1e6);
    report.timelines.push(m.timeline.clone());
    let dst = m.dst;
    if let Some(e) = m.resume_error {
        report
            .errors
            .push(format!("migration {index}: resume on the destination: {e}"));
        return Ok((dst, false));
    }
    let t = Instant::now();
    while t.elapsed() < o.after {
        if let Err(e) = guest.step(&dst) {
            report
                .errors
                .push(format!("migration {index}: after the switch: {e}"));
            return Ok((dst, false));
        }
    }
    if let Some(f) = dst.fault() {
        report
            .errors
            .push(format!("migration {index}: destination device: {f}"));
        return Ok((dst, false));
    }
    if let Some(f) = src.fault() {
        report
            .errors
            .push(format!("migration {index}: source device: {f}"));
    }
    Ok((dst, true))
}
