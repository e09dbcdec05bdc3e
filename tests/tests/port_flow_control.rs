//! TX flow control (`Port::ready`): a port that is full makes the device stop taking TX
//! chains at a chain boundary. The chains left stay in the ring (the ring state counts only
//! what was taken), and the port's waker makes the device go on where it stopped, in order,
//! losing nothing. A pause or a reset in between keeps its own meaning: no DMA while paused
//! (the held chains go at resume), nothing after a reset.

mod support;

use device::{Device, DeviceConfig, Port, ReadyWaker};
use parking_lot::Mutex;
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames::{self, Tracker};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{frame_number, numbered_frames};

/// A port with room for a set number of frames; `open` adds room and calls the waker, as a
/// socket port's writer thread does when its outbox drains.
#[derive(Default)]
struct GatePort {
    room: AtomicUsize,
    frames: Mutex<Vec<Vec<u8>>>,
    waker: Mutex<Option<ReadyWaker>>,
}

impl GatePort {
    fn open(&self, n: usize) {
        self.room.fetch_add(n, Ordering::SeqCst);
        let w = self.waker.lock().clone();
        if let Some(w) = w {
            w();
        }
    }
    fn sent(&self) -> Vec<u32> {
        self.frames.lock().iter().map(|f| frame_number(f)).collect()
    }
}

impl Port for GatePort {
    fn transmit(&self, frame: &[u8]) -> bool {
        // A port that said it was ready takes the frame; one that said not ready is never asked.
        let left = self.room.load(Ordering::SeqCst);
        assert!(left > 0, "transmit while the port said it was full");
        self.room.store(left - 1, Ordering::SeqCst);
        self.frames.lock().push(frame.to_vec());
        true
    }
    fn ready(&self) -> bool {
        self.room.load(Ordering::SeqCst) > 0
    }
    fn set_ready_waker(&self, waker: Option<ReadyWaker>) {
        *self.waker.lock() = waker;
    }
    fn describe(&self) -> String {
        "gate".into()
    }
}

/// A started device on a gate port with room for `room` frames, and `n` frames sent by its
/// driver (one doorbell).
fn rig(room: usize, n: u32) -> (Arc<Device>, NetDriver, Arc<GatePort>) {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let port = Arc::new(GatePort::default());
    port.room.store(room, Ordering::SeqCst);
    dev.set_port(port.clone());
    let mut drv = sim_harness::driver::in_process(&dev, DriverOptions::default()).unwrap();
    drv.start().unwrap();
    let fs = numbered_frames(n);
    let refs: Vec<&[u8]> = fs.iter().map(|f| f.as_slice()).collect();
    assert_eq!(drv.send(0, &refs).unwrap(), n as usize);
    (dev, drv, port)
}

#[test]
fn held_chains_stay_in_the_ring_and_go_out_in_order_when_the_port_has_room() {
    let (dev, _drv, port) = rig(10, 40);
    assert_eq!(port.sent(), (0..10).collect::<Vec<_>>());
    let q = dev.queue(1).unwrap();
    assert_eq!(
        (q.last_avail, q.last_used),
        (10, 10),
        "only the chains the port took are taken and used"
    );
    let c = dev.counters();
    assert_eq!((c.tx_frames, c.tx_port_busy, c.tx_port_drops), (10, 1, 0));
    // A doorbell while the port is full changes nothing.
    dev.doorbell(1);
    assert_eq!(port.sent().len(), 10);
    assert_eq!(dev.counters().tx_port_busy, 2);
    // Room for 15 more: the device goes on from chain 10 and stops again at 25.
    port.open(15);
    assert_eq!(port.sent(), (0..25).collect::<Vec<_>>());
    port.open(100);
    assert_eq!(port.sent(), (0..40).collect::<Vec<_>>());
    let q = dev.queue(1).unwrap();
    assert_eq!((q.last_avail, q.last_used), (40, 40));
    assert_eq!(dev.counters().tx_frames, 40);
}

#[test]
fn a_paused_device_sends_its_held_chains_at_resume_not_when_the_port_wakes_it() {
    let (dev, _drv, port) = rig(5, 20);
    dev.pause();
    let q = dev.queue(1).unwrap();
    assert_eq!(
        (q.last_avail, q.last_used),
        (5, 5),
        "the ring state a migration reads counts only the chains taken"
    );
    port.open(100);
    assert_eq!(port.sent().len(), 5, "no DMA while paused");
    dev.resume();
    assert_eq!(port.sent(), (0..20).collect::<Vec<_>>());
}

#[test]
fn a_reset_device_sends_nothing_when_the_port_wakes_it() {
    let (dev, _drv, port) = rig(3, 10);
    dev.reset();
    port.open(100);
    assert_eq!(port.sent().len(), 3);
    assert_eq!(dev.counters().tx_frames, 3);
}

/// A device on each end of a link, B's receive FIFO 64 frames: B is paused (as for a migration,
/// it takes nothing from its FIFO), so the FIFO fills and the link backs up until A stops taking
/// TX chains, which stay in A's ring (A's driver finds it full). `held` checks that state. Then
/// B resumes: everything A's driver sent arrives at B, in order, and nothing was dropped
/// anywhere (A's `tx_port_drops` and `tx_port_lost`, B's `rx_dropped_backlog`).
fn backs_up_without_loss(a: &Arc<Device>, b: &Arc<Device>, total: u64, held: impl Fn()) {
    let mut da = sim_harness::driver::in_process(a, DriverOptions::default()).unwrap();
    let mut db = sim_harness::driver::in_process(b, DriverOptions::default()).unwrap();
    da.start().unwrap();
    db.start().unwrap();
    b.pause();
    let (ma, mb) = (da.mac().unwrap(), db.mac().unwrap());
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(total);
    let all: Vec<Vec<u8>> = (0..total)
        .map(|seq| frames::build(ma, mb, 0, seq, 60 + (seq as usize * 53) % 1400, &mut rng))
        .collect();
    // Sends the next frames A's ring takes; returns how many.
    let send = |da: &mut NetDriver, sent: &mut usize| {
        let refs: Vec<&[u8]> = all[*sent..(*sent + 32).min(all.len())]
            .iter()
            .map(|f| f.as_slice())
            .collect();
        let n = da.send(0, &refs).unwrap();
        *sent += n;
        n
    };
    // Until A's device holds chains back and its ring is full (the driver adds nothing).
    let mut sent = 0usize;
    let t0 = Instant::now();
    while send(&mut da, &mut sent) > 0 || a.counters().tx_port_busy == 0 {
        assert!(
            sent < all.len() && t0.elapsed() < Duration::from_secs(20),
            "A's device never held chains back: sent {sent}, A {:?}, B's FIFO {}",
            a.counters().scalars(),
            b.inbox().len()
        );
        std::thread::yield_now();
    }
    assert!(b.inbox().len() <= 64, "B's FIFO over capacity");
    assert!(
        usize::from(a.queue(1).unwrap().last_avail) < sent,
        "A took every chain although its port was full"
    );
    held();
    b.resume();
    let mut tracker = Tracker::default();
    let t0 = Instant::now();
    while tracker.delivered < total && t0.elapsed() < Duration::from_secs(30) {
        if sent < all.len() {
            send(&mut da, &mut sent);
        }
        for f in db.recv(0).unwrap() {
            tracker.record(&f);
        }
        std::thread::yield_now();
    }
    tracker.finish(&HashMap::from([(0, total)]));
    let (ca, cb) = (a.counters(), b.counters());
    assert!(
        tracker.clean() && tracker.delivered == total,
        "{tracker:?}\nA {:?}\nB {:?}",
        ca.scalars(),
        cb.scalars()
    );
    assert_eq!(
        (ca.tx_port_drops, ca.tx_port_lost, cb.rx_dropped_backlog),
        (0, 0, 0),
        "frames dropped on the way"
    );
    assert_eq!(ca.tx_frames, total);
}

/// Two devices whose receive FIFO holds 64 frames.
fn two_devices() -> (Arc<Device>, Arc<Device>) {
    let dev = |last: u8| {
        let mut cfg = DeviceConfig::default();
        cfg.layout.mac = [0x52, 0x54, 0, 0, 0, last];
        cfg.rx_backlog = 64;
        Device::new(cfg).unwrap()
    };
    (dev(0xA), dev(0xB))
}

/// In process ([`device::LinkPort`]): B's draining wakes A (the FIFO's room waker); A takes
/// exactly what B's FIFO holds.
#[test]
fn a_linked_peer_with_a_full_fifo_holds_the_sender_back_without_loss() {
    let (a, b) = two_devices();
    device::LinkPort::join(&a, &b);
    backs_up_without_loss(&a, &b, 1000, || {
        assert_eq!(a.queue(1).unwrap().last_avail, 64);
        assert_eq!(b.inbox().len(), 64);
    });
}

/// Over the unix link (`--port unix:`, sim-harness/src/ports/unix.rs): B's reader stops reading,
/// the socket backs up, A's outbox fills, A stops; B's reader goes on when B drained, and the
/// outbox's writer wakes A.
#[test]
fn the_unix_link_backs_up_to_the_sender_instead_of_dropping() {
    use sim_harness::ports::{self, PortSpec};
    let dir = std::env::temp_dir().join(format!("vdpa-flow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("link");
    let (a, b) = two_devices();
    let pa = ports::attach(&PortSpec::Unix(link.clone()), &a).unwrap();
    let pb = ports::attach(&PortSpec::Unix(link.clone()), &b).unwrap();
    backs_up_without_loss(&a, &b, 3000, || {
        // B's FIFO is full and B paused, so its reader must come to wait for room; on a loaded
        // machine it may still be on its way there when A's outbox is already full.
        let t0 = Instant::now();
        while b.counters().rx_port_waits == 0 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            b.counters().rx_port_waits > 0,
            "B's reader never waited for room (10 s)"
        );
    });
    drop((pa, pb));
    let _ = std::fs::remove_dir_all(dir);
}
