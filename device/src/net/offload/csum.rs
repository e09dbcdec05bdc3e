//! The Internet checksum (RFC 1071): the 16-bit ones' complement of the ones' complement sum,
//! over big-endian 16-bit words, an odd trailing byte padded with a zero byte after it.

/// Adds `data` to the running 32-bit-folded sum `acc` (words big-endian, an odd last byte as
/// the high byte of a word). With `odd_bug` an odd last byte is added as the low byte: the
/// `csum-odd-length-wrong` quirk.
pub fn add(acc: u32, data: &[u8], odd_bug: bool) -> u32 {
    let mut sum = u64::from(acc);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Four big-endian words at once: their sum fits u64 with room for the carries.
        let w = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        sum += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += if odd_bug {
            u64::from(*last)
        } else {
            u64::from(*last) << 8
        };
    }
    fold64(sum)
}

/// Folds a wide sum to 16 bits with end-around carry.
fn fold64(mut s: u64) -> u32 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
}

/// The checksum field value for a sum: its complement, folded to 16 bits.
pub fn finish(acc: u32) -> u16 {
    !(fold64(u64::from(acc)) as u16)
}

/// The TCP/UDP pseudo-header sum (RFC 793 3.1, RFC 8200 8.1) for addresses `src`/`dst` (4 or 16
/// bytes each), protocol `proto` and upper-layer length `len`.
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: u32) -> u32 {
    let s = add(add(0, src, false), dst, false);
    let s = u64::from(s) + u64::from(proto) + u64::from(len >> 16) + u64::from(len & 0xffff);
    fold64(s)
}

/// Completes a partial checksum in place (5.1.6.2, VIRTIO_NET_HDR_F_NEEDS_CSUM): the ones'
/// complement sum from `start` to the end of `frame` (including the pseudo-header sum the
/// driver left in the field), stored at `start + offset`. A result of 0 is stored as 0xffff,
/// as Linux's skb_checksum_help does (CSUM_MANGLED_0): the same value in ones' complement, and
/// the only one a UDP checksum may carry. The caller has checked `start + offset + 2 <= len`.
pub fn complete(frame: &mut [u8], start: usize, offset: usize, odd_bug: bool) {
    let region = &frame[start..];
    let c = finish(add(0, region, odd_bug && region.len() % 2 == 1));
    let c = if c == 0 { 0xffff } else { c };
    frame[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether `data` (with its checksum field in place) sums to 0xffff: a valid checksum.
pub fn verifies(acc: u32, data: &[u8]) -> bool {
    fold64(u64::from(add(acc, data, false))) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-at-a-time reference: RFC 1071 4.1's loop.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            sum += u32::from(data[i]) << 8 | u32::from(data[i + 1]);
            i += 2;
        }
        if i < data.len() {
            sum += u32::from(data[i]) << 8;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2 (checksum 0x220d).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(add(0, &d, false), 0xddf2);
        assert_eq!(finish(add(0, &d, false)), 0x220d);
    }

    #[test]
    fn ipv4_header_vector() {
        // The IPv4 header of Wikipedia's "Internet checksum" example: checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(add(0, &h, false)), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verifies(0, &h));
    }

    #[test]
    fn every_length_matches_the_reference() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 151 + 7) as u8 | 0x80).collect();
        for len in 0..data.len() {
            assert_eq!(
                finish(add(0, &data[..len], false)),
                reference(&data[..len]),
                "len {len}"
            );
        }
    }

    #[test]
    fn folding_carries() {
        // 0xffff words: every addition carries.
        let d = [0xffu8; 64];
        assert_eq!(add(0, &d, false), 0xffff);
        assert_eq!(finish(add(0xffff, &[0xff, 0xff], false)), 0);
        // Split sums add up to the whole.
        let data: Vec<u8> = (0..97u8).collect();
        let whole = add(0, &data, false);
        let split = add(add(0, &data[..40], false), &data[40..], false);
        assert_eq!(fold64(u64::from(whole)), fold64(u64::from(split)));
    }

    #[test]
    fn odd_bug_changes_odd_lengths_only() {
        let d = [1u8, 2, 3];
        assert_ne!(add(0, &d, true), add(0, &d, false));
        let e = [1u8, 2, 3, 4];
        assert_eq!(add(0, &e, true), add(0, &e, false));
    }

    #[test]
    fn complete_yields_a_verifying_udp_datagram() {
        // IPv4 UDP 10.0.0.1 -> 10.0.0.2, 5 payload bytes (odd): the driver leaves the
        // pseudo-header sum in the field, the device completes it.
        let src = [10, 0, 0, 1];
        let dst = [10, 0, 0, 2];
        let mut udp = vec![
            0x12, 0x34, 0x56, 0x78, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ];
        let ph = pseudo(&src, &dst, 17, 13);
        udp[6..8].copy_from_slice(&(fold64(u64::from(ph)) as u16).to_be_bytes());
        complete(&mut udp, 0, 6, false);
        assert!(verifies(pseudo(&src, &dst, 17, 13), &udp));
        let good = udp.clone();
        udp[6..8].copy_from_slice(&(fold64(u64::from(ph)) as u16).to_be_bytes());
        complete(&mut udp, 0, 6, true);
        assert_ne!(udp, good, "the odd-length quirk stores a wrong checksum");
    }
}
