//! `vdpa-emu bench datapath`: frames per second through the device as users run it, the device
//! in a `vdpa-emu serve` process and the driver model in this one, next to DPDK's vhost-user
//! pair in the same run.
//!
//! Each cell (direction x frame size x queue pairs x ring layout) starts its own `serve
//! --doorbell mmap` child; the driver model attaches over vfio-user with the [`Client`] (its
//! rings and buffers in a memfd the server maps with DMA_MAP, doorbells stored into the notify
//! page the server offers as a sparse mmap area), starts the device, turns used-buffer
//! notifications off on every data queue (a polling driver, as DPDK's virtio PMD) and then:
//!
//! - `tx`: sends bursts of 32 frames on every queue pair as fast as the rings take them; the
//!   server's port is `null` (counts and discards);
//! - `rx`: the server's port is `gen:SIZE` (sim_harness::ports::gen: a thread of serve fills
//!   the device's receive FIFO as fast as the device delivers, like DPDK's vhost PMD in
//!   txonly); the driver polls every RX queue and reposts its buffers;
//! - `rx-unix` (not in the default set): a generator thread of this process is the other end of
//!   the server's `unix:` port (a SOCK_DGRAM link, one frame per datagram, read by serve's port
//!   thread) and sends as fast as the server reads: the receive path with a host wire's cost;
//! - `loopback`: the server's port is `loopback`; the driver sends and receives, and the rate
//!   is the frames it gets back.
//!
//! The driver model works as the anchor's virtio-user side does under testpmd: it negotiates
//! no receive checksum offload (no GUEST_CSUM, so the device verifies no checksum); sending, it
//! writes each frame's virtio-net header and its first 42 bytes (Ethernet, IPv4, UDP headers:
//! `txonly` copies only that template into each mbuf) and posts the whole length; receiving,
//! it reads each frame's `num_buffers` and reposts the buffers without reading the frame
//! (`rxonly`). The device still reads and writes every byte of every frame.
//!
//! After `--warmup`, the driver's own counts, serve's CPU time (/proc/PID/stat utime + stime)
//! and the wall clock are read at both ends of the `--seconds` window. After the window the
//! driver drains and the device's counters (read through serve's control socket) must account
//! for every frame: TX frames the device took = frames the driver sent, RX frames the device
//! delivered = frames the driver received, and for loopback every frame the port took came
//! back (a frame the full receive FIFO refused is counted in `tx_port_drops`, so sent = TX
//! frames plus port drops). A cell where they do not agree is reported with `lost` > 0. The
//! last line serve logs for the session (`session statistics`: CPU per frame, doorbells
//! through shared memory, the doorbell engine's CPU) is kept in the JSON.
//!
//! `--pin`: serve runs on the last CPU this process may use (sched_setaffinity before exec, so
//! every thread of it: one core for the device), the driver (and the RX generator) on the
//! first. DPDK's testpmds always run one forwarding lcore each: the device side's on the
//! device's CPU, the driver side's on the driver's.
//!
//! The anchor ([`super::dpdk`]): per (direction, frame size, queue pairs) selected, `tx` and
//! `rx` only (DPDK's pair has no loopback), run before the cells of that frame size.

use super::dpdk::{self, DpdkRun, DpdkRunOptions, Testpmd};
use super::median;
use super::placement::{self, Placement, Probe, Sampler};
use super::serve_child::{self, stat_cpu, ServeChild, ServeChildError, ServeSpawn};
use crate::ctl::{CtlClient, Request, StatsReport};
use crate::driver::{DriverOptions, NetDriver};
use crate::frames;
use crate::vfio_user::Client;
use device::InterruptRecorder;
use serde::Serialize;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which way frames go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Tx,
    Rx,
    #[serde(rename = "rx-unix")]
    RxUnix,
    Loopback,
}

impl Dir {
    /// rx and rx-unix: the driver only receives.
    pub fn receives_only(self) -> bool {
        matches!(self, Dir::Rx | Dir::RxUnix)
    }

    pub fn name(self) -> &'static str {
        match self {
            Dir::Tx => "tx",
            Dir::Rx => "rx",
            Dir::RxUnix => "rx-unix",
            Dir::Loopback => "loopback",
        }
    }
}

/// Parses `tx` / `rx` / `loopback`.
pub fn parse_dir(s: &str) -> Result<Dir, String> {
    match s {
        "tx" => Ok(Dir::Tx),
        "rx" => Ok(Dir::Rx),
        "rx-unix" => Ok(Dir::RxUnix),
        "loopback" => Ok(Dir::Loopback),
        _ => Err(format!(
            "direction {s:?}: expected tx, rx, rx-unix or loopback"
        )),
    }
}

/// Ring layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Split,
    Packed,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Split => "split",
            Layout::Packed => "packed",
        }
    }
}

/// Parses `split` / `packed`.
pub fn parse_layout(s: &str) -> Result<Layout, String> {
    match s {
        "split" => Ok(Layout::Split),
        "packed" => Ok(Layout::Packed),
        _ => Err(format!("ring layout {s:?}: expected split or packed")),
    }
}

/// Whether and how the anchor runs.
#[derive(Clone, Debug)]
pub enum Anchor {
    /// Not run (`--no-dpdk`); the reason is printed.
    Skip(String),
    /// scripts/bench-dpdk.sh finds (or installs) testpmd.
    Script { path: PathBuf, no_install: bool },
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// The `vdpa-emu` binary to serve with.
    pub serve_bin: PathBuf,
    pub frames: Vec<usize>,
    pub dirs: Vec<Dir>,
    pub queue_pairs: Vec<u16>,
    pub layouts: Vec<Layout>,
    /// The measured window of each cell.
    pub seconds: f64,
    /// Traffic before the window.
    pub warmup: Duration,
    /// One CPU for serve, another for the driver.
    pub pin: bool,
    pub anchor: Anchor,
    /// More arguments for every `serve` (e.g. `--doorbell-poll busy=200`).
    pub serve_args: Vec<String>,
    /// Times the whole set (anchor and cells) is measured, one round after the other.
    pub rounds: usize,
    /// With `pin`: how often each window samples the distance between the two CPUs
    /// ([`placement`]); None: never.
    pub probe_period: Option<Duration>,
    /// With the probe: how many more times a window whose CPUs were mostly far apart is
    /// measured ([`placement::Gate`]).
    pub placement_retries: usize,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Serve(#[from] ServeChildError),
    #[error("{0}")]
    Client(#[from] crate::vfio_user::ClientError),
    #[error("driver: {0}")]
    Driver(#[from] crate::driver::DriverError),
    #[error("control socket: {0}")]
    Ctl(#[from] crate::ctl::CtlError),
    #[error("control socket: the stats reply carried no report")]
    NoStats,
    #[error("the server offered no mmap area for doorbells (mapped {0:?})")]
    NotMapped(Vec<(u32, u64, u64)>),
    #[error("--pin needs two CPUs; this process may use {0:?}")]
    PinCpus(Vec<usize>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad options: {0}")]
    Options(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

/// Device counters at the end of a cell (totals since the device started).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeviceCounts {
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// Frames the port refused (loopback: the receive FIFO was full).
    pub tx_port_drops: u64,
    /// Used-buffer interrupts sent (all queues).
    pub interrupts: u64,
    /// Doorbells rung (all queues).
    pub doorbells: u64,
    /// Of them, noticed in the shared-memory notify page.
    pub doorbells_mmap: u64,
}

impl DeviceCounts {
    fn from_stats(s: &StatsReport) -> Self {
        let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
        DeviceCounts {
            tx_frames: c("tx_frames"),
            rx_frames: c("rx_frames"),
            tx_port_drops: c("tx_port_drops"),
            interrupts: s.queues.iter().map(|q| q.interrupts).sum(),
            doorbells: s.queues.iter().map(|q| q.doorbells).sum(),
            doorbells_mmap: c("shared_doorbells"),
        }
    }
}

/// One cell's result.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub dir: Dir,
    pub frame: usize,
    pub queue_pairs: u16,
    pub layout: Layout,
    /// The features the driver model negotiated, hex (the anchor's offloads and the layout's
    /// bit, as far as serve offers them).
    pub features: String,
    /// Wall time of the window, seconds.
    pub seconds: f64,
    /// Frames carried in the window (tx: sent; rx, loopback: received by the driver).
    pub window_frames: u64,
    pub mpps: f64,
    /// Frame bytes (Ethernet header to payload end, no FCS) x 8 x rate.
    pub gbps: f64,
    /// serve's CPU time over the window, % of one core.
    pub server_cpu_percent: f64,
    /// serve's CPU time over the window per frame carried, microseconds.
    pub server_cpu_us_per_frame: Option<f64>,
    /// serve's doorbell engine: its wall time handling kicks (servicing queues, waiting for
    /// the device lock included; not its polling or sleeps) per frame over the session,
    /// microseconds (`engine_busy_us_per_frame` of the session statistics). In `tx` that is
    /// the device's whole TX work per frame; in `rx` only the deliveries a refill kick
    /// started (serve's generator thread delivers the rest).
    pub engine_busy_us_per_frame: Option<f64>,
    /// Totals since start, after draining: what the driver sent and received.
    pub driver_sent: u64,
    pub driver_received: u64,
    /// rx-unix: frames this process's generator sent into serve's port.
    pub generator_sent: Option<u64>,
    /// The device's counters after draining.
    pub device: DeviceCounts,
    /// Frames the counters do not account for (0 when the device and driver agree).
    pub lost: u64,
    /// Why the device was in DEVICE_NEEDS_RESET at the end, if it was (the control socket's
    /// `stats` fault).
    pub fault: Option<String>,
    /// The driver's loop over the window: how often it waited for the device.
    pub driver_loop: DriverLoop,
    /// This cell's rate / the DPDK anchor's for the same direction, frame and queue pairs.
    pub vs_dpdk: Option<f64>,
    /// serve's `session statistics` line for this cell's session (JSON), if it logged one.
    pub session: Option<serde_json::Value>,
    /// Which round measured it (0: the first); `vs_dpdk` is against that round's anchor.
    pub round: usize,
    /// With `--pin`: how far apart the two CPUs were over the window ([`placement`]).
    pub placement: Option<Placement>,
    /// Whether the anchor run `vs_dpdk` divides by saw the CPUs far apart for about the same
    /// share of its window ([`placement::alike`]); false: the ratio compares two different
    /// machines. None without a ratio or a probe.
    pub placement_alike: Option<bool>,
    /// Windows measured for this cell: more than 1 when the CPUs were far apart in the
    /// earlier ones ([`DatapathOptions::placement_retries`]); this is the last.
    pub attempts: usize,
}

/// A cell over every round (`--rounds` above 1): medians, and the spread the host's noise
/// gave. The ratio is each round's own (ours / that round's anchor), so a host that slows
/// both down in one round does not move it.
#[derive(Clone, Debug, Serialize)]
pub struct CellSummary {
    pub dir: Dir,
    pub frame: usize,
    pub queue_pairs: u16,
    pub layout: Layout,
    pub rounds: usize,
    pub mpps_median: f64,
    pub mpps_min: f64,
    pub mpps_max: f64,
    /// The anchor's median rate for the same direction, frame and queue pairs.
    pub dpdk_mpps_median: Option<f64>,
    pub vs_dpdk_median: Option<f64>,
    pub vs_dpdk_min: Option<f64>,
    pub vs_dpdk_max: Option<f64>,
    /// The median ratio over the rounds whose cell and anchor saw alike CPU placement
    /// ([`Cell::placement_alike`] not false), and how many rounds that is.
    pub vs_dpdk_alike_median: Option<f64>,
    pub alike_rounds: usize,
}

impl Cell {
    /// What names the cell across rounds.
    fn key(&self) -> (Dir, usize, u16, Layout) {
        (self.dir, self.frame, self.queue_pairs, self.layout)
    }
}

impl DpdkRun {
    /// Whether this anchor run measured `c`'s direction, frame size and queue pairs (in any
    /// round).
    fn anchors(&self, c: &Cell) -> bool {
        self.dir == c.dir.name() && self.frame == c.frame && self.queue_pairs == c.queue_pairs
    }
}

/// One [`CellSummary`] per distinct cell of `cells`, in first-seen order.
pub fn summarize(cells: &[Cell], anchors: &[DpdkRun]) -> Vec<CellSummary> {
    let mut out: Vec<CellSummary> = Vec::new();
    for c in cells {
        if out
            .iter()
            .any(|s| (s.dir, s.frame, s.queue_pairs, s.layout) == c.key())
        {
            continue;
        }
        let mine: Vec<&Cell> = cells.iter().filter(|o| o.key() == c.key()).collect();
        let rates: Vec<f64> = mine.iter().map(|o| o.mpps).collect();
        let ratios: Vec<f64> = mine.iter().filter_map(|o| o.vs_dpdk).collect();
        let alike: Vec<f64> = mine
            .iter()
            .filter(|o| o.placement_alike != Some(false))
            .filter_map(|o| o.vs_dpdk)
            .collect();
        let anchor: Vec<f64> = anchors
            .iter()
            .filter(|a| a.anchors(c))
            .map(|a| a.pps / 1e6)
            .collect();
        let min = |v: &[f64]| v.iter().copied().reduce(f64::min);
        let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
        out.push(CellSummary {
            dir: c.dir,
            frame: c.frame,
            queue_pairs: c.queue_pairs,
            layout: c.layout,
            rounds: mine.len(),
            mpps_median: round(median(&rates).unwrap_or(0.0), 3),
            mpps_min: min(&rates).unwrap_or(0.0),
            mpps_max: max(&rates).unwrap_or(0.0),
            dpdk_mpps_median: median(&anchor).map(|v| round(v, 3)),
            vs_dpdk_median: median(&ratios).map(|v| round(v, 3)),
            vs_dpdk_min: min(&ratios),
            vs_dpdk_max: max(&ratios),
            vs_dpdk_alike_median: median(&alike).map(|v| round(v, 3)),
            alike_rounds: alike.len(),
        });
    }
    out
}

/// The anchor's state in a report.
#[derive(Clone, Debug, Serialize)]
pub struct AnchorReport {
    /// The testpmd used, when the anchor ran.
    pub testpmd: Option<Testpmd>,
    /// Why there is no anchor (or why a run of it failed).
    pub missing: Option<String>,
    pub runs: Vec<DpdkRun>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct DatapathReport {
    /// The machine it ran on.
    pub host: super::host::HostInfo,
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// (device CPU, driver CPU) with `--pin`.
    pub pinned: Option<(usize, usize)>,
    /// Arguments given to every serve beyond the cell's own.
    pub serve_args: Vec<String>,
    pub anchor: AnchorReport,
    pub cells: Vec<Cell>,
    pub rounds: usize,
    /// Every cell over the rounds (empty for one round).
    pub summary: Vec<CellSummary>,
    /// With `--pin`: where "far" starts, ns ([`placement::far_threshold`]).
    pub far_ns: Option<f64>,
    /// With the probe: the samples taken before the first window, with nothing else running.
    pub calibration: Option<Placement>,
    /// Windows (ours and the anchor's) measured again because the CPUs were far apart.
    pub retried: usize,
}

/// Bytes of each frame the driver writes per send: Ethernet, IPv4 and UDP headers, what
/// testpmd's txonly copies into each mbuf (app/test-pmd/txonly.c pkt_burst_prepare).
const TXONLY_HEADERS: usize = 14 + 20 + 8;

/// The features the driver model asks for: its defaults without VIRTIO_NET_F_GUEST_CSUM, as
/// the anchor's virtio-user negotiates them. DPDK's virtio PMD asks for GUEST_CSUM only when
/// the application enables a TCP or UDP RX checksum offload (drivers/net/virtio/
/// virtio_ethdev.c, virtio_dev_configure), and testpmd enables none by default ("Rx
/// offloads=0x0" in its log). With GUEST_CSUM the device looks at every received frame's
/// checksum for DATA_VALID (virtio 1.2 5.1.6.4.1), work the anchor's vhost side never does:
/// 5-7% of the 64-byte RX cells (docs/bench.md). The in-process criterion benches
/// (sim-harness/benches/datapath.rs) negotiate them too.
pub fn anchor_features() -> u64 {
    bar_registers::virtio::default_driver_features()
        & !(1u64 << bar_registers::virtio::bits::GUEST_CSUM)
}

/// Frames per burst the driver hands to a queue (testpmd's default burst).
const BURST: usize = 32;

fn ctl_stats(c: &mut CtlClient) -> Result<StatsReport, DatapathError> {
    c.call(&Request::Stats {})?
        .stats
        .ok_or(DatapathError::NoStats)
}

/// The JSON object of the `session_stats=` field of serve's `session statistics` log line.
pub fn parse_session_line(log: &str) -> Option<serde_json::Value> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("session statistics"))?;
    let start = line.find("session_stats=")? + "session_stats=".len();
    let rest = &line[start..];
    let mut depth = 0usize;
    for (i, ch) in rest.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return serde_json::from_str(&rest[..=i]).ok();
                }
            }
            _ => {}
        }
    }
    None
}

/// What the driver's loop did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DriverLoop {
    pub sent: u64,
    pub received: u64,
    /// TX bursts offered, and of them those the ring did not take whole (it was full: the
    /// driver waited for the device to complete chains).
    pub tx_bursts: u64,
    pub tx_bursts_short: u64,
    /// RX polls, and of them those that found nothing (the driver waited for the device).
    pub rx_polls: u64,
    pub rx_polls_empty: u64,
}

impl DriverLoop {
    /// Of the driver's ring operations, the share that found the device behind (TX bursts the
    /// full ring did not take whole, RX polls that found nothing), %.
    pub fn waiting_percent(&self) -> f64 {
        let ops = self.tx_bursts + self.rx_polls;
        if ops == 0 {
            return 0.0;
        }
        (self.tx_bursts_short + self.rx_polls_empty) as f64 * 100.0 / ops as f64
    }

    fn add(&mut self, o: &DriverLoop) {
        self.sent += o.sent;
        self.received += o.received;
        self.tx_bursts += o.tx_bursts;
        self.tx_bursts_short += o.tx_bursts_short;
        self.rx_polls += o.rx_polls;
        self.rx_polls_empty += o.rx_polls_empty;
    }
}

/// Drives the rings for `dur`.
fn pump(
    drv: &mut NetDriver,
    dir: Dir,
    pairs: u16,
    burst: &[&[u8]],
    dur: Duration,
) -> Result<DriverLoop, DatapathError> {
    let mut l = DriverLoop::default();
    let t0 = Instant::now();
    let mut i = 0u32;
    loop {
        for p in 0..pairs {
            if !dir.receives_only() {
                let n = drv.send(p, burst)?;
                l.sent += n as u64;
                l.tx_bursts += 1;
                l.tx_bursts_short += u64::from(n < burst.len());
            }
            if dir != Dir::Tx {
                // Counted, not read: the anchor's virtio-user side runs testpmd's rxonly.
                let n = drv.recv_count(p)?;
                l.received += n as u64;
                l.rx_polls += 1;
                l.rx_polls_empty += u64::from(n == 0);
            }
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(16) && t0.elapsed() >= dur {
            return Ok(l);
        }
    }
}

/// The other end of serve's `unix:` port, sending frames until stopped.
struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Generator {
    fn start(
        own: PathBuf,
        peer: PathBuf,
        frames: Vec<Vec<u8>>,
        cpu: Option<usize>,
    ) -> Result<Self, DatapathError> {
        let sock =
            UnixDatagram::bind(&own).map_err(io_err(format!("binding {}", own.display())))?;
        sock.connect(&peer)
            .map_err(io_err(format!("connecting to {}", peer.display())))?;
        // A blocking send waits while serve's receive queue is full: the generator runs at the
        // rate serve reads, and the socket drops nothing.
        sock.set_write_timeout(Some(Duration::from_millis(100)))
            .map_err(io_err("socket timeout"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let thread = std::thread::Builder::new()
            .name("bench-rx-gen".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    let _ = serve_child::pin_current(c);
                }
                let mut i = 0usize;
                while !st.load(Ordering::Relaxed) {
                    if sock.send(&frames[i % frames.len()]).is_ok() {
                        se.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                }
                let _ = std::fs::remove_file(&own);
            })
            .map_err(io_err("starting the generator thread"))?;
        Ok(Generator {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    fn finish(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Restores this thread's CPU set when dropped.
struct Affinity(Vec<usize>);

impl Drop for Affinity {
    fn drop(&mut self) {
        let _ = serve_child::set_affinity(&self.0);
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Measures one cell against its own `serve`.
pub fn measure(
    o: &DatapathOptions,
    dir: Dir,
    frame: usize,
    pairs: u16,
    layout: Layout,
    cpus: Option<(usize, usize)>,
    probe: Option<Probe>,
) -> Result<Cell, DatapathError> {
    let tag = format!("datapath-{}-{frame}-{pairs}-{}", dir.name(), layout.name());
    let tmp_dir = std::env::temp_dir().join(format!("vdpa-emu-bench-{tag}-{}", std::process::id()));
    let link = tmp_dir.join("link");
    let port = match dir {
        Dir::Tx => "null".to_string(),
        Dir::Rx => format!("gen:{frame}"),
        Dir::RxUnix => format!("unix:{}", link.display()),
        Dir::Loopback => "loopback".to_string(),
    };
    let mut args: Vec<String> = [
        "--queue-pairs",
        &pairs.to_string(),
        "--port",
        &port,
        "--doorbell",
        "mmap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(o.serve_args.iter().cloned());
    let mut serve = serve_child::spawn(&ServeSpawn {
        bin: &o.serve_bin,
        tag: &tag,
        args,
        log: Some("info"),
        cpu: cpus.map(|c| c.0),
    })?;
    let _restore = match cpus {
        Some((_, drv_cpu)) => {
            let all = serve_child::allowed_cpus().map_err(io_err("sched_getaffinity"))?;
            serve_child::pin_current(drv_cpu).map_err(io_err("sched_setaffinity"))?;
            Some(Affinity(all))
        }
        None => None,
    };
    let pid = serve.pid();
    let mut ctl = CtlClient::connect(
        &crate::ctl::default_ctl_path(&serve.socket),
        Duration::from_secs(5),
    )?;
    let c = Arc::new(Client::connect(&serve.socket)?);
    if c.mapped_areas().is_empty() {
        return Err(DatapathError::NotMapped(c.mapped_areas()));
    }
    let n = c
        .irq_info(vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX)?
        .count;
    let irq = Arc::new(InterruptRecorder::new(n as u16));
    let pump_irqs = c.wire_interrupts(irq.clone())?;
    let dopts = DriverOptions {
        queue_pairs: pairs,
        // Headers only, as the anchor's virtio-user side runs testpmd's txonly.
        tx_copy_prefix: Some(TXONLY_HEADERS),
        features: anchor_features(),
        ..DriverOptions::default()
    }
    .with_packed(layout == Layout::Packed);
    let mut drv = NetDriver::new(c.clone(), irq, dopts)?;
    drv.start()?;
    let negotiated = drv.features;
    // A polling driver: no used-buffer notifications on the data queues.
    let mem = drv.mem.clone();
    for q in 0..2 * pairs {
        if drv.is_packed() {
            drv.packed_ring(q)?.set_interrupts(&mem, false)?;
        } else {
            drv.ring(q)?.set_no_interrupt(&mem, true)?;
        }
    }
    let mac = drv.mac()?;
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(12);
    // Frames of 64 streams (different flows, for a device that spreads them over queues).
    let frames: Vec<Vec<u8>> = (0..64u16)
        .map(|s| frames::build(mac, mac, s, 0, frame, &mut rng))
        .collect();
    let burst: Vec<&[u8]> = (0..BURST)
        .map(|i| frames[i % frames.len()].as_slice())
        .collect();

    let mut generator = match dir {
        Dir::RxUnix => {
            let mut a = link.as_os_str().to_owned();
            a.push(".a");
            let mut b = link.as_os_str().to_owned();
            b.push(".b");
            Some(Generator::start(
                b.into(),
                a.into(),
                frames.clone(),
                cpus.map(|c| c.1),
            )?)
        }
        _ => None,
    };

    let mut total = pump(&mut drv, dir, pairs, &burst, o.warmup)?;
    let sampler = probe
        .map(Sampler::start)
        .transpose()
        .map_err(io_err("starting the CPU distance probe"))?;
    let (cpu0, t0) = (stat_cpu(pid)?, Instant::now());
    let window = pump(
        &mut drv,
        dir,
        pairs,
        &burst,
        Duration::from_secs_f64(o.seconds),
    )?;
    let (cpu1, wall) = (stat_cpu(pid)?, t0.elapsed());
    let placement = sampler.map(Sampler::finish);
    total.add(&window);
    let (sent, mut received) = (total.sent, total.received);
    let generator_sent = generator.as_mut().map(Generator::finish);

    // Drain until the device's counters stand still and agree with the driver (and, looped
    // back, until every frame the port took is delivered: the FIFO is empty). In the rx
    // directions the source does not stop (gen) or has frames queued (rx-unix): the driver
    // takes what was delivered without posting buffers again, so delivery ends once the
    // posted buffers are used up. (Each frame fits one 2 KiB buffer.)
    let drain0 = Instant::now();
    let mut last: Option<DeviceCounts> = None;
    let mut fault: Option<String>;
    let dev = loop {
        for p in 0..pairs {
            drv.reclaim_tx(p)?;
            if dir.receives_only() {
                let ring = drv.any_ring(crate::driver::net::rxq(p))?;
                while ring.pop_used(&mem)?.is_some() {
                    received += 1;
                }
            } else if dir != Dir::Tx {
                received += drv.recv(p)?.len() as u64;
            }
        }
        let report = ctl_stats(&mut ctl)?;
        let now = DeviceCounts::from_stats(&report);
        fault = report.fault.clone();
        let settled = last.as_ref() == Some(&now)
            && now.rx_frames == received
            && (dir.receives_only() || now.tx_frames + now.tx_port_drops == sent)
            && (dir != Dir::Loopback || now.tx_frames == now.rx_frames);
        if settled || drain0.elapsed() > Duration::from_secs(3) {
            break now;
        }
        last = Some(now);
        std::thread::sleep(Duration::from_millis(30));
    };
    drv.stop()?;
    drop(drv);
    drop(pump_irqs);
    drop(c);
    drop(ctl);
    // serve logs the session's statistics when the client is gone; SIGTERM ends it after.
    std::thread::sleep(Duration::from_millis(100));
    serve.terminate(Duration::from_secs(5));
    let session = log_of(&serve).as_deref().and_then(parse_session_line);
    drop(serve);
    let _ = std::fs::remove_dir_all(&tmp_dir);

    // The device counts a TX frame its port refused in tx_port_drops, not in tx_frames.
    let taken = dev.tx_frames + dev.tx_port_drops;
    let lost = match dir {
        Dir::Tx => sent.abs_diff(taken),
        Dir::Rx | Dir::RxUnix => received.abs_diff(dev.rx_frames) + sent,
        Dir::Loopback => {
            sent.abs_diff(taken)
                + received.abs_diff(dev.rx_frames)
                + dev.tx_frames.abs_diff(dev.rx_frames)
        }
    };
    let window_frames = if dir == Dir::Tx {
        window.sent
    } else {
        window.received
    };
    let secs = wall.as_secs_f64();
    let pps = window_frames as f64 / secs;
    let cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    Ok(Cell {
        dir,
        frame,
        queue_pairs: pairs,
        layout,
        features: format!("{negotiated:#x}"),
        seconds: round(secs, 3),
        window_frames,
        mpps: round(pps / 1e6, 3),
        gbps: round(pps * frame as f64 * 8.0 / 1e9, 3),
        server_cpu_percent: round(cpu / secs * 100.0, 1),
        server_cpu_us_per_frame: (window_frames > 0)
            .then(|| round(cpu * 1e6 / window_frames as f64, 3)),
        engine_busy_us_per_frame: session
            .as_ref()
            .and_then(|v| v.get("engine_busy_us_per_frame")?.as_f64()),
        driver_sent: sent,
        driver_received: received,
        generator_sent,
        device: dev,
        lost,
        vs_dpdk: None,
        driver_loop: window,
        fault,
        session,
        round: 0,
        placement,
        placement_alike: None,
        attempts: 1,
    })
}

fn log_of(s: &ServeChild) -> Option<String> {
    std::fs::read_to_string(s.log.as_ref()?).ok()
}

/// Runs the matrix: per frame size, the anchor runs of that size, then our cells.
pub fn run(o: &DatapathOptions) -> Result<DatapathReport, DatapathError> {
    if o.frames.is_empty() || o.dirs.is_empty() || o.queue_pairs.is_empty() || o.layouts.is_empty()
    {
        return Err(DatapathError::Options(
            "every one of --frame, --dir, --qp and --layout needs a value".into(),
        ));
    }
    if let Some(f) = o.frames.iter().find(|&&f| !(60..=1514).contains(&f)) {
        return Err(DatapathError::Options(format!(
            "frame size {f}: expected 60..=1514 bytes (Ethernet header to payload end)"
        )));
    }
    if !(1..=MAX_ROUNDS).contains(&o.rounds) {
        return Err(DatapathError::Options(format!(
            "--rounds {}: expected 1..={MAX_ROUNDS}",
            o.rounds
        )));
    }
    if !(o.seconds > 0.0 && o.seconds <= 600.0) {
        return Err(DatapathError::Options(format!(
            "--seconds {}: expected > 0 and <= 600",
            o.seconds
        )));
    }
    let cpus = if o.pin {
        let all = serve_child::allowed_cpus().map_err(io_err("sched_getaffinity"))?;
        match (all.first(), all.last()) {
            (Some(&d), Some(&s)) if s != d => Some((s, d)),
            _ => return Err(DatapathError::PinCpus(all)),
        }
    } else {
        None
    };
    let mut anchor = AnchorReport {
        testpmd: None,
        missing: None,
        runs: Vec::new(),
    };
    match &o.anchor {
        Anchor::Skip(why) => anchor.missing = Some(why.clone()),
        Anchor::Script { path, no_install } => match dpdk::locate(path, *no_install) {
            Ok(t) => anchor.testpmd = Some(t),
            Err(e) => anchor.missing = Some(e.to_string()),
        },
    }
    let anchor_cpus = cpus.unwrap_or_else(|| {
        let all = serve_child::allowed_cpus().unwrap_or_default();
        (
            all.last().copied().unwrap_or(0),
            all.first().copied().unwrap_or(0),
        )
    });
    let secs_whole = o.seconds.ceil().max(1.0) as usize;
    // Pinned, every window (ours and the anchor's) samples the distance between the two CPUs.
    let probe = cpus
        .zip(o.probe_period)
        .map(|(c, period)| Probe::between(c, period));
    let calibration = probe
        .map(|p| placement::calibrate(p.cpus))
        .transpose()
        .map_err(io_err("starting the CPU distance probe"))?;
    let mut gate = calibration
        .as_ref()
        .map(|c| placement::Gate::new(c, o.placement_retries));
    let mut cells = Vec::new();
    // Round after round of the whole set, so each round's ratio compares ours and the anchor
    // measured minutes apart at most, and a slow spell of the host hits a round, not a cell.
    for (round_no, &frame) in (0..o.rounds).flat_map(|r| o.frames.iter().map(move |f| (r, f))) {
        if let Some(t) = anchor.testpmd.clone() {
            for &dir in o.dirs.iter().filter(|d| matches!(d, Dir::Tx | Dir::Rx)) {
                for &q in &o.queue_pairs {
                    tracing::info!(dir = dir.name(), frame, qp = q, "DPDK anchor");
                    let ro = DpdkRunOptions {
                        dir: dir.name(),
                        frame,
                        queue_pairs: q,
                        warmup: 1,
                        seconds: secs_whole,
                        cpus: anchor_cpus,
                        probe,
                    };
                    let (r, attempts) = placement::until_kept(
                        gate.as_mut(),
                        "anchor",
                        || dpdk::run(&t, &ro),
                        |r| r.placement.as_ref(),
                    );
                    match r {
                        Ok(r) => anchor.runs.push(DpdkRun {
                            round: round_no,
                            attempts,
                            ..r
                        }),
                        Err(e) => {
                            let why = format!("DPDK {} {frame} B qp {q}: {e}", dir.name());
                            tracing::warn!("{why}");
                            anchor.missing.get_or_insert(why);
                        }
                    }
                }
            }
        }
        for &dir in &o.dirs {
            for &q in &o.queue_pairs {
                for &layout in &o.layouts {
                    tracing::info!(
                        dir = dir.name(),
                        frame,
                        qp = q,
                        layout = layout.name(),
                        "cell"
                    );
                    let (c, attempts) = placement::until_kept(
                        gate.as_mut(),
                        "cell",
                        || measure(o, dir, frame, q, layout, cpus, probe),
                        |c| c.placement.as_ref(),
                    );
                    let mut c = c?;
                    c.attempts = attempts;
                    c.round = round_no;
                    c.vs_dpdk = anchor
                        .runs
                        .iter()
                        .find(|r| r.anchors(&c) && r.round == c.round)
                        .filter(|r| r.pps > 0.0)
                        .map(|r| round(c.mpps * 1e6 / r.pps, 3));
                    cells.push(c);
                }
            }
        }
    }
    let far_ns = classify_placements(calibration.as_ref(), &mut cells, &mut anchor.runs);
    Ok(DatapathReport {
        host: super::host::HostInfo::probe(),
        far_ns,
        calibration,
        retried: gate.map_or(0, |g| g.retried),
        seconds: o.seconds,
        warmup_seconds: o.warmup.as_secs_f64(),
        pinned: cpus,
        serve_args: o.serve_args.clone(),
        summary: if o.rounds > 1 {
            summarize(&cells, &anchor.runs)
        } else {
            Vec::new()
        },
        rounds: o.rounds,
        anchor,
        cells,
    })
}

/// Classifies every window's CPU distance samples against the run's far threshold
/// ([`placement::far_threshold`] of the calibration's and every window's samples) and notes,
/// for each cell with a ratio, whether its anchor run saw alike placement. Returns the
/// threshold.
fn classify_placements(
    calibration: Option<&Placement>,
    cells: &mut [Cell],
    runs: &mut [DpdkRun],
) -> Option<f64> {
    let threshold = placement::far_threshold(
        cells
            .iter()
            .filter_map(|c| c.placement.as_ref())
            .chain(runs.iter().filter_map(|r| r.placement.as_ref()))
            .chain(calibration)
            .flat_map(|p| p.samples_ns.iter().copied()),
    )?;
    for p in cells
        .iter_mut()
        .filter_map(|c| c.placement.as_mut())
        .chain(runs.iter_mut().filter_map(|r| r.placement.as_mut()))
    {
        p.classify(threshold);
    }
    for c in cells.iter_mut().filter(|c| c.vs_dpdk.is_some()) {
        let anchor = runs.iter().find(|r| r.anchors(c) && r.round == c.round);
        c.placement_alike = match (&c.placement, anchor.and_then(|a| a.placement.as_ref())) {
            (Some(mine), Some(theirs)) => Some(placement::alike(mine, theirs)),
            _ => None,
        };
    }
    Some(threshold)
}

/// Most rounds `--rounds` takes.
pub const MAX_ROUNDS: usize = 20;

/// The report as a table.
pub fn table(r: &DatapathReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vdpa-emu bench datapath: serve (one process) <- vfio-user -> driver model (this process, as testpmd txonly/rxonly: frame headers written, received frames counted unread); {} s window after {} s warmup; {}",
        r.seconds,
        r.warmup_seconds,
        match r.pinned {
            Some((d, c)) => format!("serve pinned to CPU {d}, driver to CPU {c}"),
            None => "not pinned".into(),
        }
    );
    let _ = writeln!(s, "host: {}", r.host);
    if !r.serve_args.is_empty() {
        let _ = writeln!(s, "serve {}", r.serve_args.join(" "));
    }
    match (&r.anchor.testpmd, &r.anchor.missing) {
        (Some(t), _) => {
            let _ = writeln!(
                s,
                "anchor: DPDK {} testpmd ({}, {}): vhost PMD <-> virtio-user, one forwarding core each{}",
                t.version,
                t.source,
                t.bin,
                r.anchor
                    .missing
                    .as_ref()
                    .map(|m| format!("; FAILED: {m}"))
                    .unwrap_or_default()
            );
        }
        (None, Some(m)) => {
            let _ = writeln!(s, "anchor: MISSING, no ratios: {m}");
        }
        (None, None) => {}
    }
    let round_of = |n: usize| {
        if r.rounds > 1 {
            format!(" round {}", n + 1)
        } else {
            String::new()
        }
    };
    for a in &r.anchor.runs {
        let _ = writeln!(
            s,
            "  DPDK {:<3} {:>5} B qp {}{}: {:>7.3} Mpps {:>7.3} Gbit/s  vhost side CPU/frame {} us{}",
            a.dir,
            a.frame,
            a.queue_pairs,
            round_of(a.round),
            a.pps / 1e6,
            a.pps * a.frame as f64 * 8.0 / 1e9,
            a.device_cpu_us_per_frame
                .map_or("-".into(), |v| format!("{v:.3}")),
            a.placement.as_ref().map_or(String::new(), |p| format!(
                "  c2c {} ns, far {}",
                p.median_ns.map_or("-".into(), |v| format!("{v:.0}")),
                p.far_percent.map_or("-".into(), |f| format!("{f:.0}%"))
            ))
        );
    }
    let _ = writeln!(
        s,
        "\n{:<8} {:>5} {:>2} {:<6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9} {:>4} {:>5} {:>5}",
        "dir",
        "frame",
        "qp",
        "ring",
        "Mpps",
        "Gbit/s",
        "DPDK Mpps",
        "vs DPDK",
        "serve CPU",
        "us/frm",
        "busy/frm",
        "drv waits",
        "c2c",
        "far",
        "lost"
    );
    for (i, c) in r.cells.iter().enumerate() {
        if r.rounds > 1 && (i == 0 || r.cells[i - 1].round != c.round) {
            let _ = writeln!(s, "-- round {}", c.round + 1);
        }
        let a = r
            .anchor
            .runs
            .iter()
            .find(|a| a.anchors(c) && a.round == c.round);
        let _ = writeln!(
            s,
            "{:<8} {:>5} {:>2} {:<6} {:>8.3} {:>8.3} {:>9} {:>9} {:>8.0}% {:>7} {:>8} {:>8.1}% {:>4} {:>5} {:>5}",
            c.dir.name(),
            c.frame,
            c.queue_pairs,
            c.layout.name(),
            c.mpps,
            c.gbps,
            a.map_or("-".into(), |a| format!("{:.3}", a.pps / 1e6)),
            c.vs_dpdk.map_or("-".into(), |v| format!(
                "{v:.2}x{}",
                if c.placement_alike == Some(false) { "*" } else { "" }
            )),
            c.server_cpu_percent,
            c.server_cpu_us_per_frame
                .map_or("-".into(), |v| format!("{v:.3}")),
            c.engine_busy_us_per_frame
                .map_or("-".into(), |v| format!("{v:.3}")),
            c.driver_loop.waiting_percent(),
            c.placement
                .as_ref()
                .and_then(|p| p.median_ns)
                .map_or("-".into(), |v| format!("{v:.0}")),
            c.placement
                .as_ref()
                .and_then(|p| p.far_percent)
                .map_or("-".into(), |f| format!("{f:.0}%")),
            c.lost
        );
        if let Some(f) = &c.fault {
            let _ = writeln!(s, "  ^ the device faulted (DEVICE_NEEDS_RESET): {f}");
        }
    }
    if r.retried > 0 {
        let _ = writeln!(
            s,
            "{} windows were measured again because the two CPUs were far apart (--placement-retries)",
            r.retried
        );
    }
    if r.pinned.is_some() {
        let _ = writeln!(
            s,
            "c2c: median one-way cache-line transfer between the two CPUs over the window; far: share of the window it took over {} (3x the run's closest); * the anchor's far share differed by more than 25 points: that ratio compares two placements of the machine",
            r.far_ns.map_or("-".into(), |v| format!("{v:.0} ns"))
        );
    }
    if !r.summary.is_empty() {
        let _ = writeln!(
            s,
            "\nover {} rounds (median, min-max; the ratio is each round's ours / that round's DPDK):",
            r.rounds
        );
        let _ = writeln!(
            s,
            "{:<8} {:>5} {:>2} {:<6} {:>8} {:>15} {:>9} {:>9} {:>13} {:>12}",
            "dir",
            "frame",
            "qp",
            "ring",
            "Mpps",
            "min-max",
            "DPDK Mpps",
            "vs DPDK",
            "min-max",
            "alike rounds"
        );
        let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        for c in &r.summary {
            let _ = writeln!(
                s,
                "{:<8} {:>5} {:>2} {:<6} {:>8.3} {:>15} {:>9} {:>9} {:>13} {:>12}",
                c.dir.name(),
                c.frame,
                c.queue_pairs,
                c.layout.name(),
                c.mpps_median,
                format!("{:.3}-{:.3}", c.mpps_min, c.mpps_max),
                opt(c.dpdk_mpps_median, 3),
                c.vs_dpdk_median.map_or("-".into(), |v| format!("{v:.2}x")),
                match (c.vs_dpdk_min, c.vs_dpdk_max) {
                    (Some(a), Some(b)) => format!("{a:.2}-{b:.2}x"),
                    _ => "-".into(),
                },
                c.vs_dpdk_alike_median
                    .map_or("-".into(), |v| format!("{v:.2}x ({})", c.alike_rounds))
            );
        }
    }
    s
}

/// `vdpa-emu bench datapath` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DatapathArgs {
    /// Frame sizes in bytes (Ethernet header to payload end).
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub frame: Vec<usize>,
    /// Directions: tx (driver sends, port discards), rx (a generator in serve fills the
    /// receive side), loopback (TX looped to RX), rx-unix (frames sent from this process over
    /// serve's unix: port).
    #[arg(long, value_delimiter = ',', default_value = "tx,rx,loopback", value_parser = parse_dir)]
    pub dir: Vec<Dir>,
    /// Queue pairs.
    #[arg(long, value_delimiter = ',', default_value = "1,4", value_parser = clap::value_parser!(u16).range(1..=32))]
    pub qp: Vec<u16>,
    /// Ring layouts.
    #[arg(long, value_delimiter = ',', default_value = "split,packed", value_parser = parse_layout)]
    pub layout: Vec<Layout>,
    /// Measured window per cell, seconds (the DPDK anchor: rounded up to whole seconds).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Traffic before each window, milliseconds.
    #[arg(long, default_value_t = 300)]
    pub warmup_ms: u64,
    /// serve on one CPU (the last this process may use), the driver on another (the first).
    #[arg(long)]
    pub pin: bool,
    /// Skip the DPDK anchor (no ratios are printed).
    #[arg(long)]
    pub no_dpdk: bool,
    /// The script that finds or installs dpdk-testpmd (default: the repository's).
    #[arg(long)]
    pub dpdk_script: Option<PathBuf>,
    /// Never install DPDK (use what is there).
    #[arg(long)]
    pub no_install: bool,
    /// The doorbell engine's polling policy for every `serve` (`serve --doorbell-poll`). The
    /// default gives the device its core as the anchor's vhost PMD has one: after a kick the
    /// engine polls with CPU pauses for 20 us before it falls back to serve's sleeps (serve's
    /// own default is spin=0, for TCG guests that need the core; docs/doorbells.md). Ignored
    /// when a `--serve-arg` sets `--doorbell-poll`.
    #[arg(long, default_value = "spin=20")]
    pub doorbell_poll: String,
    /// An argument for every `serve` started (repeat it; e.g. `--serve-arg=--doorbell-poll
    /// --serve-arg=busy=200`).
    #[arg(long, allow_hyphen_values = true)]
    pub serve_arg: Vec<String>,
    /// Measure the whole set this many times, one round after the other (each round runs
    /// the anchor, then our cells), and add medians and min-max per cell: on a noisy host one
    /// round's ratio can be off by 2x (docs/bench.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_ROUNDS as i64))]
    pub rounds: u16,
    /// With --pin: every window (ours and the anchor's) samples the one-way cache-line
    /// transfer time between the two CPUs this often, milliseconds (0: never). Each sample
    /// takes both CPUs for 0.05-0.3 ms. On a VM the host moves vCPUs between dies, and the
    /// rates follow (docs/bench.md, "Where the two modes come from").
    #[arg(long, default_value_t = 50)]
    pub c2c_probe_ms: u64,
    /// With the probe: measure a window (ours or the anchor's) up to this many more times
    /// when more than 25% of its samples found the two CPUs far apart, so both sides are
    /// measured on the same placement of the machine (the last attempt is kept; each is
    /// counted).
    #[arg(long, default_value_t = 2)]
    pub placement_retries: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The repository's scripts/bench-dpdk.sh (this crate lives in sim-harness/).
pub fn default_dpdk_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("bench-dpdk.sh")
}

/// The arguments for every serve: `--doorbell-poll` from the bench's own option unless a
/// `--serve-arg` sets it, then the `--serve-arg`s.
fn serve_args(a: &DatapathArgs) -> Vec<String> {
    let mut v = Vec::new();
    if !a.serve_arg.iter().any(|s| s.starts_with("--doorbell-poll")) {
        v.push(format!("--doorbell-poll={}", a.doorbell_poll));
    }
    v.extend(a.serve_arg.iter().cloned());
    v
}

/// `vdpa-emu bench datapath`.
pub fn cli(a: &DatapathArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let serve_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vdpa-emu bench datapath: cannot find the vdpa-emu binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let anchor = if a.no_dpdk {
        Anchor::Skip("--no-dpdk: the DPDK vhost-user anchor was not run".into())
    } else {
        Anchor::Script {
            path: a.dpdk_script.clone().unwrap_or_else(default_dpdk_script),
            no_install: a.no_install,
        }
    };
    let o = DatapathOptions {
        serve_bin,
        frames: a.frame.clone(),
        dirs: a.dir.clone(),
        queue_pairs: a.qp.clone(),
        layouts: a.layout.clone(),
        seconds: a.seconds,
        warmup: Duration::from_millis(a.warmup_ms),
        pin: a.pin,
        anchor,
        serve_args: serve_args(a),
        rounds: usize::from(a.rounds),
        probe_period: (a.c2c_probe_ms > 0).then(|| Duration::from_millis(a.c2c_probe_ms)),
        placement_retries: a.placement_retries,
    };
    match run(&o) {
        Ok(r) => {
            if a.json {
                println!("{}", crate::report_json::to_json(&r));
            } else {
                print!("{}", table(&r));
            }
            if r.cells.iter().any(|c| c.lost > 0 || c.fault.is_some()) {
                eprintln!(
                    "vdpa-emu bench datapath: frames unaccounted for (column lost) or a device fault"
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(DatapathError::Options(m)) => {
            eprintln!("vdpa-emu bench datapath: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("vdpa-emu bench datapath: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(layout: Layout, round: usize, mpps: f64, vs_dpdk: Option<f64>) -> Cell {
        Cell {
            dir: Dir::Tx,
            frame: 64,
            queue_pairs: 1,
            layout,
            features: String::new(),
            seconds: 1.0,
            window_frames: 0,
            mpps,
            gbps: 0.0,
            server_cpu_percent: 0.0,
            server_cpu_us_per_frame: None,
            engine_busy_us_per_frame: None,
            driver_sent: 0,
            driver_received: 0,
            generator_sent: None,
            device: DeviceCounts::default(),
            lost: 0,
            fault: None,
            driver_loop: DriverLoop::default(),
            vs_dpdk,
            session: None,
            round,
            placement: None,
            placement_alike: None,
            attempts: 1,
        }
    }

    /// The anchor's 64-byte TX run at 1 QP in round `round`.
    fn anchor_run(round: usize, mpps: f64, placement: Option<Placement>) -> DpdkRun {
        DpdkRun {
            dir: "tx",
            frame: 64,
            queue_pairs: 1,
            pps: mpps * 1e6,
            packets: 0,
            seconds: 1,
            device_cpu_us_per_frame: None,
            device_cpu_percent: None,
            round,
            placement,
            attempts: 1,
        }
    }

    #[test]
    fn rounds_are_summarized_per_cell_with_each_rounds_own_ratio() {
        let anchor = |round: usize, mpps: f64| anchor_run(round, mpps, None);
        let anchors = [anchor(0, 10.0), anchor(1, 20.0), anchor(2, 16.0)];
        // A host that halves everything in round 0: the rates spread 2x, the ratios do not.
        let cells = [
            cell(Layout::Split, 0, 4.0, Some(0.4)),
            cell(Layout::Packed, 0, 5.0, Some(0.5)),
            cell(Layout::Split, 1, 9.0, Some(0.45)),
            cell(Layout::Packed, 1, 10.0, Some(0.5)),
            cell(Layout::Split, 2, 8.0, Some(0.5)),
            cell(Layout::Packed, 2, 9.0, None),
        ];
        let s = summarize(&cells, &anchors);
        assert_eq!(s.len(), 2, "one summary per cell, not per round");
        let split = &s[0];
        assert_eq!((split.layout, split.rounds), (Layout::Split, 3));
        assert_eq!(
            (split.mpps_median, split.mpps_min, split.mpps_max),
            (8.0, 4.0, 9.0)
        );
        assert_eq!(split.dpdk_mpps_median, Some(16.0));
        assert_eq!(
            (split.vs_dpdk_median, split.vs_dpdk_min, split.vs_dpdk_max),
            (Some(0.45), Some(0.4), Some(0.5))
        );
        // A round without a ratio (its anchor failed) leaves the others' median: even count.
        let packed = &s[1];
        assert_eq!(packed.mpps_median, 9.0);
        assert_eq!(packed.vs_dpdk_median, Some(0.5));
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        // The table prints each round and the summary.
        let r = DatapathReport {
            host: Default::default(),
            seconds: 1.0,
            warmup_seconds: 0.3,
            pinned: None,
            serve_args: Vec::new(),
            anchor: AnchorReport {
                testpmd: None,
                missing: None,
                runs: anchors.to_vec(),
            },
            cells: cells.to_vec(),
            rounds: 3,
            summary: s,
            far_ns: None,
            calibration: None,
            retried: 0,
        };
        let t = table(&r);
        assert!(t.contains("-- round 3"), "{t}");
        assert!(t.contains("over 3 rounds"), "{t}");
        assert!(t.contains("0.45x    0.40-0.50x"), "{t}");
    }

    #[test]
    fn ratios_across_placements_are_marked_and_kept_out_of_the_alike_median() {
        let near = |n: usize| Placement::new(vec![30.0; n], 0);
        let far = |n: usize| Placement::new(vec![160.0; n], 0);
        let anchor = |round: usize, mpps: f64, p: Placement| anchor_run(round, mpps, Some(p));
        // Round 0: the anchor ran with the CPUs far apart, ours close: 2x, not comparable.
        // Round 1: both close.
        let mut runs = [anchor(0, 5.0, far(20)), anchor(1, 16.0, near(20))];
        let mut cells = [
            cell(Layout::Split, 0, 10.0, Some(2.0)),
            cell(Layout::Split, 1, 12.0, Some(0.75)),
        ];
        cells[0].placement = Some(near(20));
        cells[1].placement = Some(near(20));
        assert_eq!(classify_placements(None, &mut cells, &mut runs), Some(90.0));
        assert_eq!(runs[0].placement.as_ref().unwrap().far_percent, Some(100.0));
        assert_eq!(cells[0].placement.as_ref().unwrap().far_percent, Some(0.0));
        assert_eq!(cells[0].placement_alike, Some(false));
        assert_eq!(cells[1].placement_alike, Some(true));
        let s = summarize(&cells, &runs);
        assert_eq!(s[0].vs_dpdk_median, Some(1.375));
        assert_eq!(
            (s[0].vs_dpdk_alike_median, s[0].alike_rounds),
            (Some(0.75), 1)
        );
        let r = DatapathReport {
            host: Default::default(),
            seconds: 1.0,
            warmup_seconds: 0.3,
            pinned: Some((1, 0)),
            serve_args: Vec::new(),
            anchor: AnchorReport {
                testpmd: None,
                missing: None,
                runs: runs.to_vec(),
            },
            cells: cells.to_vec(),
            rounds: 2,
            summary: s,
            far_ns: Some(90.0),
            calibration: None,
            retried: 1,
        };
        let t = table(&r);
        assert!(t.contains("2.00x*"), "{t}");
        assert!(t.contains(" 0.75x "), "{t}");
        assert!(t.contains("c2c 160 ns, far 100%"), "{t}");
        assert!(t.contains("0.75x (1)"), "{t}");
        assert!(t.contains("1 windows were measured again"), "{t}");
        // Without samples there is no threshold and no claim.
        let mut bare = [cell(Layout::Split, 0, 10.0, Some(2.0))];
        assert_eq!(classify_placements(None, &mut bare, &mut []), None);
        // A run whose windows were all far: the calibration (idle, near) says so.
        let mut all_far = [cell(Layout::Split, 0, 10.0, None)];
        all_far[0].placement = Some(far(10));
        let cal = near(20);
        assert_eq!(
            classify_placements(Some(&cal), &mut all_far, &mut []),
            Some(90.0)
        );
        assert_eq!(
            all_far[0].placement.as_ref().unwrap().far_percent,
            Some(100.0)
        );
        assert_eq!(bare[0].placement_alike, None);
    }

    #[test]
    fn session_line() {
        let log = "2026-12-03T07:00:00Z  INFO vdpa_vfio_user::server: session statistics session_stats={\"wall_s\":1.0,\"tx_frames\":5,\"x\":{\"y\":1}}\n";
        let v = parse_session_line(log).unwrap();
        assert_eq!(v["tx_frames"], 5);
        assert_eq!(v["x"]["y"], 1);
        assert_eq!(parse_session_line("nothing here\n"), None);
        assert_eq!(
            parse_session_line("session statistics session_stats={\"a\":1\n"),
            None
        );
    }

    #[test]
    fn names() {
        assert_eq!(parse_dir("loopback"), Ok(Dir::Loopback));
        assert!(parse_dir("both").is_err());
        assert_eq!(parse_layout("packed"), Ok(Layout::Packed));
        assert!(parse_layout("ring").is_err());
    }
}
