//! Loopback: every frame the device transmits comes back on its own receive side.

use super::{Port, RxInbox};
use std::sync::Arc;

/// Sends frames back into the same device's inbox.
#[derive(Debug)]
pub struct LoopbackPort {
    inbox: Arc<RxInbox>,
}

impl LoopbackPort {
    /// Loops back into `inbox` (the device's own).
    pub fn new(inbox: Arc<RxInbox>) -> Self {
        LoopbackPort { inbox }
    }
}

impl Port for LoopbackPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        // The device drains its own inbox after the TX batch, under the lock it already holds.
        self.inbox.push(frame)
    }
    fn describe(&self) -> String {
        "loopback".into()
    }
}
