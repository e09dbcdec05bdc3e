//! Receive offloads through the model (virtio 1.2 5.1.6.4, 5.1.6.5.6.1): frames a port hands
//! on with a virtio_net_hdr_v1 (a TAP with TUNSETOFFLOAD: NEEDS_CSUM, GSO) reach the driver
//! whole while it takes GUEST_CSUM / GUEST_TSO4 / GUEST_TSO6 / GUEST_ECN, and completed or
//! segmented by the device once CTRL_GUEST_OFFLOADS_SET turned them off; a header that does not
//! describe its frame is a counted drop; all of it crosses a device-state migration.

use bar_registers::virtio::{bits, default_driver_features, RX_GSO_FEATURES};
use device::net::offload::hdr::NetHdr as DevHdr;
use device::{Device, DeviceConfig, Port, PortOffloads};
use parking_lot::Mutex;
use sim_harness::driver::hdr::{
    NetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::inet::{self, ACK, PSH};
use std::sync::Arc;

/// VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET (virtio 1.2 5.1.6.5.6.1),
/// typed here rather than taken from the device: the test speaks the spec, not the model.
const CLASS: u8 = 5;
const SET: u8 = 0;

fn bit(b: u32) -> u64 {
    1 << b
}

/// A port that records what the device tells it the driver takes, and drops what it is sent.
#[derive(Default)]
struct HintPort {
    hints: Mutex<Vec<PortOffloads>>,
}

impl Port for HintPort {
    fn transmit(&self, _frame: &[u8]) -> bool {
        true
    }
    fn set_rx_offloads(&self, o: PortOffloads) {
        self.hints.lock().push(o);
    }
    fn describe(&self) -> String {
        "hint".into()
    }
}

struct Rig {
    dev: Arc<Device>,
    drv: NetDriver,
    port: Arc<HintPort>,
}

fn rig(o: DriverOptions) -> Rig {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let port = Arc::new(HintPort::default());
    dev.set_port(port.clone());
    let mut drv = sim_harness::driver::in_process(&dev, o).unwrap();
    drv.start().unwrap();
    Rig { dev, drv, port }
}

fn all_offloads() -> DriverOptions {
    DriverOptions {
        features: default_driver_features() | RX_GSO_FEATURES,
        ..DriverOptions::default()
    }
}

impl Rig {
    /// Pushes `frame` with port header `h` and takes what the driver receives.
    fn rx(&mut self, h: &DevHdr, frame: &[u8]) -> Vec<(NetHdr, Vec<u8>)> {
        assert!(self.dev.inbox().push_with_hdr(h, frame));
        self.dev.service_rx();
        self.drv.recv_with_hdr(0).unwrap()
    }
    fn set(&mut self, offloads: u64) -> u8 {
        self.drv
            .ctrl_raw(CLASS, SET, &offloads.to_le_bytes())
            .unwrap()
    }
}

/// A TCP GSO frame as a TAP hands it on: headers for the whole payload, the pseudo-header sum
/// in the checksum field, and its header.
fn gso_frame(v4: bool, payload_len: usize, mss: u16, ecn: bool) -> (inet::Layout, Vec<u8>, DevHdr) {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
    let (lay, f) = inet::build(
        [2, 0, 0, 0, 0, 9],
        [2, 0, 0, 0, 0, 8],
        v4,
        true,
        &payload,
        1000,
        ACK | PSH,
        0x100,
    );
    let ty = if v4 { GSO_TCPV4 } else { GSO_TCPV6 } | if ecn { GSO_ECN } else { 0 };
    let h = DevHdr {
        flags: F_NEEDS_CSUM,
        gso_type: ty,
        hdr_len: lay.payload as u16,
        gso_size: mss,
        csum_start: lay.l4 as u16,
        csum_offset: 16,
        num_buffers: 0,
    };
    (lay, f, h)
}

#[test]
fn gso_frames_reach_a_driver_that_takes_them_whole() {
    let mut r = rig(all_offloads());
    for (v4, ecn) in [(true, false), (false, false), (true, true)] {
        let (lay, f, h) = gso_frame(v4, 30_000, 1448, ecn);
        let got = r.rx(&h, &f);
        assert_eq!(got.len(), 1, "v4 {v4} ecn {ecn}");
        let (gh, g) = &got[0];
        assert_eq!(g, &f, "bytes unchanged, checksum field still partial");
        assert_eq!(
            (
                gh.flags,
                gh.gso_type,
                gh.gso_size,
                gh.csum_start,
                gh.csum_offset,
                gh.hdr_len
            ),
            (
                F_NEEDS_CSUM,
                h.gso_type,
                1448,
                lay.l4 as u16,
                16,
                lay.payload as u16
            )
        );
        assert!(gh.num_buffers >= 2, "a 30 KB frame spans mergeable buffers");
    }
    let c = r.dev.counters();
    assert_eq!(
        (c.rx_gso_frames, c.rx_gso_segmented, c.rx_bad_offload),
        (3, 0, 0)
    );
}

/// The segments of a GSO frame, as the driver gets them: valid checksums, one MSS each, the
/// sequence numbers advancing, the payload whole.
fn assert_segments(got: &[(NetHdr, Vec<u8>)], lay: &inet::Layout, f: &[u8], mss: usize, dv: bool) {
    let payload = &f[lay.payload..];
    assert_eq!(got.len(), payload.len().div_ceil(mss));
    let mut joined = Vec::new();
    for (i, (h, s)) in got.iter().enumerate() {
        assert_eq!(h.gso_type, GSO_NONE);
        assert_eq!(h.flags, if dv { F_DATA_VALID } else { 0 }, "segment {i}");
        assert!(inet::l4_checksum_ok(s, lay), "segment {i} TCP checksum");
        if lay.v4 {
            assert!(inet::ipv4_checksum_ok(s), "segment {i} IP checksum");
        }
        let seq = inet::be32(s, lay.l4 + 4);
        assert_eq!(seq, 1000 + (i * mss) as u32);
        let last = i + 1 == got.len();
        assert_eq!(
            s[lay.l4 + 13] & PSH != 0,
            last,
            "PSH on the last segment only"
        );
        joined.extend_from_slice(&s[lay.payload..]);
    }
    assert_eq!(joined, payload);
}

#[test]
fn guest_offloads_set_off_makes_the_device_segment_and_complete() {
    let mut r = rig(all_offloads());
    // TSO off, checksum on (Linux's `ethtool -K rx-gro-hw off`).
    assert_eq!(r.set(bit(bits::GUEST_CSUM)), 0);
    assert_eq!(r.dev.guest_offloads().0, bit(bits::GUEST_CSUM));
    for v4 in [true, false] {
        let (lay, f, h) = gso_frame(v4, 10_000, 1000, false);
        let got = r.rx(&h, &f);
        assert_segments(&got, &lay, &f, 1000, true);
    }
    let c = r.dev.counters();
    assert_eq!(
        (c.rx_gso_frames, c.rx_gso_segmented, c.rx_gso_segments),
        (0, 2, 20)
    );
    assert_eq!(
        c.rx_csum_valid, 20,
        "segments get DATA_VALID: the device computed them"
    );

    // A NEEDS_CSUM frame is handed on as it is while GUEST_CSUM is on...
    let (lay, f) = inet::build([2; 6], [4; 6], true, false, &[9; 333], 0, 0, 1);
    let h = DevHdr {
        flags: F_NEEDS_CSUM,
        csum_start: lay.l4 as u16,
        csum_offset: lay.csum_offset as u16,
        ..DevHdr::default()
    };
    let got = r.rx(&h, &f);
    assert_eq!(got[0].0.flags, F_NEEDS_CSUM);
    assert_eq!(got[0].0.csum_start, lay.l4 as u16);
    assert_eq!(got[0].1, f);
    // ...and completed by the device once every offload is off.
    assert_eq!(r.set(0), 0);
    let got = r.rx(&h, &f);
    assert_eq!(got[0].0.flags, 0, "no NEEDS_CSUM, no DATA_VALID");
    assert!(inet::l4_checksum_ok(&got[0].1, &lay));
    let (lay6, f6, h6) = gso_frame(false, 4000, 1400, true);
    assert_segments(&r.rx(&h6, &f6), &lay6, &f6, 1400, false);
    let c = r.dev.counters();
    assert_eq!((c.rx_csum_partial, c.rx_csum_completed), (1, 1));
}

#[test]
fn guest_offloads_set_is_checked_and_a_refusal_changes_nothing() {
    let mut r = rig(all_offloads());
    let before = r.dev.guest_offloads();
    // UFO is a guest offload the device does not offer; CSUM is a host feature; 7 bytes is short.
    for bad in [
        bit(bits::GUEST_UFO),
        bit(bits::CSUM) | bit(bits::GUEST_CSUM),
    ] {
        assert_eq!(r.set(bad), 1, "{bad:#x} refused (VIRTIO_NET_ERR)");
    }
    assert_eq!(r.drv.ctrl_raw(CLASS, SET, &[0; 7]).unwrap(), 1);
    assert_eq!(
        r.drv.ctrl_raw(CLASS, 1, &[0; 8]).unwrap(),
        1,
        "unknown command"
    );
    assert_eq!(r.dev.guest_offloads(), before);
    let (_, f, h) = gso_frame(true, 5000, 1000, false);
    assert_eq!(r.rx(&h, &f).len(), 1, "still whole");

    // Without CTRL_GUEST_OFFLOADS negotiated the command does not exist.
    let mut r = rig(DriverOptions {
        features: (default_driver_features() | RX_GSO_FEATURES) & !bit(bits::CTRL_GUEST_OFFLOADS),
        ..DriverOptions::default()
    });
    assert_eq!(r.set(0), 1);
    assert_eq!(r.rx(&h, &f).len(), 1, "still whole");
    // A driver that did not negotiate GUEST_TSO6 gets IPv6 GSO frames cut up.
    let mut r = rig(DriverOptions {
        features: (default_driver_features() | RX_GSO_FEATURES)
            & !bit(bits::GUEST_TSO6)
            & !bit(bits::GUEST_ECN),
        ..DriverOptions::default()
    });
    assert_eq!(r.set(bit(bits::GUEST_TSO6) | bit(bits::GUEST_CSUM)), 1);
    let (lay, f6, h6) = gso_frame(false, 3000, 1000, false);
    assert_segments(&r.rx(&h6, &f6), &lay, &f6, 1000, true);
    let (_, f4, h4) = gso_frame(true, 3000, 1000, false);
    assert_eq!(r.rx(&h4, &f4)[0].0.gso_type, GSO_TCPV4);
    let (lay, f4e, h4e) = gso_frame(true, 3000, 1000, true);
    assert_segments(&r.rx(&h4e, &f4e), &lay, &f4e, 1000, true);
}

#[test]
fn a_gso_frame_no_buffer_holds_is_segmented_not_dropped() {
    // No MRG_RXBUF, 1526-byte buffers: a driver that negotiated GUEST_TSO4 should post 64 KiB
    // ones (5.1.6.3.1); this one did not, so the frame is cut up to fit.
    let mut r = rig(DriverOptions {
        features: (default_driver_features() | RX_GSO_FEATURES) & !bit(bits::MRG_RXBUF),
        rx_buf_size: 1526,
        ..DriverOptions::default()
    });
    let (lay, f, h) = gso_frame(true, 8000, 1400, false);
    assert_segments(&r.rx(&h, &f), &lay, &f, 1400, true);
    let c = r.dev.counters();
    assert_eq!((c.rx_gso_segmented, c.rx_dropped_too_small), (1, 0));
}

#[test]
fn a_header_that_does_not_describe_its_frame_is_a_counted_drop() {
    let mut r = rig(all_offloads());
    let (lay, f, h) = gso_frame(true, 3000, 1000, false);
    let (_, udp) = inet::build([2; 6], [4; 6], true, false, &[1; 3000], 0, 0, 1);
    let bad = [
        // TCPV4 on a UDP frame.
        (h, udp.clone()),
        // TCPV6 on an IPv4 frame.
        (
            DevHdr {
                gso_type: GSO_TCPV6,
                ..h
            },
            f.clone(),
        ),
        (DevHdr { gso_size: 0, ..h }, f.clone()),
        (DevHdr { gso_type: 9, ..h }, f.clone()),
        (
            DevHdr {
                csum_start: 20,
                ..h
            },
            f.clone(),
        ),
        // GSO without NEEDS_CSUM.
        (DevHdr { flags: 0, ..h }, f.clone()),
        // The checksum field beyond the frame.
        (
            DevHdr {
                gso_type: GSO_NONE,
                csum_start: f.len() as u16 - 1,
                ..h
            },
            f.clone(),
        ),
    ];
    for (i, (h, frame)) in bad.iter().enumerate() {
        assert!(r.rx(h, frame).is_empty(), "bad header {i}: {h:?}");
        assert_eq!(r.dev.counters().rx_bad_offload, i as u64 + 1);
    }
    // The device goes on.
    let got = r.rx(&h, &f);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].1[..lay.payload], &f[..lay.payload]);
    assert_eq!(r.dev.status() & 0x40, 0, "not DEVICE_NEEDS_RESET");
}

#[test]
fn the_port_is_told_what_the_driver_takes() {
    let mut r = rig(all_offloads());
    let all = PortOffloads::ALL;
    assert_eq!(r.port.hints.lock().last(), Some(&all), "at FEATURES_OK");
    assert_eq!(r.set(bit(bits::GUEST_CSUM)), 0);
    assert_eq!(
        r.port.hints.lock().last(),
        Some(&PortOffloads {
            csum: true,
            ..PortOffloads::NONE
        })
    );
    r.drv.reset().unwrap();
    assert_eq!(
        r.port.hints.lock().last(),
        Some(&PortOffloads::NONE),
        "reset"
    );
    // A driver without the RX offloads: the port is never asked for them.
    let r = rig(DriverOptions::default());
    assert_eq!(
        r.port.hints.lock().last(),
        Some(&PortOffloads {
            csum: true,
            ..PortOffloads::NONE
        }),
        "GUEST_CSUM only"
    );
}

#[test]
fn guest_offloads_and_port_headers_cross_a_device_state_migration() {
    let mut r = rig(all_offloads());
    assert_eq!(r.set(bit(bits::GUEST_CSUM) | bit(bits::GUEST_TSO6)), 0);
    // One frame with a port header waits in the FIFO (the device is paused).
    r.dev.pause();
    let (lay, f, h) = gso_frame(false, 6000, 1200, false);
    assert!(r.dev.inbox().push(&f[..100]));
    assert!(r.dev.inbox().push_with_hdr(&h, &f));
    let state = r.dev.save_state();
    assert!(state.windows(4).any(|w| w == b"GOFF"));
    assert!(state.windows(4).any(|w| w == b"INBH"));

    let b = Device::new(DeviceConfig::default()).unwrap();
    let port = Arc::new(HintPort::default());
    b.set_port(port.clone());
    let irq = Arc::new(device::InterruptRecorder::new(b.layout().msix_vectors));
    b.set_interrupt_sink(irq.clone());
    let mem = r.drv.mem.clone();
    r.drv.migrate_to(b.clone(), irq, mem).unwrap();
    b.pause();
    b.restore_state(&state).unwrap();
    assert_eq!(b.guest_offloads(), r.dev.guest_offloads());
    assert_eq!(
        port.hints.lock().last(),
        Some(&PortOffloads {
            csum: true,
            tso6: true,
            ..PortOffloads::NONE
        }),
        "the destination's port follows the driver too"
    );
    b.resume();
    let got = r.drv.recv_with_hdr(0).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, &f[..100]);
    assert_eq!(
        (got[1].0.gso_type, &got[1].1),
        (GSO_TCPV6, &f),
        "still a GSO frame"
    );
    assert_eq!(got[1].0.csum_start, lay.l4 as u16);

    // Nothing set and nothing with a header: neither section is written.
    let plain = rig(all_offloads());
    let s = plain.dev.save_state();
    assert!(!s.windows(4).any(|w| w == b"GOFF" || w == b"INBH"));
}

#[test]
fn bad_optional_sections_are_refused() {
    let mut r = rig(all_offloads());
    assert_eq!(r.set(bit(bits::GUEST_CSUM)), 0);
    r.dev.pause();
    let (_, f, h) = gso_frame(true, 3000, 1000, false);
    assert!(r.dev.inbox().push_with_hdr(&h, &f));
    let state = r.dev.save_state();
    let fresh = || {
        let b = Device::new(DeviceConfig::default()).unwrap();
        b.pause();
        b
    };
    assert!(fresh().restore_state(&state).is_ok());
    // Each mutation re-sealed, so only the section's own check can refuse it.
    let find = |tag: &[u8; 4]| state.windows(4).position(|w| w == tag).unwrap() + 8;
    let goff = find(b"GOFF");
    let inbh = find(b"INBH");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("GOFF: UFO, not negotiated", {
            let mut s = state.clone();
            s[goff..goff + 8].copy_from_slice(&bit(bits::GUEST_UFO).to_le_bytes());
            s
        }),
        ("INBH: index beyond the FIFO", {
            let mut s = state.clone();
            s[inbh + 4..inbh + 8].copy_from_slice(&5u32.to_le_bytes());
            s
        }),
        ("INBH: gso_size 0", {
            let mut s = state.clone();
            s[inbh + 8 + 4..inbh + 8 + 6].fill(0);
            s
        }),
    ];
    for (what, s) in cases {
        let s = reseal(s);
        let b = fresh();
        let e = b.restore_state(&s).expect_err(what);
        assert!(e.to_string().contains("invalid"), "{what}: {e}");
        assert_eq!(b.status(), 0, "{what}: left reset");
    }
}

/// Seals a mutated stream again: the last section is `SEAL`, FNV-1a 64 of everything before it.
fn reseal(mut s: Vec<u8>) -> Vec<u8> {
    let at = s.len() - 16;
    let h = s[..at].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let n = s.len();
    s[n - 8..].copy_from_slice(&h.to_le_bytes());
    s
}

/// The device's counters that are not zero (for a failing assertion's message).
fn nonzero_counters(dev: &Device) -> Vec<(&'static str, u64)> {
    dev.counters()
        .scalars()
        .into_iter()
        .filter(|c| c.1 != 0)
        .collect()
}

/// The driver model over loopback (a wire: the device segments on TX), with `features`.
fn loopback(o: DriverOptions) -> (Arc<Device>, NetDriver) {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(&dev, o).unwrap();
    drv.start().unwrap();
    (dev, drv)
}

#[test]
fn segments_on_the_wire_are_coalesced_back_for_a_driver_that_takes_gso() {
    let (dev, mut drv) = loopback(all_offloads());
    let mac = drv.mac().unwrap();
    for v4 in [true, false] {
        let payload: Vec<u8> = (0..40_000).map(|i| (i * 31 + 7) as u8).collect();
        let (lay, f) = inet::build(mac, mac, v4, true, &payload, 5, ACK | PSH, 0x40);
        let ty = if v4 { GSO_TCPV4 } else { GSO_TCPV6 };
        // The MSS of a 1500-byte MTU: segments must fit it (tx_bad_hdr_gso_bad_size).
        let mss = if v4 { 1448 } else { 1428 };
        let tso = NetHdr::tso(ty, mss, lay.l4 as u16, lay.payload as u16);
        assert!(drv.send_with_hdr(0, &tso, &f).unwrap());
        let got = drv.recv_with_hdr(0).unwrap();
        assert_eq!(
            got.len(),
            1,
            "v4 {v4}: one GSO frame again: {:?}",
            nonzero_counters(&dev)
        );
        let (h, g) = &got[0];
        assert_eq!(
            (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, ty, mss, lay.l4 as u16, 16)
        );
        // The frame the driver sent, byte for byte (the checksum field holds the
        // pseudo-header sum, as it did).
        assert_eq!(g, &f, "v4 {v4}");
    }
    let c = dev.counters();
    let segs = (40_000usize.div_ceil(1448) + 40_000usize.div_ceil(1428)) as u64;
    assert_eq!((c.tx_gso_segments, c.rx_coalesced_segments), (segs, segs));
    assert_eq!((c.rx_coalesced_frames, c.rx_gso_frames), (2, 2));

    // Offloads off: the segments arrive as the wire carried them.
    assert_eq!(
        drv.ctrl_raw(CLASS, SET, &bit(bits::GUEST_CSUM).to_le_bytes())
            .unwrap(),
        0
    );
    let (lay, f) = inet::build(mac, mac, true, true, &[3; 5000], 5, ACK, 0x40);
    let tso = NetHdr::tso(GSO_TCPV4, 1000, lay.l4 as u16, lay.payload as u16);
    assert!(drv.send_with_hdr(0, &tso, &f).unwrap());
    let got = drv.recv_with_hdr(0).unwrap();
    assert_eq!(got.len(), 5);
    assert!(got
        .iter()
        .all(|(h, s)| h.flags == F_DATA_VALID && inet::l4_checksum_ok(s, &lay)));
    assert_eq!(dev.counters().rx_coalesced_frames, 2);
}

#[test]
fn a_coalesced_frame_no_buffer_holds_goes_out_as_its_segments() {
    let (dev, mut drv) = loopback(DriverOptions {
        features: (default_driver_features() | RX_GSO_FEATURES) & !bit(bits::MRG_RXBUF),
        rx_buf_size: 1526,
        ..DriverOptions::default()
    });
    let mac = drv.mac().unwrap();
    let (lay, f) = inet::build(mac, mac, true, true, &[7; 9000], 5, ACK, 0x40);
    let tso = NetHdr::tso(GSO_TCPV4, 1400, lay.l4 as u16, lay.payload as u16);
    assert!(drv.send_with_hdr(0, &tso, &f).unwrap());
    let got = drv.recv_with_hdr(0).unwrap();
    assert_eq!(got.len(), 9000usize.div_ceil(1400));
    assert!(got
        .iter()
        .all(|(h, s)| h.gso_type == GSO_NONE && inet::l4_checksum_ok(s, &lay)));
    let c = dev.counters();
    assert_eq!((c.rx_coalesced_frames, c.rx_gso_segmented), (1, 1));
    assert_eq!((c.rx_gso_frames, c.rx_dropped_too_small), (0, 0));
}

#[test]
fn a_coalesced_frame_that_waits_for_buffers_keeps_its_gso_header() {
    for packed in [false, true] {
        coalesced_frame_waits(packed);
    }
}

fn coalesced_frame_waits(packed: bool) {
    let name = if packed { "packed" } else { "split" };
    // 16 buffers of 2048 bytes (MRG_RXBUF): the coalesced frame fits the ring, but not what is
    // left of it after 8 small frames the driver has not taken yet.
    let (dev, mut drv) = loopback(
        DriverOptions {
            features: default_driver_features() | RX_GSO_FEATURES,
            queue_size: 16,
            rx_buf_size: 2048,
            ..DriverOptions::default()
        }
        .with_packed(packed),
    );
    let mac = drv.mac().unwrap();
    let (_, small) = inet::build(mac, mac, true, false, &[1; 100], 9, 0, 0x41);
    for _ in 0..8 {
        assert_eq!(drv.send(0, &[small.as_slice()]).unwrap(), 1);
    }
    let (lay, f) = inet::build(mac, mac, true, true, &[7; 20_000], 5, ACK, 0x40);
    let tso = NetHdr::tso(GSO_TCPV4, 1448, lay.l4 as u16, lay.payload as u16);
    assert!(drv.send_with_hdr(0, &tso, &f).unwrap());
    assert_eq!(
        dev.counters().rx_coalesced_frames,
        1,
        "{name}: coalesced, then out of buffers"
    );
    // The driver takes the small frames and posts their buffers again: the waiting frame goes
    // out on the next delivery, still as the one GSO frame it was coalesced into.
    let mut got = drv.recv_with_hdr(0).unwrap();
    got.extend(drv.recv_with_hdr(0).unwrap());
    assert_eq!(
        got.len(),
        9,
        "{name}: 8 small frames and the coalesced one: {:?}",
        nonzero_counters(&dev)
    );
    for (h, s) in &got[..8] {
        assert_eq!(h.gso_type, GSO_NONE);
        assert_eq!(s, &small);
    }
    let (h, g) = &got[8];
    assert_eq!(
        (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
        (F_NEEDS_CSUM, GSO_TCPV4, 1448, lay.l4 as u16, 16),
        "{name}: a {}-byte frame without its GSO header is bigger than any wire frame",
        g.len()
    );
    assert_eq!(g, &f, "{name}");
    let c = dev.counters();
    assert_eq!((c.rx_coalesced_frames, c.rx_gso_frames), (1, 1));
}
