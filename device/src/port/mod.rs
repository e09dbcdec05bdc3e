//! Where frames leave and enter the NIC.
//!
//! A [`Port`] takes frames the device transmits. Frames for the device land in its [`RxInbox`]
//! (a bounded FIFO, the model of the NIC's receive buffer), which the device drains into its
//! RX queues whenever it holds its lock, so two devices joined by a link can send to each other
//! from inside their own datapaths without lock-order deadlocks.

pub mod link;
pub mod loopback;
pub(crate) mod waiting;

use crate::net::offload::hdr::NetHdr;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use waiting::WaitingFrames;

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
    /// Whether the port takes another frame now. A port that can run full (a socket whose
    /// other end reads slower than this one sends) says false: the device then stops taking
    /// TX chains at the next chain boundary, leaves the rest in the ring, and goes on when the
    /// port calls the waker it was given ([`Port::set_ready_waker`]). The link-level flow
    /// control of a real wire (IEEE 802.3 Annex 31B PAUSE), and what QEMU's virtio-net does
    /// when its netdev cannot take a packet (hw/net/virtio-net.c virtio_net_flush_tx stops at
    /// `qemu_sendv_packet_async` returning 0 and resumes in virtio_net_tx_complete). A frame
    /// handed over anyway is taken (the device checks at chain boundaries, and a GSO frame the
    /// device segments is one chain): a port that says false must still have room for those.
    fn ready(&self) -> bool {
        true
    }
    /// What the port calls once it has room again after [`Port::ready`] said false (from its
    /// own thread, holding none of its locks). Set by the device when it is connected.
    fn set_ready_waker(&self, waker: Option<ReadyWaker>) {
        let _ = waker;
    }
    /// Frames the port took ([`Port::transmit`] returned true) and lost afterwards (a link
    /// whose other end is gone or stalled), for the device's `tx_port_lost` counter.
    fn lost(&self) -> u64 {
        0
    }
    /// Short description for logs and reports.
    fn describe(&self) -> String;
}

/// What a port calls when it has room again ([`Port::set_ready_waker`]).
pub type ReadyWaker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// "Wake me when there is room", between a sender that found a queue full and whoever drains
/// it: the sender says it waits ([`RoomSignal::ready_or_want`]), the drainer runs the waker
/// once when the queue is down to its low mark ([`RoomSignal::room`]). Used by the receive
/// FIFO (for a linked device) and by the unix port's outbox (for its own device).
#[derive(Default)]
pub struct RoomSignal {
    wanted: AtomicBool,
    waker: Mutex<Option<ReadyWaker>>,
}

impl std::fmt::Debug for RoomSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomSignal")
            .field("wanted", &self.wanted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RoomSignal {
    /// What [`RoomSignal::room`] runs.
    pub fn set_waker(&self, waker: Option<ReadyWaker>) {
        *self.waker.lock() = waker;
    }

    /// Whether the sender may go on (`full()` is false). When the queue is full, notes that the
    /// sender waits, then looks again: a drain to the low mark either sees the note (and runs
    /// the waker) or came before the second look (which then finds room), so no wake-up is lost.
    pub fn ready_or_want(&self, full: impl Fn() -> bool) -> bool {
        if !full() {
            return true;
        }
        self.wanted.store(true, Ordering::SeqCst);
        !full()
    }

    /// The queue is down to its low mark: runs the waker once if a sender waits. Call it with
    /// none of the queue's locks held (the waker takes the sender's device's path).
    pub fn room(&self) {
        if self.wanted.load(Ordering::SeqCst) && self.wanted.swap(false, Ordering::SeqCst) {
            let w = self.waker.lock().clone();
            if let Some(w) = w {
                w();
            }
        }
    }
}

/// Frame buffers kept for reuse, so a queue of frames does not allocate per frame.
#[derive(Debug)]
pub struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufPool {
    /// A pool that keeps at most `keep` buffers.
    pub fn new(keep: usize) -> Self {
        BufPool {
            bufs: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// An empty buffer (a kept one if there is one).
    pub fn take(&self) -> Vec<u8> {
        let mut b = self.bufs.lock().pop().unwrap_or_default();
        b.clear();
        b
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_of(&self, data: &[u8]) -> Vec<u8> {
        let mut b = self.take();
        b.extend_from_slice(data);
        b
    }

    /// Returns a buffer for reuse (dropped when the pool is full).
    pub fn put(&self, buf: Vec<u8>) {
        let mut bufs = self.bufs.lock();
        if bufs.len() < self.keep {
            bufs.push(buf);
        }
    }

    /// Appends `n` empty buffers to `out` (kept ones first), under one lock.
    pub fn take_n(&self, n: usize, out: &mut impl Extend<Vec<u8>>) {
        let mut bufs = self.bufs.lock();
        let kept = n.min(bufs.len());
        let from = bufs.len() - kept;
        out.extend(bufs.drain(from..).map(|mut b| {
            b.clear();
            b
        }));
        drop(bufs);
        out.extend((kept..n).map(|_| Vec::new()));
    }

    /// Returns every buffer of `bufs` for reuse (emptying it), under one lock.
    pub fn put_all(&self, bufs: &mut Vec<Vec<u8>>) {
        if bufs.is_empty() {
            return;
        }
        let mut kept = self.bufs.lock();
        let room = self.keep.saturating_sub(kept.len());
        if bufs.len() <= room {
            // All of them: one copy of the handles (`extend` from a drain moved them one by
            // one, about 20 instructions per frame of the receive path, callgrind).
            kept.append(bufs);
            return;
        }
        kept.extend(bufs.drain(..room));
        drop(kept);
        bufs.clear();
    }
}

/// A port that discards everything (benchmarks of the TX path alone). It counts nothing: the
/// device's own counters (`tx_frames`, per queue) say what it transmitted, and a shared
/// counter here cost a locked instruction per frame (`perf`: 4% of the 64-byte TX bench's
/// samples, waiting for the stores before it to drain).
#[derive(Debug, Default)]
pub struct NullPort;

impl Port for NullPort {
    fn transmit(&self, _frame: &[u8]) -> bool {
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
///
/// A port that can hold frames back (a socket or TAP reader thread) asks for room before it
/// reads more ([`RxInbox::wait_room`]) instead of pushing into a full FIFO, so the wire backs up
/// to the sender rather than losing frames here, as QEMU stops reading a netdev while its
/// virtio-net cannot receive (net/net.c qemu_can_receive_packet, net/tap.c tap_can_send).
pub struct RxInbox {
    frames: Mutex<VecDeque<InboxFrame>>,
    spare: BufPool,
    /// Frames in `frames`.
    len: AtomicUsize,
    /// Frames the device took out of the FIFO to wait for their own RX queue's buffers
    /// (waiting.rs). Lock order: `waiting` before `frames`.
    waiting: Mutex<WaitingFrames>,
    /// Frames in `waiting`: still in the packet buffer, so counted in its length.
    waiting_len: AtomicUsize,
    /// The queue pairs with frames in `waiting`, one bit each (read per received frame, so
    /// without the lock).
    waiting_pairs: AtomicU64,
    capacity: usize,
    dropped: AtomicU64,
    /// Signalled when the FIFO drains to half its capacity while a reader waits for room.
    room: Condvar,
    room_waiters: AtomicUsize,
    room_waits: AtomicU64,
    /// A sender in this process (a linked device) found the FIFO full and waits
    /// ([`RxInbox::has_room_or_want`]).
    sender: RoomSignal,
}

impl std::fmt::Debug for RxInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxInbox")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl RxInbox {
    /// A FIFO holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        RxInbox {
            frames: Mutex::new(VecDeque::with_capacity(capacity)),
            spare: BufPool::new(256),
            len: AtomicUsize::new(0),
            waiting: Mutex::new(WaitingFrames::default()),
            waiting_len: AtomicUsize::new(0),
            waiting_pairs: AtomicU64::new(0),
            capacity,
            dropped: AtomicU64::new(0),
            room: Condvar::new(),
            room_waiters: AtomicUsize::new(0),
            room_waits: AtomicU64::new(0),
            sender: RoomSignal::default(),
        }
    }

    /// Whether a sender may push another frame; when not, notes that one waits, so the room
    /// waker ([`RxInbox::set_room_waker`]) runs once the FIFO is half empty (the in-process
    /// link's flow control, [`LinkPort`]).
    pub fn has_room_or_want(&self) -> bool {
        self.sender.ready_or_want(|| self.is_full())
    }

    /// What runs when the FIFO drained to half its capacity after a sender found it full (from
    /// the thread that drained it, with the FIFO's locks released; it must not block on a
    /// device lock: [`crate::Device::port_ready`] does not).
    pub fn set_room_waker(&self, waker: Option<ReadyWaker>) {
        self.sender.set_waker(waker);
    }

    /// Whether the FIFO holds as many frames as it may.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Waits until the FIFO is no more than half full, or `timeout` passed; true when there is
    /// room. Counted once per call that had to wait ([`RxInbox::room_waits`]).
    pub fn wait_room(&self, timeout: std::time::Duration) -> bool {
        let mut q = self.frames.lock();
        // When `waiting_len` falls, its writer then takes this lock to wake waiters
        // (put_back_waiting, pop: `shrunk`), so no wake-up is lost between a look and the wait.
        let held = |q: &VecDeque<InboxFrame>| q.len() + self.waiting_len.load(Ordering::SeqCst);
        if held(&q) < self.capacity {
            return true;
        }
        self.room_waits.fetch_add(1, Ordering::Relaxed);
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while held(&q) > self.capacity / 2 {
            if self.room.wait_until(&mut q, deadline).timed_out() {
                break;
            }
        }
        self.room_waiters.fetch_sub(1, Ordering::SeqCst);
        held(&q) < self.capacity
    }

    /// Times a port reader found the FIFO full and waited for room ([`RxInbox::wait_room`]).
    pub fn room_waits(&self) -> u64 {
        self.room_waits.load(Ordering::Relaxed)
    }

    /// After the FIFO shrank: records its length and, once it is half empty, wakes a reader
    /// waiting for room (under the lock) and then, with the lock released, a linked sender.
    fn shrunk(&self, q: MutexGuard<'_, VecDeque<InboxFrame>>) {
        let len = q.len();
        self.len.store(len, Ordering::SeqCst);
        let half = len + self.waiting_len.load(Ordering::SeqCst) <= self.capacity / 2;
        if half && self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_all();
        }
        drop(q);
        if half {
            self.sender.room();
        }
    }

    /// Queues a copy of wire frame `frame`; false (and counted) when the FIFO is full.
    pub fn push(&self, frame: &[u8]) -> bool {
        self.push_with_hdr(&NetHdr::default(), frame)
    }

    /// Queues a copy of `frame` with the header its port handed it on with; false (and
    /// counted) when the FIFO is full.
    pub fn push_with_hdr(&self, hdr: &NetHdr, frame: &[u8]) -> bool {
        self.enqueue(hdr, frame, true)
    }

    /// Queues a copy of wire frame `frame` from a sender that asked first
    /// ([`RxInbox::has_room_or_want`] said yes before it took the chain this frame is from):
    /// never dropped. So the FIFO may go over its capacity by the frames of one chain (the
    /// segments of a GSO frame the device cut up) and by the frames a reader took out and
    /// gives back ([`InboxReader`]: they are not counted while held, so a sender asking then
    /// finds room that the give-back fills before its frame arrives). Dropping there would
    /// lose a frame the flow control had let through.
    pub fn push_admitted(&self, frame: &[u8]) -> bool {
        self.enqueue(&NetHdr::default(), frame, false)
    }

    fn enqueue(&self, hdr: &NetHdr, frame: &[u8], bounded: bool) -> bool {
        let buf = self.spare.copy_of(frame);
        let mut q = self.frames.lock();
        if bounded && q.len() + self.waiting_len.load(Ordering::SeqCst) >= self.capacity {
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

    /// Queues copies of wire frames `frames` in order, taking their buffers from the spare
    /// pool under one lock and the FIFO under one more (a generator's burst); returns how many
    /// were queued. The rest found the FIFO full: dropped and counted.
    pub fn push_batch(&self, frames: &[&[u8]]) -> usize {
        // On the stack up to a reader's batch (a generator's burst): a Vec here cost an
        // allocation and a free per call.
        let mut bufs = smallvec::SmallVec::<[Vec<u8>; READ_BATCH]>::new();
        self.spare.take_n(frames.len(), &mut bufs);
        for (b, f) in bufs.iter_mut().zip(frames) {
            b.extend_from_slice(f);
        }
        let mut q = self.frames.lock();
        let held = q.len() + self.waiting_len.load(Ordering::SeqCst);
        let n = frames.len().min(self.capacity.saturating_sub(held));
        q.extend(bufs.drain(..n).map(|data| InboxFrame {
            hdr: NetHdr::default(),
            data,
        }));
        self.len.store(q.len(), Ordering::SeqCst);
        drop(q);
        if !bufs.is_empty() {
            self.dropped.fetch_add(bufs.len() as u64, Ordering::Relaxed);
            for b in bufs {
                self.spare.put(b);
            }
        }
        n
    }

    /// A reader of the FIFO's head that takes frames [`READ_BATCH`] at a time
    /// ([`InboxReader`]), with `scratch` as its storage (empty; kept by the caller between
    /// readers so reading allocates nothing).
    pub fn reader(&self, scratch: ReaderScratch) -> InboxReader<'_> {
        debug_assert!(scratch.head.is_empty() && scratch.spent.is_empty());
        InboxReader {
            inbox: self,
            s: scratch,
        }
    }

    /// Moves up to `max` frames from the head of the FIFO to the back of `out`, under one lock.
    /// When `out` is empty and the whole FIFO fits, the two deques trade places instead: no
    /// frame is moved (moving them one by one cost about 50 instructions per frame, callgrind).
    fn pop_into(&self, out: &mut VecDeque<InboxFrame>, max: usize) {
        let mut q = self.frames.lock();
        if out.is_empty() && q.len() <= max {
            std::mem::swap(&mut *q, out);
        } else {
            let n = max.min(q.len());
            out.extend(q.drain(..n));
        }
        self.shrunk(q);
    }

    /// Puts `frames` back at the head of the FIFO in their order (emptying `frames`).
    fn unpop_all(&self, frames: &mut VecDeque<InboxFrame>) {
        if frames.is_empty() {
            return;
        }
        let mut q = self.frames.lock();
        while let Some(f) = frames.pop_back() {
            q.push_front(f);
        }
        self.len.store(q.len(), Ordering::SeqCst);
    }

    /// Takes the oldest frame: those waiting for their own queue's buffers first (queue pair
    /// by queue pair), then the FIFO's.
    pub fn pop(&self) -> Option<InboxFrame> {
        if self.waiting_len.load(Ordering::SeqCst) > 0 {
            let mut w = self.waiting.lock();
            if let Some(f) = w.pop() {
                self.waiting_changed(&w);
                drop(w);
                self.shrunk(self.frames.lock());
                return Some(f);
            }
        }
        let mut q = self.frames.lock();
        let f = q.pop_front();
        self.shrunk(q);
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
        self.spare.take()
    }
    /// Returns a buffer for reuse.
    pub fn recycle(&self, buf: Vec<u8>) {
        self.spare.put(buf);
    }

    /// Frames held: in the FIFO, and taken out of it to wait for their own RX queue's
    /// buffers (waiting.rs).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst) + self.waiting_len.load(Ordering::SeqCst)
    }

    /// Frames waiting for their own RX queue's buffers (waiting.rs), out of [`RxInbox::len`].
    pub fn waiting_len(&self) -> usize {
        self.waiting_len.load(Ordering::SeqCst)
    }

    /// Publishes the waiting lists' length and pairs (under their lock). Release stores, not
    /// SeqCst: on x86 a SeqCst store is a locked instruction, which waits for the delivery's
    /// stores into the driver's buffers to drain (see [`InboxReader`]). A fall is followed by
    /// [`RxInbox::shrunk`], whose SeqCst store of the FIFO's length a sender or reader that
    /// waits for room reads first, so it sees this one too.
    fn waiting_changed(&self, w: &WaitingFrames) {
        self.waiting_len.store(w.len(), Ordering::Release);
        self.waiting_pairs
            .store(w.pairs().data[0], Ordering::Release);
    }

    /// Whether queue pair `pair`'s RX queue has frames waiting for its buffers. Only the device
    /// adds waiting frames, under its lock: a true may be stale (a VMM took the frames,
    /// [`RxInbox::pop`]), a false is not while the device's lock is held.
    pub(crate) fn waits(&self, pair: u16) -> bool {
        self.waiting_pairs.load(Ordering::Relaxed) & (1 << pair) != 0
    }

    /// The queue pairs with frames waiting.
    pub(crate) fn waiting_pairs(&self) -> crate::net::PairSet {
        crate::net::PairSet::new([self.waiting_pairs.load(Ordering::SeqCst)])
    }

    /// Puts `frame`, steered to queue pair `pair`, at the end of that pair's waiting list.
    pub(crate) fn wait(&self, pair: u16, frame: InboxFrame) {
        let mut w = self.waiting.lock();
        w.push(pair, frame);
        self.waiting_changed(&w);
    }

    /// Takes pair `pair`'s waiting list out to deliver from it; give what is left back with
    /// [`RxInbox::put_back_waiting`] (the frames count as held meanwhile).
    pub(crate) fn take_waiting(&self, pair: u16) -> VecDeque<InboxFrame> {
        let mut w = self.waiting.lock();
        let list = w.take(pair);
        self.waiting_changed(&w);
        list
    }

    /// Gives back what is left of a list [`RxInbox::take_waiting`] took (`taken` frames then),
    /// ahead of what joined the pair meanwhile; wakes whoever waits for room if it shrank.
    pub(crate) fn put_back_waiting(&self, pair: u16, list: VecDeque<InboxFrame>, taken: usize) {
        let shrank = list.len() < taken;
        let mut w = self.waiting.lock();
        w.put_back(pair, list, taken);
        self.waiting_changed(&w);
        drop(w);
        if shrank {
            self.shrunk(self.frames.lock());
        }
    }

    /// Puts every waiting frame back at the head of the FIFO, queue pair by queue pair, each
    /// pair's in order (the steering changed: they are steered again).
    pub(crate) fn unwait_all(&self) {
        let mut w = self.waiting.lock();
        if w.is_empty() {
            return;
        }
        // Under the waiting lists' lock throughout, so the frames count as held all along.
        self.unpop_all(&mut w.take_all());
        self.waiting_changed(&w);
    }

    /// Calls `f` on every frame held, oldest first as [`RxInbox::pop`] would take them,
    /// without taking any (a saved state copies them).
    pub(crate) fn for_each_held(&self, mut f: impl FnMut(&InboxFrame)) {
        let w = self.waiting.lock();
        w.iter().for_each(&mut f);
        self.frames.lock().iter().for_each(f);
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames dropped because the FIFO was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Drops every frame held, in the FIFO and waiting for a queue (device reset); returns
    /// how many.
    pub fn clear(&self) -> usize {
        let mut w = self.waiting.lock();
        let waited = w.take_all().len();
        self.waiting_changed(&w);
        let mut q = self.frames.lock();
        let n = q.len();
        q.clear();
        drop(w);
        self.shrunk(q);
        waited + n
    }
}

/// Frames an [`InboxReader`] takes from the FIFO under one lock.
pub const READ_BATCH: usize = 32;

/// An [`InboxReader`]'s storage, kept by its owner between readers.
#[derive(Debug, Default)]
pub struct ReaderScratch {
    head: VecDeque<InboxFrame>,
    spent: Vec<Vec<u8>>,
}

/// The head of an [`RxInbox`], for the device's delivery loop: frames leave the FIFO
/// [`READ_BATCH`] at a time under one lock, the buffers of frames the loop is done with go back
/// to the spare pool together, and the frames taken but not delivered go back to the head of
/// the FIFO, in order, when the reader is finished (or dropped). Frames a reader holds are not
/// in the FIFO (its length does not count them, so ports may fill it by up to
/// [`READ_BATCH`] frames more): a reader lives inside one delivery, under the device lock, so
/// nothing that looks at the FIFO as a whole (reset, snapshot) runs while one exists.
///
/// Why batches: a FIFO pop and a pool put per frame are four lock round trips, and a locked
/// instruction also waits for the stores before it, which here are the delivery's stores into
/// the driver's buffers (lines last held by the driver's core). Batched, the 64-byte RX cell
/// of `vdpa-emu bench datapath` carries about 7% more frames (docs/bench.md).
pub struct InboxReader<'a> {
    inbox: &'a RxInbox,
    s: ReaderScratch,
}

impl InboxReader<'_> {
    /// The next frame: from the batch in hand, else a new batch from the FIFO.
    ///
    /// Inlined, with the refill out of line: called once per received frame, and as a call
    /// its `Option<InboxFrame>` came back through memory and was copied twice more.
    #[inline]
    pub fn pop(&mut self) -> Option<InboxFrame> {
        match self.s.head.pop_front() {
            Some(f) => Some(f),
            None => self.refill_and_pop(),
        }
    }

    #[inline(never)]
    fn refill_and_pop(&mut self) -> Option<InboxFrame> {
        self.inbox.pop_into(&mut self.s.head, READ_BATCH);
        self.s.head.pop_front()
    }

    /// Puts `frame` back in front of everything this reader holds (it is the next
    /// [`InboxReader::pop`]).
    pub fn unpop(&mut self, frame: InboxFrame) {
        self.s.head.push_front(frame);
    }

    /// Whether neither the reader nor the FIFO holds a frame.
    pub fn is_empty(&self) -> bool {
        self.s.head.is_empty() && self.inbox.is_empty()
    }

    /// Takes back the buffer of a frame the loop is done with (to the pool at the end).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.s.spent.push(buf);
    }

    /// An empty buffer for a frame the device builds itself (a segment).
    pub fn spare_buf(&mut self) -> Vec<u8> {
        match self.s.spent.pop() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => self.inbox.spare_buf(),
        }
    }

    /// Returns what the reader holds (frames to the FIFO's head, buffers to the pool) and
    /// its storage, empty, for the next reader.
    pub fn finish(mut self) -> ReaderScratch {
        self.give_back();
        std::mem::take(&mut self.s)
    }

    fn give_back(&mut self) {
        self.inbox.unpop_all(&mut self.s.head);
        self.inbox.spare.put_all(&mut self.s.spent);
    }
}

impl Drop for InboxReader<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Vec<u8> {
        vec![n; 60]
    }

    /// A FIFO holding frames 0..n (each filled with its number).
    fn inbox_of(n: u8) -> RxInbox {
        let inbox = RxInbox::new(1000);
        for i in 0..n {
            assert!(inbox.push(&frame(i)));
        }
        inbox
    }

    fn drain(inbox: &RxInbox) -> Vec<u8> {
        std::iter::from_fn(|| inbox.pop())
            .map(|f| f.data[0])
            .collect()
    }

    #[test]
    fn a_reader_takes_batches_in_order_and_gives_back_what_it_did_not_deliver() {
        let inbox = inbox_of(100);
        let mut rd = inbox.reader(ReaderScratch::default());
        let first: Vec<u8> = (0..40).map(|_| rd.pop().unwrap().data[0]).collect();
        assert_eq!(
            first,
            (0..40).collect::<Vec<u8>>(),
            "across a batch boundary"
        );
        assert_eq!(inbox.len(), 100 - 2 * READ_BATCH, "two batches taken");
        let f = rd.pop().unwrap();
        assert_eq!(f.data[0], 40);
        rd.unpop(f);
        // A port pushes while the reader holds frames: it goes behind them.
        assert!(inbox.push(&frame(200)));
        assert!(!rd.is_empty());
        let scratch = rd.finish();
        assert!(scratch.head.is_empty() && scratch.spent.is_empty());
        let mut want: Vec<u8> = (40..100).collect();
        want.push(200);
        assert_eq!(drain(&inbox), want, "nothing lost, nothing reordered");
    }

    /// The race a linked sender met (tests/tests/off_lock_tx.rs found it): it asks while a
    /// reader holds frames out of a full FIFO, finds room, and the reader's give-back fills the
    /// FIFO before the sender's frame arrives.
    #[test]
    fn a_frame_admitted_by_the_flow_control_is_never_dropped() {
        let inbox = RxInbox::new(8);
        for i in 0..8 {
            assert!(inbox.push(&frame(i)));
        }
        assert!(!inbox.has_room_or_want());
        let mut rd = inbox.reader(ReaderScratch::default());
        assert_eq!(rd.pop().unwrap().data[0], 0);
        assert!(inbox.has_room_or_want(), "the reader holds the rest");
        rd.finish();
        assert_eq!(inbox.len(), 7);
        assert!(inbox.push(&frame(100)), "one slot");
        // Full again: a bounded push drops, an admitted one goes over the capacity.
        assert!(!inbox.push(&frame(101)));
        assert!(inbox.push_admitted(&frame(102)));
        assert_eq!(inbox.len(), 9);
        assert_eq!(inbox.dropped(), 1);
        assert_eq!(drain(&inbox), [1, 2, 3, 4, 5, 6, 7, 100, 102]);
    }

    #[test]
    fn a_dropped_reader_gives_its_frames_back_too() {
        let inbox = inbox_of(5);
        {
            let mut rd = inbox.reader(ReaderScratch::default());
            assert_eq!(rd.pop().unwrap().data[0], 0);
            assert_eq!(inbox.len(), 0, "the rest are in the reader's batch");
        }
        assert_eq!(drain(&inbox), [1, 2, 3, 4]);
        let rd = inbox.reader(ReaderScratch::default());
        assert!(rd.is_empty());
    }

    #[test]
    fn delivered_buffers_go_back_to_the_pool_once_per_reader() {
        let inbox = inbox_of(3);
        let mut rd = inbox.reader(ReaderScratch::default());
        let mut ptrs = Vec::new();
        while let Some(f) = rd.pop() {
            ptrs.push(f.data.as_ptr());
            rd.recycle(f.data);
        }
        // A segment's buffer comes from the frames the reader is done with first.
        let seg = rd.spare_buf();
        assert!(seg.is_empty() && ptrs.contains(&seg.as_ptr()));
        rd.recycle(seg);
        drop(rd.finish());
        let mut again = Vec::new();
        inbox.spare.take_n(3, &mut again);
        let mut got: Vec<*const u8> = again.iter().map(|b| b.as_ptr()).collect();
        got.sort();
        ptrs.sort();
        assert_eq!(got, ptrs, "the three buffers are reused, not reallocated");
        assert!(again.iter().all(Vec::is_empty));
    }

    /// Frames waiting for their queue's buffers are in the packet buffer: they count in its
    /// length and its flow control, come first when taken or saved, go back to the FIFO's head
    /// when the steering changes, and a reset drops them.
    #[test]
    fn frames_waiting_for_a_queue_stay_in_the_packet_buffer() {
        let inbox = inbox_of(4);
        let mut rd = inbox.reader(ReaderScratch::default());
        let (a, b) = (rd.pop().unwrap(), rd.pop().unwrap());
        drop(rd.finish());
        inbox.wait(3, a);
        inbox.wait(1, b);
        assert_eq!((inbox.len(), inbox.waiting_len()), (4, 2));
        assert!(inbox.waits(1) && inbox.waits(3) && !inbox.waits(0));
        let mut held = Vec::new();
        inbox.for_each_held(|f| held.push(f.data[0]));
        assert_eq!(held, [1, 0, 2, 3], "pair by pair, then the FIFO");

        // Capacity: a FIFO of 4 that one waiting frame and three queued ones fill.
        let small = RxInbox::new(4);
        for i in 0..4 {
            assert!(small.push(&frame(i)));
        }
        let f0 = small.reader(ReaderScratch::default()).pop().unwrap();
        small.wait(0, f0);
        assert!(
            small.is_full() && !small.push(&frame(9)),
            "the waiting frame takes room"
        );
        assert!(!small.has_room_or_want());
        assert!(
            !small.wait_room(std::time::Duration::from_millis(1)),
            "a port reader finds no room"
        );
        // A port reader waiting for room goes on once the waiting list shrinks to half.
        let mut list = small.take_waiting(0);
        assert_eq!(
            small.len(),
            4,
            "a list taken out counts until it is put back"
        );
        std::thread::scope(|s| {
            let waiter = s.spawn(|| small.wait_room(std::time::Duration::from_secs(10)));
            std::thread::sleep(std::time::Duration::from_millis(20));
            let taken = list.len();
            list.pop_front();
            small.put_back_waiting(0, std::mem::take(&mut list), taken);
            assert_eq!(small.len(), 3);
            // One FIFO frame more taken: down to half.
            assert_eq!(small.pop().unwrap().data[0], 1);
            assert!(waiter.join().unwrap(), "woken by the drain");
        });

        // Steering changed: back to the FIFO's head, pair by pair.
        inbox.unwait_all();
        assert_eq!((inbox.len(), inbox.waiting_len()), (4, 0));
        assert!(!inbox.waits(1) && !inbox.waits(3));
        let c = inbox.reader(ReaderScratch::default()).pop().unwrap();
        inbox.wait(2, c);
        assert_eq!(
            inbox.pop().unwrap().data[0],
            1,
            "a waiting frame is taken first"
        );
        assert_eq!(
            inbox.clear(),
            3,
            "reset drops the FIFO's and the waiting frames"
        );
        assert_eq!((inbox.len(), inbox.waiting_len()), (0, 0));
    }

    #[test]
    fn a_burst_fills_the_fifo_and_counts_what_did_not_fit() {
        let inbox = RxInbox::new(4);
        inbox.push(&frame(9));
        let burst: Vec<Vec<u8>> = (0..5).map(frame).collect();
        let refs: Vec<&[u8]> = burst.iter().map(Vec::as_slice).collect();
        assert_eq!(inbox.push_batch(&refs), 3);
        assert_eq!(inbox.dropped(), 2);
        assert!(inbox.is_full());
        assert_eq!(drain(&inbox), [9, 0, 1, 2]);
        let pool = BufPool::new(2);
        let mut bufs = vec![vec![1u8], vec![2], vec![3]];
        pool.put_all(&mut bufs);
        assert!(bufs.is_empty(), "what the pool does not keep is dropped");
        let mut out = Vec::new();
        pool.take_n(3, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(Vec::is_empty));
    }
}
