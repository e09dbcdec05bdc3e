//! What the split ring (virtio 1.2 2.7) and the packed ring (2.8) engines share: the setup
//! queue_enable hands them, the popped descriptor chain the datapath consumes, and the content
//! checks every descriptor of a chain passes whichever layout it came from (2.7.4.2 / 2.8.17
//! device-readable before device-writable, 2.7.5.3 / 2.8.7 indirect table size).
//!
//! The ring flags themselves are declared once in [`bar_registers::ring`] (virtio-bindings'
//! values).

use crate::fault::DeviceFault;
use bar_registers::ring::VIRTQ_DESC_F_WRITE;

/// Largest indirect table we accept (Linux uses at most MAX_SKB_FRAGS + 2 entries for net).
pub const MAX_INDIRECT_ENTRIES: u32 = 1024;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// What the device expects of a chain's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainKind {
    /// TX: device-readable only.
    Tx,
    /// RX: device-writable only.
    Rx,
    /// Control: readable, then writable (2.7.4.2).
    Ctrl,
}

/// A popped descriptor chain; reused between pops to avoid allocation.
#[derive(Debug, Default)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
    pub readable: u64,
    pub writable: u64,
}

impl Chain {
    pub(crate) fn clear(&mut self, head: u16) {
        self.head = head;
        self.descs.clear();
        self.readable = 0;
        self.writable = 0;
    }
}

/// What queue_enable hands the ring engine: the queue registers, the LM ring state it resumes
/// at, and the negotiated ring features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSetup {
    pub queue: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub last_avail: u16,
    pub last_used: u16,
    pub event_idx: bool,
    pub indirect: bool,
    /// VIRTIO_F_IN_ORDER negotiated (the device already completes in order; a quirk may not).
    pub in_order: bool,
}

#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn push_desc(
    q: u16,
    chain: &mut Chain,
    idx: u16,
    addr: u64,
    len: u32,
    flags: u16,
    kind: ChainKind,
    max_total: u64,
) -> Result<(), DeviceFault> {
    if len == 0 {
        return Err(DeviceFault::ZeroLengthDescriptor {
            queue: q,
            index: idx,
        });
    }
    let writable = flags & VIRTQ_DESC_F_WRITE != 0;
    match kind {
        ChainKind::Tx if writable => return Err(DeviceFault::WritableInTxChain { queue: q }),
        ChainKind::Rx if !writable => return Err(DeviceFault::ReadableInRxChain { queue: q }),
        ChainKind::Ctrl if !writable && chain.writable > 0 => {
            return Err(DeviceFault::ReadableAfterWritable { queue: q })
        }
        _ => {}
    }
    if writable {
        chain.writable += u64::from(len);
    } else {
        chain.readable += u64::from(len);
    }
    let total = chain.readable + chain.writable;
    if total > max_total {
        return Err(DeviceFault::OversizedChain {
            queue: q,
            total,
            limit: max_total,
        });
    }
    chain.descs.push(Desc {
        addr,
        len,
        writable,
    });
    Ok(())
}
