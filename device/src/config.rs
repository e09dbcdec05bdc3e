//! Device options: what a user can choose when instantiating the NIC.

use bar_registers::{LayoutParams, LmLayout, NotifyLayout};

/// Everything that configures one device instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Register layout inputs (queue pairs, queue size, LM layout, doorbell spacing, MAC, MTU).
    pub layout: LayoutParams,
    /// Dirty-log granularity in bytes (4 KiB, or coarser: 64 KiB, 2 MiB ...). The log format
    /// stays one bit per 4 KiB page; a coarser device marks every page of a touched granule.
    pub log_granularity: u64,
    /// IOTLB (ATS cache) entries; 0 = translate every access through the table.
    pub iotlb_entries: usize,
    /// Frames the receive FIFO holds while no RX buffer is available.
    pub rx_backlog: usize,
    /// How many reads of queue_enable still return 1 after the driver wrote 0: the time the
    /// device takes to finish in-flight work (DPDK ifcvf_hw_disable polls 10 x 10 ms).
    pub disable_latency_reads: u32,
    /// Most chains a queue service pass takes before publishing (batch size).
    pub batch: u16,
    /// Most TX chains one queue service takes before the device lock is offered to whoever
    /// waits for it (a register access, another queue's doorbell) and the queue waits its turn
    /// behind the other queues with work (`DeviceState::service_pending`). Rounded up to whole
    /// batches; at least one batch. A delivery of received frames takes this many per queue pair
    /// in use before the lock is offered the same way (`NetEngine::rx_budget`).
    pub service_budget: u32,
    /// Who applies MSI-X masking.
    pub msix_owner: MsixOwner,
    /// Injected design bugs (none for a healthy device).
    pub quirks: crate::quirks::Quirks,
    /// The device profile: the feature set the device offers (quirks may still remove bits) and
    /// its name for reports. `full` by default; `serve --no-packed` is
    /// [`bar_registers::Profile::without_packed`] (every driver then uses split rings, e.g. a
    /// Linux guest, which prefers packed).
    pub profile: bar_registers::Profile,
    /// Whether plain received frames for a driver without receive offloads take the receive
    /// path's express lane (device/src/net/rx_express.rs; on by default). Off, every frame takes
    /// the general path: the lane's reference in tests/tests/rx_express.rs, and a switch for
    /// telling a suspected lane bug from the rest.
    pub rx_express: bool,
    /// Whether the split ring engine reads the head descriptors of adjacent available chains
    /// in one access (device/src/queue/split.rs `DescRun`: up to 16, one read request, as a
    /// NIC fetches descriptors in bursts; on by default). Off, it reads every descriptor on
    /// its own, as a design that fetches one descriptor at a time: what `vdpa-emu bench bus
    /// --no-desc-runs` models (2 descriptor TLPs per packet instead of 0.25 at batch 8).
    pub desc_runs: bool,
}

/// Who owns the MSI-X table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MsixOwner {
    /// The device: its table's mask bits and PBA apply (in-process driver model, real silicon).
    #[default]
    Device,
    /// The VMM: QEMU's vfio-user client emulates the MSI-X table itself and masks by
    /// switching the vector's eventfd (QEMU hw/vfio/pci.c, vfio_msix_vector_use/release), so the device
    /// fires the vector's sink whenever MSI-X is enabled, ignoring its own table's mask bits.
    Vmm,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            layout: LayoutParams::default(),
            log_granularity: 4096,
            iotlb_entries: 64,
            rx_backlog: 4096,
            disable_latency_reads: 2,
            batch: 64,
            service_budget: 256,
            msix_owner: MsixOwner::Device,
            quirks: crate::quirks::Quirks::NONE,
            profile: bar_registers::Profile::full(),
            rx_express: true,
            desc_runs: true,
        }
    }
}

impl DeviceConfig {
    /// A config with `pairs` queue pairs and defaults otherwise.
    pub fn with_queue_pairs(pairs: u16) -> Self {
        let mut c = DeviceConfig::default();
        c.layout.queue_pairs = pairs;
        c
    }

    /// Sets the LM layout.
    pub fn lm_layout(mut self, l: LmLayout) -> Self {
        self.layout.lm_layout = l;
        self
    }

    /// Applies a profile: its feature set, and the device parameters it fixes.
    pub fn with_profile(mut self, p: bar_registers::Profile) -> Self {
        let f = p.params;
        if let Some(q) = f.queue_pairs {
            self.layout.queue_pairs = q;
        }
        if let Some(s) = f.queue_size_max {
            self.layout.queue_size_max = s;
        }
        if let Some(m) = f.mtu {
            self.layout.mtu = m;
        }
        if let Some(l) = f.lm_layout {
            self.layout.lm_layout = l;
        }
        self.profile = p;
        self
    }

    /// Sets the doorbell spacing.
    pub fn notify(mut self, n: NotifyLayout) -> Self {
        self.layout.notify = n;
        self
    }
}
