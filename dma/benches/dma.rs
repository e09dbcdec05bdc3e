//! DMA hot-path costs on an IOTLB hit: the per-packet work of a TX of a 64-byte frame
//! (12-byte virtio-net header read, 64-byte packet read, used-idx publish), logging off/on.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use dma::{AddressSpace, DmaEngine, DmaKind, LogConfig, Perms, SharedMemory};

const LOG_IOVA: u64 = 0x1000_0000_0000;
const MEM: u64 = 16 << 20;

fn engine(logging: bool) -> (SharedMemory, SharedMemory, DmaEngine) {
    let mem = SharedMemory::new("bench-guest", MEM).unwrap();
    let log = SharedMemory::new("bench-log", 0x1000).unwrap();
    let space = Arc::new(AddressSpace::new());
    mem.map_into(&space, 0, 0, MEM, Perms::RW).unwrap();
    log.map_into(&space, LOG_IOVA, 0, 0x1000, Perms::RW)
        .unwrap();
    let mut eng = DmaEngine::new(space, 512);
    if logging {
        eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
    }
    // Warm the IOTLB.
    let mut b = [0u8; 64];
    eng.read(0x10000, &mut b, DmaKind::PacketRead).unwrap();
    eng.publish_u16(0x20002, 0, DmaKind::RingWrite).unwrap();
    (mem, log, eng)
}

fn bench(c: &mut Criterion) {
    for logging in [false, true] {
        let tag = if logging { "log_on" } else { "log_off" };
        let (_mem, _log, mut eng) = engine(logging);
        let mut g = c.benchmark_group(format!("dma_{tag}"));
        let mut hdr = [0u8; 12];
        let mut pkt = [0u8; 64];
        g.bench_function("read_12", |b| {
            b.iter(|| {
                eng.read(black_box(0x10000), &mut hdr, DmaKind::PacketRead)
                    .unwrap();
                black_box(&hdr);
            })
        });
        g.bench_function("read_64", |b| {
            b.iter(|| {
                eng.read(black_box(0x10800), &mut pkt, DmaKind::PacketRead)
                    .unwrap();
                black_box(&pkt);
            })
        });
        let mut idx = 0u16;
        g.bench_function("publish_u16", |b| {
            b.iter(|| {
                idx = idx.wrapping_add(1);
                eng.publish_u16(black_box(0x20002), idx, DmaKind::RingWrite)
                    .unwrap();
            })
        });
        g.bench_function("write_64", |b| {
            b.iter(|| {
                eng.write(black_box(0x30000), &pkt, DmaKind::PacketWrite)
                    .unwrap();
            })
        });
        g.bench_function("tx_64B_hdr12_pkt64_publish", |b| {
            b.iter(|| {
                eng.read(black_box(0x10000), &mut hdr, DmaKind::PacketRead)
                    .unwrap();
                eng.read(black_box(0x10800), &mut pkt, DmaKind::PacketRead)
                    .unwrap();
                idx = idx.wrapping_add(1);
                eng.publish_u16(black_box(0x20002), idx, DmaKind::RingWrite)
                    .unwrap();
            })
        });
        g.finish();
        assert_eq!(eng.iommu_stats().faults(), 0);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
