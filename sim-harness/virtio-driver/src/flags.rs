//! Ring flags as the driver writes and reads them, taken from virtio-bindings (Linux
//! include/uapi/linux/virtio_ring.h), never from the device model: a constant both sides got
//! wrong would otherwise be agreed on and never caught.
//!
//! virtio-bindings declares the packed AVAIL/USED flags and the event wrap counter as bit
//! numbers (`VRING_PACKED_DESC_F_AVAIL = 7`); here they are the masks the rings hold.

use virtio_bindings::virtio_ring as vr;

/// Split and packed descriptors (virtio 1.2 2.7.5, 2.8.13): the buffer continues in `next`.
pub const DESC_F_NEXT: u16 = vr::VRING_DESC_F_NEXT as u16;
/// The buffer is device-writable.
pub const DESC_F_WRITE: u16 = vr::VRING_DESC_F_WRITE as u16;
/// The buffer holds an indirect descriptor table (2.7.5.3, 2.8.14).
pub const DESC_F_INDIRECT: u16 = vr::VRING_DESC_F_INDIRECT as u16;
/// Packed descriptor AVAIL flag (2.8.1).
pub const PACKED_DESC_F_AVAIL: u16 = 1 << vr::VRING_PACKED_DESC_F_AVAIL;
/// Packed descriptor USED flag (2.8.1).
pub const PACKED_DESC_F_USED: u16 = 1 << vr::VRING_PACKED_DESC_F_USED;

/// Split used ring flags: the device does not want doorbells (2.7.10).
pub const USED_F_NO_NOTIFY: u16 = vr::VRING_USED_F_NO_NOTIFY as u16;
/// Split avail ring flags: the driver does not want used buffer notifications (2.7.7).
pub const AVAIL_F_NO_INTERRUPT: u16 = vr::VRING_AVAIL_F_NO_INTERRUPT as u16;

/// Packed event suppression flags (2.8.10): notifications on.
pub const PACKED_EVENT_FLAG_ENABLE: u16 = vr::VRING_PACKED_EVENT_FLAG_ENABLE as u16;
/// Notifications off.
pub const PACKED_EVENT_FLAG_DISABLE: u16 = vr::VRING_PACKED_EVENT_FLAG_DISABLE as u16;
/// Notify at the descriptor `off_wrap` names (VIRTIO_F_EVENT_IDX).
pub const PACKED_EVENT_FLAG_DESC: u16 = vr::VRING_PACKED_EVENT_FLAG_DESC as u16;
/// The event flags field's width: bits 0-1 of `flags` (2.8.10 `struct pvirtq_event_suppress`).
pub const PACKED_EVENT_FLAGS_MASK: u16 = 0x3;
/// `off_wrap` bit 15: the wrap counter the offset belongs to.
pub const PACKED_EVENT_F_WRAP_CTR: u16 = 1 << vr::VRING_PACKED_EVENT_F_WRAP_CTR;

/// Whether the other side asked for an event for the indices published in (old, new]
/// (virtio 1.2 2.7.10 and 2.8.10 with VIRTIO_F_EVENT_IDX: notify when the event index lies in
/// that window, computed modulo 2^16; Linux include/uapi/linux/virtio_ring.h
/// `vring_need_event`). Written here from the spec, not shared with the device model.
pub fn vring_need_event(event_idx: u16, new_idx: u16, old: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_the_spec() {
        // virtio 1.2 2.7.5 / 2.8.1 / 2.8.10: the values the spec's structures define.
        assert_eq!((DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT), (1, 2, 4));
        assert_eq!((PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED), (1 << 7, 1 << 15));
        assert_eq!(
            (
                PACKED_EVENT_FLAG_ENABLE,
                PACKED_EVENT_FLAG_DISABLE,
                PACKED_EVENT_FLAG_DESC
            ),
            (0, 1, 2)
        );
        assert_eq!(PACKED_EVENT_F_WRAP_CTR, 0x8000);
    }

    #[test]
    fn need_event_window() {
        // Published 3 entries, old 10 -> new 13: events 10, 11, 12 are inside, 13 is not.
        assert!(vring_need_event(10, 13, 10));
        assert!(vring_need_event(12, 13, 10));
        assert!(!vring_need_event(13, 13, 10));
        assert!(!vring_need_event(9, 13, 10));
        // Across the 16-bit wrap.
        assert!(vring_need_event(0xFFFF, 2, 0xFFFE));
        assert!(vring_need_event(1, 2, 0xFFFE));
        assert!(!vring_need_event(2, 2, 0xFFFE));
        // Nothing published: never.
        assert!(!vring_need_event(5, 5, 5));
    }
}
