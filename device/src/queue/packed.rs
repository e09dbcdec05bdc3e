//! The packed virtqueue, device side (virtio 1.2 section 2.8, VIRTIO_F_RING_PACKED).
//!
//! One ring of 16-byte descriptors `{addr le64, len le32, id le16, flags le16}` (2.8.13) that
//! both sides read and write, plus two 4-byte event suppression structures
//! `{off_wrap le16, flags le16}` (2.8.14): the driver's (Driver Area, read by the device) and the
//! device's (Device Area, written by the device).
//!
//! - 2.8.1 "Driver and Device Ring Wrap Counters": each side keeps a wrap counter, initialized to
//!   1, toggled after the last descriptor of the ring. "To mark a descriptor as available, the
//!   driver sets the VIRTQ_DESC_F_AVAIL bit in Flags to match the internal Driver Ring Wrap
//!   Counter. It also sets the VIRTQ_DESC_F_USED bit to match the inverse value." "To mark a
//!   descriptor as used, the device sets the VIRTQ_DESC_F_USED bit in Flags to match the
//!   internal Device Ring Wrap Counter. It also sets the VIRTQ_DESC_F_AVAIL bit to match the
//!   same value." Any other combination is simply "not available" here.
//! - 2.8.6 "Next Flag: Descriptor Chaining": a list occupies consecutive ring slots; "Buffer ID is
//!   included in the last descriptor in the list"; "The device only writes out a single used
//!   descriptor for the whole list. It then skips forward according to the number of
//!   descriptors in the list."
//! - 2.8.7 "Indirect Flag": the table holds packed-format descriptors, used in order (there is no
//!   `next` field, so a table cannot loop); "The VIRTQ_DESC_F_WRITE flags bit is the only valid
//!   flag for descriptors in the indirect table. Others are reserved and are ignored by the
//!   device. Buffer ID is also reserved and is ignored by the device."
//! - 2.8.12 device requirements: "The device MUST start processing driver descriptors in the
//!   order in which they appear in the ring. The device MUST start writing device descriptors
//!   into the ring in the order in which they complete." This device completes in order, so
//!   each used descriptor overwrites the first descriptor of its list (2.8.6 example).
//! - 2.8.9 "Multi-buffer requests": the first buffer of a request is marked used after the
//!   rest. [`PackedRing::flush_used`] goes further: a batch of used descriptors is written with
//!   the first one's flags last (a Release store, after the dirty-log flush), so the driver,
//!   which polls in ring order (2.8.2), sees a whole batch or nothing, as a split ring's used->idx
//!   publishes one.
//! - 2.8.10 "Driver and Device Event Suppression": flags ENABLE (0), DISABLE (1), DESC (2, "Only
//!   valid if VIRTIO_F_RING_EVENT_IDX has been negotiated") with a 15-bit descriptor offset and a
//!   wrap counter in bit 15 of off_wrap.
//!
//! Index arithmetic: a (position, wrap counter) pair is mapped to a free-running index modulo
//! 2 x queue size ([`ring_seq`]): laps alternate wrap 1, 0, 1, ... from 1, so that index is exact
//! and event decisions ([`packed_need_event`]) stay correct across the ring end, for any queue
//! size up to 32768 (2.8: "Packed virtqueues support up to 2^15 entries each"; the size need not
//! be a power of two).
//!
//! The LM ring state of a packed queue carries the wrap counters, as vhost-user's
//! VHOST_USER_GET/SET_VRING_BASE do for packed rings: last_avail_idx = offset | wrap << 15,
//! last_used_idx likewise (see bar_registers::lm).
//!
//! Hostile input: the structure of a list (every descriptor available, at most queue size long,
//! a buffer id below the queue size) is checked when it is fetched; its contents (lengths,
//! directions, indirect tables, total size) when it is popped, with the same checks as the split
//! ring. A fault in a list behind good lists of the same fetch is reported when that list comes
//! first (the good ones are completed first), as the split ring reports it when the list is
//! walked.

use super::chain::{push_desc, Chain, ChainKind, RingSetup, MAX_INDIRECT_ENTRIES};
use crate::fault::DeviceFault;
// The ring flags and the off_wrap encoding, declared once in bar-registers (virtio-bindings'
// values); re-exported here, where the driver model and the tests have always found them.
use bar_registers::ring::{
    DESC_SIZE, EVENT_SUPPRESSION_SIZE, PACKED_DESC_FLAGS, RING_EVENT_FLAGS_MASK,
};

/// Descriptor size as a length in memory.
const DESC_BYTES: usize = DESC_SIZE as usize;
/// Where a descriptor's flags sit in its 16 bytes.
const FLAGS_AT: usize = PACKED_DESC_FLAGS as usize;
pub use bar_registers::ring::{
    off_wrap, split_off_wrap, MAX_PACKED_QUEUE_SIZE, RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE, WRAP_BIT,
};
use dma::{DmaEngine, DmaKind};
use std::sync::atomic::{fence, Ordering};

/// Whether descriptor `flags` mark it available for a side whose wrap counter is `wrap`.
#[inline(always)]
pub fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & VIRTQ_DESC_F_AVAIL != 0) == wrap && (flags & VIRTQ_DESC_F_USED != 0) != wrap
}

/// Whether descriptor `flags` mark it used with wrap counter `wrap`.
#[inline(always)]
pub fn is_used(flags: u16, wrap: bool) -> bool {
    (flags & VIRTQ_DESC_F_AVAIL != 0) == wrap && (flags & VIRTQ_DESC_F_USED != 0) == wrap
}

/// The AVAIL/USED bits of a used descriptor written with device wrap counter `wrap`.
#[inline(always)]
pub fn used_flags(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
    } else {
        0
    }
}

/// Ring position `pos` of a lap with wrap counter `wrap` as a free-running index modulo
/// 2 x `size` (the first lap has wrap counter 1, 2.8.1).
#[inline(always)]
pub fn ring_seq(size: u16, pos: u16, wrap: bool) -> u32 {
    let s = u32::from(size);
    (u32::from(pos) % s + if wrap { 0 } else { s }) % (2 * s)
}

/// Whether crossing from `old` to `new` (both [`ring_seq`] indices) passes the descriptor named
/// by `event` (an off_wrap): vring_need_event (2.7.7.2) in modulo-2 x size arithmetic, so a
/// DESC event (2.8.10) fires exactly when the descriptor at its offset and wrap counter was
/// made available / used in that step.
#[inline]
pub fn packed_need_event(size: u16, event: u16, new: u32, old: u32) -> bool {
    let m = 2 * u32::from(size);
    let (off, wrap) = split_off_wrap(event);
    let ev = ring_seq(size, off, wrap);
    (new + m - ev - 1) % m < (new + m - old) % m
}

/// How many leading 16-byte descriptors of `bytes` are available for wrap counter `wrap`.
#[inline]
fn avail_prefix(bytes: &[u8], wrap: bool) -> usize {
    bytes
        .chunks_exact(DESC_BYTES)
        .take_while(|d| is_avail(u16::from_le_bytes([d[FLAGS_AT], d[FLAGS_AT + 1]]), wrap))
        .count()
}

/// One descriptor as read from the ring.
#[derive(Clone, Copy, Debug, Default)]
struct RawDesc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

impl RawDesc {
    #[inline(always)]
    fn parse(b: &[u8]) -> RawDesc {
        RawDesc {
            addr: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            id: u16::from_le_bytes([b[12], b[13]]),
            flags: u16::from_le_bytes([b[FLAGS_AT], b[FLAGS_AT + 1]]),
        }
    }
}

/// A descriptor list fetched from the ring, not yet completed.
#[derive(Clone, Copy, Debug)]
struct Fetched {
    /// Ring position of its first descriptor, and that lap's wrap counter.
    pos: u16,
    wrap: bool,
    /// Ring slots it occupies.
    n: u16,
    /// Buffer id (of its last descriptor, 2.8.6).
    id: u16,
    /// Index of its first descriptor in `PackedRing::descs` (the slots as read by the fetch).
    first: u32,
}

/// A used descriptor waiting for [`PackedRing::flush_used`].
#[derive(Clone, Copy, Debug)]
struct PendingUsed {
    pos: u16,
    id: u16,
    len: u32,
    flags: u16,
    /// The slot's address field and flags as the driver left them (rewritten unchanged, so a
    /// run of used descriptors is one write and the batch's first flags stay unpublished).
    addr: u64,
    prior_flags: u16,
}

/// Device-side state of one enabled packed ring.
#[derive(Debug)]
pub struct PackedRing {
    pub queue: u16,
    pub size: u16,
    /// Descriptor ring (queue_desc).
    pub desc: u64,
    /// Driver event suppression structure (queue_driver), read by the device.
    pub driver: u64,
    /// Device event suppression structure (queue_device), written by the device.
    pub device: u64,
    pub event_idx: bool,
    pub indirect: bool,
    /// ignores-event-idx quirk: interrupt after every batch despite the driver's event structure.
    pub ignore_used_event: bool,
    /// Next position the device consumes and its wrap counter (LM: last_avail_idx).
    avail_pos: u16,
    avail_wrap: bool,
    /// First position after the fetched lists: where the next fetch looks.
    fetch_pos: u16,
    fetch_wrap: bool,
    /// Next position the device writes a used descriptor at (LM: last_used_idx).
    used_pos: u16,
    used_wrap: bool,
    /// [`ring_seq`] of the used position published to the driver, and at the last interrupt decision.
    published: u32,
    signalled: u32,
    chains: Vec<Fetched>,
    descs: Vec<RawDesc>,
    popped: usize,
    completed: usize,
    mark: Option<usize>,
    pending: Vec<PendingUsed>,
    scratch: Vec<u8>,
}

impl PackedRing {
    /// A packed ring resuming at the setup's LM state: `last_avail` / `last_used` are
    /// `offset | wrap << 15`. `setup.avail` is the driver event suppression area and
    /// `setup.used` the device's (4.1.4.3: queue_driver / queue_device).
    pub fn new(setup: RingSetup) -> Result<Self, DeviceFault> {
        let RingSetup {
            queue,
            size,
            desc,
            avail: driver,
            used: device,
            last_avail,
            last_used,
            event_idx,
            indirect,
        } = setup;
        if size == 0 || size > MAX_PACKED_QUEUE_SIZE {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail: "packed queue size is 0 or above 32768 (2.8)",
            });
        }
        if !desc.is_multiple_of(DESC_SIZE)
            || !driver.is_multiple_of(EVENT_SUPPRESSION_SIZE)
            || !device.is_multiple_of(EVENT_SUPPRESSION_SIZE)
        {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail:
                    "ring address misaligned (2.8.10.1: descriptor ring 16, event suppression 4)",
            });
        }
        // Every ring address the engine computes is below these ends (as in the split ring).
        if desc.checked_add(DESC_SIZE * u64::from(size)).is_none()
            || driver.checked_add(EVENT_SUPPRESSION_SIZE).is_none()
            || device.checked_add(EVENT_SUPPRESSION_SIZE).is_none()
        {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail: "ring area runs past the end of the 64-bit IOVA space",
            });
        }
        let (avail_pos, avail_wrap) = split_off_wrap(last_avail);
        let (used_pos, used_wrap) = split_off_wrap(last_used);
        if avail_pos >= size || used_pos >= size {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail: "packed LM ring state offset (bits 0-14) not below the queue size",
            });
        }
        let m = 2 * u32::from(size);
        let ahead =
            (ring_seq(size, avail_pos, avail_wrap) + m - ring_seq(size, used_pos, used_wrap)) % m;
        if ahead > u32::from(size) {
            return Err(DeviceFault::BadQueueConfig {
                queue,
                detail: "packed LM ring state: last_avail more than a ring ahead of last_used",
            });
        }
        let published = ring_seq(size, used_pos, used_wrap);
        Ok(PackedRing {
            queue,
            size,
            desc,
            driver,
            device,
            event_idx,
            indirect,
            ignore_used_event: false,
            avail_pos,
            avail_wrap,
            fetch_pos: avail_pos,
            fetch_wrap: avail_wrap,
            used_pos,
            used_wrap,
            published,
            signalled: published,
            chains: Vec::with_capacity(size.into()),
            descs: Vec::with_capacity(size.into()),
            popped: 0,
            completed: 0,
            mark: None,
            pending: Vec::with_capacity(size.into()),
            scratch: Vec::new(),
        })
    }

    #[inline(always)]
    fn dma_err(&self) -> impl Fn(dma::DmaFault) -> DeviceFault + '_ {
        move |fault| DeviceFault::Dma {
            queue: self.queue,
            fault,
        }
    }

    /// Address of the descriptor at ring position `pos`.
    #[inline(always)]
    fn desc_addr(&self, pos: u16) -> u64 {
        self.desc + DESC_SIZE * u64::from(pos)
    }

    /// Address of the flags of the descriptor at ring position `pos`.
    #[inline(always)]
    fn flags_addr(&self, pos: u16) -> u64 {
        self.desc_addr(pos) + PACKED_DESC_FLAGS
    }

    /// LM ring state: (last_avail_idx, last_used_idx), each `offset | wrap counter << 15`.
    pub fn ring_state(&self) -> (u16, u16) {
        (
            off_wrap(self.avail_pos, self.avail_wrap),
            off_wrap(self.used_pos, self.used_wrap),
        )
    }

    /// `pos`/`wrap` moved forward `n` slots (the wrap counter toggles at the ring end, 2.8.1).
    #[inline(always)]
    fn advance(&self, pos: u16, wrap: bool, n: u16) -> (u16, bool) {
        let p = u32::from(pos) + u32::from(n);
        let s = u32::from(self.size);
        if p >= s {
            ((p - s) as u16, !wrap)
        } else {
            (p as u16, wrap)
        }
    }

    /// Slot `i` after the fetch position: ring position and lap wrap counter.
    #[inline(always)]
    fn slot(&self, i: u16) -> (u16, bool) {
        self.advance(self.fetch_pos, self.fetch_wrap, i)
    }

    /// Slots the device owns: fetched (or consumed) and not yet used.
    fn outstanding(&self) -> u32 {
        let m = 2 * u32::from(self.size);
        (ring_seq(self.size, self.fetch_pos, self.fetch_wrap) + m
            - ring_seq(self.size, self.used_pos, self.used_wrap))
            % m
    }

    /// Reads `count` ring slots from position `start` into `scratch` (one DMA read, two when it
    /// wraps at the ring end).
    fn read_slots(
        &mut self,
        dma: &mut DmaEngine,
        start: u16,
        count: u16,
    ) -> Result<(), DeviceFault> {
        let bytes = usize::from(count) * DESC_BYTES;
        self.scratch.resize(bytes, 0);
        let first = count.min(self.size - start);
        let q = self.queue;
        let err = |fault| DeviceFault::Dma { queue: q, fault };
        dma.read(
            self.desc_addr(start),
            &mut self.scratch[..usize::from(first) * DESC_BYTES],
            DmaKind::Descriptor,
        )
        .map_err(err)?;
        if first < count {
            dma.read(
                self.desc,
                &mut self.scratch[usize::from(first) * DESC_BYTES..bytes],
                DmaKind::Descriptor,
            )
            .map_err(err)?;
        }
        Ok(())
    }

    /// Looks at the ring after the lists already fetched: a 2-byte peek at the next slot's
    /// flags, then a span read of up to `max` slots (two reads when it wraps) to find how many
    /// are available, an Acquire fence, and those slots read again; turns them into lists, in
    /// ring order. Returns how many fetched lists are ready to pop. Lists popped inside an open
    /// [`PackedRing::begin`] are kept for a rollback.
    pub fn fetch_avail(&mut self, dma: &mut DmaEngine, max: u16) -> Result<u16, DeviceFault> {
        if self.has_fetched() {
            return Ok((self.chains.len() - self.popped) as u16);
        }
        self.compact();
        let room = u32::from(self.size) - self.outstanding();
        let w = room.min(u32::from(max.max(1))) as u16;
        if w == 0 {
            return Ok(0);
        }
        // An idle ring costs one 2-byte read (2.8.2: "the next device descriptor after the one
        // they processed previously" is the one location to poll).
        let start = self.fetch_pos;
        let flags = dma
            .read_u16(self.flags_addr(start), DmaKind::Descriptor)
            .map_err(self.dma_err())?;
        if !is_avail(flags, self.fetch_wrap) {
            return Ok(0);
        }
        // Look: which leading slots are available (flags as this read saw them). The slots
        // before the ring end belong to the fetch lap, the ones after it to the next.
        self.read_slots(dma, start, w)?;
        let before_end = usize::from(w.min(self.size - start));
        let mut k = avail_prefix(&self.scratch[..before_end * DESC_BYTES], self.fetch_wrap);
        if k == before_end {
            k += avail_prefix(&self.scratch[before_end * DESC_BYTES..], !self.fetch_wrap);
        }
        if k == 0 {
            return Ok(0);
        }
        // 2.8.21.1: the driver initializes a descriptor, then "Perform a memory barrier",
        // then sets its flags. Pair with it: after this fence, reading the slots again returns
        // everything the flags seen above published (a span copy is not ordered within itself).
        fence(Ordering::Acquire);
        self.read_slots(dma, start, k as u16)?;
        let base = self.descs.len();
        self.descs
            .extend(self.scratch.chunks_exact(DESC_BYTES).map(RawDesc::parse));
        let mut i = 0u16;
        let mut n = 0u16;
        let (mut pos, mut wrap) = (self.fetch_pos, self.fetch_wrap);
        while usize::from(i) < k && n < max.max(1) {
            // The common case, a one-descriptor list, without the general walk.
            let d = self.descs[base + usize::from(i)];
            let parsed = if d.flags & VIRTQ_DESC_F_NEXT == 0
                && d.id < self.size
                && is_avail(d.flags, wrap)
            {
                Ok(Some((1, d.id)))
            } else {
                self.parse_list(dma, base, i, room as u16)
            };
            match parsed {
                Ok(Some((len, id))) => {
                    self.chains.push(Fetched {
                        pos,
                        wrap,
                        n: len,
                        id,
                        first: (base + usize::from(i)) as u32,
                    });
                    i += len;
                    n += 1;
                    (pos, wrap) = self.advance(pos, wrap, len);
                }
                // Runs past the slots read: left for the next fetch, where it comes first.
                Ok(None) => break,
                Err(f) if n == 0 => {
                    self.descs.truncate(base);
                    return Err(f);
                }
                // A bad list behind good ones: complete those first; it faults when it is first.
                Err(_) => break,
            }
        }
        // Slots read but not taken are read again by the next fetch.
        self.descs.truncate(base + usize::from(i));
        (self.fetch_pos, self.fetch_wrap) = (pos, wrap);
        Ok(n)
    }

    /// Walks the list whose first descriptor is window slot `start` (seen available).
    /// Ok(Some((slots, buffer id))), Ok(None) when it runs past the window and is not the first
    /// list of this fetch, or the structural fault.
    fn parse_list(
        &mut self,
        dma: &mut DmaEngine,
        base: usize,
        start: u16,
        room: u16,
    ) -> Result<Option<(u16, u16)>, DeviceFault> {
        let q = self.queue;
        let head = self.slot(start).0;
        let mut j = start;
        loop {
            if base + usize::from(j) >= self.descs.len() {
                if start != 0 {
                    return Ok(None);
                }
                let have = (self.descs.len() - base) as u16;
                if have >= room {
                    // Every free slot is in this list and it still continues: its next
                    // descriptor is the device's own (or the list's first, a lap on).
                    return Err(if room == self.size {
                        DeviceFault::ChainTooLong {
                            queue: q,
                            head,
                            limit: self.size.into(),
                        }
                    } else {
                        DeviceFault::ChainNotAvailable {
                            queue: q,
                            head,
                            index: self.slot(have).0,
                        }
                    });
                }
                // The first list is longer than what was read: read the rest of the free slots
                // (still after the fence: its first descriptor was seen available).
                let at = self.slot(have).0;
                self.read_slots(dma, at, room - have)?;
                self.descs
                    .extend(self.scratch.chunks_exact(DESC_BYTES).map(RawDesc::parse));
            }
            let d = self.descs[base + usize::from(j)];
            let (pos, wrap) = self.slot(j);
            if !is_avail(d.flags, wrap) {
                // 2.8.17: "A driver MUST NOT make the first descriptor in the list available
                // before all subsequent descriptors comprising the list are made available."
                return Err(DeviceFault::ChainNotAvailable {
                    queue: q,
                    head,
                    index: pos,
                });
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                if d.id >= self.size {
                    return Err(DeviceFault::BufferIdOutOfRange {
                        queue: q,
                        id: d.id,
                        size: self.size,
                    });
                }
                return Ok(Some((j - start + 1, d.id)));
            }
            j += 1;
        }
    }

    /// Drops lists that are completed and cannot be rolled back.
    fn compact(&mut self) {
        let keep = self.mark.unwrap_or(self.popped).min(self.completed);
        if keep == 0 {
            return;
        }
        let drop = self
            .chains
            .get(keep)
            .map_or(self.descs.len(), |c| c.first as usize);
        self.chains.drain(..keep);
        self.descs.drain(..drop);
        for c in &mut self.chains {
            c.first -= drop as u32;
        }
        self.popped -= keep;
        self.completed -= keep;
        self.mark = self.mark.map(|m| m - keep);
    }

    /// Pops the next fetched list into `chain` (head = buffer id), validating every
    /// descriptor. Returns false when no fetched list is left.
    pub fn pop(
        &mut self,
        dma: &mut DmaEngine,
        chain: &mut Chain,
        kind: ChainKind,
        max_total: u64,
    ) -> Result<bool, DeviceFault> {
        let Some(&f) = self.chains.get(self.popped) else {
            return Ok(false);
        };
        self.popped += 1;
        (self.avail_pos, self.avail_wrap) = self.advance(f.pos, f.wrap, f.n);
        let q = self.queue;
        chain.clear(f.id);
        let mut index = f.pos;
        for k in 0..f.n {
            let d = self.descs[f.first as usize + usize::from(k)];
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect {
                    return Err(DeviceFault::IndirectNotNegotiated { queue: q });
                }
                // 2.8.19: "A driver MUST NOT write direct descriptors with DESC_F_INDIRECT set
                // in a scatter-gather list linked by VIRTQ_DESC_F_NEXT."
                if f.n > 1 {
                    return Err(DeviceFault::IndirectWithNext { queue: q });
                }
                return self
                    .walk_indirect(dma, d.addr, d.len, chain, kind, max_total)
                    .map(|()| true);
            }
            push_desc(q, chain, index, d.addr, d.len, d.flags, kind, max_total)?;
            index += 1;
            if index == self.size {
                index = 0;
            }
        }
        Ok(true)
    }

    /// An indirect table of packed descriptors (2.8.7): `len / 16` entries used in order; only
    /// VIRTQ_DESC_F_WRITE counts, the other flags and the buffer id are ignored.
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
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(len as usize, 0);
        let res = dma
            .read(table, &mut buf, DmaKind::IndirectTable)
            .map_err(self.dma_err())
            .and_then(|()| {
                for (i, b) in buf.chunks_exact(DESC_BYTES).enumerate() {
                    let d = RawDesc::parse(b);
                    push_desc(
                        q,
                        chain,
                        i as u16,
                        d.addr,
                        d.len,
                        d.flags & VIRTQ_DESC_F_WRITE,
                        kind,
                        max_total,
                    )?;
                }
                Ok(())
            });
        self.scratch = buf;
        res
    }

    /// Opens a transaction: lists popped from now on can be given back with rollback.
    pub fn begin(&mut self) {
        self.mark = Some(self.popped);
    }

    /// Keeps the lists popped since begin.
    pub fn commit(&mut self) {
        self.mark = None;
    }

    /// Gives back the lists popped since begin: they will be popped again.
    pub fn rollback(&mut self) {
        if let Some(m) = self.mark.take() {
            if let Some(f) = self.chains.get(m) {
                (self.avail_pos, self.avail_wrap) = (f.pos, f.wrap);
            }
            self.popped = m;
        }
    }

    /// Completes the oldest popped list (in-order completion) as buffer `id` with `len` bytes
    /// written; the used descriptor goes to the device's next used slot at the next
    /// [`PackedRing::flush_used`].
    pub fn push_used(&mut self, id: u16, len: u32) {
        let Some(&f) = self
            .chains
            .get(self.completed)
            .filter(|_| self.completed < self.popped)
        else {
            debug_assert!(false, "push_used without a popped list");
            return;
        };
        debug_assert_eq!(f.id, id, "in-order completion");
        self.completed += 1;
        let d0 = self.descs[f.first as usize];
        // 2.8.3: in a used descriptor VIRTQ_DESC_F_WRITE says whether data was written; 2.8.4:
        // its len is "the length of the buffer that has been initialized (written to)".
        let flags = used_flags(self.used_wrap) | if len > 0 { VIRTQ_DESC_F_WRITE } else { 0 };
        self.pending.push(PendingUsed {
            pos: self.used_pos,
            id,
            len,
            flags,
            addr: d0.addr,
            prior_flags: d0.flags,
        });
        (self.used_pos, self.used_wrap) = self.advance(self.used_pos, self.used_wrap, f.n);
    }

    /// Number of used descriptors queued but not yet written.
    pub fn pending_used(&self) -> usize {
        self.pending.len()
    }

    /// Writes the queued used descriptors in place (2.8: "writes a used device descriptor
    /// including the Buffer ID into the Descriptor Ring (overwriting a driver descriptor
    /// previously made available)"): each run of consecutive slots is one write, the batch's
    /// first descriptor keeps the flags the driver left; then that first descriptor's flags are
    /// stored with Release after the dirty log is flushed, publishing the batch.
    pub fn flush_used(&mut self, dma: &mut DmaEngine) -> Result<(), DeviceFault> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let q = self.queue;
        let err = |fault| DeviceFault::Dma { queue: q, fault };
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(DESC_BYTES * self.pending.len(), 0);
        for (i, (e, b)) in self
            .pending
            .iter()
            .zip(buf.chunks_exact_mut(DESC_BYTES))
            .enumerate()
        {
            b[0..8].copy_from_slice(&e.addr.to_le_bytes());
            b[8..12].copy_from_slice(&e.len.to_le_bytes());
            b[12..14].copy_from_slice(&e.id.to_le_bytes());
            b[FLAGS_AT..FLAGS_AT + 2]
                .copy_from_slice(&(if i == 0 { e.prior_flags } else { e.flags }).to_le_bytes());
        }
        // One write per run of consecutive slots (a run ends at the ring end or where a longer
        // list's skipped slots begin).
        let mut res = Ok(());
        let mut run = 0usize;
        for i in 1..=self.pending.len() {
            if i == self.pending.len() || self.pending[i].pos != self.pending[i - 1].pos + 1 {
                let at = self.desc_addr(self.pending[run].pos);
                res = dma
                    .write(
                        at,
                        &buf[DESC_BYTES * run..DESC_BYTES * i],
                        DmaKind::RingWrite,
                    )
                    .map_err(err);
                if res.is_err() {
                    break;
                }
                run = i;
            }
        }
        self.scratch = buf;
        res?;
        let first = self.pending[0];
        dma.publish_u16(self.flags_addr(first.pos), first.flags, DmaKind::RingWrite)
            .map_err(err)?;
        self.pending.clear();
        self.published = ring_seq(self.size, self.used_pos, self.used_wrap);
        Ok(())
    }

    /// Whether the driver wants a used buffer notification for what was published since the
    /// last decision (2.8.10): its event suppression flags DISABLE, ENABLE, or DESC (with
    /// EVENT_IDX) naming the used descriptor at off_wrap.
    pub fn interrupt_decision(&mut self, dma: &mut DmaEngine) -> Result<bool, DeviceFault> {
        let (new, old) = (self.published, self.signalled);
        if new == old {
            return Ok(false);
        }
        // Pairs with the driver's barrier between writing its event structure and polling the ring.
        fence(Ordering::SeqCst);
        let need = if self.event_idx && self.ignore_used_event {
            true
        } else {
            let v = dma
                .read_u32(self.driver, DmaKind::RingRead)
                .map_err(self.dma_err())?;
            let (event, flags) = (v as u16, (v >> 16) as u16 & RING_EVENT_FLAGS_MASK);
            match flags {
                RING_EVENT_FLAGS_DISABLE => false,
                RING_EVENT_FLAGS_DESC if self.event_idx => {
                    packed_need_event(self.size, event, new, old)
                }
                // ENABLE, DESC without EVENT_IDX, and the reserved value 3: notify.
                _ => true,
            }
        };
        self.signalled = new;
        Ok(need)
    }

    /// With EVENT_IDX, asks for an available buffer notification when the driver makes the
    /// next descriptor the device will look at available (device event structure: off_wrap =
    /// that slot, flags = DESC); then returns whether that descriptor is available already.
    pub fn arm_notification(&mut self, dma: &mut DmaEngine) -> Result<bool, DeviceFault> {
        let q = self.queue;
        if self.event_idx {
            let v = u32::from(off_wrap(self.fetch_pos, self.fetch_wrap))
                | (u32::from(RING_EVENT_FLAGS_DESC) << 16);
            dma.write_u32(self.device, v, DmaKind::RingWrite)
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            fence(Ordering::SeqCst);
        }
        let flags = dma
            .read_u16(self.flags_addr(self.fetch_pos), DmaKind::Descriptor)
            .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
        Ok(is_avail(flags, self.fetch_wrap))
    }

    /// Whether fetched lists are still unprocessed.
    pub fn has_fetched(&self) -> bool {
        self.popped < self.chains.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_per_wrap_counter() {
        // 2.8.1: available = AVAIL matches the wrap counter, USED the inverse.
        assert!(is_avail(VIRTQ_DESC_F_AVAIL, true));
        assert!(is_avail(VIRTQ_DESC_F_USED, false));
        assert!(
            !is_avail(0, true) && !is_avail(0, false),
            "a zeroed ring has nothing available"
        );
        assert!(!is_avail(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED, true));
        assert!(is_used(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED, true) && is_used(0, false));
        assert!(!is_used(VIRTQ_DESC_F_AVAIL, true));
        assert_eq!(used_flags(true), VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED);
    }

    #[test]
    fn seq_and_need_event_across_the_ring_end() {
        let s = 256;
        assert_eq!(ring_seq(s, 0, true), 0);
        assert_eq!(ring_seq(s, 5, false), 261);
        // 250 (lap 1) -> 4 (lap 0): the descriptor at 252 of lap 1 was passed.
        let (old, new) = (ring_seq(s, 250, true), ring_seq(s, 4, false));
        assert!(packed_need_event(s, off_wrap(252, true), new, old));
        assert!(packed_need_event(s, off_wrap(2, false), new, old));
        assert!(
            !packed_need_event(s, off_wrap(4, false), new, old),
            "the next descriptor is not passed yet"
        );
        assert!(
            !packed_need_event(s, off_wrap(249, true), new, old),
            "behind old"
        );
        assert!(
            !packed_need_event(s, off_wrap(10, true), new, old),
            "a lap ahead"
        );
        // Non-power-of-two sizes (2.8).
        let s = 5;
        let (old, new) = (ring_seq(s, 3, false), ring_seq(s, 1, true));
        assert!(packed_need_event(s, off_wrap(4, false), new, old));
        assert!(packed_need_event(s, off_wrap(0, true), new, old));
        assert!(!packed_need_event(s, off_wrap(1, true), new, old));
    }
}
