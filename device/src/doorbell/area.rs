//! [`NotifyArea`]: the notify window of BAR0 as shared memory, one doorbell slot per queue.
//!
//! # The slot protocol
//!
//! Each queue's doorbell (`notify + q * notify_off_multiplier`, the address the drivers compute
//! from the notify capability) is a 4-byte slot. At rest it holds [`IDLE`] (`0xFFFF_FFFF`). A
//! driver's kick is an ordinary store of the queue index there (16-bit in Linux `vp_notify` /
//! `ifcvf_notify_queue`, DPDK `ifcvf_notify_queue`), so a kicked slot never reads [`IDLE`].
//! With VIRTIO_F_NOTIFICATION_DATA negotiated the store is 32 bits (Linux
//! `vp_notify_with_data`, DPDK `modern_notify_queue`; virtio 1.2 2.9): vqn in bits 0-15, the
//! driver's next avail position in bits 16-31. It never equals [`IDLE`] either, since that would
//! take vqn 0xFFFF, a queue no device has. The engine hands the consumed value to the device
//! ([`NotifyArea::take_value`]), which checks that its vqn names the slot's queue (a mismatch is
//! a counted bad doorbell that services nothing) and uses the position as a hint only. The
//! doorbell
//! engine *consumes* a kick: it swaps [`IDLE`] back in and services the queue only after
//! that swap. A poller that looked for a changed value instead could not see two equal kicks
//! in a row (the second writes the same bytes); consuming turns every kick into a change.
//!
//! Why no kick is lost (the order "swap, then service" is the whole argument):
//!
//! 1. The driver publishes its buffers (avail ring entries and `avail->idx`, or a packed
//!    descriptor's flags) and only then stores the kick, with a write barrier in between
//!    (virtio 1.2 2.7.13 step 4 and 2.8.21.1: "the driver MUST perform a suitable memory
//!    barrier before" notifying; Linux `virtqueue_kick_prepare` issues `virtio_mb`, DPDK
//!    `rte_io_wmb`). Under QEMU's TCG the guest's stores are the vCPU thread's host stores to
//!    the same pages; an x86 guest on an x86 host keeps its store order (TSO), and the guest's
//!    fences become host fences.
//! 2. The engine's swap is an atomic read-modify-write with Acquire/Release ordering on the
//!    slot. If it returns a kick, every store the kicking CPU made before that kick (its
//!    publication) is visible to the engine afterwards, so the service that follows the swap
//!    sees the buffers the kick announced.
//! 3. A kick stored after the swap stays in the slot (it is not [`IDLE`]) and is found by the
//!    next pass, which the engine makes at once after any pass that found a kick, or after its
//!    current sleep otherwise; that later swap is again case 2. A kick stored while the service
//!    runs is therefore either processed by this service (if its buffers were already visible)
//!    or by the next one: never dropped.
//! 4. Servicing first and clearing afterwards would lose exactly the kick stored between the
//!    service's last read of the ring and the clear: the slot would be wiped, the buffers left
//!    unprocessed, and a driver that saw no reason to kick again would wait forever.
//!
//! Several kicks between two passes collapse into one service (it processes everything
//! available), as a hardware doorbell coalesces; the per-queue `doorbells` counter then
//! counts consumed kicks, not stores. A store of exactly the idle pattern (a 16-bit `0xFFFF`
//! or 32-bit `0xFFFF_FFFF`) is not seen: no queue has that index. Accesses the trapped path
//! refuses as bad widths (1 or 8 bytes) are, in shared memory, just stores: any change of a
//! slot is a kick of its queue. The rest of the notify pages is plain memory nobody reads.
//!
//! Device reset clears every slot ([`NotifyArea::clear`], under the device lock), so a kick
//! left over from before the reset is not delivered to the reset device.

use bar_registers::DeviceLayout;
use dma::{SharedMemory, ShmError};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

/// What an unkicked doorbell slot holds.
pub const IDLE: u32 = 0xFFFF_FFFF;

/// Page size of the areas handed out for mmap (vfio sparse mmap areas must be page-aligned).
pub const PAGE: u64 = 4096;

/// BAR0's notify window in shared memory.
///
/// The memfd covers the whole of BAR0 so that a file offset is a BAR offset (the vfio region
/// offset is 0); only [`NotifyArea::mmap_area`] is ever handed out or touched. Pages outside it
/// are never written and so never allocated.
pub struct NotifyArea {
    mem: SharedMemory,
    /// BAR0 offset of each queue's slot.
    slots: Vec<u64>,
    /// The page-aligned window handed out: (BAR0 offset, length).
    area: (u64, u64),
    /// Device activity (frames moved, interrupts raised, received frames waiting for
    /// buffers): bumped by the device, watched by the engine's poll policy.
    activity: AtomicU64,
    /// The engine is in a sleep that activity should end ([`super::poll::DEEP_SLEEP`]).
    deep: AtomicBool,
    /// The engine thread, to unpark.
    waiter: OnceLock<Thread>,
}

impl std::fmt::Debug for NotifyArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyArea")
            .field("queues", &self.slots.len())
            .field(
                "area",
                &format_args!("{:#x}+{:#x}", self.area.0, self.area.1),
            )
            .finish()
    }
}

/// Why a notify area cannot be made for a layout.
#[derive(Debug, thiserror::Error)]
pub enum NotifyAreaError {
    /// The notify window does not start on a page boundary: it cannot be mapped alone.
    #[error("the notify window at BAR{bar} {offset:#x} is not page-aligned")]
    Unaligned { bar: u8, offset: u64 },
    /// The page-rounded window would overlap other registers at the end of its BAR.
    #[error(
        "the notify window's pages ({offset:#x}+{len:#x}) do not fit BAR{bar} ({size:#x} bytes)"
    )]
    DoesNotFit {
        bar: u8,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// A doorbell slot is not 4-byte aligned.
    #[error("doorbell of queue {queue} at {offset:#x} is not 4-byte aligned")]
    SlotAlignment { queue: u16, offset: u64 },
    /// Creating or mapping the memfd failed.
    #[error("shared memory for the notify window: {0}")]
    Io(#[from] std::io::Error),
    /// A slot access outside the memory (a layout bug).
    #[error(transparent)]
    Shm(#[from] ShmError),
}

impl NotifyArea {
    /// The notify window of `layout` in a new memfd, every slot [`IDLE`].
    pub fn new(layout: &DeviceLayout) -> Result<Self, NotifyAreaError> {
        let w = layout.notify;
        if !w.offset.is_multiple_of(PAGE) {
            return Err(NotifyAreaError::Unaligned {
                bar: w.bar,
                offset: w.offset,
            });
        }
        let len = w.len.next_multiple_of(PAGE);
        let size = layout.bar_size(w.bar);
        if w.offset + len > size {
            return Err(NotifyAreaError::DoesNotFit {
                bar: w.bar,
                offset: w.offset,
                len,
                size,
            });
        }
        let slots: Vec<u64> = (0..layout.num_queues)
            .map(|q| layout.doorbell_offset(q))
            .collect();
        if let Some((q, &offset)) = slots.iter().enumerate().find(|(_, o)| !o.is_multiple_of(4)) {
            return Err(NotifyAreaError::SlotAlignment {
                queue: q as u16,
                offset,
            });
        }
        let area = NotifyArea {
            mem: SharedMemory::new("vdpa-emu-notify", size)?,
            slots,
            area: (w.offset, len),
            activity: AtomicU64::new(0),
            deep: AtomicBool::new(false),
            waiter: OnceLock::new(),
        };
        area.clear();
        Ok(area)
    }

    /// The window to hand out for mmap: (BAR0 offset, length), both page multiples.
    pub fn mmap_area(&self) -> (u64, u64) {
        self.area
    }

    /// The memfd (file offset = BAR0 offset).
    pub fn file(&self) -> &File {
        self.mem.file()
    }

    /// Number of slots (queues).
    pub fn queues(&self) -> u16 {
        self.slots.len() as u16
    }

    /// Consumes queue `q`'s kick: true if one was there (the slot is [`IDLE`] again). Callers
    /// service the queue after this returns true, never before (see the module doc).
    pub fn take(&self, q: u16) -> bool {
        self.take_value(q).is_some()
    }

    /// [`NotifyArea::take`], returning what the kick left in the slot: the 32-bit notification
    /// data (VIRTIO_F_NOTIFICATION_DATA), or a narrower store over [`IDLE`]'s other bytes.
    pub fn take_value(&self, q: u16) -> Option<u32> {
        let &off = self.slots.get(usize::from(q))?;
        // A plain load first: an idle slot costs a shared cache-line read, and the line is not
        // taken exclusive (away from the driver's CPU) unless there is a kick to consume.
        match self.mem.read_u32(off) {
            Ok(IDLE) | Err(_) => None,
            Ok(_) => self.mem.swap_u32(off, IDLE).ok().filter(|&old| old != IDLE),
        }
    }

    /// Drops a kick waiting in queue `q`'s slot (the queue was reset alone, VIRTIO_F_RING_RESET:
    /// a kick from before its reset is not delivered to the re-enabled queue).
    pub fn clear_slot(&self, q: u16) {
        if let Some(&off) = self.slots.get(usize::from(q)) {
            let _ = self.mem.store_release(off, &IDLE.to_le_bytes());
        }
    }

    /// Whether any slot holds a kick: plain loads only, no slot is consumed (the engine's
    /// lock-free scan; the kicks are then taken under the device lock).
    pub fn pending(&self) -> bool {
        self.slots
            .iter()
            .any(|&off| self.mem.read_u32(off).is_ok_and(|v| v != IDLE))
    }

    /// The device was active (a kick is likely to follow): counted, and an engine in a deep
    /// sleep is woken. Cheap when the engine is awake or sleeping short (two atomics).
    pub fn note_activity(&self) {
        self.activity.fetch_add(1, Ordering::SeqCst);
        if self.deep.load(Ordering::SeqCst) && self.deep.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.waiter.get() {
                t.unpark();
            }
        }
    }

    /// The activity count ([`NotifyArea::note_activity`]).
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::SeqCst)
    }

    /// The engine thread registers itself to be woken from deep sleeps.
    pub(crate) fn set_waiter(&self, t: Thread) {
        let _ = self.waiter.set(t);
    }

    /// The engine is about to sleep deeply (`true`) or is awake (`false`). Before a deep sleep
    /// the engine sets this, then checks [`NotifyArea::activity`] and the slots once more; the
    /// device bumps the count, then reads this (both SeqCst), so one of them sees the other.
    pub(crate) fn set_deep(&self, deep: bool) {
        self.deep.store(deep, Ordering::SeqCst);
    }

    /// Sets every slot to [`IDLE`] (device reset).
    pub fn clear(&self) {
        for &off in &self.slots {
            // The offsets were checked against the memory in `new`.
            let _ = self.mem.store_release(off, &IDLE.to_le_bytes());
        }
    }

    /// A driver's kick of queue `q` as a `width`-byte store of the queue index (tests and
    /// in-process drivers; a remote driver stores into its own mapping of the same memfd).
    pub fn ring(&self, q: u16, width: usize) -> Result<(), NotifyAreaError> {
        let off = *self.slots.get(usize::from(q)).ok_or(ShmError::OutOfRange {
            offset: u64::from(q),
            len: 0,
            size: self.slots.len() as u64,
        })?;
        let v = u64::from(q).to_le_bytes();
        self.mem.store_release(off, &v[..width])?;
        Ok(())
    }

    /// A driver's kick of queue `q` with VIRTIO_F_NOTIFICATION_DATA: the 32-bit `data` stored
    /// in the slot (tests and in-process drivers).
    pub fn ring_data(&self, q: u16, data: u32) -> Result<(), NotifyAreaError> {
        let off = *self.slots.get(usize::from(q)).ok_or(ShmError::OutOfRange {
            offset: u64::from(q),
            len: 0,
            size: self.slots.len() as u64,
        })?;
        self.mem.store_release(off, &data.to_le_bytes())?;
        Ok(())
    }

    /// The raw value of queue `q`'s slot (tests, diagnostics).
    pub fn slot(&self, q: u16) -> Option<u32> {
        self.mem.read_u32(*self.slots.get(usize::from(q))?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bar_registers::{LayoutParams, NotifyLayout};

    fn layout(notify: NotifyLayout) -> DeviceLayout {
        DeviceLayout::new(LayoutParams {
            queue_pairs: 4,
            notify,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_area_is_the_notify_window_rounded_to_pages() {
        let l = layout(NotifyLayout::Compact);
        let a = NotifyArea::new(&l).unwrap();
        assert_eq!(a.mmap_area(), (0x3000, 0x1000));
        assert_eq!(a.file().metadata().unwrap().len(), l.bar_size(0));
        let l = layout(NotifyLayout::PagePerQueue);
        let a = NotifyArea::new(&l).unwrap();
        assert_eq!(a.mmap_area(), (0x3000, 9 * 0x1000));
        assert_eq!(a.queues(), 9);
    }

    #[test]
    fn a_kick_is_taken_once_and_equal_kicks_are_each_seen() {
        let a = NotifyArea::new(&layout(NotifyLayout::Compact)).unwrap();
        assert!((0..9).all(|q| a.slot(q) == Some(IDLE) && !a.take(q)));
        for _ in 0..3 {
            // The same value each time: a value-change detector would see only the first.
            a.ring(3, 2).unwrap();
            assert_eq!(a.slot(3), Some(0xFFFF_0003));
            assert!(a.take(3));
            assert!(!a.take(3), "consumed");
        }
        // Other widths change the slot too.
        a.ring(5, 4).unwrap();
        a.ring(6, 1).unwrap();
        assert!(a.take(5) && a.take(6));
        assert!(!a.take(9) && !a.take(u16::MAX), "no such queue");
        assert!(a.ring(9, 2).is_err());
    }

    #[test]
    fn notification_data_is_handed_over_whole_and_a_slot_clears_alone() {
        let a = NotifyArea::new(&layout(NotifyLayout::Compact)).unwrap();
        // Split: vqn 3, next_idx 0x0102. Packed: vqn 2, next_off 5, next_wrap 1.
        a.ring_data(3, 0x0102_0003).unwrap();
        a.ring_data(2, 0x8005_0002).unwrap();
        a.ring(1, 2).unwrap();
        assert_eq!(a.take_value(3), Some(0x0102_0003));
        assert_eq!(a.take_value(3), None, "consumed");
        assert_eq!(
            a.take_value(1),
            Some(0xFFFF_0001),
            "a 16-bit kick over IDLE"
        );
        a.clear_slot(2);
        assert_eq!(a.take_value(2), None, "cleared");
        a.ring(4, 2).unwrap();
        a.clear_slot(2);
        assert!(a.take(4), "another queue's kick stays");
    }

    #[test]
    fn clear_drops_pending_kicks() {
        let a = NotifyArea::new(&layout(NotifyLayout::PagePerQueue)).unwrap();
        for q in 0..9 {
            a.ring(q, 2).unwrap();
        }
        a.clear();
        assert!((0..9).all(|q| !a.take(q)));
    }

    /// The order the engine relies on, step by step: a kick that lands while the queue is
    /// being serviced (after the swap) is still in the slot for the next pass.
    #[test]
    fn a_kick_during_service_survives_for_the_next_pass() {
        let a = NotifyArea::new(&layout(NotifyLayout::Compact)).unwrap();
        a.ring(0, 2).unwrap();
        assert!(a.take(0)); // engine: consume, then service...
        a.ring(0, 2).unwrap(); // ...driver publishes more and kicks during the service
        assert!(a.take(0), "the next pass finds the second kick");
    }
}
