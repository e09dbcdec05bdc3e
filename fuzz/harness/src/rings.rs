//! The split-ring and packed-ring targets: a loopback device (one queue pair) with a running
//! driver model, whose descriptor tables, avail ring / descriptor ring, indirect tables and
//! receive FIFO are written from the fuzz input before the doorbells ring. The same rig as the
//! seeded random tests in tests/tests/hostile_input.rs and hostile_packed.rs, with libFuzzer's
//! coverage feedback choosing the bytes.
//!
//! Checked after every input: no panic; the device is either still running with no fault and
//! no fault counted, or in DEVICE_NEEDS_RESET with a fault recorded and counted once; the
//! read-only canary mapped right after guest memory is never written; a reset clears the
//! fault, and the next input's driver start brings the device back to DRIVER_OK.
//!
//! Input layout (see [`Cursor`]): a control byte (bit 0: no INDIRECT_DESC / MRG_RXBUF; bit 1:
//! dirty logging on, bits 2-3 pick its log address), up to 4 indirect tables of up to 8
//! descriptors in the arena, then per queue (RX 0, TX 1, control 2) a presence bit, its
//! descriptors and published count, then up to 3 received frames and the doorbells.

use crate::cursor::Cursor;
use bar_registers::virtio::{bits, device_status as st};
use device::queue::packed::split_off_wrap;
use device::{Device, DeviceConfig, DmaMapper};
use dma::{Backing, Perms, SharedMemory};
use sim_harness::driver::flags::{PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED};
use sim_harness::driver::{DriverOptions, NetDriver};
use std::cell::RefCell;
use std::sync::Arc;

const QSIZE: u16 = 16;
/// Guest memory of one run: rings, buffers, the control buffer and the arena.
const MEM: u64 = 512 << 10;
const ARENA: u64 = 32 << 10;
const CANARY_LEN: u64 = 4096;
const CANARY: u8 = 0xC5;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const RUNNING: u8 = st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK;
const QUEUES: [u16; 3] = [0, 1, 2];

/// The device and its canary live for the whole fuzzing process; the driver (and its guest
/// memory) is made anew for every input, so one input cannot leave rings for the next.
struct Rig {
    dev: Arc<Device>,
    canary: SharedMemory,
    canary_end: u64,
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fn rig_new() -> Rig {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).expect("device");
    dev.set_loopback();
    let o = DriverOptions::default();
    let canary_at = o.iova_base + MEM;
    let canary = SharedMemory::new("fuzz-canary", CANARY_LEN).expect("memfd");
    canary.fill(0, CANARY_LEN, CANARY).expect("fill canary");
    dev.dma_map(
        canary_at,
        CANARY_LEN,
        Perms::RO,
        Backing::Fd {
            file: canary.try_clone_file().expect("dup"),
            offset: 0,
        },
    )
    .expect("map canary");
    Rig {
        dev,
        canary,
        canary_end: canary_at + CANARY_LEN,
    }
}

/// Where a descriptor points, as the input chooses.
fn addr(c: &mut Cursor<'_>, arena: u64, base: u64, end: u64) -> u64 {
    let v = c.u32();
    match c.u8() % 10 {
        0..=4 => arena + u64::from(v) % ARENA,
        5 => base + u64::from(v) % (end - base),
        6 => end + u64::from(v) % CANARY_LEN,
        7 => end - 1 - u64::from(v) % 4096,
        8 => u64::MAX - u64::from(v) % 4096,
        _ => (u64::from(c.u32()) << 32) | u64::from(v),
    }
}

/// A descriptor body: (addr, len).
fn body(c: &mut Cursor<'_>, arena: u64, base: u64, end: u64) -> (u64, u32) {
    let a = addr(c, arena, base, end);
    let sel = c.u8();
    let v = c.u32();
    let len = match sel % 6 {
        0 => 0,
        1 => v % 65,
        2 => v % 2049,
        3 => v % 70_001,
        4 => 16 * (1 + v % 8),
        _ => v,
    };
    (a, len)
}

fn frame(c: &mut Cursor<'_>, mac: [u8; 6]) -> Vec<u8> {
    let len = 14 + usize::from(c.u16()) % 1600;
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&mac);
    f[6..12].copy_from_slice(&mac);
    f[12] = 0x08;
    let payload = c.bytes(len - 14);
    f[14..14 + payload.len()].copy_from_slice(payload);
    f
}

/// Runs one input against the split ring (`packed` false) or the packed ring.
pub fn run(data: &[u8], packed: bool) {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(rig_new);
        run_on(rig, data, packed);
    })
}

fn run_on(rig: &Rig, data: &[u8], packed: bool) {
    let dev = &rig.dev;
    let mut c = Cursor::new(data);
    let ctl = c.u8();
    let mut o = DriverOptions {
        queue_size: QSIZE,
        memory: MEM,
        ..Default::default()
    }
    .with_packed(packed);
    if ctl & 1 != 0 {
        o.features &= !((1 << bits::INDIRECT_DESC) | (1 << bits::MRG_RXBUF));
    }
    if ctl & 0x10 != 0 {
        // VIRTIO_F_IN_ORDER (opt-in for the driver model): the in-order ring paths.
        o.features |= 1 << bits::IN_ORDER;
    }
    let mut drv = sim_harness::driver::in_process(dev, o).expect("driver");
    let base = drv.opts.iova_base;
    let end = base + drv.opts.memory;
    assert_eq!(end + CANARY_LEN, rig.canary_end);
    let arena = drv.mem.alloc(ARENA, 4096).expect("arena");
    drv.start().expect("driver start");
    assert_eq!(drv.status().expect("status"), RUNNING);
    assert_eq!(drv.is_packed(), packed);
    let mac = drv.mac().expect("mac");
    if ctl & 2 != 0 {
        let log = match (ctl >> 2) & 3 {
            0 => arena,
            1 => 0x9_0000_0000,
            2 => end,
            _ => base,
        };
        drv.enable_logging(log, 0x10000).expect("enable logging");
    }
    let c0 = dev.counters();

    // Indirect tables (and anything else the chains point at) in the arena.
    for _ in 0..c.u8() % 5 {
        let at = arena + 16 * (u64::from(c.u16()) % (ARENA / 16 - 8));
        for k in 0..u64::from(c.u8() % 9) {
            let (a, len) = body(&mut c, arena, base, end);
            let (id_or_next, flags) = (c.u16(), c.u16());
            let m = &drv.mem;
            m.write_u64(at + 16 * k, a).unwrap();
            m.write_u32(at + 16 * k + 8, len).unwrap();
            m.write_u16(at + 16 * k + 12, if packed { id_or_next } else { flags })
                .unwrap();
            m.write_u16(at + 16 * k + 14, if packed { flags } else { id_or_next })
                .unwrap();
        }
    }

    let mask = c.u8();
    let mut kicks = Vec::new();
    for &q in &QUEUES {
        if mask & (1 << q) == 0 {
            continue;
        }
        kicks.push(q);
        if packed {
            post_packed(&mut drv, dev, q, &mut c, arena, base, end);
        } else {
            post_split(&mut drv, dev, q, &mut c, arena, base, end);
        }
    }
    for _ in 0..c.u8() % 4 {
        let f = frame(&mut c, mac);
        dev.inbox().push(&f);
    }
    kicks.push(if mask & 8 != 0 { 0 } else { 1 });
    for q in kicks {
        drv.kick(q).expect("doorbell");
    }

    // The verdict.
    let s = drv.status().expect("status");
    let cnt = dev.counters();
    let new_faults: u64 = cnt.faults.iter().zip(&c0.faults).map(|(a, b)| a - b).sum();
    if s & st::DEVICE_NEEDS_RESET != 0 {
        let f = dev
            .fault()
            .expect("DEVICE_NEEDS_RESET without a recorded fault");
        // A panic the device contained is still a bug (libFuzzer's panic hook aborts before
        // the device could contain it; this catches it under any other runner).
        assert_ne!(f.kind(), "internal_error", "the datapath panicked: {f}");
        let k = f.kind_index();
        assert!(cnt.faults[k] > c0.faults[k], "{f:?} not counted");
        assert_eq!(
            cnt.needs_reset,
            c0.needs_reset + 1,
            "NEEDS_RESET counted once"
        );
        assert_eq!(s & !st::DEVICE_NEEDS_RESET, RUNNING, "status {s:#x}");
    } else {
        assert_eq!(s, RUNNING, "status {s:#x} without NEEDS_RESET");
        assert_eq!(dev.fault(), None, "a fault without NEEDS_RESET");
        assert_eq!(new_faults, 0, "faults counted without NEEDS_RESET");
    }
    assert!(
        rig.canary.snapshot().iter().all(|&b| b == CANARY),
        "read-only canary written"
    );
    // A reset always clears the fault and the status; the next input's driver start (fresh
    // rings, DRIVER_OK asserted above) is the restart that must bring the device back.
    dev.reset();
    assert_eq!(dev.fault(), None, "fault survived a reset");
    assert_eq!(drv.status().expect("status"), 0, "status after a reset");
    drop(drv);
}

#[allow(clippy::too_many_arguments)]
fn post_split(
    drv: &mut NetDriver,
    dev: &Device,
    q: u16,
    c: &mut Cursor<'_>,
    arena: u64,
    base: u64,
    end: u64,
) {
    let (desc, avail, size) = {
        let r = drv.ring(q).expect("split ring");
        (r.desc, r.avail, r.size)
    };
    let m = drv.mem.clone();
    for i in 0..u64::from(size) {
        let (a, len) = body(c, arena, base, end);
        let fl = c.u8();
        let flags = if fl == 0xff {
            c.u16()
        } else {
            u16::from(fl) & (F_NEXT | F_WRITE | F_INDIRECT)
        };
        let nx = c.u8();
        let next = if nx == 0xff {
            c.u16()
        } else {
            u16::from(nx) % size
        };
        m.write_u64(desc + 16 * i, a).unwrap();
        m.write_u32(desc + 16 * i + 8, len).unwrap();
        m.write_u16(desc + 16 * i + 12, flags).unwrap();
        m.write_u16(desc + 16 * i + 14, next).unwrap();
    }
    let last = dev.queue(q).expect("queue").last_avail;
    let nb = c.u8();
    let n = if nb == 0xff {
        c.u16()
    } else {
        u16::from(nb) % (size + 1)
    };
    for k in 0..n.min(size) {
        let hb = c.u8();
        let h = if hb == 0xff {
            c.u16()
        } else {
            u16::from(hb) % size
        };
        m.write_u16(avail + 4 + 2 * u64::from(last.wrapping_add(k) % size), h)
            .unwrap();
    }
    m.store_u16_release(avail + 2, last.wrapping_add(n))
        .unwrap();
}

#[allow(clippy::too_many_arguments)]
fn post_packed(
    drv: &mut NetDriver,
    dev: &Device,
    q: u16,
    c: &mut Cursor<'_>,
    arena: u64,
    base: u64,
    end: u64,
) {
    let (desc, size) = {
        let r = drv.packed_ring(q).expect("packed ring");
        (r.desc, r.size)
    };
    let m = drv.mem.clone();
    let (mut pos, mut wrap) = split_off_wrap(dev.queue(q).expect("queue").last_avail);
    let n = c.u8() % (size as u8 + 1);
    let mut head = None;
    for _ in 0..n {
        let (a, len) = body(c, arena, base, end);
        let ib = c.u8();
        let id = if ib == 0xff {
            c.u16()
        } else {
            u16::from(ib) % size
        };
        let fl = c.u8();
        let avail_used = match fl >> 5 {
            0..=4 => {
                if wrap {
                    PACKED_DESC_F_AVAIL
                } else {
                    PACKED_DESC_F_USED
                }
            }
            5 => 0,
            6 => PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED,
            _ => {
                if wrap {
                    PACKED_DESC_F_USED
                } else {
                    PACKED_DESC_F_AVAIL
                }
            }
        };
        let flags = if fl == 0xff {
            c.u16()
        } else {
            (u16::from(fl) & (F_NEXT | F_WRITE | F_INDIRECT)) | avail_used
        };
        let at = desc + 16 * u64::from(pos % size);
        m.write_u64(at, a).unwrap();
        m.write_u32(at + 8, len).unwrap();
        m.write_u16(at + 12, id).unwrap();
        match head {
            None => head = Some((at + 14, flags)),
            Some(_) => m.write_u16(at + 14, flags).unwrap(),
        }
        pos += 1;
        if pos >= size {
            pos = 0;
            wrap = !wrap;
        }
    }
    if let Some((at, f)) = head {
        m.store_u16_release(at, f).unwrap();
    }
}
