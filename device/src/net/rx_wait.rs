//! Where the receive path takes frames from: the FIFO's head (through its reader) or one
//! queue's waiting list (device/src/port/waiting.rs).

use crate::port::{InboxFrame, InboxReader};
use std::collections::VecDeque;

/// Where a delivery takes frames from: the FIFO's head (through its reader) or one queue's
/// waiting list. The frames coalescing joins and the segments a GSO frame is cut into come from
/// and go back to the same place, so they stay in that place's order.
pub(crate) trait RxSource {
    /// The next frame.
    fn pop(&mut self) -> Option<InboxFrame>;
    /// Puts `frame` back in front (the next [`RxSource::pop`]).
    fn unpop(&mut self, frame: InboxFrame);
    /// Whether no frame is left.
    fn is_empty(&self) -> bool;
    /// Takes back the buffer of a frame the delivery is done with.
    fn recycle(&mut self, buf: Vec<u8>);
    /// An empty buffer for a frame the device builds itself (a segment).
    fn spare_buf(&mut self) -> Vec<u8>;
}

impl RxSource for InboxReader<'_> {
    fn pop(&mut self) -> Option<InboxFrame> {
        InboxReader::pop(self)
    }
    fn unpop(&mut self, frame: InboxFrame) {
        InboxReader::unpop(self, frame)
    }
    fn is_empty(&self) -> bool {
        InboxReader::is_empty(self)
    }
    fn recycle(&mut self, buf: Vec<u8>) {
        InboxReader::recycle(self, buf)
    }
    fn spare_buf(&mut self) -> Vec<u8> {
        InboxReader::spare_buf(self)
    }
}

/// One queue's waiting list as a source, with the FIFO's reader for buffers.
pub(crate) struct WaitingSource<'l, 'r, 'i> {
    pub(crate) list: &'l mut VecDeque<InboxFrame>,
    pub(crate) rd: &'r mut InboxReader<'i>,
}

impl RxSource for WaitingSource<'_, '_, '_> {
    fn pop(&mut self) -> Option<InboxFrame> {
        self.list.pop_front()
    }
    fn unpop(&mut self, frame: InboxFrame) {
        self.list.push_front(frame);
    }
    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    fn recycle(&mut self, buf: Vec<u8>) {
        self.rd.recycle(buf)
    }
    fn spare_buf(&mut self) -> Vec<u8> {
        self.rd.spare_buf()
    }
}
