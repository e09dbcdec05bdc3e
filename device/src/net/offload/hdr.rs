//! struct virtio_net_hdr_v1 (virtio 1.2 5.1.6): the 12 bytes before every frame, and what the
//! device makes of a TX header (5.1.6.2.1 driver requirements, 5.1.6.2.2 device requirements).

use bar_registers::virtio::bits;
use virtio_bindings::virtio_net as vn;

pub use bar_registers::virtio::net_hdr::*;

/// The flag bits this device recognises on TX.
const KNOWN_FLAGS: u8 = F_NEEDS_CSUM | F_DATA_VALID | F_RSC_INFO;

/// struct virtio_net_hdr_v1, decoded (all fields little-endian on the wire with VERSION_1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

/// Its size (5.1.6: with VIRTIO_F_VERSION_1 num_buffers is always there).
pub const NET_HDR_LEN: usize = std::mem::size_of::<vn::virtio_net_hdr_v1>();

impl NetHdr {
    /// Decodes the first [`NET_HDR_LEN`] bytes of `b` (zeros where `b` is shorter).
    pub fn parse(b: &[u8]) -> NetHdr {
        let mut h = [0u8; NET_HDR_LEN];
        let n = b.len().min(NET_HDR_LEN);
        h[..n].copy_from_slice(&b[..n]);
        let u16at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
        NetHdr {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16at(2),
            gso_size: u16at(4),
            csum_start: u16at(6),
            csum_offset: u16at(8),
            num_buffers: u16at(10),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut h = [0u8; NET_HDR_LEN];
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        h[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        h
    }

    /// Whether the header asks for nothing (flags 0, GSO_NONE): the plain path.
    pub fn is_plain(&self) -> bool {
        self.flags & KNOWN_FLAGS == 0 && self.gso_type == GSO_NONE
    }
}

/// The TCP segmentation a GSO header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (HOST_TSO4).
    Tcp4,
    /// TCP over IPv6 (HOST_TSO6).
    Tcp6,
}

/// What the device does with one TX frame, decided from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOffload {
    /// Nothing: the frame goes out as it is.
    None,
    /// Checksum from `start` to the end, stored at `start + offset` (5.1.6.2).
    Csum { start: usize, offset: usize },
    /// Segment into `mss`-byte TCP segments (the checksum fields describe the TCP checksum).
    Gso {
        kind: GsoKind,
        ecn: bool,
        mss: u16,
        csum_start: usize,
        csum_offset: usize,
    },
}

/// Why a TX header is refused. Each is a counted drop: the chain is completed (used len 0) and
/// the device goes on. None of them is DEVICE_NEEDS_RESET: virtio 1.2 2.1.2 keeps that for "an
/// error state that a reset is needed" for, and a bad header spoils one frame, not the device's
/// state (no ring, index or mapping is wrong). 5.1.6.2.2 tells the device to ignore what it does
/// not recognise and not to rely on what it cannot check, never to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadTxHdr {
    #[error("NEEDS_CSUM set but VIRTIO_NET_F_CSUM not negotiated (5.1.6.2.1)")]
    CsumNotNegotiated,
    #[error("DATA_VALID or RSC_INFO set on TX (5.1.6.2.1: the driver MUST NOT)")]
    RxOnlyFlag,
    #[error("csum_start/csum_offset outside the frame (5.1.6.2.1)")]
    CsumOutOfFrame,
    #[error("unknown gso_type")]
    GsoUnknown,
    #[error("gso_type whose feature was not negotiated (5.1.6.2.1)")]
    GsoNotNegotiated,
    #[error("gso_type set without NEEDS_CSUM (5.1.6.2.1)")]
    GsoWithoutCsum,
    #[error("gso_size 0, or segments longer than the MTU allows")]
    GsoBadSize,
    #[error("GSO frame is not the TCP/IP frame its gso_type names, or csum_start/csum_offset are not its TCP checksum")]
    GsoMalformed,
}

impl BadTxHdr {
    /// Every reason, in counter order.
    pub const ALL: [BadTxHdr; 8] = [
        BadTxHdr::CsumNotNegotiated,
        BadTxHdr::RxOnlyFlag,
        BadTxHdr::CsumOutOfFrame,
        BadTxHdr::GsoUnknown,
        BadTxHdr::GsoNotNegotiated,
        BadTxHdr::GsoWithoutCsum,
        BadTxHdr::GsoBadSize,
        BadTxHdr::GsoMalformed,
    ];

    /// Stable name (counter `tx_bad_hdr_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            BadTxHdr::CsumNotNegotiated => "tx_bad_hdr_csum_not_negotiated",
            BadTxHdr::RxOnlyFlag => "tx_bad_hdr_rx_only_flag",
            BadTxHdr::CsumOutOfFrame => "tx_bad_hdr_csum_out_of_frame",
            BadTxHdr::GsoUnknown => "tx_bad_hdr_gso_unknown",
            BadTxHdr::GsoNotNegotiated => "tx_bad_hdr_gso_not_negotiated",
            BadTxHdr::GsoWithoutCsum => "tx_bad_hdr_gso_without_csum",
            BadTxHdr::GsoBadSize => "tx_bad_hdr_gso_bad_size",
            BadTxHdr::GsoMalformed => "tx_bad_hdr_gso_malformed",
        }
    }
}

/// Decides what to do with a TX frame of `frame_len` bytes under header `h`, with `features`
/// negotiated. Checks every field the driver controls that the device uses; `hdr_len` is a
/// hint the device MUST NOT rely on (5.1.6.2.2) and `num_buffers` has no meaning on TX (DPDK's
/// virtio PMD leaves it as it finds it in the mbuf headroom), so neither is checked. Flag bits
/// the device does not recognise are ignored (5.1.6.2.2: "The device MUST ignore flag bits that
/// it does not recognize"); the caller counts them.
pub fn tx_offload(h: &NetHdr, frame_len: usize, features: u64) -> Result<TxOffload, BadTxHdr> {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    if h.flags & (F_DATA_VALID | F_RSC_INFO) != 0 {
        return Err(BadTxHdr::RxOnlyFlag);
    }
    let needs_csum = h.flags & F_NEEDS_CSUM != 0;
    if needs_csum && !has(bits::CSUM) {
        return Err(BadTxHdr::CsumNotNegotiated);
    }
    let (start, offset) = (usize::from(h.csum_start), usize::from(h.csum_offset));
    if needs_csum && start + offset + 2 > frame_len {
        return Err(BadTxHdr::CsumOutOfFrame);
    }
    let ecn = h.gso_type & GSO_ECN != 0;
    let kind = match h.gso_type & !GSO_ECN {
        GSO_NONE if ecn => return Err(BadTxHdr::GsoUnknown),
        GSO_NONE if needs_csum => return Ok(TxOffload::Csum { start, offset }),
        GSO_NONE => return Ok(TxOffload::None),
        GSO_TCPV4 => (GsoKind::Tcp4, bits::HOST_TSO4),
        GSO_TCPV6 => (GsoKind::Tcp6, bits::HOST_TSO6),
        // UFO and USO are not offered: never negotiated.
        GSO_UDP | GSO_UDP_L4 => return Err(BadTxHdr::GsoNotNegotiated),
        _ => return Err(BadTxHdr::GsoUnknown),
    };
    if !has(kind.1) || (ecn && !has(bits::HOST_ECN)) {
        return Err(BadTxHdr::GsoNotNegotiated);
    }
    if !needs_csum {
        return Err(BadTxHdr::GsoWithoutCsum);
    }
    if h.gso_size == 0 {
        return Err(BadTxHdr::GsoBadSize);
    }
    Ok(TxOffload::Gso {
        kind: kind.0,
        ecn,
        mss: h.gso_size,
        csum_start: start,
        csum_offset: offset,
    })
}

/// Whether `h` has flag bits the device does not recognise (ignored, counted).
pub fn has_unknown_flags(h: &NetHdr) -> bool {
    h.flags & !KNOWN_FLAGS != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSUM: u64 = 1 << bits::CSUM;
    const TSO: u64 = CSUM | 1 << bits::HOST_TSO4 | 1 << bits::HOST_TSO6;

    fn hdr(flags: u8, gso_type: u8, gso_size: u16, start: u16, off: u16) -> NetHdr {
        NetHdr {
            flags,
            gso_type,
            gso_size,
            csum_start: start,
            csum_offset: off,
            ..NetHdr::default()
        }
    }

    #[test]
    fn roundtrip_and_size() {
        assert_eq!(NET_HDR_LEN, 12);
        let h = NetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 0x090a,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9]);
        assert_eq!(NetHdr::parse(&b), h);
        assert_eq!(NetHdr::parse(&b[..3]).hdr_len, 0x0002);
    }

    #[test]
    fn plain_and_csum() {
        assert_eq!(tx_offload(&NetHdr::default(), 60, 0), Ok(TxOffload::None));
        // hdr_len and num_buffers are not looked at.
        let h = NetHdr {
            hdr_len: 999,
            num_buffers: 7,
            ..NetHdr::default()
        };
        assert_eq!(tx_offload(&h, 60, 0), Ok(TxOffload::None));
        let h = hdr(F_NEEDS_CSUM, GSO_NONE, 0, 34, 16);
        assert_eq!(
            tx_offload(&h, 60, CSUM),
            Ok(TxOffload::Csum {
                start: 34,
                offset: 16
            })
        );
        // The checksum field's last byte is the frame's last byte: still inside.
        assert!(tx_offload(&hdr(F_NEEDS_CSUM, 0, 0, 42, 16), 60, CSUM).is_ok());
    }

    #[test]
    fn every_bad_reason() {
        let cases = [
            (
                hdr(F_NEEDS_CSUM, 0, 0, 34, 16),
                0,
                BadTxHdr::CsumNotNegotiated,
            ),
            (hdr(F_DATA_VALID, 0, 0, 0, 0), CSUM, BadTxHdr::RxOnlyFlag),
            (hdr(F_RSC_INFO, 0, 0, 0, 0), CSUM, BadTxHdr::RxOnlyFlag),
            (
                hdr(F_NEEDS_CSUM, 0, 0, 43, 16),
                CSUM,
                BadTxHdr::CsumOutOfFrame,
            ),
            (
                hdr(F_NEEDS_CSUM, 0, 0, 0xffff, 0xffff),
                CSUM,
                BadTxHdr::CsumOutOfFrame,
            ),
            (
                hdr(F_NEEDS_CSUM, 2, 1000, 34, 16),
                TSO,
                BadTxHdr::GsoUnknown,
            ),
            (
                hdr(F_NEEDS_CSUM, GSO_ECN, 0, 34, 16),
                TSO,
                BadTxHdr::GsoUnknown,
            ),
            (
                hdr(F_NEEDS_CSUM, GSO_TCPV4, 1000, 34, 16),
                CSUM,
                BadTxHdr::GsoNotNegotiated,
            ),
            (
                hdr(F_NEEDS_CSUM, GSO_TCPV6, 1000, 34, 16),
                CSUM | 1 << bits::HOST_TSO4,
                BadTxHdr::GsoNotNegotiated,
            ),
            (
                hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 1000, 34, 16),
                TSO,
                BadTxHdr::GsoNotNegotiated,
            ),
            (
                hdr(F_NEEDS_CSUM, GSO_UDP, 1000, 34, 6),
                TSO,
                BadTxHdr::GsoNotNegotiated,
            ),
            (
                hdr(F_NEEDS_CSUM, GSO_UDP_L4, 1000, 34, 6),
                TSO,
                BadTxHdr::GsoNotNegotiated,
            ),
            (
                hdr(0, GSO_TCPV4, 1000, 34, 16),
                TSO,
                BadTxHdr::GsoWithoutCsum,
            ),
            (
                hdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16),
                TSO,
                BadTxHdr::GsoBadSize,
            ),
        ];
        for (h, feat, want) in cases {
            assert_eq!(tx_offload(&h, 60, feat), Err(want), "{h:?}");
        }
        let ecn = TSO | 1 << bits::HOST_ECN;
        assert!(matches!(
            tx_offload(
                &hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 1000, 34, 16),
                60,
                ecn
            ),
            Ok(TxOffload::Gso {
                ecn: true,
                kind: GsoKind::Tcp4,
                mss: 1000,
                ..
            })
        ));
    }

    #[test]
    fn reasons_index_their_counters() {
        for (i, r) in BadTxHdr::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(r.name().starts_with("tx_bad_hdr_"));
        }
    }

    #[test]
    fn unknown_flags_are_ignored() {
        let h = hdr(0x80 | F_NEEDS_CSUM, 0, 0, 34, 16);
        assert!(has_unknown_flags(&h));
        assert!(matches!(
            tx_offload(&h, 60, CSUM),
            Ok(TxOffload::Csum { .. })
        ));
        assert!(!has_unknown_flags(&hdr(F_NEEDS_CSUM, 0, 0, 0, 0)));
    }
}
