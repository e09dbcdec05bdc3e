//! `vdpa-emu migrate`: live migration of a guest using the NIC, between two device instances,
//! under traffic, with the VMM's stages modelled as the vDPA talk describes them and the result
//! verified: every page the device wrote was logged, destination memory equals the source, and
//! every frame arrived exactly once, in order.
//!
//! Stage 1: logging on (log mapped at IFCVF_LOG_BASE, base/end programmed, LOGGING_CTRL = 1),
//!          CPU dirty tracking on, all memory sent while the guest runs (pages never written
//!          and pages of zeros as zero pages: guest RAM is allocated lazily on both sides).
//! Stage 2: harvest and clear the dirty log (device) and the CPU dirty log (guest); stop when
//!          those pages, at the measured copy rate, fit the downtime limit (QEMU's
//!          `downtime-limit`, [`policy`]) or at the round limit; otherwise copy them and repeat.
//! Stage 3: pause the guest; stop the queues with the DPDK stop sequence (poll queue_enable),
//!          read each ring state; mark the used rings dirty as DPDK does; copy what is left and
//!          the device state (ring states, frames waiting in the receive FIFO); on the
//!          destination write the ring states before queue_enable, start, announce
//!          (GUEST_ANNOUNCE), and resume the guest.

pub mod engine;
pub mod footprint;
pub mod peer;
pub mod plot;
pub mod policy;
pub mod transfer;

use crate::driver::{DriverError, DriverOptions, NetDriver};
use crate::frames::{self, Tracker};
use bar_registers::LmLayout;
use device::{Device, DeviceConfig, Quirks};
use engine::{Decision, MigratingGuest, PreCopy};
use footprint::Needs;
use peer::{PeerPort, PeerSender, PEER_MAC};
use policy::{StopPolicy, StopReason};
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
    /// What ends pre-copy (default: QEMU's 300 ms downtime limit).
    pub stop: StopPolicy,
    /// Most pre-copy rounds; at the limit stop-and-copy is forced (did not converge).
    pub max_rounds: u32,
    /// Traffic time on the destination after the switch.
    pub after: Duration,
    pub seed: u64,
    /// Print a progress line per stage/round on stderr.
    pub progress: bool,
    /// Back-to-back migrations of the same guest.
    pub count: u32,
    /// Capture every frame of every device instance into this pcapng file (the source is
    /// `m0`, the destination of migration N is `mN`).
    pub pcap: Option<std::path::PathBuf>,
    /// Frames per pair the peer sends just before the guest pauses, without the guest
    /// receiving them: more than the RX rings hold, so some wait in the receive FIFO at the switch.
    pub burst_at_switch: usize,
    /// Run every queue on the packed layout (VIRTIO_F_RING_PACKED): the ring states carried
    /// across are then `offset | wrap counter << 15` per index.
    pub packed: bool,
    /// The source device's profile (its parameters already in the fields above).
    pub profile: bar_registers::Profile,
    /// The destinations' profile, if not the source's: it must offer exactly the source's
    /// features, or the run is refused ([`check_profiles`]).
    pub dest_profile: Option<bar_registers::Profile>,
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
            stop: StopPolicy::default(),
            max_rounds: 30,
            after: Duration::from_millis(50),
            seed: 1,
            progress: false,
            count: 1,
            pcap: None,
            burst_at_switch: 0,
            packed: false,
            profile: bar_registers::Profile::full(),
            dest_profile: None,
        }
    }
}

/// How one migration's pre-copy ended: the estimate it stopped on against what the downtime
/// measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StopSummary {
    pub reason: StopReason,
    /// Pre-copy rounds before the stop.
    pub rounds: u32,
    /// Dirty pages pending at the stop (copied in stop-and-copy with the last harvest).
    pub pending_pages: u64,
    /// The copy rate the decision used, bytes per second.
    pub copy_rate_bytes_per_s: Option<f64>,
    /// Time to copy the pending pages at that rate.
    pub estimated_downtime_us: Option<f64>,
    /// Measured: the page copy of stop-and-copy.
    pub stop_copy_us: f64,
    /// Measured: pause to resumed on the destination (stop sequence, copy, restart, announce).
    pub downtime_us: f64,
    /// Every decision of this migration (after the bulk copy and after each round).
    pub decisions: Vec<Decision>,
}

/// The report.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MigrateReport {
    pub migrations: u32,
    /// The device profile of both sides.
    pub profile: String,
    /// The features both sides offer.
    pub offered_features: String,
    pub total_ms: f64,
    /// Guest RAM (`--memory`).
    pub memory_bytes: u64,
    /// The downtime limit pre-copy worked to, in ms (None: the explicit page threshold).
    pub max_downtime_ms: Option<f64>,
    /// The explicit page threshold, when it replaced the downtime limit.
    pub dirty_threshold: Option<u64>,
    /// The longest downtime (pause to resume) over the migrations.
    pub downtime_us: f64,
    /// The estimate the migration with the longest downtime stopped on.
    pub estimated_downtime_us: Option<f64>,
    pub rounds: u32,
    /// Migrations whose pre-copy hit the round limit instead of meeting its stop test (nothing
    /// is lost, but the downtime is whatever was still dirty).
    pub unconverged: u32,
    /// Per migration: why pre-copy stopped, the estimate and the measured downtime.
    pub stops: Vec<StopSummary>,
    /// Pages sent by each phase (bulk, rounds, stop-and-copy; data and zero pages).
    pub pages_per_round: Vec<u64>,
    /// Pages sent in all, with data or as zero pages.
    pub pages_copied: u64,
    /// Of those, zero pages (QEMU's `zero-pages`): never written (holes, not even read) or
    /// reading as zeros; sent without data, and holes on the destination.
    pub zero_pages: u64,
    /// Peak resident set size of the process (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Guest RAM holding pages after the copy (the largest over the migrations), bytes.
    pub source_resident_bytes: u64,
    pub destination_resident_bytes: u64,
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
    /// The pcapng capture (`--pcap`), if one was written.
    pub capture: Option<crate::pcap::CaptureSummary>,
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
        let mib = |b: u64| format!("{:.1}", b as f64 / f64::from(1 << 20));
        let size = |b: u64| match b {
            b if b < 1 << 20 => format!("{} KiB", b >> 10),
            b => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        };
        let rows: Vec<(&str, String)> = vec![
            ("migrations", self.migrations.to_string()),
            (
                "profile",
                format!("{} (features {})", self.profile, self.offered_features),
            ),
            ("total_ms", format!("{:.3}", self.total_ms)),
            ("memory_mib", mib(self.memory_bytes)),
            (
                "resident",
                format!(
                    "source {}, destination {} (guest RAM holding pages after the copy)",
                    size(self.source_resident_bytes),
                    size(self.destination_resident_bytes)
                ),
            ),
            ("peak_rss_mib", mib(self.peak_rss_bytes)),
            (
                "stop_policy",
                match (self.max_downtime_ms, self.dirty_threshold) {
                    (_, Some(t)) => format!("dirty threshold {t} pages (explicit)"),
                    (Some(ms), None) => format!("max downtime {ms} ms"),
                    (None, None) => "none".into(),
                },
            ),
            ("stop", self.stop_line()),
            (
                "estimated_downtime_us",
                self.estimated_downtime_us
                    .map_or("unknown (no copy rate measured)".into(), |e| {
                        format!("{e:.1}")
                    }),
            ),
            ("downtime_us", format!("{:.1}", self.downtime_us)),
            ("rounds", self.rounds.to_string()),
            (
                "converged",
                if self.unconverged == 0 {
                    "yes".into()
                } else {
                    format!(
                        "no: did not converge: {} of {} migrations hit the round limit (stop-and-copy forced)",
                        self.unconverged, self.migrations
                    )
                },
            ),
            ("pages_per_round", format!("{:?}", self.pages_per_round)),
            ("pages_copied", self.pages_copied.to_string()),
            ("zero_pages", self.zero_pages.to_string()),
            ("log_bytes", self.log_bytes.to_string()),
            ("log_writes", self.log_writes.to_string()),
            ("missed_dirty_pages", self.missed_dirty_pages.to_string()),
            (
                "memory_mismatch_pages",
                self.memory_mismatch_pages.to_string(),
            ),
            (
                "capture",
                self.capture.as_ref().map_or("none".into(), |c| {
                    format!(
                        "{} frames ({} bytes) into {}",
                        c.frames,
                        c.bytes,
                        c.path.display()
                    )
                }),
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

    /// The stop of the migration with the longest downtime, in words.
    fn stop_line(&self) -> String {
        let Some((i, st)) = self
            .stops
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.downtime_us.total_cmp(&b.1.downtime_us))
        else {
            return "none".into();
        };
        let who = if self.stops.len() > 1 {
            format!("migration {i} (longest downtime): ")
        } else {
            String::new()
        };
        let est = st
            .estimated_downtime_us
            .map_or("unknown".into(), |e| format!("{:.3} ms", e / 1e3));
        let why = match (st.reason, self.max_downtime_ms) {
            (StopReason::DowntimeFits, Some(limit)) => format!("fits the {limit} ms limit"),
            (StopReason::DowntimeFits, None) => "fits".into(),
            (StopReason::UnderThreshold, _) => format!(
                "the last round copied fewer than {} pages",
                self.dirty_threshold.unwrap_or(0)
            ),
            (StopReason::RoundLimit, _) => "round limit: did not converge".into(),
        };
        format!(
            "{who}after {} round(s), {} dirty pages at {}: estimated {est}, {why}; measured {:.3} ms downtime ({:.3} ms of it copying)",
            st.rounds,
            st.pending_pages,
            policy::fmt_rate(st.copy_rate_bytes_per_s),
            st.downtime_us / 1e3,
            st.stop_copy_us / 1e3
        )
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
    #[error(
        "the destination's profile {dst} does not match the source's profile {src}: {why}. A device \
         state can only move to a device that offers the same features (the guest negotiated against \
         the source's and renegotiates after any reset); use the same --profile on both sides"
    )]
    ProfileMismatch {
        src: String,
        dst: String,
        why: String,
    },
    #[error("device: {0}")]
    Layout(#[from] bar_registers::LayoutError),
    #[error(transparent)]
    Capture(#[from] crate::pcap::CaptureError),
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error("log memory: {0}")]
    Io(#[from] std::io::Error),
    #[error("mapping the log: {0}")]
    Map(#[from] dma::MapError),
    #[error("reading the log: {0}")]
    Shm(#[from] dma::ShmError),
    #[error(
        "--memory {0} B: guest RAM must be a non-zero multiple of 4 KiB (the page the dirty log and the copy work in)"
    )]
    MemorySize(u64),
    #[error(
        "--memory {memory_mib} MiB needs {needed_mib} MiB: the guest's working set of {working_set_mib} MiB \
         on the source and on the destination (guest RAM is allocated lazily) and {tracking_mib} MiB of \
         dirty-tracking bitmaps, but this machine has {available_mib} MiB available (MemAvailable in /proc/meminfo)"
    )]
    TooBig {
        memory_mib: u64,
        needed_mib: u64,
        working_set_mib: u64,
        tracking_mib: u64,
        available_mib: u64,
    },
    #[error(
        "--memory {memory_mib} MiB needs {needed_mib} MiB of address space (guest RAM is mapped {mappings} times: \
         by the driver and the device, on the source and the destination), which this process cannot reserve: {source}"
    )]
    AddressSpace {
        memory_mib: u64,
        needed_mib: u64,
        mappings: u64,
        source: std::io::Error,
    },
}

/// Refuses guest RAM whose mappings cannot exist (before anything is allocated).
fn check_address_space(memory: u64) -> Result<(), MigrateError> {
    let needed = memory.saturating_mul(footprint::RAM_MAPPINGS);
    footprint::reserve_address_space(needed).map_err(|source| MigrateError::AddressSpace {
        memory_mib: memory >> 20,
        needed_mib: needed >> 20,
        mappings: footprint::RAM_MAPPINGS,
        source,
    })
}

/// Refuses a run the machine cannot hold: the started guest's working set twice, and the
/// tracking bitmaps (not `--memory`: untouched guest RAM costs nothing).
fn check_fits(memory: u64, mem: &crate::driver::GuestMemory) -> Result<(), MigrateError> {
    let needs = Needs::new(memory, mem.base(), mem.allocated());
    match footprint::mem_available() {
        Some(available) if !needs.fits(available) => Err(MigrateError::TooBig {
            memory_mib: memory >> 20,
            needed_mib: needs.total().div_ceil(1 << 20),
            working_set_mib: needs.working_set.div_ceil(1 << 20),
            tracking_mib: needs.tracking.div_ceil(1 << 20),
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

/// Refuses a destination whose profile differs from the source's in what a device state
/// depends on: the offered features and the parameters the profiles fix.
pub fn check_profiles(
    src: &bar_registers::Profile,
    dst: &bar_registers::Profile,
) -> Result<(), MigrateError> {
    let names = |m: u64| -> String {
        (0..64)
            .filter(|b| m & (1u64 << b) != 0)
            .map(|b| {
                bar_registers::virtio::feature_name(b).map_or(format!("bit {b}"), str::to_string)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut why = Vec::new();
    let only_src = src.features & !dst.features;
    let only_dst = dst.features & !src.features;
    if only_src != 0 {
        why.push(format!("only the source offers {}", names(only_src)));
    }
    if only_dst != 0 {
        why.push(format!("only the destination offers {}", names(only_dst)));
    }
    if src.params != dst.params {
        why.push(format!(
            "the fixed device parameters differ ({:?} vs {:?})",
            src.params, dst.params
        ));
    }
    if why.is_empty() {
        return Ok(());
    }
    Err(MigrateError::ProfileMismatch {
        src: src.name.clone(),
        dst: dst.name.clone(),
        why: why.join("; "),
    })
}

/// Runs `o.count` back-to-back migrations of one guest (A -> B -> C ...), each between the
/// device the guest runs on and a fresh device, under continuous traffic, and verifies.
pub fn run(o: &MigrateOptions) -> Result<MigrateReport, MigrateError> {
    let _span = tracing::info_span!("migrate").entered();
    if o.memory == 0 || !o.memory.is_multiple_of(dma::PAGE_SIZE) {
        return Err(MigrateError::MemorySize(o.memory));
    }
    check_address_space(o.memory)?;
    if let Some(dst) = &o.dest_profile {
        check_profiles(&o.profile, dst)?;
    }
    let mut cfg = DeviceConfig::default().with_profile(o.profile.clone());
    cfg.layout.queue_pairs = o.queue_pairs.max(1);
    cfg.layout.lm_layout = o.lm_layout;
    cfg.log_granularity = o.log_granularity;
    // Source and destination are the same silicon: a quirk is on both.
    cfg.quirks = o.quirks;
    let peer_port = Arc::new(PeerPort::default());
    let mut dev = Device::new(cfg.clone())?;
    dev.set_port(peer_port.clone());
    let capture = o
        .pcap
        .as_deref()
        .map(crate::pcap::PcapCapture::create)
        .transpose()?;
    if let Some(c) = &capture {
        c.attach("m0", &dev)?;
    }
    let opts = DriverOptions {
        queue_pairs: o.queue_pairs.max(1),
        memory: o.memory,
        lm_layout: o.lm_layout,
        ..Default::default()
    }
    .with_packed(o.packed);
    let mut drv = crate::driver::in_process(&dev, opts)?;
    drv.start()?;
    check_fits(o.memory, &drv.mem)?;
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
    let mut report = MigrateReport {
        profile: o.profile.name.clone(),
        offered_features: format!("{:#x}", dev.offered_features()),
        memory_bytes: o.memory,
        max_downtime_ms: match o.stop {
            StopPolicy::MaxDowntime(d) => Some(d.as_secs_f64() * 1e3),
            StopPolicy::DirtyThreshold(_) => None,
        },
        dirty_threshold: match o.stop {
            StopPolicy::DirtyThreshold(t) => Some(t),
            StopPolicy::MaxDowntime(_) => None,
        },
        ..Default::default()
    };
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
            capture: capture.as_ref(),
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
    report.peak_rss_bytes = footprint::peak_rss().unwrap_or(0);
    if let Some(c) = capture {
        dev.set_capture(None);
        report.capture = Some(c.finish()?);
    }
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
    /// The capture and the label of the destination to add to it.
    capture: Option<(&'a Arc<crate::pcap::PcapCapture>, String)>,
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
        if let Some((c, label)) = &self.capture {
            c.attach(label, &dst)?;
        }
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
    capture: Option<&'a Arc<crate::pcap::PcapCapture>>,
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
        capture,
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
            capture: capture.map(|c| (c, format!("m{}", index + 1))),
        },
        src,
        PreCopy {
            policy: o.stop,
            max_rounds: o.max_rounds,
        },
    )?;
    report.rounds += m.rounds;
    report.unconverged += u32::from(!m.converged);
    report.pages_per_round.extend(&m.pages_per_round);
    report.pages_copied += m.pages_copied;
    report.zero_pages += m.zero_pages;
    report.source_resident_bytes = report.source_resident_bytes.max(m.resident_bytes.0);
    report.destination_resident_bytes = report.destination_resident_bytes.max(m.resident_bytes.1);
    let last = m.decisions.last();
    let summary = StopSummary {
        reason: m.stop_reason,
        rounds: m.rounds,
        pending_pages: last.map_or(0, |d| d.pending_pages),
        copy_rate_bytes_per_s: last.and_then(|d| d.copy_rate_bytes_per_s),
        estimated_downtime_us: m.estimated_downtime.map(|d| d.as_secs_f64() * 1e6),
        stop_copy_us: m.stop_copy.as_secs_f64() * 1e6,
        downtime_us: m.downtime.as_secs_f64() * 1e6,
        decisions: m.decisions.clone(),
    };
    if summary.downtime_us >= report.downtime_us {
        report.estimated_downtime_us = summary.estimated_downtime_us;
    }
    report.stops.push(summary);
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
