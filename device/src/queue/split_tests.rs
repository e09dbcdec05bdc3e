//! The split ring engine's descriptor runs, through its public API on real guest memory: heads
//! that follow each other in the table, up or down, are read in one access, each descriptor
//! handed out once and true; a run never reaches past the table's end, sixteen descriptors,
//! a rollback, or a translation the IOTLB does not hold (where a fault stays the descriptor's
//! own).

use super::chain::{Chain, ChainKind, RingSetup};
use super::split::SplitRing;
use crate::fault::DeviceFault;
use bar_registers::ring::{encode_split_desc, VIRTQ_DESC_F_WRITE};
use dma::{AddressSpace, DmaEngine, DmaFault, DmaKind, Perms, SharedMemory, Traffic};
use std::sync::Arc;

/// Guest memory: one page at `BASE` holding the descriptor table, the avail ring at
/// `BASE + 0x800` and the used ring at `BASE + 0xc00` (all in one IOTLB entry).
const BASE: u64 = 0x10_0000;
const AVAIL: u64 = BASE + 0x800;
const USED: u64 = BASE + 0xc00;

struct Rig {
    mem: SharedMemory,
    dma: DmaEngine,
    ring: SplitRing,
    /// The driver's avail idx.
    avail_idx: u16,
}

/// The buffer descriptor `i` points at (never accessed: only popped).
fn buf(i: u16) -> (u64, u32) {
    (0x8000_0000 + 0x1000 * u64::from(i), 100 + u32::from(i))
}

/// Writes at IOVA `at` a descriptor of one device-writable buffer, buffer `b`.
fn write_desc(mem: &SharedMemory, at: u64, b: u16) {
    let (addr, len) = buf(b);
    mem.write(
        at - BASE,
        &encode_split_desc(addr, len, VIRTQ_DESC_F_WRITE, 0),
    )
    .unwrap();
}

impl Rig {
    /// A ring of `size` at table address `desc`, memory `[BASE, BASE + mapped)` mapped; every
    /// descriptor of the table that is mapped is written (one writable buffer each).
    fn new(size: u16, desc: u64, mapped: u64) -> Rig {
        let mem = SharedMemory::new("split-tests", mapped).unwrap();
        let space = Arc::new(AddressSpace::new());
        mem.map_into(&space, BASE, 0, mapped, Perms::RW).unwrap();
        for i in 0..size {
            let at = desc + 16 * u64::from(i);
            if at + 16 <= BASE + mapped {
                write_desc(&mem, at, i);
            }
        }
        let ring = SplitRing::new(RingSetup {
            queue: 0,
            size,
            desc,
            avail: AVAIL,
            used: USED,
            last_avail: 0,
            last_used: 0,
            event_idx: false,
            indirect: false,
            in_order: false,
        })
        .unwrap();
        Rig {
            mem,
            dma: DmaEngine::new(space, 16),
            ring,
            avail_idx: 0,
        }
    }

    /// Makes `heads` available, in this order, and fetches them.
    fn post(&mut self, heads: &[u16]) {
        let size = self.ring.size;
        for h in heads {
            let slot = u64::from(self.avail_idx % size);
            self.mem
                .write(AVAIL - BASE + 4 + 2 * slot, &h.to_le_bytes())
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write(AVAIL - BASE + 2, &self.avail_idx.to_le_bytes())
            .unwrap();
        let n = self.ring.fetch_avail(&mut self.dma, 64).unwrap();
        assert_eq!(usize::from(n), heads.len());
    }

    /// Pops the next chain: its head, which must be `want`, with that descriptor's buffer.
    fn pop(&mut self, want: u16) -> Result<(), DeviceFault> {
        self.pop_as(want, want)
    }

    /// Pops the next chain: head `want`, its one descriptor pointing at buffer `b`.
    fn pop_as(&mut self, want: u16, b: u16) -> Result<(), DeviceFault> {
        let mut chain = Chain::default();
        assert!(self
            .ring
            .pop(&mut self.dma, &mut chain, ChainKind::Rx, u64::MAX)?);
        assert_eq!(chain.head, want);
        let (addr, len) = buf(b);
        assert_eq!(
            chain
                .descs
                .iter()
                .map(|d| (d.addr, d.len, d.writable))
                .collect::<Vec<_>>(),
            vec![(addr, len, true)],
            "head {want}"
        );
        Ok(())
    }

    /// The driver points descriptor `i` (of a table at `BASE`) at buffer `b`.
    fn rewrite(&self, i: u16, b: u16) {
        write_desc(&self.mem, BASE + 16 * u64::from(i), b);
    }

    /// A table of `size` at `BASE`, all mapped, with `heads` made available and popped in this
    /// order; `runs`: [`crate::DeviceConfig::desc_runs`].
    fn popped(size: u16, heads: &[u16], runs: bool) -> Rig {
        let mut r = Rig::new(size, BASE, 0x1000);
        r.ring.desc_runs = runs;
        r.post(heads);
        r.pop_all(heads);
        r
    }

    fn pop_all(&mut self, heads: &[u16]) {
        for &h in heads {
            self.pop(h).unwrap();
        }
    }

    fn desc_reads(&self) -> Traffic {
        self.dma.bus_stats().get(DmaKind::Descriptor)
    }
}

fn reads(transactions: u64, descriptors: u64) -> Traffic {
    Traffic {
        transactions,
        bytes: 16 * descriptors,
    }
}

#[test]
fn heads_next_to_each_other_in_the_table_are_read_in_one_run() {
    // Up 3..=6, down 10..=8, then 0 and 12 alone.
    let r = Rig::popped(16, &[3, 4, 5, 6, 10, 9, 8, 0, 12], true);
    assert_eq!(r.desc_reads(), reads(4, 9));
    // avail idx fills the IOTLB; the avail span and the four reads hit it.
    let s = r.dma.iommu_stats();
    assert_eq!((s.iotlb_misses, s.iotlb_hits), (1, 1 + 4));
}

#[test]
fn without_runs_every_head_is_read_on_its_own() {
    // DeviceConfig::desc_runs off: a design that fetches one descriptor at a time.
    let r = Rig::popped(16, &[3, 4, 5, 6, 10, 9, 8], false);
    assert_eq!(r.desc_reads(), reads(7, 7));
}

#[test]
fn a_run_ends_at_the_table_end_and_after_sixteen() {
    let r = Rig::popped(32, &[28, 29, 30, 31, 0, 1], true);
    assert_eq!(r.desc_reads(), reads(2, 6));

    // Nor past the table's end or start when a head beyond them follows (a hostile driver's:
    // its pop is refused, the run did not read it).
    for (heads, bad) in [([14, 15, 16], 16), ([1, 0, 0xffff], 0xffff)] {
        let mut r = Rig::new(16, BASE, 0x1000);
        r.post(&heads);
        r.pop_all(&heads[..2]);
        let mut chain = Chain::default();
        assert!(matches!(
            r.ring.pop(&mut r.dma, &mut chain, ChainKind::Rx, u64::MAX),
            Err(DeviceFault::DescriptorIndexOutOfRange { index, .. }) if index == bad
        ));
        assert_eq!(r.desc_reads(), reads(1, 2), "{heads:?}");
    }

    let up: Vec<u16> = (0..20).collect();
    assert_eq!(Rig::popped(32, &up, true).desc_reads(), reads(2, 20));
    let down: Vec<u16> = (2..=19).rev().collect();
    assert_eq!(Rig::popped(32, &down, true).desc_reads(), reads(2, 18));
}

#[test]
fn chains_given_back_are_read_again() {
    let mut r = Rig::new(16, BASE, 0x1000);
    r.post(&[0, 1, 2, 3]);
    r.pop(0).unwrap();
    r.ring.begin();
    r.pop_all(&[1, 2]);
    r.ring.rollback();
    assert_eq!(r.desc_reads(), reads(1, 4));
    // The copies of 1 and 2 were handed out: popped again, they are read again (with the
    // descriptor after them: a new run).
    r.pop_all(&[1, 2, 3]);
    assert_eq!(r.desc_reads(), reads(2, 7));
}

#[test]
fn a_descriptor_used_and_made_available_again_is_read_again() {
    let mut r = Rig::new(16, BASE, 0x1000);
    r.post(&[0, 1, 2, 3]);
    r.pop_all(&[0, 1, 2, 3]);
    for h in 0..4 {
        r.ring.push_used(h, 0);
    }
    r.ring.flush_used(&mut r.dma).unwrap();
    // The driver rewrites descriptor 2 (another buffer) and makes it available again.
    r.rewrite(2, 7);
    r.post(&[2]);
    r.pop_as(2, 7).unwrap();
    assert_eq!(r.desc_reads(), reads(2, 5));
}

#[test]
fn a_pass_drops_what_it_read_ahead() {
    let mut r = Rig::new(16, BASE, 0x1000);
    r.post(&[0, 1, 2, 3]);
    r.pop_all(&[0, 1]);
    r.ring.push_used(0, 0);
    r.ring.push_used(1, 0);
    r.ring.flush_used(&mut r.dma).unwrap();
    // Between passes the (hostile) driver rewrites descriptor 2, still available.
    r.rewrite(2, 9);
    r.pop_as(2, 9).unwrap();
    r.pop(3).unwrap();
    assert_eq!(r.desc_reads(), reads(2, 6));
}

#[test]
fn a_run_past_the_iotlb_reads_one_by_one_and_a_fault_stays_its_descriptors() {
    // A table of 8 whose second half lies in the unmapped page after the one mapped.
    let desc = BASE + 0x1000 - 64;
    let mut r = Rig::new(8, desc, 0x1000);
    r.post(&[0, 1, 2, 3, 4, 5]);
    // Each run would reach into the unmapped page: every head read on its own.
    r.pop_all(&[0, 1, 2, 3]);
    assert_eq!(r.desc_reads(), reads(4, 4));
    let mut chain = Chain::default();
    match r.ring.pop(&mut r.dma, &mut chain, ChainKind::Rx, u64::MAX) {
        Err(DeviceFault::Dma {
            queue: 0,
            fault: DmaFault::Unmapped { iova, len: 16 },
        }) => assert_eq!(iova, desc + 64),
        other => panic!("head 4: {other:?}"),
    }
    assert_eq!(r.desc_reads(), reads(4, 4));
}
