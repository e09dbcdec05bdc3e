//! TX budgets outside the device lock (issue #12 item 2, per-queue engines;
//! docs/architecture.md, Concurrency): a transmit queue rung through the shared notify window
//! runs its budgets on its own lane with the device lock free, so a register read and a
//! received frame do not wait for a TX burst, while everything that must not run beside a
//! budget (a reset, a pause, a register write) waits for it, and linked devices transmitting
//! into each other from their doorbell threads neither deadlock nor lose a frame.
//!
//! The budgets here wait in a port whose gate the test holds closed: a budget outside the lock
//! stays put exactly as long as the test wants, so what may pass it and what must wait for it
//! is checked without timing luck. Each control (the trapped doorbell, whose budget holds the
//! device lock) shows the same check fails where the lock is held.

mod support;

use bar_registers::virtio::{common, device_status};
use bar_registers::REGION_CONFIG;
use device::doorbell::NotifyArea;
use device::{Device, DeviceConfig, Port, RegionAccess};
use parking_lot::{Condvar, Mutex};
use sim_harness::driver::{DriverOptions, NetDriver};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{frame_number, numbered_frames};

/// How long a call that must not wait for the gated budget may take (it takes microseconds;
/// the margin is for a loaded 2-core machine).
const PASSES: Duration = Duration::from_secs(20);
/// How long a call that must wait for the gated budget is watched not to return.
const WAITS: Duration = Duration::from_millis(300);

/// A port whose transmit blocks while its gate is closed, and keeps what it was sent.
#[derive(Default)]
struct GatePort {
    open: Mutex<bool>,
    cv: Condvar,
    /// Frames that reached the gate (a budget is waiting in the port once this is > sent).
    arrived: AtomicU64,
    frames: Mutex<Vec<Vec<u8>>>,
}

impl GatePort {
    fn open(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }

    /// Waits until a budget waits at the closed gate.
    fn wait_for_budget(&self) {
        let t0 = Instant::now();
        while self.arrived.load(Ordering::SeqCst) == 0 {
            assert!(t0.elapsed() < PASSES, "no budget reached the port");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Port for GatePort {
    fn transmit(&self, frame: &[u8]) -> bool {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock();
        while !*open {
            self.cv.wait(&mut open);
        }
        drop(open);
        self.frames.lock().push(frame.to_vec());
        true
    }
    fn describe(&self) -> String {
        "gate".into()
    }
}

struct Rig<P> {
    dev: Arc<Device>,
    drv: NetDriver,
    area: Arc<NotifyArea>,
    port: Arc<P>,
}

impl Rig<GatePort> {
    /// One queue pair, a closed gate for a port.
    fn new() -> Self {
        Rig::with(DeviceConfig::with_queue_pairs(1), |_| GatePort::default())
    }
}

impl<P: Port + 'static> Rig<P> {
    /// A started device with `cfg`, the port `port` makes (given the notify window), and a
    /// notify window the test rings by hand (its `take_shared_doorbells` calls stand in for
    /// the doorbell engine thread).
    fn with(cfg: DeviceConfig, port: impl FnOnce(&Arc<NotifyArea>) -> P) -> Self {
        let dev = Device::new(cfg).unwrap();
        let area = Arc::new(NotifyArea::new(dev.layout()).unwrap());
        dev.attach_notify_area(area.clone());
        let port = Arc::new(port(&area));
        dev.set_port(port.clone());
        let mut drv = sim_harness::driver::in_process(&dev, DriverOptions::default()).unwrap();
        drv.start().unwrap();
        Rig {
            dev,
            drv,
            area,
            port,
        }
    }

    /// Queues `frames` on TX queue 1 without a trapped doorbell.
    fn queue_tx(&mut self, frames: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        assert_eq!(self.drv.enqueue_tx(0, &refs).unwrap(), frames.len());
        self.drv.publish_no_kick(1).unwrap();
    }

    /// Kicks TX queue 1 through the notify window and has a thread take the kick, as the
    /// doorbell engine does; the thread returns how many kicks it took once the budget is done.
    fn shared_kick(&self) -> std::thread::JoinHandle<u32> {
        self.area.ring(1, 2).unwrap();
        let dev = self.dev.clone();
        std::thread::spawn(move || dev.take_shared_doorbells())
    }

    /// Kicks TX queue 1 by a register write (the trapped path: its budget holds the lock).
    fn trapped_kick(&self) -> std::thread::JoinHandle<u32> {
        let dev = self.dev.clone();
        let off = dev.layout().doorbell_offset(1);
        std::thread::spawn(move || {
            dev.region_write(0, off, &1u16.to_le_bytes()).unwrap();
            0
        })
    }

    fn status_offset(&self) -> u64 {
        self.dev.layout().common.offset + common::DEVICE_STATUS
    }
}

/// Runs `f` on a thread; its result, or None if it did not return within `limit`.
fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (Option<T>, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    (rx.recv_timeout(limit).ok(), rx)
}

/// A register read of config space and of BAR0 while a budget waits in the port.
fn read_vendor_and_status(dev: &Arc<Device>, status_off: u64) -> (u16, u8) {
    let mut id = [0u8; 2];
    dev.region_read(REGION_CONFIG, 0, &mut id).unwrap();
    let mut st = [0u8];
    dev.region_read(0, status_off, &mut st).unwrap();
    (u16::from_le_bytes(id), st[0])
}

#[test]
fn register_reads_and_received_frames_pass_a_tx_budget_waiting_in_its_port() {
    let mut r = Rig::new();
    let fs = numbered_frames(8);
    r.queue_tx(&fs);
    let kicker = r.shared_kick();
    r.port.wait_for_budget();

    let (dev, off) = (r.dev.clone(), r.status_offset());
    let (read, _) = within(PASSES, move || read_vendor_and_status(&dev, off));
    let (vendor, status) = read.expect("a register read waited for the TX budget");
    assert_eq!(vendor, 0x1af4);
    assert_ne!(status & device_status::DRIVER_OK, 0);

    // A received frame is delivered into RX queue 0 meanwhile (another lane).
    let dev = r.dev.clone();
    let rx = numbered_frames(1).pop().unwrap();
    let (delivered, _) = within(PASSES, move || {
        assert!(dev.inbox().push(&rx));
        dev.service_rx();
        dev.queue(0).unwrap().last_used
    });
    assert_eq!(
        delivered.expect("a received frame waited for the TX budget"),
        1
    );
    assert_eq!(
        r.port.frames.lock().len(),
        0,
        "the budget is still in the port"
    );

    r.port.open();
    assert_eq!(kicker.join().unwrap(), 1);
    assert_eq!(*r.port.frames.lock(), fs, "frames lost or reordered");
    let c = r.dev.counters();
    assert_eq!((c.tx_frames, c.rx_frames, c.shared_doorbells), (8, 1, 1));
    assert_eq!(c.tx_budgets_off_lock, 1);
    assert_eq!(r.dev.queue(1).unwrap().last_used, 8);
    assert_eq!(r.drv.recv(0).unwrap().len(), 1);
    assert_eq!(r.dev.fault(), None);
}

/// The control: a budget rung by a trapped doorbell holds the device lock, and the same read
/// waits for it (so the test above can fail).
#[test]
fn under_a_trapped_doorbell_the_same_read_waits_for_the_budget() {
    let mut r = Rig::new();
    r.queue_tx(&numbered_frames(8));
    let kicker = r.trapped_kick();
    r.port.wait_for_budget();
    let (dev, off) = (r.dev.clone(), r.status_offset());
    let (read, late) = within(WAITS, move || read_vendor_and_status(&dev, off));
    assert!(read.is_none(), "the read passed a budget holding the lock");
    r.port.open();
    kicker.join().unwrap();
    assert_eq!(late.recv_timeout(PASSES).unwrap().0, 0x1af4);
    let c = r.dev.counters();
    assert_eq!((c.tx_frames, c.tx_budgets_off_lock), (8, 0));
}

/// A register write (here the driver's reset), a pause and a saved state wait for the budget
/// and its outcome: when they return, the budget is done and its used buffer notification
/// was sent before them.
#[test]
fn a_reset_a_pause_and_a_saved_state_wait_for_the_budget_outside_the_lock() {
    for what in ["reset", "pause", "save"] {
        let mut r = Rig::new();
        r.queue_tx(&numbered_frames(8));
        let kicker = r.shared_kick();
        r.port.wait_for_budget();
        let (dev, off) = (r.dev.clone(), r.status_offset());
        let (early, done) = within(WAITS, move || {
            match what {
                "reset" => dev.region_write(0, off, &[0]).unwrap(),
                "pause" => dev.pause(),
                _ => {
                    dev.save_state();
                }
            }
            // What the budget did, seen as the call returned.
            let c = dev.counters();
            let q = &c.queues[1];
            (c.tx_frames, (q.interrupts, q.interrupts_suppressed))
        });
        assert!(early.is_none(), "{what} did not wait for the budget");
        r.port.open();
        assert_eq!(kicker.join().unwrap(), 1);
        let (sent, decided) = done.recv_timeout(PASSES).unwrap();
        assert_eq!(sent, 8, "{what} returned before the budget was done");
        let q = &r.dev.counters().queues[1];
        assert!(decided.0 + decided.1 > 0, "{what}: no notification decided");
        assert_eq!(
            (q.interrupts, q.interrupts_suppressed),
            decided,
            "{what}: the budget's used buffer notification came after it returned"
        );
        assert_eq!(r.dev.fault(), None, "{what}");
        match what {
            "reset" => {
                assert_eq!(r.dev.status(), 0);
                assert!(!r.dev.queue(1).unwrap().enabled);
            }
            "pause" => {
                assert!(r.dev.is_paused());
                // Nothing runs while paused: a kick waits for the resume.
                r.queue_tx(&numbered_frames(2));
                r.area.ring(1, 2).unwrap();
                r.dev.take_shared_doorbells();
                assert_eq!(r.dev.queue(1).unwrap().last_used, 8);
                r.dev.resume();
                assert_eq!(r.dev.queue(1).unwrap().last_used, 10);
            }
            _ => assert_eq!(r.dev.queue(1).unwrap().last_used, 8),
        }
    }
}

/// Two linked devices, each transmitting into the other from its own doorbell thread (budgets
/// outside the lock), with 16-frame receive FIFOs: B starts paused, so A's budgets fill B's
/// FIFO and the flow control holds A back until B's drain wakes it; then both run flat out,
/// held back and woken again and again. Neither deadlocks, and every frame arrives, in order,
/// once.
#[test]
fn linked_devices_transmitting_into_each_other_off_the_lock_lose_nothing() {
    const TOTAL: u32 = 3000;
    let (a, b, ends) = linked_ends(1, |_| {});
    let threads: Vec<_> = ends
        .into_iter()
        .map(|mut end| {
            std::thread::spawn(move || {
                let all = numbered_frames(TOTAL);
                let (mut sent, mut got) = (0usize, Vec::new());
                let t0 = Instant::now();
                // Until it has everything, and its device has sent everything (the peer's thread
                // goes on refilling until then).
                while got.len() < TOTAL as usize || end.me.counters().tx_frames < u64::from(TOTAL) {
                    end.assert_not_stuck(t0, &format!("sent {sent}, received {}", got.len()));
                    let refs: Vec<&[u8]> = all[sent..(sent + 32).min(all.len())]
                        .iter()
                        .map(|f| f.as_slice())
                        .collect();
                    sent += end.send(0, &refs);
                    got.extend(end.drv.recv(0).unwrap().iter().map(|f| frame_number(f)));
                    std::thread::yield_now();
                }
                got
            })
        })
        .collect();
    release_when_held_back(&a, &b);
    for (i, end) in threads.into_iter().enumerate() {
        let got = end.join().unwrap();
        assert_eq!(
            got,
            (0..TOTAL).collect::<Vec<_>>(),
            "end {i}: lost or reordered"
        );
    }
    for (name, d) in [("A", &a), ("B", &b)] {
        let c = d.counters();
        assert!(
            c.tx_budgets_off_lock > 0,
            "{name} never ran a budget off the lock: {:?}",
            c.scalars()
        );
        assert_eq!((c.tx_port_drops, c.rx_dropped_backlog), (0, 0), "{name}");
    }
}

/// The same with four queue pairs on each side, under RSS: each end sends four streams, one per
/// TX queue, the doorbell engine runs the four TX queues' budgets off the lock, and the peer's
/// delivery spreads the streams over its four RX queues, holding the lanes it took while it
/// runs (`HeldLanes`). Every stream arrives whole and in order.
#[test]
fn four_pair_linked_devices_off_the_lock_lose_and_reorder_nothing() {
    use bar_registers::virtio::rss::SUPPORTED_HASH_TYPES;
    use device::net::rss::RssConfig;
    use sim_harness::frames::{self, Tracker};
    const PAIRS: u16 = 4;
    const PER_STREAM: u64 = 600;
    let rss = RssConfig {
        hash_types: SUPPORTED_HASH_TYPES,
        table: (0..128).map(|i| i % PAIRS).collect(),
        unclassified: 0,
        key: std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11)),
        key_len: 40,
    };
    let (a, b, ends) = linked_ends(PAIRS, |drv| {
        assert_eq!(drv.set_rss(&rss, PAIRS).unwrap(), 0, "RSS_CONFIG accepted");
    });
    // The streams spread over the RX queues (so the delivery holds several lanes).
    let mut rng = rand::rngs::mock::StepRng::new(1, 7);
    let steered: std::collections::BTreeSet<u16> = (0..PAIRS)
        .map(|s| {
            rss.steer(
                &frames::build(mac(0xA), mac(0xB), s, 0, 64, &mut rng),
                false,
            )
            .pair()
        })
        .collect();
    assert!(
        steered.len() > 1,
        "the streams all steer to one queue: {steered:?}"
    );
    let threads: Vec<_> = ends
        .into_iter()
        .map(|mut end| {
            std::thread::spawn(move || {
                let (src, dst) = (end.mac, end.peer_mac);
                let mut rng = rand::rngs::mock::StepRng::new(3, 11);
                let mut sent = [0u64; PAIRS as usize];
                let mut got = Tracker::default();
                let total = PER_STREAM * u64::from(PAIRS);
                let t0 = Instant::now();
                while got.delivered < total || end.me.counters().tx_frames < total {
                    end.assert_not_stuck(t0, &format!("sent {sent:?}, received {got:?}"));
                    for p in 0..PAIRS {
                        let s = usize::from(p);
                        let n = (PER_STREAM - sent[s]).min(16);
                        let fs: Vec<Vec<u8>> = (0..n)
                            .map(|i| frames::build(src, dst, p, sent[s] + i, 64, &mut rng))
                            .collect();
                        let refs: Vec<&[u8]> = fs.iter().map(|f| f.as_slice()).collect();
                        sent[s] += end.send(p, &refs) as u64;
                        for f in end.drv.recv(p).unwrap() {
                            got.record(&f);
                        }
                    }
                    std::thread::yield_now();
                }
                got
            })
        })
        .collect();
    release_when_held_back(&a, &b);
    for (i, end) in threads.into_iter().enumerate() {
        let mut got = end.join().unwrap();
        got.finish(&(0..PAIRS).map(|s| (s, PER_STREAM)).collect());
        assert!(
            got.clean(),
            "end {i}: lost, reordered or corrupted: {got:?}"
        );
        assert_eq!(got.delivered, PER_STREAM * u64::from(PAIRS), "end {i}");
    }
    // Budgets leave the lock only while no other queue is pending, so with four busy TX
    // queues one device may run every budget under it; between the two, some run outside.
    let off_lock = a.counters().tx_budgets_off_lock + b.counters().tx_budgets_off_lock;
    assert!(off_lock > 0, "no budget ran outside the lock");
    for (name, d) in [("A", &a), ("B", &b)] {
        let c = d.counters();
        assert_eq!((c.tx_port_drops, c.rx_dropped_backlog), (0, 0), "{name}");
        let rx_queues = (0..PAIRS)
            .filter(|&p| c.queues[usize::from(2 * p)].frames > 0)
            .count();
        assert_eq!(rx_queues, steered.len(), "{name}: RX queues that received");
    }
}

/// The MAC of linked device `last` (A: 0xA, B: 0xB).
fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, last]
}

/// One end of two linked devices: its device, the peer, their MACs, its doorbell engine and
/// its driver.
struct LinkEnd {
    me: Arc<Device>,
    peer: Arc<Device>,
    mac: [u8; 6],
    peer_mac: [u8; 6],
    engine: device::doorbell::DoorbellEngine,
    drv: NetDriver,
}

impl LinkEnd {
    /// Reclaims pair `p`'s TX ring, queues what fits of `frames`, publishes them and rings
    /// the TX queue through the notify window (the doorbell engine takes it); returns how many
    /// were queued.
    fn send(&mut self, p: u16, frames: &[&[u8]]) -> usize {
        use sim_harness::driver::net::txq;
        self.drv.reclaim_tx(p).unwrap();
        let n = self.drv.enqueue_tx(p, frames).unwrap();
        if n > 0 {
            self.drv.publish_no_kick(txq(p)).unwrap();
            self.engine.area().ring(txq(p), 2).unwrap();
        }
        n
    }

    /// Fails with both devices' counters once the exchange ran for two minutes.
    fn assert_not_stuck(&self, t0: Instant, progress: &str) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "stuck: {progress}; me {:?}; peer {:?}",
            self.me.counters().scalars(),
            self.peer.counters().scalars()
        );
    }
}

/// Devices A and B with `pairs` queue pairs, 16-frame receive FIFOs and 16-chain budgets,
/// joined by a link, each with its doorbell engine and a started driver (`setup` runs on each
/// driver once it started); B starts paused, so its full FIFO holds A back
/// ([`release_when_held_back`] resumes it).
fn linked_ends(
    pairs: u16,
    setup: impl Fn(&mut NetDriver),
) -> (Arc<Device>, Arc<Device>, Vec<LinkEnd>) {
    let dev = |last: u8| {
        let mut cfg = DeviceConfig::with_queue_pairs(pairs);
        cfg.layout.mac = mac(last);
        cfg.rx_backlog = 16;
        cfg.service_budget = 16;
        Device::new(cfg).unwrap()
    };
    let (a, b) = (dev(0xA), dev(0xB));
    device::LinkPort::join(&a, &b);
    let ends = [
        (a.clone(), b.clone(), 0xA, 0xB),
        (b.clone(), a.clone(), 0xB, 0xA),
    ]
    .into_iter()
    .map(|(me, peer, last, peer_last)| {
        let engine =
            device::doorbell::start_shared_doorbells(&me, device::doorbell::PollPolicy::default())
                .unwrap();
        let opts = DriverOptions {
            queue_pairs: pairs,
            ..DriverOptions::default()
        };
        let mut drv = sim_harness::driver::in_process(&me, opts).unwrap();
        drv.start().unwrap();
        setup(&mut drv);
        LinkEnd {
            me,
            peer,
            mac: mac(last),
            peer_mac: mac(peer_last),
            engine,
            drv,
        }
    })
    .collect();
    b.pause();
    (a, b, ends)
}

/// Waits until B's full FIFO held A back (B's inbox full), then resumes B.
fn release_when_held_back(a: &Device, b: &Device) {
    let t0 = Instant::now();
    while a.counters().tx_port_busy == 0 {
        assert!(t0.elapsed() < PASSES, "B's full FIFO never held A back");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(b.inbox().len(), 16);
    b.resume();
}

/// A port that answers "full" once, holding the budget inside that answer until the test lets
/// it go, and otherwise takes everything; it keeps the waker the device gave it.
#[derive(Default)]
struct FullOncePort {
    /// The next `ready` waits at the gate, then says full.
    armed: AtomicBool,
    in_ready: AtomicBool,
    gate: Mutex<bool>,
    cv: Condvar,
    waker: Mutex<Option<device::ReadyWaker>>,
    sent: AtomicU64,
}

impl Port for FullOncePort {
    fn transmit(&self, _frame: &[u8]) -> bool {
        self.sent.fetch_add(1, Ordering::SeqCst);
        true
    }
    fn ready(&self) -> bool {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return true;
        }
        self.in_ready.store(true, Ordering::SeqCst);
        let mut open = self.gate.lock();
        while !*open {
            self.cv.wait(&mut open);
        }
        false
    }
    fn set_ready_waker(&self, waker: Option<device::ReadyWaker>) {
        *self.waker.lock() = waker;
    }
    fn describe(&self) -> String {
        "full-once".into()
    }
}

/// The port says full, and has room again (its waker runs, on another thread) before the
/// budget that heard "full" is back under the lock: the wake must not be spent on a device
/// that does not know yet which queue waits for it. Under the lock the waker finds the lock
/// taken and leaves the wake to the holder; outside it, it finds the lock free, so a wake that
/// comes while a budget is out is left to the budget's thread too. Without that the queue
/// waited for a doorbell that never came (the driver had filled its ring).
#[test]
fn a_port_wake_while_a_budget_is_outside_the_lock_is_not_lost() {
    let mut r = Rig::with(DeviceConfig::with_queue_pairs(1), |_| {
        FullOncePort::default()
    });
    r.queue_tx(&numbered_frames(8));
    let (dev, port) = (r.dev.clone(), r.port.clone());
    port.armed.store(true, Ordering::SeqCst);
    let kicker = r.shared_kick();
    let t0 = Instant::now();
    while !port.in_ready.load(Ordering::SeqCst) {
        assert!(t0.elapsed() < PASSES, "no budget asked the port");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Room again, while the budget still holds its "full".
    let wake = port.waker.lock().clone().expect("the device set a waker");
    wake();
    *port.gate.lock() = true;
    port.cv.notify_all();
    assert_eq!(kicker.join().unwrap(), 1);
    let c = dev.counters();
    assert_eq!(
        (port.sent.load(Ordering::SeqCst), c.tx_port_busy),
        (8, 1),
        "the queue waits for a wake that was spent"
    );
    assert!(c.tx_budgets_off_lock >= 1);
}

/// A port that rings queue 0's doorbell in the notify window when its 20th frame arrives and
/// notes, at its 40th, whether that kick was taken yet.
struct KickingPort {
    area: Arc<NotifyArea>,
    sent: AtomicU64,
    taken_by_40: Mutex<Option<bool>>,
}

impl Port for KickingPort {
    fn transmit(&self, _frame: &[u8]) -> bool {
        match self.sent.fetch_add(1, Ordering::SeqCst) + 1 {
            20 => self.area.ring(0, 2).unwrap(),
            40 => {
                *self.taken_by_40.lock() = Some(self.area.slot(0) == Some(device::doorbell::IDLE))
            }
            _ => {}
        }
        true
    }
    fn describe(&self) -> String {
        "kicking".into()
    }
}

/// An RX refill kick that comes during a long TX burst run off the lock is taken after the
/// budget under way, not after the burst (budgets of 16 chains: the kick comes in the second
/// budget and is taken before the third one's frames).
#[test]
fn a_kick_that_comes_during_a_tx_burst_is_taken_between_its_budgets() {
    let cfg = DeviceConfig {
        service_budget: 16,
        batch: 16,
        ..DeviceConfig::with_queue_pairs(1)
    };
    let mut r = Rig::with(cfg, |area| KickingPort {
        area: area.clone(),
        sent: AtomicU64::new(0),
        taken_by_40: Mutex::new(None),
    });
    r.queue_tx(&numbered_frames(64));
    let (dev, port) = (r.dev.clone(), r.port.clone());
    let before = dev.counters().queues[0].doorbells;
    r.area.ring(1, 2).unwrap();
    assert_eq!(dev.take_shared_doorbells(), 2, "both kicks, in one call");
    assert_eq!(port.sent.load(Ordering::SeqCst), 64);
    assert_eq!(
        *port.taken_by_40.lock(),
        Some(true),
        "the RX kick waited for the whole TX burst"
    );
    let c = dev.counters();
    assert_eq!(c.queues[0].doorbells, before + 1);
    assert_eq!(c.shared_doorbells, 2);
    assert!(c.tx_budgets_off_lock >= 4);
}

/// A port with a bug: its transmit panics on frame number `at` (counting from 1) while armed,
/// and keeps the frames it took.
struct PanickingPort {
    at: u64,
    armed: AtomicBool,
    seen: AtomicU64,
    frames: Mutex<Vec<Vec<u8>>>,
}

impl Port for PanickingPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.armed.load(Ordering::SeqCst) && n == self.at {
            panic!("port bug at frame {n}");
        }
        self.frames.lock().push(frame.to_vec());
        true
    }
    fn describe(&self) -> String {
        "panicking".into()
    }
}

/// A panic in the datapath (here the port's, inside a TX budget) is a device bug, not a reason
/// to hang or lose the server: the device enters DEVICE_NEEDS_RESET with an `internal_error`
/// fault that carries the panic's message, the thread that ran the budget goes on, every later
/// register access returns, and the driver's reset brings the device back. `shared`: the
/// budget runs outside the device lock (rung through the notify window); otherwise a trapped
/// doorbell runs it under the lock.
fn a_panic_in_a_tx_budget_fails_the_device_and_the_server_goes_on(shared: bool) {
    let mut r = Rig::with(DeviceConfig::with_queue_pairs(1), |_| PanickingPort {
        at: 3,
        armed: AtomicBool::new(true),
        seen: AtomicU64::new(0),
        frames: Mutex::new(Vec::new()),
    });
    let fs = numbered_frames(8);
    r.queue_tx(&fs);
    let kicker = if shared {
        r.shared_kick()
    } else {
        r.trapped_kick()
    };
    let (joined, _) = within(PASSES, move || kicker.join().is_ok());
    assert_eq!(joined, Some(true), "the doorbell's thread panicked or hung");
    assert_eq!(
        r.dev.counters().tx_budgets_off_lock,
        u64::from(shared),
        "the budget ran where the test meant it to"
    );

    let fault = r.dev.fault().expect("no fault after the panic");
    assert_eq!(fault.kind(), "internal_error");
    let context = if shared {
        "a TX budget outside the device lock"
    } else {
        "the datapath under the device lock"
    };
    assert_eq!(
        fault.to_string(),
        format!("internal device error in {context}: port bug at frame 3")
    );
    let c = r.dev.counters();
    assert_eq!((c.fault("internal_error"), c.needs_reset), (1, 1));
    assert_eq!(
        *r.port.frames.lock(),
        fs[..2],
        "the frames before the panic"
    );

    // Every register access after it returns (a budget counted as still running outside the
    // lock would hold the status write forever) and reads DEVICE_NEEDS_RESET.
    let (dev, off) = (r.dev.clone(), r.status_offset());
    let (status, _) = within(PASSES, move || {
        let mut st = [0u8];
        dev.region_read(0, off, &mut st).unwrap();
        dev.region_write(0, off, &[st[0]]).unwrap();
        st[0]
    });
    let status = status.expect("a register access after the panic hung");
    assert_ne!(status & device_status::DEVICE_NEEDS_RESET, 0);

    // The driver's reset brings it back, and the port (its bug gone) carries frames again,
    // off the lock as well.
    r.port.armed.store(false, Ordering::SeqCst);
    r.port.frames.lock().clear();
    r.drv.start().unwrap();
    assert_eq!(r.dev.fault(), None);
    let again = numbered_frames(4);
    r.queue_tx(&again);
    assert_eq!(r.shared_kick().join().unwrap(), 1);
    assert_eq!(*r.port.frames.lock(), again);
    assert_eq!(r.dev.counters().tx_budgets_off_lock, u64::from(shared) + 1);
}

#[test]
fn a_panic_in_a_tx_budget_outside_the_lock_fails_the_device_and_the_server_goes_on() {
    a_panic_in_a_tx_budget_fails_the_device_and_the_server_goes_on(true);
}

#[test]
fn a_panic_in_a_tx_budget_under_the_lock_fails_the_device_and_the_server_goes_on() {
    a_panic_in_a_tx_budget_fails_the_device_and_the_server_goes_on(false);
}
