//! `vdpa-emu validate`: does a device meet what vDPA needs of the hardware?
//!
//! The checks are grouped after the vDPA talk's list of HW prerequisites (ring layout per the
//! virtio spec, feature awareness, a readable and writable vring index, dirty-page logging,
//! GUEST_ANNOUNCE instead of RARP) plus PCI structure and reset. They use only what a driver
//! can see: registers, the memory it shares with the device, interrupts. So the same checks
//! run against the built-in model in-process and, through a vfio-user client, against any
//! device served over vfio-user.

mod checks;
mod hash_report;
mod in_order;
mod locate;
mod notification_data;
mod offloads;
pub mod posted;
pub mod report;
mod ring_reset;
mod rss;
mod rx_gso;
mod traffic;
#[cfg(target_os = "linux")]
pub mod vfio;

use crate::driver::{DeviceHandle, DriverError};
use device::{Device, DeviceConfig, InterruptRecorder};
use std::sync::Arc;

pub use report::{
    Counts, FeatureStatus, Finding, GroupResult, ProfileReport, Report, Verdict,
    EXIT_DEVICE_FAILED, EXIT_PASS, EXIT_UNREACHABLE,
};

/// Check groups, in report order: (id, title).
pub const GROUPS: &[(&str, &str)] = &[
    ("pci-structure", "PCI structure the IFC VF drivers need"),
    (
        "ring-layout-split",
        "split ring consumed and produced byte-exactly per spec",
    ),
    ("ring-layout-packed", "packed ring (when offered)"),
    (
        "feature-awareness",
        "the device honours exactly the negotiated features",
    ),
    (
        "vring-index-rw",
        "readable and writable vring index (LM ring state)",
    ),
    ("dirty-log", "dirty-page logging: base, end, enable"),
    ("guest-announce", "GUEST_ANNOUNCE instead of RARP"),
    (
        "rss",
        "receive-side scaling: Toeplitz hash and indirection table (when offered)",
    ),
    (
        "hash-report",
        "hash report (HASH_REPORT): each frame's Toeplitz hash and type in its header (when offered)",
    ),
    (
        "in-order",
        "buffers used in the order they were made available (VIRTIO_F_IN_ORDER, when offered)",
    ),
    (
        "ring-reset",
        "one queue reset and re-enabled with a new size while the others run (VIRTIO_F_RING_RESET, when offered)",
    ),
    (
        "notification-data",
        "doorbells carrying vqn and next index (VIRTIO_F_NOTIFICATION_DATA, when offered)",
    ),
    (
        "checksum",
        "TX checksum offload (VIRTIO_NET_F_CSUM): checksums completed, bad headers dropped",
    ),
    (
        "tso",
        "TX segmentation (HOST_TSO4/6): MSS segments with correct IP, TCP fields and checksums",
    ),
    (
        "rx-gso",
        "receive GSO (GUEST_TSO4/6): coalesced frames well-formed, none once GUEST_OFFLOADS_SET turned them off",
    ),
    (
        "reset",
        "reset returns every register to its reset value; no DMA after reset",
    ),
];

/// The check group that owns each injectable HW bug: the group that must FAIL, alone, when the
/// device has that bug (the in-process, `--socket` and soak proofs all assert this).
pub fn owning_group(q: device::Quirk) -> &'static str {
    use device::Quirk;
    match q {
        Quirk::RingStateReadOnly | Quirk::StaleUsedIdx | Quirk::EarlyQueueDisable => {
            "vring-index-rw"
        }
        Quirk::LogSkipsUsedRing | Quirk::LogIgnoresEnd => "dirty-log",
        Quirk::IgnoresEventIdx => "feature-awareness",
        Quirk::NoGuestAnnounce => "guest-announce",
        Quirk::SplitRingUsedLenWrong => "ring-layout-split",
        Quirk::RssIgnoresIndirectionTable => "rss",
        Quirk::CompletesOutOfOrder => "in-order",
        Quirk::CsumOddLengthWrong => "checksum",
        Quirk::TsoIpIdFixed | Quirk::TsoSeqWrong => "tso",
        Quirk::GuestOffloadsIgnored => "rx-gso",
        Quirk::HashReportTypeWrong => "hash-report",
        Quirk::RingResetKeepsState => "ring-reset",
        Quirk::NotificationDataVqnFromHighBits => "notification-data",
    }
}

/// Why validation could not run (as opposed to a check that failed): `vdpa-emu validate`
/// exits 2 for these.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("creating the device: {0}")]
    Layout(#[from] bar_registers::LayoutError),
    #[error("{0}")]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Target(String),
    #[error("unknown check group `{id}`; the groups are: {known}")]
    UnknownGroup { id: String, known: String },
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Vfio(#[from] vfio::VfioError),
}

/// A device-level reset the target offers besides the virtio one (vfio-user DEVICE_RESET,
/// VFIO_DEVICE_RESET, which is an FLR where the function offers one); `Err` carries why it
/// failed.
pub type DeviceReset = Box<dyn Fn() -> Result<(), String> + Send>;

/// See [`Session::announce`].
pub type AnnounceHook = Box<dyn Fn() -> Result<bool, String> + Send>;

/// One open connection to the device under test. The validator opens it once and runs every
/// group in it, resetting the device between groups (see [`Session::reset_between_groups`]).
pub struct Session {
    pub handle: Arc<dyn DeviceHandle>,
    pub irq: Arc<InterruptRecorder>,
    /// The VMM-side hook that asks the device to request an announce (GUEST_ANNOUNCE), where
    /// the target has one: Ok(whether the device took the request), Err(why the hook could
    /// not be used, e.g. a control socket that did not answer).
    pub announce: Option<AnnounceHook>,
    /// How long interrupts may take to reach `irq` after the register access that caused
    /// them returned (0 in-process; eventfds and a pump thread over vfio-user and VFIO).
    pub irq_latency: std::time::Duration,
    /// The target's device-level reset, run between groups after the virtio reset.
    pub device_reset: Option<DeviceReset>,
    /// Whatever must live as long as the session (a socket client's interrupt pump).
    pub keep: Option<Box<dyn std::any::Any + Send>>,
    /// Delivers, on the calling thread, every interrupt the device has already signalled (a
    /// socket client's eventfd drain), so counts do not depend on when a pump thread runs.
    pub irq_sync: Option<Box<dyn Fn() + Send>>,
}

/// Why the device could not be put back to a clean state between two groups.
#[derive(Debug, thiserror::Error)]
pub enum BetweenGroups {
    /// The device did not come out of reset: a device failure (the next group fails).
    #[error("{0}")]
    Device(String),
    /// The validator lost the device: the run ends (exit 2).
    #[error("{0}")]
    Transport(String),
}

impl Session {
    /// Counts, on this thread, every interrupt the target has already signalled (`irq_sync`).
    fn sync_irqs(&self) {
        if let Some(f) = &self.irq_sync {
            f();
        }
    }

    /// Lets in-flight interrupts arrive before counting them: waits at least `irq_latency`,
    /// then until the count has been still for that long (a loaded machine delays the pump
    /// thread), at most a second.
    ///
    /// Where the target can drain its interrupt channel (`irq_sync`), every interrupt signalled
    /// before the last register access returned is counted first, with no timing involved; the
    /// wait then only catches a device that signals asynchronously, after its reply.
    pub fn settle(&self) {
        self.sync_irqs();
        if self.irq_latency.is_zero() {
            return;
        }
        let t0 = std::time::Instant::now();
        let mut last = self.irq.total();
        loop {
            std::thread::sleep(self.irq_latency);
            self.sync_irqs();
            let now = self.irq.total();
            if now == last || t0.elapsed() > std::time::Duration::from_secs(1) {
                return;
            }
            last = now;
        }
    }

    /// Waits until vector `v` has counted at least `count` interrupts (at most 2 s: the pump
    /// thread may be starved on a loaded machine), then [`Session::settle`]s so that extra
    /// ones are counted too. For checks that expect a known number of interrupts; a check that
    /// expects none can only settle.
    pub fn wait_irqs(&self, v: u16, count: u64) {
        if self.irq_latency.is_zero() {
            return;
        }
        let t0 = std::time::Instant::now();
        loop {
            self.sync_irqs();
            if self.irq.count(v) >= count || t0.elapsed() >= std::time::Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.settle();
    }

    /// Whether the transport still reaches the device: a config-space read of the vendor ID.
    /// `Err` only when the transport itself failed (not for a device that answers oddly).
    pub fn reachable(&self) -> Result<(), String> {
        let mut b = [0u8; 2];
        match self
            .handle
            .region_read(bar_registers::REGION_CONFIG, 0, &mut b)
        {
            Err(device::AccessError::Transport(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// What a driver does when it lets go of a device and another binds it: virtio reset
    /// (device_status = 0, then poll until it reads 0; virtio 1.2 4.1.4.3.1, ifcvf_reset in
    /// DPDK drivers/vdpa/ifc/base/ifcvf.c), the target's device reset (FLR through VFIO,
    /// DEVICE_RESET over vfio-user), and every DMA mapping removed.
    pub fn reset_between_groups(&self) -> Result<(), BetweenGroups> {
        let _s = tracing::debug_span!("reset_between_groups").entered();
        let transport = |e: String| BetweenGroups::Transport(e);
        // Only a device that probes as virtio has a device_status to reset; the groups that
        // need one are gated on that (checks::identify).
        if let Ok(pci) = crate::driver::probe::probe(self.handle.as_ref()) {
            let (bar, off) = (
                u32::from(pci.common.bar),
                pci.common.offset + bar_registers::virtio::common::DEVICE_STATUS,
            );
            let access = |e: device::AccessError| match e {
                device::AccessError::Transport(t) => transport(t),
                e => BetweenGroups::Device(format!("device_status at BAR{bar}+{off:#x}: {e}")),
            };
            self.handle.region_write(bar, off, &[0]).map_err(access)?;
            let t0 = std::time::Instant::now();
            loop {
                let mut st = [0u8; 1];
                self.handle.region_read(bar, off, &mut st).map_err(access)?;
                if st[0] == 0 {
                    break;
                }
                if t0.elapsed() > std::time::Duration::from_secs(1) {
                    return Err(BetweenGroups::Device(format!(
                        "device_status still {:#04x} 1 s after writing 0 (BAR{bar}+{off:#x})",
                        st[0]
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if let Some(reset) = &self.device_reset {
            reset().map_err(|e| {
                // A reset that fails on a device that is still reachable is the device's.
                match self.reachable() {
                    Err(t) => transport(t),
                    Ok(()) => BetweenGroups::Device(format!("device reset: {e}")),
                }
            })?;
        }
        self.handle.dma_unmap_all();
        self.reachable().map_err(transport)
    }
}

/// Something the validator can open a session on.
pub trait Target {
    /// Opens the device: reset to its power-on state, looping its transmit side back to its
    /// receive side. Fails fast (no long retry loop) when the device cannot be reached.
    fn open(&self) -> Result<Session, ValidateError>;
    /// Opens it again after a session was dropped (`--reconnect-per-group`); a target whose
    /// previous connection may still be closing retries briefly here.
    fn reopen(&self) -> Result<Session, ValidateError> {
        self.open()
    }
    /// For the report header.
    fn describe(&self) -> String;
    /// The profile the device was created with, where the validator created it (None: the
    /// device's offer is read from it, unless [`ValidateOptions::profile`] says what to expect).
    fn profile(&self) -> Option<bar_registers::Profile> {
        None
    }
    /// Where [`Target::profile`] comes from, for the report.
    fn profile_origin(&self) -> &'static str {
        "profile"
    }
}

/// The built-in model, one instance for the whole run.
pub struct InProcess {
    pub cfg: DeviceConfig,
}

impl InProcess {
    /// A session on a new model made from `cfg`, looped back, reached through what `handle`
    /// makes of it; interrupts arrive within `irq_latency` of the access that caused them.
    pub(crate) fn session(
        cfg: &DeviceConfig,
        handle: impl FnOnce(Arc<Device>) -> Arc<dyn DeviceHandle>,
        irq_latency: std::time::Duration,
    ) -> Result<Session, ValidateError> {
        let dev = Device::new(cfg.clone())?;
        dev.set_loopback();
        let irq = Arc::new(InterruptRecorder::new(dev.layout().msix_vectors));
        dev.set_interrupt_sink(irq.clone());
        let d2 = dev.clone();
        let d3 = dev.clone();
        Ok(Session {
            handle: handle(dev),
            irq,
            announce: Some(Box::new(move || Ok(d2.announce()))),
            irq_latency,
            // What vfio-user DEVICE_RESET does to the model (the serve backend's reset).
            device_reset: Some(Box::new(move || {
                d3.reset();
                Ok(())
            })),
            keep: None,
            irq_sync: None,
        })
    }
}

impl Target for InProcess {
    fn open(&self) -> Result<Session, ValidateError> {
        InProcess::session(&self.cfg, |dev| dev, std::time::Duration::ZERO)
    }

    fn profile(&self) -> Option<bar_registers::Profile> {
        Some(self.cfg.profile.clone())
    }

    fn describe(&self) -> String {
        let q: Vec<&str> = self.cfg.quirks.iter().map(|q| q.name()).collect();
        format!(
            "built-in model: profile {}, {} queue pairs, LM layout {}, log granularity {} B{}",
            self.cfg.profile.name,
            self.cfg.layout.queue_pairs,
            self.cfg.layout.lm_layout.name(),
            self.cfg.log_granularity,
            if q.is_empty() {
                String::new()
            } else {
                format!(", quirks: {}", q.join(", "))
            }
        )
    }
}

/// Any device served over vfio-user (a vendor's model, or `vdpa-emu serve --port loopback`),
/// reached only through the protocol: region reads and writes, DMA_MAP of the validator's
/// memfd, MSI-X eventfds. The device must loop its transmit side back to its receive side.
/// One connection for the whole run: a server may accept only one (the vfio_user crate's
/// `Server::run` serves one and returns).
pub struct OverSocket {
    pub path: std::path::PathBuf,
    /// How long a reply may take before the device counts as unreachable (exit 2).
    pub reply_timeout: std::time::Duration,
    /// The device's control socket (`vdpa-emu serve`'s, see the `ctl` module): the VMM-side
    /// hook for the checks that need one (GUEST_ANNOUNCE on request). None: those checks are
    /// NOT RUN.
    pub ctl: Option<std::path::PathBuf>,
}

impl OverSocket {
    /// Twice QEMU's vfio-user reply timeout (x-msg-timeout, 5000 ms by default;
    /// hw/vfio-user/proxy.c): a server slower than that would not run a guest either.
    pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    /// The device at `path`, with the control socket `serve` opens beside it (`PATH.ctl`)
    /// when that exists.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        let path = path.into();
        let ctl = crate::ctl::default_ctl_path(&path);
        let ctl = std::fs::symlink_metadata(&ctl)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .then_some(ctl);
        OverSocket {
            path,
            reply_timeout: Self::REPLY_TIMEOUT,
            ctl,
        }
    }

    /// The announce hook through the control socket.
    fn announce_hook(&self) -> Option<AnnounceHook> {
        let ctl = self.ctl.clone()?;
        let timeout = self.reply_timeout;
        Some(Box::new(move || {
            use crate::ctl::{CtlClient, Request};
            let r = CtlClient::connect(&ctl, timeout)
                .and_then(|mut c| c.call(&Request::Announce {}))
                .map_err(|e| e.to_string())?;
            r.announced
                .ok_or_else(|| format!("{}: announce answered without `announced`", ctl.display()))
        }))
    }

    fn connect(&self, retry_for: std::time::Duration) -> Result<Session, ValidateError> {
        use crate::vfio_user::client::Client;
        let err = |e: &dyn std::fmt::Display| {
            ValidateError::Target(format!("{}: {e}", self.path.display()))
        };
        let t0 = std::time::Instant::now();
        // A server busy with another client refuses the handshake with EBUSY. When that client
        // is the session this process just closed (a second run, a reopen), the server frees
        // it as soon as it sees the close: worth BUSY_WAIT more, whatever `retry_for` is.
        const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        let c = loop {
            let stream = match std::os::unix::net::UnixStream::connect(&self.path) {
                Ok(s) => s,
                Err(e) if t0.elapsed() >= retry_for => {
                    return Err(err(&format!("connecting: {e}")))
                }
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
            };
            // A server that accepts and then does not answer (the handshake or any later
            // request) is unreachable, reported within the timeout rather than waited for
            // forever.
            stream
                .set_read_timeout(Some(self.reply_timeout))
                .map_err(|e| err(&e))?;
            match Client::from_stream(stream) {
                Ok(c) => break c,
                Err(e)
                    if e.errno() == Some(libc::EBUSY)
                        && t0.elapsed() < retry_for.max(BUSY_WAIT) =>
                {
                    tracing::debug!(path = %self.path.display(), "server busy; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(err(&format!("handshake: {e}"))),
            }
        };
        tracing::info!(path = %self.path.display(), "connected");
        // Every register write waits for its reply, so a doorbell's work is done when the
        // write returns, as with a CPU's non-posted access followed by a read. That holds for
        // trapped doorbells only: a doorbell stored into a mapped notify window (`serve
        // --doorbell mmap`) is serviced later by the server's doorbell engine, so the
        // validator traps its doorbells even where the server offers the mapping.
        c.set_posted_writes(false);
        c.set_use_mmap(false);
        c.reset().map_err(|e| err(&e))?;
        let c = Arc::new(c);
        let n = c
            .irq_info(vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| err(&e))?
            .count;
        let irq = Arc::new(InterruptRecorder::new(n.min(u32::from(u16::MAX)) as u16));
        let pump = Arc::new(c.wire_interrupts(irq.clone()).map_err(|e| err(&e))?);
        let drain = pump.clone();
        let c2 = c.clone();
        Ok(Session {
            handle: c,
            irq,
            announce: self.announce_hook(),
            irq_latency: std::time::Duration::from_millis(30),
            device_reset: Some(Box::new(move || c2.reset().map_err(|e| e.to_string()))),
            keep: Some(Box::new(pump)),
            irq_sync: Some(Box::new(move || drain.drain())),
        })
    }
}

impl Target for OverSocket {
    /// One attempt: a socket that is not there, or a server that does not answer the
    /// handshake, is reported at once; a server that answers "busy" is given 2 s to finish
    /// with its client.
    fn open(&self) -> Result<Session, ValidateError> {
        self.connect(std::time::Duration::ZERO)
    }

    /// The previous session's connection may still be closing on the server side (a server
    /// that serves one client at a time accepts the next only then): retry for up to 2 s.
    fn reopen(&self) -> Result<Session, ValidateError> {
        self.connect(std::time::Duration::from_secs(2))
    }

    fn describe(&self) -> String {
        format!("vfio-user device at {}", self.path.display())
    }

    fn profile_origin(&self) -> &'static str {
        "control socket"
    }

    /// The profile the server says the device has, through its control socket (`vdpa-emu
    /// serve`'s `stats`): what the device should offer, so a device that offers less (a quirk)
    /// fails instead of being taken at its word. None without a control socket (or one that
    /// does not answer): the offered set is then read from the device.
    fn profile(&self) -> Option<bar_registers::Profile> {
        use crate::ctl::{CtlClient, Request};
        let ctl = self.ctl.as_ref()?;
        let stats = CtlClient::connect(ctl, self.reply_timeout)
            .and_then(|mut c| c.call(&Request::Stats {}))
            .map_err(|e| tracing::warn!(ctl = %ctl.display(), error = %e, "no profile from the control socket"))
            .ok()?
            .stats?;
        if stats.profile.is_empty() {
            return None;
        }
        Some(bar_registers::Profile {
            name: stats.profile,
            description: "as the device's control socket reports it".into(),
            source: format!("control socket {}", ctl.display()),
            features: stats.profile_features,
            params: Default::default(),
        })
    }
}

/// What the validator assumes of the device beyond what it can read.
#[derive(Clone, Debug)]
pub struct ValidateOptions {
    /// LM layout the device is expected to present.
    pub lm_layout: bar_registers::LmLayout,
    /// Dirty-log granularity the device declares.
    pub log_granularity: u64,
    /// Run the 2^16 index wrap-around (65,536+ completions; the slowest check).
    pub wraparound: bool,
    /// Open a new session for every group (the old behaviour) instead of one for the run.
    pub reconnect_per_group: bool,
    /// The profile the device is expected to offer (`--profile`); None: the target's own
    /// ([`Target::profile`]), else what the device offers, read from it.
    pub profile: Option<bar_registers::Profile>,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            lm_layout: bar_registers::LmLayout::Dpdk,
            log_granularity: 4096,
            wraparound: true,
            reconnect_per_group: false,
            profile: None,
        }
    }
}

/// Runs every check group against `target`.
pub fn run(target: &dyn Target, o: &ValidateOptions) -> Result<Report, ValidateError> {
    run_groups(target, o, &[])
}

/// The groups of `ids` in report order (empty: all of them); an id that names no group is an
/// error, not a group that passes with no findings.
pub fn select_groups(ids: &[String]) -> Result<Vec<(&'static str, &'static str)>, ValidateError> {
    if let Some(bad) = ids
        .iter()
        .find(|id| !GROUPS.iter().any(|g| g.0 == id.as_str()))
    {
        return Err(ValidateError::UnknownGroup {
            id: bad.clone(),
            known: GROUPS.iter().map(|g| g.0).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(GROUPS
        .iter()
        .copied()
        .filter(|g| ids.is_empty() || ids.iter().any(|id| id == g.0))
        .collect())
}

/// A group the run did not reach because the device was lost (or could not be reopened).
fn run_ended(id: &'static str, title: &'static str, why: &str) -> GroupResult {
    GroupResult::new(
        id,
        title,
        vec![Finding::not_run(
            id,
            "group",
            &format!("the run ended before this group: {why}"),
        )],
    )
}

/// Runs the check groups `ids` (empty: all) against `target`, in one session unless
/// `o.reconnect_per_group`.
///
/// `Err` when the device could not be opened at all; a device lost part-way gives a report
/// with [`Report::aborted`] set. Groups whose prerequisites the device lacks (identity, LM
/// BAR, packed ring) are NOT RUN with the reason.
pub fn run_groups(
    target: &dyn Target,
    o: &ValidateOptions,
    ids: &[String],
) -> Result<Report, ValidateError> {
    let _span = tracing::info_span!("validate").entered();
    let selected = select_groups(ids)?;
    let t0 = std::time::Instant::now();
    let mut session = Some(target.open()?);
    let mut aborted: Option<String> = None;
    let ident = {
        let s = session.as_ref().expect("just opened");
        match checks::identify(s, o) {
            Ok(i) => i,
            Err(e) => match s.reachable() {
                Err(t) => return Err(ValidateError::Target(format!("transport failed: {t}"))),
                Ok(()) => checks::Identity::unreadable(&e.to_string()),
            },
        }
    };
    tracing::info!(?ident, "identified");
    // What the device should offer: the profile given or the target's; else what it offers.
    let (profile, origin) = match o.profile.clone() {
        Some(p) => (Some(p), "profile"),
        None => (target.profile(), target.profile_origin()),
    };
    let expected = checks::Expected {
        profile: profile.as_ref().map(|p| p.name.clone()),
        features: profile.as_ref().map_or(ident.offered, |p| p.features),
    };
    let o = &ValidateOptions {
        profile: profile.clone(),
        ..o.clone()
    };
    let mut groups = Vec::new();
    let mut first = true;
    let mut pending_fail: Option<String> = None;
    for (id, title) in selected {
        let _g = tracing::info_span!("group", id).entered();
        if let Some(why) = &aborted {
            groups.push(run_ended(id, title, why));
            continue;
        }
        if let Some(why) = ident.gate(id) {
            tracing::info!(why, "not run");
            groups.push(GroupResult::new(
                id,
                title,
                vec![Finding::not_run(id, "group", &why)],
            ));
            continue;
        }
        if let Some(f) = checks::feature_gate(id, &expected, ident.offered) {
            tracing::info!(verdict = f.verdict.name(), why = %f.observed, "feature gate");
            groups.push(GroupResult::new(id, title, vec![f]));
            continue;
        }
        // Put the device back to a clean state (or open it again, if told to).
        if !first {
            if o.reconnect_per_group {
                session = None;
                match target.reopen() {
                    Ok(s) => session = Some(s),
                    Err(e) => aborted = Some(format!("reconnecting: {e}")),
                }
            } else if let Some(s) = &session {
                match s.reset_between_groups() {
                    Ok(()) => {}
                    Err(BetweenGroups::Device(e)) => pending_fail = Some(e),
                    Err(BetweenGroups::Transport(e)) => aborted = Some(e),
                }
            }
        }
        first = false;
        let Some(s) = session.as_ref().filter(|_| aborted.is_none()) else {
            groups.push(run_ended(id, title, aborted.as_deref().unwrap_or_default()));
            continue;
        };
        let mut findings = Vec::new();
        if let Some(e) = pending_fail.take() {
            findings.push(Finding::fail(
                id,
                "device resets before the group",
                true,
                "device_status reads 0 after writing 0 and the device reset succeeds",
                &e,
                &locate::reg("common_cfg", bar_registers::virtio::common::DEVICE_STATUS),
            ));
        }
        let (f, lost) = checks::run_group(id, s, o);
        findings.extend(f);
        if let Some(e) = lost {
            tracing::error!(error = %e, "device lost");
            aborted = Some(e);
        }
        groups.push(GroupResult::new(id, title, findings));
    }
    let hints = match session.as_ref().filter(|_| aborted.is_none()) {
        Some(s) => layout_hint(s, o, &groups).into_iter().collect(),
        None => Vec::new(),
    };
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "done");
    Ok(Report {
        target: format!("{} (found {})", target.describe(), ident.found),
        profile: report::ProfileReport::new(profile.as_ref(), origin, ident.offered),
        groups,
        aborted,
        hints,
    })
}

/// The groups whose checks depend on the LM block layout.
const LM_GROUPS: [&str; 2] = ["vring-index-rw", "dirty-log"];

/// When an LM group failed, runs the failed LM groups again, in the same session after a reset,
/// with the other LM layout: if they all pass there, the device most likely presents that
/// layout and the failures say nothing else; the hint says so (the verdicts stay those of the
/// layout asked for).
fn layout_hint(s: &Session, o: &ValidateOptions, groups: &[GroupResult]) -> Option<String> {
    use bar_registers::LmLayout;
    let failed: Vec<&str> = groups
        .iter()
        .filter(|g| LM_GROUPS.contains(&g.id) && g.verdict == Verdict::Fail)
        .map(|g| g.id)
        .collect();
    if failed.is_empty() {
        return None;
    }
    let other = match o.lm_layout {
        LmLayout::Dpdk => LmLayout::Linux,
        LmLayout::Linux => LmLayout::Dpdk,
    };
    let _span = tracing::info_span!("layout hint", other = other.name()).entered();
    let alt = ValidateOptions {
        lm_layout: other,
        ..o.clone()
    };
    for id in &failed {
        s.reset_between_groups().ok()?;
        let (f, lost) = checks::run_group(id, s, &alt);
        if lost.is_some() || f.iter().any(|f| f.verdict == Verdict::Fail) {
            return None;
        }
    }
    Some(format!(
        "{} pass{} when the device is driven with --lm-layout {}: it most likely presents the {} LM layout ({}), not the {} one this run assumed; validate again with --lm-layout {}",
        failed.join(" and "),
        if failed.len() == 1 { "es" } else { "" },
        other.name(),
        other.name(),
        match other {
            LmLayout::Dpdk => "DPDK drivers/vdpa/ifc/base/ifcvf.h",
            LmLayout::Linux => "Linux drivers/vdpa/ifcvf/ifcvf_base.h",
        },
        o.lm_layout.name(),
        other.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_checks_and_every_check_a_group() {
        for (id, _) in GROUPS {
            assert!(checks::check(id).is_some(), "group {id} has no checks");
        }
        for (id, _) in checks::CHECKS {
            assert!(
                GROUPS.iter().any(|g| g.0 == *id),
                "checks {id} belong to no group"
            );
        }
        assert_eq!(GROUPS.len(), checks::CHECKS.len());
    }

    #[test]
    fn an_unknown_group_is_an_error() {
        let e = select_groups(&["pci-structure".into(), "no-such-group".into()]).unwrap_err();
        assert!(matches!(&e, ValidateError::UnknownGroup { id, .. } if id == "no-such-group"));
        assert!(e.to_string().contains("dirty-log"), "{e}");
        let some = select_groups(&["reset".into(), "pci-structure".into()]).unwrap();
        assert_eq!(
            some.iter().map(|g| g.0).collect::<Vec<_>>(),
            ["pci-structure", "reset"]
        );
        assert_eq!(select_groups(&[]).unwrap().len(), GROUPS.len());
    }

    #[test]
    fn a_group_without_checks_fails() {
        let t = InProcess {
            cfg: DeviceConfig::with_queue_pairs(1),
        };
        let (f, lost) = checks::run_group("no-such-group", &t.open().unwrap(), &Default::default());
        assert!(lost.is_none());
        assert!(f.iter().any(|f| f.verdict == Verdict::Fail), "{f:?}");
        assert_eq!(
            GroupResult::new("no-such-group", "", f).verdict,
            Verdict::Fail
        );
    }
}
