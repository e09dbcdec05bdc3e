//! Writes the seed corpora under fuzz/corpus/<target>/seed-* (committed; see fuzz/README.md):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml -p vdpa-fuzz-harness --example gen_corpus
//! ```
//!
//! Seeds are real exchanges encoded in each target's input format: vfio-user sessions (map,
//! driver start, doorbells, interrupts, migration, dirty logging), valid and hostile ring
//! images, device-state streams saved from a device after loopback traffic, and the bundled
//! scenario files.

use device::{Device, DeviceConfig, MsixOwner};
use sim_harness::driver::DriverOptions;
use std::path::{Path, PathBuf};
use vdpa_fuzz_harness::cursor::Writer;
use vdpa_fuzz_harness::vfio::{seed, Op};

/// Named seeds of one target.
type Seeds = Vec<(String, Vec<u8>)>;

fn write(dir: &Path, name: &str, data: &[u8]) {
    let p = dir.join(format!("seed-{name}"));
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn vfio_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut w = Writer::default();
    seed::version(&mut w, 1);
    seed::op(&mut w, Op::GetInfo, false);
    w.u32(16);
    for i in 0..9 {
        seed::op(&mut w, Op::RegionInfo, false);
        w.u32(32).u32(i);
    }
    // BAR0 again with the argsz its reply asked for: the sparse mmap capability and the
    // notify window's memfd (QEMU's second query, hw/vfio/device.c).
    seed::op(&mut w, Op::RegionInfo, false);
    w.u32(64).u32(0);
    for i in 0..5 {
        seed::op(&mut w, Op::IrqInfo, false);
        w.u32(16).u32(i);
    }
    seed::region_read(&mut w, 7, 0, 64);
    seed::region_read(&mut w, 0, 0, 64);
    v.push(("probe", w.0));

    for (name, packed) in [("traffic-split", false), ("traffic-packed", true)] {
        let mut w = Writer::default();
        seed::version(&mut w, 2);
        // MSI-X index 2, DATA_EVENTFD | ACTION_TRIGGER, vectors 0..3.
        seed::set_irqs(&mut w, 0x24, 2, 0, 3, 3);
        seed::dma_map(&mut w, 0, 4, &[]);
        // MAC | STATUS | MRG_RXBUF | CTRL_VQ | MQ bits (low word) as DPDK asks.
        seed::driver_setup(
            &mut w,
            (1 << 5) | (1 << 15) | (1 << 16) | (1 << 17) | (1 << 22),
            packed,
            16,
        );
        seed::doorbell(&mut w, 0, 0, true);
        seed::doorbell(&mut w, 1, 0, true);
        seed::doorbell(&mut w, 2, 0, true);
        seed::region_read(&mut w, 0, 0, 0x3a);
        seed::op(&mut w, Op::DmaUnmap, false);
        w.u32(0).u8(0).u64(4 * 4096).u8(0);
        seed::op(&mut w, Op::DeviceReset, false);
        v.push((name, w.0));
    }

    // Migration: STOP, STOP_COPY, read the stream, back to RUNNING; then RESUMING with a
    // real stream, STOP, RUNNING.
    let mut cfg = DeviceConfig::with_queue_pairs(1);
    cfg.msix_owner = MsixOwner::Vmm;
    let dev = Device::new(cfg).unwrap();
    let stream = dev.save_state();
    let mut w = Writer::default();
    seed::version(&mut w, 1);
    seed::op(&mut w, Op::DeviceFeature, false);
    w.u32(16).u32(0x1_0000 | 1).u8(0); // GET MIGRATION
    seed::mig_state(&mut w, 1);
    seed::mig_state(&mut w, 3);
    seed::op(&mut w, Op::MigDataRead, false);
    w.u32(8 + 8192).u32(8192);
    seed::mig_state(&mut w, 1);
    seed::mig_state(&mut w, 4);
    seed::op(&mut w, Op::MigDataWrite, false);
    w.u32(8 + stream.len() as u32)
        .u32(stream.len() as u32)
        .u16(stream.len() as u16)
        .bytes(&stream);
    seed::mig_state(&mut w, 1);
    seed::mig_state(&mut w, 2);
    v.push(("migration", w.0));

    // Dirty logging over the mapped RAM, traffic, report, stop.
    let mut w = Writer::default();
    seed::version(&mut w, 1);
    seed::dma_map(&mut w, 0, 4, &[]);
    seed::op(&mut w, Op::LoggingStart, false);
    w.u64(4096).u8(1).u64(0x10_0000).u64(4 * 4096);
    seed::driver_setup(&mut w, 1 << 5, false, 16);
    seed::doorbell(&mut w, 1, 0, false);
    seed::op(&mut w, Op::LoggingReport, false);
    w.u64(0x10_0000).u64(4 * 4096).u64(4096).u32(8 + 24 + 8);
    seed::op(&mut w, Op::DeviceFeature, false);
    w.u32(8).u32(0x2_0000 | 7).u8(0); // SET DMA_LOGGING_STOP
    v.push(("dirty-log", w.0));

    // Write-multiple, common-cfg pokes, a raw malformed header.
    let mut w = Writer::default();
    seed::version(&mut w, 2);
    seed::op(&mut w, Op::RegionWriteMulti, true);
    w.u64(2).u8(2);
    w.u8(0).u64(0x14).u8(1).u64(1);
    w.u8(0).u64(0x16).u8(2).u64(1);
    seed::op(&mut w, Op::CommonWrite, false);
    w.u8(0x14).u8(0).u64(0x40);
    seed::op(&mut w, Op::Message, false);
    w.u16(0x77).u32(0).u8(4).bytes(&[1, 2, 3, 4]);
    seed::op(&mut w, Op::Raw, false);
    w.u16(16)
        .bytes(&[9, 0, 3, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.push(("malformed", w.0));
    v
}

/// Ring seeds (split unless `packed`): (name, input).
fn ring_seeds(packed: bool) -> Vec<(&'static str, Vec<u8>)> {
    // One descriptor body: arena offset `off`, length `len` (sel 5: raw).
    let body = |w: &mut Writer, off: u32, len: u32| {
        w.u32(off).u8(0).u8(5).u32(len);
    };
    let mut v = Vec::new();
    for (name, queue_mask, flags, frames, indirect) in [
        ("tx-one", 2u8, 0u8, 0u8, false),
        ("rx-frame", 1, 2, 2, false),
        ("tx-chain", 2, 1, 0, false),
        ("tx-indirect", 2, 4, 0, true),
        ("all-queues", 7, 1, 1, false),
    ] {
        let mut w = Writer::default();
        w.u8(0);
        if indirect {
            w.u8(1).u16(64).u8(2);
            for k in 0..2u32 {
                body(&mut w, 2048 + 1024 * k, 60);
                // split: (next, flags); packed: (id, flags)
                w.u16(if packed { 0 } else { 1 })
                    .u16(if k == 0 { 1 } else { 0 });
            }
        } else {
            w.u8(0);
        }
        w.u8(queue_mask);
        for q in 0..3u8 {
            if queue_mask & (1 << q) == 0 {
                continue;
            }
            if packed {
                w.u8(2);
                for i in 0..2u32 {
                    if indirect && i == 0 {
                        body(&mut w, 64 * 16, 32);
                    } else {
                        body(&mut w, 4096 * (i + 1), 1526);
                    }
                    w.u8(0).u8(flags);
                }
            } else {
                for i in 0..16u32 {
                    if indirect {
                        body(&mut w, 64 * 16, 32);
                    } else {
                        body(
                            &mut w,
                            4096 + 1600 * (i % 8),
                            if q == 0 { 1526 } else { 60 },
                        );
                    }
                    w.u8(flags).u8(((i + 1) % 16) as u8);
                }
                w.u8(2).u8(0).u8(8);
            }
        }
        w.u8(frames);
        for _ in 0..frames {
            w.u16(60).bytes(&[0xab; 60]);
        }
        v.push((name, w.0));
    }
    // Hostile: a descriptor loop / all-raw bytes.
    let mut w = Writer::default();
    w.u8(1).u8(0).u8(2);
    if packed {
        w.u8(16);
        for _ in 0..16 {
            body(&mut w, 0, 64);
            w.u8(0).u8(1);
        }
    } else {
        for _ in 0..16 {
            body(&mut w, 0, 64);
            w.u8(1).u8(0);
        }
        w.u8(1).u8(0);
    }
    w.u8(0);
    v.push(("loop", w.0));
    v
}

/// Device-state streams saved after loopback traffic (the target's device configuration).
fn state_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    for (name, packed) in [("traffic-split", false), ("traffic-packed", true)] {
        let dev = Device::new(vdpa_fuzz_harness::state::config()).unwrap();
        dev.set_loopback();
        let o = DriverOptions {
            queue_size: 16,
            memory: 1 << 20,
            ..Default::default()
        }
        .with_packed(packed);
        let mut drv = sim_harness::driver::in_process(&dev, o).unwrap();
        drv.start().unwrap();
        let mac = drv.mac().unwrap();
        let mut f = vec![0u8; 80];
        f[..6].copy_from_slice(&mac);
        f[6..12].copy_from_slice(&mac);
        f[12] = 0x08;
        for _ in 0..5 {
            assert_eq!(drv.send(0, &[&f]).unwrap(), 1);
            drv.recv(0).unwrap();
        }
        dev.pause();
        // Two frames waiting in the receive FIFO while paused.
        dev.inbox().push(&f);
        dev.inbox().push(&f[..64]);
        let s = dev.save_state();
        dev.resume();
        let mut a = vec![0u8];
        a.extend_from_slice(&s);
        v.push((name, a));
        let mut b = vec![3u8];
        b.extend_from_slice(&s);
        v.push(if packed {
            ("paused-packed", b)
        } else {
            ("paused-split", b)
        });
    }
    let fresh = Device::new(vdpa_fuzz_harness::state::config())
        .unwrap()
        .save_state();
    let mut a = vec![1u8];
    a.extend_from_slice(&fresh);
    v.push(("fresh", a));
    v
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let corpus = root.join("corpus");
    let mut sets: Vec<(&str, Seeds)> = Vec::new();
    let own = |v: Vec<(&'static str, Vec<u8>)>| {
        v.into_iter()
            .map(|(n, d)| (n.to_string(), d))
            .collect::<Seeds>()
    };
    sets.push(("vfio_user_stream", own(vfio_seeds())));
    sets.push(("split_ring", own(ring_seeds(false))));
    sets.push(("packed_ring", own(ring_seeds(true))));
    sets.push(("device_state_stream", own(state_seeds())));
    let mut toml = Vec::new();
    let scen = root.join("../scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&scen)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        toml.push((name, std::fs::read(&f).unwrap()));
    }
    sets.push(("scenario_toml", toml));
    for (target, seeds) in sets {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        for (name, data) in &seeds {
            write(&dir, name, data);
        }
        println!("{target}: {} seeds", seeds.len());
    }
}
