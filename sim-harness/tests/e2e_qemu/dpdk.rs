//! The seed's own software drives the device: Debian's DPDK 24.11, unmodified, inside a guest behind
//! QEMU's intel-iommu (vfio-pci needs it: the kernel has no noiommu mode). The DPDK tree comes from
//! scripts/e2e-provision-dpdk.sh and is shared read-only over 9p; scripts/guest/dpdk.sh runs it.

use super::viommu::{map_stats, with_viommu};
use super::*;
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const GUEST_DPDK: &str = include_str!("../../../scripts/guest/dpdk.sh");

/// The DPDK tree (scripts/e2e-provision-dpdk.sh), beside the main e2e directory.
struct DpdkTree {
    root: PathBuf,
    modules: Vec<(String, Vec<u8>)>,
}

fn dpdk_tree(e2e: &E2e) -> DpdkTree {
    let dir = std::env::var_os("VDPA_E2E_DPDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{}-dpdk", e2e.dir.display())));
    let order = dir.join("modules/order");
    let root = dir.join("root");
    if !order.exists() || !root.join("usr/bin/dpdk-testpmd").exists() {
        panic!(
            "the DPDK guest tree is not provisioned: {} is missing.\nRun `make e2e-provision` \
             (scripts/e2e-provision-dpdk.sh, a few minutes, needs root and the Debian archive) or \
             point VDPA_E2E_DPDK_DIR at a provisioned directory.",
            order.display()
        );
    }
    let modules = fs::read_to_string(&order)
        .expect("read modules/order")
        .split_whitespace()
        .map(|m| {
            let data = fs::read(dir.join(format!("modules/{m}.ko"))).expect("read module");
            (m.to_string(), data)
        })
        .collect();
    DpdkTree { root, modules }
}

/// A guest that runs DPDK behind intel-iommu (`iommu=pt`: kernel drivers identity-mapped, vfio-pci
/// still gets a translating domain), 2 vCPUs, hugepages, the DPDK tree over 9p.
fn dpdk_vm(tree: &DpdkTree, name: &str, vars: &[(&'static str, String)]) -> VmSpec {
    let mut spec = with_viommu(VmSpec::new(name, guest_script(vars, GUEST_DPDK)))
        .arg("-cpu")
        .arg("max") // DPDK needs SSE4.2
        .arg("-fsdev")
        .arg(format!(
            "local,id=dpdkfs,path={},security_model=none,readonly=on",
            tree.root.display()
        ))
        .arg("-device")
        .arg("virtio-9p-pci,fsdev=dpdkfs,mount_tag=dpdkroot");
    spec.smp = 2;
    spec.mem_mb = 1536;
    spec.append = "intel_iommu=on iommu=pt hugepagesz=2M hugepages=320".into();
    spec.files.push(("dpdk".into(), 0o040755, Vec::new()));
    spec.files
        .push(("dpdk/modules".into(), 0o040755, Vec::new()));
    let order: Vec<&str> = tree.modules.iter().map(|(m, _)| m.as_str()).collect();
    spec.files.push((
        "dpdk/modules/order".into(),
        0o100644,
        order.join("\n").into_bytes(),
    ));
    for (m, data) in &tree.modules {
        spec.files
            .push((format!("dpdk/modules/{m}.ko"), 0o100644, data.clone()));
    }
    spec
}

fn dpdk_vars(role: &str, secs: u64) -> Vars {
    vec![
        ("ROLE", role.into()),
        ("NIC_PCI", OUR_PCI_ID.into()),
        ("RUN_SECS", secs.to_string()),
    ]
}

// ------------------------------------------------------------------------------------------------
// the host's end: an AF_PACKET socket on the TAP that `serve --port tap:NAME` created

/// Raw L2 access to a host interface (no IP anywhere: frames never leave the TAP).
struct RawPort {
    fd: OwnedFd,
    ifindex: i32,
}

const PACKET_OUTGOING: u8 = 4;

impl RawPort {
    fn open(ifname: &str) -> RawPort {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        // SAFETY: binds our socket to a valid sockaddr_ll of the right length.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        let rcvbuf: libc::c_int = 64 << 20;
        // SAFETY: setsockopt with an int option; SO_RCVBUFFORCE works as root.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &rcvbuf as *const _ as *const libc::c_void,
                4,
            )
        };
        RawPort { fd, ifindex }
    }

    /// The next frame that came IN from the interface (the device's TX), or None after `timeout`.
    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if n <= 0 {
                return None;
            }
            // SAFETY: as above, zeroed sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and sll are valid for their lengths.
            let r = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if r < 0 {
                panic!("AF_PACKET recv: {}", std::io::Error::last_os_error());
            }
            if sll.sll_pkttype != PACKET_OUTGOING {
                return Some(r as usize);
            }
        }
    }

    /// Sends one frame into the interface (it reaches the device's RX).
    fn send(&self, frame: &[u8]) {
        // SAFETY: as above.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        loop {
            // SAFETY: frame and sll are valid for their lengths.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r == frame.len() as isize {
                return;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "AF_PACKET send: {e}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Experimental ethertype (IEEE 802 local experimental) for the host's test frames.
const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5];

fn test_frame(dst: [u8; 6], src: [u8; 6], seq: u32) -> Vec<u8> {
    let len = 60 + (seq as usize * 97) % 1455; // 60..1514 bytes
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_TEST);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(2_654_435_761) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

// ------------------------------------------------------------------------------------------------
// item 2: DPDK's virtio PMD (net_virtio) in testpmd

fn serve_for_dpdk(dir: &Scratch, mac: &str, tap: &str, extra: &[&str]) -> Serve {
    let mut args: Vec<String> = vec![
        "--mac".into(),
        mac.into(),
        "--queue-pairs".into(),
        "1".into(),
        "--port".into(),
        format!("tap:{tap}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Serve::start(dir, "dev", &args)
}

/// testpmd txonly: every frame testpmd says it sent reaches the host TAP (count and content:
/// IPv4/UDP from the device's MAC to the peer MAC), then testpmd io forwarding: the host sends
/// 2,000 frames of 60-1514 bytes into the device and gets each back byte-exact.
fn testpmd_virtio_pmd(test: &str, tap_name: &str, mac: &str, packed: bool) {
    require_root(test);
    let e2e = e2e();
    let tree = dpdk_tree(&e2e);
    let dir = Scratch::new(test);
    let extra: &[&str] = if packed { &[] } else { &["--no-packed"] };
    let mut serve = serve_for_dpdk(&dir, mac, tap_name, extra);
    let _tap = Tap::adopt_unaddressed(tap_name, &mut serve);
    let port = RawPort::open(tap_name);
    let dev_mac = mac_bytes(mac);
    let peer = "02:00:00:e2:e0:fe";
    let peer_mac = mac_bytes(peer);

    // txonly
    let mut vars = dpdk_vars("testpmd", 8);
    vars.push(("FWD", "txonly".into()));
    vars.push(("ETH_PEER", peer.into()));
    let spec = dpdk_vm(&tree, "txonly", &vars)
        .arg("-device")
        .arg(serve.device_arg());
    let mut vm = Vm::boot(&e2e, &dir, spec);
    vm.wait_for("E2E-READY traffic", 1, Duration::from_secs(180));
    let mut buf = vec![0u8; 65536];
    let (mut got, mut bad) = (0u64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        let Some(n) = port.recv(&mut buf, Duration::from_millis(500)) else {
            if vm.count("E2E-RESULT testpmd_rx") > 0 {
                break;
            }
            vm.check_alive("testpmd txonly frames");
            continue;
        };
        let f = &buf[..n];
        if f[6..12] != dev_mac {
            continue; // the host's own chatter on the TAP
        }
        // testpmd txonly (app/test-pmd/txonly.c): 64-byte IPv4/UDP frames to --eth-peer
        let ok = n == 60 || n == 64;
        let ok = ok && f[..6] == peer_mac && f[12..14] == [0x08, 0x00] && f[23] == 17;
        if ok {
            got += 1;
        } else {
            bad += 1;
        }
    }
    // drain what is still in the socket
    while let Some(n) = port.recv(&mut buf, Duration::from_millis(300)) {
        if buf[6..12] == dev_mac && n <= 64 {
            got += 1;
        }
    }
    let b = vm.finish(Duration::from_secs(120));
    let sent = b.num("testpmd_tx");
    println!(
        "E2E-BENCH {test} txonly: testpmd sent {sent} frames, the host TAP got {got} ({bad} malformed) \
         in ~8 s of the guest's testpmd forwarding"
    );
    assert!(
        sent > 1000,
        "testpmd sent only {sent} frames\n{}",
        vm.diag()
    );
    assert_eq!(bad, 0, "malformed frames from the device\n{}", vm.diag());
    assert_eq!(
        got,
        sent,
        "frames testpmd sent vs frames the TAP got\n{}",
        vm.diag()
    );
    drop(vm);

    // io forwarding: host -> device RX -> testpmd -> device TX -> host, byte-exact
    let mut vars = dpdk_vars("testpmd", 10);
    vars.push(("FWD", "io".into()));
    vars.push(("ETH_PEER", peer.into()));
    let spec = dpdk_vm(&tree, "io", &vars)
        .arg("-device")
        .arg(serve.device_arg());
    let mut vm = Vm::boot(&e2e, &dir, spec);
    vm.wait_for("E2E-READY traffic", 1, Duration::from_secs(180));
    // probe until testpmd forwards (EAL and port start take a while under TCG)
    let t0 = Instant::now();
    let probe = test_frame(dev_mac, peer_mac, u32::MAX);
    'probe: loop {
        port.send(&probe);
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_millis(300) {
            if let Some(n) = port.recv(&mut buf, Duration::from_millis(100)) {
                if buf[..n] == probe[..] {
                    break 'probe;
                }
            }
        }
        vm.check_alive("testpmd to forward the probe");
        assert!(
            t0.elapsed() < Duration::from_secs(50),
            "testpmd never forwarded\n{}",
            vm.diag()
        );
    }
    const N: u32 = 2000;
    let mut seen = vec![false; N as usize];
    let (mut echoed, mut wrong) = (0u32, 0u32);
    let t1 = Instant::now();
    for seq in 0..N {
        port.send(&test_frame(dev_mac, peer_mac, seq));
        if seq % 16 == 15 {
            // let the TCG guest keep up: a few frames in flight, never a ring's worth
            while let Some(n) = port.recv(&mut buf, Duration::from_millis(2)) {
                check_echo(&buf[..n], &mut seen, &mut echoed, &mut wrong, dev_mac);
            }
        }
    }
    while echoed < N && t1.elapsed() < Duration::from_secs(20) {
        if let Some(n) = port.recv(&mut buf, Duration::from_millis(200)) {
            check_echo(&buf[..n], &mut seen, &mut echoed, &mut wrong, dev_mac);
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    let b = vm.finish(Duration::from_secs(120));
    println!(
        "E2E-BENCH {test} io: {N} frames of 60-1514 B host -> device -> testpmd -> device -> host: \
         {echoed} back byte-exact, {wrong} wrong, {secs:.1} s; testpmd RX {} TX {}",
        b.get("testpmd_rx").unwrap_or("?"),
        b.get("testpmd_tx").unwrap_or("?")
    );
    assert_eq!(wrong, 0, "frames that came back changed\n{}", vm.diag());
    assert_eq!(echoed, N, "frames lost on the way\n{}", vm.diag());
    assert!(
        b.num("testpmd_rx") >= N as u64,
        "testpmd RX count\n{}",
        vm.diag()
    );
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
    let st = map_stats(&mut serve);
    println!("E2E-BENCH {test} DMA maps (vfio-pci behind intel-iommu): {st}");
}

fn check_echo(f: &[u8], seen: &mut [bool], echoed: &mut u32, wrong: &mut u32, dev: [u8; 6]) {
    if f.len() < 18 || f[..6] != dev || f[12..14] != ETHERTYPE_TEST {
        return;
    }
    let seq = u32::from_be_bytes(f[14..18].try_into().unwrap());
    if seq == u32::MAX {
        return; // a late probe
    }
    let src: [u8; 6] = f[6..12].try_into().unwrap();
    if (seq as usize) < seen.len() && f == test_frame(dev, src, seq) && !seen[seq as usize] {
        seen[seq as usize] = true;
        *echoed += 1;
    } else {
        *wrong += 1;
    }
}

/// Item 2, split ring: dpdk-testpmd's net_virtio PMD on the device (vfio-pci, intel-iommu).
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_testpmd_virtio_pmd_split() {
    testpmd_virtio_pmd(
        "dpdk_testpmd_virtio_pmd_split",
        "vdpae6",
        "02:00:00:e2:e0:06",
        false,
    );
}

/// Item 2, packed ring: the device offers VIRTIO_F_RING_PACKED and the PMD takes it.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_testpmd_virtio_pmd_packed() {
    testpmd_virtio_pmd(
        "dpdk_testpmd_virtio_pmd_packed",
        "vdpae7",
        "02:00:00:e2:e0:07",
        true,
    );
}

// ------------------------------------------------------------------------------------------------
// issue #13 item 5: testpmd's csum forwarding engine asks the device to complete TCP/UDP checksums

/// What the host sends in the csum test, and what must come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CsumKind {
    /// IPv4/TCP, checksum field 0.
    Tcp4Zero,
    /// IPv4/TCP, checksum field wrong.
    Tcp4Wrong,
    /// IPv4/UDP, checksum field wrong (not 0).
    Udp4Wrong,
    /// IPv6/TCP, checksum field wrong.
    Tcp6Wrong,
    /// IPv6/UDP, checksum field wrong.
    Udp6Wrong,
    /// IPv4/UDP without a checksum (0): csumonly.c leaves it alone ("do not recalculate udp
    /// cksum if it was 0"), so it crosses the device without NEEDS_CSUM.
    Udp4NoCsum,
}

const CSUM_KINDS: [CsumKind; 6] = [
    CsumKind::Tcp4Zero,
    CsumKind::Tcp4Wrong,
    CsumKind::Udp4Wrong,
    CsumKind::Tcp6Wrong,
    CsumKind::Udp6Wrong,
    CsumKind::Udp4NoCsum,
];
const CSUM_MAGIC: &[u8; 8] = b"vdpacsum";

impl CsumKind {
    fn v4(self) -> bool {
        matches!(
            self,
            Self::Tcp4Zero | Self::Tcp4Wrong | Self::Udp4Wrong | Self::Udp4NoCsum
        )
    }
    fn tcp(self) -> bool {
        matches!(self, Self::Tcp4Zero | Self::Tcp4Wrong | Self::Tcp6Wrong)
    }
    /// Whether testpmd asks the device for this frame's checksum (NEEDS_CSUM).
    fn offloaded(self) -> bool {
        self != Self::Udp4NoCsum
    }
}

/// Frame `seq` of the csum test: (what the host sends, what must come back from byte 12 on:
/// the same frame with a correct IPv4 header checksum and a correct TCP/UDP checksum, or UDP's
/// 0 kept). The payload (18..1417 bytes, odd and even) starts with CSUM_MAGIC and `seq`.
fn csum_frame(seq: u32, dev: [u8; 6], host: [u8; 6]) -> (CsumKind, Vec<u8>, Vec<u8>) {
    use sim_harness::inet;
    let kind = CSUM_KINDS[seq as usize % CSUM_KINDS.len()];
    let len = 18 + (seq as usize * 211) % 1400;
    let mut payload = pseudo_random(len, u64::from(seq) * 0x9e37_79b9 + 1);
    payload.truncate(len);
    payload[..8].copy_from_slice(CSUM_MAGIC);
    payload[8..12].copy_from_slice(&seq.to_be_bytes());
    let (lay, mut good) = inet::build(
        host,
        dev,
        kind.v4(),
        kind.tcp(),
        &payload,
        seq.wrapping_mul(7919),
        inet::ACK | inet::PSH,
        seq as u16,
    );
    let at = lay.l4 + lay.csum_offset;
    let l4 = if kind == CsumKind::Udp4NoCsum {
        0
    } else {
        inet::l4_checksum_expected(&good, &lay)
    };
    good[at..at + 2].copy_from_slice(&l4.to_be_bytes());
    let mut sent = good.clone();
    let wrong = match kind {
        CsumKind::Tcp4Zero | CsumKind::Udp4NoCsum => 0,
        _ => !l4 ^ 0x5a5a, // neither right nor 0
    };
    sent[at..at + 2].copy_from_slice(&wrong.to_be_bytes());
    if kind.v4() {
        // testpmd recomputes the IPv4 header checksum in software (`csum set ip sw`)
        sent[inet::ETH + 10..inet::ETH + 12].copy_from_slice(&[0xde, 0xad]);
    }
    (kind, sent, good[12..].to_vec())
}

/// The sequence number of a csum-test frame (any kind), if it is one.
fn csum_seq(f: &[u8]) -> Option<u32> {
    let v4 = match f.get(12..14)? {
        [0x08, 0x00] => true,
        [0x86, 0xdd] => false,
        _ => return None,
    };
    let proto = *f.get(if v4 { 14 + 9 } else { 14 + 6 })?;
    let lay = sim_harness::inet::Layout::of(v4, proto == 6);
    let p = f.get(lay.payload..lay.payload + 12)?;
    (p[..8] == CSUM_MAGIC[..]).then(|| u32::from_be_bytes(p[8..12].try_into().unwrap()))
}

/// Issue #13 item 5: DPDK testpmd's csum forwarding engine (app/test-pmd/csumonly.c) on the
/// net_virtio PMD with TCP and UDP checksum offload (`csum set tcp hw 0`, `csum set udp hw 0`;
/// the PMD offers RTE_ETH_TX_OFFLOAD_TCP_CKSUM / UDP_CKSUM with VIRTIO_NET_F_CSUM but not
/// IPV4_CKSUM, so `csum set ip hw 0` is refused and the IPv4 header checksum is testpmd's).
/// The host sends TCP and UDP over IPv4 and IPv6 with zero or wrong checksums through its TAP;
/// testpmd puts the pseudo-header sum in and sends them back with NEEDS_CSUM
/// (drivers/net/virtio/virtqueue.h virtqueue_xmit_offload). The TAP port is
/// `tap:vdpaecs:no-offloads`, so the device completes the checksums itself and the host sees
/// them as a wire would: every frame comes back byte-exact with correct IPv4, TCP and UDP
/// checksums, the device's `tx_csum` rises by exactly the frames testpmd offloaded (UDP
/// without a checksum is not), and testpmd's own per-frame "tx: flags=" lines say
/// RTE_MBUF_F_TX_TCP_CKSUM / UDP_CKSUM for as many frames.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_testpmd_csum_engine_tx_checksum_offload() {
    const TEST: &str = "dpdk_testpmd_csum_engine_tx_checksum_offload";
    let (tap_name, mac) = ("vdpaecs", "02:00:00:e2:e0:c5");
    require_root(TEST);
    let e2e = e2e();
    let tree = dpdk_tree(&e2e);
    let dir = Scratch::new(TEST);
    let mut serve = Serve::start(
        &dir,
        "dev",
        &[
            "--mac",
            mac,
            "--queue-pairs",
            "1",
            "--port",
            &format!("tap:{tap_name}:no-offloads"),
        ]
        .map(String::from),
    );
    let _tap = Tap::adopt_unaddressed(tap_name, &mut serve);
    // no IPv6 autoconfiguration chatter from the host on this TAP (a host without IPv6 has none)
    let v6 = format!("/proc/sys/net/ipv6/conf/{tap_name}/disable_ipv6");
    if Path::new(&v6).exists() {
        fs::write(&v6, "1").unwrap_or_else(|e| panic!("{TEST}: {v6}: {e}"));
    }
    let port = RawPort::open(tap_name);
    let dev_mac = mac_bytes(mac);
    let host_mac = mac_bytes("02:00:00:e2:e0:fe");

    let spec = dpdk_vm(&tree, "csum", &dpdk_vars("csum", 5))
        .arg("-device")
        .arg(serve.device_arg());
    let mut vm = Vm::boot(&e2e, &dir, spec);
    vm.wait_for("E2E-READY traffic", 1, Duration::from_secs(180));
    let mut buf = vec![0u8; 65536];
    // probe (UDP without a checksum: not offloaded) until testpmd forwards
    let probe_seq = u32::MAX / 6 * 6 - 1; // a Udp4NoCsum frame
    let probe = csum_frame(probe_seq, dev_mac, host_mac);
    assert_eq!(probe.0, CsumKind::Udp4NoCsum);
    let t0 = Instant::now();
    'probe: loop {
        port.send(&probe.1);
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_millis(300) {
            if let Some(n) = port.recv(&mut buf, Duration::from_millis(100)) {
                if csum_seq(&buf[..n]) == Some(probe_seq) {
                    break 'probe;
                }
            }
        }
        vm.check_alive("testpmd to forward the probe");
        assert!(
            t0.elapsed() < Duration::from_secs(50),
            "testpmd never forwarded\n{}",
            vm.diag()
        );
    }
    let csum0 = live_counter(&serve, "tx_csum");

    const N: u32 = 300;
    let frames: Vec<_> = (0..N).map(|s| csum_frame(s, dev_mac, host_mac)).collect();
    let mut back: Vec<Option<Vec<u8>>> = vec![None; N as usize];
    let take = |f: &[u8], back: &mut Vec<Option<Vec<u8>>>| {
        if f.len() >= 12 && f[6..12] == dev_mac {
            if let Some(s) = csum_seq(f).filter(|s| *s < N) {
                back[s as usize].get_or_insert_with(|| f.to_vec());
            }
        }
    };
    let t1 = Instant::now();
    for (i, (_, sent, _)) in frames.iter().enumerate() {
        port.send(sent);
        if i % 16 == 15 {
            while let Some(n) = port.recv(&mut buf, Duration::from_millis(2)) {
                take(&buf[..n], &mut back);
            }
        }
    }
    while back.iter().any(Option::is_none) && t1.elapsed() < Duration::from_secs(20) {
        if let Some(n) = port.recv(&mut buf, Duration::from_millis(200)) {
            take(&buf[..n], &mut back);
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    let csum1 = live_counter(&serve, "tx_csum");
    let b = vm.finish(Duration::from_secs(120));

    let offloaded = frames.iter().filter(|f| f.0.offloaded()).count() as u64;
    let tcp = frames.iter().filter(|f| f.0.tcp()).count() as u64;
    let udp = offloaded - tcp;
    let (mut ok, mut lost, mut wrong, mut examples) = (0u64, Vec::new(), 0u64, Vec::new());
    for (s, ((kind, _, good), got)) in frames.iter().zip(&back).enumerate() {
        let Some(got) = got else {
            lost.push(s);
            continue;
        };
        let v4 = kind.v4();
        let lay = sim_harness::inet::Layout::of(v4, kind.tcp());
        let csums_ok = (!v4 || sim_harness::inet::ipv4_checksum_ok(got))
            && (*kind == CsumKind::Udp4NoCsum || sim_harness::inet::l4_checksum_ok(got, &lay));
        if csums_ok && got[12..] == good[..] {
            ok += 1;
            continue;
        }
        wrong += 1;
        if examples.len() < 5 {
            examples.push(format!(
                "seq {s} {kind:?}: checksums ok {csums_ok}, {} bytes back, {} expected",
                got.len(),
                good.len() + 12
            ));
        }
    }
    println!(
        "E2E-BENCH {TEST}: {N} frames (TCP/UDP over IPv4/IPv6, 60-1514 B) host -> device -> testpmd csum \
         -> device -> host in {secs:.1} s: {ok} byte-exact with correct checksums, {} lost, {wrong} wrong; \
         device tx_csum +{} (expected {offloaded}); testpmd tx flags TCP_CKSUM {} UDP_CKSUM {} of {} lines, \
         tx_offload capa [{}] conf [{}], ip {} tcp {} udp {}, RX {} TX {}",
        lost.len(),
        csum1 - csum0,
        b.get("csum_tx_tcp_cksum").unwrap_or("?"),
        b.get("csum_tx_udp_cksum").unwrap_or("?"),
        b.get("csum_tx_lines").unwrap_or("?"),
        b.get("csum_tx_capa").unwrap_or("?"),
        b.get("csum_tx_conf").unwrap_or("?"),
        b.get("csum_ip").unwrap_or("?"),
        b.get("csum_tcp").unwrap_or("?"),
        b.get("csum_udp").unwrap_or("?"),
        b.get("testpmd_rx").unwrap_or("?"),
        b.get("testpmd_tx").unwrap_or("?"),
    );
    assert!(
        lost.is_empty() && wrong == 0,
        "{TEST}: lost {lost:?}, {wrong} wrong, e.g. {examples:?}\n{}",
        vm.diag()
    );
    assert_eq!(
        csum1 - csum0,
        offloaded,
        "{TEST}: the device's tx_csum vs the frames testpmd offloaded\n{}",
        serve.diag()
    );
    // testpmd: what the PMD offers, what the port was configured with, what each frame asked
    let capa: BTreeSet<&str> = b.get("csum_tx_capa").unwrap_or("").split(',').collect();
    assert!(
        capa.contains("TCP_CKSUM") && capa.contains("UDP_CKSUM") && !capa.contains("IPV4_CKSUM"),
        "{TEST}: the virtio PMD's TX offload capabilities: {capa:?}\n{}",
        vm.diag()
    );
    let conf: BTreeSet<&str> = b.get("csum_tx_conf").unwrap_or("").split(',').collect();
    assert!(
        conf.contains("TCP_CKSUM") && conf.contains("UDP_CKSUM"),
        "{TEST}: testpmd's port TX offload configuration: {conf:?}\n{}",
        vm.diag()
    );
    assert_eq!(
        (
            b.get("csum_ip_hw_refused"),
            b.get("csum_ip"),
            b.get("csum_tcp"),
            b.get("csum_udp")
        ),
        (Some("1"), Some("sw"), Some("hw"), Some("hw")),
        "{TEST}: csum show 0\n{}",
        vm.diag()
    );
    assert_eq!(
        (b.num("csum_tx_tcp_cksum"), b.num("csum_tx_udp_cksum")),
        (tcp, udp),
        "{TEST}: testpmd's per-frame TX offload flags\n{}",
        vm.diag()
    );
    assert!(
        b.num("testpmd_tx") > u64::from(N),
        "{TEST}: testpmd TX count\n{}",
        vm.diag()
    );
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
}

// ------------------------------------------------------------------------------------------------
// item 3: DPDK's ifc vDPA driver (examples/vdpa, devarg vdpa=1) with testpmd's net_virtio_user as
// the vhost-user frontend in the same guest: frames go frontend -> vhost-user -> ifc driver -> our
// device -> host TAP, the host echoes them, and they come back the same way.

/// Echoes every frame the device sends back into it for `dur` (or until the guest's frontend
/// reports); returns (distinct frames, frames seen again after an echo).
fn echo_host(port: &RawPort, vm: &mut Vm, done: &str, dur: Duration) -> (usize, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut again = 0u64;
    let mut buf = vec![0u8; 65536];
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        match port.recv(&mut buf, Duration::from_millis(200)) {
            Some(n) => {
                let f = buf[..n].to_vec();
                port.send(&f);
                if !seen.insert(f) {
                    again += 1;
                }
            }
            None => {
                if vm.count(done) > 0 {
                    break;
                }
                vm.check_alive("the vDPA frontend's traffic");
            }
        }
    }
    (seen.len(), again)
}

/// Item 3: the ifc vDPA driver's data path with testpmd (net_virtio_user, io forwarding, one
/// --tx-first burst) as the frontend, the host TAP echoing: after the first burst every frame the
/// device sends is one the host echoed back into it, byte for byte.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_ifc_vdpa_virtio_user_datapath() {
    let test = "dpdk_ifc_vdpa_virtio_user_datapath";
    require_root(test);
    let e2e = e2e();
    let tree = dpdk_tree(&e2e);
    let dir = Scratch::new(test);
    let (tap_name, mac) = ("vdpae8", "02:00:00:e2:e0:08");
    let mut serve = serve_for_dpdk(&dir, mac, tap_name, &[]);
    let _tap = Tap::adopt_unaddressed(tap_name, &mut serve);
    let port = RawPort::open(tap_name);
    let mut vars = dpdk_vars("vdpa", 10);
    vars.push(("FRONTEND", "virtio-user".into()));
    let spec = dpdk_vm(&tree, "vdpa", &vars)
        .arg("-device")
        .arg(serve.device_arg());
    let mut vm = Vm::boot(&e2e, &dir, spec);
    vm.wait_for("E2E-READY traffic", 1, Duration::from_secs(240));
    let (distinct, again) = echo_host(
        &port,
        &mut vm,
        "E2E-RESULT frontend_rx",
        Duration::from_secs(150),
    );
    let b = vm.finish(Duration::from_secs(200));
    println!(
        "E2E-BENCH {test}: frontend testpmd RX {} TX {}; the host TAP saw {distinct} distinct \
         frames and {again} frames again after echoing them",
        b.get("frontend_rx").unwrap_or("?"),
        b.get("frontend_tx").unwrap_or("?")
    );
    assert_eq!(
        b.get("vdpa_configured"),
        Some("1"),
        "the vDPA device was not configured\n{}",
        vm.diag()
    );
    assert!(
        distinct <= 64,
        "frames the host never echoed: {distinct} distinct\n{}",
        vm.diag()
    );
    assert!(again > 1000, "too few round trips: {again}\n{}", vm.diag());
    assert!(b.num("frontend_rx") > 1000, "frontend RX\n{}", vm.diag());
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
}

// ------------------------------------------------------------------------------------------------
// item 4: the ifc driver's hardware live-migration path, driven by our vhost-user frontend
// (sim-harness/lm-frontend) against DPDK's vdpa example: SET_LOG_BASE + LOG_ALL make the driver
// program log base / end / enable in BAR4; GET_VRING_BASE makes it stop the queues and read the
// ring state from the LM block. The frontend checks the log and the ring bases.

fn lm_frontend_bin() -> PathBuf {
    let p = std::env::var_os("VDPA_LM_FRONTEND_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| vdpa_emu_bin().with_file_name("vdpa-lm-frontend"));
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p vdpa-lm-frontend` (make e2e does)",
        p.display()
    );
    p
}

/// What one LM run left: the guest's markers, and serve, QEMU and the scratch directory (kept
/// alive so that a failing check still finds the logs).
struct LmRun {
    b: Boot,
    serve: Serve,
    vm: Vm,
    _dir: Scratch,
}

/// Runs the frontend in a guest against `serve ARGS` (loopback port).
fn lm_run(test: &str, serve_args: &[&str], vdpa_args: &str) -> LmRun {
    require_root(test);
    let e2e = e2e();
    let tree = dpdk_tree(&e2e);
    let dir = Scratch::new(test);
    let mut args: Vec<String> = vec!["--queue-pairs".into(), "1".into()];
    args.extend(serve_args.iter().map(|s| s.to_string()));
    let serve = Serve::start(&dir, "dev", &args);
    let mut vars = dpdk_vars("vdpa", 30);
    vars.push(("FRONTEND", "lm".into()));
    vars.push(("VDPA_ARGS", vdpa_args.into()));
    let mut spec = dpdk_vm(&tree, "lm", &vars)
        .arg("-device")
        .arg(serve.device_arg());
    let bin = fs::read(lm_frontend_bin()).expect("read the frontend binary");
    spec.files
        .push(("dpdk/vdpa-lm-frontend".into(), 0o100755, bin));
    let mut vm = Vm::boot(&e2e, &dir, spec);
    let st = vm.wait_exit(Duration::from_secs(400));
    let b = vm.last_boot();
    eprintln!("e2e: {test}: QEMU {st}");
    LmRun {
        b,
        serve,
        vm,
        _dir: dir,
    }
}

fn lm_evidence(test: &str, b: &Boot) {
    println!(
        "E2E-BENCH {test}: ring bases rx/tx {}/{} vs used indexes in memory {}/{}; log bits {} for \
         {} pages written while logging (missing {}, outside {}); used rings logged {}",
        b.get("lm_ring_base_rx").unwrap_or("?"),
        b.get("lm_ring_base_tx").unwrap_or("?"),
        b.get("lm_used_rx").unwrap_or("?"),
        b.get("lm_used_tx").unwrap_or("?"),
        b.get("lm_log_bits").unwrap_or("?"),
        b.get("lm_pages_written").unwrap_or("?"),
        b.get("lm_log_missing").unwrap_or("?"),
        b.get("lm_log_extra").unwrap_or("?"),
        b.get("lm_used_rings_logged").unwrap_or("?"),
    );
}

/// Where DPDK's ifc driver maps what it hands the device for live migration (drivers/vdpa/ifc/
/// ifcvf_vdpa.c): the vhost log at IFCVF_LOG_BASE, the mediated rings of the software fallback at
/// IFCVF_MEDIATED_VRING.
const IFCVF_LOG_BASE: u64 = 0x1000_0000_0000;
const IFCVF_MEDIATED_VRING: u64 = 0x2000_0000_0000;

fn lm_expect_pass(test: &str, serve_args: &[&str], vdpa_args: &str, sw: bool) {
    let LmRun {
        b,
        mut serve,
        vm,
        _dir,
    } = lm_run(test, serve_args, vdpa_args);
    lm_evidence(test, &b);
    assert!(
        b.done && b.fails.is_empty() && b.extra_exit == Some(0),
        "{test}: the frontend's checks failed: {:?}\n{}",
        b.fails,
        vm.diag()
    );
    assert_eq!(b.get("lm_check"), Some("pass"), "{test}\n{}", vm.diag());
    assert!(
        b.num("lm_log_bits") > 0,
        "{test}: nothing was logged\n{}",
        vm.diag()
    );
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
    // the driver really took the path under test: the highest IOVA the device was given
    let st = map_stats(&mut serve);
    let top = st["iova_end_max"].as_u64().unwrap_or(0);
    println!("E2E-BENCH {test}: highest IOVA mapped for the device {top:#x}");
    if sw {
        assert!(
            top > IFCVF_MEDIATED_VRING,
            "{test}: no mediated rings mapped: {st}"
        );
    } else {
        assert!(
            (IFCVF_LOG_BASE..IFCVF_MEDIATED_VRING).contains(&(top - 1)),
            "{test}: the log was not mapped at IFCVF_LOG_BASE: {st}"
        );
    }
}

/// Item 4 with hardware logging: the device logs through the LM block's log registers.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_ifc_vdpa_hw_live_migration() {
    lm_expect_pass("dpdk_ifc_vdpa_hw_live_migration", &[], "", false);
}

/// The same on `serve --profile ifcvf` (docs/profiles.md): DPDK's ifc driver adds CTRL_VQ,
/// GUEST_ANNOUNCE and STATUS for the frontend but writes `negotiated & device features` to the
/// device (base/ifcvf.c ifcvf_config_features), so the device runs on the ifcvf set, and the
/// hardware-logging migration works on it.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_ifc_vdpa_hw_live_migration_ifcvf_profile() {
    lm_expect_pass(
        "dpdk_ifc_vdpa_hw_live_migration_ifcvf_profile",
        &["--profile", "ifcvf"],
        "",
        false,
    );
}

/// Item 4 with the driver's software fallback (`sw-live-migration=1`: a relay with mediated used
/// rings logs what the device wrote).
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_ifc_vdpa_sw_live_migration() {
    lm_expect_pass(
        "dpdk_ifc_vdpa_sw_live_migration",
        &[],
        ",sw-live-migration=1",
        true,
    );
}

/// Item 4 against a broken device: with `stale-used-idx` the ring state the driver reads at stop
/// lags the used index, and the frontend's check must fail.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn dpdk_ifc_vdpa_live_migration_catches_stale_used_idx() {
    let test = "dpdk_ifc_vdpa_live_migration_catches_stale_used_idx";
    let LmRun { b, vm, _dir, .. } = lm_run(test, &["--quirk", "stale-used-idx"], "");
    lm_evidence(test, &b);
    assert_eq!(
        b.get("lm_check"),
        Some("fail"),
        "{test}: the frontend did not catch the quirk\n{}",
        vm.diag()
    );
}

// ------------------------------------------------------------------------------------------------
// item 5: Linux vhost-vdpa. ifcvf + vhost_vdpa in the guest kernel, DPDK's virtio_user on
// /dev/vhost-vdpa-0 (vhost-vdpa maps the frontend's memory through its own IOMMU domain, so the
// vIOMMU is required); the device serves the Linux LM layout (ifcvf_get_vq_state reads it).

/// `LM ring state read` lines of the serve log: (queue, last_avail, last_used).
fn lm_reads(serve: &Serve) -> Vec<(u16, u16, u16)> {
    let field = |l: &str, k: &str| -> Option<u16> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
    };
    read_lossy(&serve.log)
        .lines()
        .filter(|l| l.contains("LM ring state read"))
        .filter_map(|l| {
            Some((
                field(l, "queue")?,
                field(l, "last_avail")?,
                field(l, "last_used")?,
            ))
        })
        .collect()
}

/// Item 5: traffic flows through ifcvf + vhost_vdpa, and when testpmd stops, vhost-vdpa's
/// GET_VRING_BASE reads each ring's state from the LM block (Linux layout) through ifcvf. With 2
/// vCPUs ifcvf gets 2 MSI-X vectors and shares one among the vqs (ifcvf_request_vqs_reused_irq).
#[test]
#[ignore = "needs QEMU: make e2e"]
fn linux_vhost_vdpa_virtio_user() {
    vhost_vdpa_run("linux_vhost_vdpa_virtio_user", 2, "-vqs-reused-irq");
}

/// The same with 4 vCPUs: ifcvf gets a vector per vq plus one for config (ifcvf_request_per_vq_irq).
#[test]
#[ignore = "needs QEMU: make e2e"]
fn linux_vhost_vdpa_virtio_user_vector_per_vq() {
    vhost_vdpa_run("linux_vhost_vdpa_virtio_user_vector_per_vq", 4, "]-2,");
}

/// One vhost-vdpa run on `vcpus` vCPUs; `irq_mark` must appear in ifcvf's MSI-X vector names.
fn vhost_vdpa_run(test: &str, vcpus: u32, irq_mark: &str) {
    require_root(test);
    let e2e = e2e();
    let tree = dpdk_tree(&e2e);
    let dir = Scratch::new(test);
    // One doorbell page per queue: the device offers VIRTIO_F_NOTIFICATION_DATA, and then
    // DPDK's virtio-user maps each queue's notify page through /dev/vhost-vdpa-0
    // (drivers/net/virtio/virtio_user/virtio_user_dev.c virtio_user_dev_init_notify), which
    // vhost_vdpa allows only for a page-sized, page-aligned doorbell (ifcvf reports
    // notify_off_multiplier as its size). With compact doorbells testpmd does not start.
    let args: Vec<String> = [
        "--queue-pairs",
        "1",
        "--lm-layout",
        "linux",
        "--notify-layout",
        "page-per-queue",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut serve = Serve::start(&dir, "dev", &args);
    let vars = dpdk_vars("vhost-vdpa", 10);
    let mut spec = dpdk_vm(&tree, "vhost-vdpa", &vars)
        .arg("-device")
        .arg(serve.device_arg());
    spec.smp = vcpus;
    let mut vm = Vm::boot(&e2e, &dir, spec);
    let b = vm.finish(Duration::from_secs(300));
    let reads = lm_reads(&serve);
    println!(
        "E2E-BENCH {test}: testpmd (virtio_user on /dev/vhost-vdpa-0) RX {} TX {}; LM ring state \
         reads at stop (queue, last_avail, last_used): {reads:?}; ifcvf's MSI-X vectors: {}",
        b.get("testpmd_rx").unwrap_or("?"),
        b.get("testpmd_tx").unwrap_or("?"),
        b.get("ifcvf_irqs").unwrap_or("?"),
    );
    assert_eq!(b.get("vdpa_driver"), Some("vhost_vdpa"), "{}", vm.diag());
    let irqs = b.get("ifcvf_irqs").unwrap_or("");
    assert!(
        irqs.contains(irq_mark),
        "{test}: ifcvf vector mode: {irqs}\n{}",
        vm.diag()
    );
    assert!(
        b.num("testpmd_rx") > 1000,
        "too little traffic\n{}",
        vm.diag()
    );
    // What ifcvf_get_vq_state read must be where the traffic left the rings: every frame
    // testpmd sent was consumed from TX (queue 1), and the loopback put each one into an RX
    // buffer (queue 0) of which testpmd had taken all but the last burst when it stopped.
    let (rx, tx) = (b.num("testpmd_rx"), b.num("testpmd_tx"));
    let last_read = |q: u16| {
        reads
            .iter()
            .rev()
            .find(|r| r.0 == q)
            .map(|r| u64::from(r.1))
            .unwrap_or_else(|| panic!("{test}: no LM ring state read of queue {q}: {reads:?}"))
    };
    assert_eq!(
        last_read(1),
        tx % 65536,
        "{test}: TX ring base vs testpmd's TX count"
    );
    let rx_ahead = (last_read(0) + 65536 - rx % 65536) % 65536;
    assert!(
        rx_ahead <= 256,
        "{test}: RX ring base {} is not just past testpmd's RX count {rx}",
        last_read(0)
    );
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
}

// ------------------------------------------------------------------------------------------------
// `vdpa-emu validate --vfio` on a PCI function bound to vfio-pci: the way a silicon team runs the
// suite on its board. Here the board is the served model inside a guest behind intel-iommu; the
// validator maps its memory through the guest's IOMMU at IOVAs of its choosing, gets MSI-X through
// eventfds, and resets the function through VFIO between groups.

/// The JUnit report printed between `E2E-JUNIT-BEGIN NAME` and `E2E-JUNIT-END NAME`.
fn guest_junit(log: &str, name: &str) -> Option<String> {
    let mut out = None::<String>;
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        if line.ends_with(&format!("E2E-JUNIT-BEGIN {name}")) {
            out = Some(String::new());
        } else if line.ends_with(&format!("E2E-JUNIT-END {name}")) {
            return out;
        } else if let (Some(x), Some(i)) = (out.as_mut(), line.find("E2E-JUNIT ")) {
            x.push_str(&line[i + 10..]);
            x.push('\n');
        }
    }
    None
}

/// The classnames (check groups) of the `<testcase>`s of `xml` that carry `<failure`.
fn junit_failing_groups(xml: &str) -> BTreeSet<String> {
    xml.lines()
        .filter(|l| l.contains("<testcase ") && l.contains("<failure "))
        .filter_map(|l| l.split("classname=\"").nth(1)?.split('"').next())
        .map(String::from)
        .collect()
}

fn junit_attr(xml: &str, attr: &str) -> Option<u64> {
    let suite = xml.lines().find(|l| l.starts_with("<testsuite "))?;
    suite
        .split(&format!(" {attr}=\""))
        .nth(1)?
        .split('"')
        .next()?
        .parse()
        .ok()
}

#[test]
#[ignore = "needs QEMU: make e2e"]
fn validate_vfio_in_guest_behind_viommu() {
    const TEST: &str = "validate_vfio_in_guest_behind_viommu";
    require_root(TEST);
    let e2e = e2e();
    let tree = dpdk_tree(&e2e);
    let dir = Scratch::new(TEST);
    // (name, quirk, guest slot, the one group that must fail)
    let devs: [(&str, Option<&str>, u8, Option<&str>); 3] = [
        ("clean", None, 0x10, None),
        (
            "stale-used-idx",
            Some("stale-used-idx"),
            0x11,
            Some("vring-index-rw"),
        ),
        (
            "log-skips-used-ring",
            Some("log-skips-used-ring"),
            0x12,
            Some("dirty-log"),
        ),
    ];
    let mut serves: Vec<Serve> = devs
        .iter()
        .map(|(name, quirk, _, _)| {
            let mut args: Vec<String> = ["--queue-pairs", "2", "--port", "loopback"]
                .map(String::from)
                .into();
            if let Some(q) = quirk {
                args.extend(["--quirk".to_string(), q.to_string()]);
            }
            Serve::start(&dir, name, &args)
        })
        .collect();
    let list: Vec<String> = devs
        .iter()
        .map(|(name, _, slot, _)| format!("{name}=0000:00:{slot:02x}.0"))
        .collect();
    let mut vars = dpdk_vars("validate", 0);
    vars.push(("VALIDATE", list.join(" ")));
    let mut spec = dpdk_vm(&tree, "validate", &vars);
    // No DPDK application runs: no hugepages, the memory goes to the validator's memfds.
    spec.append = "intel_iommu=on iommu=pt".into();
    for (s, (_, _, slot, _)) in serves.iter().zip(&devs) {
        spec = spec.arg("-device").arg(s.device_arg_at(*slot));
    }
    let bin = fs::read(vdpa_emu_bin()).expect("read the vdpa-emu binary");
    spec.files.push(("dpdk/vdpa-emu".into(), 0o100755, bin));
    let t0 = Instant::now();
    let mut vm = Vm::boot(&e2e, &dir, spec);
    let st = vm.wait_exit(Duration::from_secs(900));
    let b = vm.last_boot();
    eprintln!("e2e: {TEST}: QEMU {st} after {:?}", t0.elapsed());
    let log = vm.log();

    // The JUnit reports come back to the host, where CI collects them.
    let out_dir = vdpa_emu_bin()
        .parent()
        .map(|p| p.join("e2e-junit"))
        .expect("binary directory");
    fs::create_dir_all(&out_dir).unwrap();
    for (name, _, _, want_fail) in &devs {
        let xml = guest_junit(&log, name)
            .unwrap_or_else(|| panic!("{TEST}: no JUnit report for {name}\n{}", vm.diag()));
        let file = out_dir.join(format!("validate-vfio-{name}.xml"));
        fs::write(&file, &xml).unwrap();
        println!("E2E-JUNIT {TEST}: {name}: {}", file.display());
        let exit = b.get(&format!("validate_{name}_exit"));
        let cs = b.get(&format!("validate_{name}_cs")).unwrap_or("?");
        println!("E2E-BENCH {TEST}: {name}: exit {exit:?} after {cs} cs of guest time");
        assert!(
            xml.contains("through Linux VFIO") && xml.contains("found 1af4:1041"),
            "{name}: the report names the VFIO target and what it found:\n{xml}"
        );
        assert_eq!(
            junit_attr(&xml, "errors"),
            Some(0),
            "{name}: lost the device:\n{xml}"
        );
        let failing = junit_failing_groups(&xml);
        match want_fail {
            None => {
                assert_eq!(exit, Some("0"), "{name}: the clean device fails:\n{xml}");
                assert!(failing.is_empty(), "{name}: {failing:?}\n{xml}");
            }
            Some(g) => {
                assert_eq!(exit, Some("1"), "{name}: a MUST fails:\n{xml}");
                assert_eq!(
                    failing,
                    BTreeSet::from([g.to_string()]),
                    "{name}: exactly {g} fails:\n{xml}"
                );
            }
        }
        // Every group ran (none NOT RUN for want of a transport): the served device offers
        // everything the groups need.
        assert!(
            junit_attr(&xml, "tests").unwrap_or(0) > 30,
            "{name}: too few checks ran:\n{xml}"
        );
    }
    assert!(
        b.fails.is_empty() && b.extra_exit == Some(0),
        "{TEST}: the guest script failed: {:?}\n{}",
        b.fails,
        vm.diag()
    );
    // The validator's own IOVAs reached the device through the guest's IOMMU: the dirty log
    // sits at DPDK's IFCVF_LOG_BASE, far above guest RAM.
    for s in &mut serves {
        let top = map_stats(s)["iova_end_max"].as_u64().unwrap_or(0);
        assert!(
            top > IFCVF_LOG_BASE,
            "{}: highest IOVA mapped {top:#x}\n{}",
            s.diag(),
            vm.diag()
        );
    }
}
