//! Doorbells that don't wait: the notify window in shared memory and the engine that polls it.
//!
//! Over vfio-user a trapped doorbell is a REGION_WRITE message: the vCPU stops for a socket
//! send (QEMU's posted writes) or a whole round trip (once posted writes are off), and the
//! server runs the queue inline in its message loop. Real IFC VF hardware gets a posted PCIe
//! write and its doorbell logic notices it on its own. This module models that:
//!
//! - [`area::NotifyArea`]: BAR0's notify window as a memfd, one slot per queue, with the slot
//!   protocol (a kick is consumed before its queue is serviced; the argument is in that
//!   module). `serve` hands the memfd to QEMU as a sparse mmap area of BAR0, so a guest's kick
//!   is a store to shared memory with no exit to the socket.
//! - [`engine::DoorbellEngine`]: the thread that polls the slots and, when one holds a kick,
//!   has the device take and ring them (`Device::take_shared_doorbells`: each kick taken
//!   under the device lock and rung as a trapped doorbell is; transmit budgets then run with
//!   the lock free, docs/architecture.md, Concurrency).
//!
//! Ordering with trapped accesses: every register access (`RegionAccess` on the device) first
//! takes the kicks waiting in the window, under the same lock, so a read or write never passes
//! a doorbell stored before it, as PCIe ordering guarantees for a posted write followed by a
//! request (a driver's flush read after a doorbell, DPDK's queue_enable = 0 after its last
//! kick). Kicks are only ever taken under the device lock, so an access cannot slip between
//! another holder's take and its service.
//! - [`poll::PollPolicy`]: adaptive polling: short sleeps after a kick or device activity,
//!   doubling to 500 us while traffic is recent and to 10 ms when idle.
//! - [`sched`]: how the engine thread may ask to be scheduled promptly (SCHED_FIFO priority 1,
//!   an EEVDF short slice); normal by default, which gave the guests the most throughput.
//!
//! The trapped path stays: a REGION_WRITE to the notify window still rings the doorbell (QEMU
//! traps the whole BAR when a mapping fails, and while an INTx is pending), and
//! `serve --doorbell trap` offers no mapping at all. Which path QEMU takes and why is in
//! docs/doorbells.md.

pub mod area;
pub mod engine;
pub mod poll;
pub mod sched;

pub use area::{NotifyArea, NotifyAreaError, IDLE};
pub use engine::{DoorbellEngine, EngineStats};
pub use poll::{PollPolicy, PollPolicyError};
pub use sched::{EngineSched, SchedRequest};

use crate::Device;
use std::sync::Arc;

/// Why shared-memory doorbells could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SharedDoorbellsError {
    #[error(transparent)]
    Area(#[from] NotifyAreaError),
    #[error(transparent)]
    Policy(#[from] PollPolicyError),
    #[error("starting the doorbell engine thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Gives `dev` a notify area (cleared by every device reset) and starts the engine that rings
/// `dev`'s doorbells from it. Dropping the engine stops it; the device keeps its trapped path.
pub fn start_shared_doorbells(
    dev: &Arc<Device>,
    policy: PollPolicy,
) -> Result<DoorbellEngine, SharedDoorbellsError> {
    policy.validate()?;
    let area = Arc::new(NotifyArea::new(dev.layout())?);
    dev.attach_notify_area(area.clone());
    let (d, failed) = (dev.clone(), dev.clone());
    DoorbellEngine::start(
        area,
        policy,
        move || d.take_shared_doorbells(),
        move |message| failed.fail_internal("doorbell engine", message),
    )
    .map_err(SharedDoorbellsError::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceConfig, RegionAccess};
    use std::time::{Duration, Instant};

    /// Waits (10 s at most) until `f` holds; the engine's tests use it too.
    pub(super) fn wait_until(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_device_reset_clears_pending_kicks() {
        let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
        // No engine: the kicks stay in their slots until the reset.
        let area = Arc::new(NotifyArea::new(dev.layout()).unwrap());
        dev.attach_notify_area(area.clone());
        for q in 0..3 {
            area.ring(q, 2).unwrap();
        }
        dev.reset();
        assert!((0..3).all(|q| area.slot(q) == Some(IDLE)));
        // A virtio reset (status 0) clears them too.
        area.ring(1, 2).unwrap();
        dev.region_write(
            0,
            dev.layout().common.offset + bar_registers::virtio::common::DEVICE_STATUS,
            &[0],
        )
        .unwrap();
        assert_eq!(area.slot(1), Some(IDLE));
    }

    /// PCIe ordering: a register access after a doorbell store finds the doorbell rung
    /// (here with no engine at all, so only the access can have taken it).
    #[test]
    fn a_register_access_never_passes_an_earlier_doorbell_store() {
        let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
        let area = Arc::new(NotifyArea::new(dev.layout()).unwrap());
        dev.attach_notify_area(area.clone());
        area.ring(1, 2).unwrap();
        assert_eq!(dev.counters().queues[1].doorbells, 0);
        let mut st = [0u8];
        let status = dev.layout().common.offset + bar_registers::virtio::common::DEVICE_STATUS;
        dev.region_read(0, status, &mut st).unwrap();
        let c = dev.counters();
        assert_eq!(
            c.queues[1].doorbells, 1,
            "rung before the read was answered"
        );
        assert_eq!((c.shared_doorbells, c.shared_doorbells_at_access), (1, 1));
        assert_eq!(area.slot(1), Some(IDLE));
        // Config space accesses order the same way.
        area.ring(0, 2).unwrap();
        dev.region_read(bar_registers::REGION_CONFIG, 0, &mut [0u8; 2])
            .unwrap();
        assert_eq!(dev.counters().queues[0].doorbells, 1);
    }

    #[test]
    fn a_kick_on_a_stopped_device_is_spurious_like_a_trapped_one() {
        let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
        let engine = start_shared_doorbells(&dev, PollPolicy::default()).unwrap();
        engine.area().ring(2, 2).unwrap();
        wait_until("kick consumed", || dev.counters().queues[2].doorbells == 1);
        let c = dev.counters();
        assert_eq!((c.spurious_doorbells, c.shared_doorbells), (1, 1));
        // The trapped path counts the same way.
        let off = dev.layout().doorbell_offset(2);
        dev.region_write(0, off, &2u16.to_le_bytes()).unwrap();
        let c = dev.counters();
        assert_eq!((c.queues[2].doorbells, c.spurious_doorbells), (2, 2));
        assert_eq!((engine.stats().kicks, c.shared_doorbells), (1, 1));
        // A queue the device does not have: a bad access, no doorbell.
        dev.doorbell(7);
        assert_eq!(dev.counters().bad_register_accesses, 1);
    }
}
