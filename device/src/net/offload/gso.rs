//! TCP segmentation (VIRTIO_NET_F_HOST_TSO4/6, virtio 1.2 5.1.6.2): what a NIC does with a GSO
//! frame when the wire cannot take it. Each segment gets the frame's headers with, per segment,
//! the IPv4 total length, the next IP ID and a new IP header checksum (or the IPv6 payload
//! length), the TCP sequence number advanced by the bytes before it, FIN and PSH only on the
//! last segment, CWR only on the first, and the TCP checksum over the pseudo-header. That is
//! what Linux's software GSO does (net/ipv4/tcp_offload.c tcp_gso_segment, af_inet.c
//! inet_gso_segment, ipv6_offload.c ipv6_gso_segment).

use super::csum;
use super::hdr::GsoKind;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Offset of the checksum in the TCP header.
pub const TCP_CSUM_OFFSET: usize = 16;

/// Where the headers of a TCP/IP frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFrame {
    /// Start of the IP header.
    pub l3: usize,
    /// IPv4 (else IPv6).
    pub v4: bool,
    /// Start of the TCP header.
    pub l4: usize,
    /// End of the TCP header: where the payload starts.
    pub payload: usize,
}

impl TcpFrame {
    /// Makes `f`'s IP header describe `l4_len` bytes of TCP: the IPv4 total length, IP ID
    /// `ip_id` and header checksum, or the IPv6 payload length. Returns where the source and
    /// destination addresses are (for the pseudo-header).
    pub fn set_ip_lengths(
        &self,
        f: &mut [u8],
        l4_len: usize,
        ip_id: u16,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (l3, l4) = (self.l3, self.l4);
        if self.v4 {
            let tot = (l4 - l3 + l4_len) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
            f[l3 + 4..l3 + 6].copy_from_slice(&ip_id.to_be_bytes());
            f[l3 + 10..l3 + 12].fill(0);
            let c = csum::finish(csum::add(0, &f[l3..l4], false));
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            (l3 + 12..l3 + 16, l3 + 16..l3 + 20)
        } else {
            f[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            (l3 + 8..l3 + 24, l3 + 24..l3 + 40)
        }
    }
}

/// Finds the headers of a TCP-over-IPv4 (`Tcp4`) or -IPv6 (`Tcp6`) frame: Ethernet with at
/// most one 802.1Q tag, an IPv4 header (options allowed, not a fragment) or a fixed IPv6 header
/// whose next header is TCP, and a whole TCP header. None when the frame is not that.
pub fn parse_tcp(frame: &[u8], kind: GsoKind) -> Option<TcpFrame> {
    let be16 = |o: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*frame.get(o)?, *frame.get(o + 1)?]))
    };
    let (mut l3, mut ethertype) = (14, be16(12)?);
    if ethertype == ETH_P_8021Q {
        (l3, ethertype) = (18, be16(16)?);
    }
    let (v4, l4) = match (kind, ethertype) {
        (GsoKind::Tcp4, ETH_P_IP) => {
            let vihl = *frame.get(l3)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            let frag = be16(l3 + 6)?;
            if vihl >> 4 != 4
                || ihl < 20
                || *frame.get(l3 + 9)? != IPPROTO_TCP
                || frag & 0x3fff != 0
            {
                return None;
            }
            (true, l3 + ihl)
        }
        (GsoKind::Tcp6, ETH_P_IPV6) => {
            if *frame.get(l3)? >> 4 != 6 || *frame.get(l3 + 6)? != IPPROTO_TCP {
                return None;
            }
            (false, l3 + 40)
        }
        _ => return None,
    };
    let doff = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
    if doff < 20 || l4 + doff > frame.len() {
        return None;
    }
    Some(TcpFrame {
        l3,
        v4,
        l4,
        payload: l4 + doff,
    })
}

/// Segmentation bugs to inject (quirks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegBugs {
    /// Every segment keeps the first IP ID (`tso-ip-id-fixed`).
    pub ip_id_fixed: bool,
    /// Every segment keeps the first sequence number (`tso-seq-wrong`).
    pub seq_fixed: bool,
}

/// Cuts `frame` (headers at `t`) into segments of at most `mss` payload bytes, building each in
/// `scratch` and handing it to `out`. Returns how many segments were made.
pub fn segment(
    frame: &[u8],
    t: &TcpFrame,
    mss: usize,
    bugs: SegBugs,
    scratch: &mut Vec<u8>,
    mut out: impl FnMut(&[u8]),
) -> u64 {
    let hdrs = &frame[..t.payload];
    let payload = &frame[t.payload..];
    let ip_id = u16::from_be_bytes([frame[t.l3 + 4], frame[t.l3 + 5]]);
    let seq = u32::from_be_bytes(frame[t.l4 + 4..t.l4 + 8].try_into().expect("4 bytes"));
    let tcp_flags = frame[t.l4 + 13];
    let tcp_hlen = t.payload - t.l4;
    let n = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let last = i + 1 == n;
        scratch.clear();
        scratch.extend_from_slice(hdrs);
        scratch.extend_from_slice(chunk);
        let s = scratch.as_mut_slice();
        let l4_len = tcp_hlen + chunk.len();
        let id = if bugs.ip_id_fixed {
            ip_id
        } else {
            ip_id.wrapping_add(i as u16)
        };
        let (src, dst) = t.set_ip_lengths(s, l4_len, id);
        let off = if bugs.seq_fixed { 0 } else { i * mss };
        let sq = seq.wrapping_add(off as u32);
        s[t.l4 + 4..t.l4 + 8].copy_from_slice(&sq.to_be_bytes());
        let mut f = tcp_flags;
        if !last {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        s[t.l4 + 13] = f;
        let co = t.l4 + TCP_CSUM_OFFSET;
        s[co..co + 2].fill(0);
        let ph = csum::pseudo(&s[src], &s[dst], IPPROTO_TCP, l4_len as u32);
        let c = csum::finish(csum::add(ph, &s[t.l4..], false));
        s[co..co + 2].copy_from_slice(&c.to_be_bytes());
        out(s);
    }
    n as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP/IP frame: `v4` or IPv6, `payload` bytes, TCP flags `flags`, seq `seq`, IP ID `id`.
    pub(crate) fn tcp_frame(v4: bool, payload: &[u8], flags: u8, seq: u32, id: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        let tcp_len = 20 + payload.len();
        if v4 {
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&[0x40, 0, 64, IPPROTO_TCP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        } else {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[IPPROTO_TCP, 64]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        }
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn tcp_verifies(seg: &[u8], t: &TcpFrame) -> bool {
        let (src, dst) = if t.v4 {
            (&seg[t.l3 + 12..t.l3 + 16], &seg[t.l3 + 16..t.l3 + 20])
        } else {
            (&seg[t.l3 + 8..t.l3 + 24], &seg[t.l3 + 24..t.l3 + 40])
        };
        let l4 = &seg[t.l4..];
        csum::verifies(csum::pseudo(src, dst, IPPROTO_TCP, l4.len() as u32), l4)
    }

    fn segments(
        frame: &[u8],
        kind: GsoKind,
        mss: usize,
        bugs: SegBugs,
    ) -> (TcpFrame, Vec<Vec<u8>>) {
        let t = parse_tcp(frame, kind).expect("tcp frame");
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let n = segment(frame, &t, mss, bugs, &mut scratch, |s| out.push(s.to_vec()));
        assert_eq!(n as usize, out.len());
        (t, out)
    }

    #[test]
    fn parse_rejects_what_is_not_tcp() {
        let f = tcp_frame(true, &[1, 2, 3], 0x18, 1, 1);
        assert!(parse_tcp(&f, GsoKind::Tcp4).is_some());
        assert_eq!(parse_tcp(&f, GsoKind::Tcp6), None, "IPv4 frame as TCPV6");
        let mut udp = f.clone();
        udp[23] = 17;
        assert_eq!(parse_tcp(&udp, GsoKind::Tcp4), None, "UDP");
        let mut frag = f.clone();
        frag[20] = 0x20; // MF
        assert_eq!(parse_tcp(&frag, GsoKind::Tcp4), None, "fragment");
        assert_eq!(parse_tcp(&f[..40], GsoKind::Tcp4), None, "TCP header cut");
        let mut doff = f.clone();
        doff[46] = 0xf0; // 60-byte TCP header in a 23-byte TCP part
        assert_eq!(
            parse_tcp(&doff, GsoKind::Tcp4),
            None,
            "data offset past the end"
        );
        let v6 = tcp_frame(false, &[1], 0, 1, 0);
        assert_eq!(parse_tcp(&v6, GsoKind::Tcp6).map(|t| t.l4), Some(54));
        let mut ext = v6.clone();
        ext[20] = 0; // hop-by-hop extension header
        assert_eq!(parse_tcp(&ext, GsoKind::Tcp6), None);
        // One VLAN tag.
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0, 0, 5]);
        tagged.extend_from_slice(&f[12..]);
        assert_eq!(
            parse_tcp(&tagged, GsoKind::Tcp4).map(|t| (t.l3, t.l4)),
            Some((18, 38))
        );
    }

    #[test]
    fn ipv4_segments_every_field() {
        let payload: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let flags = TCP_FIN | TCP_PSH | TCP_CWR | 0x10;
        let frame = tcp_frame(true, &payload, flags, 0xffff_fe00, 0xfffe);
        let (t, segs) = segments(&frame, GsoKind::Tcp4, 1000, SegBugs::default());
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let plen = if i < 2 { 1000 } else { 500 };
            assert_eq!(s.len(), 54 + plen);
            assert_eq!(
                u16::from_be_bytes([s[16], s[17]]) as usize,
                40 + plen,
                "total length"
            );
            assert_eq!(
                u16::from_be_bytes([s[18], s[19]]),
                0xfffeu16.wrapping_add(i as u16),
                "IP ID wraps"
            );
            assert!(csum::verifies(0, &s[14..34]), "IP header checksum");
            let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
            assert_eq!(
                seq,
                0xffff_fe00u32.wrapping_add(1000 * i as u32),
                "seq wraps"
            );
            let f = s[47];
            assert_eq!(
                f & (TCP_FIN | TCP_PSH) != 0,
                i == 2,
                "FIN/PSH on the last only"
            );
            assert_eq!(f & TCP_FIN != 0, f & TCP_PSH != 0);
            assert_eq!(f & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert_eq!(f & 0x10, 0x10, "ACK kept");
            assert!(tcp_verifies(s, &t), "TCP checksum of segment {i}");
            joined.extend_from_slice(&s[54..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn ipv6_segments_every_field() {
        let payload: Vec<u8> = (0..3001u32).map(|i| (i * 13 + 1) as u8).collect();
        let frame = tcp_frame(false, &payload, TCP_PSH | 0x10, 7, 0);
        let (t, segs) = segments(&frame, GsoKind::Tcp6, 1440, SegBugs::default());
        assert_eq!(segs.len(), 3);
        for (i, s) in segs.iter().enumerate() {
            let plen = [1440, 1440, 121][i];
            assert_eq!(
                u16::from_be_bytes([s[18], s[19]]) as usize,
                20 + plen,
                "payload length"
            );
            assert_eq!(
                &s[..18],
                &frame[..18],
                "Ethernet and the IPv6 header's first word"
            );
            assert_eq!(
                &s[20..54],
                &frame[20..54],
                "next header, hop limit, addresses"
            );
            assert_eq!(
                u32::from_be_bytes(s[58..62].try_into().unwrap()),
                7 + 1440 * i as u32
            );
            assert_eq!(s[67] & TCP_PSH != 0, i == 2);
            assert!(tcp_verifies(s, &t), "odd last segment verifies too");
        }
    }

    #[test]
    fn bugs_change_only_their_field() {
        let payload = vec![0xa5u8; 3000];
        let frame = tcp_frame(true, &payload, 0x10, 100, 50);
        let (_, good) = segments(&frame, GsoKind::Tcp4, 1000, SegBugs::default());
        let (t, fixed_id) = segments(
            &frame,
            GsoKind::Tcp4,
            1000,
            SegBugs {
                ip_id_fixed: true,
                seq_fixed: false,
            },
        );
        let (_, fixed_seq) = segments(
            &frame,
            GsoKind::Tcp4,
            1000,
            SegBugs {
                ip_id_fixed: false,
                seq_fixed: true,
            },
        );
        for i in 0..3 {
            assert_eq!(u16::from_be_bytes([fixed_id[i][18], fixed_id[i][19]]), 50);
            assert_eq!(
                &fixed_id[i][34..],
                &good[i][34..],
                "TCP part unchanged by the IP ID bug"
            );
            assert_eq!(
                u32::from_be_bytes(fixed_seq[i][38..42].try_into().unwrap()),
                100
            );
            assert_eq!(
                &fixed_seq[i][14..34],
                &good[i][14..34],
                "IP header unchanged by the seq bug"
            );
            assert!(
                tcp_verifies(&fixed_seq[i], &t),
                "checksum consistent with the wrong seq"
            );
        }
    }

    #[test]
    fn payload_shorter_than_mss_is_one_segment() {
        let frame = tcp_frame(true, &[1, 2, 3], TCP_FIN, 1, 1);
        let (_, segs) = segments(&frame, GsoKind::Tcp4, 1000, SegBugs::default());
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0][47] & TCP_FIN, TCP_FIN);
    }
}
