//! The DMA_MAP / DMA_UNMAP path a guest vIOMMU in strict mode exercises: QEMU's vfio-user client
//! sends one synchronous DMA_MAP per IOTLB entry, each with its own fd of the guest-RAM memfd and
//! an IOVA unrelated to the file offset, and a DMA_UNMAP when the guest unmaps the buffer
//! (hw/vfio/listener.c vfio_iommu_map_notify). Measured: one 4 KiB map + unmap pair over a real
//! socket to a served device (our `Client`, as QEMU would send them), with a few hundred other
//! mappings live, as the e2e strict-mode guest has; and the same pair on the `AddressSpace`
//! alone, which is the server's own share of the cost.

use criterion::{criterion_group, criterion_main, Criterion};
use device::{Device, DeviceConfig, DmaMapper, MsixOwner};
use dma::{AddressSpace, Backing, Perms, SharedMemory};
use sim_harness::serve::DeviceBackend;
use sim_harness::vfio_user::client::Client;
use sim_harness::vfio_user::{Server, ServerOptions};
use std::sync::Arc;

const RAM: u64 = 64 << 20;
const LIVE: u64 = 300;
const IOVA_TOP: u64 = 0xffff_f000; // intel-iommu hands out IOVAs downwards from just below 4 GiB

fn page_map(i: u64) -> (u64, u64) {
    (IOVA_TOP - i * 0x1000, (i * 7919 % (RAM / 0x1000)) * 0x1000)
}

fn bench(c: &mut Criterion) {
    let ram = SharedMemory::new("guest-ram", RAM).unwrap();
    let mut g = c.benchmark_group("viommu_map");

    // The table alone (no socket, no device lock).
    let space = AddressSpace::new();
    for i in 1..=LIVE {
        let (iova, off) = page_map(i);
        let file = ram.try_clone_file().unwrap();
        space
            .map(iova, 0x1000, Perms::RW, Backing::Fd { file, offset: off })
            .unwrap();
    }
    g.bench_function("address_space_map_unmap_4k", |b| {
        b.iter(|| {
            let (iova, off) = page_map(0);
            let file = ram.try_clone_file().unwrap();
            space
                .map(iova, 0x1000, Perms::RW, Backing::Fd { file, offset: off })
                .unwrap();
            space.unmap(iova, 0x1000).unwrap();
        })
    });

    // Over the socket to a served device, as QEMU sends them.
    let dir = std::env::temp_dir().join(format!("vdpa-bench-viommu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = DeviceConfig::with_queue_pairs(1);
    cfg.msix_owner = MsixOwner::Vmm;
    let dev = Device::new(cfg).unwrap();
    let server = Arc::new(
        Server::bind(
            &dir.join("dev.sock"),
            DeviceBackend::new(dev),
            ServerOptions::default(),
        )
        .unwrap(),
    );
    let s = server.clone();
    std::thread::spawn(move || {
        let _ = s.serve();
    });
    let client = Client::connect(&dir.join("dev.sock")).unwrap();
    for i in 1..=LIVE {
        let (iova, off) = page_map(i);
        let file = ram.try_clone_file().unwrap();
        client
            .dma_map(iova, 0x1000, Perms::RW, Backing::Fd { file, offset: off })
            .unwrap();
    }
    g.bench_function("socket_map_unmap_4k", |b| {
        b.iter(|| {
            let (iova, off) = page_map(0);
            let file = ram.try_clone_file().unwrap();
            client
                .dma_map(iova, 0x1000, Perms::RW, Backing::Fd { file, offset: off })
                .unwrap();
            client.dma_unmap(iova, 0x1000).unwrap();
        })
    });
    g.finish();
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
