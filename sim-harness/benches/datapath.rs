//! Datapath benchmarks through the real register interface and the IOMMU model:
//! - tx_dequeue/64B: the device dequeues 64-byte frames from a TX ring of 256 (one doorbell per
//!   ring-full), IOTLB on, dirty logging off and on, and without an IOTLB. Only the device's
//!   work after the doorbell is timed; the driver model fills the ring untimed.
//! - loopback/64B: TX dequeue + loopback + RX enqueue into posted buffers.
//! - `packed_*`: the same on packed virtqueues (VIRTIO_F_RING_PACKED, virtio 1.2 2.8): one
//!   descriptor-ring span read per batch instead of avail ring + per-chain descriptor reads, and
//!   used descriptors written back in place.
//!
//! Frames per second = 256 / (time per iteration).

use bar_registers::lm::DPDK_LOG_IOVA;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use device::{Device, DeviceConfig, DmaMapper, NullPort};
use dma::{Backing, Perms, SharedMemory};
use sim_harness::driver::net::txq;
use sim_harness::driver::{DriverOptions, NetDriver};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RING: u16 = 256;

fn setup(
    logging: bool,
    iotlb: usize,
    loopback: bool,
    packed: bool,
) -> (Arc<Device>, NetDriver, Option<SharedMemory>) {
    let mut cfg = DeviceConfig::with_queue_pairs(1);
    cfg.iotlb_entries = iotlb;
    cfg.batch = RING;
    let dev = Device::new(cfg).expect("valid config");
    if loopback {
        dev.set_loopback();
    } else {
        dev.set_port(Arc::new(NullPort::default()));
    }
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            queue_size: RING,
            memory: 16 << 20,
            ..Default::default()
        }
        .with_packed(packed),
    )
    .expect("driver");
    assert_eq!(drv.is_packed(), packed);
    drv.start().expect("start");
    let log = logging.then(|| {
        // One bit per 4 KiB page of IOVA up to the top of guest memory (which starts at 1 GiB),
        // so every device write lands in the log and none is dropped as beyond its end.
        let top = drv.mem.base() + drv.mem.size();
        let len = (top / 4096).div_ceil(8).next_multiple_of(4096);
        let log = SharedMemory::new("bench-log", len).expect("memfd");
        dev.dma_map(
            DPDK_LOG_IOVA,
            len,
            Perms::RW,
            Backing::Fd {
                file: log.try_clone_file().expect("fd"),
                offset: 0,
            },
        )
        .expect("map log");
        drv.enable_logging(DPDK_LOG_IOVA, len).expect("logging");
        log
    });
    (dev, drv, log)
}

fn run(drv: &mut NetDriver, iters: u64, frame: &[u8], recv: bool) -> Duration {
    let frames: Vec<&[u8]> = vec![frame; usize::from(RING)];
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        drv.reclaim_tx(0).expect("reclaim");
        let n = drv.enqueue_tx(0, &frames).expect("enqueue");
        assert_eq!(n, usize::from(RING));
        drv.publish_no_kick(txq(0)).expect("publish");
        let t = Instant::now();
        drv.kick(txq(0)).expect("kick");
        total += t.elapsed();
        if recv {
            let got = drv.recv(0).expect("recv");
            assert_eq!(got.len(), usize::from(RING));
        }
    }
    total
}

fn tx_dequeue(c: &mut Criterion) {
    let mut frame = vec![0u8; 64];
    frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let mut g = c.benchmark_group("tx_dequeue/64B");
    g.throughput(Throughput::Elements(RING.into()));
    for (name, logging, iotlb, packed) in [
        ("iotlb64_log_off", false, 64, false),
        ("iotlb64_log_on", true, 64, false),
        ("no_iotlb_log_off", false, 0, false),
        ("packed_iotlb64_log_off", false, 64, true),
        ("packed_iotlb64_log_on", true, 64, true),
    ] {
        let (dev, mut drv, _log) = setup(logging, iotlb, false, packed);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| run(&mut drv, iters, &frame, false))
        });
        assert!(dev.fault().is_none());
        let ls = dev.log_stats();
        assert!(
            !logging || (ls.log_writes > 0 && ls.beyond_end == 0),
            "logging variant must really log: {ls:?}"
        );
    }
    g.finish();
    let mut g = c.benchmark_group("loopback/64B");
    g.throughput(Throughput::Elements(RING.into()));
    for (name, logging, packed) in [
        ("log_off", false, false),
        ("log_on", true, false),
        ("packed_log_off", false, true),
        ("packed_log_on", true, true),
    ] {
        let (dev, mut drv, _log) = setup(logging, 64, true, packed);
        // Loopback times TX dequeue + RX enqueue (the doorbell runs both inline).
        g.bench_function(name, |b| {
            b.iter_custom(|iters| run(&mut drv, iters, &frame, true))
        });
        assert!(dev.fault().is_none());
        let ls = dev.log_stats();
        assert!(
            !logging || (ls.log_writes > 0 && ls.beyond_end == 0),
            "logging variant must really log: {ls:?}"
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = tx_dequeue
}
criterion_main!(benches);
