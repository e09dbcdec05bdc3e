//! A link joining two device instances: frames one transmits arrive at the other. With flow
//! control: a device stops taking TX chains while the other's receive FIFO is full, and the
//! other wakes it when its FIFO drained to half ([`Port::ready`]), so nothing is dropped between
//! them.

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
        // The device asked `ready` before it took this frame's chain: the frame is taken even
        // if a reader's give-back filled the FIFO meanwhile (RxInbox::push_admitted).
        let ok = peer.inbox().push_admitted(frame);
        // Deliver now if the peer is idle; if it is busy, it drains its inbox before it lets go
        // of its lock (Device::service), so the frame is never stranded.
        peer.try_service_rx();
        ok
    }
    /// Flow control: the peer's receive FIFO has room (when it has none, the peer's room
    /// waker wakes this device once it drained to half).
    fn ready(&self) -> bool {
        self.peer
            .upgrade()
            .is_none_or(|peer| peer.inbox().has_room_or_want())
    }
    fn set_ready_waker(&self, waker: Option<crate::port::ReadyWaker>) {
        if let Some(peer) = self.peer.upgrade() {
            peer.inbox().set_room_waker(waker);
        }
    }
    fn describe(&self) -> String {
        "link".into()
    }
}
