//! Receive segment coalescing (a NIC's LRO), for a driver that takes GSO frames (GUEST_TSO4/6
//! on, virtio 1.2 5.1.6.4): consecutive TCP segments of one flow waiting together in the
//! receive FIFO become one GSO frame, as the segmentation that cut them would have left it
//! (gso_size the segments' MSS, NEEDS_CSUM with the pseudo-header sum in the TCP checksum
//! field). The rules are Linux GRO's (net/ipv4/tcp_offload.c `tcp_gro_receive`,
//! net/ipv4/af_inet.c `inet_gro_receive`, net/ipv6/ip6_offload.c `ipv6_gro_receive`): the
//! same headers but for lengths, IP ID, checksums and sequence number; the next expected
//! sequence number; every segment but the last exactly one MSS; no SYN, FIN, RST, URG or CWR;
//! a PSH segment ends the frame; checksums verified before a segment is taken (a bad one is
//! delivered on its own, without DATA_VALID). At most 64 KiB of IP datagram.

use super::csum;
use super::gso::{parse_tcp, TcpFrame, TCP_CSUM_OFFSET};
use super::hdr::{GsoKind, NetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use super::verify::{self, L4Csum};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const URG: u8 = 0x20;
const CWR: u8 = 0x80;
/// IPv4 datagrams and IPv6 payloads are at most this long.
const MAX_IP_LEN: usize = 65_535;

/// A GSO frame being built from segments.
#[derive(Debug)]
pub struct Coalescer {
    t: TcpFrame,
    mss: usize,
    next_seq: u32,
    /// The last segment taken was shorter than the MSS, or had PSH: nothing more may follow.
    closed: bool,
    segments: u32,
}

/// The segment's TCP/IP headers and payload, if it may take part: a TCP segment over IPv4
/// (no options beyond the header equality below, not a fragment) or IPv6 (no extension
/// headers), with a payload, the frame exactly as long as its IP header says (no Ethernet
/// padding), checksums that verify, and none of the flags that end coalescing.
fn segment_of(frame: &[u8]) -> Option<TcpFrame> {
    let ethertype_at = if frame.get(12..14)? == [0x81, 0x00] {
        16
    } else {
        12
    };
    let kind = match frame.get(ethertype_at..ethertype_at + 2)? {
        [0x08, 0x00] => GsoKind::Tcp4,
        [0x86, 0xdd] => GsoKind::Tcp6,
        _ => return None,
    };
    let t = parse_tcp(frame, kind)?;
    let ip_end = if t.v4 {
        t.l3 + usize::from(be16(frame, t.l3 + 2))
    } else {
        t.l3 + 40 + usize::from(be16(frame, t.l3 + 4))
    };
    if ip_end != frame.len() || t.payload >= frame.len() {
        return None;
    }
    if frame[t.l4 + 13] & (FIN | SYN | RST | URG | CWR) != 0 {
        return None;
    }
    if t.v4 && !csum::verifies(0, &frame[t.l3..t.l4]) {
        return None;
    }
    (verify::l4_checksum(frame) == L4Csum::Valid).then_some(t)
}

fn be16(f: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([f[o], f[o + 1]])
}

fn be32(f: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(f[o..o + 4].try_into().expect("4 bytes"))
}

/// Whether the headers of `a` and `b` (both laid out as `t`) are the same but for what each
/// segment has its own of: IPv4 total length, ID and header checksum, IPv6 payload length,
/// the TCP sequence number, PSH and the TCP checksum.
fn same_headers(a: &[u8], b: &[u8], t: &TcpFrame) -> bool {
    let mut own: [(usize, usize); 5] = [(0, 0); 5];
    if t.v4 {
        own[0] = (t.l3 + 2, t.l3 + 6);
        own[1] = (t.l3 + 10, t.l3 + 12);
    } else {
        own[0] = (t.l3 + 4, t.l3 + 6);
    }
    own[2] = (t.l4 + 4, t.l4 + 8);
    own[3] = (t.l4 + 13, t.l4 + 14);
    own[4] = (t.l4 + TCP_CSUM_OFFSET, t.l4 + TCP_CSUM_OFFSET + 2);
    let mut at = 0;
    let mut sorted = own;
    sorted.sort_unstable();
    for (s, e) in sorted {
        if s > at && a[at..s] != b[at..s] {
            return false;
        }
        at = at.max(e);
    }
    a[at..t.payload] == b[at..t.payload] && (a[t.l4 + 13] ^ b[t.l4 + 13]) & !PSH == 0
}

impl Coalescer {
    /// Starts a frame with `first` when it may be coalesced (see the module documentation).
    pub fn start(first: &[u8]) -> Option<Coalescer> {
        let t = segment_of(first)?;
        let len = first.len() - t.payload;
        Some(Coalescer {
            t,
            mss: len,
            next_seq: be32(first, t.l4 + 4).wrapping_add(len as u32),
            closed: first[t.l4 + 13] & PSH != 0,
            segments: 1,
        })
    }

    /// Appends `seg` to `acc` (the frame so far) if it continues it; false leaves both as
    /// they were.
    pub fn append(&mut self, acc: &mut Vec<u8>, seg: &[u8]) -> bool {
        let t = self.t;
        if self.closed || seg.len() <= t.payload {
            return false;
        }
        let len = seg.len() - t.payload;
        let ip_len = acc.len() - t.l3 - if t.v4 { 0 } else { 40 } + len;
        if len > self.mss
            || ip_len > MAX_IP_LEN
            || segment_of(seg) != Some(t)
            || be32(seg, t.l4 + 4) != self.next_seq
            || !same_headers(acc, seg, &t)
        {
            return false;
        }
        acc.extend_from_slice(&seg[t.payload..]);
        self.next_seq = self.next_seq.wrapping_add(len as u32);
        self.segments += 1;
        let psh = seg[t.l4 + 13] & PSH;
        acc[t.l4 + 13] |= psh;
        self.closed = len < self.mss || psh != 0;
        true
    }

    /// Whether the segments are TCP over IPv4 (else IPv6).
    pub fn v4(&self) -> bool {
        self.t.v4
    }

    /// Segments taken so far.
    pub fn segments(&self) -> u32 {
        self.segments
    }

    /// Finishes `acc` as one GSO frame (IP length and header checksum for the whole; the
    /// pseudo-header sum in the TCP checksum field) and returns its virtio-net header.
    /// Only for more than one segment: a single one stays the wire frame it was.
    pub fn finish(&self, acc: &mut [u8]) -> NetHdr {
        let t = self.t;
        let l4_len = acc.len() - t.l4;
        // The first segment's IP ID stays (IPv4; IPv6 has none).
        let id = if t.v4 { be16(acc, t.l3 + 4) } else { 0 };
        let (src, dst) = t.set_ip_lengths(acc, l4_len, id);
        // NEEDS_CSUM: the field holds the pseudo-header sum, the rest is the driver's (or the
        // stack's) to add, as after Linux's tcp_gro_complete / a TSO driver's transmit.
        let ph = csum::pseudo(&acc[src], &acc[dst], 6, l4_len as u32) as u16;
        let co = t.l4 + TCP_CSUM_OFFSET;
        acc[co..co + 2].copy_from_slice(&ph.to_be_bytes());
        NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if t.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: t.payload as u16,
            gso_size: self.mss as u16,
            csum_start: t.l4 as u16,
            csum_offset: TCP_CSUM_OFFSET as u16,
            num_buffers: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gso::{segment, tests::tcp_frame, SegBugs};
    use super::*;

    const ACK: u8 = 0x10;

    /// Segments of a `len`-byte payload cut at `mss` by the device's own segmentation.
    fn segments(v4: bool, len: usize, mss: usize, flags: u8) -> (Vec<u8>, Vec<Vec<u8>>) {
        segments_at(v4, len, mss, flags, 0xffff_f000)
    }

    fn segments_at(
        v4: bool,
        len: usize,
        mss: usize,
        flags: u8,
        seq: u32,
    ) -> (Vec<u8>, Vec<Vec<u8>>) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
        let big = tcp_frame(v4, &payload, flags, seq, 7);
        let kind = if v4 { GsoKind::Tcp4 } else { GsoKind::Tcp6 };
        let t = parse_tcp(&big, kind).unwrap();
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        segment(&big, &t, mss, SegBugs::default(), &mut scratch, |s| {
            out.push(s.to_vec())
        });
        (big, out)
    }

    fn coalesce(segs: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Option<NetHdr>>) {
        let mut frames = Vec::new();
        let mut hdrs = Vec::new();
        let mut i = 0;
        while i < segs.len() {
            let mut acc = segs[i].clone();
            i += 1;
            let Some(mut c) = Coalescer::start(&acc) else {
                frames.push(acc);
                hdrs.push(None);
                continue;
            };
            while i < segs.len() && c.append(&mut acc, &segs[i]) {
                i += 1;
            }
            hdrs.push((c.segments() > 1).then(|| c.finish(&mut acc)));
            frames.push(acc);
        }
        (frames, hdrs)
    }

    /// Completes a NEEDS_CSUM frame as a driver would, and checks it is the original.
    fn assert_whole(frame: &[u8], h: &NetHdr, big: &[u8]) {
        let mut f = frame.to_vec();
        csum::complete(&mut f, h.csum_start.into(), h.csum_offset.into(), false);
        assert_eq!(verify::l4_checksum(&f), L4Csum::Valid);
        let t = parse_tcp(
            big,
            if h.gso_type == GSO_TCPV4 {
                GsoKind::Tcp4
            } else {
                GsoKind::Tcp6
            },
        )
        .unwrap();
        let co = t.l4 + TCP_CSUM_OFFSET;
        assert_eq!(f[t.payload..], big[t.payload..], "payload");
        assert_eq!(
            f[co + 2..t.payload],
            big[co + 2..t.payload],
            "TCP header after the checksum"
        );
        if t.v4 {
            // The test frame's IPv4 checksum is 0; the coalesced frame's is computed.
            assert!(csum::verifies(0, &f[t.l3..t.l4]));
            assert_eq!(
                f[..t.l3 + 10],
                big[..t.l3 + 10],
                "length and ID as the big frame's"
            );
            assert_eq!(f[t.l3 + 12..co], big[t.l3 + 12..co]);
        } else {
            assert_eq!(
                f[..co],
                big[..co],
                "headers, payload length as the big frame's"
            );
        }
    }

    #[test]
    fn segments_of_one_gso_frame_become_that_frame_again() {
        for v4 in [true, false] {
            for (len, mss) in [
                (10_000, 1448),
                (1448 * 3, 1448),
                (65_000, 1460),
                (3001, 1000),
            ] {
                let (big, segs) = segments(v4, len, mss, ACK | PSH);
                let (frames, hdrs) = coalesce(&segs);
                // 65,000 bytes of payload and the headers fit one IP datagram with IPv4 (20 +
                // 20 + 65,000 < 65,536) and an IPv6 payload (20 + 65,000).
                assert_eq!(frames.len(), 1, "v4 {v4} len {len}");
                let h = hdrs[0].expect("a GSO frame");
                assert_eq!(usize::from(h.gso_size), mss);
                assert_eq!(h.gso_type, if v4 { GSO_TCPV4 } else { GSO_TCPV6 });
                assert_eq!(h.flags, F_NEEDS_CSUM);
                assert_whole(&frames[0], &h, &big);
            }
        }
    }

    #[test]
    fn what_ends_a_frame_or_keeps_a_segment_out() {
        let (_, segs) = segments(true, 4000, 1000, ACK | PSH);
        // PSH only on the last: all four together.
        assert_eq!(coalesce(&segs).0.len(), 1);
        // PSH on the second: it ends the first frame.
        let mut s = segs.clone();
        s[1][14 + 20 + 13] |= PSH;
        fix_tcp_csum(&mut s[1]);
        assert_eq!(coalesce(&s).0.len(), 2);
        // A gap in the sequence numbers.
        let mut s = segs.clone();
        s.remove(1);
        assert_eq!(coalesce(&s).0.len(), 2);
        // A short segment before a full one: the short one is the last of its frame.
        let (_, mut short) = segments_at(true, 500, 1000, ACK, 1);
        short.extend(segments_at(true, 1000, 1000, ACK, 501).1);
        short.extend(segments_at(true, 1000, 1000, ACK, 1501).1);
        assert_eq!(coalesce(&short).1, {
            let (f, h) = coalesce(&short[1..]);
            assert_eq!(f.len(), 1, "the two full ones coalesce");
            [vec![None], h].concat()
        });
        // A segment longer than the first (the MSS): not taken.
        let (_, mut long) = segments_at(true, 1000, 1000, ACK, 1);
        long.extend(segments_at(true, 1200, 1200, ACK, 1001).1);
        assert_eq!(coalesce(&long).1, vec![None, None]);
        // A bad TCP checksum: that segment alone, without a header.
        let mut s = segs.clone();
        s[2][14 + 20 + 16] ^= 1;
        let (frames, hdrs) = coalesce(&s);
        assert_eq!(frames.len(), 3);
        assert_eq!(hdrs[1], None);
        // SYN, RST, URG on every segment: nothing coalesced.
        for f in [SYN, RST, URG] {
            let (_, segs) = segments(true, 3000, 1000, ACK | f);
            let (frames, hdrs) = coalesce(&segs);
            assert_eq!(frames.len(), 3, "flag {f:#x}");
            assert!(hdrs.iter().all(Option::is_none), "flag {f:#x}");
        }
        // FIN on the last segment, CWR on the first (as segmentation leaves them): those stay
        // out, the others coalesce.
        let (_, segs) = segments(true, 3000, 1000, ACK | FIN);
        let (_, hdrs) = coalesce(&segs);
        assert_eq!((hdrs.len(), hdrs[0].is_some(), hdrs[1]), (2, true, None));
        let (_, segs) = segments(true, 3000, 1000, ACK | CWR);
        let (_, hdrs) = coalesce(&segs);
        assert_eq!((hdrs.len(), hdrs[0], hdrs[1].is_some()), (2, None, true));
        // Different ports (another flow).
        let mut s = segs.clone();
        s[1][14 + 20] ^= 1;
        fix_tcp_csum(&mut s[1]);
        assert_eq!(coalesce(&s).0.len(), 3);
        // Ethernet padding after a short segment: not taken.
        let (_, tiny) = segments(true, 10, 10, ACK);
        let mut padded = tiny[0].clone();
        padded.resize(60, 0);
        assert!(Coalescer::start(&padded).is_none());
        // Not TCP.
        assert!(Coalescer::start(&[0u8; 60]).is_none());
    }

    #[test]
    fn a_frame_stops_below_64k_of_ip_datagram() {
        let (_, mut segs) = segments(true, 60_000, 1000, ACK);
        segs.extend(
            segments(true, 60_000, 1000, ACK)
                .1
                .into_iter()
                .map(|mut s| {
                    // Continue the sequence of the first frame.
                    let seq = be32(&s, 38).wrapping_add(60_000);
                    s[38..42].copy_from_slice(&seq.to_be_bytes());
                    fix_tcp_csum(&mut s);
                    s
                }),
        );
        let (frames, hdrs) = coalesce(&segs);
        assert!(frames.len() >= 2);
        for (f, h) in frames.iter().zip(&hdrs) {
            assert!(f.len() - 14 <= MAX_IP_LEN);
            assert!(h.is_some());
        }
    }

    fn fix_tcp_csum(f: &mut [u8]) {
        let t = parse_tcp(f, GsoKind::Tcp4).unwrap();
        let co = t.l4 + TCP_CSUM_OFFSET;
        f[co..co + 2].fill(0);
        let l4_len = (f.len() - t.l4) as u32;
        let ph = csum::pseudo(
            &f[t.l3 + 12..t.l3 + 16],
            &f[t.l3 + 16..t.l3 + 20],
            6,
            l4_len,
        );
        let c = csum::finish(csum::add(ph, &f[t.l4..], false));
        f[co..co + 2].copy_from_slice(&c.to_be_bytes());
    }
}
