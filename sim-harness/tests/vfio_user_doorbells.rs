//! Shared-memory doorbells over vfio-user (`serve --doorbell mmap`): the region info exchange
//! QEMU does (two steps, the memfd with the final reply), and traffic whose every doorbell is a
//! store into the mapped notify page, frames checked byte for byte.

mod support;

use bar_registers::NotifyLayout;
use device::doorbell::PollPolicy;
use device::{DeviceConfig, InterruptRecorder, MsixOwner};
use dma::SharedMemory;
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;
use sim_harness::serve::{DeviceBackend, DoorbellMode};
use sim_harness::vfio_user::wire::{self, Command, SparseArea};
use sim_harness::vfio_user::{Backend, Client, ServerOptions};
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TestServer;
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

fn mmap_server(pairs: u16, notify: NotifyLayout) -> TestServer {
    let mut cfg = DeviceConfig::with_queue_pairs(pairs);
    cfg.msix_owner = MsixOwner::Vmm;
    cfg.layout.notify = notify;
    let dev = device::Device::new(cfg).unwrap();
    dev.set_loopback();
    let backend =
        DeviceBackend::with_doorbells(dev, DoorbellMode::Mmap, PollPolicy::default()).unwrap();
    TestServer::with_backend(backend, ServerOptions::default())
}

fn total_doorbells(ts: &TestServer) -> u64 {
    ts.dev().counters().queues.iter().map(|q| q.doorbells).sum()
}

/// (doorbells, of them through the shared notify window) from one reading of the counters:
/// the engine may still take the driver's last RX refill kick while a test reads them, and
/// it counts both under the device lock, so only one reading compares them.
fn doorbells_and_kicks(ts: &TestServer) -> (u64, u64) {
    assert!(ts.server.device().doorbell_engine().is_some());
    let c = ts.dev().counters();
    (
        c.queues.iter().map(|q| q.doorbells).sum(),
        c.shared_doorbells,
    )
}

/// Doorbells taken from the shared notify window (by the engine, or by a register access
/// ahead of itself).
fn kicks(ts: &TestServer) -> u64 {
    assert!(ts.server.device().doorbell_engine().is_some());
    ts.dev().counters().shared_doorbells
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn region_info_request(c: &Client, index: u32, argsz: u32) -> client::Reply {
    let mut p = wire::encode_region_info(&vfio_region_info {
        argsz,
        index,
        ..Default::default()
    });
    p.resize(argsz as usize, 0);
    c.request(Command::DeviceGetRegionInfo as u16, 0, &p, &[])
        .unwrap()
}

use sim_harness::vfio_user::client;

/// BAR0's info, as QEMU asks for it: the short query learns the argsz and gets no
/// descriptor (and no FLAG_CAPS with a cap_offset QEMU would refuse); the full one gets the
/// sparse area (the notify page) and the memfd, whose notify slots ring the device's doorbells.
#[test]
fn bar0_offers_the_notify_page_and_its_memfd_in_two_steps() {
    let ts = mmap_server(2, NotifyLayout::Compact);
    let c = ts.client();
    let l = ts.dev().layout().clone();
    let full = (wire::REGION_INFO_SIZE + 16 + 16) as u32;
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

    let short = region_info_request(&c, 0, 32);
    assert_eq!(short.errno(), None);
    assert!(short.fds.is_empty(), "no descriptor with the short reply");
    assert_eq!(short.payload.len(), 32);
    let info = wire::parse_region_info(&short.payload).unwrap();
    assert_eq!(
        (
            info.argsz,
            info.flags,
            info.cap_offset,
            info.size,
            info.offset
        ),
        (full, rw | VFIO_REGION_INFO_FLAG_MMAP, 0, l.bar_size(0), 0)
    );

    let long = region_info_request(&c, 0, full);
    assert_eq!(long.payload.len(), full as usize);
    let info = wire::parse_region_info(&long.payload).unwrap();
    assert_eq!(
        (info.argsz, info.flags, info.cap_offset),
        (
            full,
            rw | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS,
            32
        )
    );
    assert_eq!(
        wire::parse_sparse_mmap_cap(&long.payload),
        Ok(Some(vec![SparseArea {
            offset: l.notify.offset,
            size: 0x1000
        }]))
    );
    assert_eq!(long.fds.len(), 1, "the memfd comes with the full reply");
    let file = File::from(long.fds.into_iter().next().unwrap());
    assert_eq!(file.metadata().unwrap().len(), l.bar_size(0));

    // Only BAR0 is offered; config space and the other BARs trap.
    for index in [2u32, 4, 7] {
        let r = region_info_request(&c, index, 128);
        let i = wire::parse_region_info(&r.payload).unwrap();
        assert_eq!(i.flags & VFIO_REGION_INFO_FLAG_MMAP, 0, "region {index}");
        assert!(r.fds.is_empty());
    }
    // The client did the same at connect and mapped exactly the notify page; like QEMU it
    // then posts no write.
    assert!(c.mmap_offered());
    assert_eq!(c.mapped_areas(), vec![(0, l.notify.offset, 0x1000)]);
    c.set_posted_writes(true);
    assert!(!c.posts_writes());

    // A store into the slot of queue 3 (our own mapping of the memfd) is a doorbell; the
    // device is not running, so it is a spurious one, as a trapped write would be.
    let mine = SharedMemory::map_file(file, l.notify.offset, 0x1000).unwrap();
    let spurious = ts.dev().counters().spurious_doorbells;
    mine.store_release(3 * u64::from(l.notify_multiplier), &3u16.to_le_bytes())
        .unwrap();
    wait_until("the kick reaches the device", || {
        ts.dev().counters().queues[3].doorbells == 1
    });
    assert_eq!(ts.dev().counters().spurious_doorbells, spurious + 1);
    assert_eq!(kicks(&ts), 1);
    assert_eq!(
        mine.read_u32(3 * u64::from(l.notify_multiplier)).unwrap(),
        device::doorbell::IDLE,
        "consumed"
    );

    // QEMU DMA-maps the mapped notify page where the guest put BAR0, without a descriptor
    // (peer-to-peer): recognised as our own area, and accepted.
    let bar0: u64 = 0xfebf_8000;
    c.write(
        bar_registers::REGION_CONFIG,
        0x10,
        &(bar0 as u32).to_le_bytes(),
    )
    .unwrap();
    c.write(bar_registers::REGION_CONFIG, 0x14, &0u32.to_le_bytes())
        .unwrap();
    let b = ts.server.device();
    assert!(b.is_own_mmap_area(bar0 + l.notify.offset, 0x1000));
    assert!(!b.is_own_mmap_area(bar0 + l.notify.offset - 0x1000, 0x1000));
    assert!(!b.is_own_mmap_area(bar0 + l.notify.offset, 0x2000));
    c.map(bar0 + l.notify.offset, 0x1000, dma::Perms::RW, None)
        .unwrap();
}

/// Sends `rounds` x 8 frames of 60-1514 bytes on each pair and checks that each one comes
/// back through the loopback port byte for byte, exactly once.
fn loopback_traffic(drv: &mut NetDriver, pairs: u16, rounds: u64, seed: u64) {
    let mac = drv.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut sent: HashMap<(u16, u64), Vec<u8>> = HashMap::new();
    let mut got = 0usize;
    let mut take = |drv: &mut NetDriver, sent: &mut HashMap<(u16, u64), Vec<u8>>| {
        for p in 0..pairs {
            for f in drv.recv(p).unwrap() {
                let st = frames::check(&f).unwrap();
                let want = sent
                    .remove(&(st.stream, st.seq))
                    .unwrap_or_else(|| panic!("unexpected or repeated frame {st:?}"));
                assert_eq!(f, want, "frame {st:?} bytes");
                got += 1;
            }
        }
    };
    for round in 0..rounds {
        for p in 0..pairs {
            let stream = (seed as u16) << 8 | p;
            let batch: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    let seq = round * 8 + i;
                    frames::build(
                        mac,
                        mac,
                        stream,
                        seq,
                        60 + (seq as usize * 181) % 1455,
                        &mut rng,
                    )
                })
                .collect();
            for (i, f) in batch.iter().enumerate() {
                sent.insert((stream, round * 8 + i as u64), f.clone());
            }
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            // The engine runs the queue after the doorbell store returns: the TX ring may
            // still be full from earlier batches. Retry until it takes them.
            let (mut done, t0) = (0, Instant::now());
            while done < refs.len() {
                done += drv.send(p, &refs[done..]).unwrap();
                take(drv, &mut sent);
                assert!(t0.elapsed() < Duration::from_secs(10), "TX ring stuck");
            }
        }
    }
    let t0 = Instant::now();
    while !sent.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        take(drv, &mut sent);
        std::thread::yield_now();
    }
    assert!(sent.is_empty(), "{} frames never came back", sent.len());
    assert_eq!(got as u64, rounds * 8 * u64::from(pairs));
}

/// The driver model over the socket with every doorbell a store into the mapped notify
/// window (both notify layouts): frames come back byte-exact and every doorbell the device
/// counted came through the engine. With `set_use_mmap(false)` the same client's doorbells
/// trap again.
#[test]
fn doorbells_through_shared_memory_carry_traffic_byte_exact() {
    for (layout, pages) in [
        (NotifyLayout::Compact, 1u64),
        (NotifyLayout::PagePerQueue, 5),
    ] {
        let ts = mmap_server(2, layout);
        let c = Arc::new(ts.client());
        let l = ts.dev().layout().clone();
        assert_eq!(
            c.mapped_areas(),
            vec![(0, l.notify.offset, pages * 0x1000)],
            "{layout:?}"
        );
        let irq = Arc::new(InterruptRecorder::new(l.msix_vectors));
        let pump = c.wire_interrupts(irq.clone()).unwrap();
        let mut drv = NetDriver::new(
            c.clone(),
            irq.clone(),
            DriverOptions {
                queue_pairs: 2,
                ..Default::default()
            },
        )
        .unwrap();
        drv.start().unwrap();
        loopback_traffic(&mut drv, 2, 40, 1);
        let (doorbells, k) = doorbells_and_kicks(&ts);
        assert!(doorbells > 0, "{layout:?}: no doorbell");
        assert_eq!(
            doorbells, k,
            "{layout:?}: every doorbell came through shared memory"
        );
        assert_eq!(ts.dev().counters().spurious_doorbells, 0);
        assert!(irq.total() > 0, "interrupts through the eventfds");

        // Forced trapped doorbells: the same traffic, the engine sees none of it.
        c.set_use_mmap(false);
        loopback_traffic(&mut drv, 2, 10, 2);
        assert_eq!(kicks(&ts), k, "{layout:?}: no kick through shared memory");
        assert!(
            total_doorbells(&ts) > doorbells,
            "{layout:?}: trapped doorbells"
        );

        let s = ts.server.device().session_stats();
        assert_eq!(s["doorbell_path"], "mmap");
        assert_eq!(s["doorbells_mmap"], k);
        assert_eq!(s["doorbells_trapped"], total_doorbells(&ts) - k);
        assert_eq!(s["tx_frames"], 2 * 8 * 50);
        assert_eq!(ts.dev().fault(), None);
        drv.stop().unwrap();
        drop(drv);
        drop(pump);
        drop(c);
        ts.wait_ended(1);
    }
}

/// VIRTIO_F_NOTIFICATION_DATA and VIRTIO_F_RING_RESET through the mapped notify window, on
/// both ring layouts: every kick is a 32-bit store of vqn and next position into the slot,
/// none is counted bad, frames come back byte-exact; a TX and an RX queue reset and re-enabled
/// with new rings (their slots idle) carry traffic again.
#[test]
fn notification_data_and_ring_reset_through_the_shared_notify_window() {
    use bar_registers::virtio::{bits, default_driver_features};
    use sim_harness::driver::net::{rxq, txq};
    for packed in [false, true] {
        let ts = mmap_server(2, NotifyLayout::Compact);
        let c = Arc::new(ts.client());
        let l = ts.dev().layout().clone();
        let irq = Arc::new(InterruptRecorder::new(l.msix_vectors));
        let pump = c.wire_interrupts(irq.clone()).unwrap();
        let mut drv = NetDriver::new(
            c.clone(),
            irq.clone(),
            DriverOptions {
                queue_pairs: 2,
                features: default_driver_features()
                    | 1 << bits::NOTIFICATION_DATA
                    | 1 << bits::RING_RESET,
                ..Default::default()
            }
            .with_packed(packed),
        )
        .unwrap();
        drv.start().unwrap();
        let want = 1u64 << bits::NOTIFICATION_DATA | 1 << bits::RING_RESET;
        assert_eq!(drv.features & want, want);
        loopback_traffic(&mut drv, 2, 20, 3);
        let (doorbells, k) = doorbells_and_kicks(&ts);
        assert!(
            k > 0 && doorbells == k,
            "packed {packed}: {doorbells} doorbells, {k} kicks"
        );
        for q in [txq(0), rxq(0)] {
            drv.reset_queue(q).unwrap();
            let slot = ts.server.device().doorbell_engine().unwrap().area().slot(q);
            assert_eq!(
                slot,
                Some(device::doorbell::IDLE),
                "packed {packed}: queue {q}"
            );
        }
        for q in [rxq(0), txq(0)] {
            drv.enable_queue_after_reset(q, 64).unwrap();
        }
        loopback_traffic(&mut drv, 2, 20, 4);
        let cnt = ts.dev().counters();
        assert_eq!(cnt.bad_notification_data, 0, "packed {packed}");
        assert_eq!((cnt.queue_resets, cnt.queue_reset_refused), (2, 0));
        assert!(kicks(&ts) > k, "packed {packed}: kicks after the re-enable");
        assert_eq!(ts.dev().fault(), None);
        drv.stop().unwrap();
        drop(drv);
        drop(pump);
        drop(c);
        ts.wait_ended(1);
    }
}

/// A trap-mode backend offers nothing for mmap, so the client maps nothing and QEMU would keep
/// posting its writes.
#[test]
fn trap_mode_offers_no_mapping() {
    let dev = support::vmm_device(1);
    let backend =
        DeviceBackend::with_doorbells(dev, DoorbellMode::Trap, PollPolicy::default()).unwrap();
    assert!(backend.doorbell_engine().is_none());
    assert!(!backend.is_own_mmap_area(0, 1 << 20));
    let ts = TestServer::with_backend(backend, ServerOptions::default());
    let c = ts.client();
    assert!(!c.mmap_offered());
    assert!(c.mapped_areas().is_empty());
    c.set_posted_writes(true);
    assert!(c.posts_writes());
    assert_eq!(ts.server.device().session_stats()["doorbell_path"], "trap");
}
