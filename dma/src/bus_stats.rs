//! Bus accounting: transactions and bytes per kind of DMA.
//!
//! Every successful device access to guest memory is one PCIe transaction (two when it is
//! split across adjacent mappings); the dirty-log flush shows up as [`DmaKind::LogWrite`].

/// What a DMA access is for; the unit of [`BusStats`] accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaKind {
    /// Reading a virtqueue descriptor (split: the 16-byte descriptor; packed: the ring slot).
    Descriptor,
    /// Reading an indirect descriptor table.
    IndirectTable,
    /// Reading ring metadata (avail idx/ring, packed-ring flags, used event).
    RingRead,
    /// Writing ring metadata (used elements, used idx, avail event).
    RingWrite,
    /// Reading packet data (TX buffers).
    PacketRead,
    /// Writing packet data (RX buffers).
    PacketWrite,
    /// Writing the dirty-page log (never itself logged).
    LogWrite,
}

impl DmaKind {
    /// Every kind, in the index order used by [`BusStats`].
    pub const ALL: [DmaKind; 7] =
        [DmaKind::Descriptor, DmaKind::IndirectTable, DmaKind::RingRead, DmaKind::RingWrite, DmaKind::PacketRead, DmaKind::PacketWrite, DmaKind::LogWrite];

    /// Stable snake_case name, used in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DmaKind::Descriptor => "descriptor",
            DmaKind::IndirectTable => "indirect_table",
            DmaKind::RingRead => "ring_read",
            DmaKind::RingWrite => "ring_write",
            DmaKind::PacketRead => "packet_read",
            DmaKind::PacketWrite => "packet_write",
            DmaKind::LogWrite => "log_write",
        }
    }

    /// True for the kinds that write guest memory.
    pub fn is_write(self) -> bool {
        matches!(self, DmaKind::RingWrite | DmaKind::PacketWrite | DmaKind::LogWrite)
    }

    #[inline(always)]
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DmaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Transactions and bytes of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bus transactions (one per contiguous piece of an access).
    pub transactions: u64,
    /// Payload bytes moved.
    pub bytes: u64,
}

impl Traffic {
    fn saturating_sub(self, earlier: Traffic) -> Traffic {
        Traffic { transactions: self.transactions.saturating_sub(earlier.transactions), bytes: self.bytes.saturating_sub(earlier.bytes) }
    }
}

/// Per-[`DmaKind`] traffic counters of one device's DMA port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    per_kind: [Traffic; 7],
}

impl BusStats {
    /// Traffic of one kind.
    pub fn get(&self, k: DmaKind) -> Traffic {
        self.per_kind[k.index()]
    }

    /// Sum over all kinds (saturating).
    pub fn total(&self) -> Traffic {
        self.per_kind.iter().fold(Traffic::default(), |acc, t| Traffic {
            transactions: acc.transactions.saturating_add(t.transactions),
            bytes: acc.bytes.saturating_add(t.bytes),
        })
    }

    /// `self - earlier`, per kind (saturating at zero if `earlier` is not really earlier).
    pub fn delta(&self, earlier: &BusStats) -> BusStats {
        let mut out = BusStats::default();
        for k in DmaKind::ALL {
            out.per_kind[k.index()] = self.get(k).saturating_sub(earlier.get(k));
        }
        out
    }

    /// Iterates `(kind, traffic)` in [`DmaKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DmaKind, Traffic)> + '_ {
        DmaKind::ALL.iter().map(move |&k| (k, self.get(k)))
    }

    #[inline(always)]
    pub(crate) fn add(&mut self, k: DmaKind, transactions: u64, bytes: u64) {
        let t = &mut self.per_kind[k.index()];
        t.transactions = t.transactions.wrapping_add(transactions);
        t.bytes = t.bytes.wrapping_add(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indices() {
        for (i, k) in DmaKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(DmaKind::IndirectTable.name(), "indirect_table");
        assert_eq!(DmaKind::LogWrite.to_string(), "log_write");
        let writes: Vec<_> = DmaKind::ALL.iter().filter(|k| k.is_write()).collect();
        assert_eq!(writes, [&DmaKind::RingWrite, &DmaKind::PacketWrite, &DmaKind::LogWrite]);
    }

    #[test]
    fn total_and_delta() {
        let mut a = BusStats::default();
        a.add(DmaKind::PacketRead, 1, 64);
        let snap = a.clone();
        a.add(DmaKind::PacketRead, 2, 100);
        a.add(DmaKind::RingWrite, 1, 2);
        assert_eq!(a.total(), Traffic { transactions: 4, bytes: 166 });
        let d = a.delta(&snap);
        assert_eq!(d.get(DmaKind::PacketRead), Traffic { transactions: 2, bytes: 100 });
        assert_eq!(d.get(DmaKind::RingWrite).transactions, 1);
        // Reversed delta saturates instead of wrapping.
        assert_eq!(snap.delta(&a).total(), Traffic::default());
    }
}
