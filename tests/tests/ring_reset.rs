//! One queue reset alone under traffic (VIRTIO_F_RING_RESET, virtio 1.2 2.6.1), driven by the
//! driver model the way Linux's `ethtool -G` does it, on both ring layouts: in-flight work of
//! the reset queue is not executed, the other pair goes on, frames waiting in the receive FIFO
//! for the reset RX queue arrive after its re-enable, and the re-enabled queues (new size, new
//! rings) carry every frame byte-exact. Also across migration's save/restore with a queue
//! reset at snapshot time.

use bar_registers::virtio::{bits, common, default_driver_features};
use device::{Device, DeviceConfig, InterruptRecorder, RegionAccess};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::net::{rxq, txq};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

const LAYOUTS: [bool; 2] = [false, true];

/// Frames sent and not yet received, per stream (= TX pair), compared byte for byte.
struct Flow {
    mac: [u8; 6],
    rng: SmallRng,
    expect: HashMap<u16, VecDeque<Vec<u8>>>,
    seq: HashMap<u16, u64>,
}

impl Flow {
    fn new(mac: [u8; 6], seed: u64) -> Self {
        Flow {
            mac,
            rng: SmallRng::seed_from_u64(seed),
            expect: HashMap::new(),
            seq: HashMap::new(),
        }
    }

    fn send(&mut self, d: &mut NetDriver, pair: u16, n: usize) {
        for _ in 0..n {
            let seq = self.seq.entry(pair).or_insert(0);
            let len = self.rng.gen_range(frames::MIN_FRAME..=1514);
            let f = frames::build(self.mac, self.mac, pair, *seq, len, &mut self.rng);
            *seq += 1;
            assert_eq!(
                d.send(pair, &[&f]).unwrap(),
                1,
                "TX ring of pair {pair} full"
            );
            self.expect.entry(pair).or_default().push_back(f);
        }
    }

    /// Receives on `rx` until nothing more is expected; every frame must be the next one of
    /// its stream.
    fn drain(&mut self, d: &mut NetDriver, rx: &[u16], what: &str) {
        for _ in 0..100 {
            for &p in rx {
                for f in d.recv(p).unwrap() {
                    let s = frames::check(&f).expect("an intact frame").stream;
                    let want = self.expect.get_mut(&s).and_then(VecDeque::pop_front);
                    assert_eq!(Some(f), want, "{what}: stream {s}");
                }
            }
            if self.pending() == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("{what}: {} frames never arrived", self.pending());
    }

    fn pending(&self) -> usize {
        self.expect.values().map(VecDeque::len).sum()
    }
}

fn opts(packed: bool) -> DriverOptions {
    DriverOptions {
        queue_pairs: 2,
        features: default_driver_features() | 1 << bits::RING_RESET,
        ..DriverOptions::default()
    }
    .with_packed(packed)
}

fn loopback(packed: bool) -> (Arc<Device>, NetDriver) {
    let dev = Device::new(DeviceConfig::with_queue_pairs(2)).unwrap();
    dev.set_loopback();
    let mut d = sim_harness::driver::in_process(&dev, opts(packed)).unwrap();
    d.start().unwrap();
    assert_ne!(d.features & (1 << bits::RING_RESET), 0);
    (dev, d)
}

fn fresh(packed: bool) -> (u16, u16) {
    if packed {
        (0x8000, 0x8000)
    } else {
        (0, 0)
    }
}

#[test]
fn a_queue_reset_under_traffic_loses_nothing_of_the_other_queues() {
    for packed in LAYOUTS {
        let what = if packed { "packed" } else { "split" };
        let (dev, mut d) = loopback(packed);
        let mut flow = Flow::new(d.mac().unwrap(), 13);
        flow.send(&mut d, 0, 16);
        flow.send(&mut d, 1, 16);
        flow.drain(&mut d, &[0, 1], what);

        // TX 0 with buffers made available but not kicked: the reset drops them unexecuted.
        let tx_frames = dev.counters().queues[usize::from(txq(0))].frames;
        let mut rng = SmallRng::seed_from_u64(1);
        let pending: Vec<Vec<u8>> = (0..4)
            .map(|i| frames::build(flow.mac, flow.mac, 7, i, 200, &mut rng))
            .collect();
        let refs: Vec<&[u8]> = pending.iter().map(Vec::as_slice).collect();
        assert_eq!(d.enqueue_tx(0, &refs).unwrap(), 4);
        d.publish_no_kick(txq(0)).unwrap();
        d.reset_queue(txq(0)).unwrap();
        let q = dev.queue(txq(0)).unwrap();
        assert!(!q.enabled, "{what}");
        assert_eq!((q.last_avail, q.last_used), fresh(packed), "{what}");
        assert_eq!(
            dev.counters().queues[usize::from(txq(0))].frames,
            tx_frames,
            "{what}: nothing of the reset queue executed"
        );

        // Pair 1 goes on.
        flow.send(&mut d, 1, 24);
        flow.drain(&mut d, &[1], what);

        // RX 0 reset too; TX 0 back first with a smaller ring: the frames its flow steers to
        // RX 0 go to RX 1 instead (docs/rss.md), none waits or is lost.
        d.reset_queue(rxq(0)).unwrap();
        assert_eq!(dev.inbox().len(), 0);
        let size = if packed { 100 } else { 64 };
        d.enable_queue_after_reset(txq(0), size).unwrap();
        flow.send(&mut d, 0, 8);
        flow.drain(&mut d, &[1], what);
        let c = dev.counters();
        assert_eq!(
            (c.rx_resteered_queue_reset, c.rx_dropped_queue_reset),
            (8, 0),
            "{what}"
        );
        d.enable_queue_after_reset(rxq(0), size).unwrap();
        flow.send(&mut d, 0, 8);
        flow.drain(&mut d, &[0, 1], what);
        assert_eq!(
            dev.counters().rx_resteered_queue_reset,
            8,
            "{what}: RX 0 back"
        );
        assert_eq!(dev.queue(rxq(0)).unwrap().size, size);

        // Both pairs, past the new rings' size.
        for _ in 0..4 {
            flow.send(&mut d, 0, 40);
            flow.send(&mut d, 1, 40);
            flow.drain(&mut d, &[0, 1], what);
        }
        let c = dev.counters();
        assert_eq!((c.queue_resets, c.queue_reset_refused), (2, 0), "{what}");
        assert_eq!(dev.fault(), None, "{what}");
        d.check_alive().unwrap();
    }
}

/// The control queue can be reset and re-enabled like the others: a control command works
/// on the new ring.
#[test]
fn the_control_queue_resets_too() {
    for packed in LAYOUTS {
        let (dev, mut d) = loopback(packed);
        let ctrl = d.num_queues() - 1;
        d.reset_queue(ctrl).unwrap();
        assert!(!dev.queue(ctrl).unwrap().enabled);
        d.enable_queue_after_reset(ctrl, 32).unwrap();
        // VIRTIO_NET_CTRL_RX_PROMISC off, then on: acked on the new ring.
        d.ctrl(0, 0, &[0]).unwrap();
        d.ctrl(0, 0, &[1]).unwrap();
        // Split: used idx 2; packed: 4 slots (two descriptors a command), wrap counter 1.
        let want = if packed { 0x8000 | 4 } else { 2 };
        assert_eq!(dev.queue(ctrl).unwrap().last_used, want);
    }
}

fn write16(dev: &Device, reg: u64, v: u16) {
    let off = dev.layout().common.offset + reg;
    dev.region_write(0, off, &v.to_le_bytes()).unwrap();
}

fn read16(dev: &Device, reg: u64) -> u16 {
    let off = dev.layout().common.offset + reg;
    let mut b = [0u8; 2];
    dev.region_read(0, off, &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// A queue reset before the snapshot (done) and one in progress at it (queue_reset still
/// reading 1) go to the destination as they were; the driver finishes there, re-enables both
/// with new rings, and traffic of both pairs goes on byte-exact.
#[test]
fn reset_queues_round_trip_through_save_and_restore() {
    for packed in LAYOUTS {
        let what = if packed { "packed" } else { "split" };
        let (a, mut d) = loopback(packed);
        let mut flow = Flow::new(d.mac().unwrap(), 17);
        flow.send(&mut d, 0, 16);
        flow.send(&mut d, 1, 16);
        flow.drain(&mut d, &[0, 1], what);
        d.reset_queue(txq(0)).unwrap();
        // RX 0: the reset written, one of its two reads of 1 taken.
        write16(&a, common::QUEUE_SELECT, rxq(0));
        write16(&a, common::QUEUE_RESET, 1);
        assert_eq!(read16(&a, common::QUEUE_RESET), 1);
        a.pause();
        let state = a.save_state();

        let b = Device::new(DeviceConfig::with_queue_pairs(2)).unwrap();
        b.set_loopback();
        let irq = Arc::new(InterruptRecorder::new(b.layout().msix_vectors));
        b.set_interrupt_sink(irq.clone());
        let mem = d.mem.clone();
        d.migrate_to(b.clone(), irq, mem).unwrap();
        b.restore_state(&state).unwrap();
        b.resume();
        assert_eq!(b.status(), a.status(), "{what}");
        write16(&b, common::QUEUE_SELECT, rxq(0));
        assert_eq!(
            read16(&b, common::QUEUE_RESET),
            1,
            "{what}: still resetting"
        );
        assert_eq!(read16(&b, common::QUEUE_RESET), 0, "{what}: done");
        assert_eq!(read16(&b, common::QUEUE_ENABLE), 0, "{what}");
        for q in [rxq(0), txq(0)] {
            let s = b.queue(q).unwrap();
            assert!(!s.enabled, "{what}: queue {q}");
            assert_eq!(
                (s.last_avail, s.last_used),
                fresh(packed),
                "{what}: queue {q}"
            );
        }
        assert!(b.queue(rxq(1)).unwrap().enabled && b.queue(txq(1)).unwrap().enabled);
        // Pair 1 resumed where it stopped on the source.
        flow.send(&mut d, 1, 16);
        flow.drain(&mut d, &[1], what);
        // The driver's side of the RX 0 reset (it takes its buffers back), then both queues
        // re-enabled with new rings.
        d.reset_queue(rxq(0)).unwrap();
        d.enable_queue_after_reset(rxq(0), 32).unwrap();
        d.enable_queue_after_reset(txq(0), 32).unwrap();
        for _ in 0..3 {
            flow.send(&mut d, 0, 24);
            flow.send(&mut d, 1, 24);
            flow.drain(&mut d, &[0, 1], what);
        }
        assert_eq!(b.fault(), None, "{what}");
    }
}
