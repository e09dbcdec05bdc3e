//! The Internet checksum (RFC 1071): the 16-bit ones' complement of the ones' complement sum,
//! over big-endian 16-bit words, an odd trailing byte padded with a zero byte after it.

/// Adds `data` to the running 32-bit-folded sum `acc` (words big-endian, an odd last byte as
/// the high byte of a word). With `odd_bug` an odd last byte is added as the low byte: the
/// `csum-odd-length-wrong` quirk.
///
/// The words are summed in the host's byte order and the folded sum is read back big-endian:
/// a ones' complement sum does not depend on byte order (RFC 1071 2(B)), and 32-bit words
/// folded to 16 bits sum the same as their halves (2^16 = 1 mod 0xffff). A u64 holds 2^32
/// such words without a carry lost. Four words per 16-byte block: the optimizer vectorizes
/// it (2.5-3x the bytes per second of four shifted big-endian 16-bit words per 8 bytes,
/// benches/checksum.rs), and an unoptimized build (`make test`'s serve) makes few calls per
/// byte: a 1480-byte sum took 3.3 us there, against 5.0 before and 16 for one 4-byte word
/// per step.
pub fn add(acc: u32, data: &[u8], odd_bug: bool) -> u32 {
    let mut native = 0u64;
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        let lo = u64::from_ne_bytes(b[..8].try_into().expect("8 bytes"));
        let hi = u64::from_ne_bytes(b[8..].try_into().expect("8 bytes"));
        native += (lo & 0xffff_ffff) + (lo >> 32) + (hi & 0xffff_ffff) + (hi >> 32);
    }
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        native += u64::from(u32::from_ne_bytes(w.try_into().expect("4 bytes")));
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        native += u64::from(u16::from_ne_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        // Padded with a zero byte after it (in memory order), or before it with the quirk.
        let pad = if odd_bug { [0, *last] } else { [*last, 0] };
        native += u64::from(u16::from_ne_bytes(pad));
    }
    let folded = fold64(native) as u16;
    fold64(u64::from(acc) + u64::from(u16::from_be_bytes(folded.to_ne_bytes())))
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

    /// The quirk's reference: an odd last byte added as the low byte of a word.
    fn reference_odd_bug(data: &[u8]) -> u16 {
        let even = data.len() & !1;
        let mut sum = u32::from(!reference(&data[..even]));
        if even < data.len() {
            sum += u32::from(data[even]);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn any_start_length_and_running_sum_match_the_reference() {
        // Every alignment of the slice against the 4-byte words the sum reads, lengths past
        // the point where the words' carries fill 16 bits, and a running sum carried in.
        let mut x = 0x2545_f491u32;
        let data: Vec<u8> = (0..4200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 11) as u8
            })
            .collect();
        for start in 0..8 {
            for len in (0..160).chain([1479, 1480, 1481, 4000, 4191]) {
                let d = &data[start..start + len];
                assert_eq!(
                    finish(add(0, d, false)),
                    reference(d),
                    "start {start} len {len}"
                );
                assert_eq!(
                    finish(add(0, d, true)),
                    reference_odd_bug(d),
                    "quirk: start {start} len {len}"
                );
                // Adding an even-length prefix first is the same sum.
                let cut = (len / 3) & !1;
                assert_eq!(
                    finish(add(add(0, &d[..cut], false), &d[cut..], false)),
                    reference(d),
                    "split at {cut}: start {start} len {len}"
                );
            }
        }
        // All ones: every 32-bit word and every fold carries.
        let ones = vec![0xffu8; 65_536];
        for len in [3, 4, 65_535, 65_536] {
            assert_eq!(finish(add(0, &ones[..len], false)), reference(&ones[..len]));
        }
        assert_eq!(finish(add(0xffff, &ones, false)), 0);
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
