//! Traffic through the model: loopback, multiqueue, linked devices, notification suppression,
//! stop/start resume. Every frame's bytes are compared with what was sent. Every test runs on
//! both ring layouts: split (virtio 1.2 2.7) and packed (2.8, VIRTIO_F_RING_PACKED).

use bar_registers::virtio::{bits, default_driver_features};
use device::{Device, DeviceConfig, LinkPort};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::net::{rxq, txq};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames::{self, Tracker};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

const MTU_FRAME: usize = 1514;
/// Both ring layouts: split, then packed.
const LAYOUTS: [bool; 2] = [false, true];

fn layout_name(packed: bool) -> &'static str {
    if packed {
        "packed"
    } else {
        "split"
    }
}

fn loopback(pairs: u16, opts: DriverOptions) -> (Arc<Device>, NetDriver) {
    let dev = Device::new(DeviceConfig::with_queue_pairs(pairs)).unwrap();
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            queue_pairs: pairs,
            ..opts
        },
    )
    .unwrap();
    drv.start().unwrap();
    (dev, drv)
}

/// Sends `count` random-size frames round-robin over all pairs, compares every received frame
/// byte for byte with the one sent (per pair, in order).
fn exact_loopback(
    pairs: u16,
    count: usize,
    opts: DriverOptions,
    seed: u64,
) -> (Arc<Device>, NetDriver) {
    let (dev, mut drv) = loopback(pairs, opts);
    let mac = drv.mac().unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut expect: Vec<VecDeque<Vec<u8>>> = vec![VecDeque::new(); pairs.into()];
    let mut received = 0usize;
    let mut sent = 0usize;
    while sent < count {
        for p in 0..pairs {
            let n = rng.gen_range(1..=48).min(count - sent);
            let batch: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    frames::build(
                        mac,
                        mac,
                        p,
                        (sent + i) as u64,
                        rng.gen_range(frames::MIN_FRAME..=MTU_FRAME),
                        &mut rng,
                    )
                })
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            assert_eq!(drv.send(p, &refs).unwrap(), n, "TX ring full");
            expect[usize::from(p)].extend(batch);
            sent += n;
            for f in drv.recv(p).unwrap() {
                let want = expect[usize::from(p)]
                    .pop_front()
                    .expect("a frame nobody sent");
                assert_eq!(f, want, "frame {received} on pair {p} differs");
                received += 1;
            }
            if sent == count {
                break;
            }
        }
    }
    for p in 0..pairs {
        for f in drv.recv(p).unwrap() {
            assert_eq!(Some(f), expect[usize::from(p)].pop_front());
            received += 1;
        }
    }
    assert_eq!(received, count, "every frame comes back exactly once");
    assert!(expect.iter().all(VecDeque::is_empty));
    drv.check_alive().unwrap();
    (dev, drv)
}

#[test]
fn ten_thousand_random_frames_loopback_exact() {
    for packed in LAYOUTS {
        let (dev, drv) = exact_loopback(1, 10_000, DriverOptions::default().with_packed(packed), 1);
        assert_eq!(drv.is_packed(), packed);
        assert_eq!(
            dev.negotiated_features() & (1 << bits::RING_PACKED) != 0,
            packed
        );
        let c = dev.counters();
        assert_eq!(c.tx_frames, 10_000, "{}", layout_name(packed));
        assert_eq!(c.rx_frames, 10_000);
        assert_eq!(c.tx_bytes, c.rx_bytes);
        assert_eq!(dev.iommu_stats().faults(), 0);
    }
}

#[test]
fn mergeable_rx_buffers_split_frames() {
    for packed in LAYOUTS {
        // 512-byte RX buffers: a 1514-byte frame + 12-byte header spans 3 buffers (num_buffers = 3).
        let (dev, _drv) = exact_loopback(
            1,
            2_000,
            DriverOptions {
                rx_buf_size: 512,
                ..Default::default()
            }
            .with_packed(packed),
            2,
        );
        let c = dev.counters();
        assert!(
            c.queues[0].chains > c.queues[0].frames,
            "{}: frames spanned several chains: {:?}",
            layout_name(packed),
            c.queues[0]
        );
    }
}

/// `recv_count` (the benches' testpmd-rxonly receive) counts frames, not buffers: frames
/// spanning several mergeable buffers count once, and every buffer goes back to the ring, so
/// traffic keeps flowing round after round.
#[test]
fn recv_count_counts_frames_and_reposts_every_buffer() {
    for packed in LAYOUTS {
        let (dev, mut drv) = loopback(
            1,
            DriverOptions {
                rx_buf_size: 512,
                ..Default::default()
            }
            .with_packed(packed),
        );
        let mac = drv.mac().unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut build = |size| -> Vec<Vec<u8>> {
            (0..20)
                .map(|i| frames::build(mac, mac, i, 0, size, &mut rng))
                .collect()
        };
        let (small, large) = (build(60), build(1514));
        let mut got = 0;
        for round in 0..20 {
            // 1514-byte frames (3 buffers each) and 60-byte ones (1 buffer): 80 buffers a
            // round, so the 256-entry ring runs dry within 4 rounds unless they come back.
            let batch: Vec<&[u8]> = (0..20)
                .flat_map(|i| [&large[i][..], &small[i][..]])
                .collect();
            assert_eq!(drv.send(0, &batch).unwrap(), batch.len());
            let want = 40 * (round + 1);
            for _ in 0..1000 {
                if got == want {
                    break;
                }
                got += drv.recv_count(0).unwrap();
            }
            assert_eq!(got, want, "{} round {round}", layout_name(packed));
        }
        let c = dev.counters();
        assert_eq!(c.rx_frames, 800, "{}", layout_name(packed));
        assert!(c.queues[0].chains > c.queues[0].frames);
    }
}

/// `tx_copy_prefix` (the benches' testpmd-txonly send) writes only each frame's first bytes
/// but still sends the whole length: a frame goes out as its prefix followed by what its
/// buffer held (zeros in a fresh one).
#[test]
fn tx_copy_prefix_writes_the_prefix_and_sends_the_whole_length() {
    for packed in LAYOUTS {
        let (_dev, mut drv) = loopback(
            1,
            DriverOptions {
                tx_copy_prefix: Some(42),
                ..Default::default()
            }
            .with_packed(packed),
        );
        let mac = drv.mac().unwrap();
        let mut rng = SmallRng::seed_from_u64(9);
        let f = frames::build(mac, mac, 3, 0, 200, &mut rng);
        assert!(
            f[42..].iter().any(|&b| b != 0),
            "the payload is not all zeros"
        );
        assert_eq!(drv.send(0, &[&f]).unwrap(), 1);
        let mut got = Vec::new();
        for _ in 0..1000 {
            got.extend(drv.recv(0).unwrap());
            if !got.is_empty() {
                break;
            }
        }
        let mut want = f[..42].to_vec();
        want.resize(200, 0);
        assert_eq!(got, vec![want], "{}", layout_name(packed));
    }
}

#[test]
fn without_mrg_rxbuf_single_buffers() {
    for packed in LAYOUTS {
        let opts = DriverOptions {
            features: default_driver_features() & !(1 << bits::MRG_RXBUF),
            ..Default::default()
        }
        .with_packed(packed);
        let (dev, drv) = exact_loopback(1, 2_000, opts, 3);
        assert_eq!(drv.features & (1 << bits::MRG_RXBUF), 0);
        let c = dev.counters();
        assert_eq!(
            c.queues[0].chains,
            c.queues[0].frames,
            "{}",
            layout_name(packed)
        );
    }
}

#[test]
fn without_mrg_small_buffers_drop_frames_and_keep_buffers() {
    for packed in LAYOUTS {
        let opts = DriverOptions {
            features: default_driver_features() & !(1 << bits::MRG_RXBUF),
            rx_buf_size: 256,
            ..Default::default()
        }
        .with_packed(packed);
        let (dev, mut drv) = loopback(1, opts);
        let mac = drv.mac().unwrap();
        let mut rng = SmallRng::seed_from_u64(4);
        let big = frames::build(mac, mac, 0, 0, 1000, &mut rng);
        let small = frames::build(mac, mac, 0, 1, 200, &mut rng);
        assert_eq!(drv.send(0, &[&big, &small]).unwrap(), 2);
        let got = drv.recv(0).unwrap();
        assert_eq!(
            got,
            vec![small],
            "{}: the frame that fits arrives, the other is dropped",
            layout_name(packed)
        );
        assert_eq!(dev.counters().rx_dropped_too_small, 1);
        drv.check_alive().unwrap();
    }
}

#[test]
fn split_header_and_indirect_tx() {
    for packed in LAYOUTS {
        exact_loopback(
            1,
            1_000,
            DriverOptions {
                tx_split_header: true,
                ..Default::default()
            }
            .with_packed(packed),
            5,
        );
        let (dev, _) = exact_loopback(
            1,
            1_000,
            DriverOptions {
                tx_indirect: true,
                tx_split_header: true,
                ..Default::default()
            }
            .with_packed(packed),
            6,
        );
        assert!(
            dev.bus_stats()
                .get(dma::DmaKind::IndirectTable)
                .transactions
                >= 1_000,
            "{}",
            layout_name(packed)
        );
    }
}

#[test]
fn four_queue_pairs_steer_back_to_the_sending_pair() {
    for packed in LAYOUTS {
        four_queue_pairs(packed);
    }
}

fn four_queue_pairs(packed: bool) {
    let (dev, drv) = exact_loopback(4, 8_000, DriverOptions::default().with_packed(packed), 7);
    assert_eq!(dev.active_queue_pairs(), 4, "VQ_PAIRS_SET took effect");
    let c = dev.counters();
    for p in 0..4u16 {
        let tx = &c.queues[usize::from(txq(p))];
        let rx = &c.queues[usize::from(rxq(p))];
        assert!(tx.frames > 1_000, "pair {p} transmitted");
        assert_eq!(
            tx.frames, rx.frames,
            "pair {p}: automatic receive steering (5.1.6.5.6.1)"
        );
        // DPDK's vector plan: queue i on vector i + 1.
        assert!(drv.irq.count(NetDriver::vector_of(rxq(p))) >= 1);
    }
}

#[test]
fn before_vq_pairs_set_only_pair_zero_receives() {
    for packed in LAYOUTS {
        before_vq_pairs_set(packed);
    }
}

fn before_vq_pairs_set(packed: bool) {
    let dev =
        Device::new(DeviceConfig::with_queue_pairs(2).lm_layout(bar_registers::LmLayout::Linux))
            .unwrap();
    dev.set_loopback();
    // The Linux LM layout has no MQ register, so only the control command enables pair 1.
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            queue_pairs: 2,
            lm_layout: bar_registers::LmLayout::Linux,
            ..Default::default()
        }
        .with_packed(packed),
    )
    .unwrap();
    drv.start().unwrap();
    assert_eq!(dev.active_queue_pairs(), 2);
    drv.ctrl(4, 0, &1u16.to_le_bytes()).unwrap();
    assert_eq!(dev.active_queue_pairs(), 1);
    let mac = drv.mac().unwrap();
    let f = frames::build(mac, mac, 1, 0, 100, &mut SmallRng::seed_from_u64(8));
    drv.send(1, &[&f]).unwrap();
    assert_eq!(drv.recv(1).unwrap().len(), 0);
    assert_eq!(drv.recv(0).unwrap(), vec![f]);
    assert_eq!(
        drv.ctrl_raw(4, 0, &3u16.to_le_bytes()).unwrap(),
        1,
        "more pairs than the device has: VIRTIO_NET_ERR"
    );
}

#[test]
fn two_devices_joined_by_a_link() {
    for packed in LAYOUTS {
        two_devices(packed);
    }
    // Mixed: one side split, the other packed (each device has its own negotiation).
    two_devices_mixed();
}

fn two_devices_mixed() {
    let a = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut cfg_b = DeviceConfig::with_queue_pairs(1);
    cfg_b.layout.mac = [0x52, 0x54, 0, 0, 0, 0xC];
    let b = Device::new(cfg_b).unwrap();
    LinkPort::join(&a, &b);
    let mut da =
        sim_harness::driver::in_process(&a, DriverOptions::default().with_packed(false)).unwrap();
    let mut db =
        sim_harness::driver::in_process(&b, DriverOptions::default().with_packed(true)).unwrap();
    da.start().unwrap();
    db.start().unwrap();
    let (ma, mb) = (da.mac().unwrap(), db.mac().unwrap());
    let mut rng = SmallRng::seed_from_u64(19);
    let fa: Vec<Vec<u8>> = (0..100)
        .map(|i| frames::build(ma, mb, 0, i, rng.gen_range(60..=1514), &mut rng))
        .collect();
    let fb: Vec<Vec<u8>> = (0..100)
        .map(|i| frames::build(mb, ma, 1, i, rng.gen_range(60..=1514), &mut rng))
        .collect();
    for (x, y) in fa.chunks(10).zip(fb.chunks(10)) {
        let rx: Vec<&[u8]> = x.iter().map(Vec::as_slice).collect();
        let ry: Vec<&[u8]> = y.iter().map(Vec::as_slice).collect();
        assert_eq!(da.send(0, &rx).unwrap(), 10);
        assert_eq!(db.send(0, &ry).unwrap(), 10);
    }
    let (mut got_b, mut got_a) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        got_b.extend(db.recv(0).unwrap());
        got_a.extend(da.recv(0).unwrap());
    }
    assert_eq!(got_b, fa, "split A -> packed B");
    assert_eq!(got_a, fb, "packed B -> split A");
}

fn two_devices(packed: bool) {
    let a = Device::new(DeviceConfig::with_queue_pairs(2)).unwrap();
    let mut cfg_b = DeviceConfig::with_queue_pairs(2);
    cfg_b.layout.mac = [0x52, 0x54, 0, 0, 0, 0xB];
    let b = Device::new(cfg_b).unwrap();
    LinkPort::join(&a, &b);
    let opts = DriverOptions {
        queue_pairs: 2,
        ..Default::default()
    }
    .with_packed(packed);
    let mut da = sim_harness::driver::in_process(&a, opts.clone()).unwrap();
    let mut db = sim_harness::driver::in_process(&b, opts).unwrap();
    da.start().unwrap();
    db.start().unwrap();
    let (ma, mb) = (da.mac().unwrap(), db.mac().unwrap());
    assert_ne!(ma, mb);
    let mut rng = SmallRng::seed_from_u64(9);
    let (mut ta, mut tb) = (Tracker::default(), Tracker::default());
    let mut sent_a: HashMap<u16, u64> = HashMap::new();
    let mut sent_b: HashMap<u16, u64> = HashMap::new();
    for round in 0..200u64 {
        for p in 0..2u16 {
            let fa: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    frames::build(ma, mb, p, round * 8 + i, rng.gen_range(60..=1514), &mut rng)
                })
                .collect();
            let fb: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    frames::build(
                        mb,
                        ma,
                        10 + p,
                        round * 8 + i,
                        rng.gen_range(60..=1514),
                        &mut rng,
                    )
                })
                .collect();
            let ra: Vec<&[u8]> = fa.iter().map(Vec::as_slice).collect();
            let rb: Vec<&[u8]> = fb.iter().map(Vec::as_slice).collect();
            assert_eq!(da.send(p, &ra).unwrap(), 8);
            *sent_a.entry(p).or_default() += 8;
            assert_eq!(db.send(p, &rb).unwrap(), 8);
            *sent_b.entry(10 + p).or_default() += 8;
        }
        for p in 0..2u16 {
            db.recv(p).unwrap().iter().for_each(|f| tb.record(f));
            da.recv(p).unwrap().iter().for_each(|f| ta.record(f));
        }
    }
    for p in 0..2u16 {
        db.recv(p).unwrap().iter().for_each(|f| tb.record(f));
        da.recv(p).unwrap().iter().for_each(|f| ta.record(f));
    }
    tb.finish(&sent_a);
    ta.finish(&sent_b);
    assert!(
        tb.clean() && tb.delivered == 3_200,
        "B received A's frames: {tb:?}"
    );
    assert!(
        ta.clean() && ta.delivered == 3_200,
        "A received B's frames: {ta:?}"
    );
    assert_eq!(a.counters().tx_frames, b.counters().rx_frames);
}

#[test]
fn event_idx_suppresses_interrupts() {
    for packed in LAYOUTS {
        event_idx_suppresses(packed);
    }
}

fn event_idx_suppresses(packed: bool) {
    let (dev, mut drv) = loopback(1, DriverOptions::default().with_packed(packed));
    assert_ne!(drv.features & (1 << bits::EVENT_IDX), 0);
    let mac = drv.mac().unwrap();
    let mut rng = SmallRng::seed_from_u64(10);
    let vec_rx = NetDriver::vector_of(rxq(0));
    let mem = drv.mem.clone();
    // Interrupt me only after 100 more RX completions: split used_event (2.7.7.2), packed a
    // DESC event at the 100th used descriptor from here (2.8.10).
    if packed {
        let r = drv.packed_ring(rxq(0)).unwrap();
        let at = r.used_off_wrap_plus(99);
        r.set_used_event(&mem, at).unwrap();
    } else {
        let used = drv.ring(rxq(0)).unwrap().used_idx(&mem).unwrap();
        drv.ring(rxq(0))
            .unwrap()
            .set_used_event(&mem, used.wrapping_add(99))
            .unwrap();
    }
    let before = drv.irq.count(vec_rx);
    for i in 0..99u64 {
        let f = frames::build(mac, mac, 0, i, 64, &mut rng);
        drv.send(0, &[&f]).unwrap();
    }
    assert_eq!(
        drv.irq.count(vec_rx),
        before,
        "99 completions, used_event not reached: no interrupt"
    );
    let f = frames::build(mac, mac, 0, 99, 64, &mut rng);
    drv.send(0, &[&f]).unwrap();
    assert_eq!(
        drv.irq.count(vec_rx),
        before + 1,
        "the 100th completion crosses used_event"
    );
    assert!(dev.counters().queues[usize::from(rxq(0))].interrupts_suppressed >= 99);
    // avail_event: the device asks to be kicked only at its next avail index, so the driver's
    // kicks match the device's doorbell count.
    assert_eq!(drv.recv(0).unwrap().len(), 100);
}

/// A frame that did not fit the buffers left goes out on the driver's next refill, with no
/// other event: out of buffers, the device asks for a kick at the end of what it fetched (with
/// EVENT_IDX, avail_event), and the refill kicks. It asked at the last index it completed on
/// split rings, behind the buffers it had fetched and given back, so the refill sent no kick
/// and the frame waited for the next frame from the port (a TCP stream's last frames stall
/// until a retransmission).
#[test]
fn a_frame_out_of_buffers_goes_out_on_the_next_refill_alone() {
    for packed in LAYOUTS {
        let name = layout_name(packed);
        // 16 buffers of 512 bytes: seven 1000-byte frames take two each, the eighth (1500
        // bytes) needs three and finds two.
        let (dev, mut drv) = loopback(
            1,
            DriverOptions {
                queue_size: 16,
                rx_buf_size: 512,
                ..Default::default()
            }
            .with_packed(packed),
        );
        assert_ne!(drv.features & (1 << bits::EVENT_IDX), 0);
        let mac = drv.mac().unwrap();
        let mut rng = SmallRng::seed_from_u64(11);
        let sent: Vec<Vec<u8>> = (0..8u64)
            .map(|i| frames::build(mac, mac, 0, i, if i < 7 { 1000 } else { 1500 }, &mut rng))
            .collect();
        for f in &sent {
            assert_eq!(drv.send(0, &[f]).unwrap(), 1);
        }
        assert_eq!(
            dev.inbox().len(),
            1,
            "{name}: the eighth frame waits for buffers"
        );
        let doorbells = dev.counters().queues[usize::from(rxq(0))].doorbells;
        // The driver takes the seven and posts their buffers again; that refill's kick alone
        // must bring the eighth.
        let mut got = drv.recv(0).unwrap();
        assert!(
            dev.counters().queues[usize::from(rxq(0))].doorbells > doorbells,
            "{name}: the refill kicked the device"
        );
        assert_eq!(
            dev.inbox().len(),
            0,
            "{name}: delivered on the refill's kick"
        );
        got.extend(drv.recv(0).unwrap());
        assert_eq!(got, sent, "{name}: every frame, in order");
    }
}

#[test]
fn no_interrupt_flag_without_event_idx() {
    for packed in LAYOUTS {
        no_interrupt_flag(packed);
    }
}

fn no_interrupt_flag(packed: bool) {
    let opts = DriverOptions {
        features: default_driver_features() & !(1 << bits::EVENT_IDX),
        ..Default::default()
    }
    .with_packed(packed);
    let (_dev, mut drv) = loopback(1, opts);
    let mac = drv.mac().unwrap();
    let mem = drv.mem.clone();
    let mut rng = SmallRng::seed_from_u64(11);
    let v = NetDriver::vector_of(rxq(0));
    // Split: VRING_AVAIL_F_NO_INTERRUPT (2.7.7.1); packed: driver event flags DISABLE (2.8.10).
    let set = |drv: &mut NetDriver, on: bool| {
        if packed {
            drv.packed_ring(rxq(0))
                .unwrap()
                .set_interrupts(&mem, on)
                .unwrap();
        } else {
            drv.ring(rxq(0))
                .unwrap()
                .set_no_interrupt(&mem, !on)
                .unwrap();
        }
    };
    set(&mut drv, false);
    let before = drv.irq.count(v);
    for i in 0..20u64 {
        drv.send(0, &[&frames::build(mac, mac, 0, i, 64, &mut rng)])
            .unwrap();
    }
    assert_eq!(
        drv.irq.count(v),
        before,
        "{}: interrupts off honoured",
        layout_name(packed)
    );
    set(&mut drv, true);
    drv.send(0, &[&frames::build(mac, mac, 0, 20, 64, &mut rng)])
        .unwrap();
    assert_eq!(drv.irq.count(v), before + 1);
    if packed {
        // Without EVENT_IDX the device never writes its event suppression structure.
        let dev_area = drv.packed_ring(txq(0)).unwrap().device;
        assert_eq!(mem.read_u32(dev_area).unwrap(), 0);
    } else {
        // Without EVENT_IDX the device never writes avail_event: used ring tail stays 0.
        let r = drv.ring(rxq(0)).unwrap();
        let (used, size) = (r.used, r.size);
        assert_eq!(mem.read_u16(used + 4 + 8 * u64::from(size)).unwrap(), 0);
    }
}

#[test]
fn stop_and_start_resume_without_loss_or_duplication() {
    for packed in LAYOUTS {
        stop_and_start(packed);
    }
}

fn stop_and_start(packed: bool) {
    let (dev, mut drv) = loopback(
        2,
        DriverOptions {
            queue_pairs: 2,
            ..Default::default()
        }
        .with_packed(packed),
    );
    let mac = drv.mac().unwrap();
    let mut rng = SmallRng::seed_from_u64(12);
    let mut tracker = Tracker::default();
    let mut sent: HashMap<u16, u64> = HashMap::new();
    for cycle in 0..20 {
        for p in 0..2u16 {
            let n = rng.gen_range(1..=40);
            let fs: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let s = sent.entry(p).or_default();
                    *s += 1;
                    frames::build(mac, mac, p, *s - 1, rng.gen_range(60..=1514), &mut rng)
                })
                .collect();
            let refs: Vec<&[u8]> = fs.iter().map(Vec::as_slice).collect();
            assert_eq!(drv.send(p, &refs).unwrap(), n);
            // Leave some received frames unconsumed across the stop on odd cycles.
            if cycle % 2 == 0 {
                drv.recv(p).unwrap().iter().for_each(|f| tracker.record(f));
            }
        }
        let states = drv.stop().unwrap();
        for q in [rxq(0), txq(0), rxq(1), txq(1), 4] {
            let (a, u) = states[usize::from(q)];
            assert_eq!(
                a, u,
                "queue {q}: the device finished in-flight work before reporting"
            );
            let used_in_memory = {
                let mem = drv.mem.clone();
                if packed {
                    // Packed: where the used descriptors in the ring end (offset | wrap << 15).
                    drv.packed_ring(q).unwrap().used_end(&mem).unwrap()
                } else {
                    drv.ring(q).unwrap().used_idx(&mem).unwrap()
                }
            };
            assert_eq!(
                u, used_in_memory,
                "queue {q}: LM ring state equals the used index in memory"
            );
        }
        drv.restart(&states).unwrap();
        for q in [rxq(0), txq(0)] {
            let snap = dev.queue(q).unwrap();
            assert!(snap.enabled);
            assert_eq!(
                (snap.last_avail, snap.last_used),
                states[usize::from(q)],
                "queue {q} resumed at its ring state"
            );
        }
    }
    for p in 0..2u16 {
        drv.recv(p).unwrap().iter().for_each(|f| tracker.record(f));
    }
    tracker.finish(&sent);
    assert!(tracker.clean(), "{tracker:?}");
    assert_eq!(tracker.delivered, sent.values().sum::<u64>());
}

/// Packed only: a queue size that is not a power of two (virtio 1.2 2.8) and thousands of laps
/// of the wrap counters, with mixed list lengths (split header, 512-byte mergeable RX buffers)
/// and indirect tables. Batches fit the small rings; every frame comes back byte-exact.
#[test]
fn packed_odd_queue_size_many_laps() {
    for (size, opts) in [
        (
            100u16,
            DriverOptions {
                queue_size: 100,
                ..Default::default()
            },
        ),
        (
            7,
            DriverOptions {
                queue_size: 7,
                tx_split_header: true,
                rx_buf_size: 512,
                ..Default::default()
            },
        ),
        (
            33,
            DriverOptions {
                queue_size: 33,
                tx_indirect: true,
                tx_split_header: true,
                ..Default::default()
            },
        ),
    ] {
        let (dev, mut drv) = loopback(1, opts.with_packed(true));
        assert!(drv.is_packed());
        let mac = drv.mac().unwrap();
        let mut rng = SmallRng::seed_from_u64(u64::from(size));
        let mut expect = VecDeque::new();
        let (mut sent, total) = (0usize, 3_000usize);
        let mut got = 0usize;
        let mut idle = 0;
        while got < total {
            let room = usize::from(size / 2).clamp(1, 16);
            let n = rng.gen_range(1..=room).min(total - sent);
            let batch: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    frames::build(
                        mac,
                        mac,
                        0,
                        (sent + i) as u64,
                        rng.gen_range(frames::MIN_FRAME..=MTU_FRAME),
                        &mut rng,
                    )
                })
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let k = drv.send(0, &refs).unwrap();
            expect.extend(batch.into_iter().take(k));
            sent += k;
            let frames = drv.recv(0).unwrap();
            idle = if frames.is_empty() && k == 0 {
                idle + 1
            } else {
                0
            };
            assert!(idle < 100, "size {size}: no progress at {got} of {total}");
            for f in frames {
                assert_eq!(Some(f), expect.pop_front(), "size {size}: frame {got}");
                got += 1;
            }
        }
        drv.check_alive().unwrap();
        let q = dev.queue(rxq(0)).unwrap();
        assert_eq!(q.size, size, "the device accepted queue size {size}");
        assert_eq!(dev.counters().rx_frames, total as u64);
        assert!(
            dev.counters().queues[usize::from(rxq(0))].chains / u64::from(size) > 20,
            "many laps"
        );
    }
}

/// The packed LM ring state encodings: 32-bit accesses carry `offset | wrap << 15` per half
/// (vhost-user VRING_BASE); on the Linux layout a 16-bit access carries the first u16 of Linux's
/// struct vdpa_vq_state_packed (bit 0 wrap counter, bits 1-15 offset), what ifcvf_set_vq_state
/// writes for virtio_vdpa (0x0001 for a fresh ring) and ifcvf_get_vq_state reads.
#[test]
fn packed_ring_state_encodings() {
    use bar_registers::lm::{self, LmLayout};
    use device::RegionAccess;
    let dev = Device::new(DeviceConfig::with_queue_pairs(1).lm_layout(LmLayout::Linux)).unwrap();
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            lm_layout: LmLayout::Linux,
            ..Default::default()
        }
        .with_packed(true),
    )
    .unwrap();
    drv.start().unwrap();
    let mac = drv.mac().unwrap();
    let mut rng = SmallRng::seed_from_u64(31);
    let fs: Vec<Vec<u8>> = (0..5)
        .map(|i| frames::build(mac, mac, 0, i, 100, &mut rng))
        .collect();
    let refs: Vec<&[u8]> = fs.iter().map(Vec::as_slice).collect();
    assert_eq!(drv.send(0, &refs).unwrap(), 5);
    assert_eq!(drv.recv(0).unwrap(), fs);
    let off = lm::ring_state_offset(LmLayout::Linux, txq(0));
    let rd = |len: usize| {
        let mut b = [0u8; 4];
        dev.region_read(4, off, &mut b[..len]).unwrap();
        u32::from_le_bytes(b)
    };
    // Five TX completions from offset 0, wrap counter 1.
    assert_eq!(rd(4), lm::pack_packed_ring_state(5, true, 5, true));
    assert_eq!(rd(2), (5 << 1) | 1, "ifcvf_get_vq_state view");
    assert_eq!(lm::unpack_packed_ring_state(rd(4)), (5, true, 5, true));
    // Stop the queue, then what virtio_vdpa + ifcvf write for a fresh packed ring.
    let cbase = dev.layout().common.offset;
    dev.region_write(
        0,
        cbase + bar_registers::virtio::common::QUEUE_SELECT,
        &txq(0).to_le_bytes(),
    )
    .unwrap();
    dev.region_write(
        0,
        cbase + bar_registers::virtio::common::QUEUE_ENABLE,
        &0u16.to_le_bytes(),
    )
    .unwrap();
    // Poll queue_enable until it reads 0 (the IFC VF stop semantics).
    for _ in 0..10 {
        let mut b = [0u8; 2];
        dev.region_read(
            0,
            cbase + bar_registers::virtio::common::QUEUE_ENABLE,
            &mut b,
        )
        .unwrap();
        if b == [0, 0] {
            break;
        }
    }
    dev.region_write(4, off, &1u16.to_le_bytes()).unwrap();
    assert_eq!(rd(4), 0x8000_8000, "offset 0, both wrap counters 1");
    dev.region_write(4, off, &(7u16 << 1).to_le_bytes())
        .unwrap();
    assert_eq!(rd(4), lm::pack_packed_ring_state(7, false, 7, false));
    assert_eq!(rd(2), 7 << 1);
}

/// DPDK 24.11 net_virtio's packed TX path, as the e2e test's dpdk-testpmd txonly drives it
/// (drivers/net/virtio/virtio_rxtx.c virtio_xmit_pkts_packed and virtio_xmit_cleanup_normal_packed,
/// virtqueue.h virtqueue_enqueue_xmit_packed(_fast), desc_is_used, vring_desc_init_packed,
/// virtqueue_kick_prepare_packed), written against the ring by hand:
/// - no VIRTIO_F_EVENT_IDX (VIRTIO_PMD_DEFAULT_GUEST_FEATURES leaves it out) and no IN_ORDER (the
///   device does not offer it), so completions are reclaimed the "normal" way;
/// - buffer ids from a free list that starts as `desc[i].id = i`, each remembering its slot count
///   (`dxp->ndescs`); the id goes into the list's last descriptor (`start_dp[prev].id = id`), the
///   first descriptor's flags last;
/// - completions are reclaimed only when a burst does not fit: `if (nb_pkts > vq->vq_free_cnt)
///   virtio_xmit_cleanup_packed(vq, nb_pkts - vq->vq_free_cnt, in_order)`, one used descriptor
///   at a time while `desc_is_used` (AVAIL == USED == used wrap counter), moving on by the slot
///   count of the id it names (virtio 1.2 2.8.6: one used descriptor per list, "It then skips
///   forward according to the number of descriptors in the list");
/// - a kick after each burst that sent something, unless the device event flags say DISABLE.
///
/// The ring is first filled to the last slot while the device does not run (what the e2e txonly
/// run showed: 256 sent, nothing reclaimed yet); every third frame takes two slots (header, then
/// frame: DPDK's path when the header cannot be prepended), so ids and slots drift apart.
#[test]
fn packed_tx_as_dpdk_net_virtio_drives_it() {
    use device::queue::packed::{
        RING_EVENT_FLAGS_DISABLE, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
    };
    const END: u16 = 32768; // VQ_RING_DESC_CHAIN_END
    const HDR: u32 = 12; // struct virtio_net_hdr_mrg_rxbuf
    const BURST: usize = 32; // testpmd's packets/burst
    let size: u16 = 256; // --txd=256
    let features = (default_driver_features() & !(1 << bits::EVENT_IDX)) | (1 << bits::RING_PACKED);
    let (dev, mut drv) = loopback(
        1,
        DriverOptions {
            queue_size: size,
            features,
            ..Default::default()
        },
    );
    assert!(drv.is_packed());
    let (desc, device_area) = {
        let r = drv.packed_ring(txq(0)).unwrap();
        (r.desc, r.device)
    };
    let mem = drv.mem.clone();
    let mac = drv.mac().unwrap();
    let mut rng = SmallRng::seed_from_u64(24);
    let frame = frames::build(mac, mac, 0, 0, 60, &mut rng);
    let buf = mem.alloc(u64::from(HDR) + frame.len() as u64, 64).unwrap();
    mem.write(buf, &[0u8; HDR as usize]).unwrap();
    mem.write(buf + u64::from(HDR), &frame).unwrap();
    for i in 0..size {
        mem.write_u16(desc + 16 * u64::from(i) + 12, i).unwrap(); // vring_desc_init_packed
    }

    // The PMD's ring state (struct virtqueue, vq_packed).
    let mut next: Vec<u16> = (1..=size)
        .map(|i| if i == size { END } else { i })
        .collect();
    let mut ndescs = vec![0u16; size.into()];
    let (mut head, mut tail, mut free_cnt) = (0u16, size - 1, size);
    let (mut avail_idx, mut avail_wrap) = (0u16, true);
    let (mut used_cons_idx, mut used_wrap) = (0u16, true);
    let slot_flags = |wrap: bool| {
        if wrap {
            VIRTQ_DESC_F_AVAIL
        } else {
            VIRTQ_DESC_F_USED
        }
    };
    // virtio_xmit_cleanup_normal_packed: returns the ids reclaimed.
    let mut cleanup = |num: u16,
                       next: &mut Vec<u16>,
                       ndescs: &mut Vec<u16>,
                       head: &mut u16,
                       tail: &mut u16,
                       free_cnt: &mut u16|
     -> u16 {
        let mut freed = 0;
        for _ in 0..num {
            let at = desc + 16 * u64::from(used_cons_idx);
            let flags = mem.read_u16(at + 14).unwrap();
            let (avail, used) = (
                flags & VIRTQ_DESC_F_AVAIL != 0,
                flags & VIRTQ_DESC_F_USED != 0,
            );
            if !(avail == used && used == used_wrap) {
                break;
            }
            let id = mem.read_u16(at + 12).unwrap();
            assert!(
                id < size && ndescs[usize::from(id)] != 0,
                "used descriptor at slot {used_cons_idx} names buffer id {id}, which is not in \
                 flight (DPDK would free a stale mbuf)"
            );
            used_cons_idx += ndescs[usize::from(id)];
            if used_cons_idx >= size {
                used_cons_idx -= size;
                used_wrap = !used_wrap;
            }
            // vq_ring_free_id_packed
            *free_cnt += ndescs[usize::from(id)];
            ndescs[usize::from(id)] = 0;
            if *tail == END {
                *head = id;
            } else {
                next[usize::from(*tail)] = id;
            }
            *tail = id;
            next[usize::from(id)] = END;
            freed += 1;
        }
        freed
    };

    let mut posted = 0u64;
    let mut nth = 0u64;
    let mut device_runs = false;
    let mut sent_per_burst = Vec::new();
    for _ in 0..2_000 {
        // virtio_xmit_pkts_packed
        if BURST > usize::from(free_cnt) {
            cleanup(
                BURST as u16 - free_cnt,
                &mut next,
                &mut ndescs,
                &mut head,
                &mut tail,
                &mut free_cnt,
            );
        }
        let mut nb_tx = 0;
        while nb_tx < BURST {
            let slots = if nth % 3 == 2 { 2 } else { 1 };
            if slots > free_cnt {
                cleanup(
                    slots - free_cnt,
                    &mut next,
                    &mut ndescs,
                    &mut head,
                    &mut tail,
                    &mut free_cnt,
                );
                if slots > free_cnt {
                    break;
                }
            }
            nth += 1;
            let id = head;
            assert_ne!(id, END, "free count {free_cnt} but no free id");
            ndescs[usize::from(id)] = slots;
            let head_at = desc + 16 * u64::from(avail_idx);
            let head_flags =
                slot_flags(avail_wrap) | if slots == 2 { VIRTQ_DESC_F_NEXT } else { 0 };
            let parts: &[(u64, u32)] = if slots == 2 {
                &[(buf, HDR), (buf + u64::from(HDR), frame.len() as u32)]
            } else {
                &[(buf, HDR + frame.len() as u32)]
            };
            let mut prev = head_at;
            for (k, &(addr, len)) in parts.iter().enumerate() {
                let at = desc + 16 * u64::from(avail_idx);
                mem.write_u64(at, addr).unwrap();
                mem.write_u32(at + 8, len).unwrap();
                if k > 0 {
                    mem.write_u16(at + 14, slot_flags(avail_wrap)).unwrap();
                }
                prev = at;
                avail_idx += 1;
                if avail_idx >= size {
                    avail_idx -= size;
                    avail_wrap = !avail_wrap;
                }
            }
            mem.write_u16(prev + 12, id).unwrap(); // start_dp[prev].id = id
            free_cnt -= slots;
            head = next[usize::from(id)];
            if head == END {
                tail = END;
            }
            mem.store_u16_release(head_at + 14, head_flags).unwrap(); // virtqueue_store_flags_packed
            nb_tx += 1;
        }
        posted += nb_tx as u64;
        sent_per_burst.push(nb_tx);
        // virtqueue_kick_prepare_packed: notify unless the device event flags say DISABLE.
        let device_flags = mem.read_u16(device_area + 2).unwrap();
        if nb_tx > 0 && device_flags != RING_EVENT_FLAGS_DISABLE && device_runs {
            drv.kick(txq(0)).unwrap();
        }
        if !device_runs && nb_tx == 0 {
            // The ring is full and nothing came back: the device runs from now on (one late
            // doorbell covers every list the driver made available).
            assert!(free_cnt < 2, "the ring is full");
            assert_eq!(dev.counters().queues[usize::from(txq(0))].chains, 0);
            device_runs = true;
            drv.kick(txq(0)).unwrap();
            assert_eq!(
                dev.counters().queues[usize::from(txq(0))].chains,
                posted,
                "the device took the whole ring"
            );
        }
    }
    assert!(device_runs);
    drv.check_alive().unwrap();
    // Once the device ran, every burst found room: DPDK saw each used descriptor.
    let stalled = sent_per_burst
        .iter()
        .skip_while(|&&n| n > 0)
        .skip(1)
        .filter(|&&n| n == 0)
        .count();
    assert_eq!(stalled, 0, "bursts that sent nothing once the device ran");
    // Everything still in flight comes back too.
    cleanup(
        size,
        &mut next,
        &mut ndescs,
        &mut head,
        &mut tail,
        &mut free_cnt,
    );
    assert_eq!(free_cnt, size, "every slot reclaimed");
    let c = dev.counters();
    assert_eq!(c.queues[usize::from(txq(0))].chains, posted);
    assert_eq!(
        c.tx_frames + c.tx_port_drops,
        posted,
        "every frame sent (or dropped by the full loopback)"
    );
    assert!(posted / u64::from(size) > 100, "many laps: {posted} frames");
}
