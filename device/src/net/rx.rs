//! Receive (virtio 1.2 5.1.6.3-4): frames from the inbox are written, after a 12-byte
//! virtio_net_hdr_v1, into device-writable chains of the steered RX queue. With MRG_RXBUF a
//! frame may span several chains (num_buffers in the first header); without it the frame must
//! fit one chain or is dropped (the chain stays available).
//!
//! The header says what the device knows of the frame (5.1.6.4):
//! - a wire frame gets DATA_VALID when GUEST_CSUM is on and its TCP/UDP checksum verified;
//! - a frame its port handed on with NEEDS_CSUM (a TAP with TUNSETOFFLOAD) keeps it when the
//!   driver takes GUEST_CSUM now, else the device completes the checksum;
//! - a GSO frame from the port is handed on whole (gso_type, gso_size, NEEDS_CSUM) when the
//!   driver takes that GUEST_TSO4/6 (and GUEST_ECN) now, else the device cuts it into
//!   segments, which take the wire-frame path. So does a GSO frame no RX buffer can hold.
//!
//! - while the driver takes GSO frames, consecutive TCP segments of one flow waiting together
//!   in the inbox are coalesced into one (LRO, [`Coalescer`]), so segments a wire (loopback, a
//!   unix link) carried reach the driver as the GSO frame they were cut from.
//!
//! "Now" is what CTRL_GUEST_OFFLOADS_SET left on, negotiation until then (5.1.6.5.6.1).

use super::engine::{Datapath, NetEngine};
use super::lane::{HeldLanes, Lane};
use super::offload::coalesce::Coalescer;
use super::offload::csum;
use super::offload::gso::{self, SegBugs, TcpFrame, TCP_CSUM_OFFSET};
use super::offload::guest::GuestOffloads;
use super::offload::hdr::{
    self, GsoKind, NetHdr, TxOffload, F_DATA_VALID, F_NEEDS_CSUM, F_RSC_INFO,
};
use super::offload::verify::{self, L4Csum};
use super::rss::Steering;
use super::rx_express::Express;
use super::rx_wait::{RxSource, WaitingSource};
use super::PairSet;
use super::NET_HDR_LEN;
use crate::capture::CaptureDirection;
use crate::counters::DeviceCounters;
use crate::fault::DeviceFault;
use crate::port::{InboxFrame, InboxReader};
use crate::queue::chain::{Chain, ChainKind, Desc};
use crate::queue::Ring;
use crate::quirks::{Quirk, Quirks};
use crate::state::QueueState;
use bar_registers::virtio::bits;
use bar_registers::virtio::net_hdr::HASH_HDR_LEN;
use dma::{DmaEngine, DmaKind};

/// Chains one frame may be spread over (with MRG_RXBUF).
const MAX_RX_CHAINS: usize = 64;

/// What a port header may ask of the receive side: everything the device's own TX path
/// understands (checksum, TCPv4/v6 segmentation with ECN), whatever the driver negotiated.
const PORT_HDR_FEATURES: u64 =
    1 << bits::CSUM | 1 << bits::HOST_TSO4 | 1 << bits::HOST_TSO6 | 1 << bits::HOST_ECN;

/// The header a frame goes out with, encoded once: the v1 fields, and with
/// VIRTIO_NET_F_HASH_REPORT the hash value and report type (struct virtio_net_hdr_v1_hash,
/// 5.1.6). `num_buffers` is filled in at delivery ([`RxHdr::encode`]), when the device knows
/// how many chains the frame took.
#[derive(Clone, Copy, Debug)]
pub(super) struct RxHdr {
    bytes: [u8; HASH_HDR_LEN],
    len: usize,
}

impl RxHdr {
    /// A wire frame's header when the driver takes no receive offload and no hash report:
    /// all zero (num_buffers aside).
    pub(super) const PLAIN: RxHdr = RxHdr {
        bytes: [0; HASH_HDR_LEN],
        len: NET_HDR_LEN,
    };

    /// A wire frame's header: `flags` (DATA_VALID or nothing), no GSO.
    fn wire(flags: u8, hash: Option<(u32, u16)>) -> RxHdr {
        let mut bytes = [0u8; HASH_HDR_LEN];
        bytes[0] = flags;
        Self::with_hash(bytes, hash)
    }

    /// The header `v1` hands on (its `num_buffers` is not looked at).
    fn offloaded(v1: &NetHdr, hash: Option<(u32, u16)>) -> RxHdr {
        let mut bytes = [0u8; HASH_HDR_LEN];
        bytes[..NET_HDR_LEN].copy_from_slice(&v1.to_bytes());
        Self::with_hash(bytes, hash)
    }

    fn with_hash(mut bytes: [u8; HASH_HDR_LEN], hash: Option<(u32, u16)>) -> RxHdr {
        match hash {
            None => RxHdr {
                bytes,
                len: NET_HDR_LEN,
            },
            Some((value, report)) => {
                bytes[12..16].copy_from_slice(&value.to_le_bytes());
                bytes[16..18].copy_from_slice(&report.to_le_bytes());
                RxHdr {
                    bytes,
                    len: HASH_HDR_LEN,
                }
            }
        }
    }

    /// The header's bytes with `num_buffers` set, and its length.
    fn encode(&self, num_buffers: u16) -> ([u8; HASH_HDR_LEN], usize) {
        let mut b = self.bytes;
        b[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        (b, self.len)
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Where a popped chain's bytes go.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    head: u16,
    first_desc: usize,
    ndesc: usize,
    cap: u64,
}

impl Slot {
    /// The slot of popped chain `chain`, whose descriptors start at `first_desc` in the list
    /// the frame is written from.
    fn of(chain: &Chain, first_desc: usize) -> Slot {
        Slot {
            head: chain.head,
            first_desc,
            ndesc: chain.descs.len(),
            cap: chain.writable,
        }
    }
}

/// What the delivery knows before its first frame.
#[derive(Clone, Copy, Debug)]
pub(super) struct RxCx {
    pub(super) mrg: bool,
    hash_report: bool,
    go: GuestOffloads,
    pub(super) rss_quirk: bool,
    /// Whether a plain wire frame may take the express lane ([`NetEngine::rx_express`]).
    pub(super) express: bool,
    /// The lane is open, one queue pair is in use and no frame waits for queue 0's buffers.
    /// Set for the FIFO's frames only: with one pair, a frame that finds no room stays the
    /// FIFO's head (it never starts to wait on a list), so this holds for the whole loop.
    pub(super) express_one: bool,
}

/// What became of one frame ([`NetEngine::rx_frame`]).
#[derive(Debug)]
pub(super) enum Step {
    /// Delivered, dropped (counted), or turned into segments at the head of its source.
    Taken,
    /// It waits for RX queue `q`'s buffers (out of them, or frames wait there before it).
    Waits(u16, InboxFrame),
    /// The device failed (boxed: see [`Delivery`]).
    Fault(Box<DeviceFault>),
}

/// What one frame's delivery came to: two whole words, {the [`Fit`] (a whole word itself), or
/// the `Err` niche in it; the boxed fault}, which the compiler moves as two 8-byte values.
///
/// Received frames go through it one by one, and its shape is measured, not style. As a
/// `Result<Fit, DeviceFault>` (48 bytes), and as a `Result` of a one-byte `Fit` and a boxed
/// fault, the compiler built it on the stack with one narrow store and copied it on with a
/// wider load that spans that store. That load cannot take its value from the store buffer
/// (a store-to-load forwarding failure): it waits until every older store has reached the
/// cache, the frame's writes into the driver's buffers included, whose lines the driver's
/// core holds (it read their `num_buffers`). A wait for a cross-core transfer per frame:
/// `perf record` on serve's core put a fifth to a third of its samples on that one load in
/// `vdpa-emu bench datapath --dir rx`; with the words, the 64-byte 1-QP RX cells ran 8%
/// (split) and 2% (packed) faster across processes, medians of interleaved near windows
/// (docs/bench.md, 2026-12-06 (night)). A fault is rare; its allocation is not on the
/// datapath.
pub(super) type Delivery = Result<Fit, Box<DeviceFault>>;

// The two words, checked where a change of the types would break them: a narrower `Fit`, or
// an unboxed fault, fails the build here.
const _: () = assert!(size_of::<Fit>() == 8 && size_of::<Delivery>() == 16);

/// Whether a frame went into a queue. A whole word ([`Delivery`] says why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(super) enum Fit {
    /// Written and used.
    Done,
    /// Not enough buffers yet: the frame waits.
    NoRoom,
    /// No buffers the driver could post would hold it (one chain without MRG_RXBUF, or more
    /// chains than the device spreads a frame over, or than the ring has).
    TooSmall,
}

/// What the device does with one inbox frame.
#[derive(Clone, Copy, Debug)]
enum RxPlan {
    /// A wire frame: DATA_VALID if GUEST_CSUM is on and the checksum verifies.
    Wire,
    /// Handed on with this header (NEEDS_CSUM, and a GSO type for a whole GSO frame).
    Offloaded(NetHdr),
    /// Checksum to complete (the driver does not take NEEDS_CSUM), then a wire frame.
    Complete { start: usize, offset: usize },
    /// A GSO frame to cut into `mss`-byte segments.
    Segment { t: TcpFrame, mss: usize },
    /// The header does not describe the frame.
    Bad,
}

/// Whether a frame with port header `h` is a wire frame to the receive path whatever the
/// driver takes: no NEEDS_CSUM, no GSO type (plain, or DATA_VALID from the port: the device
/// verifies itself either way).
#[inline(always)]
pub(super) fn arrives_as_wire(h: &NetHdr) -> bool {
    h.flags & F_NEEDS_CSUM == 0 && h.gso_type == hdr::GSO_NONE
}

/// Decides from a port header and what the driver takes now.
fn plan(h: &NetHdr, frame: &[u8], go: GuestOffloads) -> RxPlan {
    if arrives_as_wire(h) {
        return RxPlan::Wire;
    }
    let tx_view = NetHdr {
        flags: h.flags & !(F_DATA_VALID | F_RSC_INFO),
        ..*h
    };
    match hdr::tx_offload(&tx_view, frame.len(), PORT_HDR_FEATURES) {
        Err(_) => RxPlan::Bad,
        Ok(TxOffload::None) => RxPlan::Wire,
        Ok(TxOffload::Csum { start, offset }) if go.csum() => RxPlan::Offloaded(NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: hdr::GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: start as u16,
            csum_offset: offset as u16,
            num_buffers: 0,
        }),
        Ok(TxOffload::Csum { start, offset }) => RxPlan::Complete { start, offset },
        Ok(TxOffload::Gso {
            kind,
            ecn,
            mss,
            csum_start,
            csum_offset,
        }) => {
            let Some(t) = gso::parse_tcp(frame, kind) else {
                return RxPlan::Bad;
            };
            if csum_start != t.l4 || csum_offset != TCP_CSUM_OFFSET || t.payload == frame.len() {
                return RxPlan::Bad;
            }
            if go.takes_gso(kind == GsoKind::Tcp4, ecn) {
                RxPlan::Offloaded(NetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: h.gso_type,
                    // 5.1.6.4: hdr_len, "the length of the headers" (the driver's hint).
                    hdr_len: t.payload as u16,
                    gso_size: mss,
                    csum_start: csum_start as u16,
                    csum_offset: csum_offset as u16,
                    num_buffers: 0,
                })
            } else {
                RxPlan::Segment {
                    t,
                    mss: usize::from(mss),
                }
            }
        }
    }
}

/// Whether the receive path can act on port header `h` for `frame` (a restored FIFO frame's).
pub(crate) fn port_hdr_ok(h: &NetHdr, frame: &[u8]) -> bool {
    !matches!(plan(h, frame, GuestOffloads(0)), RxPlan::Bad)
}

impl NetEngine {
    /// Delivers waiting frames into RX queues: first each queue's waiting list
    /// ([`WaitingFrames`]) while the queue has buffers, then the FIFO's frames in order until
    /// the FIFO is empty or every queue pair in use has frames waiting. A frame whose queue has
    /// no buffers, or has frames waiting, joins that queue's list. Publishes each touched queue
    /// and interrupts as the driver asked.
    ///
    /// At most `budget` frames per call: returns true when the budget ran out with frames
    /// left, for the caller to lend the device lock before it goes on ([`crate::Device`]'s
    /// `deliver_held`), so a register access or a doorbell waits for one budget of a busy
    /// wire, not for all a peer keeps sending (counter `rx_budget_yields`).
    pub(crate) fn service_rx(
        &mut self,
        dp: &mut Datapath<'_>,
        budget: u32,
    ) -> Result<bool, DeviceFault> {
        let hash_report = dp.has(bits::HASH_REPORT);
        let go = self.guest_offloads(dp.features);
        let cx = RxCx {
            mrg: dp.has(bits::MRG_RXBUF),
            hash_report,
            go,
            rss_quirk: self.params.quirks.has(Quirk::RssIgnoresIndirectionTable),
            express: self.express_lane_open(hash_report, go),
            express_one: false,
        };
        let mut touched = PairSet::ZERO;
        let inbox = self.inbox.clone();
        let mut rd = inbox.reader(std::mem::take(&mut self.rx_scratch));
        let all_lanes = self.lanes.clone();
        let mut lanes = HeldLanes::new(&all_lanes);
        let mut budget = budget;
        let mut result =
            self.deliver_waiting(&mut rd, &mut lanes, cx, &mut touched, dp, &mut budget);
        let pairs = usize::from(self.net.curr_pairs.max(1));
        // Once every pair in use has frames waiting, the rest wait in the FIFO.
        let mut all_wait = self.inbox.waiting_pairs().count_ones() >= pairs;
        let cx = RxCx {
            express_one: cx.express && pairs == 1 && !self.inbox.waits(0),
            ..cx
        };
        while result.is_ok() && !all_wait && budget > 0 {
            let Some(mut frame) = rd.pop() else { break };
            budget -= 1;
            let x = if cx.express_one {
                self.rx_express::<true>(&mut frame, cx, &mut lanes, &mut rd, &mut touched, dp)
            } else {
                self.rx_express::<false>(&mut frame, cx, &mut lanes, &mut rd, &mut touched, dp)
            };
            let step = match x {
                Express::Taken => continue,
                Express::NoRoom(q) => Step::Waits(q, frame),
                Express::Fault(f) => Step::Fault(f),
                Express::NotForLane => {
                    self.rx_frame(frame, &mut rd, &mut lanes, cx, None, &mut touched, dp)
                }
            };
            match step {
                Step::Taken => {}
                Step::Waits(q, frame) => {
                    let waiting = self.inbox.waiting_pairs();
                    if !waiting[usize::from(q / 2)] && waiting.count_ones() + 1 >= pairs {
                        // Every other pair in use has frames waiting already (always so with
                        // one pair): no queue could take a frame behind this one, so it stays
                        // the FIFO's head, as cheap as it was before there were waiting lists
                        // (a list costs three round trips through its lock per refill).
                        rd.unpop(frame);
                        break;
                    }
                    self.inbox.wait(q / 2, frame);
                    dp.counters.rx_queue_waits += 1;
                    all_wait = waiting.count_ones() + 1 >= pairs;
                }
                Step::Fault(f) => result = Err(*f),
            }
        }
        self.rx_scratch = rd.finish();
        for pair in touched.iter_ones() {
            let q = 2 * pair as u16;
            publish_rx(lanes.get(q), q, dp)?;
        }
        result?;
        let more = budget == 0 && !all_wait && !self.inbox.is_empty();
        if more {
            dp.counters.rx_budget_yields += 1;
        }
        Ok(more)
    }

    /// Delivers from each queue's waiting list, oldest first, until the list is empty or the
    /// queue is out of buffers again.
    fn deliver_waiting(
        &mut self,
        rd: &mut InboxReader<'_>,
        lanes: &mut HeldLanes<'_>,
        cx: RxCx,
        touched: &mut PairSet,
        dp: &mut Datapath<'_>,
        budget: &mut u32,
    ) -> Result<(), DeviceFault> {
        let mut result = Ok(());
        for pair in self.inbox.waiting_pairs().iter_ones() {
            if *budget == 0 {
                break;
            }
            let own = 2 * pair as u16;
            // Most looks find the queue still out of buffers (its driver has not refilled yet):
            // then the list stays where it is, without two round trips through its lock.
            if !may_take(lanes.get(own), self.params.batch)? {
                continue;
            }
            let mut list = self.inbox.take_waiting(pair as u16);
            let taken = list.len();
            let mut src = WaitingSource {
                list: &mut list,
                rd,
            };
            while *budget > 0 {
                let Some(frame) = src.pop() else { break };
                *budget -= 1;
                match self.rx_frame(frame, &mut src, lanes, cx, Some(own), touched, dp) {
                    Step::Taken => {}
                    Step::Waits(q, frame) if q == own => {
                        src.unpop(frame);
                        break;
                    }
                    // Steered to another queue (its own is being reset).
                    Step::Waits(q, frame) => self.inbox.wait(q / 2, frame),
                    Step::Fault(f) => {
                        result = Err(*f);
                        break;
                    }
                }
            }
            self.inbox.put_back_waiting(pair as u16, list, taken);
            if result.is_err() {
                break;
            }
        }
        result
    }

    /// Every frame waiting for its queue's buffers goes back to the FIFO's head, queue pair by
    /// queue pair, to be steered again: called when the steering changed, so a flow's frames
    /// that wait on the queue it left never pass the ones that go to its new queue.
    pub(crate) fn steering_changed(&mut self) {
        self.inbox.unwait_all();
    }

    /// Takes one frame through the receive path: filter, port header, coalescing, steering,
    /// delivery into its RX queue. `src` is where it came from (coalescing takes the frames
    /// behind it from there, segments go back there); `own` is the queue whose waiting list
    /// `src` is, if it is one.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn rx_frame(
        &mut self,
        mut frame: InboxFrame,
        src: &mut impl RxSource,
        lanes: &mut HeldLanes<'_>,
        cx: RxCx,
        own: Option<u16>,
        touched: &mut PairSet,
        dp: &mut Datapath<'_>,
    ) -> Step {
        let go = cx.go;
        if !self.net.accepts(&frame.data) {
            dp.counters.rx_filtered += 1;
            src.recycle(frame.data);
            return Step::Taken;
        }
        let mut plan = plan(&frame.hdr, &frame.data, go);
        match plan {
            RxPlan::Bad => {
                dp.counters.rx_bad_offload += 1;
                src.recycle(frame.data);
                return Step::Taken;
            }
            RxPlan::Complete { start, offset } => {
                csum::complete(&mut frame.data, start, offset, false);
                frame.hdr = NetHdr::default();
                dp.counters.rx_csum_completed += 1;
                plan = RxPlan::Wire;
            }
            RxPlan::Segment { t, mss } => {
                self.segment_into(src, frame, &t, mss, dp.counters);
                return Step::Taken;
            }
            // Only when another frame waits behind it: a lone segment has nothing to join.
            RxPlan::Wire
                if go.takes_any_tso() && frame.hdr == NetHdr::default() && !src.is_empty() =>
            {
                // A wire frame from the port (not a segment the device cut itself: those
                // carry DATA_VALID here) may start a GSO frame of segments waiting with it.
                if let Some(h) = self.coalesce(src, &mut frame, go, dp.counters) {
                    // From here on it is a GSO frame with this header, as a port that passes
                    // offloads on hands one over: if it has to wait for buffers, it waits as
                    // one (without it, a frame bigger than any wire frame would come out as a
                    // plain one).
                    frame.hdr = h;
                    plan = RxPlan::Offloaded(h);
                }
            }
            RxPlan::Wire | RxPlan::Offloaded(_) => {}
        }
        // Counted once the frame is delivered or dropped: a frame that waits for buffers is
        // steered again on every try.
        let steering = self.net.steer(&frame.data, cx.rss_quirk);
        let q = match steering {
            Steering::Flow(p) | Steering::Hashed(p) | Steering::Unclassified(p) => 2 * p,
        };
        let mut resteered = false;
        // Looked at here, inline: the queue is almost never being reset.
        let target = if lanes.get(q).slot.state.being_reset() {
            self.resteer_from_reset(lanes, q)
        } else {
            Some(q)
        };
        let q = match target {
            Some(r) if r == q => q,
            Some(r) => {
                resteered = true;
                r
            }
            None => {
                count_steering(dp.counters, steering, false);
                dp.counters.rx_dropped_queue_reset += 1;
                src.recycle(frame.data);
                return Step::Taken;
            }
        };
        if own != Some(q) && self.inbox.waits(q / 2) {
            // Behind the frames that wait for this queue's buffers already.
            return Step::Waits(q, frame);
        }
        let hash = if cx.hash_report {
            Some(self.hash_of(&frame.data))
        } else {
            None
        };
        // 5.1.6.4.1: with GUEST_CSUM the device MAY set DATA_VALID, and then MUST have
        // validated the checksum: only a TCP/UDP checksum that verified gets it.
        let (out, out_hdr, csum) = match plan {
            RxPlan::Offloaded(h) => (RxHdr::offloaded(&h, hash), h, L4Csum::NotChecked),
            _ => {
                let c = if go.csum() {
                    verify::l4_checksum(&frame.data)
                } else {
                    L4Csum::NotChecked
                };
                let flags = if c == L4Csum::Valid { F_DATA_VALID } else { 0 };
                let h = NetHdr {
                    flags,
                    ..NetHdr::default()
                };
                (RxHdr::wire(flags, hash), h, c)
            }
        };
        let res = self.deliver_or_arm(lanes.get(q), q, &frame.data, &out, cx.mrg, dp.counters);
        match res {
            Ok(Fit::Done) => {
                count_steering(dp.counters, steering, resteered);
                match csum {
                    L4Csum::Valid => dp.counters.rx_csum_valid += 1,
                    L4Csum::Bad => dp.counters.rx_csum_bad += 1,
                    L4Csum::NotChecked => {}
                }
                if out_hdr.gso_type != hdr::GSO_NONE {
                    dp.counters.rx_gso_frames += 1;
                } else if out_hdr.flags & F_NEEDS_CSUM != 0 {
                    dp.counters.rx_csum_partial += 1;
                }
                if matches!(hash, Some((_, r)) if r != 0) {
                    dp.counters.rx_hash_reported += 1;
                }
                touched.set(usize::from(q / 2), true);
                src.recycle(frame.data);
                Step::Taken
            }
            Ok(Fit::TooSmall) if out_hdr.gso_type != hdr::GSO_NONE => {
                // A whole GSO frame no buffer of this driver holds: segments do fit.
                let RxPlan::Offloaded(h) = plan else {
                    unreachable!("only offloaded frames carry a GSO type")
                };
                let kind = if h.gso_type & !hdr::GSO_ECN == hdr::GSO_TCPV4 {
                    GsoKind::Tcp4
                } else {
                    GsoKind::Tcp6
                };
                let t = gso::parse_tcp(&frame.data, kind).expect("checked by plan");
                self.segment_into(src, frame, &t, usize::from(h.gso_size), dp.counters);
                Step::Taken
            }
            Ok(Fit::TooSmall) => {
                count_steering(dp.counters, steering, resteered);
                // 5.1.6.3.1: without MRG_RXBUF the driver must post buffers that hold a whole
                // frame; this one does not: drop the frame, keep the buffers.
                dp.counters.rx_dropped_too_small += 1;
                src.recycle(frame.data);
                Step::Taken
            }
            // No room yet: the frame waits for this queue's buffers.
            Ok(Fit::NoRoom) => Step::Waits(q, frame),
            Err(f) => Step::Fault(f),
        }
    }

    /// Takes the segments that continue `frame`'s TCP flow from the head of `rd` (the FIFO or
    /// a waiting list) into it (LRO, [`Coalescer`]) and returns the GSO header when more than
    /// one was taken.
    fn coalesce(
        &mut self,
        rd: &mut impl RxSource,
        frame: &mut InboxFrame,
        go: GuestOffloads,
        counters: &mut DeviceCounters,
    ) -> Option<NetHdr> {
        let mut c = Coalescer::start(&frame.data)?;
        if !go.takes_gso(c.v4(), false) {
            return None;
        }
        while let Some(next) = rd.pop() {
            if next.hdr != NetHdr::default() || !c.append(&mut frame.data, &next.data) {
                rd.unpop(next);
                break;
            }
            rd.recycle(next.data);
        }
        if c.segments() < 2 {
            return None;
        }
        counters.rx_coalesced_frames += 1;
        counters.rx_coalesced_segments += u64::from(c.segments());
        Some(c.finish(&mut frame.data))
    }

    /// Cuts GSO frame `frame` into segments and puts them at the head of `rd` (the FIFO or a
    /// waiting list), in order: they are delivered next, as wire frames (a segment that finds
    /// no room waits like any frame).
    fn segment_into(
        &mut self,
        rd: &mut impl RxSource,
        frame: InboxFrame,
        t: &TcpFrame,
        mss: usize,
        counters: &mut DeviceCounters,
    ) {
        let mut segs = Vec::with_capacity(frame.data.len() / mss.max(1) + 1);
        let n = gso::segment(
            &frame.data,
            t,
            mss,
            SegBugs::default(),
            &mut self.seg_buf,
            |s| {
                let mut b = rd.spare_buf();
                b.extend_from_slice(s);
                segs.push(b);
            },
        );
        counters.rx_gso_segmented += 1;
        counters.rx_gso_segments += n;
        rd.recycle(frame.data);
        // DATA_VALID (the device computed their checksums) marks them as the device's own
        // segments, which are not coalesced again.
        for data in segs.into_iter().rev() {
            rd.unpop(InboxFrame {
                hdr: NetHdr {
                    flags: F_DATA_VALID,
                    ..NetHdr::default()
                },
                data,
            });
        }
    }

    /// The RX queue a frame steered to `q`, which is being reset alone (VIRTIO_F_RING_RESET,
    /// virtio 1.2 2.6.1, which leaves steering to a queue being reset open:
    /// oasis-tcs/virtio-spec issue #138), goes to instead: the next pair in use whose RX queue
    /// is not being reset, or None (drop) when every one is, so frames for a queue the driver
    /// may be resizing neither wait in front of other queues' frames in the FIFO nor pile up.
    /// A stopped queue (IFC VF stop, migration) is not being reset: its frames wait.
    fn resteer_from_reset(&self, lanes: &mut HeldLanes<'_>, q: u16) -> Option<u16> {
        let mut reset = |r: u16| lanes.get(r).slot.state.being_reset();
        let pairs = self.net.curr_pairs.max(1);
        (1..=pairs)
            .map(|i| 2 * ((q / 2 + i) % pairs))
            .find(|&r| !reset(r))
    }

    /// The hash report of `frame` (HASH_REPORT negotiated): under the RSS configuration while
    /// RSS is on, else the one HASH_CONFIG set, else none (VIRTIO_NET_HASH_REPORT_NONE).
    fn hash_of(&mut self, frame: &[u8]) -> (u32, u16) {
        let bug = self.params.quirks.has(Quirk::HashReportTypeWrong);
        let net = &mut self.net;
        let (types, key) = match (&net.rss, &net.hash_cfg) {
            (Some(r), _) => (r.hash_types, &r.key),
            (None, Some(h)) => (h.hash_types, &h.key),
            (None, None) => return (0, 0),
        };
        let t = net.toeplitz.table(key);
        super::rss::hash_report_by(frame, types, bug, |i| t.hash(i))
    }

    /// [`Self::deliver`]; out of buffers, it asks for a doorbell when the driver adds some
    /// (avail_event with EVENT_IDX, 2.7.10), then looks once more in case it just did.
    ///
    /// The frame's parameters go one by one, here as to `deliver` and `deliver_spread`:
    /// bundled in one struct they cost `rx_deliver/64B/log_off` 727 instructions per frame
    /// against 697.
    #[inline(always)]
    pub(super) fn deliver_or_arm(
        &mut self,
        lane: &mut Lane,
        q: u16,
        frame: &[u8],
        h: &RxHdr,
        mrg: bool,
        counters: &mut DeviceCounters,
    ) -> Delivery {
        let res = self.deliver(lane, q, frame, h, mrg, counters);
        if let Ok(Fit::NoRoom) = res {
            return match arm_rx(lane) {
                Ok(true) => self.deliver(lane, q, frame, h, mrg, counters),
                Ok(false) => Ok(Fit::NoRoom),
                Err(e) => Err(Box::new(e)),
            };
        }
        res
    }

    /// Writes one frame into queue `q` behind header `h` (num_buffers filled in here).
    ///
    /// The next chain almost always holds the frame alone (a mergeable buffer of one
    /// descriptor, or a big buffer): that case is written here, straight from the popped
    /// chain. A frame that needs more chains (MRG_RXBUF) goes on in [`Self::deliver_spread`].
    #[inline(always)]
    fn deliver(
        &mut self,
        lane: &mut Lane,
        q: u16,
        frame: &[u8],
        h: &RxHdr,
        mrg: bool,
        counters: &mut DeviceCounters,
    ) -> Delivery {
        let batch = self.params.batch;
        let Lane { slot, dma, .. } = &mut *lane;
        let QueueState::Enabled(ring) = &mut slot.state else {
            return Ok(Fit::NoRoom);
        };
        let chain = &mut self.chain;
        ring.begin();
        if !ring.has_avail(dma, batch)?
            || !ring.pop(dma, chain, ChainKind::Rx, u64::from(u32::MAX))?
        {
            ring.rollback();
            return Ok(Fit::NoRoom);
        }
        let need = (h.len() + frame.len()) as u64;
        if chain.writable < need {
            return self.deliver_spread(lane, q, frame, h, mrg, counters);
        }
        ring.commit();
        let (hdr, hdr_len) = h.encode(1);
        let wrong_len = used_len_wrong(self.params.quirks, ring);
        if let Some(first) = chain.descs.first().filter(|d| u64::from(d.len) >= need) {
            // Header and frame in the first descriptor: one write.
            dma.write_gather(first.addr, &hdr[..hdr_len], frame, DmaKind::PacketWrite)
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            let used = if wrong_len { chain.writable } else { need };
            ring.push_used(chain.head, used as u32);
        } else {
            let slot = Slot::of(chain, 0);
            write_frame(
                ring,
                dma,
                q,
                &hdr[..hdr_len],
                frame,
                &[slot],
                &chain.descs,
                wrong_len,
            )?;
        }
        self.count_delivered(counters, q, 1, frame);
        Ok(Fit::Done)
    }

    /// [`Self::deliver`] of a frame the first chain (popped, in the open transaction) does not
    /// hold: with MRG_RXBUF more chains are popped until it fits.
    #[cold]
    #[inline(never)]
    fn deliver_spread(
        &mut self,
        lane: &mut Lane,
        q: u16,
        frame: &[u8],
        h: &RxHdr,
        mrg: bool,
        counters: &mut DeviceCounters,
    ) -> Delivery {
        let batch = self.params.batch;
        let quirks = self.params.quirks;
        let NetEngine {
            chain,
            rx_descs: all,
            rx_slots: slots,
            ..
        } = self;
        let Lane { slot, dma, .. } = lane;
        let ring_size = usize::from(slot.size);
        let QueueState::Enabled(ring) = &mut slot.state else {
            unreachable!("deliver popped a chain from this ring")
        };
        let wrong_len = used_len_wrong(quirks, ring);
        let need = (h.len() + frame.len()) as u64;
        // The descriptors of all chains are appended into one list (`all`) and their slots
        // into `slots`, the first chain's (popped by `deliver`) first.
        slots.clear();
        all.clear();
        all.extend(chain.descs.iter().copied());
        slots.push(Slot::of(chain, 0));
        let mut cap = chain.writable;
        let outcome: Result<Fit, DeviceFault> = loop {
            if cap >= need {
                break Ok(Fit::Done);
            }
            let chains = slots.len();
            if chains == MAX_RX_CHAINS || chains == ring_size || !mrg {
                break Ok(Fit::TooSmall);
            }
            if !ring.has_avail(dma, batch)? {
                break Ok(Fit::NoRoom);
            }
            if !ring.pop(dma, chain, ChainKind::Rx, u64::from(u32::MAX))? {
                break Ok(Fit::NoRoom);
            }
            slots.push(Slot::of(chain, all.len()));
            all.extend(chain.descs.iter().copied());
            cap += chain.writable;
        };
        let fit = outcome?;
        if fit != Fit::Done {
            // The buffers stay available (the caller drops, segments or waits).
            ring.rollback();
            return Ok(fit);
        }
        ring.commit();
        let (hdr, hdr_len) = h.encode(slots.len() as u16);
        write_frame(ring, dma, q, &hdr[..hdr_len], frame, slots, all, wrong_len)?;
        let n = slots.len();
        self.count_delivered(counters, q, n, frame);
        Ok(Fit::Done)
    }

    /// Counts a frame delivered into queue `q` over `chains` chains (and captures it).
    #[inline(always)]
    fn count_delivered(&self, counters: &mut DeviceCounters, q: u16, chains: usize, frame: &[u8]) {
        let qc = &mut counters.queues[usize::from(q)];
        qc.chains += chains as u64;
        qc.frames += 1;
        qc.bytes += frame.len() as u64;
        counters.rx_frames += 1;
        counters.rx_bytes += frame.len() as u64;
        if let Some(c) = &self.capture {
            c.frame(CaptureDirection::Rx, q / 2, frame);
        }
    }
}

/// Whether `ring` writes the used length wrong: the split-ring-used-len-wrong quirk, a split
/// ring engine bug.
fn used_len_wrong(quirks: Quirks, ring: &Ring) -> bool {
    !ring.is_packed() && quirks.has(Quirk::SplitRingUsedLenWrong)
}

/// Counts how a frame that left the FIFO for good was steered (RSS hash, unclassified, or
/// to another queue than its own because that one was being reset).
fn count_steering(c: &mut DeviceCounters, steering: Steering, resteered: bool) {
    match steering {
        Steering::Flow(_) => {}
        Steering::Hashed(_) => c.rx_rss_hashed += 1,
        Steering::Unclassified(_) => c.rx_rss_unclassified += 1,
    }
    if resteered {
        c.rx_resteered_queue_reset += 1;
    }
}

/// Whether `lane`'s RX queue may take its waiting frames now: buffers fetched or available
/// (fetching up to `batch`, as a delivery would), or the queue is being reset (its frames go
/// to another queue). A stopped or disabled queue keeps them waiting. The queue asked for a
/// doorbell when its frames began to wait ([`arm_rx`]).
fn may_take(lane: &mut Lane, batch: u16) -> Result<bool, DeviceFault> {
    let Lane { slot, dma, .. } = lane;
    match &mut slot.state {
        QueueState::Enabled(ring) => ring.has_avail(dma, batch),
        s => Ok(s.being_reset()),
    }
}

/// Out of buffers on `lane`'s RX queue: asks for a doorbell when the driver adds some
/// (avail_event with EVENT_IDX, 2.7.10) and says whether it just did.
fn arm_rx(lane: &mut Lane) -> Result<bool, DeviceFault> {
    let Lane { slot, dma, .. } = lane;
    match &mut slot.state {
        QueueState::Enabled(ring) => ring.arm_notification(dma),
        _ => Ok(false),
    }
}

/// Publishes what a delivery wrote into `lane`'s RX queue and notes its interrupt, if the
/// driver wants one (`q` is the queue's index).
fn publish_rx(lane: &mut Lane, q: u16, dp: &mut Datapath<'_>) -> Result<(), DeviceFault> {
    let Lane { slot, dma, .. } = lane;
    match &mut slot.state {
        QueueState::Enabled(ring) => dp.publish(ring, dma, q),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_frame(
    ring: &mut Ring,
    dma: &mut DmaEngine,
    q: u16,
    hdr: &[u8],
    frame: &[u8],
    slots: &[Slot],
    all: &[Desc],
    wrong_len: bool,
) -> Result<(), DeviceFault> {
    let total = hdr.len() + frame.len();
    let mut pos = 0usize; // position in the hdr ++ frame stream
    for s in slots {
        let mut written = 0u64;
        for d in &all[s.first_desc..s.first_desc + s.ndesc] {
            if pos >= total {
                break;
            }
            let n = (d.len as usize).min(total - pos);
            let mut addr = d.addr;
            let mut left = n;
            if pos < hdr.len() && n > hdr.len() - pos {
                // The descriptor holds the rest of the header and the start of the frame: one
                // DMA write of both, as a NIC writes a frame and its header in one request (one
                // translation; the TLPs on the bus are those of two back-to-back writes).
                let h = hdr.len() - pos;
                dma.write_gather(addr, &hdr[pos..], &frame[..n - h], DmaKind::PacketWrite)
                    .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
                pos += n;
                written += n as u64;
                continue;
            }
            // The part of this descriptor that falls in the header, then the part in the frame.
            if pos < hdr.len() {
                let h = (hdr.len() - pos).min(left);
                dma.write(addr, &hdr[pos..pos + h], DmaKind::PacketWrite)
                    .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
                addr += h as u64;
                left -= h;
                pos += h;
            }
            if left > 0 {
                let f = pos - hdr.len();
                dma.write(addr, &frame[f..f + left], DmaKind::PacketWrite)
                    .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
                pos += left;
            }
            written += n as u64;
        }
        debug_assert!(written <= s.cap);
        ring.push_used(
            s.head,
            if wrong_len {
                s.cap as u32
            } else {
                written as u32
            },
        );
    }
    Ok(())
}
