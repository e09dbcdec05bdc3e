//! The device's side of a TX budget that runs on its lane outside the device lock (issue #12,
//! per-queue engines; docs/architecture.md, Concurrency): whether a queue's budget may leave
//! the lock, and what the device does with the budget's outcome when it has the lock back.
//! [`crate::Device`] moves the budget out and back (device/src/device.rs, `tx_off_lock`).

use super::DeviceState;
use crate::fault::DeviceFault;
use crate::net::tx::{TxEnv, TxOutcome};

impl DeviceState {
    /// Whether TX queue `q`'s next budget may run on its lane with the device lock free: the
    /// datapath runs (DRIVER_OK and no failure, not paused, bus master), the queue is a live
    /// transmit queue, no queue is pending, and no caller waits to quiesce the device.
    /// Otherwise the queue is serviced under the lock, as any doorbell is (which also counts
    /// why the datapath did not run).
    ///
    /// No queue pending: the lock is never free while one is ([`crate::Device`]'s `finish`),
    /// since the call whose rounds own the pending queues counts on getting the lock back for
    /// them; a budget that let the lock go then could come back after those rounds ended and
    /// leave its queue pending with nobody to run it.
    pub(crate) fn tx_may_leave_lock(&self, q: u16) -> bool {
        self.quiescing == 0
            && self.engine.is_tx_queue(q)
            && self.datapath_open()
            && self.pending.is_empty()
            && self.engine.is_enabled(q)
    }

    /// What queue `q`'s budget needs of the device ([`TxEnv`]).
    pub(crate) fn tx_env(&self, q: u16) -> TxEnv {
        self.engine.tx_env(q, self.common.negotiated())
    }

    /// Does what a budget of TX queue `q` that ran outside the lock left to the device (the
    /// flows it noted in `flows`, its interrupts, a full port's wait, its fault), as a budget
    /// under the lock does ([`crate::net::engine::NetEngine::tx_done`]). Returns whether the
    /// queue has more to do.
    ///
    /// Only a failure can have changed the device meanwhile (whoever resets, stops, pauses or
    /// restores it waits for the budget first): a device that failed (DEVICE_NEEDS_RESET)
    /// while the budget ran sends no more used buffer notifications for it, and keeps its
    /// first fault.
    pub(crate) fn finish_off_lock_tx(
        &mut self,
        q: u16,
        flows: &mut Vec<u16>,
        res: Result<TxOutcome, DeviceFault>,
    ) -> bool {
        self.counters.tx_budgets_off_lock += 1;
        if !self.common.status().running() {
            flows.clear();
            return false;
        }
        self.run_datapath(|engine, dp| engine.tx_done(q, flows, res, dp))
            .is_some_and(|out| out.more)
    }
}
