//! The packed ring engine's batching, through its public API on real guest memory: one read
//! per descriptor at fetch, batches across the ring end, lists of several slots among
//! one-slot lists, a hostile list inside a batch, rollback, and the used write-back runs.

use super::chain::{Chain, ChainKind, RingSetup};
use super::packed::{
    is_avail, off_wrap, PackedRing, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
};
use crate::fault::DeviceFault;
use dma::{AddressSpace, DmaEngine, DmaKind, Perms, SharedMemory, Traffic};
use std::sync::Arc;

/// Guest memory: the descriptor ring at IOVA `BASE`, the event areas after it, buffers above.
const BASE: u64 = 0x10_0000;
const MEM: u64 = 0x4000;
const DRIVER: u64 = BASE + 0x1000;
const DEVICE: u64 = BASE + 0x1010;
const BUFS: u64 = BASE + 0x2000;

/// One descriptor as the driver writes it: buffer, length, id, NEXT/WRITE flags.
#[derive(Clone, Copy, Debug)]
struct D {
    len: u32,
    id: u16,
    flags: u16,
}

fn d(len: u32, id: u16, flags: u16) -> D {
    D { len, id, flags }
}

/// A packed ring of `size` slots whose device and driver both start at `start` of the lap
/// with wrap counter `wrap` (the LM ring state a migrated queue resumes at).
struct Rig {
    mem: SharedMemory,
    dma: DmaEngine,
    ring: PackedRing,
    size: u16,
    /// Where the driver writes next, and the buffer address it hands out next.
    pos: u16,
    wrap: bool,
    buf: u64,
}

impl Rig {
    fn new(size: u16, start: u16, wrap: bool) -> Rig {
        let mem = SharedMemory::new("packed-tests", MEM).unwrap();
        let space = Arc::new(AddressSpace::new());
        mem.map_into(&space, BASE, 0, MEM, Perms::RW).unwrap();
        let dma = DmaEngine::new(space, 16);
        let ring = PackedRing::new(RingSetup {
            queue: 1,
            size,
            desc: BASE,
            avail: DRIVER,
            used: DEVICE,
            last_avail: off_wrap(start, wrap),
            last_used: off_wrap(start, wrap),
            event_idx: false,
            indirect: false,
            in_order: false,
        })
        .unwrap();
        Rig {
            mem,
            dma,
            ring,
            size,
            pos: start,
            wrap,
            buf: BUFS,
        }
    }

    /// Makes `lists` available at the driver's next slots: every body first, then every flags
    /// word but the first list's first, then that one (virtio 1.2 2.8.21).
    fn post(&mut self, lists: &[&[D]]) {
        let mut flags = Vec::new();
        for l in lists {
            for (k, x) in l.iter().enumerate() {
                let at = u64::from(self.pos) * 16;
                self.mem.write_u64(at, self.buf).unwrap();
                self.mem.write_u32(at + 8, x.len).unwrap();
                self.mem.write_u16(at + 12, x.id).unwrap();
                let next = if k + 1 < l.len() {
                    VIRTQ_DESC_F_NEXT
                } else {
                    0
                };
                let lap = if self.wrap {
                    VIRTQ_DESC_F_AVAIL
                } else {
                    VIRTQ_DESC_F_USED
                };
                flags.push((at + 14, x.flags | next | lap));
                self.buf += 0x100;
                self.pos += 1;
                if self.pos == self.size {
                    self.pos = 0;
                    self.wrap = !self.wrap;
                }
            }
        }
        for &(at, f) in flags.iter().skip(1) {
            self.mem.write_u16(at, f).unwrap();
        }
        if let Some(&(at, f)) = flags.first() {
            self.mem.store_u16_release(at, f).unwrap();
        }
    }

    /// Slot `pos` as it is in memory: (addr, len, id, flags).
    fn slot(&self, pos: u16) -> (u64, u32, u16, u16) {
        let at = u64::from(pos) * 16;
        (
            self.mem.read_u64(at).unwrap(),
            self.mem.read_u32(at + 8).unwrap(),
            self.mem.read_u16(at + 12).unwrap(),
            self.mem.read_u16(at + 14).unwrap(),
        )
    }

    fn traffic(&self, k: DmaKind) -> Traffic {
        self.dma.bus_stats().get(k)
    }

    /// Pops every fetched list: (buffer id, descriptor count) each.
    fn pop_all(&mut self, kind: ChainKind) -> Vec<(u16, usize)> {
        let mut chain = Chain::default();
        let mut out = Vec::new();
        while self
            .ring
            .pop(&mut self.dma, &mut chain, kind, u64::MAX)
            .unwrap()
        {
            out.push((chain.head, chain.descs.len()));
        }
        out
    }
}

/// Used flags of a descriptor written with device wrap counter `wrap`, WRITE when `written`.
fn used(wrap: bool, written: bool) -> u16 {
    let f = if wrap {
        VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
    } else {
        0
    };
    f | if written { VIRTQ_DESC_F_WRITE } else { 0 }
}

#[test]
fn batch_straddling_the_ring_end() {
    let mut r = Rig::new(8, 6, true);
    // Slots 6, 7 of the lap with wrap counter 1, then 0, 1 of the next lap (wrap counter 0).
    r.post(&[
        &[d(64, 0, 0)],
        &[d(64, 1, 0)],
        &[d(64, 2, 0)],
        &[d(64, 3, 0)],
    ]);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 4);
    // The 2-byte peek, then the window of 8 slots in two reads (6..8, 0..6): every slot's 16
    // bytes once, none read again.
    assert_eq!(
        r.traffic(DmaKind::Descriptor),
        Traffic {
            transactions: 3,
            bytes: 2 + 8 * 16
        }
    );
    let popped = r.pop_all(ChainKind::Tx);
    assert_eq!(popped, [(0, 1), (1, 1), (2, 1), (3, 1)]);
    assert_eq!(r.ring.ring_state().0, off_wrap(2, false));
    for (id, _) in popped {
        r.ring.push_used(id, 0);
    }
    assert_eq!(r.ring.pending_used(), 4);
    let before = r.slot(6);
    r.ring.flush_used(&mut r.dma).unwrap();
    // One write per side of the ring end, then the publish of slot 6's flags.
    assert_eq!(
        r.traffic(DmaKind::RingWrite),
        Traffic {
            transactions: 3,
            bytes: 2 * 32 + 2
        }
    );
    assert_eq!(r.slot(6), (before.0, 0, 0, used(true, false)));
    assert_eq!((r.slot(7).2, r.slot(7).3), (1, used(true, false)));
    assert_eq!((r.slot(0).2, r.slot(0).3), (2, used(false, false)));
    assert_eq!((r.slot(1).2, r.slot(1).3), (3, used(false, false)));
    assert_eq!(
        r.ring.ring_state(),
        (off_wrap(2, false), off_wrap(2, false))
    );
    assert_eq!(r.ring.pending_used(), 0);
}

#[test]
fn batch_mixing_lists_of_several_slots_and_single_ones() {
    let mut r = Rig::new(16, 0, true);
    let w = VIRTQ_DESC_F_WRITE;
    // Ids: the last descriptor's counts (2.8.6); the others carry junk.
    r.post(&[
        &[d(100, 5, w)],
        &[d(100, 0xffff, w), d(100, 0xeeee, w), d(100, 7, w)],
        &[d(100, 2, w)],
        &[d(100, 0xdddd, w), d(100, 9, w)],
        &[d(100, 4, w)],
    ]);
    let untouched = [r.slot(2), r.slot(3), r.slot(6)];
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 16).unwrap(), 5);
    let popped = r.pop_all(ChainKind::Rx);
    assert_eq!(popped, [(5, 1), (7, 3), (2, 1), (9, 2), (4, 1)]);
    for ((id, _), len) in popped.into_iter().zip([10, 20, 0, 40, 50]) {
        r.ring.push_used(id, len);
    }
    r.ring.flush_used(&mut r.dma).unwrap();
    // Used descriptors at the lists' first slots (0, 1, 4, 5, 7); the skipped slots keep the
    // driver's descriptors.
    for (pos, id, len) in [(0, 5, 10), (1, 7, 20), (4, 2, 0), (5, 9, 40), (7, 4, 50)] {
        let (_, l, i, f) = r.slot(pos);
        assert_eq!((l, i, f), (len, id, used(true, len > 0)), "slot {pos}");
    }
    assert_eq!([r.slot(2), r.slot(3), r.slot(6)], untouched);
    // Runs: slots 0-1, 4-5, 7, then the publish.
    assert_eq!(
        r.traffic(DmaKind::RingWrite),
        Traffic {
            transactions: 4,
            bytes: 5 * 16 + 2
        }
    );
    assert_eq!(r.ring.ring_state(), (off_wrap(8, true), off_wrap(8, true)));
}

#[test]
fn first_list_longer_than_the_window_reads_the_rest_once() {
    let mut r = Rig::new(8, 0, true);
    r.post(&[&[d(64, 0, 0), d(64, 0, 0), d(64, 0, 0), d(64, 3, 0)]]);
    // A window of 2 slots: the list goes on, so the other 6 free slots are read for it.
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 2).unwrap(), 1);
    assert_eq!(
        r.traffic(DmaKind::Descriptor),
        Traffic {
            transactions: 3,
            bytes: 2 + 8 * 16
        }
    );
    assert_eq!(r.pop_all(ChainKind::Tx), [(3, 4)]);
}

#[test]
fn hostile_list_in_the_middle_of_a_batch() {
    // A buffer id out of range: the good lists before it are fetched, completed and published;
    // the bad one faults when it comes first; the good one after it is never taken.
    let mut r = Rig::new(8, 0, true);
    r.post(&[
        &[d(64, 0, 0)],
        &[d(64, 1, 0)],
        &[d(64, 8, 0)],
        &[d(64, 3, 0)],
    ]);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 2);
    for (id, _) in r.pop_all(ChainKind::Tx) {
        r.ring.push_used(id, 0);
    }
    r.ring.flush_used(&mut r.dma).unwrap();
    assert_eq!(r.slot(1).3, used(true, false));
    let fault = DeviceFault::BufferIdOutOfRange {
        queue: 1,
        id: 8,
        size: 8,
    };
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8), Err(fault));
    assert!(!r.ring.has_fetched());
    assert_eq!(r.slot(3).3, VIRTQ_DESC_F_AVAIL, "slot 3 stays available");
    assert_eq!(r.ring.ring_state(), (off_wrap(2, true), off_wrap(2, true)));

    // A list whose second slot is not available (2.8.17), behind a good list.
    let mut r = Rig::new(8, 0, true);
    r.post(&[&[d(64, 0, 0)], &[d(64, 1, 0)]]);
    // Slot 1 says NEXT; slot 2 was never made available.
    r.mem
        .write_u16(16 + 14, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_NEXT)
        .unwrap();
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 1);
    assert_eq!(r.pop_all(ChainKind::Tx), [(0, 1)]);
    r.ring.push_used(0, 0);
    r.ring.flush_used(&mut r.dma).unwrap();
    assert_eq!(
        r.ring.fetch_avail(&mut r.dma, 8),
        Err(DeviceFault::ChainNotAvailable {
            queue: 1,
            head: 1,
            index: 2
        })
    );
}

#[test]
fn rollback_across_a_fetch_gives_every_list_back_in_order() {
    let mut r = Rig::new(8, 0, true);
    let w = VIRTQ_DESC_F_WRITE;
    r.post(&[&[d(64, 0, w)], &[d(64, 1, w)]]);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 2);
    let mut chain = Chain::default();
    r.ring.begin();
    assert_eq!(r.pop_all(ChainKind::Rx), [(0, 1), (1, 1)]);
    // More buffers arrive while the transaction is open (RX with MRG_RXBUF looks for more).
    r.post(&[&[d(64, 2, w), d(64, 3, w)]]);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 1);
    assert!(r
        .ring
        .pop(&mut r.dma, &mut chain, ChainKind::Rx, u64::MAX)
        .unwrap());
    r.ring.rollback();
    assert_eq!(r.ring.ring_state().0, off_wrap(0, true));
    assert!(r.ring.has_fetched());
    // All three again, in ring order; nothing was read twice.
    let reads = r.traffic(DmaKind::Descriptor);
    assert_eq!(r.pop_all(ChainKind::Rx), [(0, 1), (1, 1), (3, 2)]);
    assert_eq!(r.traffic(DmaKind::Descriptor), reads);
    for (id, len) in [(0, 1), (1, 0), (3, 64)] {
        r.ring.push_used(id, len);
    }
    r.ring.flush_used(&mut r.dma).unwrap();
    assert_eq!((r.slot(0).2, r.slot(0).3), (0, used(true, true)));
    assert_eq!((r.slot(1).2, r.slot(1).3), (1, used(true, false)));
    assert_eq!((r.slot(2).2, r.slot(2).3), (3, used(true, true)));
    assert_eq!(r.ring.ring_state(), (off_wrap(4, true), off_wrap(4, true)));
    // The next fetch starts after them; an idle ring costs one 2-byte peek.
    let reads = r.traffic(DmaKind::Descriptor);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 0);
    assert_eq!(
        r.traffic(DmaKind::Descriptor),
        Traffic {
            transactions: reads.transactions + 1,
            bytes: reads.bytes + 2
        }
    );
}

#[test]
fn completions_flushed_in_several_batches_follow_the_used_position() {
    // Flushes of part of what was popped, across the ring end, with lists of two slots: each
    // batch starts at the used position the last one left.
    let mut r = Rig::new(6, 3, true);
    r.post(&[
        &[d(64, 0, 0)],
        &[d(64, 0xaaaa, 0), d(64, 1, 0)],
        &[d(64, 2, 0)],
        &[d(64, 3, 0)],
    ]);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 6).unwrap(), 4);
    let popped = r.pop_all(ChainKind::Tx);
    assert_eq!(popped, [(0, 1), (1, 2), (2, 1), (3, 1)]);
    r.ring.push_used(0, 0);
    r.ring.push_used(1, 0);
    r.ring.flush_used(&mut r.dma).unwrap();
    assert_eq!(r.ring.ring_state().1, off_wrap(0, false));
    assert_eq!((r.slot(3).2, r.slot(3).3), (0, used(true, false)));
    assert_eq!((r.slot(4).2, r.slot(4).3), (1, used(true, false)));
    r.ring.push_used(2, 0);
    r.ring.push_used(3, 0);
    r.ring.flush_used(&mut r.dma).unwrap();
    assert_eq!((r.slot(0).2, r.slot(0).3), (2, used(false, false)));
    assert_eq!((r.slot(1).2, r.slot(1).3), (3, used(false, false)));
    assert_eq!(
        r.ring.ring_state(),
        (off_wrap(2, false), off_wrap(2, false))
    );
}

#[test]
fn a_batch_is_published_by_its_first_flags_after_the_log() {
    // The dirty log lives in unmapped IOVA: the flush before the publish faults, so the
    // publish does not happen. The other used descriptors are written, but the first slot,
    // where the driver polls (2.8.2), still has the flags of the driver's available
    // descriptor: the driver sees none of the batch.
    let mut r = Rig::new(8, 0, true);
    r.post(&[&[d(64, 0, 0)], &[d(64, 1, 0)], &[d(64, 2, 0)]]);
    let first = r.slot(0);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 3);
    for (id, _) in r.pop_all(ChainKind::Tx) {
        r.ring.push_used(id, 0);
    }
    r.dma
        .set_logging(Some(dma::LogConfig::new(1 << 40, (1 << 40) + 0x1000)));
    assert!(matches!(
        r.ring.flush_used(&mut r.dma),
        Err(DeviceFault::Dma { queue: 1, .. })
    ));
    // Its body may be written (len and id of the used descriptor), its flags are not.
    assert_eq!(
        r.slot(0).3,
        first.3,
        "the batch's first flags are the driver's"
    );
    assert!(is_avail(r.slot(0).3, true));
    assert_eq!((r.slot(1).2, r.slot(1).3), (1, used(true, false)));
    assert_eq!((r.slot(2).2, r.slot(2).3), (2, used(true, false)));
}

#[test]
fn the_dirty_log_covers_the_write_back_before_the_publish() {
    // A log mapped in guest memory: after flush_used, the page of the descriptor ring is
    // marked (the runs and the publish are logged, and flushed before the publish).
    let mut r = Rig::new(8, 0, true);
    let log_iova = BASE + 0x3000;
    r.dma
        .set_logging(Some(dma::LogConfig::new(log_iova, log_iova + 0x1000)));
    r.post(&[&[d(64, 0, 0)], &[d(64, 1, 0)]]);
    assert_eq!(r.ring.fetch_avail(&mut r.dma, 8).unwrap(), 2);
    for (id, _) in r.pop_all(ChainKind::Tx) {
        r.ring.push_used(id, 0);
    }
    r.ring.flush_used(&mut r.dma).unwrap();
    assert_eq!(r.dma.pending_log_words(), 0, "flushed before the publish");
    // Bit for page BASE / 4096 = 0x100: byte 0x20 of the log, bit 0.
    let page = BASE / 4096;
    let byte = r.mem.read_u64(0x3000 + page / 64 * 8).unwrap();
    assert_ne!(byte & (1 << (page % 64)), 0, "descriptor ring page logged");
}
