//! Test support shared by several integration test files.
#![allow(dead_code)] // each test file uses a different part

pub mod hostile;

use device::{Device, InterruptRecorder};
use sim_harness::driver::NetDriver;
use std::sync::Arc;

/// Moves `drv` to `dst` with the device state of its paused device `state` (what a VMM does
/// at the switch-over): interrupts wired, the same guest memory, the state restored while
/// paused, then resumed.
pub fn migrate_driver(drv: &mut NetDriver, dst: &Arc<Device>, state: &[u8]) {
    let irq = Arc::new(InterruptRecorder::new(dst.layout().msix_vectors));
    dst.set_interrupt_sink(irq.clone());
    let mem = drv.mem.clone();
    drv.migrate_to(dst.clone(), irq, mem).unwrap();
    dst.pause();
    dst.restore_state(state).unwrap();
    dst.resume();
}
