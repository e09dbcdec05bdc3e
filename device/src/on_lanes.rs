//! Whether this thread runs a TX budget on a queue's lane outside its device's lock (issue
//! #12; `Device::tx_off_lock` in device/src/device.rs), and the port wakes it holds back
//! meanwhile.
//!
//! A budget's frames go to a port, and a port may call back into a device at once: a link port
//! delivers into its peer's receive FIFO and tries to service it (`Device::try_service_rx`:
//! it takes only receive queues' lanes, so that is safe), and a
//! port that got room again wakes the transmit queues it held back (`Device::port_ready`),
//! which would service transmit queues, whose lanes this thread or another such budget may
//! hold. A thread holding a lane outside the device lock must not wait for another lane
//! that way, so such a wake is held back here and acted on once the budget has let go of
//! its lane ([`take_held_wakes`]).

use crate::Device;
use std::cell::{Cell, RefCell};
use std::sync::Weak;

thread_local! {
    static ON_LANES: Cell<bool> = const { Cell::new(false) };
    static HELD: RefCell<Vec<Weak<Device>>> = const { RefCell::new(Vec::new()) };
}

/// Marks this thread as running a budget on a lane until dropped.
pub(crate) struct OnLanes(());

impl OnLanes {
    pub(crate) fn enter() -> Self {
        debug_assert!(
            !ON_LANES.get(),
            "a budget outside the lock runs no other budget"
        );
        ON_LANES.set(true);
        OnLanes(())
    }
}

impl Drop for OnLanes {
    fn drop(&mut self) {
        ON_LANES.set(false);
    }
}

/// Whether this thread runs a budget on a lane outside its device's lock now.
pub(crate) fn active() -> bool {
    ON_LANES.get()
}

/// Holds back a port wake of `dev` until this thread's budget is done (each device once).
pub(crate) fn hold_wake(dev: &Weak<Device>) {
    HELD.with_borrow_mut(|held| {
        if !held.iter().any(|d| d.ptr_eq(dev)) {
            held.push(dev.clone());
        }
    });
}

/// The devices whose port wakes this thread held back (the list empties).
pub(crate) fn take_held_wakes() -> Vec<Weak<Device>> {
    HELD.take()
}
