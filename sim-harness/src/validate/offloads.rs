//! The offload check groups: `checksum` (VIRTIO_NET_F_CSUM) and `tso` (HOST_TSO4 / HOST_TSO6),
//! virtio 1.2 5.1.6.2. Frames go out with a virtio-net header on TX queue 0 and come back on RX
//! queue 0 through the port's loopback, as the wire carries them; the harness's own checksum
//! code (crate::inet) checks them.

use super::checks::{first_few, started, Findings};
use super::report::Finding;
use super::Session;
use crate::driver::hdr::{NetHdr, F_DATA_VALID, GSO_TCPV4, GSO_TCPV6};
use crate::driver::{DriverError, DriverOptions, NetDriver};
use crate::inet::{self, Layout, ACK, CWR, FIN, PSH};
use bar_registers::virtio::{bits, device_status as st, net_cfg};
use std::time::{Duration, Instant};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x43];
/// How long frames may take to come back after the doorbell (as `roundtrip` in checks.rs).
const IDLE: Duration = Duration::from_millis(500);

/// Receives on pair 0 until `want` frames arrived or nothing came for `idle`.
fn collect(d: &mut NetDriver, want: usize, idle: Duration) -> Result<Vec<Vec<u8>>, DriverError> {
    let mut got = Vec::new();
    let mut last = Instant::now();
    while got.len() < want && last.elapsed() < idle {
        let g = d.recv(0)?;
        if g.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        last = Instant::now();
        got.extend(g);
    }
    Ok(got)
}

/// Cuts received frame `i` to the `len(i)` bytes sent when it came back longer: what follows a
/// frame in its buffer (Ethernet padding, a used length that is the buffer's capacity) is the
/// ring-layout groups' business, not the offloads'.
fn trim(frames: &mut [Vec<u8>], len: impl Fn(usize) -> usize) {
    for (i, f) in frames.iter_mut().enumerate() {
        f.truncate(len(i));
    }
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    // Never 0 in the last byte: an odd trailing byte must count.
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) | 0x01)
        .collect()
}

fn name(v4: bool, tcp: bool) -> String {
    format!(
        "{} over {}",
        if tcp { "TCP" } else { "UDP" },
        if v4 { "IPv4" } else { "IPv6" }
    )
}

/// `checksum`: NEEDS_CSUM frames come back with the checksum completed, for TCP and UDP over
/// IPv4 and IPv6 and checksummed lengths even and odd; a bad header is dropped and the device
/// stays usable.
pub(super) fn checksum(s: &Session, f: &mut Findings) -> Result<(), DriverError> {
    const G: &str = "checksum";
    let mut d = started(s, DriverOptions::default())?;
    if d.features & (1 << bits::CSUM) == 0 {
        f.push(Finding::not_run(
            G,
            "TX checksum",
            &format!(
                "VIRTIO_NET_F_CSUM not offered (device features {:#x})",
                d.device_features
            ),
        ));
        return d.reset();
    }
    for v4 in [true, false] {
        for tcp in [true, false] {
            let mut bad = Vec::new();
            let lens = [0usize, 1, 2, 17, 100, 101, 1000, 1001];
            for &len in &lens {
                let (lay, frame) =
                    inet::build(MAC, MAC, v4, tcp, &payload(len, len as u8), 1000, ACK, 7);
                let hdr = NetHdr::csum(lay.l4 as u16, lay.csum_offset as u16);
                if !d.send_with_hdr(0, &hdr, &frame)? {
                    bad.push(format!("len {len}: TX ring full"));
                    continue;
                }
                let mut got = collect(&mut d, 1, IDLE)?;
                trim(&mut got, |_| frame.len());
                match got.as_slice() {
                    [g] if g.len() == frame.len() && inet::l4_checksum_ok(g, &lay) => {
                        let at = lay.l4 + lay.csum_offset;
                        if g[..at] != frame[..at] || g[at + 2..] != frame[at + 2..] {
                            bad.push(format!("len {len}: bytes besides the checksum changed"));
                        }
                    }
                    [g] if g.len() == frame.len() => {
                        let at = lay.l4 + lay.csum_offset;
                        bad.push(format!(
                            "len {len} ({}): checksum {:#06x}, expected {:#06x}",
                            if (frame.len() - lay.l4) % 2 == 1 {
                                "odd"
                            } else {
                                "even"
                            },
                            inet::be16(g, at),
                            inet::l4_checksum_expected(g, &lay)
                        ));
                    }
                    other => bad.push(format!("len {len}: {} frames back", other.len())),
                }
            }
            f.push(Finding::check(
                G,
                &format!("TX checksum completed: {}", name(v4, tcp)),
                true,
                bad.is_empty(),
                &format!("checksum from csum_start stored at csum_start + csum_offset, payload lengths {lens:?}"),
                &if bad.is_empty() { "all correct".into() } else { bad.join("; ") },
                "TX queue 0 -> RX queue 0, virtio_net_hdr NEEDS_CSUM (virtio 1.2 5.1.6.2)",
            ));
        }
    }
    // Bad headers: csum_start past the frame, and DATA_VALID (which the driver MUST NOT set
    // on TX, 5.1.6.2.1). The device should drop them; it must stay usable.
    let (lay, frame) = inet::build(MAC, MAC, true, true, &payload(64, 3), 1, ACK, 1);
    let bad = [
        (
            "csum_start past the end",
            NetHdr::csum(frame.len() as u16, 0),
        ),
        (
            "DATA_VALID on TX",
            NetHdr {
                flags: F_DATA_VALID,
                ..NetHdr::default()
            },
        ),
    ];
    let mut passed = Vec::new();
    for (what, h) in bad {
        d.send_with_hdr(0, &h, &frame)?;
        let n = collect(&mut d, 1, Duration::from_millis(50))?.len();
        if n != 0 {
            passed.push(format!("{what}: {n} frame(s) sent"));
        }
    }
    f.push(Finding::check(
        G,
        "bad TX headers dropped",
        false,
        passed.is_empty(),
        "csum_start/csum_offset outside the frame, DATA_VALID on TX: not sent",
        &if passed.is_empty() {
            "dropped".into()
        } else {
            passed.join("; ")
        },
        "TX queue 0 (virtio 1.2 5.1.6.2.1)",
    ));
    let status = d.status()?;
    let hdr = NetHdr::csum(lay.l4 as u16, lay.csum_offset as u16);
    d.send_with_hdr(0, &hdr, &frame)?;
    let mut got = collect(&mut d, 1, IDLE)?;
    trim(&mut got, |_| frame.len());
    let ok = status & st::DEVICE_NEEDS_RESET == 0
        && matches!(got.as_slice(), [g] if inet::l4_checksum_ok(g, &lay));
    f.push(Finding::check(
        G,
        "device usable after bad headers",
        true,
        ok,
        "no DEVICE_NEEDS_RESET; the next good frame comes back with its checksum",
        &format!("device_status {status:#x}, {} frame(s) back", got.len()),
        "device_status, TX queue 0 -> RX queue 0",
    ));
    rx_data_valid(&mut d, f)?;
    d.reset()
}

/// GUEST_CSUM (5.1.6.4): DATA_VALID only on a frame whose checksum verifies (MUST), and on
/// such frames at all (MAY: a WARN when never).
fn rx_data_valid(d: &mut NetDriver, f: &mut Findings) -> Result<(), DriverError> {
    const G: &str = "checksum";
    if d.features & (1 << bits::GUEST_CSUM) == 0 {
        f.push(Finding::not_run(
            G,
            "RX DATA_VALID",
            "VIRTIO_NET_F_GUEST_CSUM not offered",
        ));
        return Ok(());
    }
    let (mut valid, mut wrong) = (Vec::new(), Vec::new());
    for v4 in [true, false] {
        for tcp in [true, false] {
            let (lay, mut good) = inet::build(MAC, MAC, v4, tcp, &payload(33, 5), 9, ACK, 3);
            let at = lay.l4 + lay.csum_offset;
            let c = inet::l4_checksum_expected(&good, &lay);
            good[at..at + 2].copy_from_slice(&c.to_be_bytes());
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            d.send(0, &[&good, &bad])?;
            let mut got = Vec::new();
            let t0 = Instant::now();
            while got.len() < 2 && t0.elapsed() < IDLE {
                got.extend(d.recv_with_hdr(0)?);
            }
            let flags: Vec<u8> = got.iter().map(|(h, _)| h.flags).collect();
            match flags.as_slice() {
                [g, b] => {
                    valid.push(g & F_DATA_VALID != 0);
                    if b & F_DATA_VALID != 0 {
                        wrong.push(name(v4, tcp));
                    }
                }
                _ => wrong.push(format!("{}: {} frames back", name(v4, tcp), got.len())),
            }
        }
    }
    f.push(Finding::check(
        G,
        "RX DATA_VALID never on a bad checksum",
        true,
        wrong.is_empty(),
        "a TCP/UDP frame with a wrong checksum arrives without DATA_VALID",
        &if wrong.is_empty() {
            "never".into()
        } else {
            format!("DATA_VALID on: {}", wrong.join(", "))
        },
        "RX queue 0 virtio_net_hdr flags (virtio 1.2 5.1.6.4.1)",
    ));
    f.push(Finding::check(
        G,
        "RX DATA_VALID on verified checksums",
        false,
        valid.iter().all(|&v| v),
        "DATA_VALID on TCP/UDP over IPv4/IPv6 frames with a right checksum",
        &format!(
            "{} of {} had it",
            valid.iter().filter(|&&v| v).count(),
            valid.len()
        ),
        "RX queue 0 virtio_net_hdr flags (virtio 1.2 5.1.6.4)",
    ));
    Ok(())
}

/// What a TSO check expects of the segments of one GSO frame.
struct Gso {
    lay: Layout,
    frame: Vec<u8>,
    payload: Vec<u8>,
    mss: usize,
    ip_id: u16,
    seq: u32,
}

/// `tso`: a 64 KiB TCPv4 and TCPv6 GSO frame comes back as MSS-sized segments with the right
/// IP IDs / lengths, sequence numbers, flags, checksums and the payload byte-exact.
pub(super) fn tso(s: &Session, f: &mut Findings) -> Result<(), DriverError> {
    const G: &str = "tso";
    let mut d = started(s, DriverOptions::default())?;
    // The MTU, if the device says (5.1.4), else Ethernet's.
    let mtu = if d.features & (1 << bits::MTU) != 0 {
        d.net_config(net_cfg::MTU, 2)? as usize
    } else {
        1500
    };
    for (v4, bit, ty) in [
        (true, bits::HOST_TSO4, GSO_TCPV4),
        (false, bits::HOST_TSO6, GSO_TCPV6),
    ] {
        let ip = if v4 { "TCPv4" } else { "TCPv6" };
        if d.features & (1 << bit) == 0 {
            f.push(Finding::not_run(
                G,
                &format!("{ip} segmentation"),
                &format!(
                    "VIRTIO_NET_F_HOST_TSO{} not offered (device features {:#x})",
                    if v4 { 4 } else { 6 },
                    d.device_features
                ),
            ));
            continue;
        }
        // Even MSS and an even last segment: the checksum group owns odd lengths.
        let mss = (mtu - if v4 { 20 + 20 + 12 } else { 40 + 20 }) & !1;
        let mut len = 65_000usize;
        if (len % mss) % 2 == 1 {
            len -= 1;
        }
        let payload = payload(len, 9);
        let (lay, frame) = inet::build(
            MAC,
            MAC,
            v4,
            true,
            &payload,
            0xfffe_0000,
            ACK | PSH | FIN | CWR,
            0xfff0,
        );
        let g = Gso {
            lay,
            frame,
            payload,
            mss,
            ip_id: 0xfff0,
            seq: 0xfffe_0000,
        };
        let hdr = NetHdr::tso(ty, mss as u16, lay.l4 as u16, lay.payload as u16);
        let n = len.div_ceil(mss);
        let mut segs = if d.send_with_hdr(0, &hdr, &g.frame)? {
            collect(&mut d, n, IDLE)?
        } else {
            Vec::new()
        };
        check_segments(f, G, ip, &g, &mut segs);
    }
    d.reset()
}

fn check_segments(f: &mut Findings, g: &'static str, ip: &str, x: &Gso, segs: &mut [Vec<u8>]) {
    let lay = &x.lay;
    let n = x.payload.len().div_ceil(x.mss);
    trim(segs, |i| {
        lay.payload + x.mss.min(x.payload.len().saturating_sub(i * x.mss))
    });
    let loc = format!(
        "TX queue 0 -> RX queue 0, {ip} GSO frame of {} payload bytes, gso_size {}",
        x.payload.len(),
        x.mss
    );
    let sizes: Vec<usize> = segs
        .iter()
        .map(|s| s.len().saturating_sub(lay.payload))
        .collect();
    let want: Vec<usize> = (0..n)
        .map(|i| x.mss.min(x.payload.len() - i * x.mss))
        .collect();
    let whole = sizes == want && segs.iter().all(|s| s.len() >= lay.payload);
    f.push(Finding::check(
        g,
        &format!("{ip}: MSS-sized segments"),
        true,
        whole,
        &format!(
            "{n} segments of {} payload bytes (the last {})",
            x.mss,
            want.last().copied().unwrap_or(0)
        ),
        &format!(
            "{} segments, payload sizes {}",
            segs.len(),
            summarize(&sizes)
        ),
        &loc,
    ));
    if !whole {
        return;
    }
    let mut bad = |name: &str, what: &str, errs: Vec<String>| {
        f.push(Finding::check(
            g,
            &format!("{ip}: {name}"),
            true,
            errs.is_empty(),
            what,
            &if errs.is_empty() {
                "all segments".into()
            } else {
                first_few(&errs)
            },
            &loc,
        ));
    };
    if lay.v4 {
        let mut e = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let (id, tot) = (inet::be16(s, 18), usize::from(inet::be16(s, 16)));
            if id != x.ip_id.wrapping_add(i as u16) {
                e.push(format!("segment {i}: IP ID {id:#06x}"));
            }
            if tot != s.len() - inet::ETH {
                e.push(format!("segment {i}: total length {tot}"));
            }
            if !inet::ipv4_checksum_ok(s) {
                e.push(format!("segment {i}: IP header checksum"));
            }
        }
        bad(
            "IPv4 headers",
            &format!(
                "IP ID {:#06x} + segment index, total length, header checksum",
                x.ip_id
            ),
            e,
        );
    } else {
        let e = segs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let pl = usize::from(inet::be16(s, 18));
                (pl != s.len() - lay.l4).then(|| format!("segment {i}: payload length {pl}"))
            })
            .collect();
        bad(
            "IPv6 payload length",
            "payload length = TCP header + segment payload",
            e,
        );
    }
    let e = segs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let seq = inet::be32(s, lay.l4 + 4);
            let want = x.seq.wrapping_add((i * x.mss) as u32);
            (seq != want).then(|| format!("segment {i}: seq {seq:#x}, expected {want:#x}"))
        })
        .collect();
    bad(
        "TCP sequence numbers",
        "seq advanced by the payload bytes before each segment",
        e,
    );
    let e = segs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let fl = s[lay.l4 + 13];
            let last = i + 1 == n;
            let fin_psh = fl & (FIN | PSH);
            let ok = fin_psh == if last { FIN | PSH } else { 0 }
                && (fl & CWR != 0) == (i == 0)
                && fl & ACK != 0;
            (!ok).then(|| format!("segment {i}: flags {fl:#04x}"))
        })
        .collect();
    bad(
        "TCP flags",
        "FIN and PSH on the last segment only, CWR on the first only, ACK on all",
        e,
    );
    let e = segs
        .iter()
        .enumerate()
        .filter(|(_, s)| !inet::l4_checksum_ok(s, lay))
        .map(|(i, s)| {
            format!(
                "segment {i}: TCP checksum {:#06x}, expected {:#06x}",
                inet::be16(s, lay.l4 + 16),
                inet::l4_checksum_expected(s, lay)
            )
        })
        .collect();
    bad(
        "TCP checksums",
        "TCP checksum over the pseudo-header of each segment",
        e,
    );
    let mut e = Vec::new();
    let joined: Vec<u8> = segs
        .iter()
        .flat_map(|s| s[lay.payload..].iter().copied())
        .collect();
    if joined != x.payload {
        e.push("the segments' payloads joined differ from the GSO frame's".into());
    }
    for (i, s) in segs.iter().enumerate() {
        if s[..12] != x.frame[..12] {
            e.push(format!("segment {i}: Ethernet addresses"));
        }
    }
    bad(
        "payload and addresses byte-exact",
        "payloads joined = the GSO frame's payload; headers copied",
        e,
    );
}

fn summarize(v: &[usize]) -> String {
    match v {
        [] => "none".into(),
        [a] => format!("{a}"),
        [first, .., last] => format!("{first} ... {last}"),
    }
}
