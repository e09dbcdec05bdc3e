//! The vdpa-emu NIC: a software model of an Intel IFC VF-style vDPA virtio-net function.
//!
//! It exposes a PCI function (config space with the virtio capabilities, BAR0 with the virtio
//! transport, BAR2 with MSI-X, BAR4 with the live-migration block), and does all DMA through
//! the IOMMU model of the `dma` crate. It never sees a socket: the vfio-user server and the
//! in-process driver model both reach it through [`RegionAccess`] and [`DmaMapper`].

pub mod capture;
pub mod config;
pub mod counters;
mod device;
pub mod doorbell;
pub mod fault;
mod fnv;
pub mod interrupt;
pub mod net;
mod on_lanes;
pub mod pci;
pub mod port;
pub mod queue;
pub mod quirks;
pub mod snapshot;
pub mod state;
pub mod transport;

pub use capture::{CaptureDirection, FrameCapture};
pub use config::{DeviceConfig, MsixOwner};
pub use counters::{DeviceCounters, QueueCounters};
pub use device::{AccessError, Device, DmaMapper, InjectedFault, QueueSnapshot, RegionAccess};
pub use fault::DeviceFault;
pub use interrupt::{InterruptRecorder, InterruptSink};
pub use port::{
    BufPool, LinkPort, LoopbackPort, NullPort, Port, PortOffloads, ReadyWaker, RoomSignal, RxInbox,
};
pub use quirks::{Quirk, Quirks};
pub use snapshot::SnapshotError;
