//! Test frames: Ethernet/IPv4/UDP frames carrying a stream id and a sequence number, so a
//! receiver can check that every frame arrived exactly once, in order, with its bytes intact.

use rand::Rng;

/// Ethernet + IPv4 + UDP headers.
pub const HEADERS: usize = 14 + 20 + 8;
/// Stream id (u16) + sequence number (u64) + payload length (u32) + checksum (u32).
pub const STAMP: usize = 18;
/// Smallest frame the generator makes (the Ethernet minimum without FCS).
pub const MIN_FRAME: usize = 60;

/// A frame's identity as the receiver decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u16,
    pub seq: u64,
}

fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Builds a frame of `len` bytes (MIN_FRAME..=1514) from `src` to `dst` for `stream`/`seq`,
/// payload filled from `rng`. The UDP ports derive from the stream so flows differ per stream.
pub fn build(
    src: [u8; 6],
    dst: [u8; 6],
    stream: u16,
    seq: u64,
    len: usize,
    rng: &mut impl Rng,
) -> Vec<u8> {
    let len = len.clamp(MIN_FRAME, 65_535);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&(10_000 + stream).to_be_bytes());
    f[36..38].copy_from_slice(&4789u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    rng.fill(&mut f[HEADERS + STAMP..]);
    f[HEADERS..HEADERS + 2].copy_from_slice(&stream.to_le_bytes());
    f[HEADERS + 2..HEADERS + 10].copy_from_slice(&seq.to_le_bytes());
    f[HEADERS + 10..HEADERS + 14].copy_from_slice(&(len as u32).to_le_bytes());
    let c = checksum(&f[HEADERS + STAMP..]);
    f[HEADERS + 14..HEADERS + 18].copy_from_slice(&c.to_le_bytes());
    f
}

/// Why a received frame is not one the generator made intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is too short to carry a stamp")]
    Short(usize),
    #[error("frame length {got} differs from the stamped {want}")]
    Length { got: usize, want: usize },
    #[error("payload checksum mismatch: frame corrupted")]
    Checksum,
}

/// Decodes and verifies a frame.
pub fn check(f: &[u8]) -> Result<Stamp, FrameError> {
    if f.len() < HEADERS + STAMP {
        return Err(FrameError::Short(f.len()));
    }
    let s = &f[HEADERS..];
    let stream = u16::from_le_bytes([s[0], s[1]]);
    let seq = u64::from_le_bytes(s[2..10].try_into().expect("8 bytes"));
    let want = u32::from_le_bytes(s[10..14].try_into().expect("4 bytes")) as usize;
    if want != f.len() {
        return Err(FrameError::Length { got: f.len(), want });
    }
    let c = u32::from_le_bytes(s[14..18].try_into().expect("4 bytes"));
    if c != checksum(&f[HEADERS + STAMP..]) {
        return Err(FrameError::Checksum);
    }
    Ok(Stamp { stream, seq })
}

/// Per-stream delivery bookkeeping: exactly once, in order.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    next: std::collections::HashMap<u16, u64>,
    pub delivered: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub lost: u64,
    pub corrupted: u64,
}

impl Tracker {
    /// Records a received frame.
    pub fn record(&mut self, f: &[u8]) {
        match check(f) {
            Ok(s) => {
                let next = self.next.entry(s.stream).or_insert(0);
                if s.seq == *next {
                    *next += 1;
                    self.delivered += 1;
                } else if s.seq < *next {
                    self.duplicated += 1;
                } else {
                    self.lost += s.seq - *next;
                    self.reordered += 1;
                    *next = s.seq + 1;
                    self.delivered += 1;
                }
            }
            Err(_) => self.corrupted += 1,
        }
    }

    /// The next sequence number expected on `stream`: how far it arrived.
    pub fn next_seq(&self, stream: u16) -> u64 {
        self.next.get(&stream).copied().unwrap_or(0)
    }

    /// Frames expected but never seen, given how many each stream sent.
    pub fn finish(&mut self, sent: &std::collections::HashMap<u16, u64>) {
        for (stream, &n) in sent {
            let got = self.next.get(stream).copied().unwrap_or(0);
            self.lost += n.saturating_sub(got);
        }
    }

    /// Whether everything arrived once, in order, intact.
    pub fn clean(&self) -> bool {
        self.duplicated == 0 && self.reordered == 0 && self.lost == 0 && self.corrupted == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn roundtrip_and_corruption() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let f = build([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 3, 77, 200, &mut rng);
        assert_eq!(check(&f), Ok(Stamp { stream: 3, seq: 77 }));
        let mut g = f.clone();
        g[150] ^= 1;
        assert_eq!(check(&g), Err(FrameError::Checksum));
        assert!(matches!(check(&f[..100]), Err(FrameError::Length { .. })));
        let mut t = Tracker::default();
        t.record(&f);
        t.record(&f);
        assert_eq!(t.duplicated, 1);
    }
}
