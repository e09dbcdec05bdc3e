//! The device-state (migration) stream target: bytes into `Device::restore_state` on a
//! device that was just reset (and, as the input chooses, paused as a migration's RESUMING
//! state leaves it).
//!
//! Input: a mode byte, then the stream. Mode bit 0 asks the harness to repair the stream's
//! header length and SEAL checksum (FNV-1a 64, draft-eastlake-fnv) after mutation, so that
//! libFuzzer reaches the section decoders and the restore itself rather than stopping at the
//! checksum; bit 1 restores while paused (then resumes).
//!
//! Checked: no panic; a refused stream leaves the device reset (device_status 0, no fault,
//! every queue disabled); an accepted one can be saved again and that stream is accepted too.

use crate::cursor::Cursor;
use bar_registers::virtio::common;
use device::{Device, DeviceConfig, RegionAccess};
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    static DEV: RefCell<Option<Arc<Device>>> = const { RefCell::new(None) };
}

/// The device configuration the target restores into (and the seeds were saved from).
pub fn config() -> DeviceConfig {
    DeviceConfig::with_queue_pairs(1)
}

/// FNV-1a 64 (draft-eastlake-fnv), the stream's seal.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Rewrites the header's total length and, when the stream ends in a SEAL section, its
/// checksum, so that a mutated stream passes the framing checks.
pub fn repair(s: &mut [u8]) {
    let len = s.len();
    if len >= device::snapshot::HEADER_LEN {
        s[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    }
    if len >= device::snapshot::HEADER_LEN + 16 && s[len - 16..len - 12] == *b"SEAL" {
        let h = fnv1a64(&s[..len - 16]);
        s[len - 8..].copy_from_slice(&h.to_le_bytes());
    }
}

fn status(dev: &Device) -> u8 {
    let mut b = [0u8];
    dev.region_read(
        0,
        dev.layout().common.offset + common::DEVICE_STATUS,
        &mut b,
    )
    .expect("device_status read");
    b[0]
}

/// Runs one input.
pub fn run(data: &[u8]) {
    DEV.with(|d| {
        let mut d = d.borrow_mut();
        let dev = d.get_or_insert_with(|| Device::new(config()).expect("device"));
        run_on(dev, data);
    })
}

fn run_on(dev: &Arc<Device>, data: &[u8]) {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let mut stream = c.rest().to_vec();
    if mode & 1 != 0 {
        repair(&mut stream);
    }
    let paused = mode & 2 != 0;
    dev.reset();
    if paused {
        dev.pause();
    }
    match dev.restore_state(&stream) {
        Ok(()) => {
            let again = dev.save_state();
            assert!(
                again.len() <= dev.max_state_len(),
                "saved stream over max_state_len"
            );
            dev.reset();
            dev.restore_state(&again)
                .unwrap_or_else(|e| panic!("a re-saved stream was refused: {e}"));
        }
        Err(e) => {
            // Formatting the error must not panic either.
            let _ = e.to_string();
            assert_eq!(
                status(dev),
                0,
                "refused stream ({e}) left device_status set"
            );
            assert_eq!(dev.fault(), None, "refused stream ({e}) left a fault");
            for q in 0..dev.layout().num_queues {
                let s = dev.queue(q).expect("queue");
                assert!(!s.enabled, "refused stream ({e}) left queue {q} enabled");
            }
        }
    }
    if paused {
        dev.resume();
    }
    dev.reset();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_makes_a_resealed_stream_acceptable() {
        let dev = Device::new(config()).unwrap();
        let mut s = dev.save_state();
        dev.restore_state(&s).unwrap();
        // Any byte of the seal changed: refused; repaired: accepted again.
        let n = s.len();
        s[n - 1] ^= 1;
        assert!(dev.restore_state(&s).is_err());
        repair(&mut s);
        dev.restore_state(&s).unwrap();
    }
}
