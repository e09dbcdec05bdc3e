//! Frame accounting across a whole scenario: every frame carries a stream id and a sequence
//! number ([`crate::frames`]); each (step, sender, pair) gets its own stream, so a frame is
//! checked to arrive exactly once, in order, intact, at the device it was sent to, even when it
//! crosses a stop/start, a reset or a migration.

use crate::frames::{self, HEADERS};
use std::collections::BTreeSet;

/// Streams are u16 and the frame generator derives UDP ports from them (10000 + stream).
const MAX_STREAMS: usize = 50_000;
/// Stream id of probe frames that are not traffic (the frame an RX `inject` pushes): ignored.
pub const PROBE_STREAM: u16 = 55_000;

/// One stream's bookkeeping.
#[derive(Debug, Clone, Default)]
struct Stream {
    step: usize,
    /// Device index that should receive it (None: a null port, nobody).
    to: Option<usize>,
    sent: u64,
    next: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
    corrupted: u64,
    misdelivered: u64,
    /// Sequence numbers skipped over (not seen yet) below `next`.
    gaps: BTreeSet<u64>,
}

/// Aggregated frame counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameStats {
    pub sent: u64,
    /// Arrived intact at the right device (late ones included).
    pub delivered: u64,
    /// Not received by now: skipped over and still missing, or never arrived.
    pub lost: u64,
    /// Of `lost`: the tail no later frame of its stream has overtaken (may still arrive).
    pub outstanding: u64,
    pub duplicated: u64,
    /// Arrived after a later frame of the same stream.
    pub reordered: u64,
    /// Failed the length/checksum check, or carried a sequence number never sent.
    pub corrupted: u64,
    /// Arrived at a device other than the one it was sent to.
    pub misdelivered: u64,
}

impl FrameStats {
    /// The field named `name` (see [`super::metrics::FRAME_FIELDS`]).
    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "sent" => self.sent,
            "delivered" => self.delivered,
            "lost" => self.lost,
            "outstanding" => self.outstanding,
            "duplicated" => self.duplicated,
            "reordered" => self.reordered,
            "corrupted" => self.corrupted,
            "misdelivered" => self.misdelivered,
            _ => return None,
        })
    }
}

/// Every stream of a scenario.
#[derive(Debug, Default)]
pub struct Ledger {
    streams: Vec<Stream>,
    /// Corrupted frames whose stream id could not be read.
    unattributed: u64,
    /// The latest step that opened a stream.
    pub latest_step: Option<usize>,
}

impl Ledger {
    /// Opens a stream for `step` whose frames should arrive at device `to`.
    pub fn open(&mut self, step: usize, to: Option<usize>) -> Option<u16> {
        if self.streams.len() >= MAX_STREAMS {
            return None;
        }
        self.streams.push(Stream {
            step,
            to,
            ..Stream::default()
        });
        self.latest_step = Some(step);
        u16::try_from(self.streams.len() - 1).ok()
    }

    /// Next sequence number of `stream`.
    pub fn next_seq(&self, stream: u16) -> u64 {
        self.streams.get(usize::from(stream)).map_or(0, |s| s.sent)
    }

    /// Counts `n` frames of `stream` as sent.
    pub fn sent(&mut self, stream: u16, n: u64) {
        if let Some(s) = self.streams.get_mut(usize::from(stream)) {
            s.sent += n;
        }
    }

    /// Records a frame received by device `at`.
    pub fn record(&mut self, at: usize, f: &[u8]) {
        let id = f
            .get(HEADERS..HEADERS + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
        if id == Some(usize::from(PROBE_STREAM)) {
            return;
        }
        let stamp = frames::check(f);
        let Some(s) = id.and_then(|i| self.streams.get_mut(i)) else {
            self.unattributed += 1;
            return;
        };
        let Ok(stamp) = stamp else {
            s.corrupted += 1;
            return;
        };
        if stamp.seq >= s.sent {
            s.corrupted += 1;
        } else if s.to != Some(at) {
            s.misdelivered += 1;
        } else if stamp.seq == s.next {
            s.next += 1;
            s.delivered += 1;
        } else if stamp.seq > s.next {
            s.gaps.extend(s.next..stamp.seq);
            s.next = stamp.seq + 1;
            s.delivered += 1;
        } else if s.gaps.remove(&stamp.seq) {
            s.reordered += 1;
            s.delivered += 1;
        } else {
            s.duplicated += 1;
        }
    }

    /// Totals over every stream.
    pub fn total(&self) -> FrameStats {
        let mut t = self.sum(|_| true);
        t.corrupted += self.unattributed;
        t
    }

    /// Totals over the streams of `step`.
    pub fn of_step(&self, step: usize) -> FrameStats {
        self.sum(|s| s.step == step)
    }

    fn sum(&self, keep: impl Fn(&Stream) -> bool) -> FrameStats {
        let mut t = FrameStats::default();
        for s in self.streams.iter().filter(|s| keep(s)) {
            let outstanding = s.sent.saturating_sub(s.next);
            t.sent += s.sent;
            t.delivered += s.delivered;
            t.outstanding += outstanding;
            t.lost += outstanding + s.gaps.len() as u64;
            t.duplicated += s.duplicated;
            t.reordered += s.reordered;
            t.corrupted += s.corrupted;
            t.misdelivered += s.misdelivered;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn once_in_order_intact() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut l = Ledger::default();
        let s = l.open(1, Some(0)).unwrap();
        let mac = [2, 0, 0, 0, 0, 1];
        let fr: Vec<Vec<u8>> = (0..5)
            .map(|i| frames::build(mac, mac, s, i, 100, &mut rng))
            .collect();
        l.sent(s, 5);
        for i in [0, 2, 1, 2] {
            l.record(0, &fr[i]);
        }
        let mut bad = fr[3].clone();
        bad[80] ^= 1;
        l.record(0, &bad);
        l.record(1, &fr[4]);
        let t = l.total();
        assert_eq!(
            (
                t.sent,
                t.delivered,
                t.reordered,
                t.duplicated,
                t.corrupted,
                t.misdelivered
            ),
            (5, 3, 1, 1, 1, 1)
        );
        assert_eq!((t.lost, t.outstanding), (2, 2));
        l.record(0, &fr[3]);
        assert_eq!(l.of_step(1).lost, 1);
        assert_eq!(l.of_step(2), FrameStats::default());
        l.record(0, &[0u8; 10]);
        assert_eq!(l.total().corrupted, 2);
    }
}
