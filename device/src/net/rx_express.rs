//! The receive path's express lane: a plain wire frame for a driver that takes none of what
//! makes the receive path decide per frame. That is DPDK's virtio PMD as testpmd configures it
//! (no receive offload), and what `vdpa-emu bench datapath` negotiates.
//!
//! The lane is open for a whole delivery ([`NetEngine::express_lane_open`]), unless
//! `DeviceConfig::rx_express` turned it off, when the driver negotiated no HASH_REPORT, takes
//! no GUEST_CSUM and no GSO frame now, and RSS is off (frames are steered by the flow table,
//! or to the one pair). A frame then takes it when its port handed it on without NEEDS_CSUM or
//! a GSO type and the RX filter accepts it. For such a frame [`NetEngine::rx_frame`] would:
//! - plan it as a wire frame, verify no checksum and coalesce nothing;
//! - steer it by the flow table (`Steering::Flow`, counted nowhere);
//! - write it behind an all-zero header ([`RxHdr::PLAIN`]) with `deliver_or_arm`;
//! - count nothing of steering, checksum, GSO or hash.
//!
//! The lane does the same, without the decisions. Everything else goes to `rx_frame`, which
//! defines the behaviour: a frame the filter drops, one with a port header, and any frame for
//! a queue that is being reset or has frames waiting for its buffers.
//!
//! Measured (scripts/instructions-per-frame.sh, docs/bench.md): 841 -> 697 instructions per
//! 64-byte frame in `rx_deliver/64B/log_off`, 993 -> 835 with four pairs (`4qp_log_off`).

use super::engine::{Datapath, NetEngine};
use super::lane::HeldLanes;
use super::offload::guest::GuestOffloads;
use super::rss::Steering;
use super::rx::{arrives_as_wire, Fit, RxCx, RxHdr};
use super::rx_wait::RxSource;
use super::PairSet;
use crate::fault::DeviceFault;
use crate::port::InboxFrame;

impl NetEngine {
    /// Whether this delivery's plain wire frames may take the express lane (the module docs).
    pub(super) fn express_lane_open(&self, hash_report: bool, go: GuestOffloads) -> bool {
        self.params.rx_express
            && !hash_report
            && !go.csum()
            && !go.takes_any_tso()
            && self.net.rss.is_none()
    }

    /// Takes `frame` through the express lane, or leaves it (`NotForLane`) for
    /// [`NetEngine::rx_frame`]. A frame the lane took or dropped has its buffer recycled
    /// into `src` (`frame.data` is left empty).
    ///
    /// `ONE_PAIR`: the caller knows the lane is open, one pair is in use and no frame waits for
    /// queue 0 ([`RxCx::express_one`]): every frame goes to queue 0 without a look at the flow
    /// table or the waiting lists. `rx_deliver/64B/log_off` measured 722 instructions per frame
    /// through the generic instance, 697 through this one.
    #[inline(always)]
    pub(super) fn rx_express<const ONE_PAIR: bool>(
        &mut self,
        frame: &mut InboxFrame,
        cx: RxCx,
        lanes: &mut HeldLanes<'_>,
        src: &mut impl RxSource,
        touched: &mut PairSet,
        dp: &mut Datapath<'_>,
    ) -> Express {
        if !(ONE_PAIR || cx.express)
            || !arrives_as_wire(&frame.hdr)
            || !self.net.accepts(&frame.data)
        {
            return Express::NotForLane;
        }
        let pair = if ONE_PAIR {
            0
        } else {
            // RSS is off: the flow table's pair.
            let Steering::Flow(pair) = self.net.steer(&frame.data, cx.rss_quirk) else {
                return Express::NotForLane;
            };
            if self.inbox.waits(pair) {
                return Express::NotForLane;
            }
            pair
        };
        let q = 2 * pair;
        let lane = lanes.get(q);
        if lane.slot.state.being_reset() {
            return Express::NotForLane;
        }
        let res = self.deliver_or_arm(lane, q, &frame.data, &RxHdr::PLAIN, cx.mrg, dp.counters);
        match res {
            Ok(Fit::Done) => touched.set(usize::from(pair), true),
            // 5.1.6.3.1, as rx_frame: the buffers stay, the frame is dropped.
            Ok(Fit::TooSmall) => dp.counters.rx_dropped_too_small += 1,
            Ok(Fit::NoRoom) => return Express::NoRoom(q),
            Err(f) => return Express::Fault(f),
        }
        dp.counters.rx_express_frames += 1;
        src.recycle(std::mem::take(&mut frame.data));
        Express::Taken
    }
}

/// What the express lane made of a frame.
#[derive(Debug)]
pub(super) enum Express {
    /// Not a frame for the lane: [`NetEngine::rx_frame`] takes it.
    NotForLane,
    /// Delivered, or dropped (counted): done with.
    Taken,
    /// RX queue `q` has no buffers for it yet (a doorbell asked for): it waits, as
    /// [`Step::Waits`] for `q`.
    NoRoom(u16),
    /// The device failed ([`Step::Fault`]).
    Fault(Box<DeviceFault>),
}
