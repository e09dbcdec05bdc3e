//! Resetting one queue and re-enabling it with a new size and new rings (VIRTIO_F_RING_RESET,
//! virtio 1.2 2.6.1), in the order Linux does it for `ethtool -G` (virtio_net.c
//! virtnet_set_ringparam -> virtio_ring.c virtqueue_resize): virtio_pci_modern.c
//! vp_modern_disable_vq_and_reset (vp_modern_set_queue_reset: queue_select, queue_reset = 1,
//! poll queue_reset until 0, poll queue_enable until 0), the buffers of the old ring taken
//! back, then vp_modern_enable_vq_after_reset (queue_reset and queue_enable must read 0;
//! vp_active_vq: queue_size, the three ring addresses, queue_msix_vector read back; then
//! queue_enable = 1). The LM ring state is not written: a reset queue starts at its default
//! state, which is what the `ring-reset` validator group checks.

use super::{DriverQueueRing, NetDriver, Queue};
use crate::packed::PackedDriverRing;
use crate::ring::DriverRing;
use crate::DriverError;
use bar_registers::virtio::{bits, common};

/// How many times the driver reads queue_reset (and then queue_enable) before it gives up
/// (Linux polls without limit, sleeping 1 ms between reads).
pub const RESET_POLLS: u32 = 1000;

impl NetDriver {
    /// Resets queue `q` alone (virtio 1.2 2.6.1.1) and takes its buffers back: in-flight ones
    /// return to the pool (TX frames not yet completed are dropped, RX buffers unfilled).
    /// Returns how many reads of queue_reset read 1 before it read 0. The queue must be
    /// re-enabled with [`NetDriver::enable_queue_after_reset`] before it is used again.
    pub fn reset_queue(&mut self, q: u16) -> Result<u32, DriverError> {
        let _span = tracing::debug_span!("driver_reset_queue", queue = q).entered();
        if self.features & (1 << bits::RING_RESET) == 0 {
            return Err(DriverError::Usage(format!(
                "queue {q}: VIRTIO_F_RING_RESET not negotiated ({:#x})",
                self.features
            )));
        }
        self.queue(q)?;
        self.common_write(common::QUEUE_SELECT, 2, q.into())?;
        self.common_write(common::QUEUE_RESET, 2, 1)?;
        let mut ones = 0;
        while self.common_read16(common::QUEUE_RESET)? != 0 {
            ones += 1;
            if ones >= RESET_POLLS {
                return Err(DriverError::QueueResetTimeout {
                    queue: q,
                    polls: ones,
                });
            }
        }
        let mut polls = 0;
        while self.common_read16(common::QUEUE_ENABLE)? != 0 {
            polls += 1;
            if polls >= RESET_POLLS {
                return Err(DriverError::DisableTimeout { queue: q, polls });
            }
        }
        let qu = self.queue(q)?;
        for id in qu.ring.in_flight_ids() {
            let b = qu.inflight[usize::from(id)];
            if qu.large_all.contains(&b) {
                qu.large_pool.push(b);
            } else {
                qu.pool.push(b);
            }
        }
        Ok(ones)
    }

    /// Re-enables queue `q` after [`NetDriver::reset_queue`] with a fresh ring of `size`
    /// entries at new addresses in guest memory (2.6.1.2: "the driver MAY set
    /// driver-writeable queue configuration values to different values than those that were
    /// used before the queue reset"). An RX queue gets its buffers posted again.
    pub fn enable_queue_after_reset(&mut self, q: u16, size: u16) -> Result<(), DriverError> {
        let _span = tracing::debug_span!("driver_enable_after_reset", queue = q, size).entered();
        self.queue(q)?;
        self.common_write(common::QUEUE_SELECT, 2, q.into())?;
        for (reg, what) in [
            (common::QUEUE_RESET, "queue_reset"),
            (common::QUEUE_ENABLE, "queue_enable"),
        ] {
            let got = self.common_read16(reg)?;
            if got != 0 {
                return Err(DriverError::QueueResetBusy {
                    queue: q,
                    what,
                    got,
                });
            }
        }
        let ev = self.features & (1 << bits::EVENT_IDX) != 0;
        let ring = if self.is_packed() {
            DriverQueueRing::Packed(PackedDriverRing::new(&self.mem, q, size, ev)?)
        } else {
            DriverQueueRing::Split(DriverRing::new(&self.mem, q, size, ev)?)
        };
        let (desc, driver, device, _) = ring.areas();
        self.common_write(common::QUEUE_SIZE, 2, size.into())?;
        self.common_write64(common::QUEUE_DESC, desc)?;
        self.common_write64(common::QUEUE_DRIVER, driver)?;
        self.common_write64(common::QUEUE_DEVICE, device)?;
        self.set_selected_vector(q)?;
        let notify_off = self.common_read16(common::QUEUE_NOTIFY_OFF)?;
        let qu: &mut Queue = self.queue(q)?;
        qu.ring = ring;
        qu.notify_off = notify_off;
        qu.inflight = vec![0; usize::from(size)];
        self.enable_selected(q)?;
        let is_rx = q.is_multiple_of(2) && q != self.num_queues - 1;
        if is_rx {
            self.refill_rx(q / 2)?;
        }
        self.check_alive()
    }
}
