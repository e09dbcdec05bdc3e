//! The control socket of `vdpa-emu serve` against a live device that a driver is using over
//! vfio-user: counters, link, announce, quirks, faults, pcapng capture read back by tcpdump,
//! and every way a request can be bad.

mod support;

use device::InterruptRecorder;
use sim_harness::ctl::{CtlClient, CtlError, Request, Response};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;
use sim_harness::vfio_user::client::Client;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::ServeProcess;

const DEVICE_NEEDS_RESET: u8 = 0x40;

fn ctl(p: &ServeProcess) -> CtlClient {
    CtlClient::connect(
        &sim_harness::ctl::default_ctl_path(&p.sock),
        Duration::from_secs(5),
    )
    .unwrap()
}

fn stats(c: &mut CtlClient) -> sim_harness::ctl::StatsReport {
    c.call(&Request::Stats {}).unwrap().stats.unwrap()
}

struct Guest {
    drv: NetDriver,
    irq: Arc<InterruptRecorder>,
    _pump: sim_harness::vfio_user::InterruptPump,
}

fn guest(p: &ServeProcess) -> Guest {
    let c = Arc::new(Client::connect(&p.sock).unwrap());
    c.set_posted_writes(false);
    let irq = Arc::new(InterruptRecorder::new(3));
    let pump = c.wire_interrupts(irq.clone()).unwrap();
    let mut drv = NetDriver::new(
        c,
        irq.clone(),
        DriverOptions {
            queue_pairs: 1,
            // Each restart after a reset allocates new rings and buffers.
            memory: 32 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    drv.start().unwrap();
    Guest {
        drv,
        irq,
        _pump: pump,
    }
}

/// Sends `n` frames of `len` bytes on pair 0 and receives them back (loopback port).
fn loop_frames(g: &mut Guest, n: usize, len: usize) -> Vec<Vec<u8>> {
    let mac = g.drv.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
    let sent: Vec<Vec<u8>> = (0..n)
        .map(|i| frames::build(mac, mac, 0, i as u64, len, &mut rng))
        .collect();
    let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    let mut got = Vec::new();
    let mut done = 0;
    let t0 = Instant::now();
    while got.len() < n {
        if done < n {
            done += g.drv.send(0, &refs[done..]).unwrap();
        }
        got.extend(g.drv.recv(0).unwrap());
        assert!(t0.elapsed() < Duration::from_secs(10), "frames stuck");
    }
    assert_eq!(got, sent, "loopback changed frames");
    sent
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(5), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stats_link_announce_and_quirks_act_on_the_live_device() {
    let p = ServeProcess::start("vdpa-ctl", &[]);
    let mut c = ctl(&p);
    let hello = c.call(&Request::Hello {}).unwrap().hello.unwrap();
    assert_eq!(hello.protocol, 1);
    assert!(hello.faults.contains(&"dma-fault".to_string()));
    let mut g = guest(&p);
    loop_frames(&mut g, 100, 200);
    let s = stats(&mut c);
    assert!(s.status_bits.contains(&"DRIVER_OK".to_string()), "{s:?}");
    assert_eq!(s.counters["tx_frames"], 100);
    assert_eq!(s.counters["rx_frames"], 100);
    let tx0 = s.queues.iter().find(|q| q.role == "tx0").unwrap();
    assert_eq!((tx0.frames, tx0.bytes, tx0.enabled), (100, 100 * 200, true));
    assert!(s.link_up);

    // Link down: the driver reads LINK_UP cleared and got a config interrupt (vector 0).
    let before = g.irq.count(0);
    let r = c.call(&Request::Link { up: false }).unwrap();
    assert_eq!(r.link_up, Some(false));
    assert_eq!(
        g.drv
            .net_config(bar_registers::virtio::net_cfg::STATUS, 2)
            .unwrap()
            & 1,
        0
    );
    wait_for("config interrupt for link down", || g.irq.count(0) > before);
    c.call(&Request::Link { up: true }).unwrap();
    assert_eq!(
        g.drv
            .net_config(bar_registers::virtio::net_cfg::STATUS, 2)
            .unwrap()
            & 1,
        1
    );

    // Announce: ANNOUNCE set, and the driver's ack clears it.
    let r = c.call(&Request::Announce {}).unwrap();
    assert_eq!(r.announced, Some(true));
    assert_eq!(
        g.drv
            .net_config(bar_registers::virtio::net_cfg::STATUS, 2)
            .unwrap()
            & 2,
        2
    );
    assert!(g.drv.handle_config_change().unwrap());
    assert_eq!(
        g.drv
            .net_config(bar_registers::virtio::net_cfg::STATUS, 2)
            .unwrap()
            & 2,
        0
    );

    // A quirk switched on a running queue acts at once: the RX used length is wrong now.
    let r = c
        .call(&Request::Quirk {
            name: "split-ring-used-len-wrong".into(),
            on: true,
        })
        .unwrap();
    assert_eq!(r.quirks.unwrap(), ["split-ring-used-len-wrong"]);
    assert_eq!(stats(&mut c).quirks, ["split-ring-used-len-wrong"]);
    let mac = g.drv.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(9);
    let f = frames::build(mac, mac, 0, 1000, 100, &mut rng);
    assert_eq!(g.drv.send(0, &[&f]).unwrap(), 1);
    let mut got = Vec::new();
    wait_for("the frame with the quirk on", || {
        got.extend(g.drv.recv(0).unwrap());
        !got.is_empty()
    });
    assert_ne!(
        got[0], f,
        "the used length must now be the buffer's capacity"
    );
    c.call(&Request::Quirk {
        name: "split-ring-used-len-wrong".into(),
        on: false,
    })
    .unwrap();
    assert!(stats(&mut c).quirks.is_empty());
}

#[test]
fn injected_faults_put_the_device_in_needs_reset_and_a_reset_recovers() {
    let p = ServeProcess::start("vdpa-ctl-fault", &[]);
    let mut c = ctl(&p);
    let mut g = guest(&p);
    loop_frames(&mut g, 10, 100);

    let r = c
        .call(&Request::Fault {
            inject: "needs-reset".into(),
        })
        .unwrap();
    assert!(r.fault.unwrap().contains("needs-reset"));
    assert_ne!(g.drv.status().unwrap() & DEVICE_NEEDS_RESET, 0);
    let s = stats(&mut c);
    assert_eq!(s.counters["injected"], 1);
    assert!(s.fault.is_some());
    g.drv.reset().unwrap();
    g.drv.start().unwrap();
    loop_frames(&mut g, 10, 100);

    // A DMA fault waits for the next access: nothing happens until the driver transmits.
    let r = c
        .call(&Request::Fault {
            inject: "dma-fault".into(),
        })
        .unwrap();
    assert_eq!(r.fault, None);
    assert_eq!(g.drv.status().unwrap() & DEVICE_NEEDS_RESET, 0);
    let mac = g.drv.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(3);
    let f = frames::build(mac, mac, 0, 0, 80, &mut rng);
    g.drv.send(0, &[&f]).unwrap();
    wait_for("DEVICE_NEEDS_RESET after the injected DMA fault", || {
        g.drv.status().unwrap() & DEVICE_NEEDS_RESET != 0
    });
    let s = stats(&mut c);
    assert_eq!(s.counters["dma_fault"], 1, "{:?}", s.fault);
    assert_eq!(s.iommu["iommu_faults_injected"], 1);
    g.drv.reset().unwrap();
    g.drv.start().unwrap();
    loop_frames(&mut g, 10, 100);
    assert_eq!(stats(&mut c).fault, None);

    // Armed, then a device reset: the fault is gone, traffic runs.
    c.call(&Request::Fault {
        inject: "dma-fault".into(),
    })
    .unwrap();
    g.drv.reset().unwrap();
    g.drv.start().unwrap();
    loop_frames(&mut g, 10, 100);
    assert_eq!(stats(&mut c).counters["dma_fault"], 1);
}

/// tcpdump's one-line summaries of a capture file: (frame count, total bytes from
/// "length N").
fn tcpdump(path: &Path) -> (usize, u64) {
    let out = std::process::Command::new("tcpdump")
        .args(["-n", "-e", "-tt", "-r"])
        .arg(path)
        .output()
        .expect(
            "tcpdump must be installed to check pcapng captures (Debian package tcpdump; \
             `make test` installs it with scripts/host-tools.sh)",
        );
    assert!(
        out.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    let mut bytes = 0;
    // A frame's summary line starts with its timestamp (`-tt`: seconds.micros); tcpdump adds
    // lines for what it decodes inside (the test frames' UDP port 4789 reads as VXLAN) and
    // hex dumps.
    let is_frame = |l: &&str| {
        l.split_whitespace()
            .next()
            .is_some_and(|t| t.contains('.') && t.parse::<f64>().is_ok())
    };
    for l in text.lines().filter(is_frame) {
        n += 1;
        // `-e` prints the link-level header: "..., length 214: ..." is the frame length.
        let len = l
            .split(", length ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no frame length in tcpdump line {l:?}"));
        bytes += len;
    }
    (n, bytes)
}

#[test]
fn pcap_capture_opens_in_tcpdump_with_every_frame() {
    let p = ServeProcess::start("vdpa-ctl-pcap", &[]);
    let dir = support::temp_dir("vdpa-pcap");
    let file = dir.join("live.pcapng");
    let mut c = ctl(&p);
    let mut g = guest(&p);
    loop_frames(&mut g, 5, 300); // before the capture: not in the file
    let r = c.call(&Request::PcapStart { file: file.clone() }).unwrap();
    assert_eq!(r.capture.unwrap().interfaces, 2);
    let sent = loop_frames(&mut g, 50, 1514);
    let more = loop_frames(&mut g, 30, 64);
    // A second start while one runs is refused and changes nothing.
    let e = c
        .call(&Request::PcapStart {
            file: dir.join("other.pcapng"),
        })
        .unwrap_err();
    assert!(e.to_string().contains("already running"), "{e}");
    let s = c.call(&Request::PcapStop {}).unwrap().capture.unwrap();
    // Loopback: every frame once as transmitted, once as received.
    let want_bytes = 2
        * (sent
            .iter()
            .chain(&more)
            .map(|f| f.len() as u64)
            .sum::<u64>());
    assert_eq!((s.frames, s.bytes), (160, want_bytes));
    assert_eq!(tcpdump(&file), (160, want_bytes));
    // The frames are the wire bytes: the file's packets are exactly what was sent.
    let mut r = pcap_file::pcapng::PcapNgReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let mut packets = Vec::new();
    while let Some(b) = r.next_block() {
        if let pcap_file::pcapng::Block::EnhancedPacket(e) = b.unwrap() {
            packets.push((e.interface_id, e.data.to_vec()));
        }
    }
    let tx: Vec<&Vec<u8>> = packets.iter().filter(|p| p.0 == 0).map(|p| &p.1).collect();
    let rx: Vec<&Vec<u8>> = packets.iter().filter(|p| p.0 == 1).map(|p| &p.1).collect();
    let want: Vec<&Vec<u8>> = sent.iter().chain(&more).collect();
    assert_eq!(tx, want);
    assert_eq!(rx, want);
    assert!(c.call(&Request::PcapStop {}).is_err(), "nothing to stop");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_pcap_from_the_start_and_cli_exit_codes() {
    let dir = support::temp_dir("vdpa-pcap-serve");
    let file = dir.join("start.pcapng");
    let p = ServeProcess::start("vdpa-ctl-cli", &["--pcap", file.to_str().unwrap()]);
    let mut g = guest(&p);
    loop_frames(&mut g, 20, 128);
    let bin = env!("CARGO_BIN_EXE_vdpa-emu");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(["ctl", "--socket", p.sock.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["stats"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("capturing into"), "{text}");
    let o = run(&["--json", "stats"]);
    let r: Response = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r.stats.unwrap().counters["tx_frames"], 20);
    let o = run(&["stats", "--watch", "0.1", "--count", "2"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("queue role")
            .count(),
        2
    );
    // Refused by the server: exit 1 with its reason.
    let o = run(&["quirk", "on", "no-such-bug"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown quirk"));
    let o = run(&["fault", "inject", "meteor"]);
    assert_eq!(o.status.code(), Some(1));
    // No server: exit 2.
    let o = std::process::Command::new(bin)
        .args(["ctl", "--ctl", "/nonexistent.ctl", "stats"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["pcap", "stop"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tcpdump(&file), (40, 2 * 20 * 128));
    drop(p);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_requests_get_errors_and_the_connection_keeps_serving() {
    let p = ServeProcess::start("vdpa-ctl-bad", &[]);
    let path = sim_harness::ctl::default_ctl_path(&p.sock);
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut ask = |line: &[u8]| -> Response {
        w.write_all(line).unwrap();
        let mut resp = String::new();
        r.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    };
    for bad in [
        &b"not json\n"[..],
        b"{\"cmd\":\"reboot\"}\n",
        b"{\"cmd\":\"link\"}\n",
        b"{\"cmd\":\"stats\",\"x\":1}\n",
        b"\xff\xfe\n",
    ] {
        let resp = ask(bad);
        assert!(!resp.ok, "{:?}", String::from_utf8_lossy(bad));
        assert!(resp.error.unwrap().contains("malformed request"));
    }
    // A line over the limit: one error, the rest of the line skipped, then normal service.
    let mut long = vec![b'x'; sim_harness::ctl::protocol::MAX_LINE + 10_000];
    long.push(b'\n');
    let resp = ask(&long);
    assert!(resp.error.unwrap().contains("longer than"));
    let resp = ask(b"{\"cmd\":\"stats\"}\n");
    assert!(resp.ok && resp.stats.is_some());

    // Connections beyond the limit are told why and closed; the others keep working.
    let mut held: Vec<UnixStream> = (0..sim_harness::ctl::server::MAX_CONNECTIONS - 1)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let extra = UnixStream::connect(&path).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&extra).read_line(&mut line).unwrap();
    assert!(line.contains("busy"), "{line}");
    let resp = ask(b"{\"cmd\":\"hello\"}\n");
    assert!(resp.ok);
    held.clear();
    // Once they are gone a new client is served again.
    wait_for("a free control connection", || {
        let mut c = match CtlClient::connect(&path, Duration::from_secs(5)) {
            Ok(c) => c,
            Err(_) => return false,
        };
        !matches!(
            c.call(&Request::Hello {}),
            Err(CtlError::Closed { .. }) | Err(_)
        )
    });
}

/// A scenario that controls and observes a served device through its control socket while a
/// driver (here the test, in a QEMU e2e run a guest) uses it.
#[test]
fn scenario_steps_drive_a_served_device_through_its_control_socket() {
    let p = ServeProcess::start("vdpa-ctl-scenario", &[]);
    let mut g = guest(&p);
    loop_frames(&mut g, 25, 100);
    let ctl_path = sim_harness::ctl::default_ctl_path(&p.sock);
    let src = format!(
        r#"
name = "served"
[[device]]
name = "live"
ctl = "{}"
[[device]]
name = "local"
queue_pairs = 1

[[step]]
kind = "start"
expect = ["local:status.driver_ok == true"]

[[step]]
kind = "link"
device = "live"
up = false
expect = ["live:config.link_up == false", "live:counters.tx_frames == 25", "live:tx.0.frames == 25", "live:status.driver_ok == true"]

[[step]]
kind = "wait"
seconds = 0.05

[[step]]
kind = "link"
device = "live"
up = true
expect = ["live:config.link_up == true", "live:counters.config_interrupts >= 2"]

[[step]]
kind = "inject"
device = "live"
fault = "quirk"
quirk = "stale-used-idx"

[[step]]
kind = "announce"
device = "live"
expect = ["live:announce.requested == true"]

[[step]]
kind = "traffic"
count = 10
expect = ["traffic.delivered == 10"]

[end]
expect = ["live:fault.any == 0", "frames.lost == 0"]
"#,
        ctl_path.display()
    );
    let sc = sim_harness::scenario::parse_str(&src, "served.toml").unwrap();
    let r = sim_harness::scenario::run(&sc);
    assert_eq!(
        r.verdict,
        sim_harness::scenario::Verdict::Pass,
        "{}",
        sim_harness::scenario::RunReport::new(vec![r.clone()]).table()
    );
    // The quirk really was switched on in the served device.
    let s = stats(&mut ctl(&p));
    assert_eq!(s.quirks, ["stale-used-idx"]);
    // The guest's driver acks the announce.
    assert!(g.drv.handle_config_change().unwrap());

    // What a served device cannot take is refused when the file is loaded.
    for (bad, field, why) in [
        ("kind = \"start\"\ndevice = \"live\"", "step[1].device", "served device"),
        ("kind = \"traffic\"\nfrom = \"live\"\ncount = 1", "step[1].from", "served device"),
        ("kind = \"reset\"\ndevice = \"live\"", "step[1].device", "served device"),
        (
            "kind = \"link\"\ndevice = \"live\"\nup = true\nexpect = [\"live:queue.0.used_idx == 0\"]",
            "step[1].expect",
            "not known for a served device",
        ),
        ("kind = \"wait\"", "step[1].seconds", "needs `seconds`"),
        ("kind = \"wait\"\nseconds = -1", "step[1].seconds", "from 0 to 3600"),
    ] {
        let src = format!(
            "[[device]]\nname = \"live\"\nctl = \"/x.ctl\"\n[[device]]\nname = \"local\"\n[[step]]\n{bad}\n"
        );
        let e = sim_harness::scenario::parse_str(&src, "bad.toml").unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(why), "{bad:?}: {e}");
    }
    let e = sim_harness::scenario::parse_str(
        "[[device]]\nname = \"live\"\nctl = \"/x.ctl\"\nqueue_pairs = 2\n",
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("device[1].queue_pairs") && e.contains("served device"),
        "{e}"
    );
    // A served device whose control socket is not there: the scenario fails with the reason.
    let sc = sim_harness::scenario::parse_str(
        "[[device]]\nname = \"gone\"\nctl = \"/nonexistent.ctl\"\n[[step]]\nkind = \"wait\"\nseconds = 0\n",
        "gone.toml",
    )
    .unwrap();
    let r = sim_harness::scenario::run(&sc);
    assert_eq!(r.verdict, sim_harness::scenario::Verdict::Fail);
    assert!(r.error.unwrap().contains("/nonexistent.ctl"));
}

/// Interface names and frames per interface of a pcapng file.
fn pcap_interfaces(path: &Path) -> (Vec<String>, Vec<u64>) {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let mut r = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let (mut names, mut counts) = (Vec::new(), Vec::new());
    while let Some(b) = r.next_block() {
        match b.unwrap() {
            Block::InterfaceDescription(i) => {
                let n = i.options.iter().find_map(|o| match o {
                    InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                    _ => None,
                });
                names.push(n.unwrap_or_default());
                counts.push(0);
            }
            Block::EnhancedPacket(p) => counts[p.interface_id as usize] += 1,
            _ => {}
        }
    }
    (names, counts)
}

/// `--pcap` on demo, migrate and scenario run: the file opens in tcpdump with as many frames as
/// the command reports, on the interfaces it names.
#[test]
fn demo_migrate_and_scenario_capture_what_they_carry() {
    let dir = support::temp_dir("vdpa-pcap-cli");
    let bin = env!("CARGO_BIN_EXE_vdpa-emu");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    let demo = dir.join("demo.pcapng");
    let out = run(&[
        "demo",
        "--queue-pairs",
        "2",
        "--frames",
        "300",
        "--pcap",
        demo.to_str().unwrap(),
    ]);
    assert!(out.contains("captured 600 frames"), "{out}");
    assert_eq!(tcpdump(&demo).0, 600);
    let (names, counts) = pcap_interfaces(&demo);
    assert_eq!(names, ["tx0", "rx0", "tx1", "rx1"]);
    // Loopback: each pair receives exactly what it sent; the demo spreads 300 frames over both.
    assert_eq!((counts[0], counts[2]), (counts[1], counts[3]), "{counts:?}");
    assert_eq!(counts[0] + counts[2], 300);

    let mig = dir.join("migrate.pcapng");
    let out = run(&[
        "migrate",
        "--count",
        "2",
        "--format",
        "json",
        "--pcap",
        mig.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let frames = r["capture"]["frames"].as_u64().unwrap();
    assert_eq!(frames, r["frames_delivered"].as_u64().unwrap(), "{out}");
    assert_eq!(tcpdump(&mig).0 as u64, frames);
    let (names, counts) = pcap_interfaces(&mig);
    assert_eq!(
        names,
        ["m0-tx0", "m0-rx0", "m1-tx0", "m1-rx0", "m2-tx0", "m2-rx0"]
    );
    assert!(
        counts.iter().all(|&c| c > 0),
        "every instance carried frames: {counts:?}"
    );

    let sc = dir.join("scenario.pcapng");
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/linked-devices.toml"
    );
    let out = run(&["scenario", "run", file, "--pcap", sc.to_str().unwrap()]);
    assert!(out.contains("passed"), "{out}");
    let (names, counts) = pcap_interfaces(&sc);
    assert!(
        names.iter().any(|n| n.starts_with("linked-devices/")),
        "{names:?}"
    );
    assert_eq!(tcpdump(&sc).0 as u64, counts.iter().sum::<u64>());
    std::fs::remove_dir_all(&dir).unwrap();
}
