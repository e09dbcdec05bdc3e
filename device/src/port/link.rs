//! A link joining two device instances: frames one transmits arrive at the other.

use super::Port;
use crate::Device;
use std::sync::{Arc, Weak};

/// One end of a link; transmits into the peer device.
pub struct LinkPort {
    peer: Weak<Device>,
}

impl LinkPort {
    /// A port whose frames go to `peer`.
    pub fn new(peer: &Arc<Device>) -> Self {
        LinkPort {
            peer: Arc::downgrade(peer),
        }
    }

    /// Joins two devices: each one's port transmits into the other.
    pub fn join(a: &Arc<Device>, b: &Arc<Device>) {
        a.set_port(Arc::new(LinkPort::new(b)));
        b.set_port(Arc::new(LinkPort::new(a)));
    }
}

impl Port for LinkPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        let Some(peer) = self.peer.upgrade() else {
            return false;
        };
        let ok = peer.inbox().push(frame);
        // Deliver now if the peer is idle; if it is busy, it drains its inbox before it lets go
        // of its lock (Device::service), so the frame is never stranded.
        peer.try_service_rx();
        ok
    }
    fn describe(&self) -> String {
        "link".into()
    }
}
