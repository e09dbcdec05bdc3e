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
use smallvec::SmallVec;
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

/// Lanes kept locked while their queues are asked for again: a receive delivery loop takes
/// each frame's queue here and keeps the lanes it took until it returns. A lock and an unlock
/// per frame cost more than the frame itself: on x86 each is a locked instruction, which waits
/// until the frame's stores into the driver's buffer have left the store buffer (the lines
/// come from the driver's core), so the device waited for every frame's stores in turn
/// (`perf`: three quarters of the delivery's samples on the lane unlock in the 64-byte RX
/// bench, with one queue pair and with four).
///
/// The held lanes are always locked in queue order: asking for a queue below a held one lets
/// every held lane above it go first, then locks it. Frames spread over queues in any order
/// settle within a few frames to holding each queue they use.
pub(crate) struct HeldLanes<'a> {
    lanes: &'a Lanes,
    /// The held lanes, in queue order.
    held: SmallVec<[(u16, MutexGuard<'a, Lane>); 4]>,
}

impl<'a> HeldLanes<'a> {
    /// Nothing held yet.
    pub(crate) fn new(lanes: &'a Lanes) -> Self {
        HeldLanes {
            lanes,
            held: SmallVec::new(),
        }
    }

    /// Queue `q`'s lane: held already, or locked now (after the held lanes above `q` were let
    /// go) and held from now on.
    ///
    /// # Panics
    /// If there is no queue `q` (as [`Lanes::lock`]).
    #[inline]
    pub(crate) fn get(&mut self, q: u16) -> &mut Lane {
        // Asked twice per received frame, nearly always for a lane held already (and with one
        // queue pair, the only one): that case is a search of at most a few entries, inline.
        match self.held.iter().position(|(h, _)| *h == q) {
            Some(i) => &mut self.held[i].1,
            None => self.take(q),
        }
    }

    /// Locks queue `q`'s lane (not held yet) and holds it: the lanes above `q` are let go
    /// first, so the held lanes stay in queue order.
    #[inline(never)]
    fn take(&mut self, q: u16) -> &mut Lane {
        let i = self.held.partition_point(|(h, _)| *h < q);
        self.held.truncate(i);
        self.held.push((q, self.lanes.lock(q)));
        &mut self.held[i].1
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
    fn held_lanes_are_kept_in_queue_order_and_let_go_above_a_lower_queue() {
        let all = lanes(5);
        let mut held = HeldLanes::new(&all);
        assert_eq!(
            locked(&all),
            [false; 5],
            "nothing is locked before it is asked for"
        );
        held.get(2).slot.size = 64;
        assert_eq!(locked(&all), [false, false, true, false, false]);
        // Asked again: the same guard; a higher queue joins it (queue order kept).
        assert_eq!(held.get(2).slot.size, 64);
        held.get(4);
        assert_eq!(locked(&all), [false, false, true, false, true]);
        // A lower queue: the lanes above it are let go first, then it is locked.
        held.get(0);
        assert_eq!(locked(&all), [true, false, false, false, false]);
        held.get(2);
        held.get(4);
        assert_eq!(locked(&all), [true, false, true, false, true]);
        held.get(3);
        assert_eq!(locked(&all), [true, false, true, true, false]);
        drop(held);
        assert_eq!(locked(&all), [false; 5], "dropping it lets every lane go");
        assert_eq!(
            all.lock(2).slot.size,
            64,
            "what was written under a held guard stays"
        );
    }
}
