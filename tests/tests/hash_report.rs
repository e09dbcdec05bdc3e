//! Hash reporting through the whole device (VIRTIO_NET_F_HASH_REPORT, virtio 1.2 5.1.6.4.3,
//! 5.1.6.5.6.4): with it negotiated both directions use the 20-byte virtio_net_hdr_v1_hash;
//! HASH_CONFIG (or RSS_CONFIG) sets what is reported; a refused command changes nothing;
//! VQ_PAIRS_SET and a reset turn it off; the configuration crosses a device-state migration.

use bar_registers::virtio::rss::SUPPORTED_HASH_TYPES;
use bar_registers::virtio::{bits, default_driver_features};
use device::net::rss::{hash_input, toeplitz};
use device::{Device, DeviceConfig};
use sim_harness::driver::hdr::NetHdr;
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::inet::{self, ACK};
use std::sync::Arc;

mod support;

/// VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG (virtio 1.2 5.1.6.5.6.4), as the spec
/// numbers them.
const MQ: u8 = 4;
const HASH_CONFIG: u8 = 2;
/// VIRTIO_NET_HASH_REPORT_TCPv4, _UDPv6, _IPv4.
const REPORT_TCPV4: u16 = 2;
const REPORT_UDPV6: u16 = 6;
const REPORT_IPV4: u16 = 1;

fn hash_features() -> u64 {
    (default_driver_features() | 1 << bits::HASH_REPORT) & !(1 << bits::RSS)
}

fn loopback(features: u64) -> (Arc<Device>, NetDriver) {
    let dev = Device::new(DeviceConfig::with_queue_pairs(2)).unwrap();
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            features,
            queue_pairs: 2,
            ..DriverOptions::default()
        },
    )
    .unwrap();
    drv.start().unwrap();
    (dev, drv)
}

fn hash_config(types: u32, key: &[u8]) -> Vec<u8> {
    let mut c = types.to_le_bytes().to_vec();
    c.extend([0u8; 8]);
    c.push(key.len() as u8);
    c.extend_from_slice(key);
    c
}

fn key() -> Vec<u8> {
    (0..40u8).map(|i| i.wrapping_mul(73) ^ 0x5a).collect()
}

/// A TCPv4 and a UDPv6 frame (the second with a NEEDS_CSUM header, so the 20-byte TX header
/// is read at the right offsets) and what comes back: (hash, frame) each.
/// (hash_value, hash_report) if the header had them, the frame received, the frame sent.
type Exchanged = (Option<(u32, u16)>, Vec<u8>, Vec<u8>);

fn exchange(drv: &mut NetDriver) -> Vec<Exchanged> {
    let mac = drv.mac().unwrap();
    let (_, tcp4) = inet::build(mac, mac, true, true, b"hash me", 1, ACK, 9);
    let (lay6, udp6) = inet::build(mac, mac, false, false, b"and me", 0, 0, 0);
    assert!(drv.send_with_hdr(0, &NetHdr::default(), &tcp4).unwrap());
    let h = NetHdr::csum(lay6.l4 as u16, lay6.csum_offset as u16);
    assert!(drv.send_with_hdr(0, &h, &udp6).unwrap());
    let got = drv.recv_hashed(0).unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        inet::l4_checksum_ok(&got[1].2, &lay6),
        "NEEDS_CSUM honoured"
    );
    vec![
        (got[0].1, got[0].2.clone(), tcp4),
        (got[1].1, got[1].2.clone(), udp6),
    ]
}

fn expected(frame: &[u8], types: u32, key: &[u8]) -> u32 {
    toeplitz(key, hash_input(frame, types).unwrap().bytes())
}

#[test]
fn hash_config_sets_what_every_20_byte_header_reports() {
    let (dev, mut drv) = loopback(hash_features());
    assert_eq!(drv.hdr_len(), 20);
    // Nothing configured: NONE, 0.
    for (hash, got, sent) in exchange(&mut drv) {
        assert_eq!(hash, Some((0, 0)));
        assert_eq!(got.len(), sent.len());
    }
    let k = key();
    assert_eq!(
        drv.ctrl_raw(MQ, HASH_CONFIG, &hash_config(SUPPORTED_HASH_TYPES, &k))
            .unwrap(),
        0
    );
    let x = exchange(&mut drv);
    assert_eq!(
        x[0].0,
        Some((expected(&x[0].2, SUPPORTED_HASH_TYPES, &k), REPORT_TCPV4))
    );
    assert_eq!(x[1].0.unwrap().1, REPORT_UDPV6);
    assert_eq!(
        x[1].0.unwrap().0,
        expected(&x[1].1, SUPPORTED_HASH_TYPES, &k)
    );
    assert_eq!(dev.counters().rx_hash_reported, 2);

    // A refused command (an unsupported type) leaves the configuration as it was.
    assert_eq!(
        drv.ctrl_raw(MQ, HASH_CONFIG, &hash_config(1 << 12, &k))
            .unwrap(),
        1
    );
    assert_eq!(
        drv.ctrl_raw(MQ, HASH_CONFIG, &hash_config(1, &[])).unwrap(),
        1,
        "no key"
    );
    assert_eq!(
        drv.ctrl_raw(MQ, HASH_CONFIG, &[1, 0, 0]).unwrap(),
        1,
        "short"
    );
    assert_eq!(exchange(&mut drv)[0].0.unwrap().1, REPORT_TCPV4);

    // Addresses only: the TCP frame reports IPv4.
    let v4 = 1u32;
    assert_eq!(
        drv.ctrl_raw(MQ, HASH_CONFIG, &hash_config(v4, &k)).unwrap(),
        0
    );
    let x = exchange(&mut drv);
    assert_eq!(x[0].0, Some((expected(&x[0].2, v4, &k), REPORT_IPV4)));
    assert_eq!(x[1].0, Some((0, 0)), "IPv6 not enabled");

    // VQ_PAIRS_SET turns it off (as QEMU's virtio_net_handle_mq does).
    drv.ctrl(MQ, 0, &2u16.to_le_bytes()).unwrap();
    assert_eq!(exchange(&mut drv)[0].0, Some((0, 0)));
}

#[test]
fn without_hash_report_the_header_stays_12_bytes_and_hash_config_is_refused() {
    let (_dev, mut drv) = loopback(default_driver_features() & !(1 << bits::RSS));
    assert_eq!(drv.hdr_len(), 12);
    assert_eq!(
        drv.ctrl_raw(MQ, HASH_CONFIG, &hash_config(1, &key()))
            .unwrap(),
        1
    );
    for (hash, got, sent) in exchange(&mut drv) {
        assert_eq!(hash, None);
        assert_eq!(got.len(), sent.len());
    }
}

#[test]
fn rss_config_sets_the_hash_when_rss_is_negotiated_too() {
    let (_dev, mut drv) = loopback(default_driver_features() | 1 << bits::HASH_REPORT);
    let mut k = [0u8; 40];
    k.copy_from_slice(&key());
    let cfg = device::net::rss::RssConfig {
        hash_types: SUPPORTED_HASH_TYPES,
        table: vec![0; 8],
        unclassified: 0,
        key: k,
        key_len: 40,
    };
    assert_eq!(drv.set_rss(&cfg, 1).unwrap(), 0);
    let x = exchange(&mut drv);
    assert_eq!(
        x[0].0,
        Some((expected(&x[0].2, SUPPORTED_HASH_TYPES, &k), REPORT_TCPV4))
    );
}

#[test]
fn the_hash_configuration_crosses_a_migration_and_a_reset_clears_it() {
    let (a, mut drv) = loopback(hash_features());
    let k = key();
    assert_eq!(
        drv.ctrl_raw(MQ, HASH_CONFIG, &hash_config(SUPPORTED_HASH_TYPES, &k))
            .unwrap(),
        0
    );
    a.pause();
    let state = a.save_state();
    assert!(state.windows(4).any(|w| w == b"HASH"));
    let b = Device::new(DeviceConfig::with_queue_pairs(2)).unwrap();
    b.set_loopback();
    support::migrate_driver(&mut drv, &b, &state);
    let x = exchange(&mut drv);
    assert_eq!(
        x[0].0.unwrap().1,
        REPORT_TCPV4,
        "still on after the migration"
    );

    // A device without hash reporting configured writes no HASH section.
    let (c, _d2) = loopback(default_driver_features() & !(1 << bits::RSS));
    c.pause();
    let plain = c.save_state();
    assert!(!plain.windows(4).any(|w| w == b"HASH"));

    drv.reset().unwrap();
    assert!(
        !b.save_state().windows(4).any(|w| w == b"HASH"),
        "reset clears it"
    );
}
