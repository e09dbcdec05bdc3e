//! The `rx-gso` group: receive GSO offloads (VIRTIO_NET_F_GUEST_TSO4 / GUEST_TSO6, virtio 1.2
//! 5.1.6.4) and their switch (VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, 5.1.6.5.6.1). The validator
//! sends the MSS-sized wire segments of one TCP flow in one burst through the loopback, and
//! checks what the driver receives:
//! - with the offloads on, a device MAY hand on GSO frames (coalescing, LRO). Any it does must
//!   be right (MUST, 5.1.6.4.1: NEEDS_CSUM with it, gso_size, the gso_type of the frame's IP
//!   version; the checksum the driver completes from csum_start verifies; lengths consistent),
//!   and the byte stream must arrive whole. None at all is a WARN (the feature is then only
//!   useful with ports that hand GSO frames on);
//! - after GUEST_OFFLOADS_SET with GUEST_TSO4/6 off (acked OK: MUST), no GSO frame may arrive
//!   (an offload that is off is one the driver cannot take, 5.1.6.4.1), and again the stream
//!   arrives whole.

use super::checks::{first_few, negotiated_all, started, Findings, MAC};
use super::report::Finding;
use super::{Session, ValidateOptions};
use crate::driver::hdr::{NetHdr, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6};
use crate::driver::{DriverError, DriverOptions, NetDriver};
use crate::inet::{self, Layout, ACK, PSH};
use bar_registers::virtio::{bits, default_driver_features, RX_GSO_FEATURES};
use std::time::{Duration, Instant};

const G: &str = "rx-gso";
/// Segment payload: fits any MTU the device may report (>= 1280 for IPv6).
const MSS: usize = 1000;
/// Segments per burst: fewer than the queue size, more than one GSO frame could be.
const SEGMENTS: usize = 24;
/// How long frames may take to come back after the doorbell (as `roundtrip` in checks.rs).
const IDLE: Duration = Duration::from_millis(500);
/// VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET.
const CTRL_GUEST_OFFLOADS: u8 = virtio_bindings::virtio_net::VIRTIO_NET_CTRL_GUEST_OFFLOADS as u8;
const CTRL_GUEST_OFFLOADS_SET: u8 =
    virtio_bindings::virtio_net::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET as u8;

/// The wire segments of a `SEGMENTS * MSS`-byte TCP transfer starting at `seq`, each with
/// its complete checksums, and the transfer's payload.
fn wire_segments(v4: bool, seq: u32, seed: u8) -> (Layout, Vec<Vec<u8>>, Vec<u8>) {
    let payload: Vec<u8> = (0..SEGMENTS * MSS)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect();
    let mut lay = None;
    let segs = payload
        .chunks(MSS)
        .enumerate()
        .map(|(i, chunk)| {
            let last = i + 1 == SEGMENTS;
            let flags = if last { ACK | PSH } else { ACK };
            let off = (i * MSS) as u32;
            let (l, mut f) = inet::build(
                MAC,
                MAC,
                v4,
                true,
                chunk,
                seq.wrapping_add(off),
                flags,
                0x200 + i as u16,
            );
            let at = l.l4 + l.csum_offset;
            let c = inet::l4_checksum_expected(&f, &l);
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
            lay = Some(l);
            f
        })
        .collect();
    (lay.expect("segments"), segs, payload)
}

/// What came back from one burst.
struct Arrival {
    /// GSO frames (gso_type other than NONE).
    gso: usize,
    /// What is wrong with the frames (header, checksum, lengths), one line each.
    errors: Vec<String>,
    /// The payload bytes, in TCP sequence order, or why they could not be put together.
    stream: Result<Vec<u8>, String>,
}

/// Sends the segments and checks every frame that comes back.
fn burst(
    d: &mut NetDriver,
    v4: bool,
    seq: u32,
    seed: u8,
) -> Result<(Arrival, Vec<u8>), DriverError> {
    let (lay, segs, payload) = wire_segments(v4, seq, seed);
    let refs: Vec<&[u8]> = segs.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    let t0 = Instant::now();
    while sent < refs.len() && t0.elapsed() < Duration::from_secs(2) {
        sent += d.send(0, &refs[sent..])?;
    }
    let mut got = Vec::new();
    let mut bytes = 0usize;
    let mut last = Instant::now();
    while bytes < payload.len() && last.elapsed() < IDLE {
        let g = d.recv_with_hdr(0)?;
        if g.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        last = Instant::now();
        bytes += g
            .iter()
            .map(|(_, f)| f.len().saturating_sub(lay.payload))
            .sum::<usize>();
        got.extend(g);
    }
    Ok((examine(&lay, v4, seq, &got, payload.len()), payload))
}

/// Checks each frame (a GSO frame's header per 5.1.6.4.1; every checksum) and puts the payload
/// back together by sequence number.
fn examine(lay: &Layout, v4: bool, seq: u32, got: &[(NetHdr, Vec<u8>)], len: usize) -> Arrival {
    let mut errors = Vec::new();
    let mut gso = 0;
    let mut stream = vec![None::<u8>; len];
    let want_type = if v4 { GSO_TCPV4 } else { GSO_TCPV6 };
    for (i, (h, f)) in got.iter().enumerate() {
        if f.len() < lay.payload {
            errors.push(format!(
                "frame {i}: {} bytes, shorter than its headers",
                f.len()
            ));
            continue;
        }
        let mut f = f.clone();
        // Cut the frame to the length its IP header gives: what follows it in the buffer
        // (Ethernet padding, a used length that is the buffer's capacity) is the ring-layout
        // groups' business.
        let ip_end = if v4 {
            14 + usize::from(inet::be16(&f, 16))
        } else {
            54 + usize::from(inet::be16(&f, 18))
        };
        if ip_end > f.len() {
            errors.push(format!(
                "frame {i}: IP header says {ip_end} bytes, {} arrived",
                f.len()
            ));
            continue;
        }
        f.truncate(ip_end);
        if h.gso_type != GSO_NONE {
            gso += 1;
            let ok_hdr = h.gso_type == want_type
                && h.flags & F_NEEDS_CSUM != 0
                && h.gso_size > 0
                && usize::from(h.gso_size) <= MSS
                && usize::from(h.csum_start) == lay.l4
                && usize::from(h.csum_offset) == lay.csum_offset;
            if !ok_hdr {
                errors.push(format!(
                    "frame {i}: header {h:?} (expected gso_type {want_type}, NEEDS_CSUM, 0 < gso_size <= {MSS}, csum_start {} csum_offset {})",
                    lay.l4, lay.csum_offset
                ));
                continue;
            }
        }
        if h.flags & F_NEEDS_CSUM != 0 {
            // What a driver does with NEEDS_CSUM: sum from csum_start, store at +csum_offset.
            let (start, off) = (usize::from(h.csum_start), usize::from(h.csum_offset));
            if start + off + 2 > f.len() {
                errors.push(format!(
                    "frame {i}: csum_start {start} + csum_offset {off} outside {} bytes",
                    f.len()
                ));
                continue;
            }
            let c = !inet::ones_sum(&[&f[start..]]);
            f[start + off..start + off + 2].copy_from_slice(&c.to_be_bytes());
        }
        let ip_len_ok = !v4 || inet::ipv4_checksum_ok(&f);
        if !ip_len_ok || !inet::l4_checksum_ok(&f, lay) {
            errors.push(format!(
                "frame {i} ({} bytes, gso_type {}): IPv4 header checksum {}, TCP checksum {}",
                f.len(),
                h.gso_type,
                if ip_len_ok { "right" } else { "wrong" },
                if inet::l4_checksum_ok(&f, lay) {
                    "right"
                } else {
                    "wrong"
                }
            ));
            continue;
        }
        let off = inet::be32(&f, lay.l4 + 4).wrapping_sub(seq) as usize;
        let data = &f[lay.payload..];
        if off + data.len() > len {
            errors.push(format!(
                "frame {i}: sequence offset {off} + {} bytes beyond the {len} sent",
                data.len()
            ));
            continue;
        }
        for (k, &b) in data.iter().enumerate() {
            stream[off + k] = Some(b);
        }
    }
    let missing = stream.iter().filter(|b| b.is_none()).count();
    let stream = if missing == 0 {
        Ok(stream.into_iter().map(|b| b.expect("all there")).collect())
    } else {
        Err(format!("{missing} of {len} payload bytes never arrived"))
    };
    Arrival {
        gso,
        errors,
        stream,
    }
}

/// Findings for one burst: the frames right, the stream whole; `no_gso` when the offloads are
/// off (then a GSO frame is a failure).
fn report(f: &mut Findings, what: &str, ip: &str, a: &Arrival, payload: &[u8], no_gso: bool) {
    f.push(Finding::check(
        G,
        &format!("{what}: {ip} frames well-formed"),
        true,
        a.errors.is_empty(),
        "GSO frames with NEEDS_CSUM, gso_size <= the MSS, their IP version's gso_type; every checksum right once completed",
        &if a.errors.is_empty() {
            "all right".into()
        } else {
            first_few(&a.errors)
        },
        "RX queue 0 virtio_net_hdr (virtio 1.2 5.1.6.4.1)",
    ));
    let whole = matches!(&a.stream, Ok(s) if s == payload);
    f.push(Finding::check(
        G,
        &format!("{what}: {ip} byte stream whole"),
        true,
        whole,
        &format!("the {} payload bytes sent, in sequence", payload.len()),
        &match &a.stream {
            Ok(_) if whole => "byte-exact".into(),
            Ok(_) => "bytes differ".into(),
            Err(e) => e.clone(),
        },
        "TX queue 0 -> loopback -> RX queue 0",
    ));
    if no_gso {
        f.push(Finding::check(
            G,
            &format!("{what}: no {ip} GSO frame"),
            true,
            a.gso == 0,
            "gso_type NONE on every frame (the driver turned GUEST_TSO off)",
            &format!("{} GSO frame(s)", a.gso),
            "RX queue 0 virtio_net_hdr gso_type (virtio 1.2 5.1.6.4.1, 5.1.6.5.6.1)",
        ));
    } else {
        f.push(Finding::check(
            G,
            &format!("{what}: {ip} segments coalesced"),
            false,
            a.gso > 0,
            "at least one GSO frame (the device MAY coalesce; a WARN when it never does)",
            &format!("{} GSO frame(s) for {SEGMENTS} segments", a.gso),
            "RX queue 0 virtio_net_hdr gso_type",
        ));
    }
}

/// The group body.
pub(super) fn rx_gso(
    s: &Session,
    _o: &ValidateOptions,
    f: &mut Findings,
) -> Result<(), DriverError> {
    // Runs only when the device offers GUEST_TSO4 (checks::GROUP_FEATURES gates it).
    let mut d = started(
        s,
        DriverOptions {
            features: default_driver_features() | RX_GSO_FEATURES,
            queue_size: 256,
            ..DriverOptions::default()
        },
    )?;
    if !negotiated_all(
        &mut d,
        f,
        G,
        1 << bits::GUEST_TSO4 | 1 << bits::GUEST_CSUM,
        "GUEST_TSO4 negotiated",
        "FEATURES_OK with GUEST_CSUM and GUEST_TSO4",
    )? {
        return Ok(());
    }
    let negotiated = d.features;
    let has = |b: u32| negotiated & (1 << b) != 0;
    let versions: Vec<bool> = if has(bits::GUEST_TSO6) {
        vec![true, false]
    } else {
        vec![true]
    };
    let ip = |v4: bool| if v4 { "TCPv4" } else { "TCPv6" };
    for (i, &v4) in versions.iter().enumerate() {
        let (a, payload) = burst(&mut d, v4, 0xffff_fc00 + i as u32, 1 + i as u8)?;
        report(f, "offloads on", ip(v4), &a, &payload, false);
    }
    if !has(bits::CTRL_GUEST_OFFLOADS) {
        f.push(Finding::not_run(
            G,
            "GUEST_OFFLOADS_SET",
            &format!(
                "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS not offered (device features {:#x})",
                d.device_features
            ),
        ));
        return d.reset();
    }
    // TSO off, the checksum offload kept (what Linux does for `ethtool -K rx-gro-hw off`).
    let csum_only = 1u64 << bits::GUEST_CSUM;
    let ack = d.ctrl_raw(
        CTRL_GUEST_OFFLOADS,
        CTRL_GUEST_OFFLOADS_SET,
        &csum_only.to_le_bytes(),
    )?;
    f.push(Finding::check(
        G,
        "GUEST_OFFLOADS_SET acked",
        true,
        ack == 0,
        "VIRTIO_NET_OK for offloads GUEST_CSUM (negotiated)",
        &format!("ack {ack}"),
        "control queue, class VIRTIO_NET_CTRL_GUEST_OFFLOADS",
    ));
    for (i, &v4) in versions.iter().enumerate() {
        let (a, payload) = burst(&mut d, v4, 0x7fff_fe00 + i as u32, 9 + i as u8)?;
        report(f, "TSO turned off", ip(v4), &a, &payload, true);
    }
    d.reset()
}
