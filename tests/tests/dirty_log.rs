//! Dirty-page logging: after traffic with logging on, the log holds every page the device
//! wrote (found by diffing memory snapshots taken around the device's work), in the vhost
//! bitmap format, and the device never writes outside [base, end). Every test runs on both ring
//! layouts (split, and packed with its in-place used descriptors).

use bar_registers::lm::DPDK_LOG_IOVA;
use device::{Device, DeviceConfig, DmaMapper};
use dma::{Backing, Perms, SharedMemory, PAGE_SIZE};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::net::{rxq, txq};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;
use std::sync::Arc;

struct Setup {
    dev: Arc<Device>,
    drv: NetDriver,
    log: SharedMemory,
    log_len: u64,
}

/// A loopback device with logging into a log buffer mapped at DPDK's IFCVF_LOG_BASE, sized for
/// guest memory (one bit per 4 KiB page of IOVA), with one spare page after `end` as a canary.
const LAYOUTS: [bool; 2] = [false, true];

fn setup(granularity: u64, packed: bool) -> Setup {
    setup_with(granularity, packed, true)
}

/// [`setup`], with the device looping its TX frames back to its RX queues or not (frames then
/// go to the null port: a doorbell writes nothing but the TX used ring).
fn setup_with(granularity: u64, packed: bool, loopback: bool) -> Setup {
    let mut cfg = DeviceConfig::with_queue_pairs(2);
    cfg.log_granularity = granularity;
    let dev = Device::new(cfg).unwrap();
    if loopback {
        dev.set_loopback();
    }
    let opts = DriverOptions {
        queue_pairs: 2,
        memory: 16 << 20,
        ..Default::default()
    }
    .with_packed(packed);
    let mut drv = sim_harness::driver::in_process(&dev, opts).unwrap();
    drv.start().unwrap();
    let top = drv.opts.iova_base + drv.opts.memory;
    let log_len = (top / PAGE_SIZE).div_ceil(8).next_multiple_of(8);
    let log = SharedMemory::new("log", log_len + PAGE_SIZE).unwrap();
    log.fill(log_len, PAGE_SIZE, 0xA5).unwrap();
    dev.dma_map(
        DPDK_LOG_IOVA,
        log_len + PAGE_SIZE,
        Perms::RW,
        Backing::Fd {
            file: log.try_clone_file().unwrap(),
            offset: 0,
        },
    )
    .unwrap();
    drv.enable_logging(DPDK_LOG_IOVA, log_len).unwrap();
    Setup {
        dev,
        drv,
        log,
        log_len,
    }
}

fn logged(log: &SharedMemory, pfn: u64) -> bool {
    let mut b = [0u8];
    log.read(pfn / 8, &mut b).unwrap();
    b[0] & (1 << (pfn % 8)) != 0
}

/// Queues TX frames on both pairs without a doorbell, snapshots guest memory, kicks, snapshots
/// again: every changed page was written by the device alone.
fn traffic_round(s: &mut Setup, rng: &mut SmallRng, seq: &mut u64) -> Vec<u64> {
    let mac = s.drv.mac().unwrap();
    for p in 0..2u16 {
        s.drv.recv(p).unwrap();
        let fs: Vec<Vec<u8>> = (0..rng.gen_range(1..64))
            .map(|_| {
                *seq += 1;
                frames::build(mac, mac, p, *seq, rng.gen_range(60..=1514), rng)
            })
            .collect();
        let refs: Vec<&[u8]> = fs.iter().map(Vec::as_slice).collect();
        s.drv.reclaim_tx(p).unwrap();
        s.drv.enqueue_tx(p, &refs).unwrap();
        s.drv.publish_no_kick(txq(p)).unwrap();
    }
    let before = s.drv.mem.shm().snapshot();
    for p in 0..2u16 {
        s.drv.kick(txq(p)).unwrap();
    }
    let after = s.drv.mem.shm().snapshot();
    let base_pfn = s.drv.opts.iova_base / PAGE_SIZE;
    before
        .chunks(PAGE_SIZE as usize)
        .zip(after.chunks(PAGE_SIZE as usize))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| base_pfn + i as u64)
        .collect()
}

#[test]
fn log_holds_every_page_the_device_wrote() {
    for packed in LAYOUTS {
        log_holds_every_page(packed);
    }
}

fn log_holds_every_page(packed: bool) {
    let mut s = setup(PAGE_SIZE, packed);
    let mut rng = SmallRng::seed_from_u64(21);
    let mut seq = 0;
    let mut total_dirty = 0;
    for _ in 0..30 {
        // Harvest and clear (a VMM's iteration), then one round of device work.
        for w in (0..s.log_len).step_by(8) {
            s.log.swap_u64(w, 0).unwrap();
        }
        let dirty = traffic_round(&mut s, &mut rng, &mut seq);
        assert!(
            !dirty.is_empty(),
            "the device wrote RX buffers and used rings"
        );
        for &pfn in &dirty {
            assert!(
                logged(&s.log, pfn),
                "page {pfn:#x} (IOVA {:#x}) written by the device but not logged",
                pfn * PAGE_SIZE
            );
        }
        total_dirty += dirty.len();
    }
    assert!(total_dirty > 100);
    // Used rings are logged too (the DPDK driver only adds them in software at stop); packed:
    // the descriptor ring, where the used descriptors are written in place.
    let used_pfn = if packed {
        s.drv.packed_ring(rxq(0)).unwrap().desc
    } else {
        s.drv.ring(rxq(0)).unwrap().used
    } / PAGE_SIZE;
    let mut b = [0u8];
    s.log.read(used_pfn / 8, &mut b).unwrap();
    assert_ne!(b[0] & (1 << (used_pfn % 8)), 0, "used ring page logged");
    // Nothing written past `end`.
    let mut tail = vec![0u8; PAGE_SIZE as usize];
    s.log.read(s.log_len, &mut tail).unwrap();
    assert!(
        tail.iter().all(|&b| b == 0xA5),
        "the device wrote outside [base, end)"
    );
    assert_eq!(s.dev.log_stats().faults, 0);
    assert!(s.dev.bus_stats().get(dma::DmaKind::LogWrite).transactions > 0);
}

/// Without loopback a TX doorbell's last write is the re-armed notification (split:
/// avail_event in the used ring, after used->idx was published; packed: the device event
/// suppression area). Its page must be in the log when the doorbell returns, like everything
/// else the service wrote, and not wait for the queue's next publish.
#[test]
fn log_holds_a_tx_only_doorbells_pages_when_it_returns() {
    for packed in LAYOUTS {
        let mut s = setup_with(PAGE_SIZE, packed, false);
        let mut rng = SmallRng::seed_from_u64(22);
        let mut seq = 0;
        let mut total_dirty = 0;
        for _ in 0..10 {
            for w in (0..s.log_len).step_by(8) {
                s.log.swap_u64(w, 0).unwrap();
            }
            let dirty = traffic_round(&mut s, &mut rng, &mut seq);
            for &pfn in &dirty {
                assert!(
                    logged(&s.log, pfn),
                    "packed {packed}: page {pfn:#x} written by a TX doorbell but not logged",
                );
            }
            total_dirty += dirty.len();
        }
        assert!(total_dirty >= 10, "every round wrote the TX used rings");
        assert_eq!(s.dev.counters().rx_frames, 0, "nothing looped back");
    }
}

#[test]
fn log_bits_match_an_independent_write_trace() {
    for packed in LAYOUTS {
        log_bits_match_trace(packed);
    }
}

fn log_bits_match_trace(packed: bool) {
    let mut s = setup(PAGE_SIZE, packed);
    let top = s.drv.opts.iova_base + s.drv.opts.memory;
    let trace = Arc::new(dma::WriteTrace::new(top));
    s.dev.set_write_trace(Some(trace.clone()));
    let mut rng = SmallRng::seed_from_u64(22);
    let mut seq = 0;
    for w in (0..s.log_len).step_by(8) {
        s.log.swap_u64(w, 0).unwrap();
    }
    for _ in 0..10 {
        traffic_round(&mut s, &mut rng, &mut seq);
    }
    let traced = trace.pages();
    assert!(!traced.is_empty());
    for pfn in 0..top / PAGE_SIZE {
        assert_eq!(
            logged(&s.log, pfn),
            traced.contains(&pfn),
            "page {pfn:#x}: log and write trace disagree"
        );
    }
}

#[test]
fn coarse_granularity_marks_whole_granules() {
    for (g, packed) in [
        (64 << 10, false),
        (2 << 20, false),
        (64 << 10, true),
        (2 << 20, true),
    ] {
        let mut s = setup(g, packed);
        let mut rng = SmallRng::seed_from_u64(23);
        let mut seq = 0;
        for w in (0..s.log_len).step_by(8) {
            s.log.swap_u64(w, 0).unwrap();
        }
        let dirty = traffic_round(&mut s, &mut rng, &mut seq);
        let per = g / PAGE_SIZE;
        for &pfn in &dirty {
            let first = pfn / per * per;
            for p in first..first + per {
                assert!(logged(&s.log, p), "granularity {g}: page {p:#x} of the granule of written page {pfn:#x} not marked");
            }
        }
        let mut tail = vec![0u8; PAGE_SIZE as usize];
        s.log.read(s.log_len, &mut tail).unwrap();
        assert!(tail.iter().all(|&b| b == 0xA5));
    }
}

#[test]
fn nothing_logged_while_disabled_and_log_too_small_is_bounded() {
    for packed in LAYOUTS {
        nothing_logged_while_disabled(packed);
    }
}

fn nothing_logged_while_disabled(packed: bool) {
    let mut s = setup(PAGE_SIZE, packed);
    let mut rng = SmallRng::seed_from_u64(24);
    let mut seq = 0;
    s.drv.disable_logging().unwrap();
    for w in (0..s.log_len).step_by(8) {
        s.log.swap_u64(w, 0).unwrap();
    }
    let writes = s.dev.bus_stats().get(dma::DmaKind::LogWrite).transactions;
    traffic_round(&mut s, &mut rng, &mut seq);
    assert_eq!(
        s.dev.bus_stats().get(dma::DmaKind::LogWrite).transactions,
        writes,
        "no log writes while disabled"
    );
    let mut all = vec![0u8; s.log_len as usize];
    s.log.read(0, &mut all).unwrap();
    assert!(all.iter().all(|&b| b == 0));
    // A log whose end covers only the first bytes: pages beyond are counted, never written.
    s.drv.enable_logging(DPDK_LOG_IOVA, 8).unwrap();
    traffic_round(&mut s, &mut rng, &mut seq);
    assert!(s.dev.log_stats().beyond_end > 0);
    let mut rest = vec![0u8; (s.log_len - 8 + PAGE_SIZE) as usize];
    s.log.read(8, &mut rest).unwrap();
    assert!(
        rest[..(s.log_len - 8) as usize].iter().all(|&b| b == 0),
        "written past end"
    );
    assert!(rest[(s.log_len - 8) as usize..].iter().all(|&b| b == 0xA5));
}
