//! The virtio-net datapath (virtio 1.2 5.1.6): TX, RX with mergeable buffers, the control
//! queue, RX filtering, steering and receive-side scaling.

pub mod ctrl;
pub mod engine;
pub mod filter;
pub mod lane;
pub mod offload;
pub mod rss;
pub mod rx;
mod rx_express;
pub(crate) mod rx_wait;
pub mod sections;
pub mod tx;

/// A set of queue pairs.
pub(crate) type PairSet =
    bitvec::BitArr!(for bar_registers::layout::MAX_QUEUE_PAIRS as usize, in u64);

/// struct virtio_net_hdr_v1 size: with VIRTIO_F_VERSION_1 the header always has num_buffers
/// (5.1.6.1), so it is 12 bytes whatever MRG_RXBUF says.
pub const NET_HDR_LEN: usize = offload::hdr::NET_HDR_LEN;
/// Ethernet header.
pub const ETH_HLEN: usize = 14;
/// One 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// Largest chain the device accepts on TX (a 64 KiB frame plus the header); longer ones are
/// hostile (OversizedChain).
pub const MAX_TX_CHAIN: u64 = 65_562 + NET_HDR_LEN as u64;
/// Largest control command the device reads.
pub const MAX_CTRL_CHAIN: u64 = 64 * 1024;
