//! Virtqueue ring flags and encodings (virtio 1.2 2.7 split, 2.8 packed), declared once.
//!
//! The values are virtio-bindings' (Linux include/uapi/linux/virtio_ring.h), typed as the 16-bit
//! fields they live in; the packed `off_wrap` encoding (2.8.10: bits 0-14 offset, bit 15 wrap
//! counter) is the one the LM ring state of a packed queue uses as well (see [`crate::lm`]).

use std::mem::{offset_of, size_of};
use virtio_bindings::virtio_ring as vr;

/// VIRTQ_DESC_F_NEXT (2.7.5, 2.8.6): the buffer continues in the next descriptor.
pub const VIRTQ_DESC_F_NEXT: u16 = vr::VRING_DESC_F_NEXT as u16;
/// VIRTQ_DESC_F_WRITE (2.7.5, 2.8.3): device-writable in an available descriptor; in a used
/// packed descriptor, "data has been written".
pub const VIRTQ_DESC_F_WRITE: u16 = vr::VRING_DESC_F_WRITE as u16;
/// VIRTQ_DESC_F_INDIRECT (2.7.5.3, 2.8.7): the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = vr::VRING_DESC_F_INDIRECT as u16;
/// VIRTQ_DESC_F_AVAIL (2.8.1), bit VRING_PACKED_DESC_F_AVAIL.
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << vr::VRING_PACKED_DESC_F_AVAIL;
/// VIRTQ_DESC_F_USED (2.8.1), bit VRING_PACKED_DESC_F_USED.
pub const VIRTQ_DESC_F_USED: u16 = 1 << vr::VRING_PACKED_DESC_F_USED;
/// VIRTQ_AVAIL_F_NO_INTERRUPT (2.7.6): the split avail ring's flags ask for no interrupt.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = vr::VRING_AVAIL_F_NO_INTERRUPT as u16;
/// VIRTQ_USED_F_NO_NOTIFY (2.7.8): the split used ring's flags ask for no doorbell.
pub const VRING_USED_F_NO_NOTIFY: u16 = vr::VRING_USED_F_NO_NOTIFY as u16;
/// RING_EVENT_FLAGS_ENABLE (2.8.10).
pub const RING_EVENT_FLAGS_ENABLE: u16 = vr::VRING_PACKED_EVENT_FLAG_ENABLE as u16;
/// RING_EVENT_FLAGS_DISABLE (2.8.10).
pub const RING_EVENT_FLAGS_DISABLE: u16 = vr::VRING_PACKED_EVENT_FLAG_DISABLE as u16;
/// RING_EVENT_FLAGS_DESC (2.8.10), valid only with VIRTIO_F_EVENT_IDX.
pub const RING_EVENT_FLAGS_DESC: u16 = vr::VRING_PACKED_EVENT_FLAG_DESC as u16;
/// The two bits of an event suppression structure's flags field (2.8.10).
pub const RING_EVENT_FLAGS_MASK: u16 = 0x3;
/// Bit 15 of an off_wrap value and of a packed LM index: the wrap counter
/// (VRING_PACKED_EVENT_F_WRAP_CTR).
pub const WRAP_BIT: u16 = 1 << vr::VRING_PACKED_EVENT_F_WRAP_CTR;
/// Largest packed queue (2.8: "Packed virtqueues support up to 2^15 entries each").
pub const MAX_PACKED_QUEUE_SIZE: u16 = WRAP_BIT;
/// A packed queue's index at reset: offset 0, wrap counter 1 (2.8.1: both wrap counters start
/// at 1; vhost-user's 0x8000).
pub const PACKED_RESET_INDEX: u16 = WRAP_BIT;

/// Size of one descriptor: struct vring_desc (split, 2.7.5) and struct vring_packed_desc
/// (packed, 2.8.13) are both 16 bytes.
pub const DESC_SIZE: u64 = size_of::<vr::vring_desc>() as u64;
/// Offset of `flags` in a packed descriptor (2.8.13): the field the driver publishes last.
pub const PACKED_DESC_FLAGS: u64 = offset_of!(vr::vring_packed_desc, flags) as u64;
/// Alignment of the split descriptor table, avail ring and used ring (2.7: 16, 2, 4).
pub const DESC_ALIGN: u64 = vr::VRING_DESC_ALIGN_SIZE as u64;
pub const AVAIL_ALIGN: u64 = vr::VRING_AVAIL_ALIGN_SIZE as u64;
pub const USED_ALIGN: u64 = vr::VRING_USED_ALIGN_SIZE as u64;
/// struct vring_avail (2.7.6): `idx`, then `ring[size]` of u16 heads, then used_event.
pub const AVAIL_IDX: u64 = offset_of!(vr::vring_avail, idx) as u64;
pub const AVAIL_RING: u64 = offset_of!(vr::vring_avail, ring) as u64;
pub const AVAIL_ELEM_SIZE: u64 = size_of::<vr::__virtio16>() as u64;
/// struct vring_used (2.7.8): `idx`, then `ring[size]` of struct vring_used_elem, then
/// avail_event.
pub const USED_IDX: u64 = offset_of!(vr::vring_used, idx) as u64;
pub const USED_RING: u64 = offset_of!(vr::vring_used, ring) as u64;
pub const USED_ELEM_SIZE: u64 = size_of::<vr::vring_used_elem>() as u64;
/// The event suppression structure (struct vring_packed_desc_event, 2.8.10): alignment and size.
pub const EVENT_SUPPRESSION_SIZE: u64 = size_of::<vr::vring_packed_desc_event>() as u64;

/// Both descriptor layouts are addr le64, len le32, then two le16 fields (split: flags, next;
/// packed: id, flags), so one encoder serves both; the tests check each layout's fields against
/// virtio-bindings' offsets.
fn encode_desc(addr: u64, len: u32, w12: u16, w14: u16) -> [u8; DESC_SIZE as usize] {
    let mut d = [0u8; DESC_SIZE as usize];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&w12.to_le_bytes());
    d[14..].copy_from_slice(&w14.to_le_bytes());
    d
}

/// A split descriptor (struct vring_desc, 2.7.5: addr le64, len le32, flags le16, next le16)
/// as the 16 bytes in the table: the driver model writes it with one store.
pub fn encode_split_desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; DESC_SIZE as usize] {
    encode_desc(addr, len, flags, next)
}

/// The fields of a split descriptor read from the table: (addr, len, flags, next).
pub fn decode_split_desc(raw: &[u8; DESC_SIZE as usize]) -> (u64, u32, u16, u16) {
    decode_split_desc_words(split_desc_words(raw))
}

/// A split descriptor's 16 bytes as the two little-endian 64-bit words
/// [`decode_split_desc_words`] takes.
#[inline(always)]
pub fn split_desc_words(raw: &[u8; DESC_SIZE as usize]) -> [u64; 2] {
    let w = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
    [w(0), w(8)]
}

/// [`decode_split_desc`] of the descriptor read as two little-endian 64-bit words (the
/// device's DMA engine reads it so: `DmaEngine::read_words`): addr is the first, len, flags
/// and next the low, middle and high parts of the second.
pub fn decode_split_desc_words(w: [u64; 2]) -> (u64, u32, u16, u16) {
    (w[0], w[1] as u32, (w[1] >> 32) as u16, (w[1] >> 48) as u16)
}

/// A packed descriptor (struct vring_packed_desc, 2.8.13: addr le64, len le32, id le16,
/// flags le16) as its 16 bytes. A driver stores a list's first descriptor without its flags
/// (`[..PACKED_DESC_FLAGS]`) and publishes the flags last (2.8.21.1).
pub fn encode_packed_desc(addr: u64, len: u32, id: u16, flags: u16) -> [u8; DESC_SIZE as usize] {
    encode_desc(addr, len, id, flags)
}

/// A used element (struct vring_used_elem, 2.7.8: id le32, len le32) as its 8 bytes.
pub fn encode_used_elem(id: u32, len: u32) -> [u8; USED_ELEM_SIZE as usize] {
    let mut e = [0u8; USED_ELEM_SIZE as usize];
    e[..4].copy_from_slice(&id.to_le_bytes());
    e[4..].copy_from_slice(&len.to_le_bytes());
    e
}

/// The fields of a used element read from the ring: (id, len).
pub fn decode_used_elem(raw: [u8; USED_ELEM_SIZE as usize]) -> (u32, u32) {
    let id = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (id, len)
}

/// `offset | wrap << 15`: an event suppression off_wrap, and a packed LM index.
#[inline(always)]
pub fn off_wrap(pos: u16, wrap: bool) -> u16 {
    (pos & !WRAP_BIT) | if wrap { WRAP_BIT } else { 0 }
}

/// Splits an off_wrap / packed LM index into (offset, wrap counter).
#[inline(always)]
pub fn split_off_wrap(v: u16) -> (u16, bool) {
    (v & !WRAP_BIT, v & WRAP_BIT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(offset, little-endian bytes)` of each field must be where the bindings put it.
    fn assert_fields(d: &[u8], fields: &[(usize, &[u8])]) {
        for &(o, want) in fields {
            assert_eq!(&d[o..o + want.len()], want, "field at offset {o}");
        }
    }

    #[test]
    fn descriptors_put_each_field_at_the_bindings_offset() {
        let (addr, len) = (0x1122_3344_5566_7788u64, 0x99aa_bbccu32);
        let d = encode_split_desc(addr, len, 0xddee, 0x0f1e);
        assert_eq!(decode_split_desc(&d), (addr, len, 0xddee, 0x0f1e));
        assert_fields(
            &d,
            &[
                (offset_of!(vr::vring_desc, addr), &addr.to_le_bytes()),
                (offset_of!(vr::vring_desc, len), &len.to_le_bytes()),
                (offset_of!(vr::vring_desc, flags), &0xddeeu16.to_le_bytes()),
                (offset_of!(vr::vring_desc, next), &0x0f1eu16.to_le_bytes()),
            ],
        );
        let p = encode_packed_desc(addr, len, 0x0102, 0x8081);
        assert_fields(
            &p,
            &[
                (offset_of!(vr::vring_packed_desc, addr), &addr.to_le_bytes()),
                (offset_of!(vr::vring_packed_desc, len), &len.to_le_bytes()),
                (
                    offset_of!(vr::vring_packed_desc, id),
                    &0x0102u16.to_le_bytes(),
                ),
                (PACKED_DESC_FLAGS as usize, &0x8081u16.to_le_bytes()),
            ],
        );
    }

    #[test]
    fn used_elements_round_trip_at_the_bindings_offsets() {
        let e = encode_used_elem(0x0102_0304, 0x0a0b_0c0d);
        assert_eq!(decode_used_elem(e), (0x0102_0304, 0x0a0b_0c0d));
        assert_fields(
            &e,
            &[
                (
                    offset_of!(vr::vring_used_elem, id),
                    &0x0102_0304u32.to_le_bytes(),
                ),
                (
                    offset_of!(vr::vring_used_elem, len),
                    &0x0a0b_0c0du32.to_le_bytes(),
                ),
            ],
        );
    }

    #[test]
    fn values_match_the_spec() {
        assert_eq!(
            (VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT),
            (1, 2, 4)
        );
        assert_eq!((VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED), (0x80, 0x8000));
        assert_eq!(
            (
                RING_EVENT_FLAGS_ENABLE,
                RING_EVENT_FLAGS_DISABLE,
                RING_EVENT_FLAGS_DESC
            ),
            (0, 1, 2)
        );
        assert_eq!((DESC_SIZE, PACKED_DESC_FLAGS), (16, 14));
        assert_eq!((AVAIL_IDX, AVAIL_RING, AVAIL_ELEM_SIZE), (2, 4, 2));
        assert_eq!((USED_IDX, USED_RING, USED_ELEM_SIZE), (2, 4, 8));
        assert_eq!((DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN), (16, 2, 4));
        assert_eq!(EVENT_SUPPRESSION_SIZE, 4);
        assert_eq!(off_wrap(5, true), 0x8005);
        assert_eq!(split_off_wrap(0x8005), (5, true));
        assert_eq!(split_off_wrap(off_wrap(0x7FFF, false)), (0x7FFF, false));
    }
}
