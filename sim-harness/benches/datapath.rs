//! Datapath benchmarks through the real register interface and the IOMMU model:
//! - tx_dequeue/64B: the device dequeues 64-byte frames from a TX ring of 256 (one doorbell per
//!   ring-full), IOTLB on, dirty logging off and on, and without an IOTLB. Only the device's
//!   work after the doorbell is timed; the driver model fills the ring untimed.
//! - loopback/64B: TX dequeue + loopback + RX enqueue into posted buffers.
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

fn setup(logging: bool, iotlb: usize, loopback: bool) -> (Arc<Device>, NetDriver, Option<SharedMemory>) {
    let mut cfg = DeviceConfig::with_queue_pairs(1);
    cfg.iotlb_entries = iotlb;
    cfg.batch = RING;
    let dev = Device::new(cfg).expect("valid config");
    if loopback {
        dev.set_loopback();
    } else {
        dev.set_port(Arc::new(NullPort::default()));
    }
    let mut drv = NetDriver::in_process(&dev, DriverOptions { queue_size: RING, memory: 16 << 20, ..Default::default() }).expect("driver");
    drv.start().expect("start");
    let log = logging.then(|| {
        let len = 4096 * 8;
        let log = SharedMemory::new("bench-log", len).expect("memfd");
        dev.dma_map(DPDK_LOG_IOVA, len, Perms::RW, Backing::Fd { file: log.try_clone_file().expect("fd"), offset: 0 }).expect("map log");
        drv.enable_logging(DPDK_LOG_IOVA, len).expect("logging");
        log
    });
    (dev, drv, log)
}

fn run(drv: &mut NetDriver, iters: u64, frame: &[u8], recv: bool) -> Duration {
    let frames: Vec<&[u8]> = vec![frame; usize::from(RING)];
    let mem = drv.mem.clone();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        drv.reclaim_tx(0).expect("reclaim");
        let n = drv.enqueue_tx(0, &frames).expect("enqueue");
        assert_eq!(n, usize::from(RING));
        drv.ring(txq(0)).expect("ring").publish(&mem).expect("publish");
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
    for (name, logging, iotlb) in [("iotlb64_log_off", false, 64), ("iotlb64_log_on", true, 64), ("no_iotlb_log_off", false, 0)] {
        let (dev, mut drv, _log) = setup(logging, iotlb, false);
        g.bench_function(name, |b| b.iter_custom(|iters| run(&mut drv, iters, &frame, false)));
        assert!(dev.fault().is_none());
    }
    g.finish();
    let mut g = c.benchmark_group("loopback/64B");
    g.throughput(Throughput::Elements(RING.into()));
    for (name, logging) in [("log_off", false), ("log_on", true)] {
        let (dev, mut drv, _log) = setup(logging, 64, true);
        // Loopback times TX dequeue + RX enqueue (the doorbell runs both inline).
        g.bench_function(name, |b| b.iter_custom(|iters| run(&mut drv, iters, &frame, true)));
        assert!(dev.fault().is_none());
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = tx_dequeue
}
criterion_main!(benches);
