//! `stats`: one snapshot of a live device's state and counters, as JSON and as a table.

use crate::pcap::CaptureSummary;
use bar_registers::virtio::{device_status, feature_name};
use device::Device;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One queue's registers and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub queue: u16,
    /// `rx<P>`, `tx<P>` or `ctrl`.
    pub role: String,
    pub enabled: bool,
    pub size: u16,
    pub last_avail: u16,
    pub last_used: u16,
    pub doorbells: u64,
    pub chains: u64,
    pub frames: u64,
    pub bytes: u64,
    pub interrupts: u64,
    pub interrupts_suppressed: u64,
    /// TX services that hit the service budget and let others have the device lock.
    #[serde(default)]
    pub budget_yields: u64,
}

/// The device as `vdpa-emu ctl stats` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// device_status (virtio 1.2 2.1) and its bit names.
    pub status: u8,
    pub status_bits: Vec<String>,
    /// Why the device is in DEVICE_NEEDS_RESET, if it is.
    pub fault: Option<String>,
    /// The device's profile (docs/profiles.md): its name, its feature set, and what the device
    /// offers now (the profile's set less what a quirk removes).
    #[serde(default)]
    pub profile: String,
    #[serde(default)]
    pub profile_features: u64,
    #[serde(default)]
    pub offered_features: u64,
    pub negotiated_features: u64,
    pub negotiated_feature_names: Vec<String>,
    pub link_up: bool,
    pub active_queue_pairs: u16,
    /// Receive-side scaling as the driver set it (`None`: off; steering by flows).
    #[serde(default)]
    pub rss: Option<RssStats>,
    pub quirks: Vec<String>,
    pub dma_mappings: usize,
    /// Every device-wide counter by its stable name (fault kinds included).
    pub counters: BTreeMap<String, u64>,
    pub queues: Vec<QueueStats>,
    pub iommu: BTreeMap<String, u64>,
    pub dirty_log: BTreeMap<String, u64>,
    pub capture: Option<CaptureSummary>,
}

/// The live RSS configuration (virtio 1.2 5.1.6.5.7.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssStats {
    /// VIRTIO_NET_RSS_HASH_TYPE_* enabled, by name.
    pub hash_types: Vec<String>,
    pub key_len: u8,
    pub indirection_table_len: usize,
    /// Indirection table entries per queue pair.
    pub entries_per_pair: Vec<usize>,
    pub unclassified_pair: u16,
}

impl RssStats {
    fn of(cfg: &device::net::rss::RssConfig, pairs: u16) -> RssStats {
        use virtio_bindings::virtio_net as n;
        const NAMES: [(u32, &str); 6] = [
            (n::VIRTIO_NET_RSS_HASH_TYPE_IPv4, "IPv4"),
            (n::VIRTIO_NET_RSS_HASH_TYPE_TCPv4, "TCPv4"),
            (n::VIRTIO_NET_RSS_HASH_TYPE_UDPv4, "UDPv4"),
            (n::VIRTIO_NET_RSS_HASH_TYPE_IPv6, "IPv6"),
            (n::VIRTIO_NET_RSS_HASH_TYPE_TCPv6, "TCPv6"),
            (n::VIRTIO_NET_RSS_HASH_TYPE_UDPv6, "UDPv6"),
        ];
        let mut per_pair = vec![0; usize::from(pairs)];
        for &q in &cfg.table {
            if let Some(c) = per_pair.get_mut(usize::from(q)) {
                *c += 1;
            }
        }
        RssStats {
            hash_types: NAMES
                .iter()
                .filter(|(b, _)| cfg.hash_types & b != 0)
                .map(|(_, s)| s.to_string())
                .collect(),
            key_len: cfg.key_len,
            indirection_table_len: cfg.table.len(),
            entries_per_pair: per_pair,
            unclassified_pair: cfg.unclassified,
        }
    }
}

const STATUS_BITS: [(u8, &str); 6] = [
    (device_status::ACKNOWLEDGE, "ACKNOWLEDGE"),
    (device_status::DRIVER, "DRIVER"),
    (device_status::FEATURES_OK, "FEATURES_OK"),
    (device_status::DRIVER_OK, "DRIVER_OK"),
    (device_status::DEVICE_NEEDS_RESET, "DEVICE_NEEDS_RESET"),
    (device_status::FAILED, "FAILED"),
];

/// Queue `q`'s role in a device with `pairs` queue pairs (RX 2p, TX 2p+1, control last).
pub fn queue_role(q: u16, pairs: u16) -> String {
    if q >= 2 * pairs {
        "ctrl".into()
    } else if q.is_multiple_of(2) {
        format!("rx{}", q / 2)
    } else {
        format!("tx{}", q / 2)
    }
}

impl StatsReport {
    /// A snapshot of `dev` (each part read under the device lock; the parts are not one
    /// atomic snapshot, as with any NIC's counters).
    pub fn of(dev: &Device, capture: Option<CaptureSummary>) -> Self {
        let c = dev.counters();
        let status = dev.status();
        let features = dev.negotiated_features();
        let pairs = dev.layout().params.queue_pairs;
        let queues = (0..dev.layout().num_queues)
            .filter_map(|q| {
                let s = dev.queue(q)?;
                let qc = c.queues.get(usize::from(q)).cloned().unwrap_or_default();
                Some(QueueStats {
                    queue: q,
                    role: queue_role(q, pairs),
                    enabled: s.enabled,
                    size: s.size,
                    last_avail: s.last_avail,
                    last_used: s.last_used,
                    doorbells: qc.doorbells,
                    chains: qc.chains,
                    frames: qc.frames,
                    bytes: qc.bytes,
                    interrupts: qc.interrupts,
                    interrupts_suppressed: qc.interrupts_suppressed,
                    budget_yields: qc.budget_yields,
                })
            })
            .collect();
        let io = dev.iommu_stats();
        let log = dev.log_stats();
        StatsReport {
            status,
            status_bits: STATUS_BITS
                .iter()
                .filter(|(b, _)| status & b != 0)
                .map(|(_, n)| n.to_string())
                .collect(),
            fault: dev.fault().map(|f| f.to_string()),
            profile: dev.profile().name,
            profile_features: dev.profile().features,
            offered_features: dev.offered_features(),
            negotiated_features: features,
            negotiated_feature_names: (0..64)
                .filter(|b| features & (1u64 << b) != 0)
                .map(|b| feature_name(b).map_or(format!("bit {b}"), str::to_string))
                .collect(),
            link_up: dev.link_up(),
            active_queue_pairs: dev.active_queue_pairs(),
            rss: dev
                .rss_config()
                .map(|c| RssStats::of(&c, dev.layout().params.queue_pairs)),
            quirks: dev.quirks().iter().map(|q| q.name().to_string()).collect(),
            dma_mappings: dev.mapping_count(),
            counters: c
                .scalars()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            queues,
            iommu: [
                ("iotlb_hits", io.iotlb_hits),
                ("iotlb_misses", io.iotlb_misses),
                ("iotlb_invalidations", io.iotlb_invalidations),
                ("iommu_faults", io.faults()),
                ("iommu_faults_injected", io.faults_injected),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            dirty_log: [
                ("pages_marked", log.pages_marked),
                ("log_writes", log.log_writes),
                ("beyond_end", log.beyond_end),
                ("faults", log.faults),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            capture,
        }
    }

    /// The report as a terminal table: state first, then the per-queue table, then every
    /// non-zero counter (zeros are left out so that what happened stands out; `--json` has all).
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "status {:#04x} {}  link {}  queue pairs {}  DMA mappings {}",
            self.status,
            if self.status_bits.is_empty() {
                "(reset)".to_string()
            } else {
                self.status_bits.join("|")
            },
            if self.link_up { "up" } else { "down" },
            self.active_queue_pairs,
            self.dma_mappings
        );
        let _ = writeln!(
            o,
            "profile {}  offered features {:#x}  negotiated {:#x}",
            self.profile, self.offered_features, self.negotiated_features
        );
        if let Some(f) = &self.fault {
            let _ = writeln!(o, "NEEDS RESET: {f}");
        }
        if let Some(r) = &self.rss {
            let _ = writeln!(
                o,
                "RSS on: {} hash, {}-byte key, {}-entry table (entries per pair {:?}), unclassified -> pair {}",
                r.hash_types.join("|"),
                r.key_len,
                r.indirection_table_len,
                r.entries_per_pair,
                r.unclassified_pair
            );
        }
        if !self.quirks.is_empty() {
            let _ = writeln!(o, "quirks on: {}", self.quirks.join(", "));
        }
        if let Some(c) = &self.capture {
            let _ = writeln!(
                o,
                "capturing into {} ({} frames, {} bytes)",
                c.path.display(),
                c.frames,
                c.bytes
            );
        }
        let _ = writeln!(
            o,
            "\n{:>5} {:<5} {:<3} {:>5} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>10} {:>10}",
            "queue",
            "role",
            "on",
            "size",
            "avail",
            "used",
            "doorbells",
            "chains",
            "frames",
            "bytes",
            "irqs",
            "irqs_supp"
        );
        for q in &self.queues {
            let _ = writeln!(
                o,
                "{:>5} {:<5} {:<3} {:>5} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>10} {:>10}",
                q.queue,
                q.role,
                if q.enabled { "yes" } else { "no" },
                q.size,
                q.last_avail,
                q.last_used,
                q.doorbells,
                q.chains,
                q.frames,
                q.bytes,
                q.interrupts,
                q.interrupts_suppressed
            );
        }
        let nonzero: Vec<String> = self
            .counters
            .iter()
            .chain(self.iommu.iter())
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            o,
            "\ncounters (non-zero): {}",
            if nonzero.is_empty() {
                "none".to_string()
            } else {
                nonzero.join(", ")
            }
        );
        o
    }
}
