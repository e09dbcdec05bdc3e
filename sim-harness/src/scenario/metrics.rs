//! What an expectation can observe: the metric catalog, parsed from dotted paths such as
//! `counters.tx_frames`, `fault.chain_too_long`, `tx.0.last_used` or `migration.missed_dirty_pages`.
//! Parsing checks names and indexes against the device the metric is read from, so an unknown
//! counter or an out-of-range queue is a load-time error.

use bar_registers::virtio::OFFERED_FEATURES;
use device::fault::FAULT_KINDS;
use device::DeviceCounters;

/// A value an expectation compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Int(u64),
    Bool(bool),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Whether a metric is an integer or a boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Int,
    Bool,
}

/// device_status fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusField {
    Value,
    Bit(u8),
}

/// Per-queue fields: the device's snapshot and counters, and the used index in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueField {
    Enabled,
    Size,
    LastAvail,
    LastUsed,
    MsixVector,
    Doorbells,
    Chains,
    Frames,
    Bytes,
    Interrupts,
    InterruptsSuppressed,
    /// used->idx as the driver reads it from guest memory.
    UsedIdx,
}

const QUEUE_FIELDS: &[(&str, QueueField)] = &[
    ("enabled", QueueField::Enabled),
    ("size", QueueField::Size),
    ("last_avail", QueueField::LastAvail),
    ("last_used", QueueField::LastUsed),
    ("msix_vector", QueueField::MsixVector),
    ("doorbells", QueueField::Doorbells),
    ("chains", QueueField::Chains),
    ("frames", QueueField::Frames),
    ("bytes", QueueField::Bytes),
    ("interrupts", QueueField::Interrupts),
    ("interrupts_suppressed", QueueField::InterruptsSuppressed),
    ("used_idx", QueueField::UsedIdx),
];

/// Frame accounting fields (see [`super::ledger::FrameStats`]).
pub const FRAME_FIELDS: &[&str] = &[
    "sent",
    "delivered",
    "lost",
    "outstanding",
    "duplicated",
    "reordered",
    "corrupted",
    "misdelivered",
];

/// Migration report fields (the last `migrate` step).
pub const MIGRATION_FIELDS: &[&str] = &[
    "count",
    "rounds",
    "converged",
    "pages_copied",
    "zero_pages",
    "estimated_downtime_us",
    "log_bytes",
    "log_writes",
    "missed_dirty_pages",
    "memory_mismatch_pages",
    "downtime_us",
    "pending_frames",
    "errors",
    "announce_acked",
];

const STATUS_FIELDS: &[(&str, StatusField)] = &[
    ("value", StatusField::Value),
    ("acknowledge", StatusField::Bit(1)),
    ("driver", StatusField::Bit(2)),
    ("driver_ok", StatusField::Bit(4)),
    ("features_ok", StatusField::Bit(8)),
    ("needs_reset", StatusField::Bit(64)),
    ("failed", StatusField::Bit(128)),
];

/// One observable quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    /// A scalar of `Device::counters()` by name.
    Counter(&'static str),
    /// `counters().fault(kind)`.
    Fault(&'static str),
    /// Every fault counter together.
    FaultAny,
    Status(StatusField),
    Queue {
        queue: u16,
        field: QueueField,
    },
    /// Interrupts the driver saw on a vector.
    IrqVector(u16),
    IrqTotal,
    /// Device config status: LINK_UP.
    ConfigLinkUp,
    /// Device config status: ANNOUNCE.
    ConfigAnnounce,
    /// Device config status word.
    ConfigStatus,
    /// Whether a feature bit was negotiated.
    Feature(u32),
    FeaturesNegotiated,
    ActiveQueuePairs,
    InboxLen,
    InboxDropped,
    IommuFaults,
    LogWrites,
    LogPagesMarked,
    LogBeyondEnd,
    LogFaults,
    AnnounceRequested,
    AnnounceAcked,
    CtrlLastAck,
    /// Frame accounting over the whole scenario (`frames.*`) or the latest step that sent
    /// frames (`traffic.*`).
    Frames {
        latest_step: bool,
        field: &'static str,
    },
    Migration(&'static str),
    /// Whether the step (the one the expectation is attached to, or the last one) failed.
    StepError,
}

/// Metric families, for documentation and error hints.
pub const FAMILIES: &[&str] = &[
    "counters.<name>",
    "fault.<kind> | fault.any",
    "status.<value|acknowledge|driver|driver_ok|features_ok|needs_reset|failed>",
    "queue.<q>.<field> | rx.<pair>.<field> | tx.<pair>.<field> | ctrlq.<field>",
    "interrupts.<config|total> | interrupts.vector.<n>",
    "config.<link_up|announce|status>",
    "features.<name> | features.negotiated",
    "active_queue_pairs",
    "inbox.<len|dropped>",
    "iommu.faults",
    "log.<writes|pages_marked|beyond_end|faults>",
    "announce.<requested|acked>",
    "ctrl.last_ack",
    "frames.<field> | traffic.<field>",
    "migration.<field>",
    "step.error",
];

/// What a metric is checked against when parsed: the device it is read from.
#[derive(Debug, Clone, Copy)]
pub struct DeviceShape {
    /// Queue pairs of the device (queues = 2 * pairs + 1).
    pub pairs: u16,
    /// A served device: only what its control socket's `stats` reports can be read.
    pub served: bool,
}

impl DeviceShape {
    fn num_queues(self) -> u16 {
        2 * self.pairs + 1
    }
}

impl Metric {
    /// Integer or boolean.
    pub fn kind(&self) -> ValueKind {
        match self {
            Metric::Status(StatusField::Bit(_))
            | Metric::Queue {
                field: QueueField::Enabled,
                ..
            }
            | Metric::ConfigLinkUp
            | Metric::ConfigAnnounce
            | Metric::Feature(_)
            | Metric::AnnounceRequested
            | Metric::AnnounceAcked
            | Metric::StepError => ValueKind::Bool,
            Metric::Migration(f) if *f == "announce_acked" || *f == "converged" => ValueKind::Bool,
            _ => ValueKind::Int,
        }
    }

    /// Whether the metric belongs to one device (else it is scenario-wide).
    pub fn per_device(&self) -> bool {
        !matches!(
            self,
            Metric::Frames { .. } | Metric::Migration(_) | Metric::StepError
        )
    }

    /// Whether a served device's control socket (`stats`) reports it.
    pub fn served_ok(&self) -> bool {
        match self {
            Metric::Queue { field, .. } => {
                !matches!(field, QueueField::UsedIdx | QueueField::MsixVector)
            }
            Metric::Counter(_)
            | Metric::Fault(_)
            | Metric::FaultAny
            | Metric::Status(_)
            | Metric::ConfigLinkUp
            | Metric::Feature(_)
            | Metric::FeaturesNegotiated
            | Metric::ActiveQueuePairs
            | Metric::IommuFaults
            | Metric::LogWrites
            | Metric::LogPagesMarked
            | Metric::LogBeyondEnd
            | Metric::LogFaults
            | Metric::AnnounceRequested => true,
            Metric::Frames { .. } | Metric::Migration(_) | Metric::StepError => true,
            _ => false,
        }
    }

    /// Parses a dotted path for a device of shape `dev`.
    pub fn parse(path: &str, dev: DeviceShape) -> Result<Metric, String> {
        let m = Self::parse_any(path, dev)?;
        if dev.served && !m.served_ok() {
            return Err(format!(
                "`{path}` is not known for a served device (it is the driver's view or a ring the scenario does not own); a served device reports counters, fault, status, queue/rx/tx/ctrlq (not used_idx or msix_vector), config.link_up, features, active_queue_pairs, iommu.faults, log and announce.requested"
            ));
        }
        Ok(m)
    }

    fn parse_any(path: &str, dev: DeviceShape) -> Result<Metric, String> {
        let parts: Vec<&str> = path.split('.').collect();
        let one = |names: &[&'static str], what: &str| -> Result<&'static str, String> {
            pick(parts.get(1..).unwrap_or_default(), names, what)
        };
        match parts.as_slice() {
            ["counters", rest @ ..] => {
                let names: Vec<&'static str> = DeviceCounters::default().scalars().into_iter().map(|(k, _)| k).collect();
                pick(rest, &names, "counter").map(Metric::Counter)
            }
            ["fault", "any"] => Ok(Metric::FaultAny),
            ["fault", rest @ ..] => pick(rest, FAULT_KINDS, "fault kind").map(Metric::Fault),
            ["status", rest @ ..] => {
                let names: Vec<&str> = STATUS_FIELDS.iter().map(|(n, _)| *n).collect();
                let n = pick(rest, &names, "status field")?;
                Ok(Metric::Status(STATUS_FIELDS.iter().find(|(k, _)| *k == n).map_or(StatusField::Value, |(_, f)| *f)))
            }
            ["queue", q, rest @ ..] => {
                let queue = index(q, dev.num_queues(), "queue")?;
                Ok(Metric::Queue { queue, field: queue_field(rest)? })
            }
            ["rx", p, rest @ ..] => Ok(Metric::Queue { queue: 2 * index(p, dev.pairs, "pair")?, field: queue_field(rest)? }),
            ["tx", p, rest @ ..] => Ok(Metric::Queue { queue: 2 * index(p, dev.pairs, "pair")? + 1, field: queue_field(rest)? }),
            ["ctrlq", rest @ ..] => Ok(Metric::Queue { queue: dev.num_queues() - 1, field: queue_field(rest)? }),
            ["interrupts", "config"] => Ok(Metric::IrqVector(0)),
            ["interrupts", "total"] => Ok(Metric::IrqTotal),
            ["interrupts", "vector", n] => Ok(Metric::IrqVector(index(n, dev.num_queues() + 1, "MSI-X vector")?)),
            ["interrupts", ..] => Err(format!("unknown interrupts metric `{path}`: use interrupts.config, interrupts.total or interrupts.vector.<n>")),
            ["config", ..] => match one(&["link_up", "announce", "status"], "config field")? {
                "link_up" => Ok(Metric::ConfigLinkUp),
                "announce" => Ok(Metric::ConfigAnnounce),
                _ => Ok(Metric::ConfigStatus),
            },
            ["features", "negotiated"] => Ok(Metric::FeaturesNegotiated),
            ["features", n] if !n.chars().any(|c| c.is_ascii_uppercase()) => feature_bit(n).map(Metric::Feature).ok_or_else(|| {
                let known: Vec<String> = OFFERED_FEATURES.iter().map(|f| short_feature_name(f.name)).collect();
                format!("unknown feature `{n}`; known: negotiated, {}", known.join(", "))
            }),
            ["features", ..] => {
                Err(format!("unknown features metric `{path}`: use features.negotiated or features.<name> (lower case, e.g. features.mrg_rxbuf)"))
            }
            ["active_queue_pairs"] => Ok(Metric::ActiveQueuePairs),
            ["inbox", ..] => one(&["len", "dropped"], "inbox field").map(|n| if n == "len" { Metric::InboxLen } else { Metric::InboxDropped }),
            ["iommu", "faults"] => Ok(Metric::IommuFaults),
            ["log", ..] => Ok(match one(&["writes", "pages_marked", "beyond_end", "faults"], "log field")? {
                "writes" => Metric::LogWrites,
                "pages_marked" => Metric::LogPagesMarked,
                "beyond_end" => Metric::LogBeyondEnd,
                _ => Metric::LogFaults,
            }),
            ["announce", ..] => {
                one(&["requested", "acked"], "announce field").map(|n| if n == "requested" { Metric::AnnounceRequested } else { Metric::AnnounceAcked })
            }
            ["ctrl", "last_ack"] => Ok(Metric::CtrlLastAck),
            ["frames", ..] => one(FRAME_FIELDS, "frames field").map(|field| Metric::Frames { latest_step: false, field }),
            ["traffic", ..] => one(FRAME_FIELDS, "traffic field").map(|field| Metric::Frames { latest_step: true, field }),
            ["migration", ..] => one(MIGRATION_FIELDS, "migration field").map(Metric::Migration),
            ["step", "error"] => Ok(Metric::StepError),
            _ => Err(format!("unknown metric `{path}`; known families: {}", FAMILIES.join(", "))),
        }
    }
}

/// Picks `rest` (exactly one more path component) from `names`.
fn pick(rest: &[&str], names: &[&'static str], what: &str) -> Result<&'static str, String> {
    let known = || names.join(", ");
    match rest {
        [n] => names
            .iter()
            .copied()
            .find(|k| k == n)
            .ok_or_else(|| format!("unknown {what} `{n}`; known: {}", known())),
        [] => Err(format!("missing {what}; known: {}", known())),
        _ => Err(format!(
            "unknown {what} `{}`; known: {}",
            rest.join("."),
            known()
        )),
    }
}

fn queue_field(rest: &[&str]) -> Result<QueueField, String> {
    let names: Vec<&str> = QUEUE_FIELDS.iter().map(|(n, _)| *n).collect();
    let n = pick(rest, &names, "queue field")?;
    QUEUE_FIELDS
        .iter()
        .find(|(k, _)| *k == n)
        .map(|(_, f)| *f)
        .ok_or_else(|| format!("unknown queue field `{n}`"))
}

fn index(s: &str, limit: u16, what: &str) -> Result<u16, String> {
    let i: u16 = s
        .parse()
        .map_err(|_| format!("{what} index `{s}` is not a number"))?;
    if i >= limit {
        return Err(format!(
            "{what} {i} out of range: the device has {limit} (0..={})",
            limit.saturating_sub(1)
        ));
    }
    Ok(i)
}

pub use bar_registers::virtio::short_feature_name;

/// A feature bit by name: `mrg_rxbuf`, `MRG_RXBUF` or `VIRTIO_NET_F_MRG_RXBUF` (case-insensitive).
pub fn feature_bit(name: &str) -> Option<u32> {
    bar_registers::virtio::find_feature(name).map(|f| f.bit)
}

/// What the last `migrate` step measured (metrics `migration.<field>`).
#[derive(Debug, Clone, Default)]
pub struct MigrationOutcome {
    pub rounds: u64,
    /// Pre-copy stopped by its policy, not by the round limit.
    pub converged: bool,
    pub pages_copied: u64,
    /// Of those, pages sent as zero pages (never written, or reading as zeros).
    pub zero_pages: u64,
    /// The stop-and-copy time pre-copy stopped on (None: no copy rate measured).
    pub estimated_downtime_us: Option<u64>,
    pub log_bytes: u64,
    pub log_writes: u64,
    pub missed_dirty_pages: u64,
    pub memory_mismatch_pages: u64,
    pub downtime_us: u64,
    /// Frames moved from the source's receive FIFO to the destination's.
    pub pending_frames: u64,
    /// Resume and after-switch failures.
    pub errors: Vec<String>,
    pub announce_acked: bool,
}

impl MigrationOutcome {
    /// The field named `name` (see [`MIGRATION_FIELDS`]).
    pub fn get(&self, name: &str) -> Option<Value> {
        let i = |v: u64| Some(Value::Int(v));
        match name {
            "rounds" => i(self.rounds),
            "converged" => Some(Value::Bool(self.converged)),
            "pages_copied" => i(self.pages_copied),
            "zero_pages" => i(self.zero_pages),
            "estimated_downtime_us" => self.estimated_downtime_us.and_then(i),
            "log_bytes" => i(self.log_bytes),
            "log_writes" => i(self.log_writes),
            "missed_dirty_pages" => i(self.missed_dirty_pages),
            "memory_mismatch_pages" => i(self.memory_mismatch_pages),
            "downtime_us" => i(self.downtime_us),
            "pending_frames" => i(self.pending_frames),
            "errors" => i(self.errors.len() as u64),
            "announce_acked" => Some(Value::Bool(self.announce_acked)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: DeviceShape = DeviceShape {
        pairs: 2,
        served: false,
    };

    #[test]
    fn catalog_parses_and_rejects() {
        assert_eq!(
            Metric::parse("counters.tx_frames", DEV),
            Ok(Metric::Counter("tx_frames"))
        );
        assert_eq!(
            Metric::parse("fault.chain_too_long", DEV),
            Ok(Metric::Fault("chain_too_long"))
        );
        assert_eq!(
            Metric::parse("tx.1.last_used", DEV),
            Ok(Metric::Queue {
                queue: 3,
                field: QueueField::LastUsed
            })
        );
        assert_eq!(
            Metric::parse("ctrlq.chains", DEV),
            Ok(Metric::Queue {
                queue: 4,
                field: QueueField::Chains
            })
        );
        assert_eq!(
            Metric::parse("features.mrg_rxbuf", DEV),
            Ok(Metric::Feature(15))
        );
        assert_eq!(
            Metric::parse("migration.missed_dirty_pages", DEV),
            Ok(Metric::Migration("missed_dirty_pages"))
        );
        assert_eq!(
            Metric::parse("status.needs_reset", DEV).map(|m| m.kind()),
            Ok(ValueKind::Bool)
        );
        assert!(Metric::parse("counters.tx_frame", DEV)
            .unwrap_err()
            .contains("unknown counter `tx_frame`"));
        assert!(Metric::parse("queue.5.chains", DEV)
            .unwrap_err()
            .contains("out of range"));
        assert!(Metric::parse("rx.2.frames", DEV).is_err());
        assert!(Metric::parse("bogus", DEV).is_err());
        assert!(Metric::parse("counters", DEV).is_err());
        assert!(Metric::parse("counters.tx_frames.x", DEV).is_err());
        assert_eq!(feature_bit("VIRTIO_NET_F_GUEST_ANNOUNCE"), Some(21));
        assert_eq!(feature_bit("event_idx"), Some(29));
        assert_eq!(feature_bit("nope"), None);
    }
}
