//! The driver side of a packed virtqueue (virtio 1.2 2.8), as Linux's virtio_ring.c
//! (virtqueue_add_packed, detach_buf_packed, virtqueue_get_buf_ctx_packed,
//! virtqueue_kick_prepare_packed) and the spec's 2.8.21-2.8.22 examples write it:
//!
//! - buffer ids from a free list, independent of ring slots; each id remembers how many slots
//!   its list took, so completions may come back in any order (2.8.6: "The driver needs to keep
//!   track of the size of the list corresponding to each buffer ID, to be able to skip to where
//!   the next used descriptor is written by the device");
//! - 2.8.21.1: every descriptor is written, then its flags; the first descriptor's flags are
//!   written last ("Don't mark the 1st descriptor available until all of them are ready"). Here
//!   the first descriptors' flags are held back until [`PackedDriverRing::publish`], which stores
//!   them with Release, last list first, so a publish exposes a whole batch at once (like a split
//!   ring's avail->idx store);
//! - the Driver Ring Wrap Counter and the used wrap counter start at 1 and toggle at the ring end
//!   (2.8.1);
//! - kicks follow the device event suppression structure (2.8.10): DISABLE, ENABLE, or with
//!   EVENT_IDX a DESC event at off_wrap (compared the Linux way: the event offset moved back a
//!   ring when its wrap counter is not the driver's);
//! - used buffer notifications: with EVENT_IDX the driver event structure holds DESC with
//!   off_wrap = the next used slot it waits for (rewritten after each completion, as Linux
//!   does); without, ENABLE/DISABLE.

use crate::flags::{
    vring_need_event, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, PACKED_DESC_F_AVAIL,
    PACKED_DESC_F_USED, PACKED_EVENT_FLAGS_MASK, PACKED_EVENT_FLAG_DESC, PACKED_EVENT_FLAG_DISABLE,
    PACKED_EVENT_FLAG_ENABLE, PACKED_EVENT_F_WRAP_CTR,
};
use crate::memory::{GuestMemory, MemoryError};
use crate::ring::Buf;
use crate::DriverError;
use bar_registers::ring::{encode_packed_desc, PACKED_DESC_FLAGS};
use std::sync::atomic::{fence, Ordering};

/// Entries of each per-id indirect table.
pub const INDIRECT_ENTRIES: usize = 32;

/// A driver-side packed ring in guest memory.
#[derive(Debug)]
pub struct PackedDriverRing {
    pub queue: u16,
    pub size: u16,
    /// Descriptor ring (queue_desc).
    pub desc: u64,
    /// Driver event suppression structure (queue_driver): written by the driver.
    pub driver: u64,
    /// Device event suppression structure (queue_device): written by the device.
    pub device: u64,
    pub event_idx: bool,
    /// Next slot to fill and the Driver Ring Wrap Counter.
    pub next_avail: u16,
    pub avail_wrap: bool,
    /// Next slot to poll for a used descriptor and the used wrap counter.
    pub next_used: u16,
    pub used_wrap: bool,
    num_free: u16,
    free_ids: Vec<u16>,
    /// Slots taken by each in-flight buffer id (0: free).
    slots: Vec<u16>,
    indirect: Vec<Option<u64>>,
    /// First descriptors written but not made available yet: (slot, flags, slots of the list).
    unpublished: Vec<(u16, u16, u16)>,
    /// Slots made available since the last kick decision.
    added: u16,
    /// Last value written to the driver event flags.
    event_flags: u16,
}

/// Bytes of a packed ring of `size` entries: (descriptor ring, driver area, device area).
pub fn packed_ring_sizes(size: u16) -> (u64, u64, u64) {
    (16 * u64::from(size), 4, 4)
}

/// `offset | wrap << 15` (2.8.10 `le16 desc_event_off : 15; desc_event_wrap : 1`).
pub fn off_wrap(pos: u16, wrap: bool) -> u16 {
    pos | if wrap { PACKED_EVENT_F_WRAP_CTR } else { 0 }
}

fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        PACKED_DESC_F_AVAIL
    } else {
        PACKED_DESC_F_USED
    }
}

fn used_bits(wrap: bool) -> u16 {
    if wrap {
        PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED
    } else {
        0
    }
}

impl PackedDriverRing {
    /// Allocates the descriptor ring and the two event structures, zeroed (2.8.13: "The
    /// descriptor ring is zero-initialized"); with EVENT_IDX asks for an interrupt at the first
    /// used descriptor (DESC, off_wrap 0 | 1 << 15).
    pub fn new(
        mem: &GuestMemory,
        queue: u16,
        size: u16,
        event_idx: bool,
    ) -> Result<Self, DriverError> {
        if size == 0 || size > 32768 {
            return Err(DriverError::Usage(format!(
                "packed queue size {size} not in 1..=32768"
            )));
        }
        let (d, a, u) = packed_ring_sizes(size);
        let desc = mem.alloc_zeroed(d, 16)?;
        let driver = mem.alloc_zeroed(a, 4)?;
        let device = mem.alloc_zeroed(u, 4)?;
        let mut r = PackedDriverRing {
            queue,
            size,
            desc,
            driver,
            device,
            event_idx,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            num_free: size,
            free_ids: (0..size).rev().collect(),
            slots: vec![0; size.into()],
            indirect: vec![None; size.into()],
            unpublished: Vec::new(),
            added: 0,
            event_flags: PACKED_EVENT_FLAG_ENABLE,
        };
        if event_idx {
            r.set_used_event(mem, off_wrap(0, true))?;
        }
        Ok(r)
    }

    /// Puts both sides at `offset | wrap << 15` as if the ring had run there before: slots at
    /// and after the offset hold the previous lap's used descriptors, slots before it this lap's
    /// (so neither side mistakes them for new ones). The caller writes the same value into the
    /// LM ring state before queue_enable.
    pub fn start_at(&mut self, mem: &GuestMemory, at: u16) -> Result<(), DriverError> {
        let (pos, wrap) = (
            at & !PACKED_EVENT_F_WRAP_CTR,
            at & PACKED_EVENT_F_WRAP_CTR != 0,
        );
        if pos >= self.size || self.num_free != self.size {
            return Err(DriverError::Usage(format!(
                "packed start index {at:#x} on queue {}",
                self.queue
            )));
        }
        for i in 0..self.size {
            let f = if i >= pos {
                used_bits(!wrap)
            } else {
                used_bits(wrap)
            };
            mem.write_u16(self.desc + 16 * u64::from(i) + 14, f)?;
        }
        (
            self.next_avail,
            self.avail_wrap,
            self.next_used,
            self.used_wrap,
        ) = (pos, wrap, pos, wrap);
        if self.event_idx {
            self.set_used_event(mem, at)?;
        }
        Ok(())
    }

    /// Descriptor slots free.
    pub fn free_descriptors(&self) -> usize {
        self.num_free.into()
    }

    /// Buffers made available (or written) and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|&&n| n != 0).count()
    }

    /// Ids of the buffers in flight.
    pub fn in_flight_ids(&self) -> Vec<u16> {
        (0..self.size).filter(|&id| self.is_in_flight(id)).collect()
    }

    /// Whether buffer `id` is in flight.
    pub fn is_in_flight(&self, id: u16) -> bool {
        self.slots.get(usize::from(id)).is_some_and(|&n| n != 0)
    }

    fn step(&mut self) {
        self.next_avail += 1;
        if self.next_avail == self.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
    }

    /// Writes a descriptor in one store: its body only (`flags: None`, a list's first
    /// descriptor, whose flags [`PackedDriverRing::publish`] stores last) or all 16 bytes.
    fn write_desc(
        &self,
        mem: &GuestMemory,
        at: u64,
        b: Buf,
        id: u16,
        flags: Option<u16>,
    ) -> Result<(), MemoryError> {
        let d = encode_packed_desc(b.0, b.1, id, flags.unwrap_or(0));
        let n = if flags.is_some() {
            d.len()
        } else {
            PACKED_DESC_FLAGS as usize
        };
        mem.write(at, &d[..n])
    }

    /// Hints the next `n` descriptor slots (what `n` single-descriptor adds write) toward
    /// this core for writing.
    pub fn prefetch_adds(&self, mem: &GuestMemory, n: usize) {
        mem.prefetch_ring_for_write(self.desc, 16, self.size, self.next_avail, n);
    }

    /// Writes a list into the ring (2.8.21.1); it becomes available to the device at the next
    /// [`PackedDriverRing::publish`]. Returns the buffer id, or None when slots or ids run out.
    pub fn add(&mut self, mem: &GuestMemory, bufs: &[Buf]) -> Result<Option<u16>, DriverError> {
        // 2.8.17: "A driver MUST NOT create a descriptor list longer than the Queue Size."
        if bufs.is_empty() || usize::from(self.num_free) < bufs.len() {
            return Ok(None);
        }
        let Some(id) = self.free_ids.pop() else {
            return Ok(None);
        };
        let head = self.next_avail;
        let mut head_flags = 0;
        for (k, &b) in bufs.iter().enumerate() {
            let at = self.desc + 16 * u64::from(self.next_avail);
            let mut flags = avail_bits(self.avail_wrap) | if b.2 { DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            // The id goes into every descriptor (Linux does; 2.8.6 needs it in the last one).
            if k == 0 {
                self.write_desc(mem, at, b, id, None)?;
                head_flags = flags;
            } else {
                self.write_desc(mem, at, b, id, Some(flags))?;
            }
            self.step();
        }
        let n = bufs.len() as u16;
        self.num_free -= n;
        self.slots[usize::from(id)] = n;
        self.unpublished.push((head, head_flags, n));
        Ok(Some(id))
    }

    /// Adds a list as one ring slot pointing at an indirect table of packed descriptors (2.8.7:
    /// only DESC_F_WRITE is meaningful in the table).
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemory,
        bufs: &[Buf],
    ) -> Result<Option<u16>, DriverError> {
        if bufs.is_empty() || bufs.len() > INDIRECT_ENTRIES || self.num_free == 0 {
            return Ok(None);
        }
        let Some(id) = self.free_ids.pop() else {
            return Ok(None);
        };
        let table = match self.indirect[usize::from(id)] {
            Some(t) => t,
            None => {
                let t = mem.alloc(16 * INDIRECT_ENTRIES as u64, 16)?;
                self.indirect[usize::from(id)] = Some(t);
                t
            }
        };
        for (k, &b) in bufs.iter().enumerate() {
            let at = table + 16 * k as u64;
            self.write_desc(mem, at, b, 0, Some(if b.2 { DESC_F_WRITE } else { 0 }))?;
        }
        let head = self.next_avail;
        let at = self.desc + 16 * u64::from(head);
        self.write_desc(mem, at, (table, 16 * bufs.len() as u32, false), id, None)?;
        let flags = avail_bits(self.avail_wrap) | DESC_F_INDIRECT;
        self.step();
        self.num_free -= 1;
        self.slots[usize::from(id)] = 1;
        self.unpublished.push((head, flags, 1));
        Ok(Some(id))
    }

    /// Makes the lists added since the last publish available: their first descriptors' flags
    /// stored with Release, the last list first, so the device sees all of them or none.
    pub fn publish(&mut self, mem: &GuestMemory) -> Result<(), DriverError> {
        while let Some((slot, flags, n)) = self.unpublished.pop() {
            mem.store_u16_release(self.desc + 16 * u64::from(slot) + 14, flags)?;
            self.added = self.added.wrapping_add(n);
        }
        Ok(())
    }

    /// Whether the device wants an available buffer notification for what was published since
    /// the last decision (2.8.10, device event suppression; virtqueue_kick_prepare_packed).
    pub fn needs_kick(&mut self, mem: &GuestMemory) -> Result<bool, DriverError> {
        // 2.8.21.2: "The driver MUST perform a suitable memory barrier before reading the Event
        // Suppression structure occupying the Device Area."
        fence(Ordering::SeqCst);
        let added = std::mem::take(&mut self.added);
        if added == 0 {
            return Ok(false);
        }
        let v = mem.read_u32(self.device)?;
        let (ev, flags) = (v as u16, (v >> 16) as u16 & PACKED_EVENT_FLAGS_MASK);
        if flags != PACKED_EVENT_FLAG_DESC {
            return Ok(flags != PACKED_EVENT_FLAG_DISABLE);
        }
        let new = self.next_avail;
        let old = new.wrapping_sub(added);
        let mut event = ev & !PACKED_EVENT_F_WRAP_CTR;
        if (ev & PACKED_EVENT_F_WRAP_CTR != 0) != self.avail_wrap {
            event = event.wrapping_sub(self.size);
        }
        Ok(vring_need_event(event, new, old))
    }

    /// Used buffer notifications at a descriptor: driver event off_wrap = `at`, flags DESC (the
    /// offset first, then the flags, as virtqueue_enable_cb_prepare_packed orders them).
    pub fn set_used_event(&mut self, mem: &GuestMemory, at: u16) -> Result<(), DriverError> {
        mem.write_u16(self.driver, at)?;
        fence(Ordering::Release);
        if self.event_flags != PACKED_EVENT_FLAG_DESC {
            self.set_event_flags(mem, PACKED_EVENT_FLAG_DESC)?;
        }
        Ok(())
    }

    /// Writes the driver event flags (ENABLE, DISABLE, DESC; anything for hostile tests).
    pub fn set_event_flags(&mut self, mem: &GuestMemory, flags: u16) -> Result<(), DriverError> {
        self.event_flags = flags;
        mem.store_u16_release(self.driver + 2, flags)?;
        Ok(())
    }

    /// Turns used buffer notifications off (DISABLE) or on (DESC at the next used slot with
    /// EVENT_IDX, ENABLE without).
    pub fn set_interrupts(&mut self, mem: &GuestMemory, on: bool) -> Result<(), DriverError> {
        match (on, self.event_idx) {
            (false, _) => self.set_event_flags(mem, PACKED_EVENT_FLAG_DISABLE),
            (true, true) => {
                self.event_flags = PACKED_EVENT_FLAG_DISABLE;
                self.set_used_event(mem, off_wrap(self.next_used, self.used_wrap))
            }
            (true, false) => self.set_event_flags(mem, PACKED_EVENT_FLAG_ENABLE),
        }
    }

    /// The driver's next used slot as off_wrap (the packed counterpart of a split ring's
    /// last_used index).
    pub fn used_off_wrap(&self) -> u16 {
        off_wrap(self.next_used, self.used_wrap)
    }

    /// The next used slot `n` slots on (for a DESC event further ahead).
    pub fn used_off_wrap_plus(&self, n: u16) -> u16 {
        let p = u32::from(self.next_used) + u32::from(n);
        let laps = p / u32::from(self.size);
        off_wrap(
            (p % u32::from(self.size)) as u16,
            self.used_wrap ^ (laps % 2 == 1),
        )
    }

    /// Whether a used descriptor is waiting at the next used slot.
    pub fn has_used(&self, mem: &GuestMemory) -> Result<bool, DriverError> {
        let flags = mem.read_u16(self.desc + 16 * u64::from(self.next_used) + 14)?;
        Ok((flags & PACKED_DESC_F_AVAIL != 0) == self.used_wrap
            && (flags & PACKED_DESC_F_USED != 0) == self.used_wrap)
    }

    /// Takes the next completion: (buffer id, bytes written). The id may be any in-flight one
    /// (out-of-order completion); its slots are skipped and it goes back to the free list.
    pub fn pop_used(&mut self, mem: &GuestMemory) -> Result<Option<(u16, u32)>, DriverError> {
        let at = self.desc + 16 * u64::from(self.next_used);
        // Acquire: the descriptor's id and len are read after its flags said "used".
        let flags = mem.read_u16(at + 14)?;
        if (flags & PACKED_DESC_F_AVAIL != 0) != self.used_wrap
            || (flags & PACKED_DESC_F_USED != 0) != self.used_wrap
        {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let id = mem.read_u16(at + 12)?;
        // 2.8.4: "Element Length is reserved for used descriptors without the
        // DESC_F_WRITE flag, and is ignored by drivers."
        let len = if flags & DESC_F_WRITE != 0 {
            mem.read_u32(at + 8)?
        } else {
            0
        };
        let n = self.slots.get(usize::from(id)).copied().unwrap_or(0);
        if n == 0 {
            return Err(DriverError::BadUsed {
                queue: self.queue,
                id: id.into(),
            });
        }
        self.slots[usize::from(id)] = 0;
        self.free_ids.push(id);
        self.num_free += n;
        let p = u32::from(self.next_used) + u32::from(n);
        if p >= u32::from(self.size) {
            self.next_used = (p - u32::from(self.size)) as u16;
            self.used_wrap = !self.used_wrap;
        } else {
            self.next_used = p as u16;
        }
        if self.event_flags == PACKED_EVENT_FLAG_DESC {
            // Interrupt me at the next used descriptor (virtqueue_get_buf_ctx_packed).
            mem.write_u16(self.driver, self.used_off_wrap())?;
            fence(Ordering::SeqCst);
        }
        Ok(Some((id, len)))
    }

    /// Where the device's used descriptors end, without consuming them: from the next used slot,
    /// skip each used descriptor's list (by its id's slot count) until a slot that is not used;
    /// returns that slot as off_wrap (for a stopped queue: what the LM last_used_idx must say).
    pub fn used_end(&self, mem: &GuestMemory) -> Result<u16, DriverError> {
        let (mut pos, mut wrap) = (self.next_used, self.used_wrap);
        for _ in 0..self.size {
            let at = self.desc + 16 * u64::from(pos);
            let flags = mem.read_u16(at + 14)?;
            if (flags & PACKED_DESC_F_AVAIL != 0) != wrap
                || (flags & PACKED_DESC_F_USED != 0) != wrap
            {
                break;
            }
            let id = mem.read_u16(at + 12)?;
            let n = self.slots.get(usize::from(id)).copied().unwrap_or(0);
            if n == 0 {
                return Err(DriverError::BadUsed {
                    queue: self.queue,
                    id: id.into(),
                });
            }
            let p = u32::from(pos) + u32::from(n);
            if p >= u32::from(self.size) {
                pos = (p - u32::from(self.size)) as u16;
                wrap = !wrap;
            } else {
                pos = p as u16;
            }
        }
        Ok(off_wrap(pos, wrap))
    }

    /// IOVA ranges the device writes: the descriptor ring (used descriptors) and the device
    /// event suppression structure.
    pub fn device_written(&self) -> [(u64, u64); 2] {
        let (d, _, u) = packed_ring_sizes(self.size);
        [(self.desc, d), (self.device, u)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::new(0x10_0000, 1 << 20).expect("memfd")
    }

    /// Plays the device: marks the buffer `id` used at the driver's expectations of slot `at`.
    fn device_use(m: &GuestMemory, r: &PackedDriverRing, at: u16, wrap: bool, id: u16, len: u32) {
        let d = r.desc + 16 * u64::from(at);
        m.write_u32(d + 8, len).unwrap();
        m.write_u16(d + 12, id).unwrap();
        m.store_u16_release(
            d + 14,
            used_bits(wrap) | if len > 0 { DESC_F_WRITE } else { 0 },
        )
        .unwrap();
    }

    /// Prefetching the next adds writes nothing, across the ring's end and for more slots
    /// than the ring has.
    #[test]
    fn prefetching_adds_changes_nothing() {
        let m = mem();
        let mut r = PackedDriverRing::new(&m, 0, 5, false).unwrap();
        for _ in 0..3 {
            r.add(&m, &[(0x10_8000, 64, false)]).unwrap().unwrap();
        }
        let before = m.shm().snapshot();
        for n in [0, 1, 2, 3, 5, 6, 1000] {
            r.prefetch_adds(&m, n);
        }
        assert!(m.shm().snapshot() == before, "a prefetch wrote");
    }

    #[test]
    fn out_of_order_completion_and_wrap() {
        let m = mem();
        let mut r = PackedDriverRing::new(&m, 0, 5, false).unwrap();
        let a = r
            .add(&m, &[(0x1000, 10, false), (0x2000, 10, false)])
            .unwrap()
            .unwrap();
        let b = r.add(&m, &[(0x3000, 10, true)]).unwrap().unwrap();
        let c = r
            .add(&m, &[(0x4000, 10, false), (0x5000, 20, true)])
            .unwrap()
            .unwrap();
        assert_eq!(r.free_descriptors(), 0);
        assert_eq!(r.add(&m, &[(0x6000, 1, false)]).unwrap(), None, "ring full");
        // Nothing is visible before publish: the first slot's flags are still 0.
        assert_eq!(m.read_u16(r.desc + 14).unwrap(), 0);
        r.publish(&m).unwrap();
        assert_eq!(
            m.read_u16(r.desc + 14).unwrap(),
            PACKED_DESC_F_AVAIL | DESC_F_NEXT
        );
        assert!(!r.avail_wrap, "5 slots used: wrapped");
        // The device completes c first (slots 0-1), then a (slots 2-3), then b (slot 4).
        device_use(&m, &r, 0, true, c, 20);
        device_use(&m, &r, 2, true, a, 0);
        device_use(&m, &r, 4, true, b, 7);
        assert_eq!(r.pop_used(&m).unwrap(), Some((c, 20)));
        assert_eq!(r.next_used, 2);
        assert_eq!(r.pop_used(&m).unwrap(), Some((a, 0)));
        assert_eq!(r.pop_used(&m).unwrap(), Some((b, 7)));
        assert_eq!((r.next_used, r.used_wrap), (0, false));
        assert_eq!(r.pop_used(&m).unwrap(), None);
        assert_eq!(r.in_flight(), 0);
        // Second lap: available flags carry wrap 0 (USED set, AVAIL clear).
        let d = r.add(&m, &[(0x7000, 4, false)]).unwrap().unwrap();
        r.publish(&m).unwrap();
        assert_eq!(m.read_u16(r.desc + 14).unwrap(), PACKED_DESC_F_USED);
        device_use(&m, &r, 0, false, d, 0);
        assert_eq!(r.pop_used(&m).unwrap(), Some((d, 0)));
        // A used descriptor naming an id that is not in flight is the device's bug.
        device_use(&m, &r, 1, false, d, 0);
        assert!(matches!(r.pop_used(&m), Err(DriverError::BadUsed { .. })));
    }

    #[test]
    fn kick_decision_follows_device_event() {
        let m = mem();
        let mut r = PackedDriverRing::new(&m, 0, 8, true).unwrap();
        for _ in 0..6 {
            r.add(&m, &[(0x1000, 1, false)]).unwrap();
        }
        r.publish(&m).unwrap();
        assert!(r.needs_kick(&m).unwrap(), "ENABLE (zeroed device area)");
        // DESC at slot 7 of lap 1: not reached by slots 6..7.
        m.write_u32(
            r.device,
            u32::from(off_wrap(7, true)) | (u32::from(PACKED_EVENT_FLAG_DESC) << 16),
        )
        .unwrap();
        r.add(&m, &[(0x1000, 1, false)]).unwrap();
        r.publish(&m).unwrap();
        assert!(!r.needs_kick(&m).unwrap());
        r.add(&m, &[(0x1000, 1, false)]).unwrap();
        r.publish(&m).unwrap();
        assert!(r.needs_kick(&m).unwrap(), "slot 7 made available");
        m.write_u32(r.device, u32::from(PACKED_EVENT_FLAG_DISABLE) << 16)
            .unwrap();
        assert!(!r.needs_kick(&m).unwrap(), "nothing new");
    }
}
