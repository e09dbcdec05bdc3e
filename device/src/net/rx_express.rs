//! The receive path's express lane: a plain wire frame for a driver that takes none of what
//! makes the receive path decide per frame. That is DPDK's virtio PMD as testpmd configures it
//! (no receive offload, one queue pair), and what `vdpa-emu bench datapath` negotiates.
//!
//! The lane is open for a whole delivery ([`NetEngine::express_lane_open`]), unless
//! `DeviceConfig::rx_express` turned it off, when the driver
//! negotiated no HASH_REPORT and takes no GUEST_CSUM and no GSO frame now, with one queue pair
//! in use and RSS off. A frame then takes it when its port handed it on without NEEDS_CSUM or
//! a GSO type and the RX filter accepts it. For such a frame [`NetEngine::rx_frame`] would:
//! - plan it as a wire frame, verify no checksum and coalesce nothing;
//! - steer it to queue 0 (`NetState::steer` answers one pair without RSS inline);
//! - write it behind an all-zero header ([`RxHdr::PLAIN`]) with `deliver_or_arm`;
//! - count nothing of steering, checksum, GSO or hash.
//!
//! The lane does the same, without the decisions. Everything else goes to `rx_frame`, which
//! defines the behaviour: a frame the filter drops, one with a port header, and any frame
//! while queue 0 is being reset or has frames waiting for its buffers.
//!
//! Measured: 841 -> 688 instructions per 64-byte frame in `rx_deliver/64B/log_off`
//! (scripts/instructions-per-frame.sh, docs/bench.md).

use super::engine::{Datapath, NetEngine};
use super::lane::HeldLanes;
use super::offload::guest::GuestOffloads;
use super::offload::hdr::{self, F_NEEDS_CSUM};
use super::rx::{Fit, RxCx, RxHdr};
use super::rx_wait::RxSource;
use super::PairSet;
use crate::fault::DeviceFault;
use crate::port::InboxFrame;

/// The one RX queue of the one queue pair in use.
pub(super) const RX0: u16 = 0;

impl NetEngine {
    /// Whether this delivery's plain wire frames may take the express lane (the module docs).
    pub(super) fn express_lane_open(&self, hash_report: bool, go: GuestOffloads) -> bool {
        self.params.rx_express
            && !hash_report
            && !go.csum()
            && !go.takes_any_tso()
            && self.net.rss.is_none()
            && self.net.curr_pairs <= 1
    }

    /// Takes `frame` through the express lane, or leaves it (`NotForLane`) for
    /// [`NetEngine::rx_frame`]. A frame the lane took or dropped has its buffer recycled
    /// into `src` (`frame.data` is left empty).
    #[inline(always)]
    pub(super) fn rx_express(
        &mut self,
        frame: &mut InboxFrame,
        cx: RxCx,
        lanes: &mut HeldLanes<'_>,
        src: &mut impl RxSource,
        touched: &mut PairSet,
        dp: &mut Datapath<'_>,
    ) -> Express {
        let plain = frame.hdr.flags & F_NEEDS_CSUM == 0 && frame.hdr.gso_type == hdr::GSO_NONE;
        if !cx.express || !plain || !self.net.accepts(&frame.data) {
            return Express::NotForLane;
        }
        let lane = lanes.get(RX0);
        if lane.slot.state.being_reset() {
            return Express::NotForLane;
        }
        let res = self.deliver_or_arm(lane, RX0, &frame.data, &RxHdr::PLAIN, cx.mrg, dp.counters);
        match res {
            Ok(Fit::Done) => touched.set(0, true),
            // 5.1.6.3.1, as rx_frame: the buffers stay, the frame is dropped.
            Ok(Fit::TooSmall) => dp.counters.rx_dropped_too_small += 1,
            Ok(Fit::NoRoom) => return Express::NoRoom,
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
    /// Delivered into queue 0, or dropped (counted): done with.
    Taken,
    /// Queue 0 has no buffers for it yet (a doorbell asked for): it waits, as
    /// [`Step::Waits`] for queue 0.
    NoRoom,
    /// The device failed ([`Step::Fault`]).
    Fault(DeviceFault),
}
