//! TCP/UDP over IPv4/IPv6 frames for the offload checks, and the checks of what comes back:
//! the harness's own Internet checksum (RFC 1071, a plain word loop) and header parsing, written
//! apart from the device's, so a device bug is not hidden by shared code.

/// Ethernet header.
pub const ETH: usize = 14;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// TCP header flags.
pub const FIN: u8 = 0x01;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const CWR: u8 = 0x80;

/// Ones' complement sum of `parts` as one byte stream (an odd total padded with a zero byte).
pub fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut hi: Option<u8> = None;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        match hi.take() {
            None => hi = Some(b),
            Some(h) => sum += u64::from(u16::from_be_bytes([h, b])),
        }
    }
    if let Some(h) = hi {
        sum += u64::from(h) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The L3 addresses and L4 position of a frame built here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub v4: bool,
    pub tcp: bool,
    /// TCP/UDP header offset (csum_start).
    pub l4: usize,
    /// Checksum offset within the L4 header (csum_offset).
    pub csum_offset: usize,
    /// Payload offset.
    pub payload: usize,
}

impl Layout {
    /// Layout of a frame with `v4`/`tcp`.
    pub fn of(v4: bool, tcp: bool) -> Layout {
        let l4 = ETH + if v4 { 20 } else { 40 };
        Layout {
            v4,
            tcp,
            l4,
            csum_offset: if tcp { 16 } else { 6 },
            payload: l4 + if tcp { 20 } else { 8 },
        }
    }
}

fn addrs(frame: &[u8], v4: bool) -> (&[u8], &[u8]) {
    if v4 {
        (&frame[ETH + 12..ETH + 16], &frame[ETH + 16..ETH + 20])
    } else {
        (&frame[ETH + 8..ETH + 24], &frame[ETH + 24..ETH + 40])
    }
}

fn pseudo(frame: &[u8], v4: bool, proto: u8, len: usize) -> Vec<u8> {
    let (s, d) = addrs(frame, v4);
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(s);
    p.extend_from_slice(d);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p
}

/// Builds a frame from `src` to `dst` MAC: TCP (`tcp`) or UDP over IPv4 (`v4`) or IPv6, with
/// `payload`, TCP sequence `seq` and flags `flags`, IPv4 ID `ip_id`. The L4 checksum field holds
/// the pseudo-header sum, as a driver leaves it for VIRTIO_NET_HDR_F_NEEDS_CSUM (virtio 1.2
/// 5.1.6.2.1); the IPv4 header checksum is complete.
#[allow(clippy::too_many_arguments)]
pub fn build(
    src: [u8; 6],
    dst: [u8; 6],
    v4: bool,
    tcp: bool,
    payload: &[u8],
    seq: u32,
    flags: u8,
    ip_id: u16,
) -> (Layout, Vec<u8>) {
    let lay = Layout::of(v4, tcp);
    let l4_len = lay.payload - lay.l4 + payload.len();
    let proto = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    let mut f = Vec::with_capacity(lay.payload + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if v4 {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&ip_id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, 64, proto, 0, 0, 192, 168, 7, 1, 192, 168, 7, 2]);
        let c = !ones_sum(&[&f[ETH..ETH + 20]]);
        f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    }
    if tcp {
        f.extend_from_slice(&[0xc0, 0x01, 0x13, 0x88]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0x20, 0x00, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&[0xc0, 0x01, 0x13, 0x88]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(payload);
    let ph = ones_sum(&[&pseudo(&f, v4, proto, l4_len)]);
    let at = lay.l4 + lay.csum_offset;
    f[at..at + 2].copy_from_slice(&ph.to_be_bytes());
    (lay, f)
}

/// Whether the L4 checksum of a frame laid out as `lay` is right (sums to 0xffff with the
/// pseudo-header over the L4 length the frame has).
pub fn l4_checksum_ok(frame: &[u8], lay: &Layout) -> bool {
    let proto = if lay.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    let l4 = &frame[lay.l4..];
    ones_sum(&[&pseudo(frame, lay.v4, proto, l4.len()), l4]) == 0xffff
}

/// The checksum the L4 header should carry (complete), for messages.
pub fn l4_checksum_expected(frame: &[u8], lay: &Layout) -> u16 {
    let proto = if lay.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    let mut f = frame.to_vec();
    let at = lay.l4 + lay.csum_offset;
    f[at..at + 2].fill(0);
    let l4 = &f[lay.l4..];
    !ones_sum(&[&pseudo(frame, lay.v4, proto, l4.len()), l4])
}

/// Whether the IPv4 header checksum of `frame` is right.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    ones_sum(&[&frame[ETH..ETH + 20]]) == 0xffff
}

/// Reads a big-endian u16 at `o`.
pub fn be16(f: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([f[o], f[o + 1]])
}

/// Reads a big-endian u32 at `o`.
pub fn be32(f: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_sum() {
        assert_eq!(
            ones_sum(&[&[0x00, 0x01, 0xf2, 0x03], &[0xf4, 0xf5, 0xf6, 0xf7]]),
            0xddf2
        );
        assert_eq!(
            ones_sum(&[&[0x01], &[0x02]]),
            0x0102,
            "one stream across parts"
        );
        assert_eq!(ones_sum(&[&[0x01, 0x02, 0x03]]), 0x0402);
    }

    #[test]
    fn a_completed_checksum_verifies_and_a_partial_one_does_not() {
        for (v4, tcp) in [(true, true), (true, false), (false, true), (false, false)] {
            let (lay, mut f) = build([2; 6], [4; 6], v4, tcp, b"odd", 1, ACK, 9);
            assert!(!l4_checksum_ok(&f, &lay), "pseudo-header sum only");
            let c = l4_checksum_expected(&f, &lay);
            f[lay.l4 + lay.csum_offset..][..2].copy_from_slice(&c.to_be_bytes());
            assert!(l4_checksum_ok(&f, &lay));
            if v4 {
                assert!(ipv4_checksum_ok(&f));
            }
        }
    }
}
