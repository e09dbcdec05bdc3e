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
