//! `vdpa-emu bench bus`: what a packet costs on the PCIe bus, by kind of DMA, for the split and
//! the packed ring (the vDPA talk: "simple modeling shows lower bus overhead" for the VIRTIO 1.1
//! packed ring; "PCIe bus overhead of small transactions for dirty logging").
//!
//! Each configuration runs the real device model through its registers: one queue pair in
//! loopback, the driver model posting `batch` frames per doorbell, the device taking at most
//! `batch` chains per service pass. After a warm-up, the device's bus counters are sampled over
//! a fixed number of packets; a packet is one frame transmitted (TX dequeue) and received again
//! (RX enqueue). The counters come from the DMA engine's PCIe model (dma::PcieModel): request
//! TLPs cut at MRRS / MPS and 4 KiB boundaries, completions, dword-padded payload; bytes on the
//! wire add per-TLP header, framing and DLLP overheads. Doorbells (MMIO writes to the device)
//! and MSI-X messages are reported beside, not in the DMA totals.

use crate::driver::{DriverError, DriverOptions, NetDriver};
use crate::frames;
use bar_registers::lm::DPDK_LOG_IOVA;
use bar_registers::pci::{cap_id, pcie_cap};
use bar_registers::virtio::bits;
use bar_registers::REGION_CONFIG;
use device::{Device, DeviceConfig, DmaMapper, RegionAccess};
use dma::{Backing, BusStats, DmaKind, PcieModel, PcieTraffic, Perms, SharedMemory, Traffic};
use rand::SeedableRng;
use serde_json::{json, Value};
use std::fmt::Write;

/// VIRTIO_F_RING_PACKED.
pub const RING_PACKED_BIT: u32 = bits::RING_PACKED;

/// Queue size of both rings.
pub const QUEUE_SIZE: u16 = 256;

/// Ring layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ring {
    /// virtio 1.0 split virtqueue (descriptor table, avail ring, used ring).
    Split,
    /// VIRTIO 1.1 packed virtqueue (VIRTIO_F_RING_PACKED).
    Packed,
}

impl Ring {
    /// "split" / "packed".
    pub fn name(self) -> &'static str {
        match self {
            Ring::Split => "split",
            Ring::Packed => "packed",
        }
    }
}

/// Dirty-page logging during the measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Logging {
    /// Logging off.
    Off,
    /// Logging on with this granularity in bytes (4 KiB, 2 MiB, ...).
    Granule(u64),
}

impl Logging {
    /// "off", "4K", "2M", ...
    pub fn label(self) -> String {
        match self {
            Logging::Off => "off".into(),
            Logging::Granule(g) if g >= 1 << 20 && g % (1 << 20) == 0 => format!("{}M", g >> 20),
            Logging::Granule(g) if g % 1024 == 0 => format!("{}K", g >> 10),
            Logging::Granule(g) => g.to_string(),
        }
    }
}

/// One point of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub ring: Ring,
    /// Ethernet frame length in bytes (without FCS).
    pub frame: usize,
    /// Frames per doorbell, and chains per device service pass.
    pub batch: u16,
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    pub logging: Logging,
}

impl Config {
    /// e.g. "split 64B b8 evidx-on log-4K".
    pub fn label(&self) -> String {
        format!(
            "{} {}B b{} evidx-{} log-{}",
            self.ring.name(),
            self.frame,
            self.batch,
            if self.event_idx { "on" } else { "off" },
            self.logging.label()
        )
    }

    /// The same configuration with another ring layout.
    pub fn with_ring(self, ring: Ring) -> Config {
        Config { ring, ..self }
    }
}

/// What the report breaks a packet's DMA into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// Descriptor reads (split: descriptor table entries and indirect tables; packed: ring slots).
    Descriptor,
    /// Ring index reads: avail->idx and avail ring entries, used_event / avail flags; packed:
    /// event-suppression reads.
    IndexRead,
    /// Index and flag stores of at most 4 bytes: used->idx, avail_event; packed: descriptor
    /// flags or event-suppression words written on their own.
    IndexWrite,
    /// Used write-back: used ring elements; packed: used descriptors.
    UsedWriteBack,
    /// Packet data: TX buffer reads and RX buffer writes (virtio-net header included).
    PacketData,
    /// Dirty-log writes.
    LogWrite,
}

impl Category {
    /// Every category in report order.
    pub const ALL: [Category; 6] = [
        Category::Descriptor,
        Category::IndexRead,
        Category::IndexWrite,
        Category::UsedWriteBack,
        Category::PacketData,
        Category::LogWrite,
    ];

    /// Short column name.
    pub fn name(self) -> &'static str {
        match self {
            Category::Descriptor => "desc",
            Category::IndexRead => "idx_rd",
            Category::IndexWrite => "idx_wr",
            Category::UsedWriteBack => "used_wb",
            Category::PacketData => "pkt",
            Category::LogWrite => "log",
        }
    }

    /// Longer name for legends.
    pub fn describe(self) -> &'static str {
        match self {
            Category::Descriptor => "descriptor reads",
            Category::IndexRead => "ring index reads",
            Category::IndexWrite => "ring index writes",
            Category::UsedWriteBack => "used write-back",
            Category::PacketData => "packet data",
            Category::LogWrite => "dirty-log writes",
        }
    }

    /// Ring metadata (everything but packet data and the log).
    pub fn is_ring(self) -> bool {
        !matches!(self, Category::PacketData | Category::LogWrite)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Accesses and TLPs of one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Engine accesses (one per contiguous piece: `BusStats` transactions) and payload bytes.
    pub traffic: Traffic,
    /// PCIe TLPs.
    pub pcie: PcieTraffic,
}

impl Totals {
    fn add(self, o: Totals) -> Totals {
        Totals {
            traffic: self.traffic.saturating_add(o.traffic),
            pcie: self.pcie.saturating_add(o.pcie),
        }
    }
}

/// Splits bus counters into report categories.
pub fn categorize(bus: &BusStats) -> [Totals; 6] {
    let k = |k: DmaKind| Totals {
        traffic: bus.get(k),
        pcie: bus.pcie(k),
    };
    let idx_wr = Totals {
        traffic: bus.ring_index_writes(),
        pcie: bus.ring_index_writes_pcie(),
    };
    let ring_wr = k(DmaKind::RingWrite);
    let used_wb = Totals {
        traffic: ring_wr.traffic.saturating_sub(idx_wr.traffic),
        pcie: ring_wr.pcie.saturating_sub(idx_wr.pcie),
    };
    [
        k(DmaKind::Descriptor).add(k(DmaKind::IndirectTable)),
        k(DmaKind::RingRead),
        idx_wr,
        used_wb,
        k(DmaKind::PacketRead).add(k(DmaKind::PacketWrite)),
        k(DmaKind::LogWrite),
    ]
}

/// The counters of one configuration over the measured packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// Packets measured (each: one TX and one RX).
    pub packets: u64,
    /// Per [`Category`], in [`Category::ALL`] order.
    pub categories: [Totals; 6],
    /// Doorbells the driver rang (RX and TX queue).
    pub kicks: u64,
    /// Queue interrupts the device sent (RX and TX queue).
    pub interrupts: u64,
}

impl Measurement {
    /// One category's totals.
    pub fn get(&self, c: Category) -> Totals {
        self.categories[c.index()]
    }

    /// Every category.
    pub fn total(&self) -> Totals {
        self.categories
            .iter()
            .fold(Totals::default(), |a, t| a.add(*t))
    }

    /// The ring-metadata categories (descriptors, indexes, used write-back).
    pub fn ring(&self) -> Totals {
        Category::ALL
            .iter()
            .filter(|c| c.is_ring())
            .fold(Totals::default(), |a, c| a.add(self.get(*c)))
    }

    /// `v` per packet.
    pub fn per_packet(&self, v: u64) -> f64 {
        v as f64 / self.packets.max(1) as f64
    }
}

/// What became of one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Measured(Box<Measurement>),
    /// The device does not offer what the configuration needs (the packed ring before it lands).
    NotAvailable(String),
    /// The run failed (device fault, lost frames, driver error).
    Failed(String),
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub config: Config,
    pub outcome: Outcome,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusBenchOptions {
    /// Max_Payload_Size programmed into Device Control (128..=4096, power of two).
    pub mps: u32,
    /// Max_Read_Request_Size programmed into Device Control (128..=4096, power of two).
    pub mrrs: u32,
    /// Packets measured per configuration (rounded up to whole batches).
    pub packets: u64,
    /// Packets sent before measuring.
    pub warmup: u64,
    pub rings: Vec<Ring>,
    pub frames: Vec<usize>,
    pub batches: Vec<u16>,
    pub event_idx: Vec<bool>,
    pub logging: Vec<Logging>,
    /// Overheads used for bytes on the wire (its mps / mrrs are ignored: the device's are used).
    pub wire: PcieModel,
    /// The split ring reads adjacent head descriptors in runs ([`DeviceConfig::desc_runs`]).
    pub desc_runs: bool,
}

impl Default for BusBenchOptions {
    fn default() -> Self {
        BusBenchOptions {
            mps: 128,
            mrrs: 512,
            packets: 4096,
            warmup: 512,
            rings: vec![Ring::Split, Ring::Packed],
            frames: vec![64, 1500],
            batches: vec![1, 8, 32],
            event_idx: vec![false, true],
            logging: vec![
                Logging::Off,
                Logging::Granule(4096),
                Logging::Granule(2 << 20),
            ],
            wire: PcieModel::default(),
            desc_runs: true,
        }
    }
}

impl BusBenchOptions {
    /// Every configuration, grouped so the rings of one configuration are adjacent.
    pub fn configs(&self) -> Vec<Config> {
        let mut v = Vec::new();
        for &logging in &self.logging {
            for &frame in &self.frames {
                for &batch in &self.batches {
                    for &event_idx in &self.event_idx {
                        for &ring in &self.rings {
                            v.push(Config {
                                ring,
                                frame,
                                batch,
                                event_idx,
                                logging,
                            });
                        }
                    }
                }
            }
        }
        v
    }
}

/// The matrix.
#[derive(Clone, Debug)]
pub struct BusReport {
    pub opts: BusBenchOptions,
    /// Feature bits the device offers.
    pub offered: u64,
    pub rows: Vec<Row>,
}

fn usage(e: impl std::fmt::Display) -> DriverError {
    DriverError::Usage(e.to_string())
}

/// Device Control code of a MPS / MRRS size (128 << code).
fn size_code(what: &str, v: u32) -> Result<u16, DriverError> {
    if !(128..=4096).contains(&v) || !v.is_power_of_two() {
        return Err(usage(format!(
            "{what} {v}: must be a power of two from 128 to 4096"
        )));
    }
    Ok((v / 128).trailing_zeros() as u16)
}

/// Programs MPS and MRRS into the function's PCIe Device Control register, as firmware / the
/// OS does; the device passes them to its DMA engine.
pub fn set_mps_mrrs(
    dev: &dyn RegionAccess,
    pcie_cap_offset: u64,
    mps: u32,
    mrrs: u32,
) -> Result<(), DriverError> {
    let (m, r) = (size_code("MPS", mps)?, size_code("MRRS", mrrs)?);
    let off = pcie_cap_offset + pcie_cap::DEVICE_CONTROL;
    let mut b = [0u8; 2];
    dev.region_read(REGION_CONFIG, off, &mut b)?;
    let mut v = u16::from_le_bytes(b) & !pcie_cap::DEVCTL_FLR;
    v = (v & !(7 << pcie_cap::DEVCTL_MPS_SHIFT) & !(7 << pcie_cap::DEVCTL_MRRS_SHIFT))
        | (m << pcie_cap::DEVCTL_MPS_SHIFT)
        | (r << pcie_cap::DEVCTL_MRRS_SHIFT);
    dev.region_write(REGION_CONFIG, off, &v.to_le_bytes())?;
    Ok(())
}

/// The features a fresh device offers (what `device_features_probe` reads).
pub fn probe_offered() -> Result<u64, DriverError> {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).map_err(usage)?;
    let drv = crate::driver::in_process(
        &dev,
        DriverOptions {
            memory: 1 << 20,
            ..Default::default()
        },
    )?;
    drv.device_features_probe()
}

/// Runs one configuration. `Ok(Err(reason))` when the device does not offer what it needs.
pub fn measure(
    c: &Config,
    opts: &BusBenchOptions,
) -> Result<Result<Measurement, String>, DriverError> {
    if c.batch == 0 || c.batch > QUEUE_SIZE / 2 {
        return Err(usage(format!(
            "batch {}: must be 1..={}",
            c.batch,
            QUEUE_SIZE / 2
        )));
    }
    let mut cfg = DeviceConfig::with_queue_pairs(1);
    cfg.batch = c.batch;
    cfg.desc_runs = opts.desc_runs;
    if let Logging::Granule(g) = c.logging {
        cfg.log_granularity = g;
    }
    let dev = Device::new(cfg).map_err(usage)?;
    dev.set_loopback();
    let dopts = DriverOptions {
        queue_pairs: 1,
        queue_size: QUEUE_SIZE,
        memory: 16 << 20,
        ..Default::default()
    };
    let mut drv = crate::driver::in_process(&dev, dopts)?;
    let offered = drv.device_features_probe()?;
    let packed = 1u64 << RING_PACKED_BIT;
    // The plain datapath: 12-byte headers (no HASH_REPORT) and frames as the wire carries
    // them (no RX GSO coalescing), so the per-packet figures stay comparable across versions.
    let mut want = offered & !(1u64 << bits::HASH_REPORT) & !bar_registers::virtio::RX_GSO_FEATURES;
    match c.ring {
        Ring::Split => want &= !packed,
        Ring::Packed if offered & packed == 0 => {
            return Ok(Err(
                "not available yet: the device does not offer VIRTIO_F_RING_PACKED (bit 34)".into(),
            ));
        }
        Ring::Packed => want |= packed,
    }
    if !c.event_idx {
        want &= !(1u64 << bits::EVENT_IDX);
    } else if offered & (1u64 << bits::EVENT_IDX) == 0 {
        return Ok(Err("the device does not offer VIRTIO_F_EVENT_IDX".into()));
    }
    drv.opts.features = want;
    let cap = drv
        .pci
        .caps
        .iter()
        .find(|c| c.1 == cap_id::PCIE)
        .map(|c| c.0)
        .ok_or_else(|| usage("no PCIe capability"))?;
    set_mps_mrrs(dev.as_ref(), cap, opts.mps, opts.mrrs)?;
    drv.start()?;
    if (drv.features & packed != 0) != (c.ring == Ring::Packed) {
        return Err(usage(format!(
            "negotiated features {:#x} do not match the {} ring",
            drv.features,
            c.ring.name()
        )));
    }
    let _log = match c.logging {
        Logging::Off => None,
        Logging::Granule(_) => {
            // One bit per 4 KiB page of IOVA up to the end of guest memory.
            let pages = (drv.mem.base() + drv.mem.size()).div_ceil(4096);
            let len = pages.div_ceil(8).next_multiple_of(4096);
            let log = SharedMemory::new("bench-log", len).map_err(usage)?;
            dev.dma_map(
                DPDK_LOG_IOVA,
                len,
                Perms::RW,
                Backing::Fd {
                    file: log.try_clone_file().map_err(usage)?,
                    offset: 0,
                },
            )
            .map_err(usage)?;
            drv.enable_logging(DPDK_LOG_IOVA, len)?;
            Some(log)
        }
    };
    let mac = drv.mac()?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let batch: Vec<Vec<u8>> = (0..u64::from(c.batch))
        .map(|i| frames::build(mac, mac, 0, i, c.frame, &mut rng))
        .collect();
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    let round = |drv: &mut NetDriver| -> Result<u64, DriverError> {
        let n = drv.send(0, &refs)?;
        if n != refs.len() {
            return Err(usage(format!("TX ring took {n} of {} frames", refs.len())));
        }
        Ok(drv.recv(0)?.len() as u64)
    };
    let mut sent = 0u64;
    while sent < opts.warmup {
        round(&mut drv)?;
        sent += u64::from(c.batch);
    }
    let bus0 = dev.bus_stats();
    let cnt0 = dev.counters();
    let (mut sent, mut received) = (0u64, 0u64);
    while sent < opts.packets.max(1) {
        received += round(&mut drv)?;
        sent += u64::from(c.batch);
    }
    if let Some(f) = dev.fault() {
        return Err(usage(format!("device fault: {f}")));
    }
    drv.check_alive()?;
    if received != sent {
        return Err(usage(format!("{sent} frames sent, {received} received")));
    }
    let bus = dev.bus_stats().delta(&bus0);
    let cnt = dev.counters();
    let q = |f: fn(&device::QueueCounters) -> u64| {
        (0..2)
            .map(|i| f(&cnt.queues[i]).saturating_sub(f(&cnt0.queues[i])))
            .sum::<u64>()
    };
    Ok(Ok(Measurement {
        packets: sent,
        categories: categorize(&bus),
        kicks: q(|c| c.doorbells),
        interrupts: q(|c| c.interrupts),
    }))
}

/// Runs the matrix. Configurations the device cannot run yet are reported, not fatal; a failing
/// configuration is reported as failed.
pub fn run(opts: &BusBenchOptions) -> Result<BusReport, DriverError> {
    run_with_progress(opts, false)
}

/// [`run`], with a progress bar (terminal) or a line per configuration (otherwise) on stderr
/// when `progress`.
pub fn run_with_progress(opts: &BusBenchOptions, progress: bool) -> Result<BusReport, DriverError> {
    size_code("MPS", opts.mps)?;
    size_code("MRRS", opts.mrrs)?;
    let offered = probe_offered()?;
    let configs = opts.configs();
    let p = crate::progress::Progress::new(progress, configs.len() as u64, "configurations");
    let mut rows = Vec::new();
    for c in configs {
        p.message(&format!("bench bus: {}", c.label()));
        let outcome = match measure(&c, opts) {
            Ok(Ok(m)) => Outcome::Measured(Box::new(m)),
            Ok(Err(why)) => Outcome::NotAvailable(why),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        rows.push(Row { config: c, outcome });
        p.inc();
    }
    p.finish();
    Ok(BusReport {
        opts: opts.clone(),
        offered,
        rows,
    })
}

fn pct(a: f64, b: f64) -> String {
    if a == 0.0 {
        return "-".into();
    }
    let p = 100.0 * (b - a) / a;
    if p.abs() < 9.95 {
        format!("{p:+.1}%")
    } else {
        format!("{p:+.0}%")
    }
}

impl BusReport {
    /// Whether the device offers VIRTIO_F_RING_PACKED.
    pub fn packed_offered(&self) -> bool {
        self.offered & (1u64 << RING_PACKED_BIT) != 0
    }

    /// The measurement of `c`, if it ran.
    pub fn find(&self, c: &Config) -> Option<&Measurement> {
        self.rows
            .iter()
            .find(|r| r.config == *c)
            .and_then(|r| match &r.outcome {
                Outcome::Measured(m) => Some(&**m),
                _ => None,
            })
    }

    /// Bytes on the wire of `t` under the report's overheads.
    pub fn wire(&self, t: &Totals) -> u64 {
        self.opts.wire.wire_bytes(&t.pcie)
    }

    /// Whether every configuration that should run ran (not-available rows are fine).
    pub fn ok(&self) -> bool {
        !self
            .rows
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }

    fn model_lines(&self) -> String {
        let w = &self.opts.wire;
        format!(
            "model: MPS {} B, MRRS {} B (Device Control), read completions <= MPS split at RCB {} B; per TLP: {}/{} B request header \
             (3/4 DW), {} B completion header, {} B link framing (seq + LCRC + STP/END), {} B DLLP share (Ack/UpdateFC); payload in whole dwords\n\
             split ring descriptors: {}",
            self.opts.mps,
            self.opts.mrrs,
            PcieModel::default().rcb,
            w.header_3dw,
            w.header_4dw,
            w.completion_header,
            w.link_overhead,
            w.dllp_share,
            if self.opts.desc_runs {
                "the heads of adjacent chains read in one request (up to 16)"
            } else {
                "each read on its own (--no-desc-runs)"
            }
        )
    }

    /// The human-readable matrix plus the packed-vs-split comparison.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "vdpa-emu bench bus: PCIe traffic per packet (1 TX + 1 RX through loopback, queue size {QUEUE_SIZE}), {} packets per row after {} warm-up",
            self.opts.packets, self.opts.warmup
        );
        let _ = writeln!(t, "{}", self.model_lines());
        let _ = writeln!(
            t,
            "request TLPs per packet by kind: desc = descriptor reads, idx_rd = ring index reads (avail idx/ring, used_event/flags), \
             idx_wr = index/flag stores (used idx, avail_event), used_wb = used write-back, pkt = packet data, log = dirty log"
        );
        let _ = writeln!(
            t,
            "TLPs = device requests, cpl = read completions, wire = bytes on the link (both directions); ring = desc + idx + used_wb (requests + completions)"
        );
        let _ = writeln!(
            t,
            "kicks = doorbell MMIO writes, irqs = MSI-X messages (not in the DMA totals)\n"
        );
        let _ = writeln!(
            t,
            "{:<6} {:>5} {:>5} {:>5} {:>4} | {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} | {:>6} {:>6} {:>7} | {:>6} {:>6} | {:>5} {:>5}",
            "ring",
            "frame",
            "batch",
            "evidx",
            "log",
            "desc",
            "idx_rd",
            "idx_wr",
            "used_wb",
            "pkt",
            "log",
            "TLPs",
            "cpl",
            "wire B",
            "ring",
            "ring B",
            "kicks",
            "irqs"
        );
        let _ = writeln!(t, "{}", "-".repeat(129));
        let mut last_group = None;
        for r in &self.rows {
            let c = &r.config;
            let group = (c.logging, c.frame);
            if last_group.is_some_and(|g| g != group) {
                let _ = writeln!(t);
            }
            last_group = Some(group);
            let head = format!(
                "{:<6} {:>5} {:>5} {:>5} {:>4}",
                c.ring.name(),
                c.frame,
                c.batch,
                if c.event_idx { "on" } else { "off" },
                c.logging.label()
            );
            match &r.outcome {
                Outcome::Measured(m) => {
                    let pp = |v: u64| m.per_packet(v);
                    let cats: Vec<String> = Category::ALL
                        .iter()
                        .map(|&k| {
                            format!(
                                "{:>w$.2}",
                                pp(m.get(k).pcie.tlps),
                                w = if k == Category::UsedWriteBack { 7 } else { 6 }
                            )
                        })
                        .collect();
                    let tot = m.total();
                    let ring = m.ring();
                    let _ = writeln!(
                        t,
                        "{head} | {} | {:>6.2} {:>6.2} {:>7.1} | {:>6.2} {:>6.1} | {:>5.2} {:>5.2}",
                        cats.join(" "),
                        pp(tot.pcie.tlps),
                        pp(tot.pcie.completions),
                        pp(self.wire(&tot)),
                        pp(ring.pcie.all_tlps()),
                        pp(self.wire(&ring)),
                        pp(m.kicks),
                        pp(m.interrupts)
                    );
                }
                Outcome::NotAvailable(why) => {
                    let _ = writeln!(t, "{head} | {why}");
                }
                Outcome::Failed(e) => {
                    let _ = writeln!(t, "{head} | FAILED: {e}");
                }
            }
        }
        t.push('\n');
        t.push_str(&self.comparison());
        t.push('\n');
        t.push_str(&self.logging_summary());
        t
    }

    /// What dirty logging adds per packet, by granularity, against the same run with logging off.
    pub fn logging_summary(&self) -> String {
        let mut t = String::new();
        let grans: Vec<u64> = self
            .opts
            .logging
            .iter()
            .filter_map(|l| {
                if let Logging::Granule(g) = l {
                    Some(*g)
                } else {
                    None
                }
            })
            .collect();
        let rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| {
                r.config.logging == Logging::Off && matches!(r.outcome, Outcome::Measured(_))
            })
            .collect();
        if grans.is_empty() || rows.is_empty() {
            return t;
        }
        let _ = writeln!(t, "dirty logging, per packet: log-write TLPs, log bytes on the wire, and all DMA bytes on the wire added over logging off");
        let mut head = format!("{:<34} |", "config");
        for g in &grans {
            let l = Logging::Granule(*g).label();
            let _ = write!(
                head,
                " {:>7} {:>7} {:>7} |",
                format!("{l} TLP"),
                format!("{l} B"),
                format!("{l} +%")
            );
        }
        let _ = writeln!(t, "{}", head.trim_end_matches(" |"));
        for r in rows {
            let Outcome::Measured(off) = &r.outcome else {
                continue;
            };
            let c = r.config;
            let mut line = format!(
                "{:<34} |",
                format!(
                    "{} {}B b{} evidx-{}",
                    c.ring.name(),
                    c.frame,
                    c.batch,
                    if c.event_idx { "on" } else { "off" }
                )
            );
            let base = off.per_packet(self.wire(&off.total()));
            for g in &grans {
                match self.find(&Config {
                    logging: Logging::Granule(*g),
                    ..c
                }) {
                    Some(m) => {
                        let log = m.get(Category::LogWrite);
                        let all = m.per_packet(self.wire(&m.total()));
                        let _ = write!(
                            line,
                            " {:>7.2} {:>7.1} {:>7} |",
                            m.per_packet(log.pcie.tlps),
                            m.per_packet(self.wire(&log)),
                            pct(base, all)
                        );
                    }
                    None => {
                        let _ = write!(line, " {:>7} {:>7} {:>7} |", "-", "-", "-");
                    }
                }
            }
            let _ = writeln!(t, "{}", line.trim_end_matches(" |"));
        }
        t
    }

    /// Packed vs split per configuration (ring-metadata TLPs and all bytes on the wire).
    pub fn comparison(&self) -> String {
        let mut t = String::new();
        let pairs: Vec<(&Config, &Measurement, &Measurement)> = self
            .rows
            .iter()
            .filter(|r| r.config.ring == Ring::Split)
            .filter_map(
                |r| match (&r.outcome, self.find(&r.config.with_ring(Ring::Packed))) {
                    (Outcome::Measured(s), Some(p)) => Some((&r.config, &**s, p)),
                    _ => None,
                },
            )
            .collect();
        if pairs.is_empty() {
            let why = if self.packed_offered() {
                "the packed rows did not run (see the table)"
            } else {
                "not available yet: the device does not offer VIRTIO_F_RING_PACKED (bit 34)"
            };
            let _ = writeln!(t, "packed vs split: {why}");
            return t;
        }
        let _ = writeln!(t, "packed vs split, per packet: ring-metadata TLPs (requests + completions), ring bytes on the wire, all DMA bytes on the wire");
        if pairs
            .iter()
            .any(|(_, s, p)| s.get(Category::PacketData).pcie != p.get(Category::PacketData).pcie)
        {
            let _ = writeln!(
                t,
                "(packet data differs between the rings only by where the driver models place their buffers: a buffer straddling a 4 KiB \
                 boundary costs one more TLP; the ring columns compare the layouts)"
            );
        }
        let _ = writeln!(
            t,
            "{:<34} | {:>6} {:>6} {:>6} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6}",
            "config",
            "split",
            "packed",
            "delta",
            "split",
            "packed",
            "delta",
            "split",
            "packed",
            "delta"
        );
        for (c, s, p) in pairs {
            let (sr, pr) = (
                s.per_packet(s.ring().pcie.all_tlps()),
                p.per_packet(p.ring().pcie.all_tlps()),
            );
            let (srb, prb) = (
                s.per_packet(self.wire(&s.ring())),
                p.per_packet(self.wire(&p.ring())),
            );
            let (sw, pw) = (
                s.per_packet(self.wire(&s.total())),
                p.per_packet(self.wire(&p.total())),
            );
            let label = format!(
                "{}B b{} evidx-{} log-{}",
                c.frame,
                c.batch,
                if c.event_idx { "on" } else { "off" },
                c.logging.label()
            );
            let _ = writeln!(
                t,
                "{label:<34} | {sr:>6.2} {pr:>6.2} {:>6} | {srb:>7.1} {prb:>7.1} {:>6} | {sw:>7.1} {pw:>7.1} {:>6}",
                pct(sr, pr),
                pct(srb, prb),
                pct(sw, pw)
            );
        }
        t
    }

    fn row_json(&self, r: &Row) -> Value {
        let c = &r.config;
        let mut v = json!({
            "ring": c.ring.name(),
            "frame": c.frame,
            "batch": c.batch,
            "event_idx": c.event_idx,
            "logging": c.logging.label(),
            "log_granularity": match c.logging { Logging::Off => 0, Logging::Granule(g) => g },
        });
        match &r.outcome {
            Outcome::Measured(m) => {
                let cat = |t: &Totals| {
                    json!({
                        "transactions": m.per_packet(t.traffic.transactions),
                        "bytes": m.per_packet(t.traffic.bytes),
                        "tlps": m.per_packet(t.pcie.tlps),
                        "completions": m.per_packet(t.pcie.completions),
                        "payload_bytes": m.per_packet(t.pcie.payload_bytes),
                        "wire_bytes": m.per_packet(self.wire(t)),
                    })
                };
                let mut per = serde_json::Map::new();
                for k in Category::ALL {
                    per.insert(k.name().into(), cat(&m.get(k)));
                }
                v["status"] = json!("measured");
                v["packets"] = json!(m.packets);
                v["per_packet"] = json!({
                    "by_kind": per,
                    "ring": cat(&m.ring()),
                    "total": cat(&m.total()),
                    "kicks": m.per_packet(m.kicks),
                    "interrupts": m.per_packet(m.interrupts),
                });
            }
            Outcome::NotAvailable(why) => {
                v["status"] = json!("not_available");
                v["reason"] = json!(why);
            }
            Outcome::Failed(e) => {
                v["status"] = json!("failed");
                v["reason"] = json!(e);
            }
        }
        v
    }

    /// The matrix as JSON (per-packet values).
    pub fn json(&self) -> String {
        let w = &self.opts.wire;
        let v = json!({
            "description": "PCIe traffic per packet (1 TX + 1 RX through loopback) by kind of DMA",
            "model": {
                "mps": self.opts.mps,
                "mrrs": self.opts.mrrs,
                "rcb": w.rcb,
                "header_3dw": w.header_3dw,
                "header_4dw": w.header_4dw,
                "completion_header": w.completion_header,
                "link_overhead": w.link_overhead,
                "dllp_share": w.dllp_share,
                "split_desc_runs": self.opts.desc_runs,
            },
            "queue_size": QUEUE_SIZE,
            "packets_per_config": self.opts.packets,
            "warmup": self.opts.warmup,
            "offered_features": format!("{:#x}", self.offered),
            "packed_offered": self.packed_offered(),
            "rows": self.rows.iter().map(|r| self.row_json(r)).collect::<Vec<_>>(),
        });
        crate::report_json::to_json(&v)
    }

    /// The matrix as CSV, one row per configuration, per-packet values.
    pub fn csv(&self) -> String {
        let mut t = String::new();
        let mut head = vec![
            "ring",
            "frame",
            "batch",
            "event_idx",
            "logging",
            "status",
            "packets",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        let fields = ["transactions", "tlps", "completions", "bytes", "wire_bytes"];
        for k in Category::ALL
            .iter()
            .map(|k| k.name())
            .chain(["ring", "total"])
        {
            for f in fields {
                head.push(format!("{k}_{f}"));
            }
        }
        head.push("kicks".into());
        head.push("interrupts".into());
        let _ = writeln!(t, "{}", head.join(","));
        for r in &self.rows {
            let c = &r.config;
            let mut cols = vec![
                c.ring.name().to_string(),
                c.frame.to_string(),
                c.batch.to_string(),
                c.event_idx.to_string(),
                c.logging.label(),
            ];
            match &r.outcome {
                Outcome::Measured(m) => {
                    cols.push("measured".into());
                    cols.push(m.packets.to_string());
                    let all: Vec<Totals> = Category::ALL
                        .iter()
                        .map(|&k| m.get(k))
                        .chain([m.ring(), m.total()])
                        .collect();
                    for tot in all {
                        for v in [
                            tot.traffic.transactions,
                            tot.pcie.tlps,
                            tot.pcie.completions,
                            tot.traffic.bytes,
                            self.wire(&tot),
                        ] {
                            cols.push(format!("{:.4}", m.per_packet(v)));
                        }
                    }
                    cols.push(format!("{:.4}", m.per_packet(m.kicks)));
                    cols.push(format!("{:.4}", m.per_packet(m.interrupts)));
                }
                Outcome::NotAvailable(_) | Outcome::Failed(_) => {
                    cols.push(
                        if matches!(r.outcome, Outcome::Failed(_)) {
                            "failed"
                        } else {
                            "not_available"
                        }
                        .into(),
                    );
                    cols.resize(head.len(), String::new());
                }
            }
            let _ = writeln!(t, "{}", cols.join(","));
        }
        t
    }
}

fn parse_logging(s: &str) -> Result<Logging, String> {
    let t = s.trim().to_ascii_uppercase();
    if t == "OFF" {
        return Ok(Logging::Off);
    }
    let (num, mult) = match t.trim_end_matches('B').trim_end_matches("I") {
        x if x.ends_with('K') => (&x[..x.len() - 1], 1u64 << 10),
        x if x.ends_with('M') => (&x[..x.len() - 1], 1 << 20),
        x if x.ends_with('G') => (&x[..x.len() - 1], 1 << 30),
        x => (x, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|g| *g >= 4096 && g.is_power_of_two())
        .map(Logging::Granule)
        .ok_or_else(|| format!("dirty-log setting {s:?}: use off or a power-of-two granularity >= 4K (4K, 64K, 2M)"))
}

fn parse_ring(s: &str) -> Result<Ring, String> {
    match s {
        "split" => Ok(Ring::Split),
        "packed" => Ok(Ring::Packed),
        _ => Err(format!("ring {s:?}: use split or packed")),
    }
}

fn parse_onoff(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

/// Command-line arguments of `vdpa-emu bench bus`.
#[derive(clap::Args, Clone, Debug)]
pub struct BusArgs {
    /// Report format.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    pub format: String,
    /// Also write an SVG chart (split vs packed, TLPs per packet by kind) to this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Max_Payload_Size programmed into the function's Device Control register (128..4096).
    #[arg(long, default_value_t = 128)]
    pub mps: u32,
    /// Max_Read_Request_Size programmed into Device Control (128..4096).
    #[arg(long, default_value_t = 512)]
    pub mrrs: u32,
    /// Packets measured per configuration (after the warm-up).
    #[arg(long, default_value_t = 4096)]
    pub packets: u64,
    /// Packets sent before measuring.
    #[arg(long, default_value_t = 512)]
    pub warmup: u64,
    /// Ring layouts.
    #[arg(long, value_delimiter = ',', default_value = "split,packed", value_parser = parse_ring)]
    pub rings: Vec<Ring>,
    /// Frame sizes in bytes (60..=1514).
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub frames: Vec<usize>,
    /// Batch sizes: frames per doorbell and chains per device pass (1..=128).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<u16>,
    /// VIRTIO_F_EVENT_IDX settings.
    #[arg(long, value_delimiter = ',', default_value = "off,on", value_parser = parse_onoff)]
    pub event_idx: Vec<bool>,
    /// Dirty logging: off or a granularity.
    #[arg(long, value_delimiter = ',', default_value = "off,4K,2M", value_parser = parse_logging)]
    pub log: Vec<Logging>,
    /// Bytes of Ack/UpdateFC DLLP traffic charged per TLP in the bytes-on-the-wire figures.
    #[arg(long, default_value_t = PcieModel::default().dllp_share)]
    pub dllp_share: u32,
    /// Model a split ring engine that reads every descriptor on its own, instead of the head
    /// descriptors of adjacent chains in one read (`serve --no-desc-runs`).
    #[arg(long)]
    pub no_desc_runs: bool,
}

/// `vdpa-emu bench bus`: runs the matrix, prints it, writes the chart.
pub fn cli(a: &BusArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    if let Some(f) = a
        .frames
        .iter()
        .find(|f| !(frames::MIN_FRAME..=1514).contains(*f))
    {
        eprintln!(
            "vdpa-emu bench bus: frame size {f}: use {}..=1514",
            frames::MIN_FRAME
        );
        return ExitCode::from(2);
    }
    let opts = BusBenchOptions {
        mps: a.mps,
        mrrs: a.mrrs,
        packets: a.packets,
        warmup: a.warmup,
        rings: a.rings.clone(),
        frames: a.frames.clone(),
        batches: a.batches.clone(),
        event_idx: a.event_idx.clone(),
        logging: a.log.clone(),
        wire: PcieModel {
            dllp_share: a.dllp_share,
            ..PcieModel::default()
        },
        desc_runs: !a.no_desc_runs,
    };
    let r = match run_with_progress(&opts, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vdpa-emu bench bus: {e}");
            return ExitCode::from(2);
        }
    };
    match a.format.as_str() {
        "json" => println!("{}", r.json()),
        "csv" => print!("{}", r.csv()),
        _ => print!("{}", r.table()),
    }
    if let Some(p) = &a.plot {
        if let Err(e) = std::fs::write(p, r.svg()) {
            eprintln!("vdpa-emu bench bus: writing {}: {e}", p.display());
            return ExitCode::from(2);
        }
    }
    if r.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!("vdpa-emu bench bus: some configurations failed (see the report)");
        ExitCode::FAILURE
    }
}
