//! The `rss` group: receive-side scaling (virtio 1.2 5.1.6.5.7). The device's RSS limits in
//! config space (5.1.4.1), then steering checked frame by frame: the validator programs a
//! random key and indirection table with RSS_CONFIG, loops flows of every hash type (and
//! frames no hash type covers) through the device, and computes where each must land from the
//! Toeplitz hash itself (the reference implementation in the device crate, verified against
//! Microsoft's published RSS vectors).

use super::checks::{driver, started, Findings, MAC};
use super::locate;
use super::report::Finding;
use super::{Session, ValidateOptions};
use crate::driver::{DriverError, DriverOptions, NetDriver};
use bar_registers::virtio::rss::SUPPORTED_HASH_TYPES;
use bar_registers::virtio::{bits, net_cfg};
use device::net::rss::{hash_input, toeplitz, RssConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const G: &str = "rss";
/// Frames per steering check.
const FRAMES: usize = 240;
/// Queue pairs the group uses at most.
const MAX_PAIRS: u16 = 4;

/// The group body.
pub(super) fn rss(s: &Session, o: &ValidateOptions, f: &mut Findings) -> Result<(), DriverError> {
    let d = driver(s, DriverOptions::default())?;
    let offered = d.device_features_probe()?;
    if offered & (1 << bits::RSS) == 0 {
        f.push(Finding::not_run(
            G,
            "group",
            &super::checks::why_not_offered(o, bits::RSS),
        ));
        return d.reset();
    }
    let max_pairs = d.net_config(net_cfg::MAX_VIRTQUEUE_PAIRS, 2)? as u16;
    let key_size = d.net_config(net_cfg::RSS_MAX_KEY_SIZE, 1)? as u8;
    let table_max = d.net_config(net_cfg::RSS_MAX_INDIRECTION_TABLE_LENGTH, 2)? as u16;
    let types = d.net_config(net_cfg::SUPPORTED_HASH_TYPES, 4)? as u32;
    d.reset()?;
    drop(d);
    let limit = |name: &str, ok: bool, want: &str, got: String, field| {
        Finding::check(
            G,
            name,
            true,
            ok,
            want,
            &got,
            &locate::reg("device_cfg", field),
        )
    };
    f.push(limit(
        "rss_max_key_size is at least 40",
        key_size >= 40,
        ">= 40 (virtio 1.2 5.1.4.1)",
        key_size.to_string(),
        net_cfg::RSS_MAX_KEY_SIZE,
    ));
    f.push(limit(
        "rss_max_indirection_table_length is at least 128",
        table_max >= 128,
        ">= 128 (virtio 1.2 5.1.4.1)",
        table_max.to_string(),
        net_cfg::RSS_MAX_INDIRECTION_TABLE_LENGTH,
    ));
    let usable = types & SUPPORTED_HASH_TYPES;
    f.push(Finding::check(
        G,
        "supported_hash_types names an IPv4 or IPv6 hash type",
        false,
        usable != 0,
        "at least one of IPv4, TCPv4, UDPv4, IPv6, TCPv6, UDPv6 (virtio 1.2 5.1.6.4.3)",
        &format!("{types:#x}"),
        &locate::reg("device_cfg", net_cfg::SUPPORTED_HASH_TYPES),
    ));
    if max_pairs < 2 || offered & (1 << bits::MQ) == 0 {
        f.push(Finding::not_run(
            G,
            "steering",
            &format!(
                "needs VIRTIO_NET_F_MQ and 2 or more queue pairs; max_virtqueue_pairs is {max_pairs}"
            ),
        ));
        return Ok(());
    }
    if usable == 0 || key_size == 0 || table_max == 0 {
        f.push(Finding::not_run(
            G,
            "steering",
            "the device's RSS limits leave nothing to configure",
        ));
        return Ok(());
    }
    let pairs = max_pairs.min(MAX_PAIRS);
    let mut d = started(
        s,
        DriverOptions {
            queue_pairs: pairs,
            queue_size: 64,
            ..DriverOptions::default()
        },
    )?;
    let mut rng = SmallRng::seed_from_u64(0x5255_5353);
    // The longest table the device takes, up to 128: a power of two (5.1.6.5.7.1).
    let entries = 1usize << usize::from(table_max.min(128)).ilog2();
    let mut key = [0u8; 40];
    rng.fill(&mut key[..]);
    let key_len = key_size.min(40);
    key[usize::from(key_len)..].fill(0);
    // Every pair appears, in an order no modulo can reproduce.
    let mut table: Vec<u16> = (0..entries)
        .map(|i| (i % usize::from(pairs)) as u16)
        .collect();
    for i in (1..table.len()).rev() {
        table.swap(i, rng.gen_range(0..=i));
    }
    let cfg = RssConfig {
        hash_types: usable,
        table,
        unclassified: pairs - 1,
        key,
        key_len,
    };
    let ack = d.set_rss(&cfg, pairs)?;
    f.push(Finding::check(
        G,
        "RSS_CONFIG accepted",
        true,
        ack == 0,
        "VIRTIO_NET_OK (virtio 1.2 5.1.6.5.7.1)",
        &format!("ack {ack}"),
        "control queue, VIRTIO_NET_CTRL_MQ_RSS_CONFIG",
    ));
    if ack != 0 {
        return d.reset();
    }
    steering_finding(
        f,
        &mut d,
        &cfg,
        pairs,
        &mut rng,
        "every frame lands on the queue its Toeplitz hash and the indirection table select",
    )?;

    // A new table takes effect for the next frame.
    let mut cfg2 = cfg.clone();
    cfg2.table.iter_mut().for_each(|q| *q = (*q + 1) % pairs);
    cfg2.unclassified = 0;
    let ack = d.set_rss(&cfg2, pairs)?;
    if ack == 0 {
        steering_finding(
            f,
            &mut d,
            &cfg2,
            pairs,
            &mut rng,
            "a new indirection table and unclassified_queue take effect",
        )?;
    } else {
        f.push(Finding::fail(
            G,
            "a new indirection table and unclassified_queue take effect",
            true,
            "VIRTIO_NET_OK",
            &format!("ack {ack}"),
            "control queue, VIRTIO_NET_CTRL_MQ_RSS_CONFIG",
        ));
    }

    // A malformed configuration (an indirection table of 3 entries, 5.1.6.5.7.1) is refused,
    // and the last good one stays.
    let mut bad = cfg2.clone();
    bad.table.truncate(3);
    let ack = d.set_rss(&bad, pairs)?;
    f.push(Finding::check(
        G,
        "an RSS_CONFIG with a 3-entry indirection table is refused",
        false,
        ack != 0,
        "VIRTIO_NET_ERR (the table length must be a power of two)",
        &format!("ack {ack}"),
        "control queue, VIRTIO_NET_CTRL_MQ_RSS_CONFIG",
    ));
    steering_finding(
        f,
        &mut d,
        &cfg2,
        pairs,
        &mut rng,
        "after a refused RSS_CONFIG the last accepted configuration still steers",
    )?;
    d.reset()
}

/// The kinds of frame sent: each hash type's flows, and ARP (no hash type covers it).
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Udp4,
    Tcp4,
    Udp6,
    Tcp6,
    Arp,
}

pub(super) const KINDS: [Kind; 5] = [Kind::Udp4, Kind::Tcp4, Kind::Udp6, Kind::Tcp6, Kind::Arp];

/// Length of every frame the group sends.
const FRAME_LEN: usize = 96;

/// A frame of `kind` with random addresses and ports, unique by `seq` (in its payload),
/// [`FRAME_LEN`] bytes long.
pub(super) fn flow_frame(kind: Kind, seq: u32, rng: &mut SmallRng) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend([0x02, 0, 0, 0, 0x52, 0x53]);
    match kind {
        Kind::Udp4 | Kind::Tcp4 => {
            let proto = if matches!(kind, Kind::Tcp4) { 6 } else { 17 };
            f.extend([0x08, 0x00]);
            f.extend([0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, proto, 0, 0]);
            f.extend([10, rng.gen(), rng.gen(), rng.gen()]);
            f.extend([10, rng.gen(), rng.gen(), rng.gen()]);
            f.extend(rng.gen::<[u8; 4]>());
        }
        Kind::Udp6 | Kind::Tcp6 => {
            let proto = if matches!(kind, Kind::Tcp6) { 6 } else { 17 };
            f.extend([0x86, 0xDD]);
            f.extend([0x60, 0, 0, 0, 0, 40, proto, 64]);
            f.extend([0xfd; 2]);
            f.extend(rng.gen::<[u8; 14]>());
            f.extend([0xfd; 2]);
            f.extend(rng.gen::<[u8; 14]>());
            f.extend(rng.gen::<[u8; 4]>());
        }
        Kind::Arp => {
            f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
            f.extend([0x02, 0, 0, 0, 0x52, 0x53, 10, 0, 0, 1]);
            f.extend([0; 6]);
            f.extend([10, 0, 0, rng.gen()]);
        }
    }
    f.extend(seq.to_be_bytes());
    f.resize(FRAME_LEN, 0xA5);
    f
}

/// Where a frame must land: the validator's own reading of 5.1.6.4.3 and 5.1.6.5.7.
fn expected_pair(cfg: &RssConfig, frame: &[u8]) -> (u16, String) {
    match hash_input(frame, cfg.hash_types) {
        Some(input) => {
            let hash = toeplitz(&cfg.key[..usize::from(cfg.key_len)], input.bytes());
            let slot = hash as usize & (cfg.table.len() - 1);
            (
                cfg.table[slot],
                format!(
                    "hash type {:#x}, hash {hash:#010x}, indirection_table[{slot}]",
                    input.hash_type
                ),
            )
        }
        None => (cfg.unclassified, "no hash type: unclassified_queue".into()),
    }
}

/// What arrived where, against where each frame must land.
struct Tally {
    want: HashMap<Vec<u8>, (u16, String)>,
    right: usize,
    wrong: usize,
    unknown: usize,
    first: Option<String>,
    per_pair: Vec<usize>,
}

impl Tally {
    /// Takes what every pair received; whether anything came.
    fn receive(&mut self, d: &mut NetDriver) -> Result<bool, DriverError> {
        let mut any = false;
        for p in 0..self.per_pair.len() as u16 {
            for got in d.recv(p)? {
                any = true;
                self.per_pair[usize::from(p)] += 1;
                // Frames are told apart by their first FRAME_LEN bytes: whether the used
                // length is exact is ring-layout-split's check, not this group's.
                match got.get(..FRAME_LEN).and_then(|k| self.want.remove(k)) {
                    Some((q, _)) if q == p => self.right += 1,
                    Some((q, why)) => {
                        self.wrong += 1;
                        self.first.get_or_insert_with(|| {
                            format!("a frame for pair {q} ({why}) arrived on pair {p}")
                        });
                    }
                    None => self.unknown += 1,
                }
            }
        }
        Ok(any)
    }
}

/// Sends [`FRAMES`] frames of every kind on pair 0 and records, as finding `name`, whether
/// each arrived on the pair `cfg` selects.
fn steering_finding(
    f: &mut Findings,
    d: &mut NetDriver,
    cfg: &RssConfig,
    pairs: u16,
    rng: &mut SmallRng,
    name: &str,
) -> Result<(), DriverError> {
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| flow_frame(KINDS[i % KINDS.len()], i as u32, rng))
        .collect();
    let mut t = Tally {
        want: frames
            .iter()
            .map(|fr| (fr.clone(), expected_pair(cfg, fr)))
            .collect(),
        right: 0,
        wrong: 0,
        unknown: 0,
        first: None,
        per_pair: vec![0; usize::from(pairs)],
    };
    for chunk in frames.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let mut sent = 0;
        let start = Instant::now();
        while sent < refs.len() && start.elapsed() < Duration::from_secs(2) {
            sent += d.send(0, &refs[sent..])?;
            t.receive(d)?;
        }
    }
    // Wait for the rest, until 500 ms pass with nothing new (a device may finish after the
    // doorbell write returned).
    let mut idle = Instant::now();
    while !t.want.is_empty() && idle.elapsed() < Duration::from_millis(500) {
        if t.receive(d)? {
            idle = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let missing = t.want.len();
    f.push(Finding::check(
        G,
        name,
        true,
        t.right == FRAMES && t.wrong == 0 && t.unknown == 0,
        &format!("{FRAMES} frames (UDP/TCP over IPv4/IPv6, ARP) each on its selected pair"),
        &format!(
            "{} right, {} on another pair, {missing} missing, {} not sent; per pair {:?}{}",
            t.right,
            t.wrong,
            t.unknown,
            t.per_pair,
            t.first.map_or(String::new(), |e| format!("; first: {e}"))
        ),
        "RX queues of every pair; control queue, VIRTIO_NET_CTRL_MQ_RSS_CONFIG",
    ));
    Ok(())
}
