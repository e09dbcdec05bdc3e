//! TX flow control (`Port::ready`): a port that is full makes the device stop taking TX
//! chains at a chain boundary. The chains left stay in the ring (the ring state counts only
//! what was taken), and the port's waker makes the device go on where it stopped, in order,
//! losing nothing. A pause or a reset in between keeps its own meaning: no DMA while paused
//! (the held chains go at resume), nothing after a reset.

use device::{Device, DeviceConfig, Port, ReadyWaker};
use parking_lot::Mutex;
use sim_harness::driver::{DriverOptions, NetDriver};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
        self.frames.lock().iter().map(|f| seq(f)).collect()
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

fn seq(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[14..18].try_into().unwrap())
}

fn frames(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut f = vec![0u8; 60];
            f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 8]);
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            f[14..18].copy_from_slice(&i.to_be_bytes());
            f
        })
        .collect()
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
    let fs = frames(n);
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

/// Two devices joined in process ([`device::LinkPort`]): B is paused, so its receive FIFO (64
/// frames here) fills and A stops taking chains instead of pushing into a full FIFO; once B
/// resumes and its driver takes frames, B's draining wakes A, and all of A's frames arrive, in
/// order, none dropped.
#[test]
fn a_linked_peer_with_a_full_fifo_holds_the_sender_back_without_loss() {
    use sim_harness::frames::{self, Tracker};
    let a = Device::new(DeviceConfig::default()).unwrap();
    let mut cfg_b = DeviceConfig::default();
    cfg_b.layout.mac = [0x52, 0x54, 0, 0, 0, 0xB];
    cfg_b.rx_backlog = 64;
    let b = Device::new(cfg_b).unwrap();
    device::LinkPort::join(&a, &b);
    let mut da = sim_harness::driver::in_process(&a, DriverOptions::default()).unwrap();
    let mut db = sim_harness::driver::in_process(&b, DriverOptions::default()).unwrap();
    da.start().unwrap();
    db.start().unwrap();
    b.pause();
    let (ma, mb) = (da.mac().unwrap(), db.mac().unwrap());
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(5);
    const TOTAL: u64 = 1000;
    let all: Vec<Vec<u8>> = (0..TOTAL)
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
    let mut sent = 0usize;
    while send(&mut da, &mut sent) > 0 {}
    let held = a.queue(1).unwrap();
    assert_eq!(
        usize::from(held.last_avail),
        64,
        "A takes exactly what B's FIFO holds"
    );
    assert!(sent > 64 && sent < all.len(), "sent {sent}");
    assert_eq!(b.inbox().len(), 64);
    assert!(a.counters().tx_port_busy > 0);
    b.resume();
    let mut tracker = Tracker::default();
    for _ in 0..10_000 {
        if tracker.delivered == TOTAL {
            break;
        }
        send(&mut da, &mut sent);
        for f in db.recv(0).unwrap() {
            tracker.record(&f);
        }
    }
    tracker.finish(&std::collections::HashMap::from([(0, TOTAL)]));
    assert!(
        tracker.clean() && tracker.delivered == TOTAL,
        "{tracker:?}\nA {:?}\nB {:?}",
        a.counters().scalars(),
        b.counters().scalars()
    );
    let (ca, cb) = (a.counters(), b.counters());
    assert_eq!(
        (ca.tx_frames, ca.tx_port_drops, cb.rx_dropped_backlog),
        (TOTAL, 0, 0)
    );
}
