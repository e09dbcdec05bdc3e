//! One queue's registers and state machine, as queue_enable, queue_reset and the LM ring state
//! register see it (virtio 1.2 4.1.4.3, extended by the IFC VF stop semantics DPDK's
//! ifcvf.c ifcvf_hw_disable relies on, and by the virtqueue reset of 2.6.1).
//!
//! ```text
//!            queue_enable = 1                 queue_enable = 0
//! Disabled ------------------> Enabled ------------------> Stopping --(reads)--> Disabled
//!                               ^   |  queue_reset = 1 (RING_RESET, from any state)
//!              queue_enable = 1 |   v
//!                             Reset <--(reads)-- Resetting
//! ```

use crate::queue::Ring;
use bar_registers::virtio::NO_VECTOR;

/// IFC VF queue state (virtio 1.2 4.1.4.3 queue_enable, extended by the IFC VF stop semantics
/// DPDK relies on in ifcvf_hw_disable: writing 0 stops the queue, and queue_enable reads 1
/// until in-flight work is done and the LM ring state is final).
#[derive(Debug)]
pub enum QueueState {
    /// Programmable; the LM ring state is writable and is where the queue resumes.
    Disabled,
    /// Live ring (split or packed, as negotiated).
    Enabled(Box<Ring>),
    /// Stop requested: the ring state is final; queue_enable still reads 1 for this many reads.
    Stopping { reads_left: u32 },
    /// Virtqueue reset in progress (virtio 1.2 2.6.1.1, VIRTIO_F_RING_RESET): the ring was
    /// dropped with its in-flight work ("the device MUST NOT execute any requests from that
    /// virtqueue, or notify the driver for it", 2.6.1.1.1) and the registers and ring state are
    /// back to their defaults. queue_reset reads 1 for this many reads ("MUST continue to
    /// present 1 in queue_reset as long as the queue reset is ongoing", 4.1.4.3.1), then the
    /// queue is Disabled: 0 in both queue_reset and queue_enable, and the driver may re-enable
    /// it with a new size and new rings (2.6.1.2). queue_enable reads 0 throughout; no
    /// register of the queue is writable until the reset is done.
    Resetting { reads_left: u32 },
    /// The reset is done and the queue not re-enabled yet: 0 in both queue_reset and
    /// queue_enable (4.1.4.3.1), programmable like [`QueueState::Disabled`]. Unlike a stopped
    /// queue, an RX queue here (or resetting) is "being reset" for steering: its frames go to
    /// another RX queue, or are dropped when every one is (net/rx.rs `resteer_from_reset`).
    Reset,
}

impl QueueState {
    /// Whether the queue's registers and LM ring state take writes (not live, not stopping,
    /// not resetting).
    pub fn is_programmable(&self) -> bool {
        matches!(self, QueueState::Disabled | QueueState::Reset)
    }

    /// Whether the queue is being reset (VIRTIO_F_RING_RESET) and not re-enabled yet.
    pub fn being_reset(&self) -> bool {
        matches!(self, QueueState::Resetting { .. } | QueueState::Reset)
    }
}

/// Per-queue registers and state.
#[derive(Debug)]
pub struct QueueSlot {
    pub(crate) size: u16,
    pub(crate) msix_vector: u16,
    pub(crate) desc: u64,
    pub(crate) driver: u64,
    pub(crate) device: u64,
    /// LM ring state while not enabled: (last_avail_idx, last_used_idx). Packed rings:
    /// each is `offset | wrap counter << 15` (bar_registers::lm).
    pub(crate) ring_state: (u16, u16),
    /// Where the queue last resumed (the ring state at its last enable).
    pub(crate) resumed: (u16, u16),
    /// early-queue-disable quirk: the final ring state, applied after this many more reads.
    pub(crate) late_final: Option<((u16, u16), u32)>,
    pub(crate) state: QueueState,
}

impl QueueSlot {
    /// A queue at its reset values (device reset, 2.4) with a queue_size of `size`.
    pub(crate) fn new(size: u16) -> Self {
        QueueSlot {
            size,
            msix_vector: NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
            ring_state: (0, 0),
            resumed: (0, 0),
            late_final: None,
            state: QueueState::Disabled,
        }
    }

    /// (last_avail, last_used): live while enabled.
    pub fn ring_state(&self) -> (u16, u16) {
        match &self.state {
            QueueState::Enabled(r) => r.ring_state(),
            _ => self.ring_state,
        }
    }
}

impl QueueSlot {
    /// The ring state as the LM ring state register reads it: a pending late final state
    /// (early-queue-disable quirk) counts one read down and lands on its last one; with
    /// `stale_used` (stale-used-idx quirk) last_used reads one behind once it moved.
    pub(crate) fn lm_ring_state(&mut self, stale_used: bool) -> (u16, u16) {
        if let Some((fin, left)) = self.late_final {
            self.late_final = if left <= 1 {
                self.ring_state = fin;
                None
            } else {
                Some((fin, left - 1))
            };
        }
        let (a, u) = self.ring_state();
        if stale_used && u != self.resumed.1 {
            (a, u.wrapping_sub(1))
        } else {
            (a, u)
        }
    }
}
