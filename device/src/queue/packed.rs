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
//! How a batch moves (the shape of DPDK vhost's batched packed paths, with a NIC's single read
//! of a descriptor window):
//! - Fetch: a 2-byte peek at the next slot's flags (an idle ring costs nothing more), then one
//!   read of a window of slots ([`DmaEngine::read_published`]): each slot's flags, an Acquire
//!   fence pairing with the driver's barrier before its flags store (2.8.21.1), then the
//!   available slots whole. Every descriptor is read once; the slots land in a shadow
//!   (`PackedRing::descs`) and are validated there as lists.
//! - Pop: from the shadow, no DMA (a one-descriptor list takes a short path).
//! - Completion (in order): the list's first shadow slot becomes its used descriptor (len, id,
//!   used flags but for a batch's first) while it is still in cache, and runs of consecutive
//!   slots are noted; [`PackedRing::flush_used`] writes each run from the shadow in one DMA
//!   write, then publishes the batch with the first descriptor's flags.
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

/// VIRTQ_DESC_F_WRITE in a used descriptor when `len` bytes were written (2.8.3: it says
/// whether data was written; 2.8.4: len is "the length of the buffer that has been initialized
/// (written to)").
#[inline(always)]
fn write_flag(len: u32) -> u16 {
    if len > 0 {
        VIRTQ_DESC_F_WRITE
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

/// A ring slot as the device read it: `{addr le64, len le32, id le16, flags le16}` (2.8.13).
type Slot = [u8; DESC_BYTES];

/// Where a descriptor's length and buffer id sit in its 16 bytes (the address is first).
const LEN_AT: usize = 8;
const ID_AT: usize = 12;

/// The little-endian u16 at `at` of a slot.
#[inline(always)]
fn le16(s: &Slot, at: usize) -> u16 {
    u16::from_le_bytes([s[at], s[at + 1]])
}

/// What one fetch has read, in slots after the fetch position: its slots start at `base` in
/// `PackedRing::descs`; `read` slots were read, the first `avail` of them available (only
/// those are kept); `room` slots are free for the device to look at.
struct Window {
    base: usize,
    read: u16,
    avail: u16,
    room: u16,
}

/// One descriptor as read from the ring.
#[derive(Clone, Copy, Debug, Default)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
}

impl RawDesc {
    #[inline(always)]
    fn parse(b: &[u8]) -> RawDesc {
        RawDesc {
            addr: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            flags: u16::from_le_bytes([b[FLAGS_AT], b[FLAGS_AT + 1]]),
        }
    }
}

/// Completed lists whose used descriptors go to consecutive ring slots and whose first slots
/// are consecutive in `PackedRing::descs`: one write of `count` shadow slots at ring
/// position `pos`.
#[derive(Clone, Copy, Debug)]
struct UsedRun {
    /// Shadow index of the first list's first slot.
    at: usize,
    count: usize,
    pos: u16,
}

/// What [`PackedRing::begin`] saved for a rollback.
#[derive(Clone, Copy, Debug)]
struct Mark {
    /// Shadow index, ring position and wrap counter of the next list to pop at begin.
    at: usize,
    pos: u16,
    wrap: bool,
    /// Lists popped since.
    pops: u16,
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
    /// The shadow: the ring slots fetched and not yet done with, in ring order, as read (once)
    /// by the fetches. Shadow index `pop_at` is ring position `avail_pos`; every list is
    /// validated (each slot available, the last without NEXT, its id below the queue size)
    /// before it is taken in. push_used turns a completed list's first slot into its used
    /// descriptor here (len, id, used flags), while it is still in cache, and flush_used
    /// writes runs of them from the shadow.
    descs: Vec<Slot>,
    /// Shadow index of the next list to pop, and of the oldest popped list not completed.
    pop_at: usize,
    complete_at: usize,
    /// Fetched lists not popped yet.
    unpopped: u16,
    mark: Option<Mark>,
    /// The completed lists whose used descriptors are not written yet, as runs; how many
    /// there are; and the flags that publish them (those of the first, which keeps the flags
    /// as read in the shadow until then).
    runs: Vec<UsedRun>,
    pending: usize,
    first_flags: u16,
    /// Indirect tables.
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
            // The engine uses buffers in order either way (2.8.9) and writes a used
            // descriptor per buffer.
            in_order: _,
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
            descs: Vec::with_capacity(size.into()),
            pop_at: 0,
            complete_at: 0,
            unpopped: 0,
            mark: None,
            runs: Vec::new(),
            pending: 0,
            first_flags: 0,
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

    /// Appends `count` ring slots, from slot `from` after the fetch position on, to `descs`,
    /// read with [`DmaEngine::read_published`]: each slot's flags first, then (after an
    /// Acquire fence) the available ones whole, so every byte is read once (one DMA read, two
    /// when the window wraps at the ring end; the part after the ring end belongs to the next
    /// lap and is read only if the part before it is available to its end). Returns how many
    /// leading slots of the window are available; the slots after them hold nothing useful.
    fn read_window(
        &mut self,
        dma: &mut DmaEngine,
        from: u16,
        count: u16,
    ) -> Result<u16, DeviceFault> {
        let (start, wrap) = self.slot(from);
        let first = count.min(self.size - start);
        let (at_first, at_ring) = (self.desc_addr(start), self.desc);
        let q = self.queue;
        let err = |fault| DeviceFault::Dma { queue: q, fault };
        let at = self.descs.len();
        self.descs.resize(at + usize::from(count), [0; DESC_BYTES]);
        let window = &mut self.descs[at..];
        let (before_end, after_end) = window.split_at_mut(usize::from(first));
        let res = dma
            .read_published(
                at_first,
                before_end.as_flattened_mut(),
                DESC_BYTES,
                FLAGS_AT,
                DmaKind::Descriptor,
                |f| is_avail(f, wrap),
            )
            .and_then(|n| {
                if n < before_end.len() || after_end.is_empty() {
                    return Ok(n);
                }
                dma.read_published(
                    at_ring,
                    after_end.as_flattened_mut(),
                    DESC_BYTES,
                    FLAGS_AT,
                    DmaKind::Descriptor,
                    |f| is_avail(f, !wrap),
                )
                .map(|m| n + m)
            });
        match res {
            Ok(n) => Ok(n as u16),
            Err(fault) => {
                self.descs.truncate(at);
                Err(err(fault))
            }
        }
    }

    /// Looks at the ring after the lists already fetched: a 2-byte peek at the next slot's
    /// flags, then one read of a window of up to `max` slots (two when it wraps) that takes
    /// each slot's flags, then the available ones whole ([`DmaEngine::read_published`]: one
    /// read per descriptor, none read twice); turns the available prefix into lists, in ring
    /// order. Returns how many fetched lists are ready to pop. Lists popped inside an open
    /// [`PackedRing::begin`] are kept for a rollback.
    pub fn fetch_avail(&mut self, dma: &mut DmaEngine, max: u16) -> Result<u16, DeviceFault> {
        if self.has_fetched() {
            return Ok(self.unpopped);
        }
        self.compact();
        let room = (u32::from(self.size) - self.outstanding()) as u16;
        let max = max.max(1);
        let w = room.min(max);
        if w == 0 {
            return Ok(0);
        }
        // An idle ring costs one 2-byte read (2.8.2: "the next device descriptor after the one
        // they processed previously" is the one location to poll).
        let flags = dma
            .read_u16(self.flags_addr(self.fetch_pos), DmaKind::Descriptor)
            .map_err(self.dma_err())?;
        if !is_avail(flags, self.fetch_wrap) {
            return Ok(0);
        }
        let base = self.descs.len();
        let avail = self.read_window(dma, 0, w)?;
        self.descs.truncate(base + usize::from(avail));
        let mut win = Window {
            base,
            read: w,
            avail,
            room,
        };
        // The common case first: a run of one-descriptor lists.
        let size = self.size;
        let lim = usize::from(win.avail.min(max));
        let ones = self.descs[base..base + lim]
            .iter()
            .take_while(|d| le16(d, FLAGS_AT) & VIRTQ_DESC_F_NEXT == 0 && le16(d, ID_AT) < size)
            .count() as u16;
        let mut i = ones;
        let mut n = ones;
        while i < win.avail && n < max {
            // The common case, a one-descriptor list, without the general walk.
            let d = &self.descs[base + usize::from(i)];
            let parsed = if le16(d, FLAGS_AT) & VIRTQ_DESC_F_NEXT == 0 && le16(d, ID_AT) < self.size
            {
                Ok(Some(1))
            } else {
                self.parse_list(dma, &mut win, i)
            };
            match parsed {
                Ok(Some(len)) => {
                    i += len;
                    n += 1;
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
        (self.fetch_pos, self.fetch_wrap) = self.slot(i);
        self.unpopped += n;
        Ok(n)
    }

    /// Walks the list whose first descriptor is window slot `start` (available).
    /// Ok(Some(slots)), Ok(None) when it runs past the window and is not the first
    /// list of this fetch, or the structural fault. The first list of a fetch may be longer than
    /// the window: the rest of the free slots is read for it.
    fn parse_list(
        &mut self,
        dma: &mut DmaEngine,
        win: &mut Window,
        start: u16,
    ) -> Result<Option<u16>, DeviceFault> {
        let q = self.queue;
        let head = self.slot(start).0;
        let mut j = start;
        loop {
            if j >= win.avail {
                if j < win.read {
                    // 2.8.17: "A driver MUST NOT make the first descriptor in the list
                    // available before all subsequent descriptors comprising the list are made
                    // available."
                    return Err(DeviceFault::ChainNotAvailable {
                        queue: q,
                        head,
                        index: self.slot(j).0,
                    });
                }
                if start != 0 {
                    return Ok(None);
                }
                if win.read >= win.room {
                    // Every free slot is in this list and it still continues: its next
                    // descriptor is the device's own (or the list's first, a lap on).
                    return Err(if win.room == self.size {
                        DeviceFault::ChainTooLong {
                            queue: q,
                            head,
                            limit: self.size.into(),
                        }
                    } else {
                        DeviceFault::ChainNotAvailable {
                            queue: q,
                            head,
                            index: self.slot(win.read).0,
                        }
                    });
                }
                // The first list is longer than the window: read the rest of the free slots
                // (its first descriptor was seen available; each slot is again flags first).
                let more = win.room - win.read;
                let got = self.read_window(dma, win.read, more)?;
                self.descs.truncate(win.base + usize::from(win.avail + got));
                win.read += more;
                win.avail += got;
                continue;
            }
            let d = &self.descs[win.base + usize::from(j)];
            if le16(d, FLAGS_AT) & VIRTQ_DESC_F_NEXT == 0 {
                let id = le16(d, ID_AT);
                if id >= self.size {
                    return Err(DeviceFault::BufferIdOutOfRange {
                        queue: q,
                        id,
                        size: self.size,
                    });
                }
                return Ok(Some(j - start + 1));
            }
            j += 1;
        }
    }

    /// Drops the shadow slots of lists whose used descriptor is written and that cannot be
    /// rolled back.
    fn compact(&mut self) {
        let unwritten = self.runs.first().map_or(self.complete_at, |r| r.at);
        let keep = self.mark.map_or(self.pop_at, |m| m.at).min(unwritten);
        if keep == 0 {
            return;
        }
        self.descs.drain(..keep);
        self.pop_at -= keep;
        self.complete_at -= keep;
        if let Some(m) = &mut self.mark {
            m.at -= keep;
        }
        for r in &mut self.runs {
            r.at -= keep;
        }
    }

    /// Slots of the list whose first slot is shadow index `at` (a list validated by the fetch:
    /// its last slot, the first without NEXT, is in the shadow).
    fn list_slots(&self, at: usize) -> u16 {
        let mut n = 1;
        while le16(&self.descs[at + usize::from(n) - 1], FLAGS_AT) & VIRTQ_DESC_F_NEXT != 0 {
            n += 1;
        }
        n
    }

    /// Pops the next fetched list into `chain` (head = buffer id, from its last descriptor,
    /// 2.8.6), validating every descriptor. Returns false when no fetched list is left.
    #[inline(always)]
    pub fn pop(
        &mut self,
        dma: &mut DmaEngine,
        chain: &mut Chain,
        kind: ChainKind,
        max_total: u64,
    ) -> Result<bool, DeviceFault> {
        if self.unpopped == 0 {
            return Ok(false);
        }
        let at = self.pop_at;
        let d = RawDesc::parse(&self.descs[at]);
        if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT) != 0 {
            return self.pop_list(dma, chain, kind, max_total);
        }
        // The common case: a list of one direct descriptor.
        self.unpopped -= 1;
        if let Some(m) = &mut self.mark {
            m.pops += 1;
        }
        self.pop_at = at + 1;
        let index = self.avail_pos;
        (self.avail_pos, self.avail_wrap) = self.advance(index, self.avail_wrap, 1);
        chain.clear(le16(&self.descs[at], ID_AT));
        push_desc(
            self.queue, chain, index, d.addr, d.len, d.flags, kind, max_total,
        )?;
        Ok(true)
    }

    /// [`PackedRing::pop`] of a list of several descriptors or an indirect one.
    #[inline(never)]
    fn pop_list(
        &mut self,
        dma: &mut DmaEngine,
        chain: &mut Chain,
        kind: ChainKind,
        max_total: u64,
    ) -> Result<bool, DeviceFault> {
        let at = self.pop_at;
        let n = self.list_slots(at);
        let mut index = self.avail_pos;
        self.unpopped -= 1;
        if let Some(m) = &mut self.mark {
            m.pops += 1;
        }
        self.pop_at += usize::from(n);
        (self.avail_pos, self.avail_wrap) = self.advance(self.avail_pos, self.avail_wrap, n);
        let q = self.queue;
        let slots = &self.descs[at..at + usize::from(n)];
        chain.clear(le16(&slots[slots.len() - 1], ID_AT));
        for s in slots {
            let d = RawDesc::parse(s);
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect {
                    return Err(DeviceFault::IndirectNotNegotiated { queue: q });
                }
                // 2.8.19: "A driver MUST NOT write direct descriptors with DESC_F_INDIRECT set
                // in a scatter-gather list linked by VIRTQ_DESC_F_NEXT."
                if n > 1 {
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
        self.mark = Some(Mark {
            at: self.pop_at,
            pos: self.avail_pos,
            wrap: self.avail_wrap,
            pops: 0,
        });
    }

    /// Keeps the lists popped since begin.
    pub fn commit(&mut self) {
        self.mark = None;
    }

    /// Gives back the lists popped since begin (none of them completed): they will be popped
    /// again.
    pub fn rollback(&mut self) {
        if let Some(m) = self.mark.take() {
            debug_assert!(self.complete_at <= m.at, "rollback of a completed list");
            self.pop_at = m.at;
            (self.avail_pos, self.avail_wrap) = (m.pos, m.wrap);
            self.unpopped += m.pops;
        }
    }

    /// Completes the oldest popped list (in-order completion) as buffer `id` with `len` bytes
    /// written: its first shadow slot becomes the used descriptor (len, id, and the used flags
    /// for the device's wrap counter, 2.8.1, with WRITE when data was written, 2.8.3), bound
    /// for the device's next used position; [`PackedRing::flush_used`] writes it.
    #[inline]
    pub fn push_used(&mut self, id: u16, len: u32) {
        let at = self.complete_at;
        if at >= self.pop_at {
            debug_assert!(false, "push_used without a popped list");
            return;
        }
        let n = self.slots_at(at);
        debug_assert_eq!(
            le16(&self.descs[at + usize::from(n) - 1], ID_AT),
            id,
            "in-order completion"
        );
        let flags = used_flags(self.used_wrap) | write_flag(len);
        let first = self.pending == 0;
        let d = &mut self.descs[at];
        d[LEN_AT..ID_AT].copy_from_slice(&len.to_le_bytes());
        d[ID_AT..FLAGS_AT].copy_from_slice(&id.to_le_bytes());
        if first {
            // The batch's first used descriptor keeps the flags as read until the publish.
            self.first_flags = flags;
        } else {
            d[FLAGS_AT..].copy_from_slice(&flags.to_le_bytes());
        }
        let pos = self.used_pos;
        match self.runs.last_mut() {
            // Next to the run in the shadow (so the run's last list has one slot) and in the
            // ring (not across the ring end).
            Some(r) if r.at + r.count == at && usize::from(r.pos) + r.count == usize::from(pos) => {
                r.count += 1
            }
            _ => self.runs.push(UsedRun { at, count: 1, pos }),
        }
        self.pending += 1;
        self.complete_at = at + usize::from(n);
        (self.used_pos, self.used_wrap) = self.advance(pos, self.used_wrap, n);
    }

    /// Slots of the list at shadow index `at` whose flags are still as read.
    #[inline(always)]
    fn slots_at(&self, at: usize) -> u16 {
        if le16(&self.descs[at], FLAGS_AT) & VIRTQ_DESC_F_NEXT == 0 {
            1
        } else {
            self.list_slots(at)
        }
    }

    /// Number of used descriptors queued but not yet written.
    pub fn pending_used(&self) -> usize {
        self.pending
    }

    /// Writes the used descriptors of the lists completed since the last flush in place (2.8:
    /// "writes a used device descriptor including the Buffer ID into the Descriptor Ring
    /// (overwriting a driver descriptor previously made available)"), in completion order,
    /// each at the device's next used position, which moves on by the list's slot count
    /// (2.8.6): one write per run of consecutive slots, straight from the shadow (a run ends at
    /// the ring end or where a longer list's skipped slots begin), the address fields as read
    /// (unused in a used descriptor, 2.8.4) and the batch's first descriptor with the flags the
    /// driver left; then that first descriptor's used flags are stored with Release after the
    /// dirty log is flushed ([`DmaEngine::publish_u16`]), so the driver, which polls in ring
    /// order (2.8.2), sees the whole batch or nothing (2.8.9, 2.8.21).
    pub fn flush_used(&mut self, dma: &mut DmaEngine) -> Result<(), DeviceFault> {
        let Some(first) = self.runs.first().copied() else {
            return Ok(());
        };
        let q = self.queue;
        let err = |fault| DeviceFault::Dma { queue: q, fault };
        for r in &self.runs {
            dma.write(
                self.desc_addr(r.pos),
                self.descs[r.at..r.at + r.count].as_flattened(),
                DmaKind::RingWrite,
            )
            .map_err(err)?;
        }
        dma.publish_u16(
            self.flags_addr(first.pos),
            self.first_flags,
            DmaKind::RingWrite,
        )
        .map_err(err)?;
        self.runs.clear();
        self.pending = 0;
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
        self.unpopped > 0
    }

    /// Hints the buffers of the fetched descriptors not popped yet (up to
    /// [`super::PREFETCH_CHAINS`] slots, from the shadow the fetch read) toward this core
    /// ([`DmaEngine::prefetch`]); an indirect descriptor's table is not followed. `pop`
    /// translates and checks every buffer as always.
    pub fn prefetch_fetched(&self, dma: &DmaEngine, write: bool) {
        if self.unpopped == 0 {
            return;
        }
        let end = self.descs.len().min(self.pop_at + super::PREFETCH_CHAINS);
        for slot in &self.descs[self.pop_at..end] {
            let d = RawDesc::parse(slot);
            if d.flags & VIRTQ_DESC_F_INDIRECT == 0 {
                super::prefetch_buffer(dma, d.addr, d.len, write);
            }
        }
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
