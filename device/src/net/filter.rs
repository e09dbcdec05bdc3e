//! RX filtering (5.1.6.5.1 RX mode, 5.1.6.5.2 MAC table) and receive steering: by RSS when the
//! driver configured it (5.1.6.5.7, [`super::rss`]), else automatic receive steering
//! (5.1.6.5.6.1: packets of a flow go to the RX queue of the pair that last transmitted it).

use super::engine::{NetState, FLOW_BUCKETS};
use super::rss::Steering;

/// A symmetric flow hash over MACs, ethertype and (for IPv4) addresses and ports, so both
/// directions of a flow land in the same bucket.
pub fn flow_hash(frame: &[u8]) -> usize {
    use crate::fnv::{extend as fnv, OFFSET_BASIS as SEED};
    if frame.len() < 14 {
        return 0;
    }
    let (a, b) = (&frame[0..6], &frame[6..12]);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = fnv(fnv(fnv(SEED, lo), hi), &frame[12..14]);
    if frame[12..14] == [0x08, 0x00] && frame.len() >= 34 {
        let ihl = usize::from(frame[14] & 0x0F) * 4;
        let (s, d) = (&frame[26..30], &frame[30..34]);
        let (lo, hi) = if s <= d { (s, d) } else { (d, s) };
        h = fnv(fnv(h, lo), hi);
        let l4 = 14 + ihl;
        if matches!(frame[23], 6 | 17) && frame.len() >= l4 + 4 {
            let (sp, dp) = (&frame[l4..l4 + 2], &frame[l4 + 2..l4 + 4]);
            let (lo, hi) = if sp <= dp { (sp, dp) } else { (dp, sp) };
            h = fnv(fnv(h, lo), hi);
        }
    }
    (h as usize) % FLOW_BUCKETS
}

impl NetState {
    /// Records that the pair `pair` transmitted a frame of the flow in hash bucket `b` (what
    /// a TX service noted, [`crate::net::tx::TxScratch`]); true when the flow moved to it.
    pub(crate) fn note_flow_bucket(&mut self, b: u16, pair: u16) -> bool {
        match self.flows.get_mut(usize::from(b)) {
            Some(f) if *f != pair => {
                *f = pair;
                true
            }
            _ => false,
        }
    }

    /// Whether automatic receive steering is on (5.1.6.5.6.1: more than one pair in use, no
    /// RSS): TX services then note each frame's flow for its pair.
    pub(crate) fn auto_steers(&self) -> bool {
        self.curr_pairs > 1 && self.rss.is_none()
    }

    /// The RX queue pair a frame is steered to (`rss_quirk`: the rss-ignores-indirection-table
    /// bug).
    pub fn steer(&mut self, frame: &[u8], rss_quirk: bool) -> Steering {
        if let Some(rss) = &self.rss {
            let t = self.toeplitz.table(&rss.key);
            return rss.steer_by(frame, rss_quirk, |i| t.hash(i));
        }
        if self.curr_pairs <= 1 {
            return Steering::Flow(0);
        }
        let h = flow_hash(frame);
        Steering::Flow(match self.flows[h] {
            p if p < self.curr_pairs => p,
            _ => (h % usize::from(self.curr_pairs)) as u16,
        })
    }

    /// Whether the RX filter accepts the frame.
    pub fn accepts(&self, frame: &[u8]) -> bool {
        if self.promisc || frame.len() < 6 {
            return true;
        }
        let dst: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
        if dst == [0xFF; 6] {
            return true;
        }
        if dst[0] & 1 != 0 {
            return self.allmulti || self.mc_table.contains(&dst);
        }
        dst == self.mac || self.uc_table.contains(&dst)
    }
}

#[cfg(test)]
mod tests {
    use super::flow_hash;

    #[test]
    fn flow_hash_is_symmetric() {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&[0x30, 0x39]);
        f[36..38].copy_from_slice(&[0x00, 0x35]);
        let mut r = f.clone();
        r[0..6].copy_from_slice(&f[6..12]);
        r[6..12].copy_from_slice(&f[0..6]);
        r[26..30].copy_from_slice(&f[30..34]);
        r[30..34].copy_from_slice(&f[26..30]);
        r[34..36].copy_from_slice(&f[36..38]);
        r[36..38].copy_from_slice(&f[34..36]);
        assert_eq!(flow_hash(&f), flow_hash(&r));
        r[36] = 1;
        assert_ne!(flow_hash(&f), flow_hash(&r));
    }
}
