//! `vdpa-emu validate`: does a device meet what vDPA needs of the hardware?
//!
//! The checks are grouped after the vDPA talk's list of HW prerequisites (ring layout per the
//! virtio spec, feature awareness, a readable and writable vring index, dirty-page logging,
//! GUEST_ANNOUNCE instead of RARP) plus PCI structure and reset. They use only what a driver
//! can see: registers, the memory it shares with the device, interrupts. So the same checks
//! run against the built-in model in-process and, through a vfio-user client, against any
//! device served over vfio-user.

mod checks;
pub mod report;

use crate::driver::{DeviceHandle, DriverError};
use device::{Device, DeviceConfig, InterruptRecorder};
use std::sync::Arc;

pub use report::{Finding, GroupResult, Report, Verdict};

/// Check groups, in report order: (id, title).
pub const GROUPS: &[(&str, &str)] = &[
    ("pci-structure", "PCI structure the IFC VF drivers need"),
    ("ring-layout-split", "split ring consumed and produced byte-exactly per spec"),
    ("ring-layout-packed", "packed ring (when offered)"),
    ("feature-awareness", "the device honours exactly the negotiated features"),
    ("vring-index-rw", "readable and writable vring index (LM ring state)"),
    ("dirty-log", "dirty-page logging: base, end, enable"),
    ("guest-announce", "GUEST_ANNOUNCE instead of RARP"),
    ("reset", "reset returns every register to its reset value; no DMA after reset"),
];

/// Why validation could not run (as opposed to a check that failed).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("creating the device: {0}")]
    Layout(#[from] bar_registers::LayoutError),
    #[error("{0}")]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Target(String),
}

/// One connection to the device under test, fresh for each check group.
pub struct Session {
    pub handle: Arc<dyn DeviceHandle>,
    pub irq: Arc<InterruptRecorder>,
    /// The VMM-side hook that asks the device to request an announce (GUEST_ANNOUNCE), where
    /// the target has one.
    pub announce: Option<Box<dyn Fn() -> bool + Send>>,
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
        Ok(Session { handle: dev, irq, announce: Some(Box::new(move || d2.announce())) })
    }

    fn describe(&self) -> String {
        let q: Vec<&str> = self.cfg.quirks.iter().map(|q| q.name()).collect();
        format!(
            "built-in model: {} queue pairs, LM layout {}, log granularity {} B{}",
            self.cfg.layout.queue_pairs,
            self.cfg.layout.lm_layout.name(),
            self.cfg.log_granularity,
            if q.is_empty() { String::new() } else { format!(", quirks: {}", q.join(", ")) }
        )
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
        ValidateOptions { lm_layout: bar_registers::LmLayout::Dpdk, log_granularity: 4096, wraparound: true }
    }
}

/// Runs every check group against `target`.
pub fn run(target: &dyn Target, o: &ValidateOptions) -> Report {
    let _span = tracing::info_span!("validate").entered();
    let mut groups = Vec::new();
    for &(id, title) in GROUPS {
        let findings = match target.session() {
            Ok(s) => checks::run_group(id, s, o),
            Err(e) => vec![Finding::fail(id, "session", true, "a fresh device session", &e.to_string(), "")],
        };
        groups.push(GroupResult::new(id, title, findings));
    }
    Report { target: target.describe(), groups }
}
