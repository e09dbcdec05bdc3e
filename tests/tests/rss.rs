//! Receive-side scaling through the whole device (virtio 1.2 5.1.6.5.7): the driver model
//! programs RSS over the control queue, frames loop back and land on the pair the Toeplitz
//! hash and indirection table select; the configuration crosses a device-state migration;
//! VQ_PAIRS_SET and a reset turn it off; without the feature the command is refused.

use bar_registers::virtio::bits;
use bar_registers::virtio::rss::SUPPORTED_HASH_TYPES;
use device::net::rss::{RssConfig, Steering};
use device::{Device, DeviceConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::{DriverOptions, NetDriver};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

const PAIRS: u16 = 4;

fn loopback(opts: DriverOptions) -> (Arc<Device>, NetDriver) {
    let dev = Device::new(DeviceConfig::with_queue_pairs(PAIRS)).unwrap();
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            queue_pairs: PAIRS,
            ..opts
        },
    )
    .unwrap();
    drv.start().unwrap();
    (dev, drv)
}

fn config(seed: u64) -> RssConfig {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut key = [0u8; 40];
    rng.fill(&mut key[..]);
    RssConfig {
        hash_types: SUPPORTED_HASH_TYPES,
        table: (0..128).map(|_| rng.gen_range(0..PAIRS)).collect(),
        unclassified: 2,
        key,
        key_len: 40,
    }
}

/// IPv4/UDP frames of `n` flows (random addresses and ports), and ARP frames, unique by seq.
fn frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut f = vec![0x02, 0, 0, 0, 0, 0x42, 0x02, 0, 0, 0, 0, 0x43];
            if i % 8 == 7 {
                f.extend([0x08, 0x06]);
                f.extend([0u8; 28]);
            } else {
                f.extend([0x08, 0x00, 0x45, 0, 0, 50, 0, 0, 0, 0, 64, 17, 0, 0]);
                f.extend(rng.gen::<[u8; 8]>());
                f.extend(rng.gen::<[u8; 4]>());
            }
            f.extend((i as u32).to_be_bytes());
            f.resize(80, 0);
            f
        })
        .collect()
}

/// Sends `fs` on pair 0 and returns, per frame, the pair it arrived on.
fn arrivals(drv: &mut NetDriver, fs: &[Vec<u8>]) -> HashMap<Vec<u8>, u16> {
    fn take(drv: &mut NetDriver, got: &mut HashMap<Vec<u8>, u16>) {
        for p in 0..PAIRS {
            for f in drv.recv(p).unwrap() {
                assert!(got.insert(f, p).is_none(), "a frame arrived twice");
            }
        }
    }
    let mut got = HashMap::new();
    for chunk in fs.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(drv.send(0, &refs).unwrap(), refs.len());
        take(drv, &mut got);
    }
    let t0 = Instant::now();
    while got.len() < fs.len() && t0.elapsed() < Duration::from_secs(5) {
        take(drv, &mut got);
    }
    assert_eq!(got.len(), fs.len(), "every frame came back");
    got
}

/// Every frame arrived where `cfg` sends it; returns how many pairs got frames.
fn assert_steered(drv: &mut NetDriver, cfg: &RssConfig, seed: u64) -> usize {
    let fs = frames(200, seed);
    let got = arrivals(drv, &fs);
    for f in &fs {
        assert_eq!(
            got[f],
            cfg.steer(f, false).pair(),
            "frame {:02x?}",
            &f[..40]
        );
    }
    let mut used: Vec<u16> = got.values().copied().collect();
    used.sort_unstable();
    used.dedup();
    used.len()
}

#[test]
fn rss_steers_by_the_table_and_counts_what_it_hashed() {
    let (dev, mut drv) = loopback(DriverOptions::default());
    let cfg = config(1);
    assert_eq!(drv.set_rss(&cfg, PAIRS).unwrap(), 0, "RSS_CONFIG accepted");
    assert_eq!(dev.rss_config(), Some(cfg.clone()));
    assert_eq!(assert_steered(&mut drv, &cfg, 10), usize::from(PAIRS));
    let c = dev.counters();
    // 200 frames, one in eight ARP.
    assert_eq!((c.rx_rss_hashed, c.rx_rss_unclassified), (175, 25));
}

#[test]
fn rss_configuration_crosses_a_device_state_migration() {
    let (a, mut drv) = loopback(DriverOptions::default());
    let cfg = config(2);
    assert_eq!(drv.set_rss(&cfg, 3).unwrap(), 0);
    assert_eq!(a.active_queue_pairs(), 3, "max_tx_vq sets the pairs in use");
    assert_steered(&mut drv, &cfg, 20);
    a.pause();
    let state = a.save_state();
    assert!(state.windows(4).any(|w| w == b"RSSC"), "RSS state saved");

    let b = Device::new(DeviceConfig::with_queue_pairs(PAIRS)).unwrap();
    b.set_loopback();
    support::migrate_driver(&mut drv, &b, &state);
    assert_eq!(b.rss_config(), Some(cfg.clone()));
    assert_eq!(b.active_queue_pairs(), 3);
    assert_steered(&mut drv, &cfg, 21);
}

#[test]
fn vq_pairs_set_and_reset_turn_rss_off() {
    let (dev, mut drv) = loopback(DriverOptions::default());
    let cfg = config(3);
    assert_eq!(drv.set_rss(&cfg, PAIRS).unwrap(), 0);
    assert_eq!(assert_steered(&mut drv, &cfg, 30), usize::from(PAIRS));
    // VQ_PAIRS_SET: automatic steering again, so frames sent on pair 0 come back on pair 0.
    drv.ctrl(4, 0, &PAIRS.to_le_bytes()).unwrap();
    assert_eq!(dev.rss_config(), None);
    let fs = frames(64, 31);
    let got = arrivals(&mut drv, &fs);
    assert!(
        fs.iter()
            .filter(|f| f[12..14] == [8, 0])
            .all(|f| got[f] == 0),
        "flows follow their TX pair"
    );
    // A new configuration, then a reset: off, and the state stream has no RSS section.
    assert_eq!(drv.set_rss(&cfg, PAIRS).unwrap(), 0);
    drv.reset().unwrap();
    assert_eq!(dev.rss_config(), None);
    assert!(!dev.save_state().windows(4).any(|w| w == b"RSSC"));
}

#[test]
fn rss_config_is_refused_without_the_feature_and_when_malformed() {
    let without = bar_registers::virtio::default_driver_features() & !(1u64 << bits::RSS);
    let (dev, mut drv) = loopback(DriverOptions {
        features: without,
        ..DriverOptions::default()
    });
    let cfg = config(4);
    assert_ne!(drv.set_rss(&cfg, PAIRS).unwrap(), 0, "RSS not negotiated");
    assert_eq!(dev.rss_config(), None);
    drop(drv);

    let (dev, mut drv) = loopback(DriverOptions::default());
    let errors = dev.counters().ctrl_errors;
    let bad = [
        RssConfig {
            table: vec![0, 1, 2],
            ..cfg.clone()
        },
        RssConfig {
            table: vec![0, PAIRS],
            ..cfg.clone()
        },
        RssConfig {
            unclassified: PAIRS,
            ..cfg.clone()
        },
        RssConfig {
            hash_types: SUPPORTED_HASH_TYPES | 1 << 6,
            ..cfg.clone()
        },
    ];
    for b in &bad {
        assert_ne!(drv.set_rss(b, PAIRS).unwrap(), 0, "{b:?}");
    }
    assert_ne!(
        drv.set_rss(&cfg, PAIRS + 1).unwrap(),
        0,
        "max_tx_vq too large"
    );
    assert_ne!(drv.set_rss(&cfg, 0).unwrap(), 0, "max_tx_vq 0");
    assert_eq!(dev.counters().ctrl_errors, errors + 6);
    assert_eq!(dev.rss_config(), None, "nothing half-applied");
    // The device is still fine: a good one takes effect.
    assert_eq!(drv.set_rss(&cfg, PAIRS).unwrap(), 0);
    assert_steered(&mut drv, &cfg, 40);
    assert!(matches!(
        cfg.steer(&frames(8, 41)[7], false),
        Steering::Unclassified(2)
    ));
}

/// A frame that waits in the FIFO for buffers is steered again on every try; it counts as
/// steered once, when it is delivered.
#[test]
fn a_frame_that_waits_for_buffers_counts_as_steered_once() {
    // 16 buffers of 512 bytes on each RX queue, and every flow steered to pair 0: five
    // 1400-byte frames (three buffers each) fit, the rest wait.
    let (dev, mut drv) = loopback(DriverOptions {
        queue_size: 16,
        rx_buf_size: 512,
        ..DriverOptions::default()
    });
    let cfg = RssConfig {
        table: vec![0; 128],
        ..config(3)
    };
    assert_eq!(drv.set_rss(&cfg, PAIRS).unwrap(), 0, "RSS_CONFIG accepted");
    let mac = drv.mac().unwrap();
    let mut rng = SmallRng::seed_from_u64(4);
    let sent: Vec<Vec<u8>> = (0..8)
        .map(|i| sim_harness::frames::build(mac, mac, i as u16, 0, 1400, &mut rng))
        .collect();
    // One kick per frame: the frames that wait are steered again on each.
    for f in &sent {
        assert_eq!(drv.send(0, &[f.as_slice()]).unwrap(), 1);
    }
    assert_eq!(dev.inbox().len(), 3, "three frames wait for buffers");
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < sent.len() && t0.elapsed() < Duration::from_secs(5) {
        got.extend(drv.recv(0).unwrap());
    }
    assert_eq!(got, sent, "every frame, in order, on pair 0");
    let c = dev.counters();
    assert_eq!(
        (c.rx_frames, c.rx_rss_hashed, c.rx_rss_unclassified),
        (8, 8, 0),
        "each frame counted as steered once"
    );
}

/// Frames of `fs` steered by `cfg` to `pair`.
fn steered_to(fs: &[Vec<u8>], cfg: &RssConfig, pair: u16) -> Vec<Vec<u8>> {
    fs.iter()
        .filter(|f| cfg.steer(f, false).pair() == pair)
        .cloned()
        .collect()
}

/// Sends `fs` on pair 3 in chunks of 8 (one kick each).
fn send_all(drv: &mut NetDriver, fs: &[Vec<u8>]) {
    for chunk in fs.chunks(8) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(drv.send(3, &refs).unwrap(), refs.len());
        drv.reclaim_tx(3).unwrap();
    }
}

/// Receives on `pair` until `n` frames came or 5 s passed.
fn recv_n(drv: &mut NetDriver, pair: u16, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < n && t0.elapsed() < Duration::from_secs(5) {
        got.extend(drv.recv(pair).unwrap());
    }
    got
}

/// A loopback device whose pair 0 ran out of RX buffers: its driver, and the frames sent to
/// pairs 0 and 1, in the order sent.
struct Backlog {
    dev: Arc<Device>,
    drv: NetDriver,
    /// RSS over pairs 0 and 1 only (half the table each).
    cfg: RssConfig,
    p0: Vec<Vec<u8>>,
    p1: Vec<Vec<u8>>,
}

/// A loopback device with 16 RX buffers per queue and RSS over pairs 0 and 1; 20 frames for
/// pair 0 (4 more than its ring holds) are sent, then 8 for pair 1.
fn pair_0_out_of_buffers() -> Backlog {
    let cfg = RssConfig {
        table: (0..128).map(|i| i % 2).collect(),
        ..config(6)
    };
    let (dev, mut drv) = loopback(DriverOptions {
        queue_size: 16,
        ..DriverOptions::default()
    });
    assert_eq!(drv.set_rss(&cfg, PAIRS).unwrap(), 0, "RSS_CONFIG accepted");
    let fs: Vec<Vec<u8>> = frames(800, 61)
        .into_iter()
        .filter(|f| f[12..14] == [8, 0])
        .collect();
    let (p0, p1) = (steered_to(&fs, &cfg, 0), steered_to(&fs, &cfg, 1));
    let (p0, p1) = (p0[..20].to_vec(), p1[..8].to_vec());
    send_all(&mut drv, &p0);
    send_all(&mut drv, &p1);
    Backlog {
        dev,
        drv,
        cfg,
        p0,
        p1,
    }
}

/// One queue out of buffers holds back only its own frames (the receive FIFO is shared, but a
/// frame whose queue has no buffers waits on that queue's own list): pair 1's frames, sent
/// after pair 0 ran out, arrive at once; pair 0's arrive in order once its driver posts
/// buffers again; nothing is dropped.
#[test]
fn a_queue_out_of_buffers_holds_back_only_its_own_frames() {
    let mut b = pair_0_out_of_buffers();
    let inbox = b.dev.inbox();
    assert_eq!(
        (inbox.len(), inbox.waiting_len()),
        (4, 4),
        "pair 0's last four frames wait on its own list"
    );
    assert_eq!(recv_n(&mut b.drv, 1, 8), b.p1, "pair 1 is not held back");
    assert_eq!(recv_n(&mut b.drv, 0, 20), b.p0, "pair 0's, in order");
    assert!(inbox.is_empty());
    let c = b.dev.counters();
    assert_eq!((c.rx_frames, c.rx_dropped_too_small), (28, 0));
    assert_eq!(c.rx_queue_waits, 4, "pair 0's last four waited on its list");
    assert_eq!(c.rx_rss_hashed, 28, "each frame counted as steered once");
}

/// When the steering changes while frames wait for their queue, they are steered again, and
/// ahead of the frames that came after them: RSS_CONFIG moves every flow to pair 1, and pair
/// 0's four waiting frames arrive there before the ones sent later.
#[test]
fn frames_waiting_for_a_queue_follow_a_new_steering_in_order() {
    let mut b = pair_0_out_of_buffers();
    assert_eq!(recv_n(&mut b.drv, 1, 8), b.p1);
    let to_1 = RssConfig {
        table: vec![1; 128],
        ..b.cfg.clone()
    };
    assert_eq!(b.drv.set_rss(&to_1, PAIRS).unwrap(), 0);
    assert_eq!(b.dev.inbox().waiting_len(), 0, "in the FIFO, steered again");
    // The same flows again, sent after the new configuration.
    send_all(&mut b.drv, &b.p0[..4]);
    let mut want = b.p0[16..].to_vec();
    want.extend_from_slice(&b.p0[..4]);
    assert_eq!(recv_n(&mut b.drv, 1, 8), want, "the waiting frames first");
    // Pair 0 still holds the 16 that fitted before the change.
    assert_eq!(recv_n(&mut b.drv, 0, 16), b.p0[..16]);
    assert!(b.drv.recv(0).unwrap().is_empty() && b.dev.inbox().is_empty());
}

/// Frames waiting for their queue cross a device-state migration ahead of the FIFO's frames,
/// and reach the same queue, in order, on the destination.
#[test]
fn frames_waiting_for_a_queue_cross_a_device_state_migration() {
    let mut b = pair_0_out_of_buffers();
    b.dev.pause();
    let state = b.dev.save_state();
    assert_eq!(b.dev.inbox().waiting_len(), 4, "saving takes nothing");
    let dst = Device::new(DeviceConfig::with_queue_pairs(PAIRS)).unwrap();
    dst.set_loopback();
    support::migrate_driver(&mut b.drv, &dst, &state);
    assert_eq!(recv_n(&mut b.drv, 1, 8), b.p1);
    assert_eq!(recv_n(&mut b.drv, 0, 20), b.p0);
    assert!(dst.inbox().is_empty());
}
