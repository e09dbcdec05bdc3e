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

/// `n` 60-byte frames (02:00:00:00:00:08 -> :09, a local ethertype) numbered 0.. in bytes 14..18
/// (read back with [`frame_number`]): for tests that check order and loss at a port.
pub fn numbered_frames(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut f = vec![0u8; 60];
            f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 8]);
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            f[14..18].copy_from_slice(&i.to_be_bytes());
            f
        })
        .collect()
}

/// The number [`numbered_frames`] put in `f`.
pub fn frame_number(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[14..18].try_into().unwrap())
}
