//! The driver side of a split virtqueue (virtio 1.2 2.7), as Linux's virtio_ring.c and DPDK's
//! virtio PMD write it: descriptors from a free list, avail entries published with a Release
//! store of avail->idx, kicks decided by avail_event (EVENT_IDX) or the used ring's NO_NOTIFY
//! flag, completions read after an Acquire load of used->idx.

use crate::flags::{
    vring_need_event, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
    USED_F_NO_NOTIFY,
};
use crate::memory::{GuestMemory, MemoryError};
use crate::DriverError;
use bar_registers::ring::DESC_SIZE;

/// Alignment of each ring area (and so the line size the layout keeps apart).
const CACHE_LINE: u64 = 64;

/// One buffer the driver posts: (IOVA, length, device-writable).
pub type Buf = (u64, u32, bool);

/// A driver-side split ring in guest memory.
#[derive(Debug)]
pub struct DriverRing {
    pub queue: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub event_idx: bool,
    /// Next avail->idx value to publish (shadow).
    pub avail_idx: u16,
    /// avail->idx at the last kick decision.
    kicked_at: u16,
    /// Next used entry the driver will consume.
    pub last_used: u16,
    /// used->idx as last read: the entries before it are the device's and need no new read
    /// (one read of the line the device keeps writing per batch, not per entry).
    used_seen: u16,
    /// Free descriptors; [`DriverRing::add`] takes a chain's from the top.
    free: Vec<u16>,
    /// The driver's own copy of each descriptor's `next` while it is in a chain (Linux
    /// virtio_ring.c keeps one in `desc_extra` too): freeing a chain never reads the ring,
    /// which is the device's to read.
    next: Vec<u16>,
    /// Descriptors in each in-flight chain, by head (0: that head is not in flight).
    chain_len: Vec<u16>,
    /// Indirect table IOVA per head (reused).
    indirect: Vec<Option<u64>>,
}

/// Bytes needed for a split ring of `size` entries: (desc, avail, used) sizes.
pub fn ring_sizes(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

impl DriverRing {
    /// Allocates the three areas in guest memory and zeroes them.
    pub fn new(
        mem: &GuestMemory,
        queue: u16,
        size: u16,
        event_idx: bool,
    ) -> Result<Self, DriverError> {
        let (d, a, u) = ring_sizes(size);
        // Each area on its own cache lines, as Linux's modern virtio-pci rings are laid out
        // (vring_create_virtqueue with SMP_CACHE_BYTES alignment): the line holding
        // used->idx, which the device writes per batch, holds nothing the driver writes.
        let desc = mem.alloc_zeroed(d, CACHE_LINE)?;
        let avail = mem.alloc_zeroed(a, CACHE_LINE)?;
        let used = mem.alloc_zeroed(u, CACHE_LINE)?;
        Ok(DriverRing {
            queue,
            size,
            desc,
            avail,
            used,
            event_idx,
            avail_idx: 0,
            kicked_at: 0,
            last_used: 0,
            used_seen: 0,
            free: (0..size).rev().collect(),
            next: vec![0; size.into()],
            chain_len: vec![0; size.into()],
            indirect: vec![None; size.into()],
        })
    }

    /// Descriptors free.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains posted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.chain_len.iter().filter(|&&n| n != 0).count()
    }

    fn write_desc(
        &self,
        mem: &GuestMemory,
        table: u64,
        i: u16,
        b: Buf,
        flags: u16,
        next: u16,
    ) -> Result<(), MemoryError> {
        // One 16-byte store: the four fields written one by one cost four bounds checks and
        // copies per descriptor.
        let flags = flags | if b.2 { DESC_F_WRITE } else { 0 };
        let d = bar_registers::ring::encode_split_desc(b.0, b.1, flags, next);
        mem.write(table + DESC_SIZE * u64::from(i), &d)
    }

    /// Adds a chain; it becomes visible to the device at the next [`DriverRing::publish`].
    /// Returns the head, or None when descriptors run out.
    pub fn add(&mut self, mem: &GuestMemory, bufs: &[Buf]) -> Result<Option<u16>, DriverError> {
        let n = bufs.len();
        if n == 0 || self.free.len() < n {
            return Ok(None);
        }
        // The chain is the top n free descriptors, the top one its head; they leave the free
        // list once every descriptor is written (an error leaves the list as it was).
        let top = self.free.len() - 1;
        for (k, &b) in bufs.iter().enumerate() {
            let id = self.free[top - k];
            if k + 1 == n {
                self.write_desc(mem, self.desc, id, b, 0, 0)?;
            } else {
                let next = self.free[top - k - 1];
                self.next[usize::from(id)] = next;
                self.write_desc(mem, self.desc, id, b, DESC_F_NEXT, next)?;
            }
        }
        let head = self.free[top];
        self.free.truncate(top + 1 - n);
        self.chain_len[usize::from(head)] = n as u16;
        self.push_avail(mem, head)?;
        Ok(Some(head))
    }

    /// Adds a chain through an indirect table (one ring descriptor, VIRTIO_F_INDIRECT_DESC).
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemory,
        bufs: &[Buf],
    ) -> Result<Option<u16>, DriverError> {
        let Some(id) = self.free.pop() else {
            return Ok(None);
        };
        let table = match self.indirect[usize::from(id)] {
            Some(t) => t,
            None => {
                let t = mem.alloc(16 * 32, 16)?;
                self.indirect[usize::from(id)] = Some(t);
                t
            }
        };
        if bufs.is_empty() || bufs.len() > 32 {
            self.free.push(id);
            return Ok(None);
        }
        for (k, &b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            self.write_desc(
                mem,
                table,
                k as u16,
                b,
                if last { 0 } else { DESC_F_NEXT },
                if last { 0 } else { k as u16 + 1 },
            )?;
        }
        self.write_desc(
            mem,
            self.desc,
            id,
            (table, 16 * bufs.len() as u32, false),
            DESC_F_INDIRECT,
            0,
        )?;
        self.chain_len[usize::from(id)] = 1;
        self.push_avail(mem, id)?;
        Ok(Some(id))
    }

    /// Hints what the next `n` single-descriptor [`DriverRing::add`]s write toward this core
    /// for writing: the descriptors at the top of the free list and the avail ring slots.
    pub fn prefetch_adds(&self, mem: &GuestMemory, n: usize) {
        for &id in self.free.iter().rev().take(n) {
            mem.prefetch_for_write(self.desc + DESC_SIZE * u64::from(id), DESC_SIZE);
        }
        mem.prefetch_ring_for_write(self.avail + 4, 2, self.size, self.avail_idx % self.size, n);
    }

    fn push_avail(&mut self, mem: &GuestMemory, head: u16) -> Result<(), MemoryError> {
        let slot = self.avail_idx % self.size;
        mem.write_u16(self.avail + 4 + 2 * u64::from(slot), head)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Makes the added chains visible (Release store of avail->idx, 2.7.13.3).
    pub fn publish(&mut self, mem: &GuestMemory) -> Result<(), DriverError> {
        mem.store_u16_release(self.avail + 2, self.avail_idx)?;
        Ok(())
    }

    /// Whether the device wants a doorbell for what was published since the last decision
    /// (2.7.10: avail_event with EVENT_IDX, else used->flags NO_NOTIFY).
    pub fn needs_kick(&mut self, mem: &GuestMemory) -> Result<bool, DriverError> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let old = self.kicked_at;
        let new = self.avail_idx;
        self.kicked_at = new;
        if new == old {
            return Ok(false);
        }
        Ok(if self.event_idx {
            let ev = mem.read_u16(self.used + 4 + 8 * u64::from(self.size))?;
            vring_need_event(ev, new, old)
        } else {
            mem.read_u16(self.used)? & USED_F_NO_NOTIFY == 0
        })
    }

    /// Sets used_event (EVENT_IDX): interrupt me when used->idx passes `idx`.
    pub fn set_used_event(&self, mem: &GuestMemory, idx: u16) -> Result<(), DriverError> {
        mem.write_u16(self.avail + 4 + 2 * u64::from(self.size), idx)?;
        Ok(())
    }

    /// Sets or clears VRING_AVAIL_F_NO_INTERRUPT.
    pub fn set_no_interrupt(&self, mem: &GuestMemory, on: bool) -> Result<(), DriverError> {
        mem.write_u16(self.avail, if on { AVAIL_F_NO_INTERRUPT } else { 0 })?;
        Ok(())
    }

    /// The head each avail ring slot holds, slot 0 first (what the driver made available there
    /// last).
    pub fn avail_heads(&self, mem: &GuestMemory) -> Result<Vec<u16>, DriverError> {
        (0..u64::from(self.size))
            .map(|slot| Ok(mem.read_u16(self.avail + 4 + 2 * slot)?))
            .collect()
    }

    /// The device's used->idx (Acquire).
    pub fn used_idx(&self, mem: &GuestMemory) -> Result<u16, DriverError> {
        Ok(mem.read_u16(self.used + 2)?)
    }

    /// Takes the next completion: (head, len). Frees its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMemory) -> Result<Option<(u16, u32)>, DriverError> {
        if self.used_seen == self.last_used {
            self.used_seen = self.used_idx(mem)?;
            if self.used_seen == self.last_used {
                return Ok(None);
            }
        }
        let slot = self.last_used % self.size;
        // struct vring_used_elem {id, len} in one read, ordered after the Acquire load of
        // used->idx that published it.
        let mut e = [0u8; 8];
        mem.read(self.used + 4 + 8 * u64::from(slot), &mut e)?;
        let (id, len) = bar_registers::ring::decode_used_elem(e);
        let in_flight = u16::try_from(id)
            .ok()
            .and_then(|h| Some((h, *self.chain_len.get(usize::from(h))?)))
            .filter(|&(_, n)| n != 0);
        let Some((head, n)) = in_flight else {
            return Err(DriverError::BadUsed {
                queue: self.queue,
                id,
            });
        };
        self.last_used = self.last_used.wrapping_add(1);
        self.chain_len[usize::from(head)] = 0;
        let mut id = head;
        for k in 1..=n {
            self.free.push(id);
            if k < n {
                id = self.next[usize::from(id)];
            }
        }
        Ok(Some((head, len)))
    }

    /// Heads of the chains in flight (made available, not yet used).
    pub fn in_flight_heads(&self) -> Vec<u16> {
        (0..self.size)
            .filter(|&h| self.chain_len[usize::from(h)] != 0)
            .collect()
    }

    /// Resets the driver state to match a device resuming at `idx` for both avail and used,
    /// keeping the ring memory (used after a migration restore on a fresh driver).
    pub fn resync(&mut self, avail_idx: u16, last_used: u16) {
        self.avail_idx = avail_idx;
        self.kicked_at = avail_idx;
        self.last_used = last_used;
        self.used_seen = last_used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bar_registers::ring::{decode_split_desc, encode_used_elem, USED_IDX, USED_RING};

    fn mem() -> GuestMemory {
        GuestMemory::new(0x10_0000, 1 << 20).expect("memfd")
    }

    /// What a device does: completes `head` (used element, then used->idx).
    fn complete(mem: &GuestMemory, r: &DriverRing, at: u16, head: u16) {
        let slot = u64::from(at % r.size);
        mem.write(
            r.used + USED_RING + 8 * slot,
            &encode_used_elem(head.into(), 0),
        )
        .unwrap();
        mem.write_u16(r.used + USED_IDX, at.wrapping_add(1))
            .unwrap();
    }

    /// The descriptors of a chain as the device would walk them from `head`.
    fn walk(mem: &GuestMemory, r: &DriverRing, head: u16) -> Vec<u16> {
        let mut ids = vec![head];
        loop {
            let mut d = [0u8; 16];
            mem.read(r.desc + 16 * u64::from(*ids.last().unwrap()), &mut d)
                .unwrap();
            let (_, _, flags, next) = decode_split_desc(&d);
            if flags & DESC_F_NEXT == 0 {
                return ids;
            }
            ids.push(next);
        }
    }

    /// Chains of 1-3 descriptors completed out of order give back exactly their descriptors:
    /// the ring never runs short or hands out a descriptor twice, and every chain the device
    /// walks is the one the driver wrote.
    #[test]
    fn chains_completed_out_of_order_free_exactly_their_descriptors() {
        let m = mem();
        let mut r = DriverRing::new(&m, 0, 8, false).unwrap();
        let b = |n: usize| vec![(0x10_8000u64, 64u32, false); n];
        let mut used_at = 0u16;
        for round in 0..50usize {
            let mut heads = Vec::new();
            while let Some(h) = r.add(&m, &b(1 + (round + heads.len()) % 3)).unwrap() {
                heads.push(h);
            }
            assert!(r.free_descriptors() < 3, "round {round}: ring filled");
            let mut seen: Vec<u16> = heads.iter().flat_map(|&h| walk(&m, &r, h)).collect();
            assert_eq!(r.in_flight(), heads.len());
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(
                seen.len() + r.free_descriptors(),
                8,
                "a descriptor used twice"
            );
            heads.reverse();
            for &h in &heads {
                complete(&m, &r, used_at, h);
                used_at = used_at.wrapping_add(1);
                assert_eq!(r.pop_used(&m).unwrap(), Some((h, 0)));
            }
            assert_eq!((r.free_descriptors(), r.in_flight()), (8, 0));
        }
    }

    /// Prefetching the next adds writes nothing, whatever `n` (past the free list, past the
    /// ring's end, at the avail ring's wrap), and what follows adds as without it.
    #[test]
    fn prefetching_adds_changes_nothing() {
        let m = mem();
        let mut r = DriverRing::new(&m, 0, 8, false).unwrap();
        for _ in 0..6 {
            r.add(&m, &[(0x10_8000, 64, false)]).unwrap().unwrap();
        }
        let before = m.shm().snapshot();
        for n in [0, 1, 2, 3, 8, 9, 1000] {
            r.prefetch_adds(&m, n);
        }
        m.prefetch_for_write(0, 64);
        m.prefetch_for_write(0x10_0000 + (1 << 20) - 8, 64);
        assert!(m.shm().snapshot() == before, "a prefetch wrote");
        assert!(r.add(&m, &[(0x10_8000, 64, false)]).unwrap().is_some());
    }

    /// A used id that is not an in-flight head (never posted, already completed, or past the
    /// ring) is the device's bug, reported as such.
    #[test]
    fn a_used_id_not_in_flight_is_refused() {
        let m = mem();
        let mut r = DriverRing::new(&m, 3, 8, false).unwrap();
        let h = r.add(&m, &[(0x10_8000, 64, false); 2]).unwrap().unwrap();
        complete(&m, &r, 0, h);
        assert_eq!(r.pop_used(&m).unwrap(), Some((h, 0)));
        for (at, id) in [(1u16, u32::from(h)), (2, 9), (3, 0x1_0000)] {
            let slot = u64::from(at % r.size);
            m.write(r.used + USED_RING + 8 * slot, &encode_used_elem(id, 0))
                .unwrap();
            m.write_u16(r.used + USED_IDX, at + 1).unwrap();
            r.last_used = at;
            r.used_seen = at;
            assert!(
                matches!(r.pop_used(&m), Err(DriverError::BadUsed { queue: 3, id: i }) if i == id),
                "id {id}"
            );
        }
    }
}
