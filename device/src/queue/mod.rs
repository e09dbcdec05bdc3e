//! Virtqueue engines, device side: the split ring (virtio 1.2 2.7) and the packed ring (2.8),
//! behind one [`Ring`] the datapath (net/tx.rs, rx.rs, ctrl.rs) drives without knowing which
//! layout was negotiated (VIRTIO_F_RING_PACKED applies to every queue of the device).

pub mod chain;
pub mod packed;
pub mod split;

#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod split_tests;

use crate::fault::DeviceFault;
use chain::{Chain, ChainKind, RingSetup};
use dma::DmaEngine;
use packed::PackedRing;
use split::SplitRing;

/// The most fetched chains whose buffers `Ring::prefetch_fetched` hints at once: a whole
/// fetch at `DeviceConfig::batch`'s default (64). Measured with 16, 32 and 64 (docs/bench.md):
/// the receive cells gained most with 64, the transmit cells did not move between them.
pub const PREFETCH_CHAINS: usize = 64;

/// Prefetches the start of a descriptor's buffer (`write`: for a device write).
#[inline(always)]
fn prefetch_buffer(dma: &DmaEngine, addr: u64, len: u32, write: bool) {
    if write {
        dma.prefetch_for_write(addr, u64::from(len));
    } else {
        dma.prefetch(addr, u64::from(len));
    }
}

/// One enabled ring: an enum rather than a trait object, so every call is a predictable branch
/// the compiler can inline on both sides. The split ring's state is the larger (its run of
/// descriptors read ahead, 256 bytes): one per queue, built at queue_enable and never moved on
/// the datapath, so its size costs nothing there; behind a Box the run cost the receive path 9
/// more instructions per frame (`rx_deliver/64B/log_off`) and was no faster timed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Ring {
    Split(SplitRing),
    Packed(PackedRing),
}

macro_rules! dispatch {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            Ring::Split($r) => $e,
            Ring::Packed($r) => $e,
        }
    };
}

impl Ring {
    /// The engine for `setup`: packed when VIRTIO_F_RING_PACKED was negotiated.
    pub fn new(setup: RingSetup, packed: bool) -> Result<Self, DeviceFault> {
        Ok(if packed {
            Ring::Packed(PackedRing::new(setup)?)
        } else {
            Ring::Split(SplitRing::new(setup)?)
        })
    }

    /// Whether this is a packed ring.
    pub fn is_packed(&self) -> bool {
        matches!(self, Ring::Packed(_))
    }

    /// ignores-event-idx quirk.
    pub fn set_ignore_used_event(&mut self, on: bool) {
        dispatch!(self, r => r.ignore_used_event = on)
    }

    /// Whether a split ring reads adjacent head descriptors in runs ([`DeviceConfig::desc_runs`];
    /// the packed ring reads its descriptor window in one access either way).
    ///
    /// [`DeviceConfig::desc_runs`]: crate::DeviceConfig::desc_runs
    pub fn set_desc_runs(&mut self, on: bool) {
        if let Ring::Split(r) = self {
            r.desc_runs = on;
        }
    }

    /// The completes-out-of-order quirk (a split ring engine bug): with VIRTIO_F_IN_ORDER
    /// negotiated, the first two used elements of a batch are written swapped.
    pub fn set_out_of_order(&mut self, on: bool) {
        if let Ring::Split(r) = self {
            r.out_of_order = on && r.in_order;
        }
    }

    /// LM ring state (last_avail_idx, last_used_idx). Packed: each `offset | wrap << 15`.
    pub fn ring_state(&self) -> (u16, u16) {
        match self {
            Ring::Split(r) => (r.last_avail, r.last_used),
            Ring::Packed(r) => r.ring_state(),
        }
    }

    /// See [`SplitRing::fetch_avail`] / [`PackedRing::fetch_avail`].
    #[inline]
    pub fn fetch_avail(&mut self, dma: &mut DmaEngine, max: u16) -> Result<u16, DeviceFault> {
        dispatch!(self, r => r.fetch_avail(dma, max))
    }

    /// Pops the next fetched chain; `chain.head` is the id to complete it with.
    #[inline(always)]
    pub fn pop(
        &mut self,
        dma: &mut DmaEngine,
        chain: &mut Chain,
        kind: ChainKind,
        max_total: u64,
    ) -> Result<bool, DeviceFault> {
        dispatch!(self, r => r.pop(dma, chain, kind, max_total))
    }

    #[inline]
    pub fn begin(&mut self) {
        dispatch!(self, r => r.begin())
    }

    #[inline]
    pub fn commit(&mut self) {
        dispatch!(self, r => r.commit())
    }

    #[inline]
    pub fn rollback(&mut self) {
        dispatch!(self, r => r.rollback())
    }

    /// Completes a popped chain (in order).
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        dispatch!(self, r => r.push_used(head, len))
    }

    #[inline]
    pub fn pending_used(&self) -> usize {
        dispatch!(self, r => r.pending_used())
    }

    /// Writes and publishes the completions.
    #[inline]
    pub fn flush_used(&mut self, dma: &mut DmaEngine) -> Result<(), DeviceFault> {
        dispatch!(self, r => r.flush_used(dma))
    }

    #[inline]
    pub fn interrupt_decision(&mut self, dma: &mut DmaEngine) -> Result<bool, DeviceFault> {
        dispatch!(self, r => r.interrupt_decision(dma))
    }

    /// Asks the driver for a notification when it makes more available (with EVENT_IDX:
    /// avail_event, 2.7.10, or the device event suppression area, 2.8.10) and looks once more.
    /// True when more came meanwhile. When nothing did, the queue goes idle and its port's
    /// dirty-log words are flushed now: that write (and anything else since the last publish)
    /// is in the log while the queue waits, not at its next publish, which may be far off.
    #[inline]
    pub fn arm_notification(&mut self, dma: &mut DmaEngine) -> Result<bool, DeviceFault> {
        let more = dispatch!(self, r => r.arm_notification(dma))?;
        if !more {
            let queue = dispatch!(self, r => r.queue);
            dma.flush_log()
                .map_err(|fault| DeviceFault::Dma { queue, fault })?;
        }
        Ok(more)
    }

    #[inline]
    pub fn has_fetched(&self) -> bool {
        dispatch!(self, r => r.has_fetched())
    }

    /// Hints the buffers of the fetched chains not popped yet toward this core, for reading
    /// (TX) or for writing (`write`, RX): see [`SplitRing::prefetch_fetched`] /
    /// [`PackedRing::prefetch_fetched`].
    #[inline]
    pub fn prefetch_fetched(&self, dma: &DmaEngine, write: bool) {
        dispatch!(self, r => r.prefetch_fetched(dma, write))
    }

    /// Whether a receive chain can be popped: one fetched already waits, or fetching up to
    /// `max` more found some. The buffers of newly fetched chains are hinted for writing
    /// ([`Ring::prefetch_fetched`]).
    #[inline]
    pub fn has_avail(&mut self, dma: &mut DmaEngine, max: u16) -> Result<bool, DeviceFault> {
        if self.has_fetched() {
            return Ok(true);
        }
        if self.fetch_avail(dma, max)? == 0 {
            return Ok(false);
        }
        self.prefetch_fetched(dma, true);
        Ok(true)
    }
}
