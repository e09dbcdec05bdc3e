//! struct virtio_net_hdr_v1 as a driver writes and reads it (virtio 1.2 5.1.6), from
//! virtio-bindings' constants: the driver model's own encoding, independent of the device's.

pub use bar_registers::virtio::net_hdr::{
    F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
};

/// The header's fields (little-endian on the wire with VERSION_1).
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

impl NetHdr {
    /// Checksum offload: complete the checksum from `start`, stored at `start + offset`.
    pub fn csum(start: u16, offset: u16) -> NetHdr {
        NetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..NetHdr::default()
        }
    }

    /// TCP segmentation (`gso_type` GSO_TCPV4 or GSO_TCPV6) with `mss`, TCP header at `l4`
    /// of `hdr_len` bytes of headers.
    pub fn tso(gso_type: u8, mss: u16, l4: u16, hdr_len: u16) -> NetHdr {
        NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len,
            gso_size: mss,
            csum_start: l4,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    /// The 12 bytes.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Decodes 12 bytes.
    pub fn from_bytes(b: &[u8; 12]) -> NetHdr {
        let u = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_bindings_struct() {
        assert_eq!(
            std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>(),
            12
        );
        let h = NetHdr::tso(GSO_TCPV6, 1440, 54, 74);
        assert_eq!(NetHdr::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes(), [1, 4, 74, 0, 0xa0, 5, 54, 0, 16, 0, 0, 0]);
    }
}
