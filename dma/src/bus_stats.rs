//! Bus accounting: transactions and bytes per kind of DMA, and the PCIe TLPs they become.
//!
//! Every successful device access to guest memory is one bus transaction (two when it is
//! split across adjacent mappings); the dirty-log flush shows up as [`DmaKind::LogWrite`].
//!
//! Alongside, each access is cut into the PCIe Transaction Layer Packets a device would issue
//! for it ([`PcieTraffic`], per kind, under a [`PcieModel`]): one Memory Read request per piece
//! of at most Max_Read_Request_Size of a contiguous span, one posted Memory Write per piece of
//! at most Max_Payload_Size, no request crossing a 4 KiB boundary (PCIe Base 4.0 2.2.7), plus
//! the Completions with Data the completer returns for each read request. A write is merged
//! into the previous one's posted-write stream only when it continues it directly: packet data
//! written right after the previous piece of the same packet (`PacketWrite`; a header and frame
//! in one descriptor are a single access, `DmaEngine::write_gather`) and the words of one
//! dirty-log burst (`LogWrite`). Ring writes never merge: each one is a separate publish.

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
    pub const ALL: [DmaKind; 7] = [
        DmaKind::Descriptor,
        DmaKind::IndirectTable,
        DmaKind::RingRead,
        DmaKind::RingWrite,
        DmaKind::PacketRead,
        DmaKind::PacketWrite,
        DmaKind::LogWrite,
    ];

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
        matches!(
            self,
            DmaKind::RingWrite | DmaKind::PacketWrite | DmaKind::LogWrite
        )
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
    /// Field-wise `self - earlier`, saturating at zero.
    pub fn saturating_sub(self, earlier: Traffic) -> Traffic {
        Traffic {
            transactions: self.transactions.saturating_sub(earlier.transactions),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }

    /// Field-wise saturating sum.
    pub fn saturating_add(self, o: Traffic) -> Traffic {
        Traffic {
            transactions: self.transactions.saturating_add(o.transactions),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }
}

/// The PCIe TLPs of one kind of DMA (see the module docs for how accesses are cut).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcieTraffic {
    /// Request TLPs the device issued: Memory Reads for read kinds, posted Memory Writes for
    /// write kinds.
    pub tlps: u64,
    /// Those of [`tlps`](Self::tlps) with a 4-DW header: addresses at or above 4 GiB (below,
    /// the 3-DW format is mandatory, PCIe Base 4.0 2.2.4.1).
    pub tlps_4dw: u64,
    /// Completion-with-Data TLPs the completer returned for the read requests.
    pub completions: u64,
    /// Data bytes carried on the link (in the MWr for writes, in the CplD for reads), whole
    /// dwords: a TLP's Length field counts dwords, so a 2-byte store carries 4.
    pub payload_bytes: u64,
}

impl PcieTraffic {
    /// Field-wise `self - e`, saturating at zero.
    pub fn saturating_sub(self, e: PcieTraffic) -> PcieTraffic {
        PcieTraffic {
            tlps: self.tlps.saturating_sub(e.tlps),
            tlps_4dw: self.tlps_4dw.saturating_sub(e.tlps_4dw),
            completions: self.completions.saturating_sub(e.completions),
            payload_bytes: self.payload_bytes.saturating_sub(e.payload_bytes),
        }
    }

    /// Field-wise saturating sum.
    pub fn saturating_add(self, o: PcieTraffic) -> PcieTraffic {
        PcieTraffic {
            tlps: self.tlps.saturating_add(o.tlps),
            tlps_4dw: self.tlps_4dw.saturating_add(o.tlps_4dw),
            completions: self.completions.saturating_add(o.completions),
            payload_bytes: self.payload_bytes.saturating_add(o.payload_bytes),
        }
    }

    #[inline(always)]
    fn add_wrapping(&mut self, o: PcieTraffic) {
        self.tlps = self.tlps.wrapping_add(o.tlps);
        self.tlps_4dw = self.tlps_4dw.wrapping_add(o.tlps_4dw);
        self.completions = self.completions.wrapping_add(o.completions);
        self.payload_bytes = self.payload_bytes.wrapping_add(o.payload_bytes);
    }

    /// All TLPs on the link for this traffic: requests plus completions.
    pub fn all_tlps(&self) -> u64 {
        self.tlps.saturating_add(self.completions)
    }
}

/// Smallest and largest Max_Payload_Size / Max_Read_Request_Size encodings (128 << 0..=5).
const MIN_PCIE_SIZE: u32 = 128;
const MAX_PCIE_SIZE: u32 = 4096;
/// No request may cross a 4 KiB boundary (PCIe Base 4.0 2.2.7).
const PCIE_BOUNDARY: u64 = 4096;

/// The link parameters of the TLP model.
///
/// Sizes: `mps` and `mrrs` come from the function's PCIe Device Control register (the device
/// passes them with [`DmaEngine::set_pcie_limits`](crate::DmaEngine::set_pcie_limits)); `rcb`
/// and `completion_size` describe the completer (the root port). Overheads per TLP follow the
/// pcie-bench model (Neugebauer et al., "Understanding PCIe performance for end host
/// networking", SIGCOMM 2018; github.com/pcie-bench/pcie-model, model/pcie.py): a 12-byte
/// (3-DW) or 16-byte (4-DW) request header, a 12-byte completion header, and 8 bytes of link
/// framing per TLP: 2-byte sequence number + 4-byte LCRC + 2 bytes of framing (Gen1/2 STP and
/// END symbols; from Gen3 the 4-byte STP token carries the sequence number, same total), no
/// ECRC. `dllp_share` charges the Ack and UpdateFC DLLPs (8 bytes each, pcie-model Ack_Size and
/// FC_Size) that flow the other way: the spec's suggested rates for an x4 link at MPS 128 are
/// one of each per ~169 bytes of TLP traffic (PCIe Base 5.0 Tables 3-7 and 2-46, via
/// pcie-model); for the small TLPs that dominate here that is about 4 bytes per TLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieModel {
    /// Max_Payload_Size in bytes: the largest posted-write (and completion) payload.
    pub mps: u32,
    /// Max_Read_Request_Size in bytes: the largest read request.
    pub mrrs: u32,
    /// Read Completion Boundary of the completer: a read answered in several completions is
    /// split at RCB-aligned addresses (PCIe Base 4.0 2.3.1.1). Root ports use 64 or 128.
    pub rcb: u32,
    /// Largest completion the completer sends (0 = MPS, pcie-model's default; 64 = a root
    /// complex completing in cache lines).
    pub completion_size: u32,
    /// Memory request header with a 32-bit address (3 DW).
    pub header_3dw: u32,
    /// Memory request header with a 64-bit address (4 DW).
    pub header_4dw: u32,
    /// Completion header (3 DW).
    pub completion_header: u32,
    /// Data link and physical layer bytes per TLP (sequence number, LCRC, framing).
    pub link_overhead: u32,
    /// Share of Ack / UpdateFC DLLP bytes charged per TLP.
    pub dllp_share: u32,
}

impl Default for PcieModel {
    /// MPS 128 B and MRRS 512 B: the reset value of the function's Device Control register
    /// (0x2810, bar-registers layout.rs); RCB 64 B; overheads as documented on the type.
    fn default() -> Self {
        PcieModel {
            mps: 128,
            mrrs: 512,
            rcb: 64,
            completion_size: 0,
            header_3dw: 12,
            header_4dw: 16,
            completion_header: 12,
            link_overhead: 8,
            dllp_share: 4,
        }
    }
}

/// Rounds down to a power of two in `[128, 4096]`: a device never exceeds the programmed size.
fn sanitize_size(v: u32) -> u32 {
    let v = v.clamp(MIN_PCIE_SIZE, MAX_PCIE_SIZE);
    1 << (31 - v.leading_zeros())
}

impl PcieModel {
    /// The default model with these Max_Payload_Size / Max_Read_Request_Size (each rounded down
    /// to a power of two in 128..=4096, the sizes Device Control can encode).
    pub fn with_limits(mps: u32, mrrs: u32) -> Self {
        PcieModel {
            mps,
            mrrs,
            ..Default::default()
        }
        .sanitized()
    }

    /// The model with every size valid: MPS/MRRS as in [`with_limits`](Self::with_limits),
    /// RCB a power of two in `[4, MPS]`, the completion size 0 (MPS) or a power of two in
    /// `[RCB, MPS]`.
    pub fn sanitized(self) -> Self {
        let mps = sanitize_size(self.mps);
        let mrrs = sanitize_size(self.mrrs);
        let rcb = 1 << (31 - self.rcb.clamp(4, mps).leading_zeros());
        // 0 stays 0 ("MPS"), so the completion size follows later MPS changes.
        let cpl = if self.completion_size == 0 {
            0
        } else {
            1 << (31 - self.completion_size.clamp(rcb, mps).leading_zeros())
        };
        PcieModel {
            mps,
            mrrs,
            rcb,
            completion_size: cpl,
            ..self
        }
    }

    /// The TLPs of one access of `[iova, iova + len)` (`write`: posted writes, else reads).
    pub fn span(&self, iova: u64, len: u64, write: bool) -> PcieTraffic {
        self.span_between(iova, iova.saturating_add(len), write)
    }

    fn span_between(&self, start: u64, end: u64, write: bool) -> PcieTraffic {
        let mut out = PcieTraffic::default();
        let max_dw = u64::from(if write { self.mps } else { self.mrrs }) / 4;
        let mut seg = start;
        while seg < end {
            let seg_end = end.min((seg & !(PCIE_BOUNDARY - 1)).saturating_add(PCIE_BOUNDARY));
            // Dwords this segment touches; 4 KiB boundaries are dword aligned, so segments (and
            // the dword-sized pieces cut below) never share a dword.
            let dw0 = seg / 4;
            let dw1 = seg_end.div_ceil(4);
            let dws = dw1 - dw0;
            let n = dws.div_ceil(max_dw);
            out.tlps += n;
            if seg >= 1 << 32 {
                out.tlps_4dw += n;
            }
            out.payload_bytes += 4 * dws;
            if !write {
                for i in 0..n {
                    let ps = seg.max(4 * (dw0 + i * max_dw));
                    let pe = seg_end.min(4 * (dw0 + (i + 1) * max_dw));
                    out.completions += self.completions(ps, pe);
                }
            }
            seg = seg_end;
        }
        out
    }

    /// Completions for one read request of `[start, end)`: every completion but the last ends
    /// on an RCB-aligned address and none carries more than `completion_size` bytes.
    fn completions(&self, start: u64, end: u64) -> u64 {
        let cpl = u64::from(if self.completion_size == 0 {
            self.mps
        } else {
            self.completion_size
        });
        let rcb = u64::from(self.rcb.max(4));
        let first_end = end.min((start + cpl) & !(rcb - 1));
        1 + (end - first_end).div_ceil(cpl)
    }

    /// Bytes on the link for `t`: every request and completion with its header, link framing
    /// and DLLP share, plus the dword-padded payload.
    pub fn wire_bytes(&self, t: &PcieTraffic) -> u64 {
        let per_tlp = u64::from(self.link_overhead + self.dllp_share);
        t.tlps
            .saturating_mul(u64::from(self.header_3dw) + per_tlp)
            .saturating_add(
                t.tlps_4dw
                    .saturating_mul(u64::from(self.header_4dw.saturating_sub(self.header_3dw))),
            )
            .saturating_add(
                t.completions
                    .saturating_mul(u64::from(self.completion_header) + per_tlp),
            )
            .saturating_add(t.payload_bytes)
    }
}

/// No stream open.
const NO_STREAM: u8 = u8::MAX;

/// The posted-write stream the last access opened (merging is decided per access).
#[derive(Clone, Copy, Debug)]
struct Stream {
    /// `DmaKind` index, or [`NO_STREAM`].
    kind: u8,
    start: u64,
    end: u64,
}

const NONE: Stream = Stream {
    kind: NO_STREAM,
    start: 0,
    end: 0,
};

/// The model's sizes as the hot path uses them (all powers of two: the model is sanitized).
#[derive(Clone, Copy, Debug)]
struct Cuts {
    /// Largest request in dwords: `[read (MRRS), write (MPS)]`.
    max_dw: [u64; 2],
    /// Largest completion in bytes.
    cpl: u64,
    /// RCB - 1.
    rcb_mask: u64,
}

impl Cuts {
    fn of(m: &PcieModel) -> Cuts {
        let cpl = if m.completion_size == 0 {
            m.mps
        } else {
            m.completion_size
        };
        Cuts {
            max_dw: [u64::from(m.mrrs) / 4, u64::from(m.mps) / 4],
            cpl: cpl.into(),
            rcb_mask: u64::from(m.rcb.max(4)) - 1,
        }
    }
}

/// Largest ring write counted as an index / flag store in [`BusStats::ring_index_writes`].
pub const RING_INDEX_WRITE_MAX: u64 = 4;

/// Per-[`DmaKind`] traffic counters of one device's DMA port, with the PCIe model they are cut
/// into TLPs by. Equality compares the counters only.
#[derive(Clone, Debug)]
pub struct BusStats {
    per_kind: [Traffic; 7],
    pcie: [PcieTraffic; 7],
    index_writes: Traffic,
    index_writes_pcie: PcieTraffic,
    model: PcieModel,
    cuts: Cuts,
    stream: Stream,
}

impl Default for BusStats {
    fn default() -> Self {
        BusStats::with_model(PcieModel::default())
    }
}

impl PartialEq for BusStats {
    fn eq(&self, o: &Self) -> bool {
        self.per_kind == o.per_kind
            && self.pcie == o.pcie
            && self.index_writes == o.index_writes
            && self.index_writes_pcie == o.index_writes_pcie
    }
}

impl Eq for BusStats {}

impl BusStats {
    /// Empty counters that cut accesses into TLPs under `model` (sanitized).
    pub fn with_model(model: PcieModel) -> Self {
        let model = model.sanitized();
        BusStats {
            per_kind: Default::default(),
            pcie: Default::default(),
            index_writes: Traffic::default(),
            index_writes_pcie: PcieTraffic::default(),
            cuts: Cuts::of(&model),
            model,
            stream: NONE,
        }
    }

    /// Traffic of one kind.
    pub fn get(&self, k: DmaKind) -> Traffic {
        self.per_kind[k.index()]
    }

    /// PCIe TLPs of one kind.
    pub fn pcie(&self, k: DmaKind) -> PcieTraffic {
        self.pcie[k.index()]
    }

    /// Bytes on the link for one kind under this counter set's model.
    pub fn wire_bytes(&self, k: DmaKind) -> u64 {
        self.model.wire_bytes(&self.pcie(k))
    }

    /// The part of [`DmaKind::RingWrite`] made of stores of at most [`RING_INDEX_WRITE_MAX`]
    /// bytes: index and flag words (split ring: used->idx, avail_event; packed ring: descriptor
    /// flags or event-suppression words written on their own). The rest of `RingWrite` is the
    /// write-back of used elements / descriptors.
    pub fn ring_index_writes(&self) -> Traffic {
        self.index_writes
    }

    /// PCIe TLPs of [`ring_index_writes`](Self::ring_index_writes).
    pub fn ring_index_writes_pcie(&self) -> PcieTraffic {
        self.index_writes_pcie
    }

    /// The model accesses are cut by.
    pub fn model(&self) -> PcieModel {
        self.model
    }

    /// Sum over all kinds (saturating).
    pub fn total(&self) -> Traffic {
        self.per_kind
            .iter()
            .fold(Traffic::default(), |acc, t| acc.saturating_add(*t))
    }

    /// PCIe TLPs summed over all kinds (saturating).
    pub fn pcie_total(&self) -> PcieTraffic {
        self.pcie
            .iter()
            .fold(PcieTraffic::default(), |acc, t| acc.saturating_add(*t))
    }

    /// `self - earlier`, per kind (saturating at zero if `earlier` is not really earlier).
    pub fn delta(&self, earlier: &BusStats) -> BusStats {
        let mut out = BusStats::with_model(self.model);
        for k in DmaKind::ALL {
            out.per_kind[k.index()] = self.get(k).saturating_sub(earlier.get(k));
            out.pcie[k.index()] = self.pcie(k).saturating_sub(earlier.pcie(k));
        }
        out.index_writes = self.index_writes.saturating_sub(earlier.index_writes);
        out.index_writes_pcie = self
            .index_writes_pcie
            .saturating_sub(earlier.index_writes_pcie);
        out
    }

    /// Adds `o`'s counters to these (saturating), keeping this set's model: the traffic of
    /// several ports counted as one.
    pub fn absorb(&mut self, o: &BusStats) {
        for i in 0..self.per_kind.len() {
            self.per_kind[i] = self.per_kind[i].saturating_add(o.per_kind[i]);
            self.pcie[i] = self.pcie[i].saturating_add(o.pcie[i]);
        }
        self.index_writes = self.index_writes.saturating_add(o.index_writes);
        self.index_writes_pcie = self.index_writes_pcie.saturating_add(o.index_writes_pcie);
    }

    /// Iterates `(kind, traffic)` in [`DmaKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DmaKind, Traffic)> + '_ {
        DmaKind::ALL.iter().map(move |&k| (k, self.get(k)))
    }

    /// Zeroes the counters, keeping the model.
    pub(crate) fn clear(&mut self) {
        *self = BusStats::with_model(self.model);
    }

    /// Installs a new model (sanitized); later accesses are cut by it.
    pub(crate) fn set_model(&mut self, model: PcieModel) {
        self.model = model.sanitized();
        self.cuts = Cuts::of(&self.model);
        self.stream = NONE;
    }

    /// Counts one access of `[iova, iova + len)` made of `transactions` bus transactions.
    /// `merge`: a write that starts where the previous access (a write of the same kind) ended
    /// continues that write's posted-write stream instead of starting new TLPs.
    #[inline(always)]
    pub(crate) fn access(
        &mut self,
        k: DmaKind,
        iova: u64,
        len: u64,
        transactions: u64,
        merge: bool,
    ) {
        let i = k.index();
        let t = &mut self.per_kind[i];
        t.transactions = t.transactions.wrapping_add(transactions);
        t.bytes = t.bytes.wrapping_add(len);
        let index_write = k == DmaKind::RingWrite && len <= RING_INDEX_WRITE_MAX;
        if index_write {
            self.index_writes.transactions =
                self.index_writes.transactions.wrapping_add(transactions);
            self.index_writes.bytes = self.index_writes.bytes.wrapping_add(len);
        }
        if len == 0 {
            return;
        }
        let write = k.is_write();
        // A successful access lies inside a mapping, so `iova + len` does not overflow.
        let end = iova.wrapping_add(len);
        let last = end.wrapping_sub(1);
        let dws = (last >> 2).wrapping_sub(iova >> 2).wrapping_add(1);
        let continues = merge && write && self.stream.kind == i as u8 && self.stream.end == iova;
        // The common case, without a division: one request (no 4 KiB boundary inside, at most
        // MPS / MRRS) answered, for a read, by one completion.
        if !continues
            && (iova ^ last) < PCIE_BOUNDARY
            && dws <= self.cuts.max_dw[usize::from(write)]
            && (write || iova.wrapping_add(self.cuts.cpl) & !self.cuts.rcb_mask >= end)
        {
            let p = PcieTraffic {
                tlps: 1,
                tlps_4dw: u64::from(iova >> 32 != 0),
                completions: u64::from(!write),
                payload_bytes: 4 * dws,
            };
            self.pcie[i].add_wrapping(p);
            if index_write {
                self.index_writes_pcie.add_wrapping(p);
            }
            if write {
                self.stream = Stream {
                    kind: i as u8,
                    start: iova,
                    end,
                };
            } else {
                self.stream.kind = NO_STREAM;
            }
            return;
        }
        self.access_slow(i, write, iova, end, continues, index_write);
    }

    #[inline(never)]
    fn access_slow(
        &mut self,
        i: usize,
        write: bool,
        iova: u64,
        end: u64,
        continues: bool,
        index_write: bool,
    ) {
        let p = if continues {
            // The stream's TLPs so far are counted: add what the longer stream needs more.
            let s = self.stream;
            self.stream.end = end;
            let dw0 = s.start / 4;
            let dws = end.div_ceil(4) - dw0;
            if (s.start ^ (end - 1)) < PCIE_BOUNDARY && dws <= self.cuts.max_dw[1] {
                // Still one posted write inside one 4 KiB segment (an RX frame after its
                // header): it only grows by the dwords this access adds.
                PcieTraffic {
                    payload_bytes: 4 * (dws - (s.end.div_ceil(4) - dw0)),
                    ..PcieTraffic::default()
                }
            } else {
                let before = self.model.span_between(s.start, s.end, true);
                let after = self.model.span_between(s.start, end, true);
                after.saturating_sub(before)
            }
        } else {
            self.stream = if write {
                Stream {
                    kind: i as u8,
                    start: iova,
                    end,
                }
            } else {
                NONE
            };
            self.model.span_between(iova, end, write)
        };
        self.pcie[i].add_wrapping(p);
        if index_write {
            self.index_writes_pcie.add_wrapping(p);
        }
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
        assert_eq!(
            writes,
            [
                &DmaKind::RingWrite,
                &DmaKind::PacketWrite,
                &DmaKind::LogWrite
            ]
        );
    }

    #[test]
    fn total_and_delta() {
        let mut a = BusStats::default();
        a.access(DmaKind::PacketRead, 0x1000, 64, 1, false);
        let snap = a.clone();
        a.access(DmaKind::PacketRead, 0x2000, 40, 1, false);
        a.access(DmaKind::PacketRead, 0x3000, 60, 1, false);
        a.access(DmaKind::RingWrite, 0x4002, 2, 1, false);
        assert_eq!(
            a.total(),
            Traffic {
                transactions: 4,
                bytes: 166
            }
        );
        let d = a.delta(&snap);
        assert_eq!(
            d.get(DmaKind::PacketRead),
            Traffic {
                transactions: 2,
                bytes: 100
            }
        );
        assert_eq!(
            d.pcie(DmaKind::PacketRead),
            PcieTraffic {
                tlps: 2,
                tlps_4dw: 0,
                completions: 2,
                payload_bytes: 100
            }
        );
        assert_eq!(d.get(DmaKind::RingWrite).transactions, 1);
        assert_eq!(
            d.ring_index_writes(),
            Traffic {
                transactions: 1,
                bytes: 2
            }
        );
        // Reversed delta saturates instead of wrapping.
        assert_eq!(snap.delta(&a).total(), Traffic::default());
        assert_eq!(snap.delta(&a).pcie_total(), PcieTraffic::default());
    }

    fn m(mps: u32, mrrs: u32) -> PcieModel {
        PcieModel::with_limits(mps, mrrs)
    }

    #[test]
    fn read_requests_split_at_mrrs() {
        // 1500 bytes at MRRS 512: three read requests (512 + 512 + 476).
        let p = m(128, 512).span(0x1_0000, 1500, false);
        assert_eq!(p.tlps, 3);
        assert_eq!(p.payload_bytes, 1500);
        // Completions at MPS 128 (the default completion size): 4 + 4 + 4 (476 bytes).
        assert_eq!(p.completions, 12);
        // Larger MRRS: one request; MRRS 128: twelve.
        assert_eq!(m(128, 4096).span(0x1_0000, 1500, false).tlps, 1);
        assert_eq!(m(128, 128).span(0x1_0000, 1500, false).tlps, 12);
        // A small read is one request and one completion of whole dwords.
        let p = m(128, 512).span(0x1_0002, 2, false);
        assert_eq!((p.tlps, p.completions, p.payload_bytes), (1, 1, 4));
        // 16 bytes straddling a dword boundary: 5 dwords on the wire.
        assert_eq!(m(128, 512).span(0x1_0006, 16, false).payload_bytes, 20);
    }

    #[test]
    fn writes_split_at_mps() {
        // 300 bytes at MPS 128: three posted writes (128 + 128 + 44).
        let p = m(128, 512).span(0x2_0000, 300, true);
        assert_eq!((p.tlps, p.completions, p.payload_bytes), (3, 0, 300));
        assert_eq!(m(256, 512).span(0x2_0000, 300, true).tlps, 2);
        assert_eq!(m(512, 512).span(0x2_0000, 300, true).tlps, 1);
        // Unaligned start: 300 bytes from 0x2_0002 touch 76 dwords: still 3 TLPs of <= 32 dwords.
        let p = m(128, 512).span(0x2_0002, 300, true);
        assert_eq!((p.tlps, p.payload_bytes), (3, 304));
        // 8 full dwords more than 3 * 128: four.
        assert_eq!(m(128, 512).span(0x2_0000, 3 * 128 + 32, true).tlps, 4);
    }

    #[test]
    fn requests_never_cross_4k() {
        // 64 bytes across a page boundary: two requests even though MPS / MRRS would allow one.
        assert_eq!(m(128, 512).span(0x2fe0, 64, true).tlps, 2);
        assert_eq!(m(128, 512).span(0x2fe0, 64, false).tlps, 2);
        assert_eq!(m(128, 512).span(0x2fe0, 64, false).completions, 2);
        // 512 bytes at MRRS 512 from 0x0f00: 256 before the boundary, 256 after.
        let p = m(128, 512).span(0x0f00, 512, false);
        assert_eq!(p.tlps, 2);
        assert_eq!(p.completions, 4);
        // 1500 bytes at MRRS 512 from 0xe00: 512 (to 0x1000), then 988 = 512 + 476.
        assert_eq!(m(128, 512).span(0xe00, 1500, false).tlps, 3);
        // ... from 0xf00: 256, then 1244 = 512 + 512 + 220: four.
        assert_eq!(m(128, 512).span(0xf00, 1500, false).tlps, 4);
        // Writes: 300 bytes from 0xfc0: 64 + (236 = 128 + 108): three; from 0xfd0: 48 + 252: three.
        assert_eq!(m(128, 512).span(0xfc0, 300, true).tlps, 3);
        assert_eq!(m(4096, 4096).span(0xfd0, 300, true).tlps, 2);
        // A whole 8 KiB write at MPS 4096: exactly two (aligned), three when offset.
        assert_eq!(m(4096, 4096).span(0x4000, 8192, true).tlps, 2);
        assert_eq!(m(4096, 4096).span(0x4008, 8192, true).tlps, 3);
    }

    #[test]
    fn completions_follow_rcb_and_completion_size() {
        // Cache-line completions (64 B, RCB 64): a 512-byte aligned read returns 8.
        let cl = PcieModel {
            completion_size: 64,
            ..PcieModel::default()
        }
        .sanitized();
        assert_eq!(cl.span(0x1000, 512, false).completions, 8);
        // Unaligned: 0x1010..0x1210 touches 9 cache lines.
        assert_eq!(cl.span(0x1010, 512, false).completions, 9);
        // MPS-sized completions (default): the first ends on an RCB boundary.
        let d = PcieModel::default();
        assert_eq!(d.span(0x1000, 512, false).completions, 4);
        // 0x1010..0x1210: 0x1010..0x1080 (ends RCB-aligned, <= 128), then 0x1080.. in 128s: 1 + 4.
        assert_eq!(d.span(0x1010, 512, false).completions, 5);
        // A 16-byte descriptor read: one completion.
        assert_eq!(d.span(0x1010, 16, false).completions, 1);
    }

    #[test]
    fn four_dw_headers_above_4g() {
        let d = PcieModel::default();
        let lo = d.span(0xffff_f000, 64, true);
        let hi = d.span(0x1_0000_0000, 64, true);
        assert_eq!((lo.tlps_4dw, hi.tlps_4dw), (0, 1));
        // 3-DW write of 64 bytes: 12 + 8 + 4 + 64 = 88 bytes; 4-DW: 92.
        assert_eq!(d.wire_bytes(&lo), 88);
        assert_eq!(d.wire_bytes(&hi), 92);
        // A 2-byte read: request 12 + 12, completion 12 + 12 + 4 bytes of payload = 52.
        assert_eq!(d.wire_bytes(&d.span(0x1000, 2, false)), 52);
    }

    #[test]
    fn sanitize_limits() {
        assert_eq!(
            PcieModel::with_limits(0, 100_000),
            PcieModel {
                mps: 128,
                mrrs: 4096,
                ..Default::default()
            }
            .sanitized()
        );
        assert_eq!(PcieModel::with_limits(300, 700).mps, 256);
        assert_eq!(PcieModel::with_limits(300, 700).mrrs, 512);
        assert_eq!(PcieModel::default().sanitized().completion_size, 0);
        let odd = PcieModel {
            rcb: 100,
            completion_size: 1000,
            ..PcieModel::with_limits(512, 512)
        }
        .sanitized();
        assert_eq!((odd.rcb, odd.completion_size), (64, 512));
    }

    #[test]
    fn merged_write_streams() {
        let mut b = BusStats::default();
        // Header (12) then data (1500) in one buffer: one stream of 1512 bytes = 12 TLPs at MPS 128.
        b.access(DmaKind::PacketWrite, 0x1_0000, 12, 1, true);
        b.access(DmaKind::PacketWrite, 0x1_000c, 1500, 1, true);
        assert_eq!(
            b.get(DmaKind::PacketWrite),
            Traffic {
                transactions: 2,
                bytes: 1512
            }
        );
        assert_eq!(b.pcie(DmaKind::PacketWrite).tlps, 12);
        assert_eq!(b.pcie(DmaKind::PacketWrite).payload_bytes, 1512);
        // Unmerged, the header is a TLP of its own.
        let mut u = BusStats::default();
        u.access(DmaKind::PacketWrite, 0x1_0000, 12, 1, false);
        u.access(DmaKind::PacketWrite, 0x1_000c, 1500, 1, false);
        assert_eq!(u.pcie(DmaKind::PacketWrite).tlps, 13);
        // Not contiguous, another kind in between, or a read in between: no merge.
        let mut c = BusStats::default();
        c.access(DmaKind::PacketWrite, 0x1_0000, 12, 1, true);
        c.access(DmaKind::PacketWrite, 0x1_0010, 12, 1, true);
        c.access(DmaKind::RingWrite, 0x1_001c, 8, 1, true);
        c.access(DmaKind::PacketRead, 0x1_0024, 4, 1, false);
        c.access(DmaKind::PacketWrite, 0x1_0028, 4, 1, true);
        assert_eq!(c.pcie(DmaKind::PacketWrite).tlps, 3);
        // Dirty-log burst: 32 consecutive 8-byte words = 256 bytes = 2 TLPs at MPS 128.
        let mut l = BusStats::default();
        for w in 0..32u64 {
            l.access(
                DmaKind::LogWrite,
                0x1000_0000_0000 + 8 * w,
                8,
                u64::from(w == 0),
                w != 0,
            );
        }
        assert_eq!(
            l.get(DmaKind::LogWrite),
            Traffic {
                transactions: 1,
                bytes: 256
            }
        );
        assert_eq!(
            l.pcie(DmaKind::LogWrite),
            PcieTraffic {
                tlps: 2,
                tlps_4dw: 2,
                completions: 0,
                payload_bytes: 256
            }
        );
        // A burst crossing a 4 KiB boundary of the log is cut there.
        let mut x = BusStats::default();
        for w in 0..4u64 {
            x.access(
                DmaKind::LogWrite,
                0x1000_0000_0ff0 + 8 * w,
                8,
                u64::from(w == 0),
                w != 0,
            );
        }
        assert_eq!(x.pcie(DmaKind::LogWrite).tlps, 2);
    }

    #[test]
    fn index_writes_are_the_small_ring_writes() {
        let mut b = BusStats::default();
        b.access(DmaKind::RingWrite, 0x1004, 8 * 4, 1, false); // used elements
        b.access(DmaKind::RingWrite, 0x1002, 2, 1, false); // used->idx
        b.access(DmaKind::RingWrite, 0x1804, 2, 1, false); // avail_event
        assert_eq!(
            b.get(DmaKind::RingWrite),
            Traffic {
                transactions: 3,
                bytes: 36
            }
        );
        assert_eq!(
            b.ring_index_writes(),
            Traffic {
                transactions: 2,
                bytes: 4
            }
        );
        assert_eq!(b.ring_index_writes_pcie().tlps, 2);
        assert_eq!(b.ring_index_writes_pcie().payload_bytes, 8);
    }

    #[test]
    fn engine_cuts_accesses_by_its_limits() {
        use crate::{AddressSpace, DmaEngine, LogConfig, Perms, SharedMemory};
        use std::sync::Arc;
        let shm = SharedMemory::new("g", 0x40_0000).unwrap();
        let space = Arc::new(AddressSpace::new());
        shm.map_into(&space, 0x4000_0000, 0, 0x40_0000, Perms::RW)
            .unwrap();
        // Pages of IOVA 1 GiB.. have their bits at log offset 0x8000..
        let log = SharedMemory::new("log", 0x9000).unwrap();
        log.map_into(&space, 0x1000_0000_0000, 0, 0x9000, Perms::RW)
            .unwrap();
        let mut eng = DmaEngine::new(space, 16);
        assert_eq!((eng.pcie_model().mps, eng.pcie_model().mrrs), (128, 512));
        let mut buf = [0u8; 1500];
        eng.read(0x4000_0000, &mut buf, DmaKind::PacketRead)
            .unwrap();
        eng.write(0x4000_2000, &buf[..300], DmaKind::PacketWrite)
            .unwrap();
        assert_eq!(eng.bus_stats().pcie(DmaKind::PacketRead).tlps, 3);
        assert_eq!(eng.bus_stats().pcie(DmaKind::PacketWrite).tlps, 3);
        assert_eq!(
            eng.bus_stats().get(DmaKind::PacketRead).transactions,
            1,
            "transactions keep their meaning"
        );
        eng.set_pcie_limits(256, 1024);
        eng.reset_stats();
        assert_eq!(eng.pcie_model().mps, 256, "reset_stats keeps the model");
        eng.read(0x4000_0000, &mut buf, DmaKind::PacketRead)
            .unwrap();
        eng.write(0x4000_2000, &buf[..300], DmaKind::PacketWrite)
            .unwrap();
        assert_eq!(eng.bus_stats().pcie(DmaKind::PacketRead).tlps, 2);
        assert_eq!(eng.bus_stats().pcie(DmaKind::PacketWrite).tlps, 2);
        // Atomic index reads and publishes are one TLP each; a 2 MiB log granule is one burst
        // of 8 all-ones words = 64 bytes = one posted write.
        eng.set_logging(Some(LogConfig {
            base: 0x1000_0000_0000,
            end: 0x1000_0000_9000,
            granularity: 2 << 20,
        }));
        let before = eng.bus_stats().clone();
        eng.read_u16(0x4000_0002, DmaKind::RingRead).unwrap();
        eng.publish_u16(0x4000_1002, 7, DmaKind::RingWrite).unwrap();
        let d = eng.bus_stats().delta(&before);
        assert_eq!(
            (
                d.pcie(DmaKind::RingRead).tlps,
                d.pcie(DmaKind::RingRead).completions
            ),
            (1, 1)
        );
        assert_eq!(d.pcie(DmaKind::RingWrite).tlps, 1);
        assert_eq!(d.ring_index_writes().transactions, 1);
        assert_eq!(
            d.get(DmaKind::LogWrite),
            Traffic {
                transactions: 1,
                bytes: 64
            }
        );
        assert_eq!(
            d.pcie(DmaKind::LogWrite),
            PcieTraffic {
                tlps: 1,
                tlps_4dw: 1,
                completions: 0,
                payload_bytes: 64
            }
        );
    }

    #[test]
    fn fast_path_matches_general_cut() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (mps, mrrs, cpl) in [
            (128, 512, 0),
            (256, 128, 64),
            (4096, 4096, 0),
            (512, 1024, 128),
        ] {
            let mut b = BusStats::with_model(PcieModel {
                completion_size: cpl,
                ..PcieModel::with_limits(mps, mrrs)
            });
            for _ in 0..20_000 {
                let r = next();
                let start = (r >> 20) % (1 << 34);
                let len = 1 + [r % 8, r % 70, r % 2000, r % 9000][(r >> 60) as usize & 3];
                for k in [DmaKind::PacketRead, DmaKind::PacketWrite] {
                    let general = b.model.span_between(start, start + len, k.is_write());
                    let before = b.pcie(k);
                    b.access(k, start, len, 1, false);
                    assert_eq!(
                        b.pcie(k).saturating_sub(before),
                        general,
                        "{start:#x}+{len} {k} mps {mps} mrrs {mrrs} cpl {cpl}"
                    );
                }
            }
        }
    }

    #[test]
    fn continued_streams_match_the_general_cut() {
        // A write continuing a stream adds what the longer stream costs more, on the short
        // path (one TLP in one 4 KiB segment) as on the general one.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for mps in [128, 256, 4096] {
            let mut b = BusStats::with_model(PcieModel::with_limits(mps, 512));
            for _ in 0..20_000 {
                let r = next();
                let start = (r >> 20) % (1 << 34);
                let first = 1 + r % 40;
                let more = 1 + [r % 8, r % 70, r % 200, r % 5000][(r >> 60) as usize & 3];
                let k = DmaKind::PacketWrite;
                b.access(k, start, first, 1, true);
                let before = b.pcie(k);
                b.access(k, start + first, more, 1, true);
                let m = b.model;
                let general = m
                    .span_between(start, start + first + more, true)
                    .saturating_sub(m.span_between(start, start + first, true));
                assert_eq!(
                    b.pcie(k).saturating_sub(before),
                    general,
                    "{start:#x}+{first}+{more} mps {mps}"
                );
                // A read ends the stream.
                b.access(DmaKind::PacketRead, 0, 4, 1, false);
            }
        }
    }

    #[test]
    fn equality_ignores_model_and_stream() {
        let mut a = BusStats::with_model(PcieModel::with_limits(256, 256));
        let b = BusStats::default();
        assert_eq!(a, b);
        a.access(DmaKind::PacketWrite, 0, 4, 1, true);
        assert_ne!(a, b);
        a.clear();
        assert_eq!(a, b);
        assert_eq!(a.model().mps, 256);
    }
}
