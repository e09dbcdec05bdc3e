//! Interrupt delivery: MSI-X table and PBA state (PCI 3.0 6.8.2), INTx with the virtio ISR, and
//! the [`InterruptSink`] seam (eventfds in production, a recorder in tests).

use bar_registers::msix::{
    ENTRY_SIZE, MSG_ADDR_HI, MSG_ADDR_LO, MSG_DATA, VECTOR_CONTROL, VECTOR_MASKED,
};
use bitvec::order::Lsb0;
use bitvec::slice::BitSlice;
use bitvec::view::BitView;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
