//! Frames that wait for their own RX queue's buffers, one list per queue pair, so a queue out
//! of buffers holds back only its own frames.
//!
//! The receive FIFO ([`super::RxInbox`]) is the NIC's packet buffer, shared by every RX
//! queue. A frame steered to a queue with no buffers leaves the FIFO for its queue's waiting
//! list; the delivery goes on with the frames behind it, for the other queues. A frame steered
//! to a queue that has frames waiting joins the end of that queue's list, so each queue's
//! frames keep their order, and the frames of one flow (which steering keeps on one queue) keep
//! theirs. When the steering changes (RSS_CONFIG, VQ_PAIRS_SET, a flow moving to the pair that
//! transmits it, a restore), every waiting frame goes back to the FIFO's head, queue by queue,
//! to be steered again: a flow's frames never pass each other.
//!
//! Waiting frames still occupy the packet buffer: the FIFO counts them in its length
//! ([`super::RxInbox::len`]), so its flow control (ports wait for room, linked
//! senders are held back) sees every frame the device holds, and a queue that never gets
//! buffers fills the buffer and then holds the wire back, as a NIC with one shared packet
//! buffer does under 802.3 PAUSE. Nothing is dropped. Reset drops them with the FIFO; a saved
//! state carries them ahead of the FIFO's frames.

use super::InboxFrame;
use crate::net::PairSet;
use std::collections::VecDeque;

/// Each queue pair's frames waiting for its RX queue's buffers (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct WaitingFrames {
    /// Per queue pair, oldest first (grown on first use).
    lists: Vec<VecDeque<InboxFrame>>,
    /// The pairs whose list is not empty.
    waiting: PairSet,
    /// Frames in every list, and in the lists taken out and not put back yet.
    len: usize,
}

impl WaitingFrames {
    /// Frames waiting, over every queue (a list taken out counts until it is put back).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no queue has frames waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pairs with frames waiting.
    pub(crate) fn pairs(&self) -> PairSet {
        self.waiting
    }

    /// Pair `pair`'s list (made on first use), noted as waiting.
    fn list(&mut self, pair: u16) -> &mut VecDeque<InboxFrame> {
        let p = usize::from(pair);
        if self.lists.len() <= p {
            self.lists.resize_with(p + 1, VecDeque::new);
        }
        self.waiting.set(p, true);
        &mut self.lists[p]
    }

    /// Puts `frame` at the end of pair `pair`'s list.
    pub(crate) fn push(&mut self, pair: u16, frame: InboxFrame) {
        self.list(pair).push_back(frame);
        self.len += 1;
    }

    /// Takes pair `pair`'s list out (to deliver from it); [`WaitingFrames::put_back`] returns
    /// what is left of it. Its frames still count in [`WaitingFrames::len`] until then.
    pub(crate) fn take(&mut self, pair: u16) -> VecDeque<InboxFrame> {
        let p = usize::from(pair);
        self.waiting.set(p, false);
        self.lists
            .get_mut(p)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Returns what is left of a list [`WaitingFrames::take`] took (`taken` frames then),
    /// ahead of anything pushed for the pair meanwhile.
    pub(crate) fn put_back(&mut self, pair: u16, mut list: VecDeque<InboxFrame>, taken: usize) {
        self.len = self.len + list.len() - taken;
        if list.is_empty() {
            return;
        }
        let l = self.list(pair);
        list.append(l);
        *l = list;
    }

    /// The oldest frame of the first pair with frames waiting.
    pub(crate) fn pop(&mut self) -> Option<InboxFrame> {
        let p = self.waiting.first_one()?;
        let f = self.lists[p].pop_front();
        if self.lists[p].is_empty() {
            self.waiting.set(p, false);
        }
        self.len -= 1;
        f
    }

    /// Takes every list out, queue pair by queue pair, each oldest first.
    pub(crate) fn take_all(&mut self) -> VecDeque<InboxFrame> {
        let mut all = VecDeque::with_capacity(self.len);
        for p in self.waiting.iter_ones() {
            all.append(&mut self.lists[p]);
        }
        self.waiting = PairSet::ZERO;
        self.len = 0;
        all
    }

    /// Every waiting frame, queue pair by queue pair, each oldest first (what a saved state
    /// carries ahead of the FIFO's frames).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &InboxFrame> {
        self.waiting.iter_ones().flat_map(|p| self.lists[p].iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::offload::hdr::NetHdr;

    fn f(n: u8) -> InboxFrame {
        InboxFrame {
            hdr: NetHdr::default(),
            data: vec![n],
        }
    }

    fn ids<'a>(it: impl Iterator<Item = &'a InboxFrame>) -> Vec<u8> {
        it.map(|f| f.data[0]).collect()
    }

    #[test]
    fn lists_keep_their_order_and_what_is_put_back_goes_first() {
        let mut w = WaitingFrames::default();
        assert!(w.is_empty() && !w.pairs()[0]);
        w.push(2, f(1));
        w.push(0, f(2));
        w.push(2, f(3));
        assert_eq!((w.len(), w.pairs().count_ones()), (3, 2));
        assert!(w.pairs()[0] && !w.pairs()[1] && w.pairs()[2]);
        assert_eq!(ids(w.iter()), [2, 1, 3], "pair by pair, each oldest first");

        let mut l = w.take(2);
        assert_eq!(
            (w.len(), w.pairs()[2]),
            (3, false),
            "taken out, still counted"
        );
        assert_eq!(l.pop_front().unwrap().data[0], 1, "delivered");
        // Pushed while the list was out: behind what is left of it.
        w.push(2, f(4));
        w.put_back(2, l, 2);
        assert_eq!(ids(w.iter()), [2, 3, 4]);
        assert_eq!(w.len(), 3);

        let empty = w.take(1);
        w.put_back(1, empty, 0);
        assert!(!w.pairs()[1], "an empty list is not waiting");
        assert_eq!(w.pop().unwrap().data[0], 2, "the first pair's oldest");
        assert!(!w.pairs()[0]);
        let all = w.take_all();
        assert_eq!(ids(all.iter()), [3, 4]);
        assert!(w.is_empty() && w.pairs().count_ones() == 0 && w.iter().next().is_none());
    }
}
