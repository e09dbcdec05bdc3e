//! Where frames leave and enter the NIC.
//!
//! A [`Port`] takes frames the device transmits. Frames for the device land in its [`RxInbox`]
//! (a bounded FIFO, the model of the NIC's receive buffer), which the device drains into its
//! RX queues whenever it holds its lock, so two devices joined by a link can send to each other
//! from inside their own datapaths without lock-order deadlocks.

pub mod link;
pub mod loopback;

use crate::net::offload::hdr::NetHdr;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use link::LinkPort;
pub use loopback::LoopbackPort;

/// What a port can take besides plain Ethernet frames: frames with a virtio_net_hdr_v1 whose
/// checksum is still to be completed (NEEDS_CSUM) or that are still to be segmented (GSO). A
/// port that takes none of it (loopback, link, null) gets wire frames only: the device
/// completes checksums and segments itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortOffloads {
    /// NEEDS_CSUM frames (checksum completed further on).
    pub csum: bool,
    /// TCPv4 GSO frames.
    pub tso4: bool,
    /// TCPv6 GSO frames.
    pub tso6: bool,
    /// GSO frames with the ECN bit.
    pub ecn: bool,
}

impl PortOffloads {
    /// Wire frames only.
    pub const NONE: PortOffloads = PortOffloads {
        csum: false,
        tso4: false,
        tso6: false,
        ecn: false,
    };
    /// Everything (a TAP opened with IFF_VNET_HDR).
    pub const ALL: PortOffloads = PortOffloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
    };
}

/// Frames leave the device through a port.
pub trait Port: Send + Sync {
    /// Takes one Ethernet frame (no virtio header). Returns false if the port dropped it.
    fn transmit(&self, frame: &[u8]) -> bool;
    /// What the port takes besides wire frames ([`Port::transmit_with_hdr`]).
    fn offloads(&self) -> PortOffloads {
        PortOffloads::NONE
    }
    /// Takes one frame with its virtio_net_hdr_v1, unchanged: called only for what
    /// [`Port::offloads`] says the port takes. Returns false if the port dropped it.
    fn transmit_with_hdr(&self, hdr: &NetHdr, frame: &[u8]) -> bool {
        let _ = (hdr, frame);
        false
    }
    /// What the device's driver currently takes on receive (its negotiated GUEST_* offloads
    /// as CTRL_GUEST_OFFLOADS left them, 5.1.6.5.6.1): a port that can hand frames on with a
    /// virtio_net_hdr_v1 ([`RxInbox::push_with_hdr`]) should send only those, as QEMU's
    /// virtio-net tells its TAP (hw/net/virtio-net.c virtio_net_apply_guest_offloads). A hint:
    /// the device completes checksums and segments whatever arrives that the driver does not
    /// take. Called on the control path (feature negotiation, CTRL_GUEST_OFFLOADS_SET, reset).
    fn set_rx_offloads(&self, offloads: PortOffloads) {
        let _ = offloads;
    }
    /// Short description for logs and reports.
    fn describe(&self) -> String;
}

/// A port that discards everything (benchmarks of the TX path alone).
#[derive(Debug, Default)]
pub struct NullPort {
    frames: AtomicU64,
}

impl NullPort {
    /// Frames discarded so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Port for NullPort {
    fn transmit(&self, _frame: &[u8]) -> bool {
        self.frames.fetch_add(1, Ordering::Relaxed);
        true
    }
    fn describe(&self) -> String {
        "null".into()
    }
}

/// A frame waiting in the receive FIFO, with the virtio_net_hdr_v1 its port handed it on with
/// (all zero for a wire frame; NEEDS_CSUM and/or a GSO type from a port that passes offloads
/// on, such as a TAP with TUNSETOFFLOAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxFrame {
    pub hdr: NetHdr,
    pub data: Vec<u8>,
}

/// The device's receive FIFO. Frames wait here until RX buffers are available.
#[derive(Debug)]
pub struct RxInbox {
    frames: Mutex<VecDeque<InboxFrame>>,
    spare: Mutex<Vec<Vec<u8>>>,
    len: AtomicUsize,
    capacity: usize,
    dropped: AtomicU64,
}

impl RxInbox {
    /// A FIFO holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        RxInbox {
            frames: Mutex::new(VecDeque::with_capacity(capacity)),
            spare: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a copy of wire frame `frame`; false (and counted) when the FIFO is full.
    pub fn push(&self, frame: &[u8]) -> bool {
        self.push_with_hdr(&NetHdr::default(), frame)
    }

    /// Queues a copy of `frame` with the header its port handed it on with; false (and
    /// counted) when the FIFO is full.
    pub fn push_with_hdr(&self, hdr: &NetHdr, frame: &[u8]) -> bool {
        let mut buf = self.spare.lock().pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        let mut q = self.frames.lock();
        if q.len() >= self.capacity {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.recycle(buf);
            return false;
        }
        q.push_back(InboxFrame {
            hdr: NetHdr {
                num_buffers: 0,
                ..*hdr
            },
            data: buf,
        });
        self.len.store(q.len(), Ordering::SeqCst);
        true
    }

    /// Takes the oldest frame.
    pub fn pop(&self) -> Option<InboxFrame> {
        let mut q = self.frames.lock();
        let f = q.pop_front();
        self.len.store(q.len(), Ordering::SeqCst);
        f
    }

    /// Puts a frame back at the head (it did not fit the RX buffers available yet, or it is a
    /// segment of a frame the device cut up, to be delivered next). The FIFO may go over its
    /// capacity by these frames: they were in it already, or stand for one that was.
    pub fn unpop(&self, frame: InboxFrame) {
        let mut q = self.frames.lock();
        q.push_front(frame);
        self.len.store(q.len(), Ordering::SeqCst);
    }

    /// A buffer for a frame the device builds itself (a segment), from the spare ones.
    pub fn spare_buf(&self) -> Vec<u8> {
        let mut b = self.spare.lock().pop().unwrap_or_default();
        b.clear();
        b
    }
    /// Returns a buffer for reuse.
    pub fn recycle(&self, buf: Vec<u8>) {
        let mut s = self.spare.lock();
        if s.len() < 256 {
            s.push(buf);
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames dropped because the FIFO was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Drops every waiting frame (device reset); returns how many.
    pub fn clear(&self) -> usize {
        let mut q = self.frames.lock();
        let n = q.len();
        q.clear();
        self.len.store(0, Ordering::SeqCst);
        n
    }
}
