//! The `hash-report` group: VIRTIO_NET_F_HASH_REPORT (virtio 1.2 5.1.6.4.3, "Hash reporting
//! for incoming packets"; 5.1.6.5.6.4, VIRTIO_NET_CTRL_MQ_HASH_CONFIG). With it negotiated
//! every header is a 20-byte `virtio_net_hdr_v1_hash`; the validator sends UDP and TCP over
//! IPv4 and IPv6 and ARP through the loopback and checks each frame's `hash_value` (the
//! Toeplitz hash of the input 5.1.6.4.3 selects, under the key the driver set) and
//! `hash_report` (the type that input belongs to, or VIRTIO_NET_HASH_REPORT_NONE):
//! - before any configuration: NONE everywhere;
//! - after HASH_CONFIG with every supported type and a random key, then with the address
//!   types only (TCP/UDP frames then report their IP version's type);
//! - a HASH_CONFIG with an unsupported type is refused (SHOULD) and the last one stays;
//! - with VIRTIO_NET_F_RSS too, RSS_CONFIG's key and types are the ones reported.

use super::checks::{first_few, negotiated_all, started, Findings};
use super::report::Finding;
use super::rss::{flow_frame, Kind, KINDS};
use super::{Session, ValidateOptions};
use crate::driver::{DriverError, DriverOptions, NetDriver};
use bar_registers::virtio::rss::SUPPORTED_HASH_TYPES;
use bar_registers::virtio::{bits, default_driver_features};
use device::net::rss::{hash_input, toeplitz, RssConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_net as vn;

const G: &str = "hash-report";
/// Frames of each kind per round.
const PER_KIND: u32 = 12;
/// How long frames may take to come back after the doorbell (as `roundtrip` in checks.rs).
const IDLE: Duration = Duration::from_millis(500);

/// The report a frame of `kind` must carry with `types` enabled: the validator's own reading
/// of 5.1.6.4.3 (TCP/UDP 4-tuple when that type is on, else the address type, else NONE).
fn expected_report(kind: Kind, types: u32) -> u16 {
    let (l4, l4_report, l3, l3_report) = match kind {
        Kind::Tcp4 => (
            vn::VIRTIO_NET_RSS_HASH_TYPE_TCPv4,
            vn::VIRTIO_NET_HASH_REPORT_TCPv4,
            vn::VIRTIO_NET_RSS_HASH_TYPE_IPv4,
            vn::VIRTIO_NET_HASH_REPORT_IPv4,
        ),
        Kind::Udp4 => (
            vn::VIRTIO_NET_RSS_HASH_TYPE_UDPv4,
            vn::VIRTIO_NET_HASH_REPORT_UDPv4,
            vn::VIRTIO_NET_RSS_HASH_TYPE_IPv4,
            vn::VIRTIO_NET_HASH_REPORT_IPv4,
        ),
        Kind::Tcp6 => (
            vn::VIRTIO_NET_RSS_HASH_TYPE_TCPv6,
            vn::VIRTIO_NET_HASH_REPORT_TCPv6,
            vn::VIRTIO_NET_RSS_HASH_TYPE_IPv6,
            vn::VIRTIO_NET_HASH_REPORT_IPv6,
        ),
        Kind::Udp6 => (
            vn::VIRTIO_NET_RSS_HASH_TYPE_UDPv6,
            vn::VIRTIO_NET_HASH_REPORT_UDPv6,
            vn::VIRTIO_NET_RSS_HASH_TYPE_IPv6,
            vn::VIRTIO_NET_HASH_REPORT_IPv6,
        ),
        Kind::Arp => return vn::VIRTIO_NET_HASH_REPORT_NONE as u16,
    };
    if types & l4 != 0 {
        l4_report as u16
    } else if types & l3 != 0 {
        l3_report as u16
    } else {
        vn::VIRTIO_NET_HASH_REPORT_NONE as u16
    }
}

/// The hash value a frame must carry: the Toeplitz hash of its input under `key` (0 when no
/// type covers it).
fn expected_value(frame: &[u8], types: u32, key: &[u8]) -> u32 {
    hash_input(frame, types).map_or(0, |i| toeplitz(key, i.bytes()))
}

/// Mismatches of one round: (value, type) problems, one line each.
struct Round {
    values: Vec<String>,
    types: Vec<String>,
    missing: usize,
}

/// Sends PER_KIND frames of every kind and checks the hash of each that comes back.
fn round(
    d: &mut NetDriver,
    types: u32,
    key: &[u8],
    rng: &mut SmallRng,
    seq0: u32,
) -> Result<Round, DriverError> {
    let mut sent = Vec::new();
    for i in 0..PER_KIND {
        for (k, &kind) in KINDS.iter().enumerate() {
            let seq = seq0 + i * KINDS.len() as u32 + k as u32;
            sent.push((kind, flow_frame(kind, seq, rng)));
        }
    }
    for chunk in sent.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|(_, f)| f.as_slice()).collect();
        let mut n = 0;
        let t0 = Instant::now();
        while n < refs.len() && t0.elapsed() < Duration::from_secs(2) {
            n += d.send(0, &refs[n..])?;
        }
    }
    let mut got = Vec::new();
    let mut last = Instant::now();
    while got.len() < sent.len() && last.elapsed() < IDLE {
        let g = d.recv_hashed(0)?;
        if g.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        last = Instant::now();
        got.extend(g);
    }
    let mut r = Round {
        values: Vec::new(),
        types: Vec::new(),
        missing: 0,
    };
    for (kind, frame) in &sent {
        // Matched by content: the frames are unique (a sequence number in the payload).
        let Some((_, hash, _)) = got.iter().find(|(_, _, f)| f.starts_with(frame)) else {
            r.missing += 1;
            continue;
        };
        let Some((value, report)) = *hash else {
            r.types.push(format!(
                "{kind:?}: a 12-byte header, not virtio_net_hdr_v1_hash"
            ));
            continue;
        };
        let (want_v, want_r) = (
            expected_value(frame, types, key),
            expected_report(*kind, types),
        );
        if report != want_r {
            r.types
                .push(format!("{kind:?}: hash_report {report}, expected {want_r}"));
        }
        if value != want_v {
            r.values.push(format!(
                "{kind:?}: hash_value {value:#010x}, expected {want_v:#010x}"
            ));
        }
    }
    Ok(r)
}

/// A round's findings.
fn report(f: &mut Findings, what: &str, r: &Round) {
    let n = PER_KIND as usize * KINDS.len();
    f.push(Finding::check(
        G,
        &format!("{what}: frames back"),
        true,
        r.missing == 0,
        &format!("the {n} frames sent"),
        &format!("{} missing", r.missing),
        "TX queue 0 -> loopback -> RX queue 0",
    ));
    f.push(Finding::check(
        G,
        &format!("{what}: hash_report"),
        true,
        r.types.is_empty(),
        "the type of the input the enabled hash types select (5.1.6.4.3), NONE when none does",
        &if r.types.is_empty() {
            "all right".into()
        } else {
            first_few(&r.types)
        },
        "RX virtio_net_hdr_v1_hash hash_report",
    ));
    f.push(Finding::check(
        G,
        &format!("{what}: hash_value"),
        true,
        r.values.is_empty(),
        "the Toeplitz hash of that input under the driver's key (0 with NONE)",
        &if r.values.is_empty() {
            "all right".into()
        } else {
            first_few(&r.values)
        },
        "RX virtio_net_hdr_v1_hash hash_value",
    ));
}

/// struct virtio_net_hash_config (5.1.6.5.6.4).
fn hash_config(types: u32, key: &[u8]) -> Vec<u8> {
    let mut c = types.to_le_bytes().to_vec();
    c.extend([0u8; 8]);
    c.push(key.len() as u8);
    c.extend_from_slice(key);
    c
}

/// The group body.
pub(super) fn hash_report(
    s: &Session,
    _o: &ValidateOptions,
    f: &mut Findings,
) -> Result<(), DriverError> {
    // Runs only when the device offers HASH_REPORT (checks::GROUP_FEATURES gates it). Without
    // RSS, as a driver that only wants the hash (Linux virtio_net then uses HASH_CONFIG).
    let features = (default_driver_features() | 1 << bits::HASH_REPORT) & !(1 << bits::RSS);
    let mut d = started(
        s,
        DriverOptions {
            features,
            queue_size: 256,
            ..DriverOptions::default()
        },
    )?;
    if !negotiated_all(
        &mut d,
        f,
        G,
        1 << bits::HASH_REPORT,
        "VIRTIO_NET_F_HASH_REPORT negotiated",
        "FEATURES_OK with HASH_REPORT",
    )? {
        return Ok(());
    }
    let mut rng = SmallRng::seed_from_u64(0x4841_5348);
    let r = round(&mut d, 0, &[], &mut rng, 0)?;
    report(f, "no configuration", &r);

    let (mq, cmd) = (
        vn::VIRTIO_NET_CTRL_MQ as u8,
        vn::VIRTIO_NET_CTRL_MQ_HASH_CONFIG as u8,
    );
    let key: Vec<u8> = (0..40).map(|_| rng.gen()).collect();
    let ack = d.ctrl_raw(mq, cmd, &hash_config(SUPPORTED_HASH_TYPES, &key))?;
    f.push(Finding::check(
        G,
        "HASH_CONFIG accepted",
        true,
        ack == 0,
        "VIRTIO_NET_OK for the supported hash types and a 40-byte key",
        &format!("ack {ack}"),
        "control queue, VIRTIO_NET_CTRL_MQ_HASH_CONFIG",
    ));
    let r = round(&mut d, SUPPORTED_HASH_TYPES, &key, &mut rng, 1000)?;
    report(f, "every type", &r);

    let l3 = vn::VIRTIO_NET_RSS_HASH_TYPE_IPv4 | vn::VIRTIO_NET_RSS_HASH_TYPE_IPv6;
    d.ctrl_raw(mq, cmd, &hash_config(l3, &key))?;
    let r = round(&mut d, l3, &key, &mut rng, 2000)?;
    report(f, "address types only", &r);

    // A type the device does not support (5.1.4 supported_hash_types): refused, and the last
    // configuration stays.
    let bad_type = 1u32 << 31;
    let ack = d.ctrl_raw(mq, cmd, &hash_config(l3 | bad_type, &key))?;
    f.push(Finding::check(
        G,
        "HASH_CONFIG with an unsupported type refused",
        false,
        ack != 0,
        "VIRTIO_NET_ERR (the type is not in supported_hash_types)",
        &format!("ack {ack}"),
        "control queue, VIRTIO_NET_CTRL_MQ_HASH_CONFIG",
    ));
    if ack != 0 {
        let r = round(&mut d, l3, &key, &mut rng, 3000)?;
        report(f, "after a refused HASH_CONFIG", &r);
    }
    d.reset()?;
    drop(d);

    // With RSS: RSS_CONFIG's key and types are the ones reported (every table entry pair 0,
    // so the frames come back where the validator reads).
    let mut d = started(
        s,
        DriverOptions {
            features: default_driver_features() | 1 << bits::HASH_REPORT,
            queue_size: 256,
            ..DriverOptions::default()
        },
    )?;
    if d.features & (1 << bits::RSS) == 0 {
        f.push(Finding::not_run(
            G,
            "hash report with RSS_CONFIG",
            "VIRTIO_NET_F_RSS not offered",
        ));
        return d.reset();
    }
    let mut k = [0u8; 40];
    rng.fill(&mut k[..]);
    let types = SUPPORTED_HASH_TYPES & !vn::VIRTIO_NET_RSS_HASH_TYPE_UDPv6;
    let cfg = RssConfig {
        hash_types: types,
        table: vec![0; 16],
        unclassified: 0,
        key: k,
        key_len: 40,
    };
    let ack = d.set_rss(&cfg, 1)?;
    f.push(Finding::check(
        G,
        "RSS_CONFIG accepted",
        true,
        ack == 0,
        "VIRTIO_NET_OK",
        &format!("ack {ack}"),
        "control queue, VIRTIO_NET_CTRL_MQ_RSS_CONFIG",
    ));
    let r = round(&mut d, types, &k, &mut rng, 4000)?;
    report(f, "RSS configuration", &r);
    d.reset()
}
