//! The driver's receive offloads (virtio 1.2 5.1.6.4 and 5.1.6.5.6.1): which of the negotiated
//! GUEST_CSUM / GUEST_TSO4 / GUEST_TSO6 / GUEST_ECN the driver takes right now. "Upon feature
//! negotiation corresponding offload gets enabled to preserve backward compatibility"; with
//! VIRTIO_NET_F_CTRL_GUEST_OFFLOADS the driver switches them with
//! VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET (Linux drivers/net/virtio_net.c
//! virtnet_set_guest_offloads, for XDP and for `ethtool -K ... rx-gro-hw`).

use crate::port::PortOffloads;
use bar_registers::virtio::bits;

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// Every feature bit CTRL_GUEST_OFFLOADS_SET may name (5.1.6.5.6.1: "the offloads bitmask
/// uses the same bit positions as the features"), offered or not.
pub const GUEST_OFFLOAD_BITS: u64 = bit(bits::GUEST_CSUM)
    | bit(bits::GUEST_TSO4)
    | bit(bits::GUEST_TSO6)
    | bit(bits::GUEST_ECN)
    | bit(bits::GUEST_UFO)
    | bit(bits::GUEST_USO4)
    | bit(bits::GUEST_USO6);

/// Why a CTRL_GUEST_OFFLOADS_SET is refused (acked VIRTIO_NET_ERR; the offloads stay as they were).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestOffloadsError {
    #[error("VIRTIO_NET_F_CTRL_GUEST_OFFLOADS not negotiated")]
    NotNegotiated,
    #[error("command data of {0} bytes, le64 expected")]
    Short(usize),
    #[error("offloads {0:#x} name features that were not negotiated (5.1.6.5.6.1: the driver MUST NOT enable those)")]
    NotNegotiatedOffload(u64),
}

/// The offloads the driver takes on receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestOffloads(pub u64);

impl GuestOffloads {
    /// What negotiation alone enables.
    pub fn negotiated(features: u64) -> Self {
        GuestOffloads(features & GUEST_OFFLOAD_BITS)
    }

    fn has(self, b: u32) -> bool {
        self.0 & bit(b) != 0
    }

    /// Partially checksummed frames (NEEDS_CSUM) and DATA_VALID.
    pub fn csum(self) -> bool {
        self.has(bits::GUEST_CSUM)
    }

    /// Whether a GSO frame of this kind may be handed on whole: the TSO offload for its IP
    /// version (and ECN for a frame with the ECN bit), with the checksum offload its
    /// NEEDS_CSUM needs.
    pub fn takes_gso(self, v4: bool, ecn: bool) -> bool {
        let tso = if v4 {
            self.has(bits::GUEST_TSO4)
        } else {
            self.has(bits::GUEST_TSO6)
        };
        self.csum() && tso && (!ecn || self.has(bits::GUEST_ECN))
    }

    /// Whether GSO frames of either IP version may be handed on (coalescing is worth trying).
    pub fn takes_any_tso(self) -> bool {
        self.takes_gso(true, false) || self.takes_gso(false, false)
    }

    /// As a port hint ([`crate::port::Port::set_rx_offloads`]).
    pub fn to_port(self) -> PortOffloads {
        PortOffloads {
            csum: self.csum(),
            tso4: self.takes_gso(true, false),
            tso6: self.takes_gso(false, false),
            ecn: self.csum() && self.has(bits::GUEST_ECN),
        }
    }
}

/// Decodes CTRL_GUEST_OFFLOADS_SET's data (le64 offloads) against the negotiated `features`.
/// Bytes after the le64 are ignored, as QEMU's virtio_net_handle_offloads does (it copies
/// eight bytes out of the command).
pub fn parse_set(data: &[u8], features: u64) -> Result<GuestOffloads, GuestOffloadsError> {
    if features & bit(bits::CTRL_GUEST_OFFLOADS) == 0 {
        return Err(GuestOffloadsError::NotNegotiated);
    }
    let v = data.get(..8).ok_or(GuestOffloadsError::Short(data.len()))?;
    let v = u64::from_le_bytes(v.try_into().expect("8 bytes"));
    let allowed = features & GUEST_OFFLOAD_BITS;
    if v & !allowed != 0 {
        return Err(GuestOffloadsError::NotNegotiatedOffload(v & !allowed));
    }
    Ok(GuestOffloads(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = bit(bits::CTRL_GUEST_OFFLOADS)
        | bit(bits::GUEST_CSUM)
        | bit(bits::GUEST_TSO4)
        | bit(bits::GUEST_TSO6)
        | bit(bits::GUEST_ECN);

    #[test]
    fn negotiation_enables_what_was_negotiated_only() {
        let g = GuestOffloads::negotiated(ALL | bit(bits::CSUM));
        assert_eq!(g.0, ALL & !bit(bits::CTRL_GUEST_OFFLOADS));
        assert!(g.takes_gso(true, true) && g.takes_gso(false, false));
        let g = GuestOffloads::negotiated(bit(bits::GUEST_CSUM) | bit(bits::GUEST_TSO4));
        assert!(g.takes_gso(true, false));
        assert!(!g.takes_gso(true, true), "no ECN");
        assert!(!g.takes_gso(false, false), "no TSO6");
        assert_eq!(
            g.to_port(),
            PortOffloads {
                csum: true,
                tso4: true,
                tso6: false,
                ecn: false
            }
        );
    }

    #[test]
    fn gso_needs_the_checksum_offload_too() {
        let g = GuestOffloads(bit(bits::GUEST_TSO4) | bit(bits::GUEST_TSO6));
        assert!(!g.takes_gso(true, false) && !g.takes_gso(false, false));
        assert_eq!(g.to_port(), PortOffloads::NONE);
    }

    #[test]
    fn set_is_checked_against_the_negotiated_features() {
        let off = (bit(bits::GUEST_CSUM)).to_le_bytes();
        assert_eq!(
            parse_set(&off, ALL),
            Ok(GuestOffloads(bit(bits::GUEST_CSUM)))
        );
        assert_eq!(parse_set(&0u64.to_le_bytes(), ALL), Ok(GuestOffloads(0)));
        // Trailing bytes ignored (QEMU copies eight).
        let mut long = off.to_vec();
        long.push(7);
        assert_eq!(
            parse_set(&long, ALL),
            Ok(GuestOffloads(bit(bits::GUEST_CSUM)))
        );
        assert_eq!(parse_set(&off[..7], ALL), Err(GuestOffloadsError::Short(7)));
        assert_eq!(
            parse_set(&off, ALL & !bit(bits::CTRL_GUEST_OFFLOADS)),
            Err(GuestOffloadsError::NotNegotiated)
        );
        // UFO is a guest offload bit, but not negotiated; CSUM (a host bit) is no offload.
        for b in [bits::GUEST_UFO, bits::CSUM, bits::MRG_RXBUF] {
            assert_eq!(
                parse_set(&bit(b).to_le_bytes(), ALL),
                Err(GuestOffloadsError::NotNegotiatedOffload(bit(b)))
            );
        }
        let no_tso6 = ALL & !bit(bits::GUEST_TSO6);
        assert!(parse_set(&bit(bits::GUEST_TSO6).to_le_bytes(), no_tso6).is_err());
    }
}
