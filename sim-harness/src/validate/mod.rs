//! `vdpa-emu validate`: does a device meet what vDPA needs of the hardware?
//!
//! The checks are grouped after the vDPA talk's list of HW prerequisites (ring layout per the
//! virtio spec, feature awareness, a readable and writable vring index, dirty-page logging,
//! GUEST_ANNOUNCE instead of RARP) plus PCI structure and reset. They use only what a driver
//! can see: registers, the memory it shares with the device, interrupts. So the same checks
//! run against the built-in model in-process and, through a vfio-user client, against any
//! device served over vfio-user.

mod checks;
mod locate;
pub mod report;

use crate::driver::{DeviceHandle, DriverError};
use device::{Device, DeviceConfig, InterruptRecorder};
use std::sync::Arc;

pub use report::{Finding, GroupResult, Report, Verdict};

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
    }
}

/// Why validation could not run (as opposed to a check that failed).
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
}

/// One connection to the device under test, fresh for each check group.
pub struct Session {
    pub handle: Arc<dyn DeviceHandle>,
    pub irq: Arc<InterruptRecorder>,
    /// The VMM-side hook that asks the device to request an announce (GUEST_ANNOUNCE), where
    /// the target has one.
    pub announce: Option<Box<dyn Fn() -> bool + Send>>,
    /// How long interrupts may take to reach `irq` after the register access that caused
    /// them returned (0 in-process; eventfds and a pump thread over vfio-user).
    pub irq_latency: std::time::Duration,
    /// Whatever must live as long as the session (a socket client's interrupt pump).
    pub keep: Option<Box<dyn std::any::Any + Send>>,
    /// Delivers, on the calling thread, every interrupt the device has already signalled (a
    /// socket client's eventfd drain), so counts do not depend on when a pump thread runs.
    pub irq_sync: Option<Box<dyn Fn() + Send>>,
}

impl Session {
    /// Lets in-flight interrupts arrive before counting them: waits at least `irq_latency`,
    /// then until the count has been still for that long (a loaded machine delays the pump
    /// thread), at most a second.
    ///
    /// Where the target can drain its interrupt channel (`irq_sync`), every interrupt signalled
    /// before the last register access returned is counted first, with no timing involved; the
    /// wait then only catches a device that signals asynchronously, after its reply.
    pub fn settle(&self) {
        let sync = || {
            if let Some(f) = &self.irq_sync {
                f();
            }
        };
        sync();
        if self.irq_latency.is_zero() {
            return;
        }
        let t0 = std::time::Instant::now();
        let mut last = self.irq.total();
        loop {
            std::thread::sleep(self.irq_latency);
            sync();
            let now = self.irq.total();
            if now == last || t0.elapsed() > std::time::Duration::from_secs(1) {
                return;
            }
            last = now;
        }
    }
}

/// Something the validator can open sessions on.
pub trait Target {
    /// A device reset to its power-on state, looping its transmit side back to its receive side.
    fn session(&self) -> Result<Session, ValidateError>;
    /// For the report header.
    fn describe(&self) -> String;
}

/// The built-in model, a fresh instance per session.
pub struct InProcess {
    pub cfg: DeviceConfig,
}

impl Target for InProcess {
    fn session(&self) -> Result<Session, ValidateError> {
        let dev = Device::new(self.cfg.clone())?;
        dev.set_loopback();
        let irq = Arc::new(InterruptRecorder::new(dev.layout().msix_vectors));
        dev.set_interrupt_sink(irq.clone());
        let d2 = dev.clone();
        Ok(Session {
            handle: dev,
            irq,
            announce: Some(Box::new(move || d2.announce())),
            irq_latency: std::time::Duration::ZERO,
            keep: None,
            irq_sync: None,
        })
    }

    fn describe(&self) -> String {
        let q: Vec<&str> = self.cfg.quirks.iter().map(|q| q.name()).collect();
        format!(
            "built-in model: {} queue pairs, LM layout {}, log granularity {} B{}",
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
pub struct OverSocket {
    pub path: std::path::PathBuf,
}

impl Target for OverSocket {
    fn session(&self) -> Result<Session, ValidateError> {
        use crate::vfio_user::client::Client;
        use device::DmaMapper;
        let err = |e: &dyn std::fmt::Display| {
            ValidateError::Target(format!("{}: {e}", self.path.display()))
        };
        // One client at a time: the previous session's connection may still be closing.
        let t0 = std::time::Instant::now();
        let c = loop {
            match Client::connect(&self.path) {
                Ok(c) => break c,
                Err(e) if t0.elapsed() > std::time::Duration::from_secs(5) => return Err(err(&e)),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        // Every register write waits for its reply, so a doorbell's work is done when the
        // write returns, as with a CPU's non-posted access followed by a read.
        c.set_posted_writes(false);
        c.reset().map_err(|e| err(&e))?;
        c.dma_unmap_all();
        let c = Arc::new(c);
        let n = c
            .irq_info(vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| err(&e))?
            .count;
        let irq = Arc::new(InterruptRecorder::new(n.min(u32::from(u16::MAX)) as u16));
        let pump = Arc::new(c.wire_interrupts(irq.clone()).map_err(|e| err(&e))?);
        let drain = pump.clone();
        Ok(Session {
            handle: c,
            irq,
            announce: None,
            irq_latency: std::time::Duration::from_millis(30),
            keep: Some(Box::new(pump)),
            irq_sync: Some(Box::new(move || drain.drain())),
        })
    }

    fn describe(&self) -> String {
        format!("vfio-user device at {}", self.path.display())
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
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            lm_layout: bar_registers::LmLayout::Dpdk,
            log_granularity: 4096,
            wraparound: true,
        }
    }
}

/// Runs every check group against `target`.
pub fn run(target: &dyn Target, o: &ValidateOptions) -> Report {
    run_groups(target, o, &[]).expect("every group in GROUPS exists")
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

/// Runs the check groups `ids` (empty: all) against `target`.
pub fn run_groups(
    target: &dyn Target,
    o: &ValidateOptions,
    ids: &[String],
) -> Result<Report, ValidateError> {
    let _span = tracing::info_span!("validate").entered();
    let mut groups = Vec::new();
    for (id, title) in select_groups(ids)? {
        let _g = tracing::info_span!("group", id).entered();
        let findings = match target.session() {
            Ok(s) => checks::run_group(id, s, o),
            Err(e) => vec![Finding::fail(
                id,
                "session",
                true,
                "a fresh device session",
                &e.to_string(),
                "",
            )],
        };
        groups.push(GroupResult::new(id, title, findings));
    }
    Ok(Report {
        target: target.describe(),
        groups,
    })
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
        let f = checks::run_group("no-such-group", t.session().unwrap(), &Default::default());
        assert!(f.iter().any(|f| f.verdict == Verdict::Fail), "{f:?}");
        assert_eq!(
            GroupResult::new("no-such-group", "", f).verdict,
            Verdict::Fail
        );
    }
}
