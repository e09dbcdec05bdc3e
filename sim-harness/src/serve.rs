//! `vdpa-emu serve`: the NIC served to QEMU (>= 10.1) over vfio-user until SIGINT/SIGTERM.
//!
//! ```text
//! vdpa-emu serve --socket PATH [--queue-pairs N] [--mac MAC] [--port SPEC] [--lm-layout dpdk|linux]
//!                [--client-timeout SECS] [--reply-spin-us N] [--ctl PATH | --no-ctl] [--pcap FILE]
//! ```
//!
//! Next to the vfio-user socket, `serve` opens a control socket (`PATH.ctl` unless `--ctl`
//! names another; `--no-ctl`: none) for `vdpa-emu ctl`: counters while the device runs, link
//! up/down, announce, quirks and faults on the live device, pcapng capture (the `ctl` module
//! documents its JSON-lines protocol). `--pcap FILE` captures from the start.
//!
//! QEMU attaches with
//! `-device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"PATH"}}'` and needs
//! shared guest RAM so that its DMA_MAPs carry descriptors the device can mmap:
//! `-object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem`.
//! Without `share=on` the server warns at the first DMA_MAP; the device then faults into
//! DEVICE_NEEDS_RESET on its first DMA.
//!
//! One client at a time; when it disconnects the device is reset, its DMA mappings and
//! interrupt eventfds are dropped, and the next client is accepted. A second client meanwhile
//! gets an EBUSY error reply and is closed. A client that stalls inside a message or does not
//! read its replies for `--client-timeout` seconds (default 5) is dropped; idle clients are
//! not. After each message the server polls for the next one for `--reply-spin-us` (200)
//! before it sleeps, so back-to-back synchronous messages (QEMU's DMA_MAP / DMA_UNMAP per
//! IOTLB entry under a strict guest vIOMMU) cost one wakeup per round trip, not two. On
//! SIGINT/SIGTERM the server stops and removes its socket. At start the soft
//! RLIMIT_NOFILE is raised to the hard limit (DMA maps keep no descriptor, but each message
//! may bring up to 16, and SET_IRQS keeps its eventfds).
//!
//! `--port SPEC` chooses the wire:
//! - `loopback` (default): transmitted frames come back on the device's own receive side;
//! - `null`: transmitted frames are counted and discarded, nothing is received;
//! - `gen:SIZE`: a generator thread fills the receive side with SIZE-byte frames as fast as the
//!   device delivers them (transmitted frames are discarded): the receive path alone;
//! - `tap:IFNAME`: a host TAP interface, created if absent and brought up (needs root);
//! - `unix:PATH`: one end of a datagram link between two devices (in one process or two).
//!   The ends are the socket files `PATH.a` and `PATH.b`: a server binds `PATH.a` unless a
//!   live server holds it, else `PATH.b`, and sends its frames to the other. So two servers
//!   started with the same `unix:/tmp/link` are wired to each other, in either start order.
//!   Frames sent while the other end is absent are dropped.

use crate::ctl::{CtlHandler, CtlServer};
use crate::pcap::LiveCapture;
use crate::ports::{self, PortError, PortSpec};
use crate::vfio_user::wire::SparseArea;
use crate::vfio_user::{Backend, RegionMmap, Server, ServerError, ServerOptions, Stop};
use bar_registers::pci::CONFIG_SPACE_SIZE;
use bar_registers::{LayoutError, LmLayout, REGION_CONFIG};
use device::doorbell::{self, DoorbellEngine, PollPolicy, SchedRequest, SharedDoorbellsError};
use device::{
    AccessError, Device, DeviceConfig, DmaMapper, InterruptSink, MsixOwner, RegionAccess,
    SnapshotError,
};
use dma::{Backing, MapError, MappingInfo, Perms, WriteTrace};
use parking_lot::Mutex;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a guest's doorbells go (`serve --doorbell`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DoorbellMode {
    /// BAR0's notify window is offered for mmap (FLAG_MMAP + a sparse mmap area + the memfd);
    /// a kick is a store to shared memory that the doorbell engine notices. Trapped writes to
    /// the window still ring.
    #[default]
    Mmap,
    /// Nothing is offered for mmap: every doorbell is a REGION_WRITE message (posted by QEMU).
    Trap,
}

impl DoorbellMode {
    /// `mmap` / `trap`.
    pub fn name(self) -> &'static str {
        match self {
            DoorbellMode::Mmap => "mmap",
            DoorbellMode::Trap => "trap",
        }
    }
}

/// Parses `mmap` / `trap`.
pub fn parse_doorbell_mode(s: &str) -> Result<DoorbellMode, String> {
    match s {
        "mmap" => Ok(DoorbellMode::Mmap),
        "trap" => Ok(DoorbellMode::Trap),
        _ => Err(format!("doorbell path {s:?}: expected mmap or trap")),
    }
}

/// Parses `--doorbell-poll KEY=US,...` with keys `min`, `warm`, `warm-for`, `idle`, `spin` and
/// `busy` (microseconds; a key left out keeps its default): the doorbell engine's first sleep
/// after an event, its longest while warm, how long warm lasts, its longest when idle, its
/// pause-polling time after a kick, and its yield-polling time after that
/// (`device::doorbell::PollPolicy`).
pub fn parse_poll_policy(s: &str) -> Result<PollPolicy, String> {
    let bad = |why: &str| {
        format!("doorbell poll {s:?}: {why}; expected KEY=US,... with keys min, warm, warm-for, idle, spin, busy (e.g. min=20,warm=500,idle=10000)")
    };
    let mut p = PollPolicy::default();
    for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| bad("missing ="))?;
        let us = Duration::from_micros(v.trim().parse::<u64>().map_err(|_| bad("not a number"))?);
        match k.trim() {
            "min" => p.min_sleep = us,
            "warm" => p.warm_sleep = us,
            "warm-for" => p.warm_for = us,
            "idle" => p.max_sleep = us,
            "spin" => p.spin = us,
            "busy" => p.busy = us,
            other => return Err(bad(&format!("unknown key {other:?}"))),
        }
    }
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

/// Parses `prompt` / `slice` / `normal` (`serve --doorbell-sched`): how the doorbell engine
/// thread asks to be scheduled (`device::doorbell::sched`).
pub fn parse_sched(s: &str) -> Result<SchedRequest, String> {
    match s {
        "prompt" => Ok(SchedRequest::Prompt),
        "slice" => Ok(SchedRequest::Slice),
        "normal" => Ok(SchedRequest::Normal),
        _ => Err(format!(
            "doorbell scheduling {s:?}: expected prompt, slice or normal"
        )),
    }
}

/// What the last session summary was taken against.
#[derive(Debug)]
struct SessionBase {
    at: Instant,
    cpu: Duration,
    engine_cpu: Duration,
    engine_busy: Duration,
    tx_frames: u64,
    rx_frames: u64,
    doorbells: u64,
    shared: u64,
    shared_at_access: u64,
    sleeps: u64,
}

/// vdpa-emu's NIC as a vfio-user [`Backend`]: the server reaches it only through this.
#[derive(Clone, Debug)]
pub struct DeviceBackend {
    dev: Arc<Device>,
    /// The doorbell engine of [`DoorbellMode::Mmap`] (stopped when the last clone goes).
    doorbells: Option<Arc<DoorbellEngine>>,
    session: Arc<Mutex<SessionBase>>,
}

/// The server `serve` runs.
pub type DeviceServer = Server<DeviceBackend>;

impl DeviceBackend {
    /// Serves `device` with trapped doorbells only ([`DoorbellMode::Trap`]). The device must
    /// leave the MSI-X table to the VMM (`DeviceConfig::msix_owner = MsixOwner::Vmm`): QEMU
    /// emulates it.
    pub fn new(device: Arc<Device>) -> Self {
        Self::assemble(device, None)
    }

    fn assemble(dev: Arc<Device>, doorbells: Option<Arc<DoorbellEngine>>) -> Self {
        let base = base(&dev, doorbells.as_deref());
        DeviceBackend {
            dev,
            doorbells,
            session: Arc::new(Mutex::new(base)),
        }
    }

    /// Serves `device` with doorbells through `mode`; for [`DoorbellMode::Mmap`] the device
    /// gets its notify area and the doorbell engine starts (polling as `policy` says).
    pub fn with_doorbells(
        device: Arc<Device>,
        mode: DoorbellMode,
        policy: PollPolicy,
    ) -> Result<Self, SharedDoorbellsError> {
        let engine = match mode {
            DoorbellMode::Mmap => {
                Some(Arc::new(doorbell::start_shared_doorbells(&device, policy)?))
            }
            DoorbellMode::Trap => None,
        };
        Ok(Self::assemble(device, engine))
    }

    /// The device served.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The doorbell engine ([`DoorbellMode::Mmap`]).
    pub fn doorbell_engine(&self) -> Option<&Arc<DoorbellEngine>> {
        self.doorbells.as_ref()
    }
}

/// The counters a session summary is a difference of.
fn base(dev: &Device, engine: Option<&DoorbellEngine>) -> SessionBase {
    let c = dev.counters();
    let e = engine.map(|e| e.stats()).unwrap_or_default();
    SessionBase {
        at: Instant::now(),
        cpu: process_cpu(),
        engine_cpu: e.cpu.unwrap_or_default(),
        engine_busy: e.busy,
        tx_frames: c.tx_frames,
        rx_frames: c.rx_frames,
        doorbells: c.queues.iter().map(|q| q.doorbells).sum(),
        shared: c.shared_doorbells,
        shared_at_access: c.shared_doorbells_at_access,
        sleeps: e.sleeps,
    }
}

/// User + system CPU time of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only `ru`, a live local.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl RegionAccess for DeviceBackend {
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        self.dev.region_read(region, offset, data)
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        self.dev.region_write(region, offset, data)
    }
}

impl DmaMapper for DeviceBackend {
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        backing: Backing,
    ) -> Result<(), MapError> {
        self.dev.dma_map(iova, size, perms, backing)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        self.dev.dma_unmap(iova, size)
    }

    fn dma_unmap_all(&self) -> u64 {
        self.dev.dma_unmap_all()
    }
}

impl Backend for DeviceBackend {
    type StateError = SnapshotError;

    /// BAR0's notify window, in [`DoorbellMode::Mmap`].
    fn region_mmap(&self, index: u32) -> Option<RegionMmap<'_>> {
        let area = self.doorbells.as_ref()?.area();
        if index != u32::from(self.dev.layout().notify.bar) {
            return None;
        }
        let (offset, size) = area.mmap_area();
        Some(RegionMmap {
            fd: area.file().as_fd(),
            offset: 0,
            areas: vec![SparseArea { offset, size }],
        })
    }

    /// The notify window at the address the guest gave BAR0 (config space, 64-bit BAR).
    fn is_own_mmap_area(&self, iova: u64, size: u64) -> bool {
        let Some(engine) = &self.doorbells else {
            return false;
        };
        let (off, len) = engine.area().mmap_area();
        let bar = u64::from(self.dev.layout().notify.bar);
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        let reg = bar_registers::pci::hdr::BAR0 + 4 * bar;
        if self.dev.region_read(REGION_CONFIG, reg, &mut lo).is_err()
            || self
                .dev
                .region_read(REGION_CONFIG, reg + 4, &mut hi)
                .is_err()
        {
            return false;
        }
        let base =
            (u64::from(u32::from_le_bytes(hi)) << 32) | u64::from(u32::from_le_bytes(lo) & !0xf);
        let start = base.wrapping_add(off);
        iova >= start && iova.checked_add(size).is_some_and(|end| end <= start + len)
    }

    /// Since the last summary: frames, the whole process's CPU time and per frame, doorbells
    /// (how many came through shared memory), the doorbell engine's own CPU time and the part
    /// of it spent handling kicks (`engine_busy_*`: the queues' work, without the polling).
    fn session_stats(&self) -> serde_json::Value {
        let now = base(&self.dev, self.doorbells.as_deref());
        let mut last = self.session.lock();
        let frames = (now.tx_frames - last.tx_frames) + (now.rx_frames - last.rx_frames);
        let cpu = now.cpu.saturating_sub(last.cpu);
        let ms = |d: Duration| (d.as_secs_f64() * 1e3 * 10.0).round() / 10.0;
        // Microseconds per frame carried, to `scale` (100: two decimals).
        let us_per_frame = |d: Duration, scale: f64| {
            (frames > 0).then(|| (d.as_secs_f64() * 1e6 / frames as f64 * scale).round() / scale)
        };
        let doorbells = now.doorbells - last.doorbells;
        // The engine's time handling kicks (servicing queues), without its polling and sleeps.
        let busy = now.engine_busy.saturating_sub(last.engine_busy);
        let shared = now.shared - last.shared;
        let v = serde_json::json!({
            "wall_s": (now.at - last.at).as_secs_f64().round(),
            "tx_frames": now.tx_frames - last.tx_frames,
            "rx_frames": now.rx_frames - last.rx_frames,
            "cpu_ms": ms(cpu),
            "cpu_us_per_frame": us_per_frame(cpu, 100.0),
            "doorbells": doorbells,
            "doorbells_mmap": shared,
            "doorbells_mmap_at_access": now.shared_at_access - last.shared_at_access,
            "doorbells_trapped": doorbells.saturating_sub(shared),
            "doorbell_path": if self.doorbells.is_some() { "mmap" } else { "trap" },
            "engine_cpu_ms": self.doorbells.as_ref().map(|_| ms(now.engine_cpu.saturating_sub(last.engine_cpu))),
            "engine_busy_ms": self.doorbells.as_ref().map(|_| ms(busy)),
            "engine_busy_us_per_frame": self.doorbells.as_ref().and_then(|_| us_per_frame(busy, 1000.0)),
            "engine_sleeps": now.sleeps - last.sleeps,
            "engine_sched": self.doorbells.as_ref().map(|e| e.stats().sched.name()),
            // Since the engine started (each one failed the device: `internal_error`).
            "engine_panics": self.doorbells.as_ref().map(|e| e.stats().panics),
        });
        *last = now;
        v
    }

    fn region_size(&self, index: u32) -> u64 {
        match index {
            0..=5 => self.dev.layout().bar_size(index as u8),
            REGION_CONFIG => CONFIG_SPACE_SIZE,
            _ => 0,
        }
    }

    fn msix_vectors(&self) -> u16 {
        self.dev.layout().msix_vectors
    }

    fn set_interrupt_sink(&self, sink: Arc<dyn InterruptSink>) {
        self.dev.set_interrupt_sink(sink)
    }

    fn reset(&self) {
        self.dev.reset()
    }

    fn mappings(&self) -> Vec<MappingInfo> {
        self.dev.mappings()
    }

    fn mapping_count(&self) -> usize {
        self.dev.mapping_count()
    }

    fn map_stats(&self) -> dma::MapStats {
        self.dev.map_stats()
    }

    fn pause(&self) {
        self.dev.pause()
    }

    fn resume(&self) {
        self.dev.resume()
    }

    fn save_state(&self) -> Vec<u8> {
        self.dev.save_state()
    }

    fn restore_state(&self, data: &[u8]) -> Result<(), SnapshotError> {
        self.dev.restore_state(data)
    }

    fn max_state_len(&self) -> usize {
        self.dev.max_state_len()
    }

    fn internal_error(&self, message: String) {
        self.dev
            .fail_internal("a vfio-user message's handler", message);
    }

    fn set_write_trace(&self, trace: Option<Arc<WriteTrace>>) {
        self.dev.set_write_trace(trace)
    }
}

/// What `serve` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// vfio-user socket path.
    pub socket: PathBuf,
    /// Queue pairs (1..=32).
    pub queue_pairs: u16,
    /// MAC address in the device config.
    pub mac: [u8; 6],
    /// The wire.
    pub port: PortSpec,
    /// LM block layout.
    pub lm_layout: LmLayout,
    /// The device profile: its feature set (parameters it fixes are already in the fields
    /// above, see [`crate::profile::resolve`]).
    pub profile: bar_registers::Profile,
    /// Do not offer VIRTIO_F_RING_PACKED (guests then use split rings), whatever the profile.
    pub no_packed: bool,
    /// Every received frame through the general receive path ([`DeviceConfig::rx_express`]
    /// off).
    pub no_rx_express: bool,
    /// Every split ring descriptor read on its own ([`DeviceConfig::desc_runs`] off).
    pub no_desc_runs: bool,
    /// Doorbell layout in BAR0 (notify_off_multiplier).
    pub notify_layout: bar_registers::NotifyLayout,
    /// Injected device bugs.
    pub quirks: device::Quirks,
    /// How long a client may stall inside a message or leave a reply unread.
    pub client_timeout: std::time::Duration,
    /// How long the server polls for the next message after each one before it sleeps
    /// (`ServerOptions::reply_spin`).
    pub reply_spin: std::time::Duration,
    /// Control socket path (None: no control socket).
    pub ctl: Option<PathBuf>,
    /// Capture every frame into this pcapng file from the start.
    pub pcap: Option<PathBuf>,
    /// Where doorbells go.
    pub doorbell: DoorbellMode,
    /// How the doorbell engine polls ([`DoorbellMode::Mmap`]).
    pub doorbell_poll: PollPolicy,
}

/// Why `serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("device configuration: {0}")]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("installing signal handlers: {0}")]
    Signal(#[source] io::Error),
    #[error(transparent)]
    Ctl(#[from] crate::ctl::server::CtlServerError),
    #[error(transparent)]
    Capture(#[from] crate::pcap::CaptureError),
    #[error("shared-memory doorbells: {0}")]
    Doorbells(#[from] SharedDoorbellsError),
}

/// The device configuration `serve` uses: QEMU emulates the MSI-X table, so the VMM owns it.
pub fn device_config(opts: &ServeOptions) -> DeviceConfig {
    let profile = if opts.no_packed {
        opts.profile.clone().without_packed()
    } else {
        opts.profile.clone()
    };
    let mut cfg = DeviceConfig::default().with_profile(profile);
    cfg.layout.queue_pairs = opts.queue_pairs;
    cfg.layout.lm_layout = opts.lm_layout;
    cfg.layout.notify = opts.notify_layout;
    cfg.layout.mac = opts.mac;
    cfg.msix_owner = MsixOwner::Vmm;
    cfg.quirks = opts.quirks;
    cfg.rx_express = !opts.no_rx_express;
    cfg.desc_runs = !opts.no_desc_runs;
    cfg
}

/// Parses `52:54:00:12:34:56` (also with `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || format!("MAC {s:?}: expected six hex bytes like 52:54:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC {s:?} is a multicast address"));
    }
    Ok(mac)
}

/// Parses `dpdk` / `linux`.
pub fn parse_lm_layout(s: &str) -> Result<LmLayout, String> {
    LmLayout::parse(s).ok_or_else(|| format!("LM layout {s:?}: expected dpdk or linux"))
}

/// The eventfd SIGINT/SIGTERM write to (-1: none).
static SIGNAL_STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_sig: libc::c_int) {
    let fd = SIGNAL_STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a live local buffer of 8 bytes and
        // `fd` is the server's stop eventfd, open while the handler is installed.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// SIGINT/SIGTERM handlers that trigger `stop`, restored to the defaults on drop.
struct SignalGuard;

impl SignalGuard {
    fn install(stop: &Stop) -> io::Result<Self> {
        SIGNAL_STOP_FD.store(stop.raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            set_handler(sig, on_signal as *const () as libc::sighandler_t)?;
        }
        Ok(SignalGuard)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let _ = set_handler(sig, libc::SIG_DFL);
        }
        SIGNAL_STOP_FD.store(-1, Ordering::SeqCst);
    }
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero (empty mask, no flags) is a valid value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa` is a valid sigaction; the handler only does an async-signal-safe write.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Serves one device until SIGINT/SIGTERM; removes the socket on the way out.
pub fn run(opts: &ServeOptions) -> Result<(), ServeError> {
    match crate::vfio_user::sock::raise_nofile_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let dev = Device::new(device_config(opts))?;
    let port = ports::attach(&opts.port, &dev)?;
    let capture = Arc::new(LiveCapture::new(dev.clone()));
    if let Some(path) = &opts.pcap {
        capture.start(path)?;
    }
    // Before the vfio-user socket: whoever sees that one finds the control socket too.
    let ctl = match &opts.ctl {
        Some(path) => Some(CtlServer::start(
            path,
            CtlHandler::new(dev.clone(), capture.clone()),
        )?),
        None => None,
    };
    let backend = DeviceBackend::with_doorbells(dev.clone(), opts.doorbell, opts.doorbell_poll)?;
    let server = Server::bind(
        &opts.socket,
        backend,
        ServerOptions {
            client_timeout: opts.client_timeout,
            reply_spin: opts.reply_spin,
            ..ServerOptions::default()
        },
    )?;
    let l = dev.layout();
    tracing::info!(
        socket = %opts.socket.display(),
        queue_pairs = opts.queue_pairs,
        msix_vectors = l.msix_vectors,
        bar0 = l.bar_size(0),
        port = port.describe(),
        lm = opts.lm_layout.name(),
        profile = %dev.profile().name,
        features = format_args!("{:#x}", dev.profile().features),
        ctl = ctl.as_ref().map(|c| c.path().display().to_string()),
        doorbells = opts.doorbell.name(),
        "serving"
    );
    eprintln!(
        "vdpa-emu: serving {} queue pair(s), profile {}, on {} (port {}); attach with -device '{{\"driver\":\"vfio-user-pci\",\"socket\":{{\"type\":\"unix\",\"path\":\"{}\"}}}}'",
        opts.queue_pairs,
        dev.profile().name,
        opts.socket.display(),
        port.describe(),
        opts.socket.display()
    );
    let guard = SignalGuard::install(&server.stop_handle()).map_err(ServeError::Signal)?;
    let result = server.serve();
    drop(guard);
    let stats = server.stats();
    drop(ctl);
    if capture.status().is_some() {
        match capture.stop() {
            Ok(c) => eprintln!(
                "vdpa-emu: captured {} frames ({} bytes) into {}",
                c.frames,
                c.bytes,
                c.path.display()
            ),
            Err(e) => eprintln!("vdpa-emu: capture: {e}"),
        }
    }
    drop(server);
    drop(port);
    tracing::info!(
        clients = stats.accepted,
        messages = stats.messages,
        errors = stats.errors,
        "stopped"
    );
    result.map_err(ServeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("02-00-00-00-00-0a"), Ok([2, 0, 0, 0, 0, 0xa]));
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_mac("52:54:00:12:34:5g").is_err());
        assert!(parse_mac("01:00:00:00:00:00").is_err());
    }

    #[test]
    fn poll_policies() {
        let us = Duration::from_micros;
        assert_eq!(parse_poll_policy(""), Ok(PollPolicy::default()));
        let p = parse_poll_policy("min=5, warm=50,warm-for=2000,idle=3000,busy=7,spin=3").unwrap();
        assert_eq!(
            p,
            PollPolicy {
                busy: us(7),
                spin: us(3),
                min_sleep: us(5),
                warm_sleep: us(50),
                warm_for: us(2000),
                max_sleep: us(3000),
                ..PollPolicy::default()
            }
        );
        for bad in [
            "20",
            "min=a",
            "fast=1",
            "min=600",
            "idle=10",
            "idle=2000000",
        ] {
            assert!(parse_poll_policy(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_sched("slice"), Ok(SchedRequest::Slice));
        assert!(parse_sched("rt").is_err());
    }

    #[test]
    fn port_specs() {
        assert_eq!("loopback".parse::<PortSpec>().unwrap(), PortSpec::Loopback);
        assert_eq!("null".parse::<PortSpec>().unwrap(), PortSpec::Null);
        assert_eq!(PortSpec::Null.to_string(), "null");
        assert_eq!("gen:64".parse::<PortSpec>().unwrap(), PortSpec::Gen(64));
        assert_eq!(PortSpec::Gen(1500).to_string(), "gen:1500");
        for bad in ["gen:", "gen:59", "gen:1515", "gen:x"] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
        assert_eq!(
            "tap:vtap0".parse::<PortSpec>().unwrap(),
            PortSpec::Tap("vtap0".into())
        );
        assert_eq!(
            "unix:/tmp/l".parse::<PortSpec>().unwrap(),
            PortSpec::Unix("/tmp/l".into())
        );
        assert_eq!(
            "tap:vtap0:no-offloads".parse::<PortSpec>().unwrap(),
            PortSpec::TapNoOffloads("vtap0".into())
        );
        for spec in ["tap:vtap0", "tap:vtap0:no-offloads"] {
            assert_eq!(spec.parse::<PortSpec>().unwrap().to_string(), spec);
        }
        for bad in [
            "tap:",
            "tap::no-offloads",
            "tap:vtap0:",
            "tap:vtap0:offloads",
            "tap:a:b:c",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
        assert!("udp:1".parse::<PortSpec>().is_err());
    }
}
