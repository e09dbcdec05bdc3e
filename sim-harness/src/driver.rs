//! The driver model (crate `vdpa-virtio-driver`, sim-harness/virtio-driver), re-exported so
//! `sim_harness::driver::...` paths keep working, plus the one thing that crate must not know:
//! how to bind to an in-process [`device::Device`].

pub use vdpa_virtio_driver::*;

use device::{Device, InterruptRecorder};
use std::sync::Arc;

/// Binds a driver to an in-process device: interrupts go to a recorder the driver reads.
pub fn in_process(dev: &Arc<Device>, opts: DriverOptions) -> Result<NetDriver, DriverError> {
    let irq = Arc::new(InterruptRecorder::new(dev.layout().msix_vectors));
    dev.set_interrupt_sink(irq.clone());
    NetDriver::new(dev.clone(), irq, opts)
}
