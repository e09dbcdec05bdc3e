//! Lanes: each queue's own state behind its own lock (issue #12, per-queue engines;
//! docs/architecture.md, Concurrency).
//!
//! A [`Lane`] holds what servicing one queue touches that no other queue does: its registers,
//! state machine and live ring ([`QueueSlot`]) and its DMA port (its IOTLB, bus counters and
//! pending dirty-log words, dma/src/ports.rs). Every access to a queue, from its service or
//! from a register, takes that queue's lane lock; device-wide DMA settings and counters take
//! every lane's, in queue order. Lock order: the device lock before a lane lock, lanes in
//! queue order; nothing that holds a lane takes the device lock.

use super::tx::TxScratch;
use crate::counters::TxCounters;
use crate::state::QueueSlot;
use dma::{DmaEngine, DmaPorts};
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;

/// One queue's own state (see the module docs).
#[derive(Debug)]
pub struct Lane {
    /// Registers, state machine, live ring.
    pub(crate) slot: QueueSlot,
    /// The queue's DMA port: every access of its ring and its packets.
    pub(crate) dma: DmaEngine,
    /// What the queue's TX service counted (a TX queue's; added into the device's counters
    /// on read).
    pub(crate) tx: TxCounters,
    /// A TX queue's scratch buffers (empty until the queue transmits).
    pub(crate) scratch: TxScratch,
}

/// One lane at a time, kept locked while the same queue is asked for again: a receive
/// delivery loop takes each frame's queue here and keeps that lane while the next frames go
/// to the same queue. A lock and an unlock per frame cost more than the frame itself: on x86
/// each is a locked instruction, which waits until the frame's stores into the driver's
/// buffer have left the store buffer (the lines come from the driver's core), so the device
/// waited for every frame's stores in turn (`perf`: three quarters of the delivery's samples on
/// the lane unlock in the 64-byte RX bench). Asking for another queue lets the held lane go
/// first, so at most one lane is held and the lock order stands.
pub(crate) struct HeldLane<'a> {
    lanes: &'a Lanes,
    held: Option<(u16, MutexGuard<'a, Lane>)>,
}

impl<'a> HeldLane<'a> {
    /// Nothing held yet.
    pub(crate) fn new(lanes: &'a Lanes) -> Self {
        HeldLane { lanes, held: None }
    }

    /// Queue `q`'s lane: the one held if it is `q`'s, else `q`'s locked after the held one
    /// was let go.
    ///
    /// # Panics
    /// If there is no queue `q` (as [`Lanes::lock`]).
    #[inline]
    pub(crate) fn get(&mut self, q: u16) -> &mut Lane {
        if !matches!(&self.held, Some((h, _)) if *h == q) {
            // Let go before locking: never two lanes at once.
            self.held = None;
            self.held = Some((q, self.lanes.lock(q)));
        }
        match &mut self.held {
            Some((_, lane)) => lane,
            None => unreachable!("locked above"),
        }
    }
}

/// Every queue's lane, shared by the device state and whoever services a queue.
#[derive(Clone)]
pub(crate) struct Lanes(Arc<[Mutex<Lane>]>);

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|l| l.try_lock().map(|l| l.slot.size)))
            .finish()
    }
}

impl Lanes {
    /// One lane per port, each queue at its reset values with a queue_size of `size`.
    pub(crate) fn new(ports: Vec<DmaEngine>, size: u16) -> Self {
        Lanes(
            ports
                .into_iter()
                .map(|dma| {
                    Mutex::new(Lane {
                        slot: QueueSlot::new(size),
                        dma,
                        tx: TxCounters::default(),
                        scratch: TxScratch::default(),
                    })
                })
                .collect(),
        )
    }

    /// Queue `q`'s lane, locked.
    ///
    /// # Panics
    /// If there is no queue `q`: callers index queues they checked against the layout.
    #[inline]
    pub(crate) fn lock(&self, q: u16) -> MutexGuard<'_, Lane> {
        self.0[usize::from(q)].lock()
    }

    /// Queue `q`'s lane, locked, or None if there is no queue `q`.
    pub(crate) fn get(&self, q: u16) -> Option<MutexGuard<'_, Lane>> {
        self.0.get(usize::from(q)).map(|l| l.lock())
    }

    /// Number of queues.
    pub(crate) fn len(&self) -> u16 {
        self.0.len() as u16
    }

    /// Every lane, locked in queue order.
    pub(crate) fn all(&self) -> Vec<MutexGuard<'_, Lane>> {
        self.0.iter().map(|l| l.lock()).collect()
    }

    /// Runs `f` on every lane's DMA port seen together (device-wide DMA settings and
    /// counters), with every lane locked.
    pub(crate) fn ports<R>(&self, f: impl FnOnce(&mut DmaPorts<'_>) -> R) -> R {
        let mut all = self.all();
        let mut ports = DmaPorts::over(all.iter_mut().map(|l| &mut l.dma));
        f(&mut ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dma::AddressSpace;

    fn lanes(n: usize) -> Lanes {
        Lanes::new(
            dma::ports::engines(Arc::new(AddressSpace::new()), 4, n),
            256,
        )
    }

    fn locked(lanes: &Lanes) -> Vec<bool> {
        lanes.0.iter().map(|l| l.is_locked()).collect()
    }

    #[test]
    fn a_held_lane_is_kept_for_its_queue_and_let_go_before_another_is_locked() {
        let all = lanes(4);
        let mut held = HeldLane::new(&all);
        assert_eq!(
            locked(&all),
            [false; 4],
            "nothing is locked before it is asked for"
        );
        held.get(2).slot.size = 64;
        assert_eq!(locked(&all), [false, false, true, false]);
        // The same queue again: the same guard, still the only lane locked.
        assert_eq!(held.get(2).slot.size, 64);
        assert_eq!(locked(&all), [false, false, true, false]);
        // A lower queue: the held one is let go first (never two lanes, so no order to break).
        held.get(0);
        assert_eq!(locked(&all), [true, false, false, false]);
        held.get(3);
        assert_eq!(locked(&all), [false, false, false, true]);
        drop(held);
        assert_eq!(
            locked(&all),
            [false; 4],
            "dropping it lets the last lane go"
        );
        assert_eq!(
            all.lock(2).slot.size,
            64,
            "what was written under the held guard stays"
        );
    }
}
