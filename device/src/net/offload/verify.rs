//! Receive checksum validation (VIRTIO_NET_F_GUEST_CSUM, virtio 1.2 5.1.6.4): whether the
//! TCP or UDP checksum of a frame is right, so the device may set VIRTIO_NET_HDR_F_DATA_VALID.

use super::csum;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// What checking a frame's L4 checksum found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Csum {
    /// TCP or UDP over IPv4/IPv6 with a checksum that verifies.
    Valid,
    /// TCP or UDP with a checksum that does not verify.
    Bad,
    /// Nothing to validate: not TCP/UDP over IPv4 or IPv6 (one VLAN tag at most, no IPv6
    /// extension headers), an IPv4 fragment, a UDP datagram without a checksum (0 over IPv4),
    /// or lengths that do not fit the frame.
    NotChecked,
}

/// Checks the TCP/UDP checksum of `frame` over the L4 length its IP header gives (Ethernet
/// padding after it is not summed).
pub fn l4_checksum(frame: &[u8]) -> L4Csum {
    check(frame).unwrap_or(L4Csum::NotChecked)
}

fn check(f: &[u8]) -> Option<L4Csum> {
    let be16 = |o: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?])) };
    let (mut l3, mut ty) = (14, be16(12)?);
    if ty == ETH_P_8021Q {
        (l3, ty) = (18, be16(16)?);
    }
    let (proto, l4, end, src, dst) = match ty {
        ETH_P_IP => {
            let vihl = *f.get(l3)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 || be16(l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            let end = l3 + usize::from(be16(l3 + 2)?);
            (
                *f.get(l3 + 9)?,
                l3 + ihl,
                end,
                l3 + 12..l3 + 16,
                l3 + 16..l3 + 20,
            )
        }
        ETH_P_IPV6 => {
            if *f.get(l3)? >> 4 != 6 {
                return None;
            }
            let end = l3 + 40 + usize::from(be16(l3 + 4)?);
            (
                *f.get(l3 + 6)?,
                l3 + 40,
                end,
                l3 + 8..l3 + 24,
                l3 + 24..l3 + 40,
            )
        }
        _ => return None,
    };
    let min = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return None,
    };
    if end > f.len() || l4 + min > end {
        return None;
    }
    if proto == IPPROTO_UDP && ty == ETH_P_IP && be16(l4 + 6)? == 0 {
        return None;
    }
    let seg = &f[l4..end];
    let ph = csum::pseudo(&f[src], &f[dst], proto, seg.len() as u32);
    Some(if csum::verifies(ph, seg) {
        L4Csum::Valid
    } else {
        L4Csum::Bad
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::offload::gso::tests::tcp_frame;

    fn completed(v4: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = tcp_frame(v4, payload, 0x10, 1, 1);
        let l4 = if v4 { 34 } else { 54 };
        let (s, d) = if v4 {
            (26..30, 30..34)
        } else {
            (22..38, 38..54)
        };
        let ph = csum::pseudo(&f[s], &f[d], IPPROTO_TCP, (f.len() - l4) as u32);
        let c = csum::finish(csum::add(ph, &f[l4..], false));
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn valid_bad_and_unchecked() {
        for v4 in [true, false] {
            let mut f = completed(v4, b"hello, odd");
            assert_eq!(l4_checksum(&f), L4Csum::Valid, "v4 {v4}");
            // Ethernet padding after the IP length is not summed.
            let mut padded = f.clone();
            padded.extend_from_slice(&[0xee; 7]);
            assert_eq!(l4_checksum(&padded), L4Csum::Valid);
            let n = f.len();
            f[n - 1] ^= 0x40;
            assert_eq!(l4_checksum(&f), L4Csum::Bad);
            assert_eq!(
                l4_checksum(&f[..n - 2]),
                L4Csum::NotChecked,
                "IP length past the frame"
            );
        }
        let mut arp = completed(true, b"x");
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(l4_checksum(&arp), L4Csum::NotChecked);
        let mut frag = completed(true, b"x");
        frag[20] |= 0x20;
        assert_eq!(l4_checksum(&frag), L4Csum::NotChecked);
        let mut udp0 = completed(true, b"xy");
        udp0[23] = IPPROTO_UDP;
        udp0[34 + 6..34 + 8].fill(0);
        assert_eq!(
            l4_checksum(&udp0),
            L4Csum::NotChecked,
            "UDP without checksum"
        );
    }
}
