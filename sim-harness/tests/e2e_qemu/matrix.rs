//! The e2e throughput matrix: TCP throughput of Linux guests on our device and on QEMU's own
//! virtio-net-pci in the same run, for 1 and 2 vCPUs and 1 and 4 queue pairs (the guest uses them:
//! `ethtool -L combined 4` and one TCP stream per queue pair), with virtio_net on virtio_pci and on
//! Linux ifcvf + virtio_vdpa; guest -> host and host -> guest through a host TAP, guest -> guest
//! over our unix link (QEMU: `-netdev stream`). Every stream's bytes are md5-compared; the rates,
//! their ratio to QEMU's and serve's CPU per frame are printed (E2E-BENCH lines and a table).
//!
//! A benchmark, not an assertion on speed: `make bench-e2e` runs it (about 10 minutes on a 2-core
//! host), `make e2e` / `make test` skip it by name. docs/e2e.md has measured tables.

use super::*;
use std::sync::Arc;

/// Ports of the streams: guest -> peer on STREAM_TX_PORT + i, peer -> guest on STREAM_RX_PORT + i.
const STREAM_TX_PORT: u16 = 5101;
const STREAM_RX_PORT: u16 = 5201;

/// MiB each way per cell, split evenly over the streams (`VDPA_E2E_MATRIX_MIB`, default 96: at
/// 32 a transfer lasted 0.3-1.5 s and the ratios moved by 2x between runs; the guest keeps the
/// blob and what it received in its 512 MiB of RAM, where 256 no longer fits).
fn total_mib() -> u64 {
    env_num("VDPA_E2E_MATRIX_MIB", 96)
}

/// The guest drivers of our device's cells.
const DRIVERS: [&str; 2] = ["virtio-pci", "ifcvf"];

/// Which cells run: `VDPA_E2E_MATRIX_ONLY`, a comma-separated list of shapes (`1x4`: 1 vCPU,
/// 4 queue pairs), parts (`host`: through the host TAP; `guests`: two guests) and drivers
/// (`virtio-pci`, `ifcvf`), each kind all when none of it is named. Unset: the whole matrix.
struct Only {
    shapes: Vec<String>,
    parts: Vec<String>,
    drivers: Vec<String>,
}

impl Only {
    fn from_env() -> Only {
        let v = std::env::var("VDPA_E2E_MATRIX_ONLY").unwrap_or_default();
        let (mut shapes, mut parts, mut drivers) = (Vec::new(), Vec::new(), Vec::new());
        for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match t {
                "host" | "guests" => parts.push(t.to_string()),
                _ if DRIVERS.contains(&t) => drivers.push(t.to_string()),
                _ if SHAPES.iter().any(|s| s.key() == t) => shapes.push(t.to_string()),
                _ => panic!(
                    "VDPA_E2E_MATRIX_ONLY: {t:?} is not a shape ({}), a part (host, guests) or a driver ({})",
                    SHAPES.map(Shape::key).join(", "),
                    DRIVERS.join(", ")
                ),
            }
        }
        Only {
            shapes,
            parts,
            drivers,
        }
    }
    fn driver(&self, d: &str) -> bool {
        self.drivers.is_empty() || self.drivers.iter().any(|x| x == d)
    }
    fn shape(&self, s: Shape) -> bool {
        self.shapes.is_empty() || self.shapes.contains(&s.key())
    }
    fn part(&self, p: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|q| q == p)
    }
}

/// One configuration of the guest's NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    vcpus: u32,
    queue_pairs: u16,
}

impl Shape {
    fn streams(self) -> usize {
        usize::from(self.queue_pairs)
    }
    fn per_stream_mib(self) -> u64 {
        (total_mib() / self.streams() as u64).max(1)
    }
    fn label(self) -> String {
        format!("{}vCPU {}QP", self.vcpus, self.queue_pairs)
    }
    /// Its name in `VDPA_E2E_MATRIX_ONLY`.
    fn key(self) -> String {
        format!("{}x{}", self.vcpus, self.queue_pairs)
    }
}

const SHAPES: [Shape; 4] = [
    Shape {
        vcpus: 1,
        queue_pairs: 1,
    },
    Shape {
        vcpus: 1,
        queue_pairs: 4,
    },
    Shape {
        vcpus: 2,
        queue_pairs: 1,
    },
    Shape {
        vcpus: 2,
        queue_pairs: 4,
    },
];

/// What one guest (or guest pair) run measured.
#[derive(Clone, Debug, Default)]
struct Run {
    /// MB/s by direction ("guest->host", "host->guest", "guest->guest").
    mbps: BTreeMap<&'static str, f64>,
    /// serve's CPU per frame over the session (our device only; the sum of both ends for two guests).
    us_per_frame: Option<f64>,
    /// virtio_net's doorbells (kicks) per TX and RX queue in the (sending; RX: receiving) guest.
    tx_q: String,
    rx_q: String,
    /// The ring the (sending) guest's virtio core drives, from its negotiated features.
    ring: String,
}

/// "split" or "packed", and "+EVENT_IDX" when negotiated, from the guest's `virtio_features`
/// result (the virtio core's feature bits as 0/1 characters, bit 0 first).
fn guest_ring(b: &Boot) -> String {
    use virtio_bindings::virtio_config::VIRTIO_F_RING_PACKED;
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    let Some(bits) = b.get("virtio_features") else {
        return "?".into();
    };
    let has = |bit: u32| bits.as_bytes().get(bit as usize) == Some(&b'1');
    let layout = if has(VIRTIO_F_RING_PACKED) {
        "packed"
    } else {
        "split"
    };
    if has(VIRTIO_RING_F_EVENT_IDX) {
        format!("{layout}+EVENT_IDX")
    } else {
        layout.into()
    }
}

/// The guest variables of a `streams*` role.
fn stream_vars(role: &str, driver: &str, mac: &str, my_ip: &str, peer_ip: &str, s: Shape) -> Vars {
    let mut vars = nic_vars(role, driver, mac, my_ip, peer_ip);
    set_var(&mut vars, "BLOB_MIB", s.per_stream_mib().to_string());
    set_var(&mut vars, "STREAMS", s.streams().to_string());
    set_var(&mut vars, "STREAM_TX_PORT", STREAM_TX_PORT.to_string());
    set_var(&mut vars, "STREAM_RX_PORT", STREAM_RX_PORT.to_string());
    set_var(&mut vars, "PINGS", "10".into());
    if s.queue_pairs > 1 {
        set_var(&mut vars, "QUEUES", s.queue_pairs.to_string());
    }
    vars
}

/// The host's end of a `streams` guest: N listeners, N senders.
struct StreamPeer {
    listeners: Vec<TcpListener>,
    guest_ip: String,
    data: Arc<Vec<u8>>,
    data_md5: String,
    shape: Shape,
}

/// One stream the host received: its bytes, md5 and when it ended.
struct Stream {
    bytes: u64,
    md5: String,
    end: Instant,
}

impl StreamPeer {
    fn new(tap: &Tap, shape: Shape) -> StreamPeer {
        let listeners = (0..shape.streams())
            .map(|i| {
                let addr: SocketAddr = format!("{}:{}", tap.host_ip, STREAM_TX_PORT + i as u16)
                    .parse()
                    .unwrap();
                let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let data = pseudo_random((shape.per_stream_mib() << 20) as usize, 0x0005_17ea_5eed);
        let data_md5 = Md5::of(&data);
        StreamPeer {
            listeners,
            guest_ip: tap.guest_addr(),
            data: Arc::new(data),
            data_md5,
            shape,
        }
    }

    /// Guest -> host: accepts every stream (each read on its own thread as soon as it is
    /// accepted) and reads them to their ends. MB/s from the first accept to the last end.
    fn receive(&self, vm: &mut Vm, label: &str) -> (Vec<Stream>, f64) {
        let mut pending: Vec<usize> = (0..self.listeners.len()).collect();
        let mut readers = Vec::new();
        let mut first: Option<Instant> = None;
        let t0 = Instant::now();
        while !pending.is_empty() {
            pending.retain(|&i| match self.listeners[i].accept() {
                Ok((s, _)) => {
                    first.get_or_insert_with(Instant::now);
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    readers.push((i, std::thread::spawn(move || read_stream(s))));
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(e) => panic!("{label}: accept: {e}"),
            });
            if pending.is_empty() {
                break;
            }
            vm.check_alive("the guest's streams to the host");
            if t0.elapsed() > Duration::from_secs(240) {
                vm.kill();
                panic!(
                    "{label}: streams {pending:?} never connected to the host\n{}",
                    vm.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        readers.sort_by_key(|(i, _)| *i);
        let streams: Vec<Stream> = readers
            .into_iter()
            .map(|(i, h)| match h.join().expect("reader thread") {
                Ok(s) => s,
                Err(e) => {
                    vm.kill();
                    panic!("{label}: stream {i} from the guest: {e}\n{}", vm.diag())
                }
            })
            .collect();
        let end = streams.iter().map(|s| s.end).max().expect("a stream");
        let bytes: u64 = streams.iter().map(|s| s.bytes).sum();
        let secs = end.duration_since(first.expect("an accept")).as_secs_f64();
        (streams, bytes as f64 / 1e6 / secs.max(1e-6))
    }

    /// Host -> guest: waits for the guest's listeners, then sends every stream at once, each
    /// from its own thread. MB/s from the first connect to the last stream's close.
    fn send(&self, vm: &mut Vm, label: &str) -> f64 {
        vm.wait_for("E2E-READY recv port=", 1, Duration::from_secs(120));
        let t0 = Instant::now();
        let senders: Vec<_> = (0..self.shape.streams())
            .map(|i| {
                let addr: SocketAddr = format!("{}:{}", self.guest_ip, STREAM_RX_PORT + i as u16)
                    .parse()
                    .unwrap();
                let data = self.data.clone();
                std::thread::spawn(move || send_stream(addr, &data))
            })
            .collect();
        for (i, h) in senders.into_iter().enumerate() {
            if let Err(e) = h.join().expect("sender thread") {
                vm.kill();
                panic!("{label}: stream {i} to the guest: {e}\n{}", vm.diag());
            }
        }
        let bytes = self.data.len() as u64 * self.shape.streams() as u64;
        bytes as f64 / 1e6 / t0.elapsed().as_secs_f64().max(1e-6)
    }

    /// A whole `streams` guest: its streams to the host, the host's to it, every byte compared.
    fn run(&self, vm: &mut Vm, label: &str) -> Run {
        let (streams, g2h) = self.receive(vm, label);
        let h2g = self.send(vm, label);
        let b = vm.finish(Duration::from_secs(120));
        check_streams(&b, vm, label, self.shape);
        for (i, s) in streams.iter().enumerate() {
            assert_eq!(
                (s.bytes, Some(s.md5.as_str())),
                (self.shape.per_stream_mib() << 20, b.get("blob_md5")),
                "{label}: guest -> host stream {i}\n{}",
                vm.diag()
            );
        }
        let want = vec![self.data_md5.as_str(); self.shape.streams()].join(",");
        assert_eq!(
            (
                b.num("streams_rx_bytes"),
                b.get("streams_rx_md5s").unwrap_or("")
            ),
            (
                (self.shape.per_stream_mib() << 20) * self.shape.streams() as u64,
                want.as_str()
            ),
            "{label}: host -> guest streams\n{}",
            vm.diag()
        );
        Run {
            mbps: BTreeMap::from([("guest->host", g2h), ("host->guest", h2g)]),
            us_per_frame: None,
            tx_q: b.get("tx_q_kicks").unwrap_or("?").into(),
            rx_q: b.get("rx_q_kicks").unwrap_or("?").into(),
            ring: guest_ring(&b),
        }
    }
}

fn read_stream(mut s: TcpStream) -> std::io::Result<Stream> {
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Stream {
        bytes,
        md5: md5.finish(),
        end: Instant::now(),
    })
}

fn send_stream(addr: SocketAddr, data: &[u8]) -> std::io::Result<()> {
    let t0 = Instant::now();
    let mut s = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() > Duration::from_secs(20) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(data)?;
    s.shutdown(Shutdown::Write)?;
    // the guest's nc closes once it has read everything
    let mut sink = [0u8; 256];
    while s.read(&mut sink)? > 0 {}
    Ok(())
}

/// The guest used the queue pairs it was given, and its pings came back.
fn check_streams(b: &Boot, vm: &Vm, label: &str, s: Shape) {
    if s.queue_pairs > 1 {
        assert_eq!(
            b.get("queues_combined"),
            Some(s.queue_pairs.to_string().as_str()),
            "{label}: ethtool -L combined {}\n{}",
            s.queue_pairs,
            vm.diag()
        );
    }
    // virtio_net's per-queue kick counters, one per queue pair in use (`queue_spread` read them)
    for key in ["tx_q_kicks", "rx_q_kicks"] {
        let n = b
            .get(key)
            .map_or(0, |v| v.split(',').filter(|c| !c.is_empty()).count());
        assert_eq!(
            n,
            s.streams(),
            "{label}: {key} {:?}: not one count per queue pair\n{}",
            b.get(key),
            vm.diag()
        );
    }
    if b.get("ping_tx").is_some() {
        assert_eq!(
            (b.num("ping_tx"), b.num("ping_rx")),
            (10, 10),
            "{label}: ping loss\n{}",
            vm.diag()
        );
    }
}

/// QEMU's own virtio-net-pci on a host TAP (`queues=N`, `mq=on` for more than one pair).
fn qemu_host_tap(e2e: &E2e, s: Shape) -> Run {
    let label = format!("matrix qemu virtio-net-pci {}", s.label());
    let dir = Scratch::new(&format!("matrix-qemu-{}-{}", s.vcpus, s.queue_pairs));
    let name = "vdpaemq";
    let tap = Tap::create_queues(name, 31, s.queue_pairs > 1);
    let peer = StreamPeer::new(&tap, s);
    let mac = "52:54:00:e2:e1:01";
    let mut vars = stream_vars(
        "streams",
        "virtio-pci",
        mac,
        &tap.guest_addr(),
        &tap.host_ip,
        s,
    );
    vars.retain(|(k, _)| *k != "NIC_PCI");
    let (queues, mq) = if s.queue_pairs > 1 {
        (
            format!(",queues={}", s.queue_pairs),
            format!(",mq=on,vectors={}", 2 * s.queue_pairs + 2),
        )
    } else {
        (String::new(), String::new())
    };
    let mut spec = VmSpec::new("guest", nic_script(&vars))
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={name},script=no,downscript=no{queues}"
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac}{mq},romfile="));
    spec.smp = s.vcpus;
    let mut vm = Vm::boot(e2e, &dir, spec);
    let run = peer.run(&mut vm, &label);
    drop(tap);
    run
}

/// `serve --mac MAC --queue-pairs N --port PORT`.
fn serve_args(mac: &str, s: Shape, port: &str) -> [String; 6] {
    [
        "--mac".into(),
        mac.into(),
        "--queue-pairs".into(),
        s.queue_pairs.to_string(),
        "--port".into(),
        port.into(),
    ]
}

/// Our device (`serve --queue-pairs N --port tap:NAME`) driven by `driver`.
fn ours_host_tap(e2e: &E2e, driver: &str, s: Shape) -> Run {
    let label = format!("matrix vdpa-emu {driver} {}", s.label());
    let dir = Scratch::new(&format!("matrix-{driver}-{}-{}", s.vcpus, s.queue_pairs));
    let name = "vdpaemd";
    let mac = "02:00:00:e2:e1:01";
    let mut serve = Serve::start(&dir, "dev", &serve_args(mac, s, &format!("tap:{name}")));
    let tap = Tap::adopt(name, 32, &mut serve);
    let peer = StreamPeer::new(&tap, s);
    let vars = stream_vars("streams", driver, mac, &tap.guest_addr(), &tap.host_ip, s);
    let mut spec = VmSpec::new("guest", nic_script(&vars))
        .arg("-device")
        .arg(serve.device_arg());
    spec.smp = s.vcpus;
    let mut vm = Vm::boot(e2e, &dir, spec);
    let mut run = peer.run(&mut vm, &label);
    print_device(&label, &stats(&serve));
    let st = serve.session_stats();
    print_traps(&label, &st);
    run.us_per_frame = st["cpu_us_per_frame"].as_f64();
    assert!(serve.is_running(), "{label}: serve died\n{}", serve.diag());
    drop(tap);
    run
}

/// What the device saw during a cell (E2E-BENCH): drops and flow control at the port, frames
/// that waited on their own RX queue's list (device/src/port/waiting.rs), and per-queue
/// interrupts, the first things to look at when a cell is slow.
fn print_device(label: &str, st: &sim_harness::ctl::StatsReport) {
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    let queues: Vec<String> = st
        .queues
        .iter()
        .filter(|q| q.chains > 0)
        .map(|q| {
            format!(
                "{} {} chains {} irqs {} suppressed",
                q.role, q.chains, q.interrupts, q.interrupts_suppressed
            )
        })
        .collect();
    println!(
        "E2E-BENCH {label} device: rx {} frames ({} GSO), {} dropped with the receive FIFO full, the port waited for room {} times, {} waited for their own queue's buffers | tx {} frames ({} GSO), {} dropped by the port, {} lost after it, held back by a full port {} times | ISR reads without the lock {} | {}",
        c("rx_frames"),
        c("rx_gso_frames"),
        c("rx_dropped_backlog"),
        c("rx_port_waits"),
        c("rx_queue_waits"),
        c("tx_frames"),
        c("tx_gso_frames"),
        c("tx_port_drops"),
        c("tx_port_lost"),
        c("tx_port_busy"),
        c("isr_reads_unlocked"),
        queues.join(", ")
    );
}

/// The guest's trapped register accesses over its whole session (boot included), from serve's
/// `session statistics` line: each one stops a vCPU for a vfio-user round trip. serve's share
/// of it is the time to the reply built; the time to `sendmsg` returning also counts serve
/// being preempted by the client it woke.
fn print_traps(label: &str, st: &serde_json::Value) {
    println!(
        "E2E-BENCH {label} traps: {} register reads ({} us each to the reply built, {} us to sent), {} register writes ({} us, {} us)",
        st["trapped_reads"],
        st["trapped_read_handled_us"],
        st["trapped_read_replied_us"],
        st["trapped_writes"],
        st["trapped_write_handled_us"],
        st["trapped_write_replied_us"]
    );
}

/// Two guests, A streams to B: over QEMU's `-netdev stream` (one queue: the stream netdev has no
/// multiqueue) unless `ours`, else over our two devices joined by `--port unix:`.
fn two_guests(e2e: &E2e, driver: &str, s: Shape, ours: bool) -> Run {
    let who = if ours {
        format!("vdpa-emu {driver}")
    } else {
        "qemu virtio-net-pci".into()
    };
    let label = format!("matrix two guests {who} {}", s.label());
    let dir = Scratch::new(&format!(
        "matrix-2g-{}-{driver}-{}-{}",
        if ours { "ours" } else { "qemu" },
        s.vcpus,
        s.queue_pairs
    ));
    let (mac_a, mac_b) = ("02:00:00:e2:e1:0a", "02:00:00:e2:e1:0b");
    let (ip_a, ip_b) = ("10.77.33.1", "10.77.33.2");
    let mut va = stream_vars("streams-sender", driver, mac_a, ip_a, ip_b, s);
    let mut vb = stream_vars("streams-receiver", driver, mac_b, ip_b, ip_a, s);
    let link = dir.join("link.sock");
    let mut serves = Vec::new();
    let (dev_a, dev_b) = if ours {
        let port = format!("unix:{}", link.display());
        for (name, mac) in [("dev-a", mac_a), ("dev-b", mac_b)] {
            serves.push(Serve::start(&dir, name, &serve_args(mac, s, &port)));
        }
        (
            vec!["-device".to_string(), serves[0].device_arg()],
            vec!["-device".to_string(), serves[1].device_arg()],
        )
    } else {
        va.retain(|(k, _)| *k != "NIC_PCI");
        vb.retain(|(k, _)| *k != "NIC_PCI");
        let netdev = |server: &str| {
            format!(
                "stream,id=n0,server={server},addr.type=unix,addr.path={}",
                link.display()
            )
        };
        (
            vec![
                "-netdev".to_string(),
                netdev("off,reconnect-ms=200"),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={mac_a},romfile="),
            ],
            vec![
                "-netdev".to_string(),
                netdev("on"),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={mac_b},romfile="),
            ],
        )
    };
    let mut spec_b = VmSpec::new("guest-b", nic_script(&vb));
    spec_b.args.extend(dev_b);
    spec_b.smp = s.vcpus;
    let mut b = Vm::boot(e2e, &dir, spec_b);
    if !ours {
        b.poll_until(
            &format!("stream socket {}", link.display()),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || link.exists(),
        );
    }
    let mut spec_a = VmSpec::new("guest-a", nic_script(&va));
    spec_a.args.extend(dev_a);
    spec_a.smp = s.vcpus;
    let mut a = Vm::boot(e2e, &dir, spec_a);
    let ra = a.finish(Duration::from_secs(300));
    let rb = b.finish(Duration::from_secs(60));
    check_streams(&ra, &a, &label, s);
    check_streams(&rb, &b, &label, s);
    let md5 = ra.get("blob_md5").unwrap_or("?");
    assert_eq!(
        (
            rb.num("streams_rx_bytes"),
            rb.get("streams_rx_md5s").unwrap_or("")
        ),
        (
            (s.per_stream_mib() << 20) * s.streams() as u64,
            vec![md5; s.streams()].join(",").as_str()
        ),
        "{label}: A -> B streams\n{}\n{}",
        a.diag(),
        b.diag()
    );
    let mbps: f64 = ra
        .get("streams_tx_mbps")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{label}: no streams_tx_mbps\n{}", a.diag()));
    let mut us = None;
    for (serve, end) in serves.iter_mut().zip(["A", "B"]) {
        print_device(&format!("{label} {end}"), &stats(serve));
        let st = serve.session_stats();
        print_traps(&format!("{label} {end}"), &st);
        let per = st["cpu_us_per_frame"].as_f64().unwrap_or(0.0);
        us = Some(us.unwrap_or(0.0) + per);
        assert!(serve.is_running(), "{label}: serve died\n{}", serve.diag());
    }
    Run {
        mbps: BTreeMap::from([("guest->guest", mbps)]),
        us_per_frame: us,
        tx_q: ra.get("tx_q_kicks").unwrap_or("?").into(),
        rx_q: rb.get("rx_q_kicks").unwrap_or("?").into(),
        ring: guest_ring(&ra),
    }
}

/// The whole matrix, each of our cells next to QEMU's in the same run.
#[test]
#[ignore = "benchmark, about 10 minutes: make bench-e2e"]
fn throughput_matrix() {
    require_root("throughput_matrix");
    let e2e = e2e();
    let only = Only::from_env();
    let drivers: Vec<&str> = DRIVERS.into_iter().filter(|d| only.driver(d)).collect();
    let mut rows: Vec<(String, String, f64, f64, Option<f64>, String)> = Vec::new();
    let mut row = |dir: &str, who: String, s: Shape, ours: &Run, qemu: &Run, qemu_shape: Shape| {
        let (o, q) = (ours.mbps[dir], qemu.mbps[dir]);
        let cell = format!("{dir} {who} {}", s.label());
        println!(
            "E2E-BENCH matrix {cell}: {o:.1} MB/s vs QEMU virtio-net-pci ({}) {q:.1} MB/s = {:.2}x | serve {} us/frame | guest tx queues [{}] rx queues [{}] | guest ring {} (QEMU's {})",
            qemu_shape.label(),
            o / q,
            ours.us_per_frame.map_or("?".into(), |u| format!("{u:.1}")),
            ours.tx_q,
            ours.rx_q,
            ours.ring,
            qemu.ring,
        );
        rows.push((
            cell,
            qemu_shape.label(),
            o,
            q,
            ours.us_per_frame,
            format!("tx [{}] rx [{}]", ours.tx_q, ours.rx_q),
        ));
    };
    for s in SHAPES
        .into_iter()
        .filter(|&s| only.part("host") && only.shape(s))
    {
        let qemu = qemu_host_tap(&e2e, s);
        for &driver in &drivers {
            let ours = ours_host_tap(&e2e, driver, s);
            for dir in ["guest->host", "host->guest"] {
                row(dir, driver.into(), s, &ours, &qemu, s);
            }
        }
    }
    for vcpus in [1, 2] {
        let one = Shape {
            vcpus,
            queue_pairs: 1,
        };
        let wanted: Vec<Shape> = [1, 4]
            .map(|queue_pairs| Shape { vcpus, queue_pairs })
            .into_iter()
            .filter(|&s| only.part("guests") && only.shape(s))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let qemu = two_guests(&e2e, "virtio-pci", one, false);
        for s in wanted {
            for &driver in &drivers {
                let ours = two_guests(&e2e, driver, s, true);
                row("guest->guest", driver.into(), s, &ours, &qemu, one);
            }
        }
    }
    println!(
        "E2E-BENCH matrix table (MB/s; ratio = ours / QEMU's virtio-net-pci in the same run):"
    );
    println!(
        "E2E-BENCH | cell | QEMU shape | ours | QEMU | ratio | serve us/frame | guest kicks per queue |"
    );
    println!("E2E-BENCH |---|---|---|---|---|---|---|");
    for (cell, qs, o, q, us, queues) in &rows {
        println!(
            "E2E-BENCH | {cell} | {qs} | {o:.1} | {q:.1} | {:.2} | {} | {queues} |",
            o / q,
            us.map_or("-".into(), |u| format!("{u:.1}"))
        );
    }
}
