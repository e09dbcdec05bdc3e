//! The server side of vfio-user interrupts: the eventfds DEVICE_SET_IRQS assigns, the mask
//! state the server keeps per vector, and the [`InterruptSink`] the device fires into.
//!
//! MSI-X (index 2) has one vector per device vector; QEMU emulates the MSI-X table itself and
//! masks by switching eventfds, so the device runs with `MsixOwner::Vmm` and every vector it
//! fires lands here. A vector masked through SET_IRQS (ACTION_MASK) is remembered as pending
//! and fired on unmask. INTx (index 0) behaves like kernel vfio-pci: the eventfd fires on an
//! assertion while unmasked, then the line masks itself (AUTOMASKED) until the client sends
//! UNMASK; if the device still asserts the line then, it fires again.

use crate::sock::is_eventfd;
use device::InterruptSink;
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use vfio_bindings::bindings::vfio::{
    vfio_irq_info, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS,
};

/// Why a SET_IRQS was refused (always EINVAL on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IrqError {
    #[error("IRQ index {0} does not exist")]
    NoSuchIndex(u32),
    #[error("flags {0:#x}: exactly one DATA_ and one ACTION_ bit must be set")]
    BadFlags(u32),
    #[error("IRQ index {index}: vectors {start}+{count} out of range (count {max})")]
    OutOfRange {
        index: u32,
        start: u32,
        count: u32,
        max: u32,
    },
    #[error("{got} file descriptors for {count} vectors")]
    FdCount { got: usize, count: u32 },
    #[error("descriptor {0} is not an eventfd")]
    NotEventfd(usize),
    #[error("DATA_BOOL with {got} data bytes for {count} vectors")]
    BoolData { got: usize, count: u32 },
    #[error("action {0:#x} with DATA_EVENTFD is not supported for this index")]
    Unsupported(u32),
}

/// What a SET_IRQS carries for its vectors.
#[derive(Debug)]
pub enum IrqData<'a> {
    /// DATA_NONE.
    None,
    /// DATA_BOOL: one byte per vector.
    Bool(&'a [u8]),
    /// DATA_EVENTFD: one descriptor per vector, or none to de-assign.
    Eventfds(Vec<File>),
}

#[derive(Debug, Default)]
struct Vector {
    trigger: Option<File>,
    masked: bool,
    pending: bool,
    fired: u64,
}

impl Vector {
    fn signal(&mut self) {
        if let Some(f) = &self.trigger {
            // An eventfd counter at its maximum refuses the write: the client is already
            // signalled, nothing is lost.
            if let Err(e) = (&*f).write_all(&1u64.to_ne_bytes()) {
                tracing::trace!(%e, "eventfd write");
            }
            self.fired += 1;
        }
    }

    /// A trigger: fires unless masked (then pending).
    fn trigger(&mut self) {
        if self.masked {
            self.pending = true;
        } else {
            self.signal();
        }
    }

    fn unmask(&mut self) {
        self.masked = false;
        if std::mem::take(&mut self.pending) {
            self.signal();
        }
    }

    fn clear(&mut self) {
        *self = Vector::default();
    }
}

#[derive(Debug, Default)]
struct Inner {
    msix: Vec<Vector>,
    intx: Vector,
    /// Device's INTx line level.
    intx_level: bool,
    /// Resample/unmask eventfd a client may register for INTx (kept, never signalled: we
    /// unmask on the UNMASK message, not through KVM).
    intx_unmask_fd: Option<File>,
}

/// Interrupt routing of one device (shared by the device, as its sink, and the server).
#[derive(Debug)]
pub struct IrqTable {
    inner: Mutex<Inner>,
    msix_vectors: u16,
}

impl IrqTable {
    /// A table for `msix_vectors` MSI-X vectors and one INTx line, nothing assigned.
    pub fn new(msix_vectors: u16) -> Self {
        IrqTable {
            inner: Mutex::new(Inner {
                msix: (0..msix_vectors).map(|_| Vector::default()).collect(),
                ..Default::default()
            }),
            msix_vectors,
        }
    }

    /// Vectors of IRQ index `index` (INTx 1, MSI-X the device's count, others 0).
    pub fn count(&self, index: u32) -> u32 {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => 1,
            VFIO_PCI_MSIX_IRQ_INDEX => self.msix_vectors.into(),
            _ => 0,
        }
    }

    /// DEVICE_GET_IRQ_INFO for `index`; `None` past VFIO_PCI_NUM_IRQS.
    pub fn info(&self, index: u32) -> Option<vfio_irq_info> {
        if index >= VFIO_PCI_NUM_IRQS {
            return None;
        }
        let flags = match index {
            VFIO_PCI_INTX_IRQ_INDEX => {
                VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
            }
            // Vectors can be assigned one by one (no NORESIZE), as dynamic MSI-X allocation
            // in kernel vfio-pci allows.
            VFIO_PCI_MSIX_IRQ_INDEX => VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE,
            _ => 0,
        };
        Some(vfio_irq_info {
            argsz: super::wire::IRQ_INFO_SIZE as u32,
            flags,
            index,
            count: self.count(index),
        })
    }

    /// Applies one DEVICE_SET_IRQS.
    pub fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: IrqData<'_>,
    ) -> Result<(), IrqError> {
        if index >= VFIO_PCI_NUM_IRQS {
            return Err(IrqError::NoSuchIndex(index));
        }
        let dt = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if !dt.is_power_of_two()
            || !action.is_power_of_two()
            || flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
        {
            return Err(IrqError::BadFlags(flags));
        }
        let mut g = self.inner.lock();
        let inner = &mut *g;
        // count 0 + DATA_NONE + TRIGGER: disable every vector of the index.
        if count == 0 && dt == VFIO_IRQ_SET_DATA_NONE && action == VFIO_IRQ_SET_ACTION_TRIGGER {
            match index {
                VFIO_PCI_MSIX_IRQ_INDEX => inner.msix.iter_mut().for_each(Vector::clear),
                VFIO_PCI_INTX_IRQ_INDEX => {
                    inner.intx.clear();
                    inner.intx_unmask_fd = None;
                }
                _ => {}
            }
            return Ok(());
        }
        let max = self.count(index);
        if start.checked_add(count).is_none_or(|end| end > max) || count == 0 {
            return Err(IrqError::OutOfRange {
                index,
                start,
                count,
                max,
            });
        }
        let vectors: &mut [Vector] = match index {
            VFIO_PCI_MSIX_IRQ_INDEX => &mut inner.msix[start as usize..(start + count) as usize],
            _ => std::slice::from_mut(&mut inner.intx),
        };
        match data {
            IrqData::Eventfds(files) => {
                if !files.is_empty() && files.len() != count as usize {
                    return Err(IrqError::FdCount {
                        got: files.len(),
                        count,
                    });
                }
                if let Some(i) = files.iter().position(|f| !is_eventfd(f.as_fd())) {
                    return Err(IrqError::NotEventfd(i));
                }
                match action {
                    VFIO_IRQ_SET_ACTION_TRIGGER => {
                        // No descriptors: de-assign the range.
                        let mut files = files.into_iter();
                        for v in vectors.iter_mut() {
                            v.trigger = files.next();
                        }
                    }
                    VFIO_IRQ_SET_ACTION_UNMASK if index == VFIO_PCI_INTX_IRQ_INDEX => {
                        inner.intx_unmask_fd = files.into_iter().next()
                    }
                    _ => return Err(IrqError::Unsupported(action)),
                }
            }
            IrqData::None | IrqData::Bool(_) => {
                if let IrqData::Bool(b) = data {
                    if b.len() < count as usize {
                        return Err(IrqError::BoolData {
                            got: b.len(),
                            count,
                        });
                    }
                }
                let level = inner.intx_level;
                for (i, v) in vectors.iter_mut().enumerate() {
                    if let IrqData::Bool(b) = data {
                        if b[i] == 0 {
                            continue;
                        }
                    }
                    match action {
                        VFIO_IRQ_SET_ACTION_TRIGGER => v.trigger(),
                        VFIO_IRQ_SET_ACTION_MASK => v.masked = true,
                        VFIO_IRQ_SET_ACTION_UNMASK if index == VFIO_PCI_INTX_IRQ_INDEX => {
                            v.masked = false;
                            v.pending = false;
                            // Level-triggered: still asserted -> fire again and re-mask.
                            if level {
                                v.signal();
                                v.masked = true;
                            }
                        }
                        _ => v.unmask(),
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops every eventfd and forgets masks and pending bits (client gone).
    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.msix.iter_mut().for_each(Vector::clear);
        g.intx.clear();
        g.intx_unmask_fd = None;
    }

    /// Vectors of `index` that have an eventfd.
    pub fn assigned(&self, index: u32) -> usize {
        let g = self.inner.lock();
        match index {
            VFIO_PCI_MSIX_IRQ_INDEX => g.msix.iter().filter(|v| v.trigger.is_some()).count(),
            VFIO_PCI_INTX_IRQ_INDEX => usize::from(g.intx.trigger.is_some()),
            _ => 0,
        }
    }

    /// Eventfd writes done for MSI-X vector `v` so far.
    pub fn fired(&self, v: u16) -> u64 {
        self.inner
            .lock()
            .msix
            .get(usize::from(v))
            .map_or(0, |v| v.fired)
    }
}

impl InterruptSink for IrqTable {
    fn msix(&self, vector: u16) {
        if let Some(v) = self.inner.lock().msix.get_mut(usize::from(vector)) {
            v.trigger();
        }
    }

    fn intx(&self, asserted: bool) {
        let mut g = self.inner.lock();
        let rising = asserted && !g.intx_level;
        g.intx_level = asserted;
        if rising && !g.intx.masked {
            g.intx.signal();
            // AUTOMASKED: the client unmasks after its EOI.
            if g.intx.trigger.is_some() {
                g.intx.masked = true;
            }
        }
    }
}

// Flags re-exported for the client side and the tests.
pub use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK as ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER as ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK as ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL as DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD as DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE as DATA_NONE,
};
