//! vfio-user migration v2 between two servers, driven by our client over their sockets (QEMU
//! 11.1 does not migrate vfio-user devices yet): dirty page tracking while a guest (the driver
//! model) runs traffic over the socket, the stop-and-copy of the device state, the resume on
//! the destination without the driver restarting anything, and traffic that continues with no
//! frame lost or duplicated. Then everything a client can get wrong: invalid state arcs,
//! malformed state streams, data transfers in the wrong state, bad dirty-report arguments, and
//! a client that dies in the middle.

mod support;

use device::InterruptRecorder;
use sim_harness::driver::{DriverOptions, GuestMemory, NetDriver};
use sim_harness::frames::{self, Tracker};
use sim_harness::vfio_user::client::{self, recv_reply, send_message, Client, InterruptPump};
use sim_harness::vfio_user::wire::{self, feature, mig_state, Command, Header};
use sim_harness::vfio_user::MigState;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{temp_dir, vmm_device, TestServer};
use vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;

const PAIRS: u16 = 2;
const PAGE: u64 = 4096;
/// MIG_DATA_READ/WRITE chunk: several messages for one state.
const CHUNK: u32 = 16 << 10;
/// Stream of the frames a test puts straight into a stopped source's receive FIFO.
const INJECTED: u16 = 100;

impl TestServer {
    /// What a fresh client must find.
    fn assert_ready(&self) {
        assert_eq!(self.server.migration_state(), MigState::Running);
        assert!(!self.server.dirty_logging(), "dirty logging left on");
        assert!(!self.dev().is_paused(), "device left paused");
        assert_eq!(self.dev().status(), 0, "device not reset");
        assert!(self.dev().mappings().is_empty(), "DMA mappings left");
        assert_eq!(self.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX), 0);
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, client::ClientError>) -> i32 {
    r.unwrap_err().errno().expect("an error reply")
}

/// The guest: the driver over a socket, its interrupt pump, and its traffic bookkeeping.
struct Guest {
    drv: NetDriver,
    pump: InterruptPump,
    client: Arc<Client>,
    irq: Arc<InterruptRecorder>,
    mac: [u8; 6],
    rng: rand::rngs::SmallRng,
    sent: HashMap<u16, u64>,
    tracker: Tracker,
}

fn connect(path: &Path) -> (Arc<Client>, Arc<InterruptRecorder>, InterruptPump) {
    let c = Arc::new(Client::connect(path).unwrap());
    c.set_posted_writes(true);
    let n = c.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap().count as u16;
    let irq = Arc::new(InterruptRecorder::new(n));
    let pump = c.wire_interrupts(irq.clone()).unwrap();
    (c, irq, pump)
}

impl Guest {
    fn start(path: &Path) -> Self {
        Self::start_with(path, false)
    }

    fn start_with(path: &Path, packed: bool) -> Self {
        let (client, irq, pump) = connect(path);
        let opts = DriverOptions {
            queue_pairs: PAIRS,
            memory: 16 << 20,
            ..Default::default()
        }
        .with_packed(packed);
        let mut drv = NetDriver::new(client.clone(), irq.clone(), opts).unwrap();
        drv.start().unwrap();
        let mac = drv.mac().unwrap();
        Guest {
            drv,
            pump,
            client,
            irq,
            mac,
            rng: rand::SeedableRng::seed_from_u64(5),
            sent: HashMap::new(),
            tracker: Tracker::default(),
        }
    }

    /// One round: 8 frames per pair sent (looped back), everything received so far taken.
    fn round(&mut self) {
        for p in 0..PAIRS {
            let base = self.sent.get(&p).copied().unwrap_or(0);
            let batch: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    frames::build(
                        self.mac,
                        self.mac,
                        p,
                        base + i,
                        64 + ((base + i) as usize * 181) % 1400,
                        &mut self.rng,
                    )
                })
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let n = self.drv.send(p, &refs).unwrap();
            *self.sent.entry(p).or_insert(0) += n as u64;
            for f in self.drv.recv(p).unwrap() {
                self.tracker.record(&f);
            }
        }
    }

    /// Receives until every frame sent arrived (or 5 s).
    fn drain(&mut self) {
        let total: u64 = self.sent.values().sum();
        let t0 = Instant::now();
        while self.tracker.delivered < total && t0.elapsed() < Duration::from_secs(5) {
            for p in 0..PAIRS {
                for f in self.drv.recv(p).unwrap() {
                    self.tracker.record(&f);
                }
            }
        }
    }
}

fn bitmap_pages(bitmap: &[u64], iova: u64, page_size: u64) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(move |(w, &bits)| {
        (0..64u64)
            .filter(move |b| bits & (1 << b) != 0)
            .map(move |b| (iova + (w as u64 * 64 + b) * page_size) / PAGE)
    })
}

fn copy_pages(src: &GuestMemory, dst: &GuestMemory, pages: impl IntoIterator<Item = u64>) -> u64 {
    let mut buf = [0u8; PAGE as usize];
    let range = src.pfns();
    let mut n = 0;
    for pfn in pages.into_iter().filter(|p| range.contains(p)) {
        src.copy_page_to(pfn, dst, &mut buf).unwrap();
        n += 1;
    }
    n
}

fn mismatched_pages(a: &GuestMemory, b: &GuestMemory) -> Vec<u64> {
    let (mut x, mut y) = ([0u8; PAGE as usize], [0u8; PAGE as usize]);
    a.pfns()
        .filter(|&pfn| {
            a.read(pfn * PAGE, &mut x).unwrap();
            b.read(pfn * PAGE, &mut y).unwrap();
            x != y
        })
        .collect()
}

/// What a migration did.
#[derive(Debug)]
struct Outcome {
    /// Device-dirty pages per REPORT round (the last one after STOP).
    device_dirty: Vec<usize>,
    state_len: usize,
    sent: u64,
    tracker: Tracker,
    interrupts_on_destination: u64,
}

/// Runs a guest on the server at `a` with traffic, migrates it to the server at `b` with the
/// protocol's migration (pre-copy with DMA logging, stop-and-copy of the device state, resume),
/// runs traffic on `b`, and returns what happened. `on_stopped` runs once the source is in
/// STOP (before its state is saved) and returns how many frames it put in the source's receive
/// FIFO for stream [`INJECTED`] (seq 0, 1, ...); `on_moved` runs after the traffic on the
/// destination.
fn migrate_under_traffic(
    a: &Path,
    b: &Path,
    packed: bool,
    on_stopped: impl FnOnce([u8; 6]) -> u64,
    on_moved: impl FnOnce(),
) -> Outcome {
    let mut g = Guest::start_with(a, packed);
    assert_eq!(g.drv.is_packed(), packed);
    let src = g.client.clone();
    assert_eq!(
        src.migration_flags().unwrap(),
        u64::from(feature::MIGRATION_STOP_COPY)
    );
    assert_eq!(src.mig_state().unwrap(), mig_state::RUNNING);
    for _ in 0..10 {
        g.round();
    }
    let mem = g.drv.mem.clone();
    let (base, size) = (mem.base(), mem.size());

    // Pre-copy: device writes through DMA logging, guest (CPU) writes through its own log.
    let cpu = Arc::new(dma::WriteTrace::new(base + size));
    mem.set_cpu_dirty_log(Some(cpu.clone()));
    assert_eq!(src.dma_logging_start(PAGE, &[(base, size)]).unwrap(), PAGE);
    let dst_mem = Arc::new(mem.new_like().unwrap());
    copy_pages(&mem, &dst_mem, mem.pfns());
    let mut device_dirty = Vec::new();
    for _ in 0..5 {
        for _ in 0..4 {
            g.round();
        }
        // Doorbells may be serviced after the driver's store returns (a doorbell engine
        // polling a mapped notify window, or posted writes): wait for the frames so that
        // this window surely holds device writes.
        g.drain();
        let bitmap = src.dma_logging_report(base, size, PAGE).unwrap();
        let pages: BTreeSet<u64> = bitmap_pages(&bitmap, base, PAGE).collect();
        device_dirty.push(pages.len());
        copy_pages(&mem, &dst_mem, pages.into_iter().chain(cpu.take_pages()));
    }

    // Stop-and-copy: the guest stops (no more driver calls), the device stops.
    assert_eq!(src.set_mig_state(mig_state::STOP).unwrap(), mig_state::STOP);
    let injected = on_stopped(g.mac);
    if injected > 0 {
        g.sent.insert(INJECTED, injected);
    }
    let bitmap = src.dma_logging_report(base, size, PAGE).unwrap();
    let pages: BTreeSet<u64> = bitmap_pages(&bitmap, base, PAGE).collect();
    device_dirty.push(pages.len());
    copy_pages(&mem, &dst_mem, pages.into_iter().chain(cpu.take_pages()));
    assert_eq!(
        src.set_mig_state(mig_state::STOP_COPY).unwrap(),
        mig_state::STOP_COPY
    );
    let state = src.read_device_state(CHUNK).unwrap();
    assert!(state.len() > 4096, "state of {} bytes", state.len());
    assert!(
        src.mig_data_read(CHUNK).unwrap().is_empty(),
        "the end stays the end"
    );
    assert_eq!(src.set_mig_state(mig_state::STOP).unwrap(), mig_state::STOP);
    src.dma_logging_stop().unwrap();
    mem.set_cpu_dirty_log(None);
    let bad = mismatched_pages(&mem, &dst_mem);
    assert!(
        bad.is_empty(),
        "destination memory differs on {} pages (dirty tracking missed writes): {:?}",
        bad.len(),
        &bad[..bad.len().min(8)]
    );

    // Destination: the VMM maps guest memory and wires interrupts, then loads the state.
    let (dst, irq_b, pump_b) = connect(b);
    g.drv
        .migrate_to(dst.clone(), irq_b.clone(), dst_mem.clone())
        .unwrap();
    assert_eq!(dst.set_mig_state(mig_state::STOP).unwrap(), mig_state::STOP);
    assert_eq!(
        dst.set_mig_state(mig_state::RESUMING).unwrap(),
        mig_state::RESUMING
    );
    dst.write_device_state(&state, CHUNK as usize).unwrap();
    assert_eq!(dst.set_mig_state(mig_state::STOP).unwrap(), mig_state::STOP);
    assert_eq!(
        dst.set_mig_state(mig_state::RUNNING).unwrap(),
        mig_state::RUNNING
    );
    // The source's VMM lets it go.
    let old = std::mem::replace(&mut g.pump, pump_b);
    drop(old);
    g.client = dst;
    g.irq = irq_b;
    drop(src);

    // The guest carries on: no restart, the rings continue where they were. It asks for an
    // interrupt at the next RX completion (EVENT_IDX used_event), which the destination's ring
    // state must honour.
    let mem = g.drv.mem.clone();
    for p in (0..PAIRS).filter(|_| !packed) {
        let r = g.drv.ring(2 * p).unwrap();
        let at = r.used_idx(&mem).unwrap();
        r.set_used_event(&mem, at).unwrap();
    }
    for _ in 0..20 {
        g.round();
    }
    g.drain();
    let sent: u64 = g.sent.values().sum();
    let mut tracker = g.tracker.clone();
    tracker.finish(&g.sent);
    let t0 = Instant::now();
    while g.irq.total() == 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let interrupts_on_destination = g.irq.total();
    on_moved();
    g.drv.stop().unwrap();
    Outcome {
        device_dirty,
        state_len: state.len(),
        sent,
        tracker,
        interrupts_on_destination,
    }
}

fn assert_clean_outcome(o: &Outcome, interrupts: bool) {
    assert!(
        o.tracker.clean() && o.tracker.delivered == o.sent,
        "frames: {:?}, {} sent",
        o.tracker,
        o.sent
    );
    assert!(o.sent >= 39 * 16, "{} frames sent", o.sent);
    assert!(
        o.device_dirty[..5].iter().all(|&n| n > 0),
        "device writes under traffic are reported: {:?}",
        o.device_dirty
    );
    assert!(
        !interrupts || o.interrupts_on_destination > 0,
        "no interrupt from the destination"
    );
}

#[test]
fn a_guest_migrates_between_two_servers_under_traffic() {
    let (a, b) = (TestServer::start(PAIRS), TestServer::start(PAIRS));
    let o = migrate_under_traffic(
        a.path(),
        b.path(),
        false,
        |mac| {
            assert_eq!(a.server.migration_state(), MigState::Stop);
            assert!(a.dev().is_paused());
            assert!(a.server.dirty_logging());
            // Frames arriving while the source is stopped wait in its receive FIFO; the state
            // carries them and the destination delivers them.
            let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(9);
            let before = a.dev().inbox().len();
            for seq in 0..5 {
                assert!(a
                    .dev()
                    .inbox()
                    .push(&frames::build(mac, mac, INJECTED, seq, 300, &mut rng)));
            }
            a.dev().service_rx();
            assert_eq!(
                a.dev().inbox().len(),
                before + 5,
                "a stopped device delivers nothing"
            );
            5
        },
        || {
            // The destination runs the queues and the multiqueue setup the state carried.
            assert_eq!(b.server.migration_state(), MigState::Running);
            assert!(!b.dev().is_paused());
            assert_eq!(b.dev().fault(), None);
            assert_eq!(b.dev().active_queue_pairs(), PAIRS);
            for q in 0..2 * PAIRS {
                assert!(b.dev().queue(q).unwrap().enabled, "queue {q}");
            }
        },
    );
    assert_clean_outcome(&o, true);
    eprintln!(
        "device dirty pages per round {:?}, state {} bytes, {} frames",
        o.device_dirty, o.state_len, o.sent
    );
    // The source was let go and reset.
    a.wait_ended(1);
    a.assert_ready();
}

/// A `vdpa-emu serve` child, killed if the test fails before it is stopped.
struct ServeProcess(std::process::Child);

impl ServeProcess {
    /// SIGTERM, then its exit status must be success.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) }, 0);
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The packed ring's state (offsets and wrap counters in the ring state) migrates too.
#[test]
fn a_guest_with_packed_rings_migrates() {
    let (a, b) = (TestServer::start(PAIRS), TestServer::start(PAIRS));
    let o = migrate_under_traffic(
        a.path(),
        b.path(),
        true,
        |_| 0,
        || {
            assert_eq!(b.dev().fault(), None);
            assert_eq!(
                b.dev().negotiated_features() & (1 << bar_registers::virtio::bits::RING_PACKED),
                1 << bar_registers::virtio::bits::RING_PACKED
            );
        },
    );
    assert_clean_outcome(&o, false);
}

#[test]
fn two_serve_processes_migrate_a_guest() {
    let dir = temp_dir("vdpa-emu-mig");
    let spawn = |name: &str| {
        let sock = dir.join(name);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
            .args([
                "serve",
                "--socket",
                sock.to_str().unwrap(),
                "--queue-pairs",
                "2",
                "--mac",
                "02:00:00:00:00:07",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = ServeProcess(child);
        let t0 = Instant::now();
        while UnixStream::connect(&sock).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "server {name} did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // That probe connection counts as a client: it is gone before the real one comes.
        (sock, child)
    };
    let (sa, ca) = spawn("a.sock");
    let (sb, cb) = spawn("b.sock");
    let o = migrate_under_traffic(&sa, &sb, false, |_| 0, || {});
    assert_clean_outcome(&o, true);
    ca.stop();
    cb.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn invalid_arcs_are_refused_and_the_state_is_unchanged() {
    let ts = TestServer::start(1);
    let c = ts.client();
    assert_eq!(c.mig_state().unwrap(), mig_state::RUNNING);
    // Same state: nothing to do.
    assert_eq!(
        c.set_mig_state(mig_state::RUNNING).unwrap(),
        mig_state::RUNNING
    );
    // Not a target: ERROR, the P2P and PRE_COPY states (not offered), unknown values.
    for bad in [
        mig_state::ERROR,
        mig_state::RUNNING_P2P,
        mig_state::PRE_COPY,
        mig_state::PRE_COPY_P2P,
        8,
        0xffff_ffff,
    ] {
        assert_eq!(
            errno(c.set_mig_state(bad)),
            libc::EINVAL,
            "RUNNING -> {bad}"
        );
        assert_eq!(c.mig_state().unwrap(), mig_state::RUNNING);
    }
    assert!(!ts.dev().is_paused());
    // RUNNING -> STOP_COPY goes through STOP (the spec's combined arcs): paused, state ready.
    assert_eq!(
        c.set_mig_state(mig_state::STOP_COPY).unwrap(),
        mig_state::STOP_COPY
    );
    assert!(ts.dev().is_paused());
    assert_eq!(
        errno(c.set_mig_state(mig_state::PRE_COPY)),
        libc::EINVAL,
        "STOP_COPY -> PRE_COPY is explicitly not allowed"
    );
    assert_eq!(c.mig_state().unwrap(), mig_state::STOP_COPY);
    assert!(!c.mig_data_read(64).unwrap().is_empty());
    // STOP_COPY -> RESUMING through STOP; RESUMING -> RUNNING through STOP, which restores the
    // (empty) stream: refused, and the device is in ERROR.
    assert_eq!(
        c.set_mig_state(mig_state::RESUMING).unwrap(),
        mig_state::RESUMING
    );
    assert_eq!(errno(c.set_mig_state(mig_state::RUNNING)), libc::EINVAL);
    assert_eq!(c.mig_state().unwrap(), mig_state::ERROR);
    assert_eq!(ts.server.migration_state(), MigState::Error);
    // Only a reset leaves ERROR.
    for to in [
        mig_state::RUNNING,
        mig_state::STOP,
        mig_state::RESUMING,
        mig_state::STOP_COPY,
    ] {
        assert_eq!(errno(c.set_mig_state(to)), libc::EINVAL, "ERROR -> {to}");
        assert_eq!(c.mig_state().unwrap(), mig_state::ERROR);
    }
    c.reset().unwrap();
    assert_eq!(c.mig_state().unwrap(), mig_state::RUNNING);
    assert!(!ts.dev().is_paused());
    // Every direct arc, both ways.
    for (to, paused) in [
        (mig_state::STOP, true),
        (mig_state::RUNNING, false),
        (mig_state::STOP, true),
        (mig_state::STOP_COPY, true),
        (mig_state::STOP, true),
    ] {
        assert_eq!(c.set_mig_state(to).unwrap(), to);
        assert_eq!(ts.dev().is_paused(), paused, "in {}", mig_state::name(to));
    }
    let good = ts.dev().save_state();
    assert_eq!(
        c.set_mig_state(mig_state::RESUMING).unwrap(),
        mig_state::RESUMING
    );
    c.write_device_state(&good, 1000).unwrap();
    assert_eq!(
        c.set_mig_state(mig_state::RUNNING).unwrap(),
        mig_state::RUNNING
    );
    assert!(!ts.dev().is_paused());
}

#[test]
fn device_feature_requests_are_checked() {
    let ts = TestServer::start(1);
    let c = ts.client();
    let mig = feature::MIGRATION;
    let state = feature::MIG_DEVICE_STATE;
    let cases: [(u32, &[u8], u32, i32); 9] = [
        (mig | 1 << 19, &[], 16, libc::EINVAL), // unknown operation bit
        (mig, &[], 16, libc::EINVAL),           // no operation
        (
            state | feature::GET | feature::SET,
            &[0; 8],
            16,
            libc::EINVAL,
        ), // GET and SET without PROBE
        (mig | feature::SET, &[0; 8], 16, libc::EINVAL), // MIGRATION cannot be set
        (mig | feature::GET, &[], 8, libc::EINVAL), // no room for the reply
        (state | feature::SET, &[2, 0], 16, libc::EINVAL), // short data
        (3 | feature::GET, &[], 64, libc::ENOTTY), // LOW_POWER_ENTRY: not offered
        (9 | feature::GET, &[], 64, libc::ENOTTY), // MIG_DATA_SIZE: not offered
        (
            feature::DMA_LOGGING_START | feature::GET,
            &[],
            64,
            libc::EINVAL,
        ),
    ];
    for (flags, data, argsz, want) in cases {
        assert_eq!(
            errno(c.device_feature(flags, data, argsz)),
            want,
            "flags {flags:#x}"
        );
    }
    // A payload shorter than argsz + flags.
    let r = c
        .request(Command::DeviceFeature as u16, 0, &[1, 0, 0, 0], &[])
        .unwrap();
    assert_eq!(r.errno(), Some(libc::EINVAL));
    // PROBE: the request comes back when every operation asked is supported.
    for (flags, ok) in [
        (mig | feature::PROBE, true),
        (mig | feature::PROBE | feature::GET, true),
        (mig | feature::PROBE | feature::SET, false),
        (state | feature::PROBE | feature::GET | feature::SET, true),
        (
            feature::DMA_LOGGING_START | feature::PROBE | feature::SET,
            true,
        ),
        (
            feature::DMA_LOGGING_STOP | feature::PROBE | feature::SET,
            true,
        ),
        (
            feature::DMA_LOGGING_REPORT | feature::PROBE | feature::GET,
            true,
        ),
        (
            feature::DMA_LOGGING_REPORT | feature::PROBE | feature::SET,
            false,
        ),
    ] {
        match c.device_feature(flags, &[], 8) {
            Ok(r) => {
                assert!(ok, "flags {flags:#x} accepted");
                assert_eq!(r, wire::encode_feature(8, flags, &[]));
            }
            Err(e) => assert!(
                !ok && e.errno() == Some(libc::EINVAL),
                "flags {flags:#x}: {e}"
            ),
        }
    }
    // The state reply: device_state and data_fd -1.
    let r = c.device_feature(state | feature::GET, &[], 16).unwrap();
    assert_eq!(r.len(), 16);
    assert_eq!(&r[8..], &[2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    // The VERSION reply offers no "migration" capability: the spec defines none.
    assert!(c.server_caps()["capabilities"].get("migration").is_none());
    assert_eq!(c.mig_state().unwrap(), mig_state::RUNNING);
}

#[test]
fn mig_data_is_only_read_in_stop_copy_and_written_in_resuming() {
    let ts = TestServer::start(1);
    let c = ts.client();
    for (to, read_ok, write_ok) in [
        (mig_state::RUNNING, false, false),
        (mig_state::STOP, false, false),
        (mig_state::STOP_COPY, true, false),
        (mig_state::STOP, false, false),
        (mig_state::RESUMING, false, true),
    ] {
        assert_eq!(c.set_mig_state(to).unwrap(), to);
        let name = mig_state::name(to);
        match c.mig_data_read(16) {
            Ok(d) => assert!(read_ok && d.len() == 16, "read in {name}"),
            Err(e) => assert!(
                !read_ok && e.errno() == Some(libc::EINVAL),
                "read in {name}: {e}"
            ),
        }
        match c.mig_data_write(&[0; 4]) {
            Ok(()) => assert!(write_ok, "write in {name}"),
            Err(e) => assert!(
                !write_ok && e.errno() == Some(libc::EINVAL),
                "write in {name}: {e}"
            ),
        }
    }
    // Size and argsz checks.
    assert_eq!(
        c.set_mig_state(mig_state::STOP).map_err(|e| e.errno()),
        Err(Some(libc::EINVAL)),
        "4 garbage bytes are no state"
    );
    c.reset().unwrap();
    c.set_mig_state(mig_state::STOP_COPY).unwrap();
    let too_big = wire::encode_mig_data(u32::MAX, (1 << 20) + 1, &[]);
    assert_eq!(
        c.request(Command::MigDataRead as u16, 0, &too_big, &[])
            .unwrap()
            .errno(),
        Some(libc::EINVAL)
    );
    let small_argsz = wire::encode_mig_data(8 + 15, 16, &[]);
    assert_eq!(
        c.request(Command::MigDataRead as u16, 0, &small_argsz, &[])
            .unwrap()
            .errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        c.request(Command::MigDataRead as u16, 0, &[0; 4], &[])
            .unwrap()
            .errno(),
        Some(libc::EINVAL)
    );
    // The whole state, in odd chunks: what the device saves; then 0 bytes, again and again.
    let mut got = Vec::new();
    loop {
        let d = c.mig_data_read(999).unwrap();
        if d.is_empty() {
            break;
        }
        got.extend(d);
    }
    assert_eq!(got, ts.dev().save_state());
    assert!(c.mig_data_read(999).unwrap().is_empty());
    // A write whose size disagrees with its payload.
    c.set_mig_state(mig_state::RESUMING).unwrap();
    let lying = wire::encode_mig_data(8 + 100, 100, &[0; 50]);
    assert_eq!(
        c.request(Command::MigDataWrite as u16, 0, &lying, &[])
            .unwrap()
            .errno(),
        Some(libc::EINVAL)
    );
    c.write_device_state(&got, 333).unwrap();
    assert_eq!(
        c.set_mig_state(mig_state::RUNNING).unwrap(),
        mig_state::RUNNING
    );
}

#[test]
fn malformed_state_streams_put_the_device_in_error() {
    let ts = TestServer::start(2);
    let c = ts.client();
    c.write(
        0,
        ts.dev().layout().common.offset + bar_registers::virtio::common::DEVICE_STATUS,
        &[1],
    )
    .unwrap();
    c.set_mig_state(mig_state::STOP_COPY).unwrap();
    let good = c.read_device_state(CHUNK).unwrap();
    c.set_mig_state(mig_state::STOP).unwrap();
    let other = vmm_device(3);
    other.set_loopback();
    other.pause();
    let mut corrupt = good.clone();
    corrupt[good.len() / 2] ^= 0x40;
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let streams: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", vec![0x5a; 3000]),
        ("bad magic", bad_magic),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("one bit flipped", corrupt),
        ("another kind of device", other.save_state()),
        ("doubled", [good.clone(), good.clone()].concat()),
    ];
    for (what, s) in streams {
        assert_eq!(
            c.set_mig_state(mig_state::RESUMING).unwrap(),
            mig_state::RESUMING
        );
        c.write_device_state(&s, CHUNK as usize).unwrap();
        assert_eq!(
            errno(c.set_mig_state(mig_state::STOP)),
            libc::EINVAL,
            "{what}"
        );
        assert_eq!(c.mig_state().unwrap(), mig_state::ERROR, "{what}");
        assert_eq!(ts.dev().status(), 0, "{what}: the device is left reset");
        c.reset().unwrap();
        assert_eq!(c.mig_state().unwrap(), mig_state::RUNNING);
        c.set_mig_state(mig_state::STOP).unwrap();
    }
    // More than any state of this device can be: refused at the write.
    c.set_mig_state(mig_state::RESUMING).unwrap();
    let limit = ts.dev().max_state_len();
    let mut written = 0;
    let chunk = vec![0u8; 1 << 20];
    let e = loop {
        match c.mig_data_write(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(e) => break e,
        }
        assert!(written <= limit, "{written} bytes taken, limit {limit}");
    };
    assert_eq!(e.errno(), Some(libc::EFBIG));
    c.reset().unwrap();
    // The good one still restores.
    c.set_mig_state(mig_state::RESUMING).unwrap();
    c.write_device_state(&good, CHUNK as usize).unwrap();
    c.set_mig_state(mig_state::RUNNING).unwrap();
    assert_eq!(ts.dev().status(), 1);
}

#[test]
fn dirty_reports_check_their_arguments_and_clear_what_they_report() {
    let ts = TestServer::start(PAIRS);
    let mut g = Guest::start(ts.path());
    let c = g.client.clone();
    let (base, size) = (g.drv.mem.base(), g.drv.mem.size());
    // Nothing to report before START.
    assert_eq!(errno(c.dma_logging_report(base, size, PAGE)), libc::EINVAL);
    // START checks its control.
    assert_eq!(errno(c.dma_logging_start(0, &[(base, size)])), libc::EINVAL);
    assert_eq!(
        errno(c.dma_logging_start(3000, &[(base, size)])),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.dma_logging_start(PAGE, &[(base + 1, size)])),
        libc::EINVAL
    );
    assert_eq!(errno(c.dma_logging_start(PAGE, &[(base, 0)])), libc::EINVAL);
    assert_eq!(
        errno(c.dma_logging_start(PAGE, &[(base, size), (base + size - PAGE, PAGE)])),
        libc::EINVAL,
        "overlap"
    );
    assert_eq!(
        errno(c.dma_logging_start(PAGE, &[(u64::MAX - PAGE + 1, 2 * PAGE)])),
        libc::EINVAL,
        "overflow"
    );
    let many: Vec<(u64, u64)> = (0..257).map(|i| (i * PAGE, PAGE)).collect();
    assert_eq!(errno(c.dma_logging_start(PAGE, &many)), libc::E2BIG);
    assert!(!ts.server.dirty_logging());
    // A finer page size than 4 KiB is answered with 4 KiB.
    assert_eq!(c.dma_logging_start(1024, &[(base, size)]).unwrap(), PAGE);
    assert!(ts.server.dirty_logging());
    assert_eq!(
        errno(c.dma_logging_start(PAGE, &[(base, size)])),
        libc::EINVAL,
        "already started"
    );
    for _ in 0..8 {
        g.round();
    }
    g.drain();
    // REPORT checks its arguments.
    for (iova, len, ps, what) in [
        (base, size, 0, "page size 0"),
        (base, size, 2048, "page size below 4 KiB"),
        (base, size, 6000, "page size not a power of two"),
        (base, 0, PAGE, "empty range"),
        (base - PAGE, size, PAGE, "starts before the tracked range"),
        (base, size + PAGE, PAGE, "ends after the tracked range"),
        (base + 512, PAGE, PAGE, "misaligned"),
        (u64::MAX - PAGE + 1, 2 * PAGE, PAGE, "overflow"),
    ] {
        assert_eq!(
            errno(c.dma_logging_report(iova, len, ps)),
            libc::EINVAL,
            "{what}"
        );
    }
    // argsz without room for the bitmap.
    let flags = feature::DMA_LOGGING_REPORT | feature::GET;
    let short = (wire::DEVICE_FEATURE_SIZE + wire::DMA_LOGGING_REPORT_SIZE) as u32;
    assert_eq!(
        errno(c.device_feature(
            flags,
            &wire::encode_dma_logging_report(base, size, PAGE),
            short
        )),
        libc::EINVAL
    );
    // Traffic dirtied pages; a report of the first half leaves the second half's for later.
    g.drv.stop().unwrap();
    let half = size / 2;
    let first: Vec<u64> =
        bitmap_pages(&c.dma_logging_report(base, half, PAGE).unwrap(), base, PAGE).collect();
    assert!(first
        .iter()
        .all(|&p| p * PAGE >= base && p * PAGE < base + half));
    let whole: Vec<u64> =
        bitmap_pages(&c.dma_logging_report(base, size, PAGE).unwrap(), base, PAGE).collect();
    assert!(
        whole.iter().all(|&p| p * PAGE >= base + half),
        "first-half pages reported twice: {whole:?}"
    );
    assert!(
        !first.is_empty() || !whole.is_empty(),
        "traffic dirtied nothing"
    );
    // Reported pages are clean: nothing more without DMA.
    assert!(c
        .dma_logging_report(base, size, PAGE)
        .unwrap()
        .iter()
        .all(|&w| w == 0));
    // Coarser reports OR the pages of each unit (and clear them all); the bitmap has
    // ceil(units / 64) words. A restart writes rings in the first half (the allocator's end).
    g.drv.start().unwrap();
    g.drv.stop().unwrap();
    assert_eq!(
        c.dma_logging_report(base + half, half, 2 << 20).unwrap(),
        vec![0],
        "4 units of 2 MiB, none written"
    );
    assert_eq!(
        c.dma_logging_report(base, half, half).unwrap(),
        vec![1],
        "one unit: the whole first half"
    );
    assert!(
        c.dma_logging_report(base, half, PAGE)
            .unwrap()
            .iter()
            .all(|&w| w == 0),
        "cleared by the coarse report"
    );
    let one = c.dma_logging_report(base, size, size).unwrap();
    assert_eq!(one, vec![0], "everything was reported already");
    c.dma_logging_stop().unwrap();
    c.dma_logging_stop().unwrap();
    assert!(!ts.server.dirty_logging());
    assert_eq!(errno(c.dma_logging_report(base, size, PAGE)), libc::EINVAL);
}

#[test]
fn a_client_dying_mid_migration_leaves_the_server_ready_for_the_next() {
    let ts = TestServer::start(PAIRS);
    // Dies in STOP_COPY with logging on and half the state read.
    {
        let mut g = Guest::start(ts.path());
        for _ in 0..4 {
            g.round();
        }
        let c = g.client.clone();
        c.dma_logging_start(PAGE, &[]).unwrap();
        c.set_mig_state(mig_state::STOP_COPY).unwrap();
        assert!(!c.mig_data_read(CHUNK).unwrap().is_empty());
        assert!(ts.dev().is_paused());
        // The VMM crashes: its socket goes away under everything.
        c.disconnect();
        drop(g);
        drop(c);
    }
    ts.wait_ended(1);
    ts.assert_ready();
    // Dies in RESUMING with part of a state written.
    {
        let c = ts.client();
        c.set_mig_state(mig_state::RESUMING).unwrap();
        c.mig_data_write(&[7; 100]).unwrap();
        assert!(ts.dev().is_paused());
    }
    ts.wait_ended(2);
    ts.assert_ready();
    // Dies in RESUMING in the middle of a MIG_DATA_WRITE message.
    {
        let mut r = UnixStream::connect(ts.path()).unwrap();
        let caps = client::qemu_capabilities().to_string();
        let v = wire::encode_version(0, 0, &caps);
        send_message(
            &r,
            &Header::command(1, Command::Version as u16, v.len(), 0).to_bytes(),
            &v,
            &[],
        )
        .unwrap();
        assert_eq!(recv_reply(&r).unwrap().errno(), None);
        let st = wire::encode_feature(
            16,
            feature::MIG_DEVICE_STATE | feature::SET,
            &[mig_state::RESUMING as u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        );
        send_message(
            &r,
            &Header::command(2, Command::DeviceFeature as u16, st.len(), 0).to_bytes(),
            &st,
            &[],
        )
        .unwrap();
        assert_eq!(recv_reply(&r).unwrap().errno(), None);
        // A MIG_DATA_WRITE header announcing 1000 bytes, then only 10 of them.
        let hdr = Header::command(3, Command::MigDataWrite as u16, 1000, 0);
        use std::io::Write;
        r.write_all(&hdr.to_bytes()).unwrap();
        r.write_all(&[0; 10]).unwrap();
        drop(r);
    }
    ts.wait_ended(3);
    ts.assert_ready();
    // The next client runs traffic as on a fresh server.
    let mut g = Guest::start(ts.path());
    for _ in 0..10 {
        g.round();
    }
    g.drain();
    let mut t = g.tracker.clone();
    t.finish(&g.sent);
    assert!(t.clean() && t.delivered == 160, "{t:?}");
    assert_eq!(g.client.mig_state().unwrap(), mig_state::RUNNING);
}
