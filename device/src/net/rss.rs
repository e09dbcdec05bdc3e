//! Receive-side scaling (virtio 1.2 5.1.6.4.3 "Hash calculation for incoming packets",
//! 5.1.6.5.7 "Receive-side scaling (RSS)"): the driver sets a Toeplitz key, the hash types and
//! an indirection table with VIRTIO_NET_CTRL_MQ_RSS_CONFIG; the device hashes each incoming
//! frame's IP addresses (and TCP/UDP ports) and puts it on the receive queue the table names.
//! A frame no enabled hash type covers goes to `unclassified_queue`.
//!
//! While RSS is on it replaces automatic receive steering (5.1.6.5.6.1); VQ_PAIRS_SET, an
//! RSS_CONFIG with neither key nor hash types, and a reset turn it off (as QEMU's
//! hw/net/virtio-net.c virtio_net_handle_mq does).

use bar_registers::virtio::rss::{
    MAX_INDIRECTION_TABLE_LENGTH, MAX_KEY_SIZE, SUPPORTED_HASH_TYPES,
};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HASH_REPORT_IPv4, VIRTIO_NET_HASH_REPORT_IPv6, VIRTIO_NET_HASH_REPORT_TCPv4,
    VIRTIO_NET_HASH_REPORT_TCPv6, VIRTIO_NET_HASH_REPORT_UDPv4, VIRTIO_NET_HASH_REPORT_UDPv6,
    VIRTIO_NET_RSS_HASH_TYPE_IPv4 as T_IPV4, VIRTIO_NET_RSS_HASH_TYPE_IPv6 as T_IPV6,
    VIRTIO_NET_RSS_HASH_TYPE_TCPv4 as T_TCPV4, VIRTIO_NET_RSS_HASH_TYPE_TCPv6 as T_TCPV6,
    VIRTIO_NET_RSS_HASH_TYPE_UDPv4 as T_UDPV4, VIRTIO_NET_RSS_HASH_TYPE_UDPv6 as T_UDPV6,
    VIRTIO_NET_HASH_REPORT_NONE,
};

/// A live RSS configuration (struct virtio_net_rss_config, 5.1.6.5.7.1), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssConfig {
    /// VIRTIO_NET_RSS_HASH_TYPE_* enabled.
    pub hash_types: u32,
    /// Receive queue pair (0 = receiveq1) of each indirection table entry; a power of two long.
    pub table: Vec<u16>,
    /// Queue pair of frames no enabled hash type covers.
    pub unclassified: u16,
    /// The Toeplitz key, zero-padded to [`MAX_KEY_SIZE`] bytes.
    pub key: [u8; MAX_KEY_SIZE as usize],
    /// How many key bytes the driver gave.
    pub key_len: u8,
}

/// Why an RSS_CONFIG command is refused (the device acks VIRTIO_NET_ERR and keeps its state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RssError {
    #[error("command is {len} bytes, shorter than its fields")]
    Short { len: usize },
    #[error("indirection table of {entries} entries: not a power of two, or more than {MAX_INDIRECTION_TABLE_LENGTH}")]
    TableSize { entries: u32 },
    #[error("{field} names queue pair {value}, the device has {pairs}")]
    QueueOutOfRange {
        field: &'static str,
        value: u16,
        pairs: u16,
    },
    #[error("max_tx_vq {value}: not in 1..={pairs}")]
    MaxTxVq { value: u16, pairs: u16 },
    #[error("hash types {types:#x} include ones the device does not support ({SUPPORTED_HASH_TYPES:#x})")]
    HashTypes { types: u32 },
    #[error("key of {len} bytes: longer than {MAX_KEY_SIZE}, or missing while hash types are set")]
    Key { len: u8 },
}

/// What an accepted RSS_CONFIG asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssCommand {
    /// The configuration, or `None`: RSS off (no key and no hash types).
    pub config: Option<RssConfig>,
    /// Transmit queue pairs the driver may use (max_tx_vq): the queue pairs in use.
    pub pairs: u16,
}

/// Parses `struct virtio_net_rss_config { le32 hash_types; le16 indirection_table_mask;
/// le16 unclassified_queue; le16 indirection_table[mask + 1]; le16 max_tx_vq;
/// u8 hash_key_length; u8 hash_key_data[hash_key_length]; }` (5.1.6.5.7.1) for a device with
/// `max_pairs` queue pairs. Every queue index the driver gives must name one of the device's
/// pairs (the spec leaves the device's reaction open; refusing keeps frames from being steered
/// to a queue that does not exist).
pub fn parse_rss_config(data: &[u8], max_pairs: u16) -> Result<RssCommand, RssError> {
    let short = RssError::Short { len: data.len() };
    let le16 = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(short)
    };
    let hash_types = u32::from_le_bytes(data.get(0..4).ok_or(short)?.try_into().expect("4"));
    let entries = u32::from(le16(4)?) + 1;
    let unclassified = le16(6)?;
    if !entries.is_power_of_two() || entries > u32::from(MAX_INDIRECTION_TABLE_LENGTH) {
        return Err(RssError::TableSize { entries });
    }
    let in_range = |field, value: u16| {
        if value < max_pairs {
            Ok(value)
        } else {
            Err(RssError::QueueOutOfRange {
                field,
                value,
                pairs: max_pairs,
            })
        }
    };
    in_range("unclassified_queue", unclassified)?;
    let table = (0..entries as usize)
        .map(|i| le16(8 + 2 * i).and_then(|q| in_range("indirection_table", q)))
        .collect::<Result<Vec<u16>, _>>()?;
    let at = 8 + 2 * entries as usize;
    let max_tx_vq = le16(at)?;
    if max_tx_vq == 0 || max_tx_vq > max_pairs {
        return Err(RssError::MaxTxVq {
            value: max_tx_vq,
            pairs: max_pairs,
        });
    }
    let key_len = *data.get(at + 2).ok_or(short)?;
    let key_data = data
        .get(at + 3..at + 3 + usize::from(key_len))
        .ok_or(short)?;
    // Bytes after the key are ignored, as QEMU's hw/net/virtio-net.c virtio_net_handle_rss
    // (which reads field by field) does: Linux 6.12's virtio_net sends one more byte than the
    // fields (seen in our e2e run: a 40-byte key followed by a zero byte).
    let config = hash_fields(hash_types, key_data)?.map(|key| RssConfig {
        hash_types,
        table,
        unclassified,
        key,
        key_len,
    });
    Ok(RssCommand {
        config,
        pairs: max_tx_vq,
    })
}

/// Hash reporting settings (VIRTIO_NET_F_HASH_REPORT) set by VIRTIO_NET_CTRL_MQ_HASH_CONFIG
/// (virtio 1.2 5.1.6.5.6.4 "Hash calculation"): the hash types and key, with no steering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashConfig {
    /// VIRTIO_NET_RSS_HASH_TYPE_* enabled.
    pub hash_types: u32,
    /// The Toeplitz key, zero-padded to [`MAX_KEY_SIZE`] bytes.
    pub key: [u8; MAX_KEY_SIZE as usize],
    /// How many key bytes the driver gave.
    pub key_len: u8,
}

/// Parses `struct virtio_net_hash_config { le32 hash_types; le16 reserved[4]; u8
/// hash_key_length; u8 hash_key_data[hash_key_length]; }`: `None` turns hash reporting off (no
/// key and no hash types), as RSS_CONFIG turns RSS off. The reserved words are not checked
/// (QEMU's hw/net/virtio-net.c virtio_net_handle_rss reads the same bytes as RSS_CONFIG's
/// mask, unclassified queue, first table entry and max_tx_vq, and ignores them for
/// HASH_CONFIG); bytes after the key are ignored, as for RSS_CONFIG.
pub fn parse_hash_config(data: &[u8]) -> Result<Option<HashConfig>, RssError> {
    let short = RssError::Short { len: data.len() };
    let hash_types = u32::from_le_bytes(data.get(0..4).ok_or(short)?.try_into().expect("4"));
    let key_len = *data.get(12).ok_or(short)?;
    let key_data = data.get(13..13 + usize::from(key_len)).ok_or(short)?;
    Ok(hash_fields(hash_types, key_data)?.map(|key| HashConfig {
        hash_types,
        key,
        key_len,
    }))
}

/// Checks the hash fields RSS_CONFIG and HASH_CONFIG share: types the device supports, a key of
/// at most [`MAX_KEY_SIZE`] bytes, present when types are set. Returns the key zero-padded, or
/// `None` for "off" (neither types nor key).
fn hash_fields(
    hash_types: u32,
    key_data: &[u8],
) -> Result<Option<[u8; MAX_KEY_SIZE as usize]>, RssError> {
    let key_len = key_data.len() as u8;
    if hash_types & !SUPPORTED_HASH_TYPES != 0 {
        return Err(RssError::HashTypes { types: hash_types });
    }
    if key_data.len() > usize::from(MAX_KEY_SIZE) || (key_len == 0 && hash_types != 0) {
        return Err(RssError::Key { len: key_len });
    }
    Ok((key_len != 0 || hash_types != 0).then(|| {
        let mut key = [0u8; MAX_KEY_SIZE as usize];
        key[..key_data.len()].copy_from_slice(key_data);
        key
    }))
}

impl HashConfig {
    /// The HASH_CONFIG command that sets this configuration (the device-state stream carries
    /// it).
    pub fn encode(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(13 + usize::from(self.key_len));
        c.extend(self.hash_types.to_le_bytes());
        c.extend([0u8; 8]);
        c.push(self.key_len);
        c.extend_from_slice(&self.key[..usize::from(self.key_len)]);
        c
    }
}

/// What the device reports for one frame in a virtio_net_hdr_v1_hash (virtio 1.2 5.1.6.4.3,
/// "Hash reporting for incoming packets"): the Toeplitz hash under `key` of the input the
/// first enabled type (in the order of 5.1.6.4.3) selects, and that type as a
/// VIRTIO_NET_HASH_REPORT_* value; (0, VIRTIO_NET_HASH_REPORT_NONE) when no enabled type covers
/// the frame. With `l3_type_bug` a TCP/UDP hash is reported as its IP version's address type
/// (the `hash-report-type-wrong` quirk).
pub fn hash_report(frame: &[u8], types: u32, key: &[u8], l3_type_bug: bool) -> (u32, u16) {
    hash_report_by(frame, types, l3_type_bug, |i| toeplitz(key, i))
}

/// [`hash_report`] with the Toeplitz hash computed by `hash` (the device's table).
pub(crate) fn hash_report_by(
    frame: &[u8],
    types: u32,
    l3_type_bug: bool,
    hash: impl FnOnce(&[u8]) -> u32,
) -> (u32, u16) {
    match hash_input(frame, types) {
        None => (0, VIRTIO_NET_HASH_REPORT_NONE as u16),
        Some(input) => {
            let mut t = input.hash_type;
            if l3_type_bug {
                t = match t {
                    T_TCPV4 | T_UDPV4 => T_IPV4,
                    T_TCPV6 | T_UDPV6 => T_IPV6,
                    t => t,
                };
            }
            (hash(input.bytes()), report_of(t))
        }
    }
}

/// The VIRTIO_NET_HASH_REPORT_* value of a VIRTIO_NET_RSS_HASH_TYPE_* bit: the report values
/// count the hash types in the same order (IPv4 = 1 ... UDPv6_EX = 9).
fn report_of(hash_type: u32) -> u16 {
    const _: () = assert!(
        VIRTIO_NET_HASH_REPORT_IPv4 == 1
            && VIRTIO_NET_HASH_REPORT_TCPv4 == 2
            && VIRTIO_NET_HASH_REPORT_UDPv4 == 3
            && VIRTIO_NET_HASH_REPORT_IPv6 == 4
            && VIRTIO_NET_HASH_REPORT_TCPv6 == 5
            && VIRTIO_NET_HASH_REPORT_UDPv6 == 6
            && T_IPV4 == 1
            && T_TCPV4 == 2
            && T_UDPV4 == 4
            && T_IPV6 == 8
            && T_TCPV6 == 16
            && T_UDPV6 == 32
    );
    (hash_type.trailing_zeros() + 1) as u16
}

/// The Toeplitz hash of `input` under `key` (Microsoft's RSS "Verifying the RSS Hash
/// Calculation"; virtio 1.2 5.1.6.4.3.1 names it): for every set input bit, counted from the
/// most significant bit of the first byte, the 32 key bits starting at that bit position are
/// XORed into the result. Key bits past the key's end are zero.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let key_bit = |i: usize| key.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
    // The 32-bit window of the key at the current input bit.
    let mut window = (0..32).fold(0u32, |w, i| (w << 1) | u32::from(key_bit(i)));
    let mut hash = 0u32;
    for (byte_index, byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | u32::from(key_bit(32 + byte_index * 8 + bit));
        }
    }
    hash
}

/// Bytes of the longest hash input (IPv6 source and destination addresses and TCP/UDP ports).
pub const MAX_HASH_INPUT: usize = 36;

/// The Toeplitz hash of one key by table, what the device computes for every received frame
/// while RSS or hash reporting is on ([`toeplitz`] is the bit-by-bit definition it is checked
/// against, and what the validator computes). For each byte position of an input and each byte
/// value, the XOR of the key windows that byte's set bits select is precomputed, so a hash is
/// one lookup and one XOR per input byte. `cargo bench -p vdpa-device --bench steering`: an
/// IPv4/TCP input (12 bytes) took 75 ns bit by bit on the 2-core machine, about as long as
/// the rest of a 64-byte frame's delivery; by table it takes 4 ns (IPv6/TCP: 174 ns and 10).
pub struct ToeplitzTable {
    key: [u8; MAX_KEY_SIZE as usize],
    rows: Box<[[u32; 256]; MAX_HASH_INPUT]>,
}

impl std::fmt::Debug for ToeplitzTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToeplitzTable")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ToeplitzTable {
    /// The table of `key` (at most [`MAX_KEY_SIZE`] bytes; bits past its end are zero).
    pub fn new(key: &[u8]) -> Self {
        let mut k = [0u8; MAX_KEY_SIZE as usize];
        let n = key.len().min(k.len());
        k[..n].copy_from_slice(&key[..n]);
        // The 32 key bits from bit `bit` on, counted from the most significant bit of byte 0.
        let window = |bit: usize| -> u32 {
            let x = (0..5).fold(0u64, |x, i| {
                (x << 8) | u64::from(*k.get(bit / 8 + i).unwrap_or(&0))
            });
            ((x >> (8 - bit % 8)) & 0xFFFF_FFFF) as u32
        };
        let mut rows = Box::new([[0u32; 256]; MAX_HASH_INPUT]);
        for (i, row) in rows.iter_mut().enumerate() {
            // Input bit j of byte i (j = 0 the most significant) selects window(8i + j).
            let w: [u32; 8] = std::array::from_fn(|j| window(8 * i + j));
            for v in 1..256usize {
                let low = v.trailing_zeros() as usize;
                row[v] = row[v & (v - 1)] ^ w[7 - low];
            }
        }
        ToeplitzTable { key: k, rows }
    }

    /// The Toeplitz hash of `input` (at most [`MAX_HASH_INPUT`] bytes, as every [`HashInput`]).
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        debug_assert!(input.len() <= MAX_HASH_INPUT);
        input
            .iter()
            .zip(self.rows.iter())
            .fold(0, |h, (&b, row)| h ^ row[usize::from(b)])
    }
}

/// The table of the key in use, built again only when the key changes (the device's RSS key,
/// or HASH_CONFIG's while RSS is off).
#[derive(Debug, Default)]
pub(crate) struct ToeplitzCache(Option<ToeplitzTable>);

impl ToeplitzCache {
    /// The table of `key`.
    pub(crate) fn table(&mut self, key: &[u8; MAX_KEY_SIZE as usize]) -> &ToeplitzTable {
        if !matches!(&self.0, Some(t) if t.key == *key) {
            self.0 = Some(ToeplitzTable::new(key));
        }
        self.0.as_ref().expect("just built")
    }
}

/// The hash input a frame gives under some hash types, and which type it is (held inline:
/// the receive path hashes every frame and allocates nothing for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashInput {
    input: [u8; MAX_HASH_INPUT],
    len: u8,
    /// The VIRTIO_NET_RSS_HASH_TYPE_* bit used.
    pub hash_type: u32,
}

impl HashInput {
    fn new(addrs: &[u8], ports: Option<&[u8]>, hash_type: u32) -> HashInput {
        let mut input = [0u8; MAX_HASH_INPUT];
        input[..addrs.len()].copy_from_slice(addrs);
        let mut len = addrs.len();
        if let Some(p) = ports {
            input[len..len + 4].copy_from_slice(p);
            len += 4;
        }
        HashInput {
            input,
            len: len as u8,
            hash_type,
        }
    }

    /// Source address, destination address, then (for the TCP/UDP types) source port and
    /// destination port, in network byte order (5.1.6.4.3.1 / 5.1.6.4.3.2).
    pub fn bytes(&self) -> &[u8] {
        &self.input[..usize::from(self.len)]
    }
}

/// Where a frame is steered, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    /// By automatic receive steering (RSS off).
    Flow(u16),
    /// By its RSS hash through the indirection table.
    Hashed(u16),
    /// To unclassified_queue: no enabled hash type covers it.
    Unclassified(u16),
}

impl Steering {
    /// The receive queue pair.
    pub fn pair(self) -> u16 {
        match self {
            Steering::Flow(p) | Steering::Hashed(p) | Steering::Unclassified(p) => p,
        }
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Which hash type of `types` covers `frame`, and its input; `None`: unclassified.
/// The order is the spec's: for IPv4, TCPv4 (a TCP segment that is not a fragment), then
/// UDPv4, then IPv4 (5.1.6.4.3.1); the same for IPv6 (5.1.6.4.3.2), whose extension headers
/// (hop-by-hop, routing, destination options) are skipped; a fragment has no ports.
/// One 802.1Q tag is looked through.
pub fn hash_input(frame: &[u8], types: u32) -> Option<HashInput> {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut l3 = 14;
    let mut ethertype = be16(12)?;
    if ethertype == ETH_P_8021Q {
        ethertype = be16(16)?;
        l3 = 18;
    }
    let (addrs, proto, l4, [t_tcp, t_udp, t_ip]) = match ethertype {
        ETH_P_IPV4 => {
            let ihl = usize::from(*frame.get(l3)? & 0x0F) * 4;
            if frame.get(l3)? >> 4 != 4 || ihl < 20 || frame.len() < l3 + ihl {
                return None;
            }
            // More-fragments or a fragment offset: no transport header to hash.
            let fragment = be16(l3 + 6)? & 0x3FFF != 0;
            let proto = if fragment { None } else { Some(frame[l3 + 9]) };
            (
                &frame[l3 + 12..l3 + 20],
                proto,
                l3 + ihl,
                [T_TCPV4, T_UDPV4, T_IPV4],
            )
        }
        ETH_P_IPV6 => {
            if frame.len() < l3 + 40 || frame[l3] >> 4 != 6 {
                return None;
            }
            let (proto, l4) = ipv6_transport(frame, l3)?;
            (
                &frame[l3 + 8..l3 + 40],
                proto,
                l4,
                [T_TCPV6, T_UDPV6, T_IPV6],
            )
        }
        _ => return None,
    };
    let ports = frame.get(l4..l4 + 4);
    let with_ports = |hash_type| Some(HashInput::new(addrs, Some(ports?), hash_type));
    let l4_input = match proto {
        Some(IPPROTO_TCP) if types & t_tcp != 0 => with_ports(t_tcp),
        Some(IPPROTO_UDP) if types & t_udp != 0 => with_ports(t_udp),
        _ => None,
    };
    l4_input.or_else(|| (types & t_ip != 0).then(|| HashInput::new(addrs, None, t_ip)))
}

/// The transport protocol and its offset in an IPv6 packet at `l3`, past the extension
/// headers that carry no addresses; protocol `None` for a fragment.
fn ipv6_transport(frame: &[u8], l3: usize) -> Option<(Option<u8>, usize)> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DEST_OPTS: u8 = 60;
    let mut next = frame[l3 + 6];
    let mut at = l3 + 40;
    // A bounded walk: a hostile chain of headers cannot make the device loop.
    for _ in 0..8 {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                next = *frame.get(at)?;
                at += (usize::from(*frame.get(at + 1)?) + 1) * 8;
            }
            FRAGMENT => return Some((None, at)),
            proto => return Some((Some(proto), at)),
        }
    }
    Some((None, at))
}

impl RssConfig {
    /// The RSS_CONFIG command that sets this configuration with `max_tx_vq` (the inverse of
    /// [`parse_rss_config`]; the device-state stream carries it).
    pub fn encode(&self, max_tx_vq: u16) -> Vec<u8> {
        let mut c = Vec::with_capacity(11 + 2 * self.table.len() + usize::from(self.key_len));
        c.extend(self.hash_types.to_le_bytes());
        c.extend((self.table.len() as u16 - 1).to_le_bytes());
        c.extend(self.unclassified.to_le_bytes());
        self.table.iter().for_each(|q| c.extend(q.to_le_bytes()));
        c.extend(max_tx_vq.to_le_bytes());
        c.push(self.key_len);
        c.extend_from_slice(&self.key[..usize::from(self.key_len)]);
        c
    }

    /// The queue pair `frame` goes to.
    pub fn steer(&self, frame: &[u8], ignore_table: bool) -> Steering {
        self.steer_by(frame, ignore_table, |i| toeplitz(&self.key, i))
    }

    /// [`RssConfig::steer`] with the Toeplitz hash computed by `hash` (the device's table).
    pub(crate) fn steer_by(
        &self,
        frame: &[u8],
        ignore_table: bool,
        hash: impl FnOnce(&[u8]) -> u32,
    ) -> Steering {
        match hash_input(frame, self.hash_types) {
            Some(input) => {
                let hash = hash(input.bytes());
                Steering::Hashed(if ignore_table {
                    // Bug (quirk rss-ignores-indirection-table): hash modulo the pairs in the table.
                    let pairs = self.table.iter().max().map_or(1, |&m| m + 1);
                    (hash % u32::from(pairs)) as u16
                } else {
                    self.table[hash as usize & (self.table.len() - 1)]
                })
            }
            None => Steering::Unclassified(self.unclassified),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The key of Microsoft's "Verifying the RSS Hash Calculation" (also DPDK's and the
    /// Linux kernel's test key).
    const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    fn v4(src: &str, sport: u16, dst: &str, dport: u16) -> (Vec<u8>, Vec<u8>) {
        let mut ip = src.parse::<Ipv4Addr>().unwrap().octets().to_vec();
        ip.extend(dst.parse::<Ipv4Addr>().unwrap().octets());
        let mut l4 = ip.clone();
        l4.extend(sport.to_be_bytes());
        l4.extend(dport.to_be_bytes());
        (ip, l4)
    }

    fn v6(src: &str, sport: u16, dst: &str, dport: u16) -> (Vec<u8>, Vec<u8>) {
        let mut ip = src.parse::<Ipv6Addr>().unwrap().octets().to_vec();
        ip.extend(dst.parse::<Ipv6Addr>().unwrap().octets());
        let mut l4 = ip.clone();
        l4.extend(sport.to_be_bytes());
        l4.extend(dport.to_be_bytes());
        (ip, l4)
    }

    #[test]
    fn toeplitz_matches_the_published_ipv4_vectors() {
        // (source, source port, destination, destination port, IPv4 hash, TCPv4 hash)
        let cases = [
            (
                "66.9.149.187",
                2794,
                "161.142.100.80",
                1766,
                0x323e8fc2,
                0x51ccc178,
            ),
            (
                "199.92.111.2",
                14230,
                "65.69.140.83",
                4739,
                0xd718262a,
                0xc626b0ea,
            ),
            (
                "24.19.198.95",
                12898,
                "12.22.207.184",
                38024,
                0xd2d0a5de,
                0x5c2b394a,
            ),
            (
                "38.27.205.30",
                48228,
                "209.142.163.6",
                2217,
                0x82989176,
                0xafc7327f,
            ),
            (
                "153.39.163.191",
                44251,
                "202.188.127.2",
                1303,
                0x5d1809c5,
                0x10e828a2,
            ),
        ];
        let table = ToeplitzTable::new(&MS_KEY);
        for (s, sp, d, dp, ip_hash, tcp_hash) in cases {
            let (ip, l4) = v4(s, sp, d, dp);
            assert_eq!(toeplitz(&MS_KEY, &ip), ip_hash, "{s} -> {d}");
            assert_eq!(toeplitz(&MS_KEY, &l4), tcp_hash, "{s}:{sp} -> {d}:{dp}");
            assert_eq!(table.hash(&ip), ip_hash, "table: {s} -> {d}");
            assert_eq!(table.hash(&l4), tcp_hash, "table: {s}:{sp} -> {d}:{dp}");
        }
    }

    /// The table gives the bit-by-bit hash for any key (short ones zero-padded) and any input
    /// up to the longest.
    #[test]
    fn the_table_hashes_as_the_definition_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x7e);
        for round in 0..200 {
            let key: Vec<u8> = (0..rng.gen_range(0..=40)).map(|_| rng.gen()).collect();
            let table = ToeplitzTable::new(&key);
            for len in [0, 1, 8, 12, 32, 36, rng.gen_range(0..=MAX_HASH_INPUT)] {
                let input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                assert_eq!(
                    table.hash(&input),
                    toeplitz(&key, &input),
                    "round {round}: key {key:02x?}, input {input:02x?}"
                );
            }
        }
        let ones = ToeplitzTable::new(&[0xFF; 40]);
        assert_eq!(ones.hash(&[0x80]), u32::MAX);
        // The cache builds a table again only for another key.
        let mut cache = ToeplitzCache::default();
        let first: *const ToeplitzTable = cache.table(&MS_KEY);
        assert!(std::ptr::eq(first, cache.table(&MS_KEY)));
        let other = [7u8; 40];
        assert_eq!(
            cache.table(&other).hash(&[1, 2, 3]),
            toeplitz(&other, &[1, 2, 3])
        );
    }

    #[test]
    fn toeplitz_matches_the_published_ipv6_vectors() {
        let cases = [
            (
                "3ffe:2501:200:1fff::7",
                2794,
                "3ffe:2501:200:3::1",
                1766,
                0x2cc18cd5,
                0x40207d3d,
            ),
            (
                "3ffe:501:8::260:97ff:fe40:efab",
                14230,
                "ff02::1",
                4739,
                0x0f0c461c,
                0xdde51bbf,
            ),
            (
                "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
                44251,
                "fe80::200:f8ff:fe21:67cf",
                38024,
                0x4b61e985,
                0x02d1feef,
            ),
        ];
        for (s, sp, d, dp, ip_hash, tcp_hash) in cases {
            let (ip, l4) = v6(s, sp, d, dp);
            assert_eq!(toeplitz(&MS_KEY, &ip), ip_hash, "{s} -> {d}");
            assert_eq!(toeplitz(&MS_KEY, &l4), tcp_hash, "{s}:{sp} -> {d}:{dp}");
        }
    }

    #[test]
    fn a_short_key_reads_as_zero_padded() {
        let input = [0xFFu8; 12];
        let mut padded = [0u8; 40];
        padded[..16].copy_from_slice(&MS_KEY[..16]);
        assert_eq!(toeplitz(&MS_KEY[..16], &input), toeplitz(&padded, &input));
        assert_eq!(toeplitz(&[], &input), 0);
    }

    /// An Ethernet frame with `l3` after an optional VLAN tag.
    fn eth(ethertype: u16, vlan: bool, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if vlan {
            f.extend([0x81, 0x00, 0x00, 0x07]);
        }
        f.extend(ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn ipv4(proto: u8, frag: u16, src: [u8; 4], dst: [u8; 4], ports: [u16; 2]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 1];
        p.extend(frag.to_be_bytes());
        p.extend([64, proto, 0, 0]);
        p.extend(src);
        p.extend(dst);
        p.extend(ports[0].to_be_bytes());
        p.extend(ports[1].to_be_bytes());
        p.extend([0u8; 16]);
        p
    }

    fn ipv6(next: u8, ext: &[u8], ports: [u16; 2]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p.extend([0x20; 16]);
        p.extend([0x30; 16]);
        p.extend_from_slice(ext);
        p.extend(ports[0].to_be_bytes());
        p.extend(ports[1].to_be_bytes());
        p.extend([0u8; 16]);
        p
    }

    const ALL: u32 = SUPPORTED_HASH_TYPES;

    #[test]
    fn ipv4_classification_follows_the_spec_order() {
        let (s, d) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let tcp = eth(ETH_P_IPV4, false, &ipv4(6, 0, s, d, [1000, 80]));
        let got = hash_input(&tcp, ALL).unwrap();
        assert_eq!(got.hash_type, T_TCPV4);
        assert_eq!(got.bytes(), [10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 0, 80]);
        // TCP not enabled: the address hash.
        let got = hash_input(&tcp, T_IPV4 | T_UDPV4).unwrap();
        assert_eq!((got.hash_type, got.bytes().len()), (T_IPV4, 8));
        let udp = eth(ETH_P_IPV4, true, &ipv4(17, 0, s, d, [53, 53]));
        assert_eq!(hash_input(&udp, ALL).unwrap().hash_type, T_UDPV4);
        // A fragment (MF set, or an offset) has no ports.
        for frag in [0x2000, 0x0010] {
            let f = eth(ETH_P_IPV4, false, &ipv4(6, frag, s, d, [1, 2]));
            assert_eq!(hash_input(&f, ALL).unwrap().hash_type, T_IPV4);
            assert_eq!(hash_input(&f, T_TCPV4), None);
        }
        // ICMP with only TCP enabled, ARP, runts: unclassified.
        assert_eq!(
            hash_input(&eth(ETH_P_IPV4, false, &ipv4(1, 0, s, d, [0, 0])), T_TCPV4),
            None
        );
        assert_eq!(hash_input(&eth(0x0806, false, &[0; 28]), ALL), None);
        assert_eq!(hash_input(&tcp[..20], ALL), None);
        assert_eq!(hash_input(&[], ALL), None);
    }

    #[test]
    fn ipv6_classification_skips_extension_headers() {
        let tcp = eth(ETH_P_IPV6, false, &ipv6(6, &[], [1000, 80]));
        let got = hash_input(&tcp, ALL).unwrap();
        assert_eq!((got.hash_type, got.bytes().len()), (T_TCPV6, 36));
        assert_eq!(&got.bytes()[32..], &[0x03, 0xe8, 0, 80]);
        // Hop-by-hop (8 bytes) then UDP.
        let hbh = [17u8, 0, 0, 0, 0, 0, 0, 0];
        let udp = eth(ETH_P_IPV6, true, &ipv6(0, &hbh, [7, 9]));
        let got = hash_input(&udp, ALL).unwrap();
        assert_eq!(
            (got.hash_type, &got.bytes()[32..]),
            (T_UDPV6, &[0, 7, 0, 9][..])
        );
        // A fragment header: addresses only.
        let frag = [6u8, 0, 0, 1, 0, 0, 0, 0];
        let f = eth(ETH_P_IPV6, false, &ipv6(44, &frag, [1, 2]));
        assert_eq!(hash_input(&f, ALL).unwrap().hash_type, T_IPV6);
        // An endless chain of extension headers ends the walk without ports.
        let mut f = eth(ETH_P_IPV6, false, &ipv6(0, &[0u8; 80], [1, 2]));
        f.extend([0u8; 64]);
        assert_eq!(hash_input(&f, ALL).unwrap().hash_type, T_IPV6);
    }

    fn command(types: u32, table: &[u16], unclassified: u16, max_tx: u16, key: &[u8]) -> Vec<u8> {
        let mut c = types.to_le_bytes().to_vec();
        c.extend(((table.len() as u16).wrapping_sub(1)).to_le_bytes());
        c.extend(unclassified.to_le_bytes());
        table.iter().for_each(|q| c.extend(q.to_le_bytes()));
        c.extend(max_tx.to_le_bytes());
        c.push(key.len() as u8);
        c.extend_from_slice(key);
        c
    }

    #[test]
    fn rss_config_is_parsed_and_every_field_is_checked() {
        let bytes = command(ALL, &[0, 1, 2, 3], 1, 4, &MS_KEY);
        let ok = parse_rss_config(&bytes, 4).unwrap();
        let cfg = ok.config.unwrap();
        assert_eq!(cfg.encode(4), bytes, "encode is the inverse of parse");
        assert_eq!(ok.pairs, 4);
        assert_eq!(
            (cfg.table.as_slice(), cfg.unclassified),
            (&[0, 1, 2, 3][..], 1)
        );
        assert_eq!((cfg.key, cfg.key_len, cfg.hash_types), (MS_KEY, 40, ALL));
        // No key and no types: RSS off, the pairs still apply.
        let off = parse_rss_config(&command(0, &[0], 0, 2, &[]), 4).unwrap();
        assert_eq!((off.config, off.pairs), (None, 2));
        let err = |c: Vec<u8>| parse_rss_config(&c, 4).unwrap_err();
        assert_eq!(
            err(command(ALL, &[0, 1, 2], 0, 4, &MS_KEY)),
            RssError::TableSize { entries: 3 }
        );
        assert_eq!(
            err(command(ALL, &[0; 256], 0, 4, &MS_KEY)),
            RssError::TableSize { entries: 256 }
        );
        assert!(matches!(
            err(command(ALL, &[0, 4], 0, 4, &MS_KEY)),
            RssError::QueueOutOfRange {
                field: "indirection_table",
                value: 4,
                ..
            }
        ));
        assert!(matches!(
            err(command(ALL, &[0, 1], 9, 4, &MS_KEY)),
            RssError::QueueOutOfRange {
                field: "unclassified_queue",
                ..
            }
        ));
        assert_eq!(
            err(command(ALL, &[0], 0, 0, &MS_KEY)),
            RssError::MaxTxVq { value: 0, pairs: 4 }
        );
        assert_eq!(
            err(command(ALL, &[0], 0, 5, &MS_KEY)),
            RssError::MaxTxVq { value: 5, pairs: 4 }
        );
        assert_eq!(
            err(command(T_IPV4 | 64, &[0], 0, 1, &MS_KEY)),
            RssError::HashTypes { types: T_IPV4 | 64 }
        );
        assert_eq!(err(command(ALL, &[0], 0, 1, &[])), RssError::Key { len: 0 });
        assert_eq!(
            err(command(ALL, &[0], 0, 1, &[1; 41])),
            RssError::Key { len: 41 }
        );
        // Bytes after the key are ignored (Linux 6.12 sends one).
        let mut trailing = command(ALL, &[0, 1], 0, 2, &MS_KEY);
        trailing.push(0);
        let ok = parse_rss_config(&trailing, 4).unwrap();
        assert_eq!((ok.pairs, ok.config.unwrap().key), (2, MS_KEY));
        // Every truncation is refused, never a panic.
        let full = command(ALL, &[0, 1, 2, 3], 1, 4, &MS_KEY);
        for len in 0..full.len() {
            assert_eq!(
                err(full[..len].to_vec()),
                RssError::Short { len },
                "{len} bytes"
            );
        }
    }

    #[test]
    fn hash_config_is_parsed_and_checked() {
        let key: Vec<u8> = (1..=40).collect();
        let cmd = |types: u32, key: &[u8]| {
            let mut c = types.to_le_bytes().to_vec();
            c.extend([9u8; 8]); // reserved: not checked
            c.push(key.len() as u8);
            c.extend_from_slice(key);
            c
        };
        let h = parse_hash_config(&cmd(SUPPORTED_HASH_TYPES, &key))
            .unwrap()
            .unwrap();
        assert_eq!((h.hash_types, h.key_len), (SUPPORTED_HASH_TYPES, 40));
        assert_eq!(&h.key[..], &key[..]);
        assert_eq!(parse_hash_config(&h.encode()).unwrap(), Some(h.clone()));
        // Off: no key, no types.
        assert_eq!(parse_hash_config(&cmd(0, &[])).unwrap(), None);
        // Trailing bytes ignored.
        let mut long = cmd(T_IPV4, &key[..4]);
        long.push(0);
        assert!(parse_hash_config(&long).unwrap().is_some());
        let bad = [
            (cmd(1 << 6, &key), RssError::HashTypes { types: 1 << 6 }),
            (cmd(T_IPV4, &[]), RssError::Key { len: 0 }),
            (cmd(T_IPV4, &[7; 41]), RssError::Key { len: 41 }),
        ];
        for (c, e) in bad {
            assert_eq!(parse_hash_config(&c), Err(e));
        }
        let full = cmd(T_IPV4, &key);
        for n in 0..13 + 40 {
            assert_eq!(
                parse_hash_config(&full[..n]),
                Err(RssError::Short { len: n }),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn hash_report_names_the_type_used() {
        let key = MS_KEY;
        let (f, input) = v4("66.9.149.187", 2794, "161.142.100.80", 1766);
        let ip4 = |b: &[u8]| -> [u8; 4] { b.try_into().unwrap() };
        let tcp = eth(
            0x0800,
            false,
            &ipv4(6, 0, ip4(&f[..4]), ip4(&f[4..8]), [2794, 1766]),
        );
        let all = SUPPORTED_HASH_TYPES;
        assert_eq!(
            hash_report(&tcp, all, &key, false),
            (toeplitz(&key, &input), VIRTIO_NET_HASH_REPORT_TCPv4 as u16)
        );
        assert_eq!(
            hash_report(&tcp, T_IPV4, &key, false),
            (toeplitz(&key, &f[..8]), VIRTIO_NET_HASH_REPORT_IPv4 as u16)
        );
        // The quirk reports the L3 type for the 4-tuple hash.
        assert_eq!(
            hash_report(&tcp, all, &key, true),
            (toeplitz(&key, &input), VIRTIO_NET_HASH_REPORT_IPv4 as u16)
        );
        assert_eq!(hash_report(&tcp, T_IPV6, &key, false), (0, 0));
        let udp6 = eth(0x86dd, false, &ipv6(17, &[], [5, 6]));
        assert_eq!(
            hash_report(&udp6, all, &key, false).1,
            VIRTIO_NET_HASH_REPORT_UDPv6 as u16
        );
        assert_eq!(
            hash_report(&udp6, T_IPV6, &key, false).1,
            VIRTIO_NET_HASH_REPORT_IPv6 as u16
        );
        assert_eq!(hash_report(&[0u8; 60], all, &key, false), (0, 0), "not IP");
    }

    #[test]
    fn steering_uses_the_indirection_table_and_the_unclassified_queue() {
        let table: Vec<u16> = (0..128).map(|i| (i * 7 % 4) as u16).collect();
        let cfg = RssConfig {
            hash_types: ALL,
            table: table.clone(),
            unclassified: 3,
            key: MS_KEY,
            key_len: 40,
        };
        for port in 0..200u16 {
            let f = eth(
                ETH_P_IPV4,
                false,
                &ipv4(6, 0, [66, 9, 149, 187], [161, 142, 100, 80], [port, 80]),
            );
            let input = hash_input(&f, ALL).unwrap();
            let want = table[toeplitz(&MS_KEY, input.bytes()) as usize % 128];
            assert_eq!(cfg.steer(&f, false), Steering::Hashed(want));
        }
        assert_eq!(
            cfg.steer(&eth(0x0806, false, &[0; 28]), false),
            Steering::Unclassified(3)
        );
        // The quirk differs from the table for some flow.
        let differs = (0..200u16).any(|port| {
            let f = eth(
                ETH_P_IPV4,
                false,
                &ipv4(17, 0, [1, 2, 3, 4], [5, 6, 7, 8], [port, 9]),
            );
            cfg.steer(&f, true) != cfg.steer(&f, false)
        });
        assert!(differs);
    }
}
