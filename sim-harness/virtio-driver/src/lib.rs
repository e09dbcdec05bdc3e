//! The driver model: a virtio-net driver in Rust that sees only what a real driver sees
//! (registers through [`device::RegionAccess`], memory it shares with the device through
//! [`device::DmaMapper`], interrupts). It brings the device up and down with the exact DPDK
//! IFC VF sequences (drivers/vdpa/ifc/base/ifcvf.c ifcvf_start_hw / ifcvf_stop_hw). The
//! validator, the scenarios, the benches and the tests all drive the device through it.
//!
//! Independence: this crate takes register offsets from bar-registers and ring flags from
//! virtio-bindings ([`flags`]); of the device crate it uses only the access seam
//! ([`device::RegionAccess`], [`device::DmaMapper`], [`device::AccessError`],
//! [`device::InterruptRecorder`]), never the device's queue code or constants, so a ring
//! bug in the device is not shared by the driver that tests it. Binding to an in-process
//! `device::Device` is the harness's job (`sim_harness::driver::in_process`).

pub mod flags;
pub mod hdr;
pub mod memory;
pub mod net;
pub mod packed;
pub mod probe;
pub mod ring;

use device::{AccessError, DmaMapper, RegionAccess};

pub use memory::{GuestMemory, MemoryError};
pub use net::{DriverOptions, DriverQueueRing, NetDriver};
pub use packed::PackedDriverRing;
pub use probe::{probe, PciInfo};
pub use ring::DriverRing;

/// What the driver model needs of a device: registers and DMA mappings. Implemented by the
/// in-process `device::Device` and by the vfio-user client (`vdpa_vfio_user::Client`).
pub trait DeviceHandle: RegionAccess + DmaMapper + Send + Sync {}
impl<T: RegionAccess + DmaMapper + Send + Sync> DeviceHandle for T {}

/// Driver-side failures: each names what the device did wrong or what was refused.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("register access refused: {0}")]
    Access(#[from] AccessError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("PCI probe: {0}")]
    Probe(String),
    #[error("device did not finish reset: device_status still {0:#04x} after polling")]
    ResetTimeout(u8),
    #[error("device refused FEATURES_OK for {features:#x} (status reads {status:#04x})")]
    FeaturesRejected { features: u64, status: u8 },
    #[error("config_msix_vector reads back 0xffff after writing {0}")]
    MsixConfigRejected(u16),
    #[error("queue {queue}: queue_msix_vector reads back {got:#x} after writing {want}")]
    QueueVectorRejected { queue: u16, want: u16, got: u16 },
    #[error("queue {queue}: queue_enable still reads 1 after {polls} polls")]
    DisableTimeout { queue: u16, polls: u32 },
    #[error("queue {queue}: queue_reset still reads 1 after {polls} polls")]
    QueueResetTimeout { queue: u16, polls: u32 },
    #[error("queue {queue}: {what} reads {got} before the re-enable (the reset is not done)")]
    QueueResetBusy {
        queue: u16,
        what: &'static str,
        got: u16,
    },
    #[error("queue {queue}: queue_enable reads {got} after writing 1")]
    EnableFailed { queue: u16, got: u16 },
    #[error("queue {queue}: device returned used id {id}, which is not an in-flight head")]
    BadUsed { queue: u16, id: u32 },
    #[error("device reports DEVICE_NEEDS_RESET (status {0:#04x})")]
    NeedsReset(u8),
    #[error("control command class {class} cmd {cmd} not completed by the device")]
    CtrlTimeout { class: u8, cmd: u8 },
    #[error("control command class {class} cmd {cmd} answered VIRTIO_NET_ERR")]
    CtrlRejected { class: u8, cmd: u8 },
    #[error("{0}")]
    Usage(String),
}
