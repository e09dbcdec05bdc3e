//! Hostile driver input on packed virtqueues (virtio 1.2 2.8, VIRTIO_F_RING_PACKED): every
//! malformed descriptor list, indirect table or ring configuration ends in DEVICE_NEEDS_RESET
//! with the config interrupt, the fault counted by kind and named by `Device::fault()`, no panic,
//! no byte touched outside a mapping (nor inside one, for a list the device refuses), no DMA
//! while broken, and a reset brings the device back.
//!
//! What the device defines for the packed ring (device/src/queue/packed.rs):
//! - AVAIL/USED combinations that do not say "available for the device's wrap counter" (2.8.1)
//!   are simply not available: no fault, nothing happens.
//! - A list whose first descriptor is available but a later one is not (a chain spanning
//!   unpublished descriptors) breaks 2.8.17 ("A driver MUST NOT make the first descriptor in the
//!   list available before all subsequent descriptors comprising the list are made available"):
//!   chain_not_available. A list as long as the ring that still continues: chain_too_long.
//! - A buffer id >= queue size: buffer_id_out_of_range. Ids already in flight are not checked.
//! - Indirect tables hold packed descriptors with no `next` field: they are walked in order,
//!   `len / 16` entries, flags other than WRITE ignored (2.8.7), so a "loop" cannot be expressed.
//!
//! Descriptors are written by hand at the device's next ring slots (from the LM ring state the
//! device reports), bodies first and the first descriptor's flags last, then kicked.

use bar_registers::virtio::{bits, common, default_driver_features, device_status as st};
use device::fault::FAULT_KINDS;
// The descriptors the hostile driver writes use the driver model's flags (virtio-bindings), not
// the device's; off_wrap/split_off_wrap read the device's own queue state.
use device::queue::packed::{off_wrap, split_off_wrap};
use device::{Device, DeviceConfig, DeviceFault, DmaMapper};
use dma::{Backing, DmaFault, DmaKind, Perms, SharedMemory};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::flags::{PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED};
use sim_harness::driver::DriverOptions;
use sim_harness::frames;

mod support;

use support::hostile::*;

/// A packed descriptor as the test writes it: NEXT/WRITE/INDIRECT flags; AVAIL/USED are set for
/// the slot's lap unless `raw` gives the whole flags word.
#[derive(Clone, Copy, Debug)]
struct P {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
    raw: Option<u16>,
}

fn p(addr: u64, len: u32, id: u16, flags: u16) -> P {
    P {
        addr,
        len,
        id,
        flags,
        raw: None,
    }
}

fn opts() -> DriverOptions {
    DriverOptions {
        queue_size: QSIZE,
        memory: MEM,
        ..Default::default()
    }
    .with_packed(true)
}

fn dma(queue: u16, fault: DmaFault) -> DeviceFault {
    DeviceFault::Dma { queue, fault }
}

impl Rig {
    /// (desc ring, driver area, device area, size) of queue `q`.
    fn ring(&mut self, q: u16) -> (u64, u64, u64, u16) {
        let r = self.drv.packed_ring(q).expect("packed ring");
        (r.desc, r.driver, r.device, r.size)
    }

    /// Where the device looks next on queue `q`: (slot, wrap counter).
    fn next_slot(&self, q: u16) -> (u16, bool) {
        split_off_wrap(self.dev.queue(q).expect("queue").last_avail)
    }

    /// Writes `descs` at the device's next slots of queue `q` (bodies, then every flags word
    /// but the first, then the first with Release).
    fn post(&mut self, q: u16, descs: &[P]) {
        let (desc, _, _, size) = self.ring(q);
        let (mut pos, mut wrap) = self.next_slot(q);
        let m = self.drv.mem.clone();
        let mut flags = Vec::new();
        for x in descs {
            let at = desc + 16 * u64::from(pos);
            m.write_u64(at, x.addr).unwrap();
            m.write_u32(at + 8, x.len).unwrap();
            m.write_u16(at + 12, x.id).unwrap();
            let f = x.raw.unwrap_or(
                x.flags
                    | if wrap {
                        PACKED_DESC_F_AVAIL
                    } else {
                        PACKED_DESC_F_USED
                    },
            );
            flags.push((at + 14, f));
            pos += 1;
            if pos == size {
                pos = 0;
                wrap = !wrap;
            }
        }
        for &(at, f) in flags.iter().skip(1) {
            m.write_u16(at, f).unwrap();
        }
        if let Some(&(at, f)) = flags.first() {
            m.store_u16_release(at, f).unwrap();
        }
    }

    /// An indirect table of packed descriptors at `at`.
    fn table(&self, at: u64, t: &[P]) {
        for (i, x) in t.iter().enumerate() {
            let a = at + 16 * i as u64;
            self.drv.mem.write_u64(a, x.addr).unwrap();
            self.drv.mem.write_u32(a + 8, x.len).unwrap();
            self.drv.mem.write_u16(a + 12, x.id).unwrap();
            self.drv
                .mem
                .write_u16(a + 14, x.raw.unwrap_or(x.flags))
                .unwrap();
        }
    }
}

// ------------------------------------------------------------------------------- wrap counters

/// AVAIL/USED combinations that do not mean "available for the device's wrap counter" are not
/// available: nothing is read past them, nothing is written, no fault. Made available properly
/// afterwards, the same slot is processed.
#[test]
fn wrap_counter_confusion_is_not_available() {
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let f = rig.frame(200);
    rig.drv.mem.write(a, &[0u8; 12]).unwrap();
    rig.drv.mem.write(a + 12, &f).unwrap();
    let len = 12 + f.len() as u32;
    for (what, raw) in [
        ("both zero (fresh ring)", 0),
        (
            "AVAIL = USED = 1: a used descriptor of lap 1",
            PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED,
        ),
        (
            "AVAIL 0, USED 1: available for wrap counter 0, not this lap",
            PACKED_DESC_F_USED,
        ),
        ("AVAIL = USED = 0 with NEXT", F_NEXT),
    ] {
        rig.post(
            TXQ,
            &[P {
                raw: Some(raw),
                ..p(a, len, 0, 0)
            }],
        );
        let b = rig.snapshot();
        rig.drv.kick(TXQ).unwrap();
        assert_eq!(rig.dev.fault(), None, "{what}");
        assert_eq!(rig.drv.status().unwrap(), RUNNING, "{what}");
        let c = rig.dev.counters();
        assert_eq!(
            c.tx_frames, b.counters.tx_frames,
            "{what}: nothing transmitted"
        );
        let bus = rig.dev.bus_stats().delta(&b.bus);
        assert_eq!(bus.get(DmaKind::PacketRead).transactions, 0, "{what}");
        assert_eq!(bus.get(DmaKind::PacketWrite).transactions, 0, "{what}");
        // With EVENT_IDX the idle queue re-arms its device event structure (4 bytes): nothing else.
        let rw = bus.get(DmaKind::RingWrite);
        assert_eq!(
            (rw.transactions, rw.bytes),
            (1, 4),
            "{what}: only the device event area is written"
        );
    }
    // Properly available (AVAIL = wrap counter 1, USED = 0): transmitted, and looped back.
    rig.post(TXQ, &[p(a, len, 5, 0)]);
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    assert_eq!(rig.dev.counters().tx_frames, 1);
    // The used descriptor overwrote slot 0: id 5, USED = AVAIL = 1, len reserved (no WRITE).
    let (desc, ..) = rig.ring(TXQ);
    assert_eq!(rig.drv.mem.read_u16(desc + 12).unwrap(), 5);
    assert_eq!(
        rig.drv.mem.read_u16(desc + 14).unwrap(),
        PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED
    );
    assert_eq!(rig.dev.queue(TXQ).unwrap().last_used, off_wrap(1, true));
}

// ------------------------------------------------------------------------------- list structure

#[test]
fn chain_spanning_unpublished_descriptors() {
    // Slot 1 is still zero (never made available) while slot 0 says NEXT.
    run_case("tx: second descriptor never made available", opts(), |r| {
        let a = r.arena;
        r.post(TXQ, &[p(a, 64, 0, F_NEXT)]);
        (
            Trigger::Kick(TXQ),
            DeviceFault::ChainNotAvailable {
                queue: TXQ,
                head: 0,
                index: 1,
            },
        )
    });
    // Slot 2 carries the other lap's AVAIL bit.
    run_case("tx: third descriptor of the wrong lap", opts(), |r| {
        let a = r.arena;
        r.post(
            TXQ,
            &[
                p(a, 64, 0, F_NEXT),
                p(a, 64, 0, F_NEXT),
                P {
                    raw: Some(PACKED_DESC_F_USED),
                    ..p(a, 64, 0, 0)
                },
            ],
        );
        (
            Trigger::Kick(TXQ),
            DeviceFault::ChainNotAvailable {
                queue: TXQ,
                head: 0,
                index: 2,
            },
        )
    });
    run_case("ctrl: status descriptor not available", opts(), |r| {
        let a = r.arena;
        r.drv.mem.write(a, &[0, 0]).unwrap();
        r.post(CTRLQ, &[p(a, 2, 0, F_NEXT)]);
        (
            Trigger::Kick(CTRLQ),
            DeviceFault::ChainNotAvailable {
                queue: CTRLQ,
                head: 0,
                index: 1,
            },
        )
    });
}

#[test]
fn chain_as_long_as_the_ring() {
    // Every slot of the ring in one list is the longest legal list: accepted.
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let all: Vec<P> = (0..QSIZE)
        .map(|i| p(a, 16, 9, if i + 1 < QSIZE { F_NEXT } else { 0 }))
        .collect();
    rig.post(TXQ, &all);
    rig.plain_tx_header(a);
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    assert_eq!(
        rig.dev.counters().tx_frames,
        1,
        "a 1012-byte frame in {QSIZE} descriptors"
    );
    assert_eq!(
        rig.dev.queue(TXQ).unwrap().last_used,
        off_wrap(0, false),
        "one used descriptor, {QSIZE} slots skipped, wrap counter toggled"
    );
    drop(rig);
    // One more NEXT: the list would run into its own first slot, a lap on.
    run_case(
        "tx: NEXT on the last slot of a full-ring list",
        opts(),
        |r| {
            let a = r.arena;
            let all: Vec<P> = (0..QSIZE).map(|_| p(a, 16, 0, F_NEXT)).collect();
            r.post(TXQ, &all);
            (
                Trigger::Kick(TXQ),
                DeviceFault::ChainTooLong {
                    queue: TXQ,
                    head: 0,
                    limit: QSIZE.into(),
                },
            )
        },
    );
}

#[test]
fn buffer_ids_out_of_range() {
    for (name, id) in [("id = queue size", QSIZE), ("id 0xffff", 0xFFFF)] {
        run_case(name, opts(), |r| {
            let a = r.arena;
            r.post(TXQ, &[p(a, 64, id, 0)]);
            (
                Trigger::Kick(TXQ),
                DeviceFault::BufferIdOutOfRange {
                    queue: TXQ,
                    id,
                    size: QSIZE,
                },
            )
        });
    }
    // The id of the LAST descriptor counts (2.8.6); the others' ids are not looked at.
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let f = rig.frame(100);
    rig.drv.mem.write(a, &[0u8; 12]).unwrap();
    rig.drv.mem.write(a + 12, &f).unwrap();
    rig.post(
        TXQ,
        &[p(a, 12, 0xFFFF, F_NEXT), p(a + 12, f.len() as u32, 3, 0)],
    );
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    let (desc, ..) = rig.ring(TXQ);
    assert_eq!(
        rig.drv.mem.read_u16(desc + 12).unwrap(),
        3,
        "used descriptor carries the last descriptor's id"
    );
    drop(rig);
    run_case("rx: bad id in a writable buffer", opts(), |r| {
        let a = r.arena;
        r.post(RXQ, &[p(a, 2048, 1000, F_WRITE)]);
        (
            Trigger::FrameKick(RXQ),
            DeviceFault::BufferIdOutOfRange {
                queue: RXQ,
                id: 1000,
                size: QSIZE,
            },
        )
    });
}

/// A bad list behind good ones of the same batch: the good ones complete first, the bad one
/// faults when it comes first (as a split ring faults when the list is walked), counted once,
/// and the good lists after it are never taken.
#[test]
fn bad_list_behind_good_ones() {
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let f = rig.frame(100);
    rig.drv.mem.write(a, &[0u8; 12]).unwrap();
    rig.drv.mem.write(a + 12, &f).unwrap();
    let good = p(a, 12 + f.len() as u32, 1, 0);
    rig.post(TXQ, &[good, good, p(a, 64, QSIZE, 0)]);
    let b = rig.snapshot();
    rig.drv.kick(TXQ).unwrap();
    rig.assert_fault(
        &b,
        &DeviceFault::BufferIdOutOfRange {
            queue: TXQ,
            id: QSIZE,
            size: QSIZE,
        },
        "bad third list",
    );
    assert_eq!(
        rig.dev.counters().tx_frames,
        b.counters.tx_frames + 2,
        "the two good lists went out first"
    );
    assert_eq!(rig.dev.queue(TXQ).unwrap().last_used, off_wrap(2, true));
    rig.assert_quiet_while_broken("bad third list");
    rig.recover("bad third list");
    drop(rig);

    // In the middle of one batch, good lists of one and two slots before and after it: those
    // before it go out (their used descriptors published), the fault is counted once, and
    // nothing after it is taken.
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let f = rig.frame(100);
    rig.drv.mem.write(a, &[0u8; 12]).unwrap();
    rig.drv.mem.write(a + 12, &f).unwrap();
    let good = p(a, 12 + f.len() as u32, 1, 0);
    let (head, body) = (p(a, 12, 0, F_NEXT), p(a + 12, f.len() as u32, 2, 0));
    let bad = P {
        raw: Some(PACKED_DESC_F_USED),
        ..p(a, 64, 3, 0)
    };
    rig.post(
        TXQ,
        &[good, head, body, p(a, 64, 4, F_NEXT), bad, good, head, body],
    );
    let b = rig.snapshot();
    rig.drv.kick(TXQ).unwrap();
    rig.assert_fault(
        &b,
        &DeviceFault::ChainNotAvailable {
            queue: TXQ,
            head: 3,
            index: 4,
        },
        "list running into a slot of the other lap",
    );
    assert_eq!(
        rig.dev.counters().tx_frames,
        b.counters.tx_frames + 2,
        "the one-slot and the two-slot list before it went out"
    );
    assert_eq!(rig.dev.queue(TXQ).unwrap().last_used, off_wrap(3, true));
    let (desc, ..) = rig.ring(TXQ);
    let used = PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED;
    assert_eq!(rig.drv.mem.read_u16(desc + 14).unwrap(), used);
    assert_eq!(rig.drv.mem.read_u16(desc + 16 + 12).unwrap(), 2);
    assert_eq!(rig.drv.mem.read_u16(desc + 16 + 14).unwrap(), used);
    assert_eq!(
        rig.drv.mem.read_u16(desc + 5 * 16 + 14).unwrap(),
        PACKED_DESC_F_AVAIL,
        "the list after the bad one stays available"
    );
    rig.assert_quiet_while_broken("bad list in the middle");
    rig.recover("bad list in the middle");
}

// ------------------------------------------------------------------------------- descriptor contents

/// (name, the list to post on a queue and how to trigger it, the expected fault).
type ContentCase = (&'static str, fn(u64) -> (u16, Vec<P>, Trigger), DeviceFault);

#[test]
fn descriptor_content_faults() {
    let cases: Vec<ContentCase> = vec![
        (
            "tx: zero-length descriptor",
            (|a| (TXQ, vec![p(a, 0, 0, 0)], Trigger::Kick(TXQ))),
            DeviceFault::ZeroLengthDescriptor {
                queue: TXQ,
                index: 0,
            },
        ),
        (
            "tx: zero-length second descriptor",
            (|a| {
                (
                    TXQ,
                    vec![p(a, 12, 0, F_NEXT), p(a, 0, 0, 0)],
                    Trigger::Kick(TXQ),
                )
            }),
            DeviceFault::ZeroLengthDescriptor {
                queue: TXQ,
                index: 1,
            },
        ),
        (
            "tx: oversized list",
            (|a| {
                (
                    TXQ,
                    vec![p(a, 60_000, 0, F_NEXT), p(a, 6_000, 0, 0)],
                    Trigger::Kick(TXQ),
                )
            }),
            DeviceFault::OversizedChain {
                queue: TXQ,
                total: 66_000,
                limit: MAX_TX_CHAIN,
            },
        ),
        (
            "tx: writable descriptor",
            (|a| (TXQ, vec![p(a, 64, 0, F_WRITE)], Trigger::Kick(TXQ))),
            DeviceFault::WritableInTxChain { queue: TXQ },
        ),
        (
            "rx: readable descriptor",
            (|a| (RXQ, vec![p(a, 2048, 0, 0)], Trigger::FrameKick(RXQ))),
            DeviceFault::ReadableInRxChain { queue: RXQ },
        ),
        (
            "ctrl: readable after writable",
            (|a| {
                (
                    CTRLQ,
                    vec![
                        p(a, 2, 0, F_NEXT),
                        p(a + 64, 1, 0, F_WRITE | F_NEXT),
                        p(a + 128, 2, 0, 0),
                    ],
                    Trigger::Kick(CTRLQ),
                )
            }),
            DeviceFault::ReadableAfterWritable { queue: CTRLQ },
        ),
        (
            "ctrl: no status byte",
            (|a| (CTRLQ, vec![p(a, 2, 0, 0)], Trigger::Kick(CTRLQ))),
            DeviceFault::CtrlNoStatus { queue: CTRLQ },
        ),
        (
            "tx: buffer outside every mapping",
            (|_| (TXQ, vec![p(0x9_0000_0000, 64, 0, 0)], Trigger::Kick(TXQ))),
            dma(
                TXQ,
                DmaFault::Unmapped {
                    iova: 0x9_0000_0000,
                    len: 64,
                },
            ),
        ),
        (
            "tx: buffer at the top of the IOVA space",
            (|_| (TXQ, vec![p(u64::MAX - 15, 64, 0, 0)], Trigger::Kick(TXQ))),
            dma(
                TXQ,
                DmaFault::AddressOverflow {
                    iova: u64::MAX - 15,
                    len: 64,
                },
            ),
        ),
    ];
    for (name, build, want) in cases {
        run_case(name, opts(), |r| {
            let (q, descs, t) = build(r.arena);
            r.post(q, &descs);
            (t, want.clone())
        });
    }
}

// ------------------------------------------------------------------------------- indirect

#[test]
fn indirect_tables() {
    // Not negotiated.
    run_case(
        "indirect without INDIRECT_DESC",
        opts().with_packed(true),
        |r| {
            r.drv.opts.features &= !(1 << bits::INDIRECT_DESC);
            r.drv.reset().unwrap();
            r.drv.start().unwrap();
            let a = r.arena;
            r.table(a + 0x1000, &[p(a, 64, 0, 0)]);
            r.post(TXQ, &[p(a + 0x1000, 16, 0, F_INDIRECT)]);
            (
                Trigger::Kick(TXQ),
                DeviceFault::IndirectNotNegotiated { queue: TXQ },
            )
        },
    );
    run_case("indirect descriptor with NEXT", opts(), |r| {
        let a = r.arena;
        r.table(a + 0x1000, &[p(a, 64, 0, 0)]);
        r.post(
            TXQ,
            &[p(a + 0x1000, 16, 0, F_INDIRECT | F_NEXT), p(a, 64, 0, 0)],
        );
        (
            Trigger::Kick(TXQ),
            DeviceFault::IndirectWithNext { queue: TXQ },
        )
    });
    run_case("indirect descriptor inside a NEXT list", opts(), |r| {
        let a = r.arena;
        r.table(a + 0x1000, &[p(a, 64, 0, 0)]);
        r.post(
            TXQ,
            &[p(a, 12, 0, F_NEXT), p(a + 0x1000, 16, 0, F_INDIRECT)],
        );
        (
            Trigger::Kick(TXQ),
            DeviceFault::IndirectWithNext { queue: TXQ },
        )
    });
    for len in [0u32, 24, 16 * 1025] {
        run_case(&format!("indirect table length {len}"), opts(), |r| {
            let a = r.arena;
            r.post(TXQ, &[p(a + 0x1000, len, 0, F_INDIRECT)]);
            (
                Trigger::Kick(TXQ),
                DeviceFault::BadIndirectLength { queue: TXQ, len },
            )
        });
    }
    run_case("indirect table unmapped", opts(), |r| {
        r.post(TXQ, &[p(0x9_0000_0000, 64, 0, F_INDIRECT)]);
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::Unmapped {
                    iova: 0x9_0000_0000,
                    len: 64,
                },
            ),
        )
    });
    run_case("indirect entry of zero length", opts(), |r| {
        let a = r.arena;
        r.table(a + 0x1000, &[p(a, 12, 0, 0), p(a, 0, 0, 0)]);
        r.post(TXQ, &[p(a + 0x1000, 32, 0, F_INDIRECT)]);
        (
            Trigger::Kick(TXQ),
            DeviceFault::ZeroLengthDescriptor {
                queue: TXQ,
                index: 1,
            },
        )
    });
    run_case("indirect writable entry on TX", opts(), |r| {
        let a = r.arena;
        r.table(a + 0x1000, &[p(a, 12, 0, 0), p(a, 64, 0, F_WRITE)]);
        r.post(TXQ, &[p(a + 0x1000, 32, 0, F_INDIRECT)]);
        (
            Trigger::Kick(TXQ),
            DeviceFault::WritableInTxChain { queue: TXQ },
        )
    });
}

/// "Loops in indirect tables" cannot be expressed in a packed table: there is no `next` field,
/// and NEXT / INDIRECT / ids inside the table are reserved and ignored (2.8.7). A table whose
/// entries carry them is read in order, exactly len / 16 entries, and the frame is intact.
#[test]
fn indirect_table_flags_are_ignored_no_loops() {
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let f = rig.frame(300);
    rig.drv.mem.write(a, &[0u8; 12]).unwrap();
    rig.drv.mem.write(a + 12, &f).unwrap();
    let t = a + 0x2000;
    // Four entries that would form a cycle (and a nested table) if NEXT/INDIRECT were honoured.
    rig.table(
        t,
        &[
            p(a, 12, 0xFFFF, F_NEXT),
            p(a + 12, 100, 2, F_NEXT | F_INDIRECT),
            p(a + 112, 100, 1, F_NEXT),
            p(a + 212, f.len() as u32 - 200, 0, F_NEXT),
        ],
    );
    rig.post(TXQ, &[p(t, 64, 7, F_INDIRECT)]);
    let b = rig.snapshot();
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    let bus = rig.dev.bus_stats().delta(&b.bus);
    assert_eq!(
        bus.get(DmaKind::IndirectTable).transactions,
        1,
        "the table is read once"
    );
    assert_eq!(
        bus.get(DmaKind::PacketRead).transactions,
        4,
        "exactly len / 16 = 4 entries"
    );
    assert_eq!(
        rig.drv.recv(0).unwrap(),
        vec![f],
        "the frame from the four entries, in order"
    );
    let (desc, ..) = rig.ring(TXQ);
    assert_eq!(rig.drv.mem.read_u16(desc + 12).unwrap(), 7);
}

// ------------------------------------------------------------------------------- configuration

#[test]
fn ring_configuration_at_queue_enable() {
    let misaligned = "ring address misaligned (2.8.10.1: descriptor ring 16, event suppression 4)";
    for (name, reg, delta) in [
        ("descriptor ring 8-aligned", common::QUEUE_DESC, 8u64),
        ("driver event area 2-aligned", common::QUEUE_DRIVER, 2),
        ("device event area 2-aligned", common::QUEUE_DEVICE, 2),
    ] {
        run_case(name, opts(), |r| {
            let (desc, driver, device, _) = r.ring(TXQ);
            let base = match reg {
                common::QUEUE_DESC => desc,
                common::QUEUE_DRIVER => driver,
                _ => device,
            };
            r.disable_queue(TXQ);
            r.common_write64(reg, base + delta);
            (
                Trigger::Enable(TXQ),
                DeviceFault::BadQueueConfig {
                    queue: TXQ,
                    detail: misaligned,
                },
            )
        });
    }
    let overflow = "ring area runs past the end of the 64-bit IOVA space";
    for (name, reg, addr) in [
        (
            "descriptor ring at u64::MAX - 15",
            common::QUEUE_DESC,
            u64::MAX - 15,
        ),
        (
            "driver area at u64::MAX - 3",
            common::QUEUE_DRIVER,
            u64::MAX - 3,
        ),
        (
            "device area at u64::MAX - 3",
            common::QUEUE_DEVICE,
            u64::MAX - 3,
        ),
    ] {
        run_case(name, opts(), |r| {
            r.disable_queue(TXQ);
            r.common_write64(reg, addr);
            (
                Trigger::Enable(TXQ),
                DeviceFault::BadQueueConfig {
                    queue: TXQ,
                    detail: overflow,
                },
            )
        });
    }
    run_case("LM ring state offset beyond the queue size", opts(), |r| {
        r.disable_queue(TXQ);
        r.drv
            .set_ring_state(TXQ, off_wrap(QSIZE, true), off_wrap(QSIZE, true))
            .unwrap();
        (
            Trigger::Enable(TXQ),
            DeviceFault::BadQueueConfig {
                queue: TXQ,
                detail: "packed LM ring state offset (bits 0-14) not below the queue size",
            },
        )
    });
    run_case(
        "LM ring state: avail more than a ring ahead of used",
        opts(),
        |r| {
            r.disable_queue(TXQ);
            r.drv
                .set_ring_state(TXQ, off_wrap(5, false), off_wrap(0, true))
                .unwrap();
            (
                Trigger::Enable(TXQ),
                DeviceFault::BadQueueConfig {
                    queue: TXQ,
                    detail: "packed LM ring state: last_avail more than a ring ahead of last_used",
                },
            )
        },
    );
}

/// The packed ring's size need not be a power of two (2.8); the split ring's must (2.7).
#[test]
fn queue_size_rules_follow_the_layout() {
    for packed in [false, true] {
        let mut rig = Rig::new(opts());
        if !packed {
            rig.drv.opts.features = default_driver_features();
            rig.drv.reset().unwrap();
            rig.drv.start().unwrap();
        }
        rig.disable_queue(TXQ);
        rig.common_write16(common::QUEUE_SIZE, 100);
        let got = rig.common_read16(common::QUEUE_SIZE);
        assert_eq!(
            got == 100,
            packed,
            "packed {packed}: queue_size reads {got}"
        );
        rig.common_write16(common::QUEUE_SIZE, 257);
        assert_ne!(
            rig.common_read16(common::QUEUE_SIZE),
            257,
            "above queue_size_max"
        );
    }
}

/// Event suppression structures the device cannot reach: the driver's (read for an interrupt
/// decision) unmapped, the device's (written with EVENT_IDX) read-only.
#[test]
fn event_suppression_areas_out_of_reach() {
    let mut rig = Rig::new(opts());
    let x = 0x9_0000_0000u64;
    rig.disable_queue(TXQ);
    rig.common_write64(common::QUEUE_DRIVER, x);
    rig.fire(Trigger::Enable(TXQ));
    assert_eq!(rig.dev.fault(), None);
    let f = rig.frame(100);
    let b = rig.snapshot();
    assert_eq!(rig.drv.send(0, &[&f]).unwrap(), 1);
    rig.assert_fault(
        &b,
        &dma(TXQ, DmaFault::Unmapped { iova: x, len: 4 }),
        "driver area unmapped",
    );
    rig.assert_quiet_while_broken("driver area unmapped");
    rig.recover("driver area unmapped");

    let mut rig = Rig::new(opts());
    let ro = rig.map_ro(0x3_0000_0000, 0x1000);
    rig.disable_queue(TXQ);
    rig.common_write64(common::QUEUE_DEVICE, ro);
    let b = rig.snapshot();
    // Enabling an empty queue with EVENT_IDX arms the device event structure at once.
    rig.fire(Trigger::Enable(TXQ));
    rig.assert_fault(
        &b,
        &dma(
            TXQ,
            DmaFault::Permission {
                iova: ro,
                len: 4,
                write: true,
            },
        ),
        "device area read-only",
    );
    rig.assert_untouched(&b, "device area read-only");
    let img = rig.ro.as_ref().unwrap().1.snapshot();
    assert!(img.iter().all(|&v| v == 0x5A), "read-only region written");
    rig.assert_quiet_while_broken("device area read-only");
    rig.recover("device area read-only");
}

// ------------------------------------------------------------------------------- fuzz

/// Random packed rings (random flags including AVAIL/USED, ids, lengths, addresses, indirect
/// tables) into TX, RX and control queues: the device never panics, is either running with no
/// fault or in NEEDS_RESET with a counted fault, and never writes the read-only canary mapped
/// right after guest memory.
#[test]
fn fuzz_random_packed_rings() {
    const ITERS: u32 = 1500;
    const FSIZE: u16 = 16;
    const FARENA: u64 = 64 << 10;
    const CANARY_LEN: u64 = 64 << 10;
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).expect("device");
    dev.set_loopback();
    let o = DriverOptions {
        queue_size: FSIZE,
        memory: 256 << 20,
        ..Default::default()
    }
    .with_packed(true);
    let mut drv = sim_harness::driver::in_process(&dev, o).expect("driver");
    let base = drv.opts.iova_base;
    let end = base + drv.opts.memory;
    let arena = drv.mem.alloc(FARENA, 4096).unwrap();
    let canary = SharedMemory::new("fuzz-canary", CANARY_LEN).unwrap();
    canary.fill(0, CANARY_LEN, CANARY).unwrap();
    let canary_img = canary.snapshot();
    dev.dma_map(
        end,
        CANARY_LEN,
        Perms::RO,
        Backing::Fd {
            file: canary.try_clone_file().unwrap(),
            offset: 0,
        },
    )
    .unwrap();
    drv.start().unwrap();
    let mac = drv.mac().unwrap();
    let mut rng = SmallRng::seed_from_u64(0x00FA_CCED);
    let rand_addr = |rng: &mut SmallRng| -> u64 {
        match rng.gen_range(0..100) {
            0..=54 => arena + rng.gen_range(0..FARENA),
            55..=64 => base + rng.gen_range(0..end - base),
            65..=74 => end + rng.gen_range(0..CANARY_LEN),
            75..=79 => end - rng.gen_range(1..4096),
            80..=84 => rng.gen(),
            85..=89 => u64::MAX - rng.gen_range(0..4096),
            _ => base - rng.gen_range(1..4096),
        }
    };
    let rand_len = |rng: &mut SmallRng| -> u32 {
        match rng.gen_range(0..100) {
            0..=4 => 0,
            5..=39 => rng.gen_range(1..=64),
            40..=79 => rng.gen_range(64..=2048),
            80..=92 => rng.gen_range(2048..=70_000),
            _ => rng.gen(),
        }
    };
    let rand_desc = |rng: &mut SmallRng, wrap: bool| -> P {
        let mut flags = 0;
        if rng.gen_bool(0.35) {
            flags |= F_NEXT;
        }
        if rng.gen_bool(0.5) {
            flags |= F_WRITE;
        }
        if rng.gen_bool(0.1) {
            flags |= F_INDIRECT;
        }
        let avail = match rng.gen_range(0..100) {
            0..=84 => {
                if wrap {
                    PACKED_DESC_F_AVAIL
                } else {
                    PACKED_DESC_F_USED
                }
            }
            85..=89 => 0,
            90..=94 => PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED,
            _ => rng.gen::<u16>() & (PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED),
        };
        let raw = if rng.gen_bool(0.02) {
            rng.gen()
        } else {
            flags | avail
        };
        let id = if rng.gen_bool(0.95) {
            rng.gen_range(0..FSIZE)
        } else {
            rng.gen()
        };
        let mut x = P {
            addr: rand_addr(rng),
            len: rand_len(rng),
            id,
            flags,
            raw: Some(raw),
        };
        if raw & F_INDIRECT != 0 && rng.gen_bool(0.7) {
            x.addr = arena + 16 * rng.gen_range(0..FARENA / 16 - 64);
            x.len = 16 * rng.gen_range(1..=8);
        }
        x
    };
    let mut kinds_seen = [0u64; FAULT_KINDS.len()];
    let mut clean = 0u32;
    let mut frames_ok = 0u64;
    for it in 0..ITERS {
        let c0 = dev.counters();
        // Random indirect-table contents all over the arena.
        for _ in 0..8 {
            let at = arena + 16 * rng.gen_range(0..FARENA / 16 - 8);
            for k in 0..8 {
                let x = rand_desc(&mut rng, true);
                drv.mem.write_u64(at + 16 * k, x.addr).unwrap();
                drv.mem.write_u32(at + 16 * k + 8, x.len).unwrap();
                drv.mem.write_u16(at + 16 * k + 12, x.id).unwrap();
                drv.mem.write_u16(at + 16 * k + 14, x.raw.unwrap()).unwrap();
            }
        }
        let mut queues = vec![RXQ, TXQ, CTRLQ];
        queues.retain(|_| rng.gen_bool(0.6));
        for &q in &queues {
            let (desc, size) = {
                let r = drv.packed_ring(q).unwrap();
                (r.desc, r.size)
            };
            let (mut pos, mut wrap) = split_off_wrap(dev.queue(q).unwrap().last_avail);
            let n = rng.gen_range(0..=size);
            let mut head = None;
            for _ in 0..n {
                let x = rand_desc(&mut rng, wrap);
                let at = desc + 16 * u64::from(pos % size);
                drv.mem.write_u64(at, x.addr).unwrap();
                drv.mem.write_u32(at + 8, x.len).unwrap();
                drv.mem.write_u16(at + 12, x.id).unwrap();
                match head {
                    None => head = Some((at + 14, x.raw.unwrap())),
                    Some(_) => drv.mem.write_u16(at + 14, x.raw.unwrap()).unwrap(),
                }
                pos += 1;
                if pos >= size {
                    pos = 0;
                    wrap = !wrap;
                }
            }
            if let Some((at, f)) = head {
                drv.mem.store_u16_release(at, f).unwrap();
            }
        }
        for _ in 0..rng.gen_range(0..3) {
            let len = rng.gen_range(14..1600);
            let f = frames::build(mac, mac, 9, u64::from(it), len, &mut rng);
            dev.inbox().push(&f[..len.min(f.len())]);
        }
        queues.push(if rng.gen_bool(0.5) { RXQ } else { TXQ });
        for &q in &queues {
            drv.kick(q).unwrap();
        }
        let s = drv.status().unwrap();
        let c = dev.counters();
        let new_faults: u64 = c.faults.iter().zip(&c0.faults).map(|(a, b)| a - b).sum();
        if s & st::DEVICE_NEEDS_RESET != 0 {
            let f = dev
                .fault()
                .unwrap_or_else(|| panic!("iteration {it}: NEEDS_RESET without a fault"));
            assert!(
                !matches!(f, DeviceFault::Internal { .. }),
                "iteration {it}: the datapath panicked: {f}"
            );
            let k = f.kind_index();
            assert!(
                c.faults[k] > c0.faults[k],
                "iteration {it}: {f:?} not counted"
            );
            kinds_seen[k] += 1;
        } else {
            assert_eq!(s, RUNNING, "iteration {it}");
            assert_eq!(
                new_faults, 0,
                "iteration {it}: faults counted without NEEDS_RESET"
            );
            clean += 1;
        }
        assert!(
            canary.snapshot() == canary_img,
            "iteration {it}: read-only canary written"
        );
        if s & st::DEVICE_NEEDS_RESET != 0 || it % 25 == 24 {
            let no_ind = rng.gen_bool(0.2);
            drv.opts.features = default_driver_features() | (1 << bits::RING_PACKED);
            if no_ind {
                drv.opts.features &= !((1 << bits::INDIRECT_DESC) | (1 << bits::MRG_RXBUF));
            }
            drv.start()
                .unwrap_or_else(|e| panic!("iteration {it}: restart: {e}"));
            assert_eq!(dev.fault(), None);
            if it % 100 == 99 {
                let f = frames::build(mac, mac, 3, u64::from(it), 200, &mut rng);
                assert_eq!(drv.send(0, &[&f]).unwrap(), 1);
                assert_eq!(
                    drv.recv(0).unwrap(),
                    vec![f],
                    "iteration {it}: loopback after restart"
                );
                frames_ok += 1;
            }
        }
    }
    let distinct = kinds_seen.iter().filter(|&&n| n > 0).count();
    eprintln!(
        "packed fuzz: {clean} clean iterations, faults by kind: {:?}",
        FAULT_KINDS
            .iter()
            .zip(kinds_seen)
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    );
    assert!(clean > 50, "only {clean} iterations without a fault");
    assert!(distinct >= 8, "only {distinct} fault kinds reached");
    assert!(
        kinds_seen[DeviceFault::ChainNotAvailable {
            queue: 0,
            head: 0,
            index: 0
        }
        .kind_index()]
            > 0,
        "chain_not_available reached"
    );
    assert!(
        kinds_seen[DeviceFault::BufferIdOutOfRange {
            queue: 0,
            id: 0,
            size: 0
        }
        .kind_index()]
            > 0,
        "buffer_id_out_of_range reached"
    );
    assert_eq!(frames_ok, u64::from(ITERS / 100));
}
