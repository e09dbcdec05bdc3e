//! The virtio PCI transport windows (virtio 1.2 section 4.1.4) and the virtio-net device
//! configuration (5.1.4), plus the feature bits the device offers.

use crate::model::{Access, Narrow, Register};

/// struct virtio_pci_common_cfg (virtio 1.2 4.1.4.3).
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0C;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1A;
    pub const QUEUE_ENABLE: u64 = 0x1C;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    pub const QUEUE_NOTIF_CONFIG_DATA: u64 = 0x38;
    /// VIRTIO_F_RING_RESET (virtio 1.2 4.1.4.3, 2.6.1).
    pub const QUEUE_RESET: u64 = 0x3A;
    /// Window length (through queue_reset).
    pub const SIZE: u64 = 0x3C;
}

/// ISR status bits (virtio 1.2 4.1.4.5).
pub mod isr {
    pub const QUEUE: u8 = 1 << 0;
    pub const CONFIG: u8 = 1 << 1;
    pub const SIZE: u64 = 1;
}

/// struct virtio_net_config (virtio 1.2 5.1.4).
pub mod net_cfg {
    pub const MAC: u64 = 0x00;
    pub const STATUS: u64 = 0x06;
    pub const MAX_VIRTQUEUE_PAIRS: u64 = 0x08;
    pub const MTU: u64 = 0x0A;
    pub const SPEED: u64 = 0x0C;
    pub const DUPLEX: u64 = 0x10;
    pub const RSS_MAX_KEY_SIZE: u64 = 0x11;
    pub const RSS_MAX_INDIRECTION_TABLE_LENGTH: u64 = 0x12;
    pub const SUPPORTED_HASH_TYPES: u64 = 0x14;
    pub const SIZE: u64 = 0x18;
}

/// The link speed config space reports, in Mb/s: the 25 GbE of the Intel FPGA PAC N3000, the
/// board the IFC VF ships on (virtio 1.2 5.1.4: speed, with VIRTIO_NET_F_SPEED_DUPLEX).
pub const LINK_SPEED_MBPS: u32 = 25_000;
/// virtio 1.2 5.1.4 duplex: 0x01 full duplex.
pub const DUPLEX_FULL: u8 = 1;

/// What the device's receive-side scaling supports (virtio 1.2 5.1.4 rss_max_key_size,
/// rss_max_indirection_table_length, supported_hash_types; 5.1.6.4.3).
pub mod rss {
    use virtio_bindings::virtio_net as n;
    /// Longest Toeplitz key: 40 bytes, enough for an IPv6 4-tuple (36 bytes of input + 4),
    /// the size Linux virtio_net (VIRTIO_NET_RSS_MAX_KEY_SIZE) and QEMU accept.
    pub const MAX_KEY_SIZE: u8 = 40;
    /// Indirection table entries at most (the 128 most NICs have; a power of two, 5.1.6.5.7.1).
    pub const MAX_INDIRECTION_TABLE_LENGTH: u16 = 128;
    /// Hash types computed: IPv4/IPv6 addresses, and the TCP/UDP 4-tuples. The _EX types
    /// (IPv6 home address / routing header addresses) are not offered.
    pub const SUPPORTED_HASH_TYPES: u32 = n::VIRTIO_NET_RSS_HASH_TYPE_IPv4
        | n::VIRTIO_NET_RSS_HASH_TYPE_TCPv4
        | n::VIRTIO_NET_RSS_HASH_TYPE_UDPv4
        | n::VIRTIO_NET_RSS_HASH_TYPE_IPv6
        | n::VIRTIO_NET_RSS_HASH_TYPE_TCPv6
        | n::VIRTIO_NET_RSS_HASH_TYPE_UDPv6;
}

/// device_status bits (virtio 1.2 2.1): virtio-bindings' VIRTIO_CONFIG_S_*, as the u8 they live in.
pub mod device_status {
    use virtio_bindings::virtio_config as c;
    pub const ACKNOWLEDGE: u8 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
    pub const DRIVER: u8 = c::VIRTIO_CONFIG_S_DRIVER as u8;
    pub const DRIVER_OK: u8 = c::VIRTIO_CONFIG_S_DRIVER_OK as u8;
    pub const FEATURES_OK: u8 = c::VIRTIO_CONFIG_S_FEATURES_OK as u8;
    pub const DEVICE_NEEDS_RESET: u8 = c::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
    pub const FAILED: u8 = c::VIRTIO_CONFIG_S_FAILED as u8;
}

/// struct virtio_net_hdr_v1 flags and gso_type values (virtio 1.2 5.1.6): virtio-bindings'
/// constants as the u8 they live in, shared by the device and the driver model.
pub mod net_hdr {
    use virtio_bindings::virtio_net as vn;
    /// struct virtio_net_hdr_v1: the header of every frame with VIRTIO_F_VERSION_1.
    pub const HDR_LEN: usize = std::mem::size_of::<vn::virtio_net_hdr_v1>();
    /// struct virtio_net_hdr_v1_hash: the header with VIRTIO_NET_F_HASH_REPORT (5.1.6: le32
    /// hash_value, le16 hash_report, le16 padding_reserved after the v1 fields).
    pub const HASH_HDR_LEN: usize = std::mem::size_of::<vn::virtio_net_hdr_v1_hash>();
    /// Offset of `num_buffers` (le16) in struct virtio_net_hdr_v1: how many buffers a
    /// received frame fills (5.1.6.4).
    pub const NUM_BUFFERS: usize = std::mem::offset_of!(vn::virtio_net_hdr_v1, num_buffers);
    /// The header length a driver and the device use with features `f` negotiated.
    pub const fn len(f: u64) -> usize {
        if f & (1u64 << vn::VIRTIO_NET_F_HASH_REPORT) != 0 {
            HASH_HDR_LEN
        } else {
            HDR_LEN
        }
    }
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM.
    pub const F_NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    /// VIRTIO_NET_HDR_F_DATA_VALID.
    pub const F_DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
    /// VIRTIO_NET_HDR_F_RSC_INFO.
    pub const F_RSC_INFO: u8 = vn::VIRTIO_NET_HDR_F_RSC_INFO as u8;
    /// VIRTIO_NET_HDR_GSO_NONE.
    pub const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;
    /// VIRTIO_NET_HDR_GSO_TCPV4.
    pub const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    /// VIRTIO_NET_HDR_GSO_UDP (UFO).
    pub const GSO_UDP: u8 = vn::VIRTIO_NET_HDR_GSO_UDP as u8;
    /// VIRTIO_NET_HDR_GSO_TCPV6.
    pub const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
    /// VIRTIO_NET_HDR_GSO_UDP_L4 (USO).
    pub const GSO_UDP_L4: u8 = vn::VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
    /// VIRTIO_NET_HDR_GSO_ECN: a bit or-ed into gso_type.
    pub const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;
}

/// virtio_net_config.status bits (virtio 1.2 5.1.4): virtio-bindings' VIRTIO_NET_S_*.
pub mod net_status {
    use virtio_bindings::virtio_net as n;
    /// VIRTIO_NET_S_LINK_UP.
    pub const LINK_UP: u16 = n::VIRTIO_NET_S_LINK_UP as u16;
    /// VIRTIO_NET_S_ANNOUNCE (5.1.6.5.4).
    pub const ANNOUNCE: u16 = n::VIRTIO_NET_S_ANNOUNCE as u16;
    /// Every bit this device sets.
    pub const ALL: u16 = LINK_UP | ANNOUNCE;
}

/// Value a vector register reads when no vector is assigned (virtio 1.2 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xFFFF;

/// A feature bit the device offers, declared once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub bit: u32,
    pub name: &'static str,
    pub meaning: &'static str,
    pub source: &'static str,
}

macro_rules! feature {
    ($bit:expr, $name:literal, $meaning:literal, $source:literal) => {
        Feature {
            bit: $bit,
            name: $name,
            meaning: $meaning,
            source: $source,
        }
    };
}

/// Feature bits: virtio-bindings' constants under short names.
pub mod bits {
    use virtio_bindings::{virtio_config as c, virtio_net as n, virtio_ring as r};
    pub const CSUM: u32 = n::VIRTIO_NET_F_CSUM;
    pub const GUEST_CSUM: u32 = n::VIRTIO_NET_F_GUEST_CSUM;
    pub const CTRL_GUEST_OFFLOADS: u32 = n::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS;
    pub const GUEST_TSO4: u32 = n::VIRTIO_NET_F_GUEST_TSO4;
    pub const GUEST_TSO6: u32 = n::VIRTIO_NET_F_GUEST_TSO6;
    pub const GUEST_ECN: u32 = n::VIRTIO_NET_F_GUEST_ECN;
    pub const GUEST_UFO: u32 = n::VIRTIO_NET_F_GUEST_UFO;
    pub const HOST_TSO4: u32 = n::VIRTIO_NET_F_HOST_TSO4;
    pub const HOST_TSO6: u32 = n::VIRTIO_NET_F_HOST_TSO6;
    pub const HOST_ECN: u32 = n::VIRTIO_NET_F_HOST_ECN;
    pub const HOST_UFO: u32 = n::VIRTIO_NET_F_HOST_UFO;
    pub const GUEST_USO4: u32 = n::VIRTIO_NET_F_GUEST_USO4;
    pub const GUEST_USO6: u32 = n::VIRTIO_NET_F_GUEST_USO6;
    pub const HOST_USO: u32 = n::VIRTIO_NET_F_HOST_USO;
    pub const MTU: u32 = n::VIRTIO_NET_F_MTU;
    pub const MAC: u32 = n::VIRTIO_NET_F_MAC;
    pub const MRG_RXBUF: u32 = n::VIRTIO_NET_F_MRG_RXBUF;
    pub const STATUS: u32 = n::VIRTIO_NET_F_STATUS;
    pub const CTRL_VQ: u32 = n::VIRTIO_NET_F_CTRL_VQ;
    pub const CTRL_RX: u32 = n::VIRTIO_NET_F_CTRL_RX;
    pub const GUEST_ANNOUNCE: u32 = n::VIRTIO_NET_F_GUEST_ANNOUNCE;
    pub const MQ: u32 = n::VIRTIO_NET_F_MQ;
    pub const CTRL_MAC_ADDR: u32 = n::VIRTIO_NET_F_CTRL_MAC_ADDR;
    pub const INDIRECT_DESC: u32 = r::VIRTIO_RING_F_INDIRECT_DESC;
    pub const EVENT_IDX: u32 = r::VIRTIO_RING_F_EVENT_IDX;
    pub const VERSION_1: u32 = c::VIRTIO_F_VERSION_1;
    pub const ACCESS_PLATFORM: u32 = c::VIRTIO_F_ACCESS_PLATFORM;
    pub const RING_PACKED: u32 = c::VIRTIO_F_RING_PACKED;
    pub const RSS: u32 = n::VIRTIO_NET_F_RSS;
    pub const HASH_REPORT: u32 = n::VIRTIO_NET_F_HASH_REPORT;
    pub const IN_ORDER: u32 = c::VIRTIO_F_IN_ORDER;
    pub const SPEED_DUPLEX: u32 = n::VIRTIO_NET_F_SPEED_DUPLEX;
    pub const NOTIFICATION_DATA: u32 = c::VIRTIO_F_NOTIFICATION_DATA;
    pub const RING_RESET: u32 = c::VIRTIO_F_RING_RESET;
}

/// Every feature the device offers (the list plus CTRL_RX and CTRL_MAC_ADDR, which the
/// control-queue RX-mode and MAC commands need per virtio 1.2 5.1.6.5).
pub const OFFERED_FEATURES: &[Feature] = &[
    feature!(
        bits::CSUM,
        "VIRTIO_NET_F_CSUM",
        "TX checksum offload: the device completes the checksum from csum_start, stored at csum_start + csum_offset (VIRTIO_NET_HDR_F_NEEDS_CSUM)",
        "virtio 1.2 5.1.6.2"
    ),
    feature!(
        bits::GUEST_CSUM,
        "VIRTIO_NET_F_GUEST_CSUM",
        "RX checksum: DATA_VALID on frames whose TCP/UDP checksum the device verified",
        "virtio 1.2 5.1.6.4"
    ),
    feature!(
        bits::HOST_TSO4,
        "VIRTIO_NET_F_HOST_TSO4",
        "TX TCPv4 segmentation (GSO_TCPV4): the device segments, or hands the GSO frame to a port that takes it",
        "virtio 1.2 5.1.6.2; requires CSUM (5.1.3.1)"
    ),
    feature!(
        bits::HOST_TSO6,
        "VIRTIO_NET_F_HOST_TSO6",
        "TX TCPv6 segmentation (GSO_TCPV6)",
        "virtio 1.2 5.1.6.2; requires CSUM (5.1.3.1)"
    ),
    feature!(
        bits::HOST_ECN,
        "VIRTIO_NET_F_HOST_ECN",
        "TX segmentation of frames with ECN (GSO_ECN bit): CWR on the first segment only",
        "virtio 1.2 5.1.6.2; requires HOST_TSO4 or HOST_TSO6 (5.1.3.1)"
    ),
    feature!(
        bits::GUEST_TSO4,
        "VIRTIO_NET_F_GUEST_TSO4",
        "RX TCPv4 GSO frames: a GSO frame from the port (a TAP) goes to the driver whole (gso_type TCPV4, gso_size, NEEDS_CSUM); the device segments it while the driver has the offload off",
        "virtio 1.2 5.1.6.4; requires GUEST_CSUM (5.1.3.1)"
    ),
    feature!(
        bits::GUEST_TSO6,
        "VIRTIO_NET_F_GUEST_TSO6",
        "RX TCPv6 GSO frames (gso_type TCPV6)",
        "virtio 1.2 5.1.6.4; requires GUEST_CSUM (5.1.3.1)"
    ),
    feature!(
        bits::GUEST_ECN,
        "VIRTIO_NET_F_GUEST_ECN",
        "RX GSO frames with the ECN bit",
        "virtio 1.2 5.1.6.4; requires GUEST_TSO4 or GUEST_TSO6 (5.1.3.1)"
    ),
    feature!(
        bits::CTRL_GUEST_OFFLOADS,
        "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS",
        "the driver switches its negotiated GUEST_* receive offloads with GUEST_OFFLOADS_SET",
        "virtio 1.2 5.1.6.5.6.1 (a control-queue command: useful with CTRL_VQ)"
    ),
    feature!(bits::MTU, "VIRTIO_NET_F_MTU", "device reports its MTU in config space", "virtio 1.2 5.1.3"),
    feature!(bits::MAC, "VIRTIO_NET_F_MAC", "device has a MAC address in config space", "virtio 1.2 5.1.3"),
    feature!(bits::MRG_RXBUF, "VIRTIO_NET_F_MRG_RXBUF", "RX packets may span several buffers (num_buffers)", "virtio 1.2 5.1.6.3"),
    feature!(bits::STATUS, "VIRTIO_NET_F_STATUS", "config status: LINK_UP and ANNOUNCE", "virtio 1.2 5.1.4"),
    feature!(bits::CTRL_VQ, "VIRTIO_NET_F_CTRL_VQ", "control virtqueue (last queue)", "virtio 1.2 5.1.6.5; DPDK adds it for the IFC VF"),
    feature!(bits::CTRL_RX, "VIRTIO_NET_F_CTRL_RX", "RX mode (promiscuous, all-multicast) over the control queue", "virtio 1.2 5.1.6.5.1"),
    feature!(
        bits::GUEST_ANNOUNCE,
        "VIRTIO_NET_F_GUEST_ANNOUNCE",
        "device asks the driver to announce after migration (instead of RARP)",
        "virtio 1.2 5.1.6.5.4; ifcvf_vdpa.c: IFC VF doesn't support RARP"
    ),
    feature!(bits::MQ, "VIRTIO_NET_F_MQ", "several RX/TX queue pairs, selected with VQ_PAIRS_SET", "virtio 1.2 5.1.6.5.5"),
    feature!(bits::CTRL_MAC_ADDR, "VIRTIO_NET_F_CTRL_MAC_ADDR", "MAC_ADDR_SET over the control queue", "virtio 1.2 5.1.6.5.2"),
    feature!(
        bits::RSS,
        "VIRTIO_NET_F_RSS",
        "receive-side scaling: Toeplitz hash over IPv4/IPv6 addresses and TCP/UDP ports, indirection table, set with RSS_CONFIG",
        "virtio 1.2 5.1.6.4.3, 5.1.6.5.7"
    ),
    feature!(
        bits::HASH_REPORT,
        "VIRTIO_NET_F_HASH_REPORT",
        "every RX header is a virtio_net_hdr_v1_hash: the frame's hash (Toeplitz, types and key from RSS_CONFIG or HASH_CONFIG) and its type; TX headers are 20 bytes too",
        "virtio 1.2 5.1.6.4.3, 5.1.6.5.7.2"
    ),
    feature!(bits::INDIRECT_DESC, "VIRTIO_F_INDIRECT_DESC", "indirect descriptor tables", "virtio 1.2 2.7.5.3"),
    feature!(
        bits::IN_ORDER,
        "VIRTIO_F_IN_ORDER",
        "the device uses buffers in the order the driver made them available, on every queue",
        "virtio 1.2 2.7.9 (split), 2.8.9 (packed), 6.1"
    ),
    feature!(
        bits::SPEED_DUPLEX,
        "VIRTIO_NET_F_SPEED_DUPLEX",
        "config space reports the link speed and duplex",
        "virtio 1.2 5.1.4"
    ),
    feature!(
        bits::NOTIFICATION_DATA,
        "VIRTIO_F_NOTIFICATION_DATA",
        "a doorbell carries vqn (bits 0-15) and the driver's next avail position (split: next_idx 16-31; packed: next_off 16-30, next_wrap 31); the vqn must name the doorbell's queue, the position is a hint",
        "virtio 1.2 2.9, 4.1.5.2; Linux vp_notify_with_data"
    ),
    feature!(
        bits::RING_RESET,
        "VIRTIO_F_RING_RESET",
        "one queue reset alone through queue_reset and re-enabled with new size and rings while the device runs",
        "virtio 1.2 2.6.1, 4.1.4.3; Linux vp_modern_disable_vq_and_reset (ethtool -G)"
    ),
    feature!(bits::EVENT_IDX, "VIRTIO_F_EVENT_IDX", "used_event / avail_event notification suppression", "virtio 1.2 2.7.7, 2.7.10"),
    feature!(bits::VERSION_1, "VIRTIO_F_VERSION_1", "virtio 1.x (modern) device; required", "virtio 1.2 6.1; Linux ifcvf requires it"),
    feature!(bits::ACCESS_PLATFORM, "VIRTIO_F_ACCESS_PLATFORM", "all DMA goes through the platform IOMMU", "virtio 1.2 6.1; Linux ifcvf requires it"),
    feature!(
        bits::RING_PACKED,
        "VIRTIO_F_RING_PACKED",
        "packed virtqueue layout for every queue (descriptor ring with wrap counters, event suppression areas); LM ring state carries the wrap counters",
        "virtio 1.2 2.8; vhost-user GET/SET_VRING_BASE packed encoding"
    ),
];

/// What a driver model asks for by default: every feature the model implements except
/// VIRTIO_F_RING_PACKED, so the split ring stays the default layout and the packed ring is
/// opt-in; except VIRTIO_F_IN_ORDER, which Linux's virtio_net (6.12) does not negotiate
/// either (the validator's in-order group and the drivers that want it, DPDK's virtio PMD, ask
/// for it); except VIRTIO_F_NOTIFICATION_DATA, which changes every kick (the validator's
/// notification-data group asks for it, as Linux 6.12 does; VIRTIO_F_RING_RESET is in, as it
/// is for Linux, and changes nothing until a driver resets a queue); and except the RX GSO
/// offloads ([`RX_GSO_FEATURES`]), so that frames come back the way the wire carries them
/// unless a check asks for GSO frames. A driver negotiates this & the device's offer (as
/// DPDK's base/ifcvf.c `ifcvf_config_features` does), so on a device with a smaller profile it
/// gets that profile's set (less the packed ring). VIRTIO_NET_F_HASH_REPORT is left out as
/// well: it makes every virtio-net header 20 bytes, which a driver asks for.
pub fn default_driver_features() -> u64 {
    offered_mask()
        & !(1u64 << bits::RING_PACKED)
        & !(1u64 << bits::IN_ORDER)
        & !(1u64 << bits::NOTIFICATION_DATA)
        & !RX_GSO_FEATURES
        & !(1u64 << bits::HASH_REPORT)
}

/// The receive GSO offloads and their control command: GUEST_TSO4, GUEST_TSO6, GUEST_ECN and
/// CTRL_GUEST_OFFLOADS (virtio 1.2 5.1.6.4, 5.1.6.5.6.1).
pub const RX_GSO_FEATURES: u64 = 1u64 << bits::GUEST_TSO4
    | 1u64 << bits::GUEST_TSO6
    | 1u64 << bits::GUEST_ECN
    | 1u64 << bits::CTRL_GUEST_OFFLOADS;

/// Every feature the model implements, as a mask: what the `full` profile offers (a device
/// offers its own profile's set, see [`crate::profile`]).
pub fn offered_mask() -> u64 {
    OFFERED_FEATURES.iter().fold(0, |m, f| m | (1u64 << f.bit))
}

/// Name of a feature bit, if the device knows it.
pub fn feature_name(bit: u32) -> Option<&'static str> {
    OFFERED_FEATURES
        .iter()
        .find(|f| f.bit == bit)
        .map(|f| f.name)
}

/// A feature name without its `VIRTIO_NET_F_` / `VIRTIO_F_` prefix, lower case: `mrg_rxbuf`.
pub fn short_feature_name(full: &str) -> String {
    full.trim_start_matches("VIRTIO_NET_F_")
        .trim_start_matches("VIRTIO_F_")
        .to_ascii_lowercase()
}

/// A feature the model implements, by name: `mrg_rxbuf`, `MRG_RXBUF` or
/// `VIRTIO_NET_F_MRG_RXBUF` (case-insensitive).
pub fn find_feature(name: &str) -> Option<&'static Feature> {
    let want = short_feature_name(&name.trim().to_ascii_uppercase());
    OFFERED_FEATURES
        .iter()
        .find(|f| short_feature_name(f.name) == want)
}

/// One feature dependency of virtio 1.2 5.1.3.1: `feature` requires one of `any_of`. A device
/// MUST NOT offer, and a driver MUST NOT accept, a feature whose requirement it does not
/// offer / accept as well (2.2.1, 5.1.3.1). Declared by virtio-bindings' bit numbers, so a
/// rule holds before the model implements either side of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub feature: (u32, &'static str),
    pub any_of: &'static [(u32, &'static str)],
}

macro_rules! requires {
    ($f:ident => $($n:ident)|+) => {
        Requirement {
            feature: (virtio_bindings::virtio_net::$f, stringify!($f)),
            any_of: &[$((virtio_bindings::virtio_net::$n, stringify!($n))),+],
        }
    };
}

/// virtio 1.2 5.1.3.1 "Feature bit requirements", every line of it.
pub const FEATURE_REQUIREMENTS: &[Requirement] = &[
    requires!(VIRTIO_NET_F_GUEST_TSO4 => VIRTIO_NET_F_GUEST_CSUM),
    requires!(VIRTIO_NET_F_GUEST_TSO6 => VIRTIO_NET_F_GUEST_CSUM),
    requires!(VIRTIO_NET_F_GUEST_ECN => VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6),
    requires!(VIRTIO_NET_F_GUEST_UFO => VIRTIO_NET_F_GUEST_CSUM),
    requires!(VIRTIO_NET_F_GUEST_USO4 => VIRTIO_NET_F_GUEST_CSUM),
    requires!(VIRTIO_NET_F_GUEST_USO6 => VIRTIO_NET_F_GUEST_CSUM),
    requires!(VIRTIO_NET_F_HOST_TSO4 => VIRTIO_NET_F_CSUM),
    requires!(VIRTIO_NET_F_HOST_TSO6 => VIRTIO_NET_F_CSUM),
    requires!(VIRTIO_NET_F_HOST_ECN => VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6),
    requires!(VIRTIO_NET_F_HOST_UFO => VIRTIO_NET_F_CSUM),
    requires!(VIRTIO_NET_F_HOST_USO => VIRTIO_NET_F_CSUM),
    requires!(VIRTIO_NET_F_CTRL_RX => VIRTIO_NET_F_CTRL_VQ),
    requires!(VIRTIO_NET_F_CTRL_VLAN => VIRTIO_NET_F_CTRL_VQ),
    requires!(VIRTIO_NET_F_GUEST_ANNOUNCE => VIRTIO_NET_F_CTRL_VQ),
    requires!(VIRTIO_NET_F_MQ => VIRTIO_NET_F_CTRL_VQ),
    requires!(VIRTIO_NET_F_CTRL_MAC_ADDR => VIRTIO_NET_F_CTRL_VQ),
    requires!(VIRTIO_NET_F_NOTF_COAL => VIRTIO_NET_F_CTRL_VQ),
    requires!(VIRTIO_NET_F_RSC_EXT => VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6),
    requires!(VIRTIO_NET_F_RSS => VIRTIO_NET_F_CTRL_VQ),
];

/// The first requirement of [`FEATURE_REQUIREMENTS`] that the feature set `set` breaks.
pub fn unmet_requirement(set: u64) -> Option<&'static Requirement> {
    FEATURE_REQUIREMENTS.iter().find(|r| {
        set & (1u64 << r.feature.0) != 0 && r.any_of.iter().all(|n| set & (1u64 << n.0) == 0)
    })
}

impl Requirement {
    /// `A requires B` / `A requires B or C`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.any_of.iter().map(|n| n.1).collect();
        format!("{} requires {}", self.feature.1, names.join(" or "))
    }
}

const SPEC_COMMON: &str = "virtio 1.2 4.1.4.3";

pub(crate) fn common_registers(num_queues: u16, queue_size_max: u16) -> Vec<Register> {
    vec![
        Register::new(
            "device_feature_select",
            common::DEVICE_FEATURE_SELECT,
            4,
            Access::Rw,
            0,
            "selects which 32 feature bits device_feature shows",
            SPEC_COMMON,
        ),
        Register::new(
            "device_feature",
            common::DEVICE_FEATURE,
            4,
            Access::Ro,
            offered_mask() & 0xFFFF_FFFF,
            "offered feature bits [32*select, 32*select+31]: the device profile's (reset value: profile full)",
            SPEC_COMMON,
        ),
        Register::new("driver_feature_select", common::DRIVER_FEATURE_SELECT, 4, Access::Rw, 0, "selects which 32 bits driver_feature writes", SPEC_COMMON),
        Register::new("driver_feature", common::DRIVER_FEATURE, 4, Access::Rw, 0, "accepted feature bits; latched at FEATURES_OK", SPEC_COMMON),
        Register::new(
            "config_msix_vector",
            common::CONFIG_MSIX_VECTOR,
            2,
            Access::Rw,
            u64::from(NO_VECTOR),
            "MSI-X vector for config changes; reads 0xFFFF if the vector is invalid (DPDK checks)",
            "virtio 1.2 4.1.5.1.2; ifcvf.c ifcvf_hw_enable",
        ),
        Register::new("num_queues", common::NUM_QUEUES, 2, Access::Ro, num_queues.into(), "2 x max queue pairs + control queue", SPEC_COMMON),
        Register::new(
            "device_status",
            common::DEVICE_STATUS,
            1,
            Access::Rw,
            0,
            "status state machine; write 0 resets, reads 0 when reset is done",
            "virtio 1.2 2.1, 4.1.4.3.1",
        ),
        Register::new("config_generation", common::CONFIG_GENERATION, 1, Access::Ro, 0, "changes whenever device config changes", "virtio 1.2 2.5.1"),
        Register::new("queue_select", common::QUEUE_SELECT, 2, Access::Rw, 0, "queue the queue_* registers address", SPEC_COMMON),
        Register::new(
            "queue_size",
            common::QUEUE_SIZE,
            2,
            Access::Rw,
            queue_size_max.into(),
            "ring size; reads the maximum after reset, driver may lower it (power of 2; any size with RING_PACKED)",
            SPEC_COMMON,
        )
        .live(),
        Register::new(
            "queue_msix_vector",
            common::QUEUE_MSIX_VECTOR,
            2,
            Access::Rw,
            u64::from(NO_VECTOR),
            "MSI-X vector of the selected queue",
            "virtio 1.2 4.1.5.1.2",
        ),
        Register::new(
            "queue_enable",
            common::QUEUE_ENABLE,
            2,
            Access::Rw,
            0,
            "1 starts the queue; 0 stops it (IFC VF: reads 1 until in-flight work is done and the LM ring state is final)",
            "virtio 1.2 4.1.4.3; ifcvf.c ifcvf_hw_disable",
        ),
        Register::new("queue_notify_off", common::QUEUE_NOTIFY_OFF, 2, Access::Ro, 0, "doorbell offset / notify_off_multiplier", SPEC_COMMON).live(),
        Register::new("queue_desc", common::QUEUE_DESC, 8, Access::Rw, 0, "descriptor area IOVA (packed: the descriptor ring)", SPEC_COMMON),
        Register::new(
            "queue_driver",
            common::QUEUE_DRIVER,
            8,
            Access::Rw,
            0,
            "driver area IOVA: split avail ring; packed driver event suppression",
            SPEC_COMMON,
        ),
        Register::new(
            "queue_device",
            common::QUEUE_DEVICE,
            8,
            Access::Rw,
            0,
            "device area IOVA: split used ring; packed device event suppression",
            SPEC_COMMON,
        ),
        Register::new(
            "queue_notif_config_data",
            common::QUEUE_NOTIF_CONFIG_DATA,
            2,
            Access::Ro,
            0,
            "notification data (VIRTIO_F_NOTIF_CONFIG_DATA not offered: reads 0)",
            "virtio 1.2 4.1.4.3",
        )
        .live(),
        Register::new(
            "queue_reset",
            common::QUEUE_RESET,
            2,
            Access::Rw,
            0,
            "VIRTIO_F_RING_RESET: writing 1 resets the selected queue alone (ring state forgotten, registers back to reset values, in-flight work dropped); reads 1 while the reset is in progress, then 0 with queue_enable 0; re-enabled through queue_enable. Without RING_RESET negotiated reads 0 and writes are refused",
            "virtio 1.2 4.1.4.3, 4.1.4.3.1, 2.6.1; Linux vp_modern_set_queue_reset",
        ),
    ]
}

pub(crate) fn isr_registers() -> Vec<Register> {
    vec![Register::new(
        "isr_status",
        0,
        1,
        Access::Rc,
        0,
        "bit 0 queue interrupt, bit 1 config change; cleared by the read",
        "virtio 1.2 4.1.4.5",
    )]
}

pub(crate) fn net_cfg_registers(mac: [u8; 6], max_pairs: u16, mtu: u16) -> Vec<Register> {
    let mac_val = mac
        .iter()
        .enumerate()
        .fold(0u64, |v, (i, b)| v | (u64::from(*b) << (8 * i)));
    const SRC: &str = "virtio 1.2 5.1.4";
    vec![
        Register {
            width: 6,
            ..Register::new(
                "mac",
                net_cfg::MAC,
                1,
                Access::Ro,
                mac_val,
                "MAC address (VIRTIO_NET_F_MAC); readable byte by byte",
                SRC,
            )
        }
        .narrow(Narrow::Any),
        Register::new(
            "status",
            net_cfg::STATUS,
            2,
            Access::Ro,
            net_status::LINK_UP.into(),
            "bit 0 VIRTIO_NET_S_LINK_UP, bit 1 VIRTIO_NET_S_ANNOUNCE",
            SRC,
        )
        .narrow(Narrow::Any)
        .live(),
        Register::new(
            "max_virtqueue_pairs",
            net_cfg::MAX_VIRTQUEUE_PAIRS,
            2,
            Access::Ro,
            max_pairs.into(),
            "queue pairs the device supports (VIRTIO_NET_F_MQ)",
            SRC,
        )
        .narrow(Narrow::Any),
        Register::new(
            "mtu",
            net_cfg::MTU,
            2,
            Access::Ro,
            mtu.into(),
            "maximum MTU the driver should use (VIRTIO_NET_F_MTU)",
            SRC,
        )
        .narrow(Narrow::Any),
        Register::new(
            "speed",
            net_cfg::SPEED,
            4,
            Access::Ro,
            LINK_SPEED_MBPS.into(),
            "link speed in Mb/s (VIRTIO_NET_F_SPEED_DUPLEX)",
            SRC,
        )
        .narrow(Narrow::Any),
        Register::new(
            "duplex",
            net_cfg::DUPLEX,
            1,
            Access::Ro,
            DUPLEX_FULL.into(),
            "duplex: 1 full (VIRTIO_NET_F_SPEED_DUPLEX)",
            SRC,
        )
        .narrow(Narrow::Any),
        Register::new(
            "rss_max_key_size",
            net_cfg::RSS_MAX_KEY_SIZE,
            1,
            Access::Ro,
            rss::MAX_KEY_SIZE.into(),
            "longest RSS key the device takes (VIRTIO_NET_F_RSS)",
            SRC,
        ),
        Register::new(
            "rss_max_indirection_table_length",
            net_cfg::RSS_MAX_INDIRECTION_TABLE_LENGTH,
            2,
            Access::Ro,
            rss::MAX_INDIRECTION_TABLE_LENGTH.into(),
            "most RSS indirection table entries (VIRTIO_NET_F_RSS)",
            SRC,
        )
        .narrow(Narrow::Any),
        Register::new(
            "supported_hash_types",
            net_cfg::SUPPORTED_HASH_TYPES,
            4,
            Access::Ro,
            rss::SUPPORTED_HASH_TYPES.into(),
            "VIRTIO_NET_RSS_HASH_TYPE_* the device computes: IPv4, TCPv4, UDPv4, IPv6, TCPv6, UDPv6",
            SRC,
        )
        .narrow(Narrow::Any),
    ]
}
