//! Hostile driver input (virtio 1.2 2.1.2, 2.7): every malformed ring or descriptor structure a
//! driver can hand the device must end in DEVICE_NEEDS_RESET with a config interrupt (vector 0 in
//! DPDK's plan), the fault counted by kind and named by `Device::fault()`, no panic, no byte
//! touched outside a mapping (nor inside one, for a chain the device refuses), and no DMA at all
//! while broken. A reset through the driver then brings the device back: frames loop again.
//!
//! Chains are built by hand in the driver model's rings (`drv.ring(q)` gives the ring
//! addresses) and published by storing avail->idx, then kicked.

use bar_registers::virtio::{bits, common, default_driver_features, device_status as st};
use device::fault::FAULT_KINDS;
use device::{Device, DeviceConfig, DeviceFault, DmaMapper, RegionAccess};
use dma::{Backing, DmaFault, DmaKind, Perms, SharedMemory};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;

mod support;

use support::hostile::*;

/// A raw split-ring descriptor.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

fn opts() -> DriverOptions {
    DriverOptions {
        queue_size: QSIZE,
        memory: MEM,
        ..Default::default()
    }
}

impl Rig {
    /// (desc, avail, used, size) of queue `q`.
    fn ring(&mut self, q: u16) -> (u64, u64, u64, u16) {
        let r = self.drv.ring(q).expect("ring");
        (r.desc, r.avail, r.used, r.size)
    }

    fn write_desc(&self, at: u64, x: Desc) {
        let m = &self.drv.mem;
        m.write_u64(at, x.addr).unwrap();
        m.write_u32(at + 8, x.len).unwrap();
        m.write_u16(at + 12, x.flags).unwrap();
        m.write_u16(at + 14, x.next).unwrap();
    }

    /// Writes an indirect table at `at`.
    fn table(&self, at: u64, t: &[Desc]) {
        for (i, x) in t.iter().enumerate() {
            self.write_desc(at + 16 * i as u64, *x);
        }
    }

    /// Writes `descs` into queue `q`'s descriptor table, `heads` into the avail ring from the
    /// device's next slot on, and publishes avail->idx = last_avail + heads.len().
    fn post(&mut self, q: u16, descs: &[(u16, Desc)], heads: &[u16]) {
        let (desc, avail, _, size) = self.ring(q);
        for &(i, x) in descs {
            self.write_desc(desc + 16 * u64::from(i), x);
        }
        let last = self.dev.queue(q).expect("queue").last_avail;
        for (k, &h) in heads.iter().enumerate() {
            let slot = last.wrapping_add(k as u16) % size;
            self.drv
                .mem
                .write_u16(avail + 4 + 2 * u64::from(slot), h)
                .unwrap();
        }
        self.set_avail_idx(q, last.wrapping_add(heads.len() as u16));
    }

    fn set_avail_idx(&mut self, q: u16, idx: u16) {
        let (_, avail, _, _) = self.ring(q);
        self.drv.mem.store_u16_release(avail + 2, idx).unwrap();
    }
}

/// The same hostile cases, TX only: (name, descriptors, head, expected).
type TxCase = (&'static str, fn(u64) -> Vec<(u16, Desc)>, DeviceFault);

fn run_tx_cases(cases: &[TxCase]) {
    for (name, descs, want) in cases {
        run_case(name, opts(), |r| {
            let a = r.arena;
            r.post(TXQ, &descs(a), &[0]);
            (Trigger::Kick(TXQ), want.clone())
        });
    }
}

// ------------------------------------------------------------------------------- loops, length

#[test]
fn descriptor_loops_are_chain_too_long() {
    let too_long = |queue| DeviceFault::ChainTooLong {
        queue,
        head: 0,
        limit: QSIZE.into(),
    };
    run_tx_cases(&[
        (
            "tx: next points at itself",
            |a| vec![(0, d(a, 64, F_NEXT, 0))],
            too_long(TXQ),
        ),
        (
            "tx: next points back to an earlier one",
            |a| {
                vec![
                    (0, d(a, 64, F_NEXT, 1)),
                    (1, d(a, 64, F_NEXT, 2)),
                    (2, d(a, 64, F_NEXT, 0)),
                ]
            },
            too_long(TXQ),
        ),
    ]);
    run_case("rx: writable loop", opts(), |r| {
        let a = r.arena;
        r.post(
            RXQ,
            &[
                (0, d(a, 64, F_WRITE | F_NEXT, 1)),
                (1, d(a + 64, 64, F_WRITE | F_NEXT, 0)),
            ],
            &[0],
        );
        (Trigger::FrameKick(RXQ), too_long(RXQ))
    });
    run_case("ctrl: loop after the command", opts(), |r| {
        let a = r.arena;
        r.post(
            CTRLQ,
            &[
                (0, d(a, 2, F_NEXT, 1)),
                (1, d(a + 64, 1, F_WRITE | F_NEXT, 1)),
            ],
            &[0],
        );
        (Trigger::Kick(CTRLQ), too_long(CTRLQ))
    });
}

#[test]
fn chain_longer_than_queue_size() {
    // Every descriptor of the ring in one chain is the longest legal chain: accepted.
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let all: Vec<(u16, Desc)> = (0..QSIZE)
        .map(|i| (i, d(a, 16, if i + 1 < QSIZE { F_NEXT } else { 0 }, i + 1)))
        .collect();
    rig.post(TXQ, &all, &[0]);
    rig.plain_tx_header(a);
    let c0 = rig.dev.counters();
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    let c = rig.dev.counters();
    assert_eq!(
        c.queues[usize::from(TXQ)].chains,
        c0.queues[usize::from(TXQ)].chains + 1
    );
    assert_eq!(
        c.tx_frames,
        c0.tx_frames + 1,
        "a 1012-byte frame in {QSIZE} descriptors"
    );
    drop(rig);

    // The ring closed into a cycle: size + 1 visits from head 5.
    run_case("tx: cycle through the whole ring", opts(), |r| {
        let a = r.arena;
        let ring: Vec<(u16, Desc)> = (0..QSIZE)
            .map(|i| (i, d(a, 16, F_NEXT, (i + 1) % QSIZE)))
            .collect();
        r.post(TXQ, &ring, &[5]);
        (
            Trigger::Kick(TXQ),
            DeviceFault::ChainTooLong {
                queue: TXQ,
                head: 5,
                limit: QSIZE.into(),
            },
        )
    });
    // A loop inside an indirect table: limited by the table's entries.
    run_case("tx: loop inside an indirect table", opts(), |r| {
        let a = r.arena;
        let t = a + 0x1000;
        r.table(
            t,
            &[
                d(a, 16, F_NEXT, 1),
                d(a, 16, F_NEXT, 2),
                d(a, 16, F_NEXT, 3),
                d(a, 16, F_NEXT, 1),
            ],
        );
        r.post(TXQ, &[(0, d(t, 64, F_INDIRECT, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            DeviceFault::ChainTooLong {
                queue: TXQ,
                head: 0,
                limit: 4,
            },
        )
    });
    run_case("rx: loop inside an indirect table", opts(), |r| {
        let a = r.arena;
        let t = a + 0x1000;
        r.table(t, &[d(a, 16, F_WRITE | F_NEXT, 0)]);
        r.post(RXQ, &[(0, d(t, 16, F_INDIRECT, 0))], &[0]);
        (
            Trigger::FrameKick(RXQ),
            DeviceFault::ChainTooLong {
                queue: RXQ,
                head: 0,
                limit: 1,
            },
        )
    });
}

// ------------------------------------------------------------------------------- indirect rules

#[test]
fn indirect_violations() {
    run_tx_cases(&[
        (
            "indirect with NEXT",
            |a| {
                vec![
                    (0, d(a + 0x1000, 16, F_INDIRECT | F_NEXT, 1)),
                    (1, d(a, 64, 0, 0)),
                ]
            },
            DeviceFault::IndirectWithNext { queue: TXQ },
        ),
        (
            "indirect table len 0",
            |a| vec![(0, d(a + 0x1000, 0, F_INDIRECT, 0))],
            DeviceFault::BadIndirectLength { queue: TXQ, len: 0 },
        ),
        (
            "indirect table len 8",
            |a| vec![(0, d(a + 0x1000, 8, F_INDIRECT, 0))],
            DeviceFault::BadIndirectLength { queue: TXQ, len: 8 },
        ),
        (
            "indirect table len 24",
            |a| vec![(0, d(a + 0x1000, 24, F_INDIRECT, 0))],
            DeviceFault::BadIndirectLength {
                queue: TXQ,
                len: 24,
            },
        ),
        (
            "indirect table of 1025 entries",
            |a| vec![(0, d(a + 0x1000, 16 * 1025, F_INDIRECT, 0))],
            DeviceFault::BadIndirectLength {
                queue: TXQ,
                len: 16 * 1025,
            },
        ),
        (
            "indirect table len u32::MAX",
            |a| vec![(0, d(a + 0x1000, u32::MAX, F_INDIRECT, 0))],
            DeviceFault::BadIndirectLength {
                queue: TXQ,
                len: u32::MAX,
            },
        ),
    ]);
    run_case("indirect inside indirect", opts(), |r| {
        let a = r.arena;
        let t = a + 0x2000;
        r.table(t, &[d(a, 14, F_NEXT, 1), d(a + 0x3000, 16, F_INDIRECT, 0)]);
        r.post(TXQ, &[(0, d(t, 32, F_INDIRECT, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            DeviceFault::NestedIndirect { queue: TXQ },
        )
    });
    run_case(
        "indirect when INDIRECT_DESC was not negotiated",
        DriverOptions {
            features: default_driver_features() & !(1 << bits::INDIRECT_DESC),
            ..opts()
        },
        |r| {
            assert_eq!(r.dev.negotiated_features() & (1 << bits::INDIRECT_DESC), 0);
            let a = r.arena;
            let t = a + 0x1000;
            r.table(t, &[d(a, 64, 0, 0)]);
            r.post(TXQ, &[(0, d(t, 16, F_INDIRECT, 0))], &[0]);
            (
                Trigger::Kick(TXQ),
                DeviceFault::IndirectNotNegotiated { queue: TXQ },
            )
        },
    );

    // The largest legal table (1024 entries) is accepted.
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let t = a + 0x4000;
    let mut table = vec![d(a, 64, 0, 0)];
    table.resize(1024, d(0, 0, 0, 0));
    rig.table(t, &table);
    rig.post(TXQ, &[(0, d(t, 16 * 1024, F_INDIRECT, 0))], &[0]);
    rig.plain_tx_header(a);
    let c0 = rig.dev.counters();
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    assert_eq!(rig.dev.counters().tx_frames, c0.tx_frames + 1);
}

// ------------------------------------------------------------------------------- indexes

#[test]
fn descriptor_index_out_of_range() {
    let oor = |queue, index, size| DeviceFault::DescriptorIndexOutOfRange { queue, index, size };
    for (name, head, want) in [
        ("tx head == size", QSIZE, oor(TXQ, QSIZE, QSIZE)),
        ("tx head 0xffff", 0xFFFF, oor(TXQ, 0xFFFF, QSIZE)),
    ] {
        run_case(name, opts(), |r| {
            r.post(TXQ, &[], &[head]);
            (Trigger::Kick(TXQ), want)
        });
    }
    run_tx_cases(&[
        (
            "tx next >= size",
            |a| vec![(0, d(a, 64, F_NEXT, QSIZE + 10))],
            oor(TXQ, QSIZE + 10, QSIZE),
        ),
        (
            "tx next deep in a chain",
            |a| vec![(0, d(a, 14, F_NEXT, 7)), (7, d(a, 64, F_NEXT, 0x8000))],
            oor(TXQ, 0x8000, QSIZE),
        ),
    ]);
    run_case("tx next >= indirect table entries", opts(), |r| {
        let a = r.arena;
        let t = a + 0x1000;
        r.table(t, &[d(a, 64, F_NEXT, 2), d(a, 64, 0, 0)]);
        r.post(TXQ, &[(0, d(t, 32, F_INDIRECT, 0))], &[0]);
        (Trigger::Kick(TXQ), oor(TXQ, 2, 2))
    });
    run_case("rx head == size", opts(), |r| {
        r.post(RXQ, &[], &[QSIZE]);
        (Trigger::FrameKick(RXQ), oor(RXQ, QSIZE, QSIZE))
    });
    run_case("ctrl head == size", opts(), |r| {
        r.post(CTRLQ, &[], &[QSIZE + 1]);
        (Trigger::Kick(CTRLQ), oor(CTRLQ, QSIZE + 1, QSIZE))
    });
}

#[test]
fn avail_index_jump() {
    run_case("tx avail->idx size + 1 ahead", opts(), |r| {
        r.set_avail_idx(TXQ, QSIZE + 1);
        (
            Trigger::Kick(TXQ),
            DeviceFault::AvailIndexJump {
                queue: TXQ,
                avail: QSIZE + 1,
                last: 0,
                pending: QSIZE + 1,
                size: QSIZE,
            },
        )
    });
    run_case("tx avail->idx moves backwards", opts(), |r| {
        r.set_avail_idx(TXQ, 0xFFFF);
        (
            Trigger::Kick(TXQ),
            DeviceFault::AvailIndexJump {
                queue: TXQ,
                avail: 0xFFFF,
                last: 0,
                pending: 0xFFFF,
                size: QSIZE,
            },
        )
    });
    run_case("tx jump after real traffic", opts(), |r| {
        let f = r.frame(80);
        assert_eq!(r.drv.send(0, &[&f]).unwrap(), 1);
        assert_eq!(r.dev.queue(TXQ).unwrap().last_avail, 1);
        r.set_avail_idx(TXQ, 1 + QSIZE + 1);
        (
            Trigger::Kick(TXQ),
            DeviceFault::AvailIndexJump {
                queue: TXQ,
                avail: QSIZE + 2,
                last: 1,
                pending: QSIZE + 1,
                size: QSIZE,
            },
        )
    });
    run_case("rx avail->idx jump", opts(), |r| {
        r.set_avail_idx(RXQ, 2 * QSIZE);
        (
            Trigger::FrameKick(RXQ),
            DeviceFault::AvailIndexJump {
                queue: RXQ,
                avail: 2 * QSIZE,
                last: 0,
                pending: 2 * QSIZE,
                size: QSIZE,
            },
        )
    });
    run_case("ctrl avail->idx jump", opts(), |r| {
        r.set_avail_idx(CTRLQ, 1000);
        (
            Trigger::Kick(CTRLQ),
            DeviceFault::AvailIndexJump {
                queue: CTRLQ,
                avail: 1000,
                last: 0,
                pending: 1000,
                size: QSIZE,
            },
        )
    });
    // Exactly size pending is legal: the whole ring of one-descriptor chains.
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let descs: Vec<(u16, Desc)> = (0..QSIZE).map(|i| (i, d(a, 60, 0, 0))).collect();
    let heads: Vec<u16> = (0..QSIZE).collect();
    rig.post(TXQ, &descs, &heads);
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    assert_eq!(rig.dev.queue(TXQ).unwrap().last_used, QSIZE);
}

#[test]
fn zero_length_descriptor() {
    run_tx_cases(&[
        (
            "tx head len 0",
            |a| vec![(0, d(a, 0, 0, 0))],
            DeviceFault::ZeroLengthDescriptor {
                queue: TXQ,
                index: 0,
            },
        ),
        (
            "tx second desc len 0",
            |a| vec![(0, d(a, 64, F_NEXT, 3)), (3, d(a, 0, 0, 0))],
            DeviceFault::ZeroLengthDescriptor {
                queue: TXQ,
                index: 3,
            },
        ),
    ]);
    run_case("rx len 0", opts(), |r| {
        r.post(RXQ, &[(0, d(r.arena, 0, F_WRITE, 0))], &[0]);
        (
            Trigger::FrameKick(RXQ),
            DeviceFault::ZeroLengthDescriptor {
                queue: RXQ,
                index: 0,
            },
        )
    });
    run_case("tx indirect entry len 0", opts(), |r| {
        let a = r.arena;
        let t = a + 0x1000;
        r.table(t, &[d(a, 14, F_NEXT, 1), d(a, 0, 0, 0)]);
        r.post(TXQ, &[(0, d(t, 32, F_INDIRECT, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            DeviceFault::ZeroLengthDescriptor {
                queue: TXQ,
                index: 1,
            },
        )
    });
    run_case("ctrl status byte len 0", opts(), |r| {
        let a = r.arena;
        r.post(
            CTRLQ,
            &[(0, d(a, 2, F_NEXT, 1)), (1, d(a + 64, 0, F_WRITE, 0))],
            &[0],
        );
        (
            Trigger::Kick(CTRLQ),
            DeviceFault::ZeroLengthDescriptor {
                queue: CTRLQ,
                index: 1,
            },
        )
    });
}

#[test]
fn oversized_tx_chain() {
    let over = |total| DeviceFault::OversizedChain {
        queue: TXQ,
        total,
        limit: MAX_TX_CHAIN,
    };
    run_tx_cases(&[
        (
            "one descriptor of limit + 1",
            |a| vec![(0, d(a, MAX_TX_CHAIN as u32 + 1, 0, 0))],
            over(MAX_TX_CHAIN + 1),
        ),
        (
            "two descriptors past the limit",
            |a| vec![(0, d(a, 40_000, F_NEXT, 1)), (1, d(a, 40_000, 0, 0))],
            over(80_000),
        ),
        (
            "len u32::MAX",
            |a| vec![(0, d(a, u32::MAX, 0, 0))],
            over(u64::from(u32::MAX)),
        ),
        (
            "many small descriptors",
            |a| (0..QSIZE).map(|i| (i, d(a, 2048, F_NEXT, i + 1))).collect(),
            over(33 * 2048),
        ),
    ]);
    // Exactly the limit is a legal chain: the frame is dropped as oversize, the chain completed.
    let mut rig = Rig::new(opts());
    rig.post(TXQ, &[(0, d(rig.arena, MAX_TX_CHAIN as u32, 0, 0))], &[0]);
    rig.plain_tx_header(rig.arena);
    let c0 = rig.dev.counters();
    rig.drv.kick(TXQ).unwrap();
    assert_eq!(rig.dev.fault(), None);
    let c = rig.dev.counters();
    assert_eq!(c.tx_dropped_oversize, c0.tx_dropped_oversize + 1);
    assert_eq!(rig.dev.queue(TXQ).unwrap().last_used, 1);
    assert_eq!(rig.drv.status().unwrap(), RUNNING);
    rig.recover("after a limit-sized chain");
}

// ------------------------------------------------------------------------------- directions

#[test]
fn descriptor_direction_rules() {
    run_tx_cases(&[
        (
            "tx: writable descriptor",
            |a| vec![(0, d(a, 64, F_WRITE, 0))],
            DeviceFault::WritableInTxChain { queue: TXQ },
        ),
        (
            "tx: writable after readable",
            |a| vec![(0, d(a, 12, F_NEXT, 1)), (1, d(a + 64, 64, F_WRITE, 0))],
            DeviceFault::WritableInTxChain { queue: TXQ },
        ),
    ]);
    run_case("rx: readable descriptor", opts(), |r| {
        r.post(RXQ, &[(0, d(r.arena, 2048, 0, 0))], &[0]);
        (
            Trigger::FrameKick(RXQ),
            DeviceFault::ReadableInRxChain { queue: RXQ },
        )
    });
    run_case("rx: readable after writable", opts(), |r| {
        let a = r.arena;
        r.post(
            RXQ,
            &[
                (0, d(a, 2048, F_WRITE | F_NEXT, 1)),
                (1, d(a + 4096, 64, 0, 0)),
            ],
            &[0],
        );
        (
            Trigger::FrameKick(RXQ),
            DeviceFault::ReadableInRxChain { queue: RXQ },
        )
    });
    run_case("rx: readable inside an indirect table", opts(), |r| {
        let a = r.arena;
        let t = a + 0x8000;
        r.table(
            t,
            &[d(a, 1024, F_WRITE | F_NEXT, 1), d(a + 1024, 1024, 0, 0)],
        );
        r.post(RXQ, &[(0, d(t, 32, F_INDIRECT, 0))], &[0]);
        (
            Trigger::FrameKick(RXQ),
            DeviceFault::ReadableInRxChain { queue: RXQ },
        )
    });
    run_case("ctrl: readable after writable", opts(), |r| {
        let a = r.arena;
        r.drv.mem.write(a, &[0, 0, 1]).unwrap();
        r.post(
            CTRLQ,
            &[
                (0, d(a, 3, F_NEXT, 1)),
                (1, d(a + 64, 1, F_WRITE | F_NEXT, 2)),
                (2, d(a + 128, 4, 0, 0)),
            ],
            &[0],
        );
        (
            Trigger::Kick(CTRLQ),
            DeviceFault::ReadableAfterWritable { queue: CTRLQ },
        )
    });
    run_case("ctrl: no status byte", opts(), |r| {
        let a = r.arena;
        r.drv.mem.write(a, &[0, 0, 1]).unwrap();
        r.post(
            CTRLQ,
            &[(0, d(a, 2, F_NEXT, 1)), (1, d(a + 2, 1, 0, 0))],
            &[0],
        );
        (
            Trigger::Kick(CTRLQ),
            DeviceFault::CtrlNoStatus { queue: CTRLQ },
        )
    });
}

/// A control command without a device-writable status byte is refused before it runs.
#[test]
fn ctrl_command_without_status_is_not_executed() {
    let new_mac = [0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE];
    let mut rig = Rig::new(opts());
    let old = rig.drv.mac().unwrap();
    assert_ne!(old, new_mac);
    let a = rig.arena;
    let mut cmd = vec![1u8, 1];
    cmd.extend_from_slice(&new_mac);
    rig.drv.mem.write(a, &cmd).unwrap();
    rig.post(
        CTRLQ,
        &[(0, d(a, 2, F_NEXT, 1)), (1, d(a + 2, 6, 0, 0))],
        &[0],
    );
    let b = rig.snapshot();
    rig.drv.kick(CTRLQ).unwrap();
    // Config space is still readable while broken: the MAC must not have changed.
    assert_eq!(
        rig.drv.mac().unwrap(),
        old,
        "MAC_ADDR_SET without a status byte was executed"
    );
    assert_eq!(rig.dev.counters().ctrl_commands, b.counters.ctrl_commands);
    rig.assert_broken(
        &b,
        &DeviceFault::CtrlNoStatus { queue: CTRLQ },
        "ctrl without status",
    );
    rig.recover("ctrl without status");
    // The same command with a status byte works (so the check above can fail).
    rig.drv.ctrl(1, 1, &new_mac).unwrap();
    assert_eq!(rig.drv.mac().unwrap(), new_mac);
}

// ------------------------------------------------------------------------------- DMA faults

#[test]
fn buffer_dma_faults() {
    let dma = |queue, fault| DeviceFault::Dma { queue, fault };
    run_case("tx: buffer unmapped", opts(), |r| {
        r.post(TXQ, &[(0, d(0x1000, 64, 0, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::Unmapped {
                    iova: 0x1000,
                    len: 64,
                },
            ),
        )
    });
    run_case("tx: buffer crosses the end of guest memory", opts(), |r| {
        let end = r.mem_end();
        assert_eq!(
            r.dev.address_space().mapping_at(end),
            None,
            "nothing may be mapped after guest memory"
        );
        r.post(TXQ, &[(0, d(end - 32, 64, 0, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::CrossesMappingEnd {
                    iova: end - 32,
                    len: 64,
                    mapping_end: end,
                },
            ),
        )
    });
    run_case("tx: addr + len overflows u64", opts(), |r| {
        r.post(TXQ, &[(0, d(u64::MAX - 15, 64, 0, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::AddressOverflow {
                    iova: u64::MAX - 15,
                    len: 64,
                },
            ),
        )
    });
    run_case("tx: second buffer unmapped", opts(), |r| {
        let a = r.arena;
        r.post(
            TXQ,
            &[(0, d(a, 12, F_NEXT, 1)), (1, d(0xdead_0000, 60, 0, 0))],
            &[0],
        );
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::Unmapped {
                    iova: 0xdead_0000,
                    len: 60,
                },
            ),
        )
    });
    run_case("tx: indirect table unmapped", opts(), |r| {
        r.post(TXQ, &[(0, d(0x2000, 48, F_INDIRECT, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::Unmapped {
                    iova: 0x2000,
                    len: 48,
                },
            ),
        )
    });
    // A 60-byte frame and its 12-byte header in one 2048-byte buffer are one 72-byte DMA write.
    run_case("rx: buffer unmapped", opts(), |r| {
        r.post(RXQ, &[(0, d(0x1000, 2048, F_WRITE, 0))], &[0]);
        (
            Trigger::FrameKick(RXQ),
            dma(
                RXQ,
                DmaFault::Unmapped {
                    iova: 0x1000,
                    len: 72,
                },
            ),
        )
    });
    run_case("rx: addr + len overflows u64", opts(), |r| {
        r.post(RXQ, &[(0, d(u64::MAX - 5, 2048, F_WRITE, 0))], &[0]);
        (
            Trigger::FrameKick(RXQ),
            dma(
                RXQ,
                DmaFault::AddressOverflow {
                    iova: u64::MAX - 5,
                    len: 72,
                },
            ),
        )
    });
    run_case("rx: buffer in a read-only mapping", opts(), |r| {
        let ro = r.map_ro(0x2_0000_0000, 0x10000);
        r.post(RXQ, &[(0, d(ro + 0x800, 2048, F_WRITE, 0))], &[0]);
        (
            Trigger::FrameKick(RXQ),
            dma(
                RXQ,
                DmaFault::Permission {
                    iova: ro + 0x800,
                    len: 72,
                    write: true,
                },
            ),
        )
    });
    run_case(
        "rx: buffer half in a read-only mapping right after guest memory",
        opts(),
        |r| {
            let end = r.mem_end();
            let ro = r.map_ro(end, 0x10000);
            // The last 8 bytes of guest memory: canary that must survive the faulting write.
            r.drv.mem.fill(end - 8, 8, 0xEE).unwrap();
            r.post(RXQ, &[(0, d(ro - 8, 2048, F_WRITE, 0))], &[0]);
            (
                Trigger::FrameKick(RXQ),
                dma(
                    RXQ,
                    DmaFault::Permission {
                        iova: end - 8,
                        len: 72,
                        write: true,
                    },
                ),
            )
        },
    );
    run_case("ctrl: status byte in a read-only mapping", opts(), |r| {
        let a = r.arena;
        let ro = r.map_ro(0x4_0000_0000, 0x1000);
        r.drv.mem.write(a, &[0, 0, 1]).unwrap();
        r.post(
            CTRLQ,
            &[(0, d(a, 3, F_NEXT, 1)), (1, d(ro + 7, 1, F_WRITE, 0))],
            &[0],
        );
        (
            Trigger::Kick(CTRLQ),
            dma(
                CTRLQ,
                DmaFault::Permission {
                    iova: ro + 7,
                    len: 1,
                    write: true,
                },
            ),
        )
    });
}

/// Mappings the VMM changes or restricts: no backing fd, write-only, and a mapping removed after
/// the device used (and cached) it: the IOTLB must not serve a stale translation.
#[test]
fn mapping_faults() {
    let dma = |queue, fault| DeviceFault::Dma { queue, fault };
    run_case("tx: buffer in a mapping without backing", opts(), |r| {
        r.dev
            .dma_map(0x5_0000_0000, 0x1000, Perms::RW, Backing::None)
            .unwrap();
        r.post(TXQ, &[(0, d(0x5_0000_0100, 64, 0, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::NoBacking {
                    iova: 0x5_0000_0100,
                    len: 64,
                },
            ),
        )
    });
    run_case("tx: buffer in a write-only mapping", opts(), |r| {
        let shm = SharedMemory::new("hostile-wo", 0x1000).unwrap();
        r.dev
            .dma_map(
                0x5_0000_0000,
                0x1000,
                Perms::WO,
                Backing::Fd {
                    file: shm.try_clone_file().unwrap(),
                    offset: 0,
                },
            )
            .unwrap();
        r.post(TXQ, &[(0, d(0x5_0000_0000, 64, 0, 0))], &[0]);
        (
            Trigger::Kick(TXQ),
            dma(
                TXQ,
                DmaFault::Permission {
                    iova: 0x5_0000_0000,
                    len: 64,
                    write: false,
                },
            ),
        )
    });
    run_case("tx: buffer in a mapping removed after use", opts(), |r| {
        let x = 0x6_0000_0000;
        let shm = SharedMemory::new("hostile-gone", 0x1000).unwrap();
        let mac = r.drv.mac().unwrap();
        shm.write(12, &mac).unwrap();
        shm.write(18, &mac).unwrap();
        r.dev
            .dma_map(
                x,
                0x1000,
                Perms::RW,
                Backing::Fd {
                    file: shm.try_clone_file().unwrap(),
                    offset: 0,
                },
            )
            .unwrap();
        r.post(TXQ, &[(0, d(x, 72, 0, 0))], &[0]);
        let c0 = r.dev.counters();
        r.drv.kick(TXQ).unwrap();
        assert_eq!(r.dev.fault(), None);
        assert_eq!(
            r.dev.counters().tx_frames,
            c0.tx_frames + 1,
            "the mapping works before the unmap"
        );
        assert_eq!(r.dev.dma_unmap(x, 0x1000).unwrap(), 0x1000);
        r.post(TXQ, &[(1, d(x, 72, 0, 0))], &[1]);
        (
            Trigger::Kick(TXQ),
            dma(TXQ, DmaFault::Unmapped { iova: x, len: 72 }),
        )
    });
    run_case("rx: buffer in a mapping removed after use", opts(), |r| {
        let x = 0x6_0000_0000;
        let shm = SharedMemory::new("hostile-gone", 0x1000).unwrap();
        shm.fill(0, 0x1000, 0x33).unwrap();
        r.dev
            .dma_map(
                x,
                0x1000,
                Perms::RW,
                Backing::Fd {
                    file: shm.try_clone_file().unwrap(),
                    offset: 0,
                },
            )
            .unwrap();
        r.post(RXQ, &[(0, d(x, 2048, F_WRITE, 0))], &[0]);
        let f = r.frame(60);
        r.dev.inbox().push(&f);
        r.drv.kick(RXQ).unwrap();
        assert_eq!(r.dev.fault(), None);
        let mut got = vec![0u8; 60];
        shm.read(12, &mut got).unwrap();
        assert_eq!(got, f, "the mapping works before the unmap");
        r.dev.dma_unmap(x, 0x1000).unwrap();
        shm.fill(0, 0x1000, 0x33).unwrap();
        r.post(RXQ, &[(1, d(x, 2048, F_WRITE, 0))], &[1]);
        // The memfd behind the removed mapping is checked for writes like a read-only region.
        r.ro = Some((x, shm));
        (
            Trigger::FrameKick(RXQ),
            dma(RXQ, DmaFault::Unmapped { iova: x, len: 72 }),
        )
    });
}

/// One RX case writes the header before faulting (inside guest memory): check it separately
/// because `run_case` insists on an untouched guest memory.
#[test]
fn rx_fault_after_header_touches_only_guest_memory() {
    let mut rig = Rig::new(opts());
    let a = rig.arena;
    let ro = rig.map_ro(0x3_0000_0000, 0x1000);
    rig.post(
        RXQ,
        &[
            (0, d(a, 12, F_WRITE | F_NEXT, 1)),
            (1, d(ro, 2048, F_WRITE, 0)),
        ],
        &[0],
    );
    let b = rig.snapshot();
    rig.fire(Trigger::FrameKick(RXQ));
    let s = rig.drv.status().unwrap();
    assert_eq!(s, RUNNING | st::DEVICE_NEEDS_RESET);
    assert_eq!(
        rig.dev.fault(),
        Some(DeviceFault::Dma {
            queue: RXQ,
            fault: DmaFault::Permission {
                iova: ro,
                len: 60,
                write: true
            }
        })
    );
    let after = rig.drv.mem.shm().snapshot();
    let off = rig.drv.mem.offset_of(a).unwrap() as usize;
    // Only the 12 header bytes in the arena changed; the used ring was not written.
    for (i, (x, y)) in b.mem.iter().zip(&after).enumerate() {
        if x != y {
            assert!(
                (off..off + 12).contains(&i),
                "byte {i:#x} outside the header changed"
            );
        }
    }
    let (_, _, used, _) = rig.ring(RXQ);
    assert_eq!(
        rig.drv.mem.read_u16(used + 2).unwrap(),
        0,
        "used->idx published after the fault"
    );
    assert!(
        b.ro.unwrap() == rig.ro.as_ref().unwrap().1.snapshot(),
        "read-only region written"
    );
    assert_eq!(
        rig.dev
            .bus_stats()
            .delta(&b.bus)
            .get(DmaKind::RingWrite)
            .transactions,
        0
    );
    rig.assert_quiet_while_broken("rx header then RO");
    rig.recover("rx header then RO");
}

// ------------------------------------------------------------------------------- queue config

#[test]
fn misaligned_rings_at_queue_enable() {
    for (name, reg, delta) in [
        ("desc not 16-aligned", common::QUEUE_DESC, 8u64),
        ("desc 4-aligned only", common::QUEUE_DESC, 4),
        ("avail odd", common::QUEUE_DRIVER, 1),
        ("used not 4-aligned", common::QUEUE_DEVICE, 2),
    ] {
        run_case(name, opts(), |r| {
            let (desc, avail, used, _) = r.ring(TXQ);
            let base = match reg {
                common::QUEUE_DESC => desc,
                common::QUEUE_DRIVER => avail,
                _ => used,
            };
            r.disable_queue(TXQ);
            let v = base + delta;
            let off = r.dev.layout().common.offset + reg;
            r.dev
                .region_write(0, off, &(v as u32).to_le_bytes())
                .unwrap();
            r.dev
                .region_write(0, off + 4, &((v >> 32) as u32).to_le_bytes())
                .unwrap();
            let detail = "ring address misaligned (2.7: desc 16, avail 2, used 4)";
            (
                Trigger::Enable(TXQ),
                DeviceFault::BadQueueConfig { queue: TXQ, detail },
            )
        });
    }
    // The refused queue does not run.
    let mut rig = Rig::new(opts());
    let (desc, ..) = rig.ring(TXQ);
    rig.disable_queue(TXQ);
    rig.dev
        .region_write(0, common::QUEUE_DESC, &((desc + 8) as u32).to_le_bytes())
        .unwrap();
    rig.fire(Trigger::Enable(TXQ));
    assert_eq!(rig.common_read16(common::QUEUE_ENABLE), 0);
    assert!(!rig.dev.queue(TXQ).unwrap().enabled);
}

/// Rings the driver places at the very top of the IOVA space (aligned, so queue_enable accepts
/// them) must fault, not overflow the device's address arithmetic.
#[test]
fn rings_at_top_of_iova_space_fault_without_panic() {
    let mut failures = Vec::new();
    for (name, reg, addr, head) in [
        (
            "desc table at u64::MAX - 15, head 1",
            common::QUEUE_DESC,
            u64::MAX - 15,
            1u16,
        ),
        (
            "avail ring at u64::MAX - 1",
            common::QUEUE_DRIVER,
            u64::MAX - 1,
            0,
        ),
        (
            "used ring at u64::MAX - 3",
            common::QUEUE_DEVICE,
            u64::MAX - 3,
            0,
        ),
    ] {
        let mut rig = Rig::new(opts());
        let a = rig.arena;
        rig.post(TXQ, &[(0, d(a, 60, 0, 0)), (1, d(a, 60, 0, 0))], &[head]);
        rig.disable_queue(TXQ);
        let off = rig.dev.layout().common.offset + reg;
        rig.dev
            .region_write(0, off, &(addr as u32).to_le_bytes())
            .unwrap();
        rig.dev
            .region_write(0, off + 4, &((addr >> 32) as u32).to_le_bytes())
            .unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rig.fire(Trigger::Enable(TXQ));
            rig.drv.kick(TXQ).unwrap();
        }));
        if r.is_err() {
            failures.push(format!("{name}: the device panicked"));
            continue;
        }
        let s = rig.drv.status().unwrap();
        let c = rig.dev.counters();
        if s & st::DEVICE_NEEDS_RESET == 0
            || c.fault("dma_fault") + c.fault("bad_queue_config") != 1
        {
            failures.push(format!(
                "{name}: status {s:#x}, fault {:?}",
                rig.dev.fault()
            ));
            continue;
        }
        rig.assert_quiet_while_broken(name);
        rig.recover(name);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ------------------------------------------------------------------------------- dirty log

/// Logging on with the log at an IOVA the device cannot write, then traffic: the device must
/// stop before publishing used->idx (its log bits could not be written), blame the log
/// (LogDma, counted as log_dma_fault), and write nothing while broken.
fn dirty_log_case(name: &str, log_at: fn(&mut Rig) -> u64, fault: fn(u64) -> DmaFault) {
    let mut rig = Rig::new(opts());
    let log = log_at(&mut rig);
    let size = 0x10000;
    rig.drv.enable_logging(log, size).unwrap();
    let (_, _, used, _) = rig.ring(TXQ);
    // The first log word the publish flushes: the page of the used element just written.
    let word = (used + 4) >> 12 >> 6;
    let want = DeviceFault::LogDma(fault(log + 8 * word));
    let f = rig.frame(200);
    assert_eq!(rig.drv.enqueue_tx(0, &[&f]).unwrap(), 1);
    let mem = rig.drv.mem.clone();
    rig.drv.ring(TXQ).unwrap().publish(&mem).unwrap();
    let b = rig.snapshot();
    rig.drv.kick(TXQ).unwrap();
    rig.assert_fault(&b, &want, name);
    // used->idx was not published without its log bits; the only bytes written are the used
    // element itself (before the publish).
    assert_eq!(
        rig.drv.mem.read_u16(used + 2).unwrap(),
        0,
        "{name}: used->idx published"
    );
    let after = rig.drv.mem.shm().snapshot();
    let elem = rig.drv.mem.offset_of(used + 4).unwrap() as usize;
    for (i, (x, y)) in b.mem.iter().zip(&after).enumerate() {
        assert!(
            x == y || (elem..elem + 8).contains(&i),
            "{name}: guest byte {i:#x} written"
        );
    }
    let bus = rig.dev.bus_stats().delta(&b.bus);
    assert_eq!(bus.get(DmaKind::LogWrite).transactions, 0, "{name}");
    assert_eq!(
        bus.get(DmaKind::RingWrite).transactions,
        1,
        "{name}: only the used element"
    );
    if let (Some(img), Some((_, shm))) = (&b.ro, &rig.ro) {
        assert!(
            *img == shm.snapshot(),
            "{name}: read-only log region written"
        );
    }
    rig.assert_quiet_while_broken(name);
    rig.recover(name);
    assert_eq!(rig.dev.log_stats().log_writes, 0);
}

#[test]
fn dirty_log_fault_stops_the_device() {
    dirty_log_case(
        "log unmapped",
        |_| 0x7_0000_0000,
        |iova| DmaFault::Unmapped { iova, len: 8 },
    );
    dirty_log_case(
        "log read-only",
        |r| r.map_ro(0x7_0000_0000, 0x10000),
        |iova| DmaFault::Permission {
            iova,
            len: 8,
            write: true,
        },
    );
}

// ------------------------------------------------------------------------------- fuzz

/// Random descriptor tables, indirect tables and avail entries into TX, RX and control queues:
/// the device never panics, is either still running with no fault or in NEEDS_RESET with a
/// counted fault, and never writes the read-only canary mapped right after guest memory.
#[test]
fn fuzz_random_rings() {
    const ITERS: u32 = 2000;
    const FSIZE: u16 = 16;
    const FARENA: u64 = 64 << 10;
    const CANARY_LEN: u64 = 64 << 10;
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).expect("device");
    dev.set_loopback();
    let o = DriverOptions {
        queue_size: FSIZE,
        memory: 256 << 20,
        ..Default::default()
    };
    let mut drv = sim_harness::driver::in_process(&dev, o).expect("driver");
    let base = drv.opts.iova_base;
    let end = base + drv.opts.memory;
    let arena = drv.mem.alloc(FARENA, 4096).unwrap();
    let canary = SharedMemory::new("fuzz-canary", CANARY_LEN).unwrap();
    for i in 0..CANARY_LEN / 8 {
        canary.write_u64(8 * i, 0xC0FF_EE00_0000_0000 | i).unwrap();
    }
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
    let mut rng = SmallRng::seed_from_u64(0x0DD_F00D);

    let rand_addr = |rng: &mut SmallRng| -> u64 {
        match rng.gen_range(0..100) {
            0..=49 => arena + rng.gen_range(0..FARENA),
            50..=59 => base + rng.gen_range(0..end - base),
            60..=69 => end + rng.gen_range(0..CANARY_LEN),
            70..=74 => end - rng.gen_range(1..4096),
            75..=79 => end + CANARY_LEN - rng.gen_range(0..64),
            80..=84 => rng.gen(),
            85..=89 => rng.gen_range(0..0x1_0000),
            90..=94 => u64::MAX - rng.gen_range(0..4096),
            _ => base - rng.gen_range(1..4096),
        }
    };
    let rand_len = |rng: &mut SmallRng| -> u32 {
        match rng.gen_range(0..100) {
            0..=4 => 0,
            5..=34 => rng.gen_range(1..=64),
            35..=74 => rng.gen_range(64..=2048),
            75..=89 => rng.gen_range(2048..=70_000),
            _ => rng.gen(),
        }
    };
    let rand_desc = |rng: &mut SmallRng, size: u16| -> Desc {
        let mut flags = 0;
        if rng.gen_bool(0.4) {
            flags |= F_NEXT;
        }
        if rng.gen_bool(0.5) {
            flags |= F_WRITE;
        }
        if rng.gen_bool(0.1) {
            flags |= F_INDIRECT;
        }
        if rng.gen_bool(0.03) {
            flags = rng.gen();
        }
        let next = if rng.gen_bool(0.9) {
            rng.gen_range(0..size)
        } else {
            rng.gen()
        };
        let mut x = d(rand_addr(rng), rand_len(rng), flags, next);
        if flags & F_INDIRECT != 0 && rng.gen_bool(0.7) {
            // Point at a (randomly filled below) table in the arena with a plausible length.
            x.addr = arena + 16 * rng.gen_range(0..FARENA / 16 - 64);
            x.len = 16 * rng.gen_range(1..=8);
        }
        x
    };
    let write_desc = |drv: &NetDriver, at: u64, x: Desc| {
        drv.mem.write_u64(at, x.addr).unwrap();
        drv.mem.write_u32(at + 8, x.len).unwrap();
        drv.mem.write_u16(at + 12, x.flags).unwrap();
        drv.mem.write_u16(at + 14, x.next).unwrap();
    };

    let mut kinds_seen = [0u64; FAULT_KINDS.len()];
    let mut clean = 0u32;
    let mut frames_ok = 0u64;
    for it in 0..ITERS {
        let c0 = dev.counters();
        // Sometimes dirty logging, at a good, unmapped or read-only log.
        if rng.gen_bool(0.05) {
            let log = match rng.gen_range(0..3) {
                0 => arena,
                1 => 0x9_0000_0000,
                _ => end,
            };
            drv.enable_logging(log, 0x10000).unwrap();
        }
        // Random indirect tables all over the arena.
        for _ in 0..8 {
            let at = arena + 16 * rng.gen_range(0..FARENA / 16 - 8);
            for k in 0..8 {
                let x = rand_desc(&mut rng, 8);
                write_desc(&drv, at + 16 * k, x);
            }
        }
        let mut queues = vec![RXQ, TXQ, CTRLQ];
        queues.retain(|_| rng.gen_bool(0.6));
        for &q in &queues {
            let (desc, avail, size) = {
                let r = drv.ring(q).unwrap();
                (r.desc, r.avail, r.size)
            };
            for i in 0..size {
                let x = rand_desc(&mut rng, size);
                write_desc(&drv, desc + 16 * u64::from(i), x);
            }
            let last = dev.queue(q).unwrap().last_avail;
            let n: u16 = if rng.gen_bool(0.05) {
                rng.gen()
            } else {
                rng.gen_range(0..=size)
            };
            for k in 0..n.min(size) {
                let h = if rng.gen_bool(0.95) {
                    rng.gen_range(0..size)
                } else {
                    rng.gen()
                };
                drv.mem
                    .write_u16(avail + 4 + 2 * u64::from(last.wrapping_add(k) % size), h)
                    .unwrap();
            }
            drv.mem
                .store_u16_release(avail + 2, last.wrapping_add(n))
                .unwrap();
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
            assert_eq!(c.needs_reset, c0.needs_reset + 1, "iteration {it}");
            assert!(
                f.to_string().contains("queue") || matches!(f, DeviceFault::LogDma(_)),
                "{f}"
            );
            kinds_seen[k] += 1;
        } else {
            assert_eq!(s, RUNNING, "iteration {it}");
            assert_eq!(dev.fault(), None, "iteration {it}");
            assert_eq!(
                new_faults, 0,
                "iteration {it}: faults counted without NEEDS_RESET"
            );
            clean += 1;
        }
        assert!(
            canary.snapshot() == canary_img,
            "iteration {it}: read-only canary written: {}",
            first_diff(&canary_img, &canary.snapshot())
        );

        if s & st::DEVICE_NEEDS_RESET != 0 || it % 25 == 24 {
            drv.opts.features = if rng.gen_bool(0.8) {
                default_driver_features()
            } else {
                default_driver_features() & !((1 << bits::INDIRECT_DESC) | (1 << bits::MRG_RXBUF))
            };
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
    // The fuzzer reached both outcomes and a good spread of causes.
    let distinct = kinds_seen.iter().filter(|&&n| n > 0).count();
    eprintln!(
        "fuzz: {clean} clean iterations, faults by kind: {:?}",
        FAULT_KINDS
            .iter()
            .zip(kinds_seen)
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    );
    assert!(clean > 50, "only {clean} iterations without a fault");
    assert!(distinct >= 8, "only {distinct} fault kinds reached");
    assert_eq!(frames_ok, u64::from(ITERS / 100));
    assert!(dev.counters().tx_frames > 0 && dev.counters().rx_frames > 0);
}
