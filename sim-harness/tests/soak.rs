//! issue 11, item 5: clients that die anywhere, and a long mixed run.
//!
//! - `a_hundred_killed_clients_leave_serve_flat` (`make test`): `vdpa-emu serve` as a process;
//!   100 client processes (this test binary run again, see [`child`]) are SIGKILLed at random
//!   moments of five workloads, two of which stop on purpose inside a DMA_MAP message and
//!   inside a migration data transfer. The server's descriptor count must come back to the
//!   same number after every client, its RSS must stay within [`RSS_BOUND`] after warm-up,
//!   and a final client must be fully served (traffic byte-exact).
//! - `mixed_traffic_resets_and_remaps_for_ten_minutes` (`make soak`, ignored otherwise):
//!   an in-process server for `VDPA_SOAK_SECS` (default 600) of traffic, device resets, DMA
//!   remaps under running queues, reconnects and killed clients; every counter is checked at
//!   the end.

mod support;

use device::InterruptRecorder;
use dma::SharedMemory;
use rand::{Rng, SeedableRng};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames::{self, Tracker};
use sim_harness::vfio_user::client::{self, recv_reply, send_message, Client};
use sim_harness::vfio_user::wire::{self, feature, mig_state, Command, Header};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{ServeProcess, TestServer};

const CHILD_ENV: &str = "VDPA_SOAK_CHILD";
/// RSS growth allowed between client 10 and client 100 (allocator and page-cache noise; a
/// leak of one guest-memory mmap or per-client state would exceed it: each client maps 4 MiB).
const RSS_BOUND_KIB: u64 = 2048;

/// RSS growth allowed over the long soak after session 10 (server and the test's own clients
/// share the process; one leaked 4 MiB guest memory per session would exceed it quickly).
const SOAK_RSS_BOUND_KIB: u64 = 16 * 1024;

/// What a client process does until it is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Work {
    /// The driver model runs traffic in a loop.
    Traffic,
    /// DMA_MAP / DMA_UNMAP of fresh memfds in a loop.
    MapLoop,
    /// Stops inside a DMA_MAP: header, descriptor and half the payload sent.
    InsideDmaMap,
    /// STOP_COPY, MIG_DATA_READ in 64-byte chunks, back to RUNNING, in a loop.
    MigRead,
    /// RESUMING, then stops inside a MIG_DATA_WRITE (10 of 1000 bytes sent).
    InsideMigWrite,
}

const WORKS: [Work; 5] = [
    Work::Traffic,
    Work::MapLoop,
    Work::InsideDmaMap,
    Work::MigRead,
    Work::InsideMigWrite,
];

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Traffic => "traffic",
            Work::MapLoop => "map-loop",
            Work::InsideDmaMap => "inside-dma-map",
            Work::MigRead => "mig-read",
            Work::InsideMigWrite => "inside-mig-write",
        }
    }

    fn parse(s: &str) -> Work {
        *WORKS.iter().find(|w| w.name() == s).expect("work name")
    }
}

fn ready() {
    let mut o = std::io::stdout();
    writeln!(o, "READY").unwrap();
    o.flush().unwrap();
}

fn raw_version(s: &UnixStream) {
    let caps = client::qemu_capabilities().to_string();
    let v = wire::encode_version(0, 0, &caps);
    let h = Header::command(1, Command::Version as u16, v.len(), 0);
    send_message(s, &h.to_bytes(), &v, &[]).unwrap();
    assert_eq!(recv_reply(s).unwrap().errno(), None);
}

fn dma_map_payload(iova: u64, size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&32u32.to_le_bytes());
    p.extend_from_slice(&3u32.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&iova.to_le_bytes());
    p.extend_from_slice(&size.to_le_bytes());
    p
}

/// A started driver with 4 MiB of guest memory (its own memfd, DMA-mapped) over `c`.
fn driver(c: &Arc<Client>, irq: &Arc<InterruptRecorder>) -> NetDriver {
    let mut drv = NetDriver::new(
        c.clone(),
        irq.clone(),
        DriverOptions {
            queue_pairs: 1,
            memory: 4 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    drv.start().unwrap();
    drv
}

/// A client with its interrupts wired and a started driver.
fn guest(
    path: &Path,
) -> (
    Arc<Client>,
    NetDriver,
    sim_harness::vfio_user::InterruptPump,
    Arc<InterruptRecorder>,
) {
    let c = Arc::new(Client::connect(path).unwrap());
    c.set_posted_writes(true);
    let irq = Arc::new(InterruptRecorder::new(3));
    let pump = c.wire_interrupts(irq.clone()).unwrap();
    let drv = driver(&c, &irq);
    (c, drv, pump, irq)
}

/// One traffic round of `n` frames on pair 0; returns frames queued.
fn round(
    drv: &mut NetDriver,
    rng: &mut rand::rngs::SmallRng,
    seq: u64,
    n: u64,
    tracker: &mut Tracker,
) -> u64 {
    let mac = drv.mac().unwrap();
    let batch: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            frames::build(
                mac,
                mac,
                0,
                seq + i,
                64 + ((seq + i) as usize * 181) % 1400,
                rng,
            )
        })
        .collect();
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    let mut done = 0;
    let t0 = Instant::now();
    while done < refs.len() {
        done += drv.send(0, &refs[done..]).unwrap();
        for f in drv.recv(0).unwrap() {
            tracker.record(&f);
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "TX ring stuck");
    }
    n
}

fn drain(drv: &mut NetDriver, tracker: &mut Tracker, total: u64) {
    let t0 = Instant::now();
    while tracker.delivered < total && t0.elapsed() < Duration::from_secs(10) {
        for f in drv.recv(0).unwrap() {
            tracker.record(&f);
        }
    }
}

/// The client process: `VDPA_SOAK_CHILD=work:socket`. Runs until killed.
fn child(spec: &str) -> ! {
    let (work, path) = spec.split_once(':').unwrap();
    let path = Path::new(path);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(std::process::id().into());
    match Work::parse(work) {
        Work::Traffic => {
            let (_c, mut drv, _pump, _irq) = guest(path);
            ready();
            let (mut tracker, mut seq) = (Tracker::default(), 0);
            loop {
                seq += round(&mut drv, &mut rng, seq, 8, &mut tracker);
            }
        }
        Work::MapLoop => {
            let s = UnixStream::connect(path).unwrap();
            raw_version(&s);
            ready();
            for id in 2u16.. {
                let shm = SharedMemory::new("soak", 0x10000).unwrap();
                let f = shm.try_clone_file().unwrap();
                let iova = 0x1000_0000 + u64::from(id % 64) * 0x10000;
                let h = Header::command(id, Command::DmaMap as u16, 32, 0);
                send_message(
                    &s,
                    &h.to_bytes(),
                    &dma_map_payload(iova, 0x10000),
                    &[f.as_fd()],
                )
                .unwrap();
                assert_eq!(recv_reply(&s).unwrap().errno(), None);
                let mut u = Vec::new();
                u.extend_from_slice(&24u32.to_le_bytes());
                u.extend_from_slice(&0u32.to_le_bytes());
                u.extend_from_slice(&iova.to_le_bytes());
                u.extend_from_slice(&0x10000u64.to_le_bytes());
                let h = Header::command(id, Command::DmaUnmap as u16, u.len(), 0);
                send_message(&s, &h.to_bytes(), &u, &[]).unwrap();
                assert_eq!(recv_reply(&s).unwrap().errno(), None);
            }
            unreachable!()
        }
        Work::InsideDmaMap => {
            let s = UnixStream::connect(path).unwrap();
            raw_version(&s);
            let shm = SharedMemory::new("soak", 0x10000).unwrap();
            let f = shm.try_clone_file().unwrap();
            let h = Header::command(2, Command::DmaMap as u16, 32, 0);
            let p = dma_map_payload(0x1000_0000, 0x10000);
            send_message(&s, &h.to_bytes(), &p[..16], &[f.as_fd()]).unwrap();
            ready();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        Work::MigRead => {
            let (c, mut drv, _pump, _irq) = guest(path);
            let mut tracker = Tracker::default();
            round(&mut drv, &mut rng, 0, 8, &mut tracker);
            c.dma_logging_start(4096, &[]).unwrap();
            ready();
            loop {
                c.set_mig_state(mig_state::STOP_COPY).unwrap();
                while !c.mig_data_read(64).unwrap().is_empty() {}
                c.set_mig_state(mig_state::STOP).unwrap();
                c.set_mig_state(mig_state::RUNNING).unwrap();
            }
        }
        Work::InsideMigWrite => {
            let s = UnixStream::connect(path).unwrap();
            raw_version(&s);
            let st = wire::encode_feature(
                16,
                feature::MIG_DEVICE_STATE | feature::SET,
                &[mig_state::RESUMING as u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            );
            let h = Header::command(2, Command::DeviceFeature as u16, st.len(), 0);
            send_message(&s, &h.to_bytes(), &st, &[]).unwrap();
            assert_eq!(recv_reply(&s).unwrap().errno(), None);
            let h = Header::command(3, Command::MigDataWrite as u16, 1000, 0);
            (&s).write_all(&h.to_bytes()).unwrap();
            (&s).write_all(&[0; 10]).unwrap();
            ready();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
    }
}

/// Runs this test binary again as a client doing `work` against `sock`, and waits until it
/// says it is at work.
fn spawn_child(test: &str, work: Work, sock: &Path) -> (Child, std::thread::JoinHandle<()>) {
    let mut c = Proc::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}:{}", work.name(), sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if line.trim_end().ends_with("READY") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = c.kill();
        panic!("client {} never got to work: {:?}", work.name(), c.wait());
    }
    (c, reader)
}

/// SIGKILLs a client and reaps it (its stdout reader too, which closes the pipe).
fn kill((mut c, reader): (Child, std::thread::JoinHandle<()>)) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(c.id() as i32, libc::SIGKILL) }, 0);
    let st = c.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "client ended before the kill: {st:?}"
    );
    reader.join().unwrap();
}

fn fd_links() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

/// Sessions the server has finished cleaning up.
fn ended(serve: &ServeProcess) -> usize {
    serve.log().matches("device reset, DMA unmapped").count()
}

fn wait_ended(serve: &ServeProcess, n: usize) {
    let t0 = Instant::now();
    while ended(serve) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "serve did not finish session {n}:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A full client in this process: traffic of `frames` frames, byte-exact.
fn served_fully(path: &Path, frames: u64, seed: u64) {
    let (_c, mut drv, _pump, _irq) = guest(path);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut tracker = Tracker::default();
    let mut seq = 0;
    while seq < frames {
        seq += round(&mut drv, &mut rng, seq, 8, &mut tracker);
    }
    drain(&mut drv, &mut tracker, frames);
    tracker.finish(&HashMap::from([(0u16, frames)]));
    assert!(
        tracker.clean() && tracker.delivered == frames,
        "{tracker:?}"
    );
}

#[test]
fn a_hundred_killed_clients_leave_serve_flat() {
    const TEST: &str = "a_hundred_killed_clients_leave_serve_flat";
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    let serve = ServeProcess::start("vdpa-emu-soak", &[]);
    let seed = 0x11_5eed;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    // One full client first, so that the baseline includes what a first client allocates.
    served_fully(&serve.sock, 64, 1);
    wait_ended(&serve, 1);
    let fds0 = serve.fds();
    let mut landed: HashMap<&str, u32> = HashMap::new();
    let mut rss10 = 0;
    let t0 = Instant::now();
    for i in 0..100 {
        let work = WORKS[i % WORKS.len()];
        let c = spawn_child(TEST, work, &serve.sock);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
        kill(c);
        *landed.entry(work.name()).or_default() += 1;
        wait_ended(&serve, i + 2);
        assert_eq!(
            serve.fds(),
            fds0,
            "serve's descriptors after killed client {i} ({})",
            work.name()
        );
        if i == 9 {
            rss10 = serve.rss_kib();
        }
    }
    let rss100 = serve.rss_kib();
    eprintln!(
        "100 clients killed in {:?} (seed {seed:#x}): {landed:?}; serve fds {fds0} -> {}, \
         VmRSS after client 10 {rss10} KiB, after client 100 {rss100} KiB (bound +{RSS_BOUND_KIB} KiB)",
        t0.elapsed(),
        serve.fds()
    );
    assert!(
        rss100 <= rss10 + RSS_BOUND_KIB,
        "serve's RSS grew from {rss10} KiB to {rss100} KiB"
    );
    // The next client is fully served.
    served_fully(&serve.sock, 256, 2);
    wait_ended(&serve, 102);
    let log = serve.log();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(log.matches("client connected").count(), 102);
}

/// `make soak`: traffic, device resets, DMA remaps under running queues, reconnects and
/// killed clients for `VDPA_SOAK_SECS` seconds (default 600); counters checked at the end.
/// It compares this process's descriptors, so it must run alone (`--test-threads=1`).
#[test]
#[ignore = "10-minute soak: run by `make soak`"]
fn mixed_traffic_resets_and_remaps_for_ten_minutes() {
    const TEST: &str = "mixed_traffic_resets_and_remaps_for_ten_minutes";
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    let secs: u64 = std::env::var("VDPA_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("VDPA_SOAK_SECS: seconds"))
        .unwrap_or(600);
    let ts = TestServer::start(1);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x50a6);
    let counters0 = ts.dev().counters();
    let (mut sessions, mut kills, mut resets, mut remaps, mut frames_total) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut fds_after_first = None;
    let rss = || -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let mut rss_warm = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        // A session of the driver model: traffic with resets and remaps in between.
        {
            let (c, mut drv, pump, irq) = guest(ts.path());
            sessions += 1;
            for _ in 0..rng.gen_range(1..20) {
                let mut tracker = Tracker::default();
                let n = rng.gen_range(1..64u64) * 8;
                let mut seq = 0;
                while seq < n {
                    seq += round(&mut drv, &mut rng, seq, 8, &mut tracker);
                }
                drain(&mut drv, &mut tracker, n);
                tracker.finish(&HashMap::from([(0u16, n)]));
                assert!(tracker.clean() && tracker.delivered == n, "{tracker:?}");
                frames_total += n;
                match rng.gen_range(0..4) {
                    0 => {
                        // Device reset (VFIO_USER_DEVICE_RESET), then a driver starts over
                        // (the old one unmaps its memory as it goes; the new one maps its own).
                        c.reset().unwrap();
                        drop(drv);
                        drv = driver(&c, &irq);
                        resets += 1;
                    }
                    1 => {
                        // Remap guest memory under running queues (a vIOMMU flush).
                        let (base, size) = (drv.mem.base(), drv.mem.size());
                        c.unmap(base, size, 0).unwrap();
                        drv.mem.map_into(&*c).unwrap();
                        remaps += 1;
                    }
                    _ => {}
                }
            }
            drop(drv);
            drop(pump);
            drop(c);
            ts.wait_ended(sessions + kills);
        }
        // Sometimes a client process killed mid-work.
        if rng.gen_bool(0.3) {
            let work = WORKS[rng.gen_range(0..WORKS.len())];
            let c = spawn_child(TEST, work, ts.path());
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
            kill(c);
            kills += 1;
            ts.wait_ended(sessions + kills);
        }
        let fds = fd_links();
        match &fds_after_first {
            None => fds_after_first = Some(fds),
            Some(f) => assert_eq!(&fds, f, "descriptors after session {sessions}"),
        }
        if sessions == 10 {
            rss_warm = rss();
        }
    }
    let rss_end = rss();
    let c = ts.dev().counters();
    let st = ts.server.stats();
    eprintln!(
        "soak {:?}: {sessions} sessions, {kills} killed clients, {resets} resets, {remaps} remaps, \
         {frames_total} frames; server {st:?}; VmRSS (server and clients in this process) \
         after session 10 {rss_warm} KiB, at the end {rss_end} KiB (bound +{SOAK_RSS_BOUND_KIB} KiB)",
        t0.elapsed()
    );
    assert!(
        rss_end <= rss_warm + SOAK_RSS_BOUND_KIB,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    assert_eq!(st.accepted, sessions + kills);
    assert_eq!(st.ended, sessions + kills);
    assert_eq!(st.refused, 0);
    assert_eq!(st.stalled, 0);
    assert!(c.tx_frames - counters0.tx_frames >= frames_total);
    assert!(c.rx_frames - counters0.rx_frames >= frames_total);
    assert_eq!(
        c.faults.iter().sum::<u64>(),
        counters0.faults.iter().sum::<u64>(),
        "no device fault"
    );
    assert!(resets > 0 && remaps > 0 && sessions > 1);
    let ms = ts.dev().map_stats();
    assert_eq!(ms.live, 0, "{ms:?}");
    assert_eq!(dma::contained_sigbus(), 0);
}
