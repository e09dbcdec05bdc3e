//! A checked scenario: what [`super::compile`] produces from a file and the runner executes.
//! Nothing here can be out of range: every name is resolved to an index, every value checked.

use super::expect::Expectation;
use crate::driver::DriverOptions;
use device::{DeviceConfig, Quirk};

/// A loaded, checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Path of the file it came from (as given).
    pub file: String,
    pub name: String,
    pub description: Option<String>,
    pub seed: u64,
    pub devices: Vec<DeviceSpec>,
    pub steps: Vec<Step>,
    /// Expectations checked after the last step.
    pub end: Vec<Expectation>,
}

/// One device instance with its driver and port.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    pub config: DeviceConfig,
    pub driver: DriverOptions,
    pub port: PortSpec,
    /// A served device reached through this control socket (`ctl = "PATH"`): not built or
    /// driven by the scenario, only controlled (link, announce, quirk) and observed.
    pub served: Option<std::path::PathBuf>,
}

/// Where a device's transmitted frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    /// Back into its own receive side.
    Loopback,
    /// Into the receive side of the device with this index (and back: links are symmetric).
    Link(usize),
    /// Discarded.
    Null,
}

/// One step with its position in the file.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position among the steps.
    pub index: usize,
    /// Line of its `kind`.
    pub line: usize,
    /// `name`, or a label made from the kind.
    pub label: String,
    pub action: Action,
    /// A step error is recorded (metric `step.error`) instead of failing the scenario.
    pub allow_error: bool,
    /// Checked right after the step.
    pub expect: Vec<Expectation>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Driver bring-up (reset, negotiate, queues, DRIVER_OK, RX buffers, VQ_PAIRS_SET).
    Start { devices: Vec<usize> },
    /// Sequence-numbered frames.
    Traffic(TrafficSpec),
    /// Receive everything waiting.
    Receive { devices: Vec<usize> },
    /// DPDK stop (queue_enable polled, ring states read, reset), then restart at those states.
    StopStart { device: usize },
    /// Device reset, then (by default) start again.
    Reset {
        device: usize,
        how: ResetHow,
        restart: bool,
    },
    /// Hostile input or a quirk for the next device instance.
    Inject {
        device: usize,
        fault: Fault,
        pair: u16,
    },
    /// Link down/up.
    Link { device: usize, up: bool },
    /// VQ_PAIRS_SET over the control queue.
    QueuePairs {
        device: usize,
        pairs: u16,
        accept: bool,
    },
    /// Device asks for an announce; the driver acks it.
    Announce { device: usize },
    /// Whole-guest live migration to a fresh device instance.
    Migrate(MigrateSpec),
    /// Let time pass (a served device's guest keeps running meanwhile).
    Wait { duration: std::time::Duration },
}

impl Action {
    /// The step kind as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Start { .. } => "start",
            Action::Traffic(_) => "traffic",
            Action::Receive { .. } => "receive",
            Action::StopStart { .. } => "stop_start",
            Action::Reset { .. } => "reset",
            Action::Inject { .. } => "inject",
            Action::Link { .. } => "link",
            Action::QueuePairs { .. } => "queue_pairs",
            Action::Announce { .. } => "announce",
            Action::Migrate(_) => "migrate",
            Action::Wait { .. } => "wait",
        }
    }
}

/// Every step kind.
pub const STEP_KINDS: &[&str] = &[
    "start",
    "traffic",
    "receive",
    "stop_start",
    "reset",
    "inject",
    "link",
    "queue_pairs",
    "announce",
    "migrate",
    "wait",
];

/// A traffic pattern.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    /// Sending devices.
    pub from: Vec<usize>,
    /// Frames each sending device sends (spread round-robin over its pairs).
    pub count: u64,
    pub size: SizeSpec,
    /// Pairs to send on (None: every pair the driver runs).
    pub pairs: Option<Vec<u16>>,
    /// Frames per send call per pair.
    pub batch: usize,
    /// Receive while sending and drain at the end (false: frames wait in the RX rings/FIFO).
    pub receive: bool,
}

/// Frame sizes (Ethernet frame without FCS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    Fixed(usize),
    /// Uniform in [min, max].
    Range(usize, usize),
}

/// How a `reset` step resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetHow {
    /// device_status = 0 through the driver (virtio reset).
    Driver,
    /// Function level reset (vfio DEVICE_RESET).
    Flr,
}

/// What an `inject` step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// TX descriptor whose NEXT points at itself.
    DescriptorLoop,
    /// TX descriptor pointing at an IOVA nothing is mapped at.
    UnmappedBuffer,
    /// RX descriptor pointing at an unmapped IOVA (with a frame waiting).
    RxUnmappedBuffer,
    /// Avail ring entry naming a descriptor index >= queue size.
    IndexOutOfRange,
    /// avail->idx more than the queue size ahead.
    AvailIndexJump,
    /// TX descriptor of length 0.
    ZeroLength,
    /// Device-writable descriptor in a TX chain.
    WritableInTx,
    /// Device-readable descriptor in an RX chain.
    ReadableInRx,
    /// TX chain longer than the largest frame.
    OversizedChain,
    /// Control command without a status byte.
    CtrlNoStatus,
    /// A quirk turned on for the next device instance (a migration destination).
    Quirk(Quirk),
}

/// Every fault an `inject` step knows: (name, fault counter it ends in, description).
pub const FAULTS: &[(&str, &str, &str)] = &[
    (
        "descriptor_loop",
        "chain_too_long",
        "TX descriptor whose NEXT points at itself",
    ),
    (
        "unmapped_buffer",
        "dma_fault",
        "TX descriptor at an IOVA nothing is mapped at (0x1000)",
    ),
    (
        "rx_unmapped_buffer",
        "dma_fault",
        "RX descriptor at an unmapped IOVA, then a frame arrives",
    ),
    (
        "index_out_of_range",
        "descriptor_index_out_of_range",
        "avail ring entry names descriptor index == queue size",
    ),
    (
        "avail_index_jump",
        "avail_index_jump",
        "avail->idx moved queue size + 1 ahead",
    ),
    (
        "zero_length",
        "zero_length_descriptor",
        "TX descriptor of length 0",
    ),
    (
        "writable_in_tx",
        "writable_in_tx_chain",
        "device-writable descriptor in a TX chain",
    ),
    (
        "readable_in_rx",
        "readable_in_rx_chain",
        "device-readable descriptor in an RX chain, then a frame arrives",
    ),
    (
        "oversized_chain",
        "oversized_chain",
        "TX descriptor of 70000 bytes (more than a 64 KiB frame + header)",
    ),
    (
        "ctrl_no_status",
        "ctrl_no_status",
        "control command whose chain has no device-writable status byte",
    ),
    (
        "quirk",
        "",
        "turn the quirk named by `quirk` on for the next device instance (a migration destination)",
    ),
];

impl Fault {
    /// Parses a fault name (the quirk itself comes from the `quirk` field).
    pub fn parse(name: &str, quirk: Option<Quirk>) -> Option<Fault> {
        Some(match name {
            "descriptor_loop" => Fault::DescriptorLoop,
            "unmapped_buffer" => Fault::UnmappedBuffer,
            "rx_unmapped_buffer" => Fault::RxUnmappedBuffer,
            "index_out_of_range" => Fault::IndexOutOfRange,
            "avail_index_jump" => Fault::AvailIndexJump,
            "zero_length" => Fault::ZeroLength,
            "writable_in_tx" => Fault::WritableInTx,
            "readable_in_rx" => Fault::ReadableInRx,
            "oversized_chain" => Fault::OversizedChain,
            "ctrl_no_status" => Fault::CtrlNoStatus,
            "quirk" => Fault::Quirk(quirk?),
            _ => return None,
        })
    }

    /// The name used in files.
    pub fn name(self) -> &'static str {
        match self {
            Fault::DescriptorLoop => "descriptor_loop",
            Fault::UnmappedBuffer => "unmapped_buffer",
            Fault::RxUnmappedBuffer => "rx_unmapped_buffer",
            Fault::IndexOutOfRange => "index_out_of_range",
            Fault::AvailIndexJump => "avail_index_jump",
            Fault::ZeroLength => "zero_length",
            Fault::WritableInTx => "writable_in_tx",
            Fault::ReadableInRx => "readable_in_rx",
            Fault::OversizedChain => "oversized_chain",
            Fault::CtrlNoStatus => "ctrl_no_status",
            Fault::Quirk(_) => "quirk",
        }
    }
}

/// A `migrate` step.
#[derive(Debug, Clone)]
pub struct MigrateSpec {
    /// The device whose guest moves.
    pub device: usize,
    /// Frames the guest sends between copy chunks (0: an idle guest).
    pub background_frames: u32,
    /// What ends pre-copy: `max_downtime_ms` (default 300, QEMU's downtime limit) or an
    /// explicit `dirty_threshold`.
    pub stop: crate::migrate::policy::StopPolicy,
    /// Most pre-copy rounds.
    pub max_rounds: u32,
}
