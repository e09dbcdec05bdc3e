//! Checksum and segmentation offloads through the model (virtio 1.2 5.1.6.2): frames sent with
//! a virtio-net header over loopback come back as the wire would carry them, checked with the
//! harness's own checksum code; every bad header is a counted drop and the device goes on.

use bar_registers::virtio::{bits, default_driver_features};
use device::{Device, DeviceConfig, Quirk};
use sim_harness::driver::hdr::{NetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::inet::{self, ACK};
use std::sync::Arc;

fn loopback(features: u64) -> (Arc<Device>, NetDriver) {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            features,
            ..DriverOptions::default()
        },
    )
    .unwrap();
    drv.start().unwrap();
    (dev, drv)
}

fn round_trip(drv: &mut NetDriver, hdr: &NetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
    assert!(drv.send_with_hdr(0, hdr, frame).unwrap(), "TX ring full");
    drv.recv(0).unwrap()
}

#[test]
fn tx_checksum_even_and_odd_tcp_and_udp_ipv4_and_ipv6() {
    let (dev, mut drv) = loopback(default_driver_features());
    let mac = drv.mac().unwrap();
    let mut n = 0;
    for v4 in [true, false] {
        for tcp in [true, false] {
            for len in [0usize, 1, 2, 33, 64, 1001, 1400] {
                let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) | 1).collect();
                let (lay, f) = inet::build(mac, mac, v4, tcp, &payload, 77, ACK, 5);
                let hdr = NetHdr::csum(lay.l4 as u16, lay.csum_offset as u16);
                let got = round_trip(&mut drv, &hdr, &f);
                assert_eq!(got.len(), 1, "v4 {v4} tcp {tcp} len {len}");
                let g = &got[0];
                assert!(inet::l4_checksum_ok(g, &lay), "v4 {v4} tcp {tcp} len {len}");
                let at = lay.l4 + lay.csum_offset;
                assert_eq!(&g[..at], &f[..at]);
                assert_eq!(&g[at + 2..], &f[at + 2..]);
                n += 1;
            }
        }
    }
    let c = dev.counters();
    assert_eq!(c.tx_csum, n);
    assert_eq!(c.tx_bad_hdr_total(), 0);
}

#[test]
fn odd_length_quirk_breaks_odd_lengths_only() {
    let (dev, mut drv) = loopback(default_driver_features());
    dev.set_quirk(Quirk::CsumOddLengthWrong, true);
    let mac = drv.mac().unwrap();
    for len in [10usize, 11] {
        let (lay, f) = inet::build(mac, mac, true, false, &vec![0xa5; len], 0, 0, 1);
        let g = &round_trip(&mut drv, &NetHdr::csum(lay.l4 as u16, 6), &f)[0];
        assert_eq!(inet::l4_checksum_ok(g, &lay), len % 2 == 0, "len {len}");
    }
}

#[test]
fn every_bad_header_is_a_counted_drop_and_the_device_goes_on() {
    let tso = (1 << bits::HOST_TSO4) | (1 << bits::HOST_TSO6) | (1 << bits::HOST_ECN);
    // CSUM not negotiated at all.
    let (dev, mut drv) = loopback(default_driver_features() & !(1 << bits::CSUM) & !tso);
    let mac = drv.mac().unwrap();
    let (lay, f) = inet::build(mac, mac, true, true, b"abc", 1, ACK, 1);
    assert!(round_trip(&mut drv, &NetHdr::csum(lay.l4 as u16, 16), &f).is_empty());
    assert_eq!(
        dev.counters().tx_bad_hdr[0],
        1,
        "tx_bad_hdr_csum_not_negotiated"
    );

    let (dev, mut drv) = loopback(default_driver_features());
    let len = f.len() as u16;
    let bad = [
        (
            "tx_bad_hdr_rx_only_flag",
            NetHdr {
                flags: F_DATA_VALID,
                ..NetHdr::default()
            },
        ),
        ("tx_bad_hdr_csum_out_of_frame", NetHdr::csum(len - 1, 0)),
        ("tx_bad_hdr_csum_out_of_frame", NetHdr::csum(34, len)),
        (
            "tx_bad_hdr_gso_unknown",
            NetHdr {
                gso_type: 9,
                ..NetHdr::csum(34, 16)
            },
        ),
    ];
    for (name, h) in bad {
        let before = dev.counters().scalars();
        assert!(
            round_trip(&mut drv, &h, &f).is_empty(),
            "{name}: {h:?} dropped"
        );
        let after = dev.counters().scalars();
        let changed: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        assert_eq!(changed, vec![name], "{h:?}");
    }
    // Unknown flag bits are ignored (5.1.6.2.2), counted, and the frame goes out.
    let h = NetHdr {
        flags: 0x40 | F_NEEDS_CSUM,
        ..NetHdr::csum(lay.l4 as u16, 16)
    };
    let got = round_trip(&mut drv, &h, &f);
    assert_eq!(got.len(), 1);
    assert!(inet::l4_checksum_ok(&got[0], &lay));
    assert_eq!(dev.counters().tx_hdr_unknown_flags, 1);
    // And a plain frame still makes it.
    assert_eq!(
        round_trip(&mut drv, &NetHdr::default(), &f),
        vec![f.clone()]
    );
    assert_eq!(
        dev.status() & bar_registers::virtio::device_status::DEVICE_NEEDS_RESET,
        0
    );
}

/// A GSO frame of `payload` bytes (even MSS and lengths: the checksum quirk stays out of it).
fn gso_round_trip(
    drv: &mut NetDriver,
    v4: bool,
    payload: &[u8],
    mss: u16,
    flags: u8,
) -> (inet::Layout, Vec<u8>, Vec<Vec<u8>>) {
    let mac = drv.mac().unwrap();
    let (lay, f) = inet::build(mac, mac, v4, true, payload, 0xffff_0000, flags, 0xfff0);
    let ty = if v4 { GSO_TCPV4 } else { GSO_TCPV6 };
    let hdr = NetHdr::tso(ty, mss, lay.l4 as u16, lay.payload as u16);
    assert!(drv.send_with_hdr(0, &hdr, &f).unwrap());
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(drv.recv(0).unwrap());
        if got.len() >= payload.len().div_ceil(usize::from(mss)) {
            break;
        }
    }
    (lay, f, got)
}

#[test]
fn tso_64k_ipv4_and_ipv6_arrive_as_mss_segments() {
    let (dev, mut drv) = loopback(default_driver_features());
    for v4 in [true, false] {
        let payload: Vec<u8> = (0..65_000u32).map(|i| (i % 251) as u8).collect();
        // The MSS of a 1500-byte MTU: 1460 - 12 (timestamps) for IPv4, 1440 for IPv6.
        let mss = if v4 { 1448u16 } else { 1440 };
        let flags = ACK | inet::PSH | inet::FIN | inet::CWR;
        let (lay, f, segs) = gso_round_trip(&mut drv, v4, &payload, mss, flags);
        let n = payload.len().div_ceil(usize::from(mss));
        assert_eq!(segs.len(), n, "v4 {v4}");
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let plen = s.len() - lay.payload;
            assert_eq!(
                plen,
                usize::from(mss).min(payload.len() - i * usize::from(mss))
            );
            assert_eq!(&s[..12], &f[..12]);
            if v4 {
                assert_eq!(usize::from(inet::be16(s, 16)), s.len() - inet::ETH);
                assert_eq!(inet::be16(s, 18), 0xfff0u16.wrapping_add(i as u16));
                assert!(inet::ipv4_checksum_ok(s));
            } else {
                assert_eq!(usize::from(inet::be16(s, 18)), s.len() - lay.l4);
            }
            let seq = inet::be32(s, lay.l4 + 4);
            assert_eq!(
                seq,
                0xffff_0000u32.wrapping_add((i * usize::from(mss)) as u32)
            );
            let fl = s[lay.l4 + 13];
            assert_eq!(
                fl & (inet::FIN | inet::PSH) != 0,
                i + 1 == n,
                "segment {i} flags {fl:#x}"
            );
            assert_eq!(fl & inet::CWR != 0, i == 0);
            assert!(inet::l4_checksum_ok(s, &lay), "segment {i}");
            joined.extend_from_slice(&s[lay.payload..]);
        }
        assert_eq!(joined, payload);
    }
    let c = dev.counters();
    assert_eq!(c.tx_gso_frames, 2);
    assert_eq!(
        c.tx_gso_segments,
        65_000u64.div_ceil(1448) + 65_000u64.div_ceil(1440)
    );
}

#[test]
fn bad_gso_headers_are_counted_drops() {
    let tso = (1 << bits::HOST_TSO4) | (1 << bits::HOST_TSO6) | (1 << bits::HOST_ECN);
    let (dev, mut drv) = loopback(default_driver_features() & !tso);
    let mac = drv.mac().unwrap();
    let (lay, f) = inet::build(mac, mac, true, true, &[7; 3000], 1, ACK, 1);
    let l4 = lay.l4 as u16;
    assert!(round_trip(&mut drv, &NetHdr::tso(GSO_TCPV4, 1000, l4, 54), &f).is_empty());
    assert_eq!(
        dev.counters()
            .scalars()
            .iter()
            .find(|s| s.0 == "tx_bad_hdr_gso_not_negotiated")
            .unwrap()
            .1,
        1
    );

    let (dev, mut drv) = loopback(default_driver_features());
    let (_, udp) = inet::build(mac, mac, true, false, &[7; 3000], 1, 0, 1);
    let cases = [
        (
            "tx_bad_hdr_gso_without_csum",
            NetHdr {
                flags: 0,
                ..NetHdr::tso(GSO_TCPV4, 1000, l4, 54)
            },
            &f,
        ),
        (
            "tx_bad_hdr_gso_bad_size",
            NetHdr::tso(GSO_TCPV4, 0, l4, 54),
            &f,
        ),
        (
            "tx_bad_hdr_gso_bad_size",
            NetHdr::tso(GSO_TCPV4, 1500, l4, 54),
            &f,
        ),
        (
            "tx_bad_hdr_gso_malformed",
            NetHdr::tso(GSO_TCPV6, 1000, l4, 54),
            &f,
        ),
        (
            "tx_bad_hdr_gso_malformed",
            NetHdr::tso(GSO_TCPV4, 1000, l4, 54),
            &udp,
        ),
        (
            "tx_bad_hdr_gso_malformed",
            NetHdr::tso(GSO_TCPV4, 1000, l4 + 2, 54),
            &f,
        ),
        (
            "tx_bad_hdr_gso_not_negotiated",
            NetHdr::tso(3, 1000, l4, 54),
            &udp,
        ),
    ];
    for (name, h, frame) in cases {
        let before = dev.counters().scalars();
        assert!(round_trip(&mut drv, &h, frame).is_empty(), "{name}: {h:?}");
        let after = dev.counters().scalars();
        let changed: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        assert_eq!(changed, vec![name], "{h:?}");
    }
    let (_, _, segs) = gso_round_trip(&mut drv, true, &[1; 4000], 1000, ACK);
    assert_eq!(segs.len(), 4, "the device still segments");
}

#[test]
fn tso_quirks_break_their_field_only() {
    for (q, ip_id_ok, seq_ok) in [
        (Quirk::TsoIpIdFixed, false, true),
        (Quirk::TsoSeqWrong, true, false),
    ] {
        let (dev, mut drv) = loopback(default_driver_features());
        dev.set_quirk(q, true);
        let (lay, _, segs) = gso_round_trip(&mut drv, true, &[3; 4000], 1000, ACK);
        assert_eq!(segs.len(), 4);
        let ids: Vec<u16> = segs.iter().map(|s| inet::be16(s, 18)).collect();
        let seqs: Vec<u32> = segs.iter().map(|s| inet::be32(s, lay.l4 + 4)).collect();
        assert_eq!(
            ids == [0xfff0, 0xfff1, 0xfff2, 0xfff3],
            ip_id_ok,
            "{q:?} {ids:?}"
        );
        assert_eq!(
            seqs.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 1000),
            seq_ok,
            "{q:?}"
        );
        assert!(segs
            .iter()
            .all(|s| inet::l4_checksum_ok(s, &lay) && inet::ipv4_checksum_ok(s)));
    }
}

/// A port that takes everything with its header (like a TAP with IFF_VNET_HDR) and keeps it.
#[derive(Default)]
struct HdrPort {
    got: parking_lot::Mutex<Vec<(Option<device::net::offload::hdr::NetHdr>, Vec<u8>)>>,
}

impl device::Port for HdrPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        self.got.lock().push((None, frame.to_vec()));
        true
    }
    fn offloads(&self) -> device::PortOffloads {
        device::PortOffloads::ALL
    }
    fn transmit_with_hdr(&self, hdr: &device::net::offload::hdr::NetHdr, frame: &[u8]) -> bool {
        self.got.lock().push((Some(*hdr), frame.to_vec()));
        true
    }
    fn describe(&self) -> String {
        "hdr".into()
    }
}

#[test]
fn a_port_that_takes_offloads_gets_the_frame_and_header_unchanged() {
    let (dev, mut drv) = loopback(default_driver_features());
    let port = Arc::new(HdrPort::default());
    dev.set_port(port.clone());
    let mac = drv.mac().unwrap();
    let (lay, f) = inet::build(mac, mac, false, true, &[5; 9000], 3, ACK, 0);
    let tso = NetHdr::tso(GSO_TCPV6, 1440, lay.l4 as u16, lay.payload as u16);
    assert!(drv.send_with_hdr(0, &tso, &f).unwrap());
    let (lay4, f4) = inet::build(mac, mac, true, false, b"abcde", 3, 0, 0);
    let cs = NetHdr::csum(lay4.l4 as u16, 6);
    assert!(drv.send_with_hdr(0, &cs, &f4).unwrap());
    drv.reclaim_tx(0).unwrap();
    let got = port.got.lock().clone();
    assert_eq!(got.len(), 2);
    let h = got[0].0.expect("with header");
    assert_eq!(
        (h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
        (GSO_TCPV6, 1440, lay.l4 as u16, 16)
    );
    assert_eq!(got[0].1, f, "GSO frame whole, not segmented");
    assert_eq!(got[1].1, f4, "checksum left to the port");
    assert_eq!(got[1].0.map(|h| h.flags), Some(F_NEEDS_CSUM));
    let c = dev.counters();
    assert_eq!(
        (c.tx_gso_frames, c.tx_gso_segments, c.tx_csum, c.tx_frames),
        (1, 0, 1, 2)
    );
}

#[test]
fn rx_data_valid_only_on_verified_checksums() {
    for guest_csum in [true, false] {
        let feats = if guest_csum {
            default_driver_features()
        } else {
            default_driver_features() & !(1 << bits::GUEST_CSUM)
        };
        let (dev, mut drv) = loopback(feats);
        let mac = drv.mac().unwrap();
        for v4 in [true, false] {
            for tcp in [true, false] {
                let (lay, mut f) = inet::build(mac, mac, v4, tcp, b"seven b", 1, ACK, 2);
                let at = lay.l4 + lay.csum_offset;
                let c = inet::l4_checksum_expected(&f, &lay);
                f[at..at + 2].copy_from_slice(&c.to_be_bytes());
                let mut bad = f.clone();
                bad[at] ^= 0x11;
                assert!(drv.send(0, &[&f, &bad]).unwrap() == 2);
                let got = drv.recv_with_hdr(0).unwrap();
                assert_eq!(got.len(), 2);
                assert_eq!(got[0].1, f);
                assert_eq!(
                    got[0].0.flags,
                    if guest_csum { F_DATA_VALID } else { 0 },
                    "v4 {v4} tcp {tcp}"
                );
                assert_eq!(got[1].0.flags, 0, "a bad checksum never gets DATA_VALID");
            }
        }
        // Not TCP/UDP: nothing validated, no flag.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&mac);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.resize(60, 0);
        drv.send(0, &[&arp]).unwrap();
        assert_eq!(drv.recv_with_hdr(0).unwrap()[0].0.flags, 0);
        let c = dev.counters();
        let n = if guest_csum { 4 } else { 0 };
        assert_eq!((c.rx_csum_valid, c.rx_csum_bad), (n, n));
    }
}

/// Keeps every TX frame a capture is given.
#[derive(Default)]
struct TxCapture(parking_lot::Mutex<Vec<Vec<u8>>>);

impl device::FrameCapture for TxCapture {
    fn frame(&self, dir: device::CaptureDirection, _pair: u16, frame: &[u8]) {
        if dir == device::CaptureDirection::Tx {
            self.0.lock().push(frame.to_vec());
        }
    }
}

#[test]
fn a_capture_sees_the_segments_on_the_wire() {
    let (dev, mut drv) = loopback(default_driver_features());
    let cap = Arc::new(TxCapture::default());
    dev.set_capture(Some(cap.clone()));
    let (_, _, segs) = gso_round_trip(&mut drv, true, &[9; 5000], 1000, ACK);
    assert_eq!(segs.len(), 5);
    assert_eq!(
        *cap.0.lock(),
        segs,
        "the capture has the segments the wire carried"
    );
}
