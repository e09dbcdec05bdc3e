//! RX filtering (5.1.6.5.1 RX mode, 5.1.6.5.2 MAC table) and receive steering: by RSS when the
//! driver configured it (5.1.6.5.7, [`super::rss`]), else automatic receive steering
//! (5.1.6.5.6.1: packets of a flow go to the RX queue of the pair that last transmitted it).

use super::engine::{NetState, FLOW_BUCKETS};
use super::rss::Steering;

/// A symmetric flow hash over MACs, ethertype and (for IPv4) addresses and TCP/UDP ports, so
/// both directions of a flow land in the same bucket: each pair of fields enters as (smaller,
/// larger).
///
/// Whole fields at a time, mixed by folded 64x64->128 multiplies (the multiply-and-fold of
/// wyhash and foldhash): `perf` of the 4-QP 64-byte RX bench had a byte-at-a-time FNV-1a here at
/// 19% of the device's samples, one dependent multiply per header byte (docs/bench.md). Not
/// cryptographic; a flow bucket is a steering hint (5.1.6.5.6.1), and a saved flow table read by
/// a device that hashes differently only steers a flow elsewhere until it transmits again.
pub fn flow_hash(frame: &[u8]) -> usize {
    if frame.len() < 14 {
        return 0;
    }
    let dst = le_u64(frame, 0) & 0xFFFF_FFFF_FFFF;
    let src = le_u64(frame, 4) >> 16;
    let ethertype = u64::from(u16::from_be_bytes([frame[12], frame[13]]));
    let (lo, hi) = (dst.min(src), dst.max(src));
    let mut h = fold_mul(lo ^ MIX[0], hi ^ (ethertype << 48) ^ MIX[1]);
    if ethertype == 0x0800 && frame.len() >= 34 {
        let ihl = usize::from(frame[14] & 0x0F) * 4;
        let (s, d) = (le_u32(frame, 26), le_u32(frame, 30));
        let addrs = u64::from(s.min(d)) << 32 | u64::from(s.max(d));
        let l4 = 14 + ihl;
        let ports = if matches!(frame[23], 6 | 17) && frame.len() >= l4 + 4 {
            let (sp, dp) = (
                u16::from_le_bytes([frame[l4], frame[l4 + 1]]),
                u16::from_le_bytes([frame[l4 + 2], frame[l4 + 3]]),
            );
            u64::from(sp.min(dp)) << 16 | u64::from(sp.max(dp)) | 1 << 32
        } else {
            0
        };
        h = fold_mul(h ^ addrs ^ MIX[2], ports ^ MIX[3]);
    }
    // The multiply's high half mixed into the low bits the bucket index takes.
    ((h ^ h >> 32) as usize) % FLOW_BUCKETS
}

/// Odd constants (the fractional digits of pi) that keep a zero field from zeroing a product.
const MIX: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7345,
    0xa409_3822_299f_31d1,
    0x082e_fa98_ec4e_6c89,
];

/// The 128-bit product of `a` and `b`, its halves xored.
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ (p >> 64) as u64
}

/// The little-endian u64 at `at` (the caller checked `at + 8 <= frame.len()`).
fn le_u64(frame: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(frame[at..at + 8].try_into().expect("8 bytes"))
}

/// The little-endian u32 at `at` (the caller checked `at + 4 <= frame.len()`).
fn le_u32(frame: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(frame[at..at + 4].try_into().expect("4 bytes"))
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
    #[inline]
    pub fn steer(&mut self, frame: &[u8], rss_quirk: bool) -> Steering {
        // One queue pair without RSS (inline: asked for every received frame).
        if self.rss.is_none() && self.curr_pairs <= 1 {
            return Steering::Flow(0);
        }
        self.steer_spread(frame, rss_quirk)
    }

    /// [`Self::steer`] over RSS's table, or over the flow table with more than one pair.
    #[inline(always)]
    fn steer_spread(&mut self, frame: &[u8], rss_quirk: bool) -> Steering {
        if let Some(rss) = &self.rss {
            let t = self.toeplitz.table(&rss.key);
            return rss.steer_by(frame, rss_quirk, |i| t.hash(i));
        }
        // More than one pair in use here (`steer` answered one).
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

    /// A 60-byte IPv4 UDP frame 02:..:01 -> 02:..:02, 10.0.0.1 -> 10.0.0.2, `sport` -> `dport`.
    fn udp_frame(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn flow_hash_is_symmetric() {
        let f = udp_frame(0x3039, 0x0035);
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

    /// What the generator port sends (one flow per UDP source port) spreads over the buckets
    /// and over 4 pairs as `h % pairs` steers a new flow: a hash that lost the port, or kept
    /// only its high bits, would put them all in a few.
    #[test]
    fn flow_hash_spreads_flows_that_differ_in_one_port() {
        let mut buckets = std::collections::BTreeSet::new();
        let mut pairs = [0u32; 4];
        for sport in 0..256u16 {
            let h = flow_hash(&udp_frame(1024 + sport, 5001));
            buckets.insert(h);
            pairs[h % 4] += 1;
        }
        assert!(
            buckets.len() > 200,
            "{} buckets of 256 flows",
            buckets.len()
        );
        assert!(
            pairs.iter().all(|&n| (32..=96).contains(&n)),
            "flows per pair: {pairs:?}"
        );
        // Not a port: an IPv4 frame of another protocol hashes by its addresses alone.
        let mut f = udp_frame(1024, 5001);
        f[23] = 1;
        let a = flow_hash(&f);
        f[34] ^= 0xFF;
        assert_eq!(a, flow_hash(&f));
    }
}
