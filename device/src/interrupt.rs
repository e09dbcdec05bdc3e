//! Interrupt delivery: MSI-X table and PBA state (PCI 3.0 6.8.2), INTx with the virtio ISR, and
//! the [`InterruptSink`] seam (eventfds in production, a recorder in tests).

use bar_registers::msix::{
    ENTRY_SIZE, MSG_ADDR_HI, MSG_ADDR_LO, MSG_DATA, VECTOR_CONTROL, VECTOR_MASKED,
};
use bitvec::order::Lsb0;
use bitvec::slice::BitSlice;
use bitvec::view::BitView;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// Where the device's interrupts go.
pub trait InterruptSink: Send + Sync {
    /// MSI-X vector `vector` fires (unmasked, enabled).
    fn msix(&self, vector: u16);
    /// INTx line level (MSI-X disabled): asserted when the ISR becomes non-zero, deasserted by
    /// the ISR read.
    fn intx(&self, _asserted: bool) {}
}

/// Counts every interrupt per vector: the test and driver-model sink.
#[derive(Debug)]
pub struct InterruptRecorder {
    counts: Vec<AtomicU64>,
    intx: AtomicBool,
    intx_edges: AtomicU64,
}

impl InterruptRecorder {
    /// A recorder for `vectors` MSI-X vectors.
    pub fn new(vectors: u16) -> Self {
        InterruptRecorder {
            counts: (0..vectors).map(|_| AtomicU64::new(0)).collect(),
            intx: AtomicBool::new(false),
            intx_edges: AtomicU64::new(0),
        }
    }

    /// Interrupts seen on `vector`.
    pub fn count(&self, vector: u16) -> u64 {
        self.counts
            .get(usize::from(vector))
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Interrupts seen on all vectors.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Acquire)).sum()
    }

    /// Current INTx level and the number of assertions so far.
    pub fn intx(&self) -> (bool, u64) {
        (
            self.intx.load(Ordering::Acquire),
            self.intx_edges.load(Ordering::Acquire),
        )
    }
}

impl InterruptSink for InterruptRecorder {
    fn msix(&self, vector: u16) {
        if let Some(c) = self.counts.get(usize::from(vector)) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }
    fn intx(&self, asserted: bool) {
        if asserted && !self.intx.swap(true, Ordering::AcqRel) {
            self.intx_edges.fetch_add(1, Ordering::AcqRel);
        } else if !asserted {
            self.intx.store(false, Ordering::Release);
        }
    }
}

/// The virtio ISR status byte (virtio 1.2 4.1.4.5), shared by the locked device state, which
/// raises it, and the register path, which reads and clears it without the device lock whenever
/// that read has no other effect.
///
/// Why without the lock: a driver with one interrupt vector for everything (Linux ifcvf in a
/// 1-vCPU guest, `ifcvf_dev_intr_handler` in drivers/vdpa/ifcvf/ifcvf_main.c) reads the ISR on
/// every interrupt, with its vCPU stopped until the read completes. Behind the lock that read
/// would wait for whatever the device is doing (an RX delivery, a TX budget) and then for the
/// inbox the lock holder drains on release. A PCIe read is ordered after earlier posted writes
/// but does not wait for the device's queue processing, so answering from this byte is what
/// the hardware does.
///
/// When the read is not pure (MSI-X disabled, or the function's INTx status bit set), it also
/// deasserts INTx (4.1.4.5.1), which is the PCI function's state: then [`IsrStatus::take_unlocked`]
/// refuses and the read goes through the lock. That condition lives in the same atomic byte
/// (bit 7, outside the ISR's bits 0-1), so no read can see "pure" and clear bits raised after
/// the function turned INTx on.
#[derive(Debug, Clone)]
pub struct IsrStatus(Arc<AtomicU8>);

/// Bit 7 of [`IsrStatus`]: an ISR read must go through the device lock.
const READ_NEEDS_LOCK: u8 = 0x80;

impl Default for IsrStatus {
    /// Reset: ISR 0; the function starts with MSI-X disabled, so reads take the lock.
    fn default() -> Self {
        IsrStatus(Arc::new(AtomicU8::new(READ_NEEDS_LOCK)))
    }
}

impl IsrStatus {
    /// Sets ISR bits (bit 0 queue, bit 1 configuration change), before the interrupt is sent.
    pub fn raise(&self, bits: u8) {
        self.0.fetch_or(bits & !READ_NEEDS_LOCK, Ordering::AcqRel);
    }

    /// Reads and clears the ISR (the locked read path).
    pub fn take(&self) -> u8 {
        self.0.fetch_and(READ_NEEDS_LOCK, Ordering::AcqRel) & !READ_NEEDS_LOCK
    }

    /// Reads and clears the ISR if that read has no other effect; `None`: take the lock.
    pub fn take_unlocked(&self) -> Option<u8> {
        let mut v = self.0.load(Ordering::Acquire);
        loop {
            if v & READ_NEEDS_LOCK != 0 {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(v, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(v),
                Err(now) => v = now,
            }
        }
    }

    /// The ISR bits, not cleared (device state save).
    pub fn peek(&self) -> u8 {
        self.0.load(Ordering::Acquire) & !READ_NEEDS_LOCK
    }

    /// Replaces the ISR bits (device reset, state restore).
    pub fn set(&self, bits: u8) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v & READ_NEEDS_LOCK | bits & !READ_NEEDS_LOCK)
            });
    }

    /// Whether an ISR read has effects beyond clearing the ISR (the PCI function says so when
    /// its MSI-X enable or INTx status bit changes).
    pub fn set_read_needs_lock(&self, needs: bool) {
        if needs {
            self.0.fetch_or(READ_NEEDS_LOCK, Ordering::AcqRel);
        } else {
            self.0.fetch_and(!READ_NEEDS_LOCK, Ordering::AcqRel);
        }
    }
}

/// A sink that drops everything (before the VMM wires interrupts).
#[derive(Debug, Default)]
pub struct NullSink;

impl InterruptSink for NullSink {
    fn msix(&self, _vector: u16) {}
}

/// MSI-X table + PBA + the capability's enable and function-mask bits.
#[derive(Debug)]
pub struct MsixState {
    entries: Vec<[u32; 4]>,
    /// The PBA as the qwords it is read as (PCI 3.0 6.8.2.10: bit v of qword v / 64), handled
    /// as a bit set through [`MsixState::pending_bits`].
    pending: Vec<u64>,
    enabled: bool,
    function_mask: bool,
}

/// What an interrupt request turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent to the sink.
    Sent,
    /// Vector masked: pending bit set.
    Pending,
    /// No such vector (NO_VECTOR or out of range): nothing happens (virtio 1.2 4.1.5.1.2).
    NoVector,
}

impl MsixState {
    /// Reset state: every vector masked (PCI 3.0 6.8.2.9), nothing pending.
    pub fn new(vectors: u16) -> Self {
        MsixState {
            entries: vec![[0, 0, 0, VECTOR_MASKED]; vectors.into()],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            enabled: false,
            function_mask: false,
        }
    }

    /// The capability's MSI-X Enable and Function Mask bits (PCI 3.0 6.8.2.3), as the device
    /// last took them from config space.
    pub fn set_control(&mut self, enabled: bool, function_mask: bool) {
        self.enabled = enabled;
        self.function_mask = function_mask;
    }

    /// MSI-X Enable.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Function Mask.
    pub fn function_mask(&self) -> bool {
        self.function_mask
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Reads a table dword.
    pub fn table_read(&self, off: u64) -> u32 {
        let (e, f) = ((off / ENTRY_SIZE) as usize, (off % ENTRY_SIZE) / 4);
        self.entries.get(e).map_or(0, |d| d[f as usize])
    }

    /// Writes a table dword; returns vectors whose pending interrupt must now be delivered.
    pub fn table_write(&mut self, off: u64, val: u32) -> Option<u16> {
        let (e, f) = ((off / ENTRY_SIZE) as usize, off % ENTRY_SIZE);
        let entry = self.entries.get_mut(e)?;
        match f {
            MSG_ADDR_LO | MSG_ADDR_HI | MSG_DATA => entry[(f / 4) as usize] = val,
            VECTOR_CONTROL => {
                entry[3] = val & VECTOR_MASKED;
                if val & VECTOR_MASKED == 0 && self.take_pending(e as u16) {
                    return Some(e as u16);
                }
            }
            _ => {}
        }
        None
    }

    /// Reads a PBA qword.
    pub fn pba_read(&self, idx: usize) -> u64 {
        self.pending.get(idx).copied().unwrap_or(0)
    }

    /// The pending bits, one per vector.
    fn pending_bits(&mut self) -> &mut BitSlice<u64, Lsb0> {
        let n = self.entries.len();
        &mut self.pending.view_bits_mut::<Lsb0>()[..n]
    }

    fn masked(&self, v: u16) -> bool {
        self.function_mask || self.entries[usize::from(v)][3] & VECTOR_MASKED != 0
    }

    fn take_pending(&mut self, v: u16) -> bool {
        // PCI 3.0 6.8.2.3: no MSI-X message while MSI-X is disabled.
        if !self.enabled || self.masked(v) {
            return false;
        }
        self.pending_bits().replace(usize::from(v), false)
    }

    /// Vectors that become deliverable after the function mask or enable bit changed.
    pub fn unmasked_pending(&mut self) -> Vec<u16> {
        if !self.enabled {
            return Vec::new();
        }
        (0..self.vectors())
            .filter(|&v| self.take_pending(v))
            .collect()
    }

    /// Requests vector `v` (MSI-X enabled).
    pub fn request(&mut self, v: u16, sink: &dyn InterruptSink) -> Delivery {
        if usize::from(v) >= self.entries.len() {
            return Delivery::NoVector;
        }
        if self.masked(v) {
            self.pending_bits().set(usize::from(v), true);
            Delivery::Pending
        } else {
            sink.msix(v);
            Delivery::Sent
        }
    }

    /// Back to the reset state (function level reset; a virtio reset leaves the table alone).
    pub fn reset(&mut self) {
        *self = MsixState::new(self.vectors());
    }
}

#[cfg(test)]
mod isr_tests {
    use super::IsrStatus;
    use bar_registers::virtio::isr;

    #[test]
    fn a_reset_isr_reads_through_the_lock_and_keeps_that_across_takes_and_sets() {
        let s = IsrStatus::default();
        s.raise(isr::QUEUE);
        assert_eq!(s.take_unlocked(), None, "MSI-X is off at reset");
        assert_eq!(s.peek(), isr::QUEUE, "a refused read cleared nothing");
        assert_eq!(s.take(), isr::QUEUE);
        assert_eq!(s.take(), 0);
        s.set(isr::CONFIG);
        assert_eq!(s.take_unlocked(), None, "set() kept the flag");
        assert_eq!(s.take(), isr::CONFIG);
    }

    #[test]
    fn a_pure_read_clears_the_bits_and_the_flag_never_shows() {
        let s = IsrStatus::default();
        s.set_read_needs_lock(false);
        assert_eq!(s.take_unlocked(), Some(0));
        s.raise(isr::QUEUE);
        s.raise(isr::CONFIG | 0x80);
        assert_eq!(
            s.peek(),
            isr::QUEUE | isr::CONFIG,
            "raise() cannot set the flag"
        );
        assert_eq!(s.take_unlocked(), Some(isr::QUEUE | isr::CONFIG));
        assert_eq!(s.take_unlocked(), Some(0));
        s.set(isr::QUEUE);
        assert_eq!(s.take(), isr::QUEUE, "the locked read works either way");
        s.set_read_needs_lock(true);
        s.raise(isr::CONFIG);
        assert_eq!(s.take_unlocked(), None);
        assert_eq!(s.take(), isr::CONFIG);
    }

    #[test]
    fn concurrent_raises_and_reads_lose_no_interrupt() {
        // Each round: the raiser sets QUEUE, then waits until a reader has seen it; a raise
        // that a read cleared without returning it would hang the raiser (bounded below).
        let s = IsrStatus::default();
        s.set_read_needs_lock(false);
        let seen = std::sync::atomic::AtomicU64::new(0);
        const ROUNDS: u64 = 20_000;
        std::thread::scope(|t| {
            t.spawn(|| {
                for r in 0..ROUNDS {
                    s.raise(isr::QUEUE);
                    let t0 = std::time::Instant::now();
                    while seen.load(std::sync::atomic::Ordering::Acquire) <= r {
                        assert!(t0.elapsed().as_secs() < 10, "raise {r} was lost");
                        std::hint::spin_loop();
                    }
                }
            });
            for _ in 0..2 {
                t.spawn(|| {
                    while seen.load(std::sync::atomic::Ordering::Acquire) < ROUNDS {
                        if let Some(v) = s.take_unlocked() {
                            assert_eq!(v & !isr::QUEUE, 0);
                            if v != 0 {
                                seen.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                            }
                        }
                        std::thread::yield_now();
                    }
                });
            }
        });
        assert_eq!(seen.into_inner(), ROUNDS, "a raise was read twice");
    }
}
