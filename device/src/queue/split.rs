//! The split virtqueue, device side (virtio 1.2 section 2.7).
//!
//! Why not rust-vmm's virtio-queue: its `Queue` reads and writes guest memory through a
//! `GuestMemory` that has no notion of our IOMMU permissions, of the kind of each bus
//! transaction (descriptor, ring index, packet data) that bus accounting needs, of the dirty log
//! that must be visible before the used index is published, or of DEVICE_NEEDS_RESET causes. It
//! also reads the avail ring one entry at a time, where a NIC fetches a span. So the engine is
//! ours, over `dma::DmaEngine`; virtio-queue's `MockSplitQueue` could still cross-check the layout
//! in tests.
//!
//! Layout (2.7.2, 2.7.6, 2.7.8): descriptor table of 16-byte `{addr u64, len u32, flags u16,
//! next u16}`; avail ring `{flags u16, idx u16, ring[size] u16, used_event u16}`; used ring
//! `{flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16}`.

use super::chain::push_desc;
pub use super::chain::{Chain, ChainKind, Desc, RingSetup, MAX_INDIRECT_ENTRIES};
use crate::fault::DeviceFault;
use bar_registers::ring::{
    decode_split_desc, decode_split_desc_words, split_desc_words, AVAIL_ALIGN, AVAIL_ELEM_SIZE,
    AVAIL_IDX, AVAIL_RING, DESC_ALIGN, DESC_SIZE, USED_ALIGN, USED_ELEM_SIZE, USED_IDX, USED_RING,
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VRING_AVAIL_F_NO_INTERRUPT,
};
use dma::{DmaEngine, DmaKind};
use std::sync::atomic::{fence, Ordering};

/// vring_need_event (virtio 1.2 2.7.7.2 / include/uapi/linux/virtio_ring.h).
pub fn vring_need_event(event_idx: u16, new_idx: u16, old: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old)
}

/// Device-side state of one enabled split ring.
#[derive(Debug)]
pub struct SplitRing {
    pub queue: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Next avail ring slot the device will read (LM: last_avail_idx).
    pub last_avail: u16,
    /// Next used ring slot the device will write (LM: last_used_idx).
    pub last_used: u16,
    pub event_idx: bool,
    pub indirect: bool,
    /// ignores-event-idx quirk: interrupt after every batch despite used_event.
    pub ignore_used_event: bool,
    /// VIRTIO_F_IN_ORDER negotiated. The engine always uses buffers in order (2.7.9); it writes
    /// every used element all the same, because drivers read each one's length (RX) and DPDK's
    /// in-order split paths (virtio_xmit_cleanup_inorder) read each one's id.
    pub in_order: bool,
    /// completes-out-of-order quirk (only with `in_order`).
    pub out_of_order: bool,
    /// Used index at the last interrupt decision.
    signalled_used: u16,
    /// used idx value in memory (published).
    published_used: u16,
    heads: Vec<u16>,
    head_pos: usize,
    mark: Option<usize>,
    pending_used: Vec<(u32, u32)>,
    scratch: Vec<u8>,
    run: DescRun,
    /// Whether heads are read in runs ([`crate::DeviceConfig::desc_runs`]).
    pub(super) desc_runs: bool,
}

/// Most head descriptors read in one run: 256 bytes of the table, one read request at the
/// default PCIe Max_Read_Request_Size (512 bytes).
const RUN_MAX: usize = 16;

/// Head descriptors read ahead in one access, as a NIC fetches descriptors in bursts: when the
/// heads fetched after the chain popped next, `h`, go on from it one by one up (`h + 1`,
/// `h + 2`, ...: a driver that hands out its descriptors in order) or down (`h - 1`, ...: one
/// whose free list is a stack, as Linux's virtio_ring and our driver model keep it), their
/// descriptors are adjacent in the table and are read together. Every one of them belongs to a
/// chain the driver made available, which it may not change until the device uses it (virtio
/// 1.2 2.7.13), and the device uses only chains it popped: each copy is handed out at most once,
/// to the first pop of its head, so it is true when it is. One read instead of one per head
/// saves the IOMMU lookup, the bus accounting and the SIGBUS check of all but the first.
///
/// The copies live for one pass: [`SplitRing::flush_used`] (the end of every pass that popped
/// anything) drops the rest. A driver that changes an available descriptor breaks 2.7.13, and
/// a device that read it ahead may use either version; this one sees the change from the next
/// pass on, where the scenarios' fault injection (sim-harness/src/scenario/inject.rs: it
/// rewrites the next available chain between steps) needs it seen.
#[derive(Debug)]
struct DescRun {
    bytes: [u8; RUN_MAX * DESC_SIZE as usize],
    /// Table index of the run's first descriptor.
    lo: u16,
    /// Bit `i`: the copy of descriptor `lo + i` is still to be handed out.
    unserved: u16,
}

impl DescRun {
    /// The `i`th descriptor of the run as two little-endian words
    /// ([`decode_split_desc_words`]).
    #[inline(always)]
    fn desc(&self, i: usize) -> [u64; 2] {
        let at = i * DESC_SIZE as usize;
        split_desc_words(
            self.bytes[at..at + DESC_SIZE as usize]
                .try_into()
                .expect("16 bytes"),
        )
    }
}

impl SplitRing {
    /// A ring resuming at the setup's `last_avail` / `last_used` (from the LM ring state).
    pub fn new(setup: RingSetup) -> Result<Self, DeviceFault> {
        let RingSetup {
            queue,
            size,
            desc,
            avail,
            used,
            last_avail,
            last_used,
            event_idx,
            indirect,
            in_order,
        } = setup;
        if size == 0 || !size.is_power_of_two() {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail: "queue size is not a power of two",
            });
        }
        if !desc.is_multiple_of(DESC_ALIGN)
            || !avail.is_multiple_of(AVAIL_ALIGN)
            || !used.is_multiple_of(USED_ALIGN)
        {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail: "ring address misaligned (2.7: desc 16, avail 2, used 4)",
            });
        }
        // Every ring address the engine computes is below these ends: checking them once here
        // keeps all later address arithmetic free of overflow.
        let n = u64::from(size);
        if desc.checked_add(DESC_SIZE * n).is_none()
            || avail.checked_add(avail_event_end(n)).is_none()
            || used.checked_add(used_event_end(n)).is_none()
        {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail: "ring area runs past the end of the 64-bit IOVA space",
            });
        }
        Ok(SplitRing {
            queue,
            size,
            desc,
            avail,
            used,
            last_avail,
            last_used,
            event_idx,
            indirect,
            ignore_used_event: false,
            in_order,
            out_of_order: false,
            signalled_used: last_used,
            published_used: last_used,
            heads: Vec::with_capacity(size.into()),
            head_pos: 0,
            mark: None,
            pending_used: Vec::with_capacity(size.into()),
            scratch: Vec::new(),
            run: DescRun {
                bytes: [0; RUN_MAX * DESC_SIZE as usize],
                lo: 0,
                unserved: 0,
            },
            desc_runs: true,
        })
    }

    fn dma_err(&self) -> impl Fn(dma::DmaFault) -> DeviceFault + '_ {
        move |fault| DeviceFault::Dma {
            queue: self.queue,
            fault,
        }
    }

    /// Reads avail->idx and fetches up to `max` new heads from the avail ring in one span
    /// (two when it wraps), after the heads already fetched. Returns how many fetched heads are
    /// ready to pop. Heads popped inside an open [`SplitRing::begin`] are kept for a rollback.
    pub fn fetch_avail(&mut self, dma: &mut DmaEngine, max: u16) -> Result<u16, DeviceFault> {
        if self.head_pos < self.heads.len() {
            return Ok((self.heads.len() - self.head_pos) as u16);
        }
        let q = self.queue;
        let keep_from = self.mark.unwrap_or(self.head_pos);
        self.heads.drain(..keep_from);
        self.head_pos -= keep_from;
        self.mark = self.mark.map(|m| m - keep_from);
        let committed = self
            .last_avail
            .wrapping_sub((self.head_pos - self.mark.unwrap_or(self.head_pos)) as u16);
        let fetched_end = self.fetched_end();
        let avail_idx = dma
            .read_u16(self.avail + AVAIL_IDX, DmaKind::RingRead)
            .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
        let pending = avail_idx.wrapping_sub(committed);
        if pending > self.size {
            return Err(DeviceFault::AvailIndexJump {
                queue: q,
                avail: avail_idx,
                last: committed,
                pending,
                size: self.size,
            });
        }
        let n = avail_idx.wrapping_sub(fetched_end).min(max);
        let mut start = fetched_end % self.size;
        let mut left = n;
        while left > 0 {
            let span = left.min(self.size - start);
            let bytes = usize::from(span) * AVAIL_ELEM_SIZE as usize;
            self.scratch.resize(bytes, 0);
            let addr = self.avail + AVAIL_RING + AVAIL_ELEM_SIZE * u64::from(start);
            dma.read(addr, &mut self.scratch[..bytes], DmaKind::RingRead)
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            self.heads.extend(
                self.scratch[..bytes]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]])),
            );
            left -= span;
            start = 0;
        }
        Ok(n)
    }

    /// Pops the next fetched chain into `chain`, walking and validating its descriptors.
    /// Returns false when no fetched head is left.
    pub fn pop(
        &mut self,
        dma: &mut DmaEngine,
        chain: &mut Chain,
        kind: ChainKind,
        max_total: u64,
    ) -> Result<bool, DeviceFault> {
        let Some(&head) = self.heads.get(self.head_pos) else {
            return Ok(false);
        };
        self.head_pos += 1;
        self.last_avail = self.last_avail.wrapping_add(1);
        self.walk(dma, head, chain, kind, max_total)?;
        Ok(true)
    }

    /// Opens a transaction: chains popped from now on can be given back with rollback (RX with
    /// mergeable buffers, when a frame does not fit the buffers available yet).
    pub fn begin(&mut self) {
        self.mark = Some(self.head_pos);
    }

    /// Keeps the chains popped since begin.
    pub fn commit(&mut self) {
        self.mark = None;
    }

    /// Gives back the chains popped since begin: they will be popped again.
    pub fn rollback(&mut self) {
        if let Some(m) = self.mark.take() {
            let n = self.head_pos - m;
            self.head_pos = m;
            self.last_avail = self.last_avail.wrapping_sub(n as u16);
        }
    }

    fn walk(
        &mut self,
        dma: &mut DmaEngine,
        head: u16,
        chain: &mut Chain,
        kind: ChainKind,
        max_total: u64,
    ) -> Result<(), DeviceFault> {
        let q = self.queue;
        chain.clear(head);
        let mut idx = head;
        let mut hops: u32 = 0;
        loop {
            if idx >= self.size {
                return Err(DeviceFault::DescriptorIndexOutOfRange {
                    queue: q,
                    index: idx,
                    size: self.size,
                });
            }
            hops += 1;
            if hops > u32::from(self.size) {
                return Err(DeviceFault::ChainTooLong {
                    queue: q,
                    head,
                    limit: self.size.into(),
                });
            }
            let words = if hops == 1 {
                self.head_desc(dma, idx)
            } else {
                dma.read_words(self.desc + DESC_SIZE * u64::from(idx), DmaKind::Descriptor)
            }
            .map_err(self.dma_err())?;
            let (addr, len, flags, next) = decode_split_desc_words(words);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect {
                    return Err(DeviceFault::IndirectNotNegotiated { queue: q });
                }
                if flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(DeviceFault::IndirectWithNext { queue: q });
                }
                self.walk_indirect(dma, addr, len, chain, kind, max_total)?;
                return Ok(());
            }
            push_desc(q, chain, idx, addr, len, flags, kind, max_total)?;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = next;
        }
    }

    /// The descriptor of `head` (< size), the chain just popped (`heads[head_pos - 1]`): from
    /// the run read ahead ([`DescRun`]) if it holds a copy not handed out yet, else read, with the
    /// descriptors of the heads fetched after it that follow it in the table. The run is read
    /// only when the IOTLB holds its translation ([`DmaEngine::read_if_cached`]): a miss or a
    /// fault is then the head descriptor's own, as without a run.
    #[inline(always)]
    fn head_desc(&mut self, dma: &mut DmaEngine, head: u16) -> Result<[u64; 2], dma::DmaFault> {
        let r = &mut self.run;
        let i = head.wrapping_sub(r.lo);
        if i < RUN_MAX as u16 && r.unserved & (1 << i) != 0 {
            r.unserved &= !(1 << i);
            return Ok(r.desc(usize::from(i)));
        }
        self.read_head(dma, head)
    }

    /// [`Self::head_desc`] when the run does not hold it: out of line, so the walk around the
    /// common case (a copy from the run) stays small.
    #[inline(never)]
    fn read_head(&mut self, dma: &mut DmaEngine, head: u16) -> Result<[u64; 2], dma::DmaFault> {
        let addr = self.desc + DESC_SIZE * u64::from(head);
        // Without runs (DeviceConfig::desc_runs off) a run is the head alone.
        let max = if self.desc_runs { RUN_MAX } else { 1 };
        let following = &self.heads[self.head_pos..];
        // The direction the following heads go, then how far: the `n`th following head must
        // be the table index `n` away from `head`, inside the table (below size, not below 0).
        let up = following.first() == Some(&head.wrapping_add(1));
        let size = self.size;
        let away = |n: u16| {
            if up {
                head.checked_add(n).filter(|&h| h < size)
            } else {
                head.checked_sub(n)
            }
        };
        let mut n: u16 = 1;
        while usize::from(n) < max
            && away(n).is_some_and(|h| following.get(usize::from(n) - 1) == Some(&h))
        {
            n += 1;
        }
        if n > 1 {
            let lo = if up { head } else { head + 1 - n };
            let r = &mut self.run;
            let bytes = &mut r.bytes[..usize::from(n) * DESC_SIZE as usize];
            let at = self.desc + DESC_SIZE * u64::from(lo);
            if let Some(read) = dma.read_if_cached(at, bytes, DmaKind::Descriptor) {
                read?;
                let i = head - lo;
                (r.lo, r.unserved) = (lo, ((1u32 << n) - 1) as u16 & !(1 << i));
                return Ok(r.desc(usize::from(i)));
            }
        }
        dma.read_words(addr, DmaKind::Descriptor)
    }

    fn walk_indirect(
        &mut self,
        dma: &mut DmaEngine,
        table: u64,
        len: u32,
        chain: &mut Chain,
        kind: ChainKind,
        max_total: u64,
    ) -> Result<(), DeviceFault> {
        let q = self.queue;
        let desc_size = DESC_SIZE as u32;
        if len == 0 || !len.is_multiple_of(desc_size) || len / desc_size > MAX_INDIRECT_ENTRIES {
            return Err(DeviceFault::BadIndirectLength { queue: q, len });
        }
        let entries = (len / desc_size) as u16;
        self.scratch.resize(len as usize, 0);
        dma.read(
            table,
            &mut self.scratch[..len as usize],
            DmaKind::IndirectTable,
        )
        .map_err(self.dma_err())?;
        let mut idx: u16 = 0;
        let mut hops: u32 = 0;
        loop {
            if idx >= entries {
                return Err(DeviceFault::DescriptorIndexOutOfRange {
                    queue: q,
                    index: idx,
                    size: entries,
                });
            }
            hops += 1;
            if hops > u32::from(entries) {
                return Err(DeviceFault::ChainTooLong {
                    queue: q,
                    head: chain.head,
                    limit: entries.into(),
                });
            }
            let off = usize::from(idx) * DESC_SIZE as usize;
            let raw: [u8; DESC_SIZE as usize] = self.scratch[off..off + DESC_SIZE as usize]
                .try_into()
                .expect("16-byte slice");
            let (addr, dlen, flags, next) = decode_split_desc(&raw);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(DeviceFault::NestedIndirect { queue: q });
            }
            push_desc(q, chain, idx, addr, dlen, flags, kind, max_total)?;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = next;
        }
    }

    /// Queues a used element; written by [`SplitRing::flush_used`].
    pub fn push_used(&mut self, head: u16, len: u32) {
        self.pending_used.push((u32::from(head), len));
        self.last_used = self.last_used.wrapping_add(1);
    }

    /// Number of used elements queued but not yet written.
    pub fn pending_used(&self) -> usize {
        self.pending_used.len()
    }

    /// Writes the queued used elements (one span, two when it wraps), then publishes used->idx
    /// (log bits first, then the index with Release: 2.7.8.2 and the dirty-log ordering rule).
    pub fn flush_used(&mut self, dma: &mut DmaEngine) -> Result<(), DeviceFault> {
        // The end of a pass: what was read ahead is dropped (see `DescRun`).
        self.run.unserved = 0;
        if self.pending_used.is_empty() {
            return Ok(());
        }
        let q = self.queue;
        if self.out_of_order && self.pending_used.len() >= 2 {
            // Bug (quirk completes-out-of-order): the batch's first two completions swapped.
            self.pending_used.swap(0, 1);
        }
        let mut slot = self.published_used % self.size;
        let mut i = 0;
        while i < self.pending_used.len() {
            let span = (self.pending_used.len() - i).min(usize::from(self.size - slot));
            self.scratch.clear();
            for &(id, len) in &self.pending_used[i..i + span] {
                self.scratch
                    .extend_from_slice(&bar_registers::ring::encode_used_elem(id, len));
            }
            let addr = self.used + USED_RING + USED_ELEM_SIZE * u64::from(slot);
            dma.write(addr, &self.scratch, DmaKind::RingWrite)
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            i += span;
            slot = 0;
        }
        self.pending_used.clear();
        dma.publish_u16(self.used + USED_IDX, self.last_used, DmaKind::RingWrite)
            .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
        self.published_used = self.last_used;
        Ok(())
    }

    /// Whether the driver wants an interrupt for what was published since the last decision
    /// (2.7.7.2: used_event with EVENT_IDX, else the avail ring's NO_INTERRUPT flag). Returns
    /// `(need, suppressed)`.
    pub fn interrupt_decision(&mut self, dma: &mut DmaEngine) -> Result<bool, DeviceFault> {
        let new = self.published_used;
        let old = self.signalled_used;
        if new == old {
            return Ok(false);
        }
        let q = self.queue;
        // Pairs with the driver's barrier between writing used_event/flags and reading used->idx.
        fence(Ordering::SeqCst);
        let need = if self.event_idx && self.ignore_used_event {
            true
        } else if self.event_idx {
            let used_event = dma
                .read_u16(
                    self.avail + AVAIL_RING + AVAIL_ELEM_SIZE * u64::from(self.size),
                    DmaKind::RingRead,
                )
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            vring_need_event(used_event, new, old)
        } else {
            let flags = dma
                .read_u16(self.avail, DmaKind::RingRead)
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            flags & VRING_AVAIL_F_NO_INTERRUPT == 0
        };
        self.signalled_used = new;
        Ok(need)
    }

    /// With EVENT_IDX, tells the driver which avail index to kick at (2.7.10: avail_event =
    /// the next index the device will read), then returns whether more work arrived meanwhile.
    ///
    /// The next index to read is the end of what was fetched, not `last_avail`: after a
    /// rollback (a received frame that did not fit the buffers fetched so far) the device has
    /// already read the heads it gave back, so asking for a kick at `last_avail` asked for one
    /// the driver's next refill did not send (its new index was already past it), and the
    /// frame waited for the next frame from the port.
    pub fn arm_notification(&mut self, dma: &mut DmaEngine) -> Result<bool, DeviceFault> {
        let q = self.queue;
        let next = self.fetched_end();
        if self.event_idx {
            dma.write_u16(
                self.used + USED_RING + USED_ELEM_SIZE * u64::from(self.size),
                next,
                DmaKind::RingWrite,
            )
            .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            fence(Ordering::SeqCst);
        }
        let avail_idx = dma
            .read_u16(self.avail + AVAIL_IDX, DmaKind::RingRead)
            .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
        Ok(avail_idx != next)
    }

    /// The avail index after the last head fetched (popped or not).
    fn fetched_end(&self) -> u16 {
        self.last_avail
            .wrapping_add((self.heads.len() - self.head_pos) as u16)
    }

    /// Whether heads fetched from the avail ring are still unprocessed.
    pub fn has_fetched(&self) -> bool {
        self.head_pos < self.heads.len()
    }

    /// Hints the buffers of the fetched chains not popped yet (up to [`super::PREFETCH_CHAINS`]
    /// of them) toward this core: each head descriptor is peeked (not read: nothing is
    /// accounted or checked; the table translated once, [`DmaEngine::peek_window`]) and its
    /// buffer prefetched ([`DmaEngine::prefetch`]). The
    /// descriptor loads are independent, so their transfers overlap too, and `pop` then finds
    /// them in cache. An indirect head or an index out of range is skipped; `pop` reads and
    /// checks every descriptor as always.
    pub fn prefetch_fetched(&self, dma: &DmaEngine, write: bool) {
        let end = self.heads.len().min(self.head_pos + super::PREFETCH_CHAINS);
        // The table translated once (it lies in one mapping unless the driver split it).
        let table = dma.peek_window(self.desc, DESC_SIZE * u64::from(self.size));
        for &head in &self.heads[self.head_pos..end] {
            if head >= self.size {
                continue;
            }
            let off = DESC_SIZE * u64::from(head);
            let raw = match &table {
                Some(t) => t.get16(off as usize),
                None => dma.peek16(self.desc + off),
            };
            let Some(raw) = raw else {
                continue;
            };
            let (addr, len, flags, _) = decode_split_desc(&raw);
            if flags & VIRTQ_DESC_F_INDIRECT == 0 {
                super::prefetch_buffer(dma, addr, len, write);
            }
        }
    }
}

/// End of an avail ring of `n` entries, used_event included (2.7.6).
fn avail_event_end(n: u64) -> u64 {
    AVAIL_RING + AVAIL_ELEM_SIZE * n + AVAIL_ELEM_SIZE
}

/// End of a used ring of `n` elements, avail_event included (2.7.8).
fn used_event_end(n: u64) -> u64 {
    USED_RING + USED_ELEM_SIZE * n + AVAIL_ELEM_SIZE
}

#[cfg(test)]
mod tests {
    use super::vring_need_event;

    #[test]
    fn need_event_matches_linux() {
        // From include/uapi/linux/virtio_ring.h semantics.
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(5, 3, 0));
        assert!(vring_need_event(5, 6, 0));
        assert!(vring_need_event(0xffff, 0, 0xfffe));
        assert!(!vring_need_event(10, 5, 5));
    }
}
