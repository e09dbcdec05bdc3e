//! The whole function's layout for one device configuration: BARs, windows, capabilities and
//! every register block, computed from [`LayoutParams`].

use crate::lm::{self, LmLayout};
use crate::model::{Access, Location, Narrow, Register, RegisterBlock};
use crate::pci::{self, cap_id, cap_offset, msix_cap, pcie_cap, virtio_cap, virtio_cfg_type};
use crate::{msix, virtio};

/// Most queue pairs the device model supports (DPDK's IFCVF_MAX_QUEUES is 32 pairs).
pub const MAX_QUEUE_PAIRS: u16 = 32;
/// Largest ring the device accepts (virtio split ring limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// How doorbells are spaced in the notify window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NotifyLayout {
    /// notify_off_multiplier = 4: all doorbells in one page.
    #[default]
    Compact,
    /// notify_off_multiplier = 4096: each queue's doorbell on its own 4 KiB page, so a VMM can
    /// pass one doorbell through (DPDK hands QEMU one page per queue as a host notifier).
    PagePerQueue,
}

impl NotifyLayout {
    /// notify_off_multiplier.
    pub fn multiplier(self) -> u32 {
        match self {
            NotifyLayout::Compact => 4,
            NotifyLayout::PagePerQueue => 4096,
        }
    }
}

/// What a layout is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutParams {
    /// Queue pairs (1..=32); the device also has one control queue.
    pub queue_pairs: u16,
    /// Largest queue size the device reports (power of two).
    pub queue_size_max: u16,
    /// LM block layout.
    pub lm_layout: LmLayout,
    /// Doorbell spacing.
    pub notify: NotifyLayout,
    /// MAC address in device config.
    pub mac: [u8; 6],
    /// MTU in device config.
    pub mtu: u16,
}

impl Default for LayoutParams {
    fn default() -> Self {
        LayoutParams {
            queue_pairs: 4,
            queue_size_max: 256,
            lm_layout: LmLayout::Dpdk,
            notify: NotifyLayout::Compact,
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            mtu: 1500,
        }
    }
}

/// Why a parameter set has no layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// queue_pairs out of 1..=32.
    #[error("queue pairs must be 1..={MAX_QUEUE_PAIRS}, got {0}")]
    QueuePairs(u16),
    /// queue_size_max not a power of two in 2..=32768.
    #[error("queue size must be a power of two in 2..={MAX_QUEUE_SIZE}, got {0}")]
    QueueSize(u16),
    /// MTU below 68 (RFC 791 minimum).
    #[error("MTU must be at least 68, got {0}")]
    Mtu(u16),
    /// A device profile the model cannot be (see [`crate::Profile::check`]).
    #[error("profile {name}: {source}")]
    Profile {
        name: String,
        #[source]
        source: crate::ProfileError,
    },
}

/// One memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0, 2, 4: each a 64-bit BAR using the next index for its upper dword).
    pub index: u8,
    /// Size in bytes (power of two).
    pub size: u64,
    /// What it holds.
    pub contents: &'static str,
}

/// A window inside a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub bar: u8,
    pub offset: u64,
    pub len: u64,
}

impl Window {
    /// Whether `(bar, off)` falls inside, and where.
    pub fn contains(&self, bar: u8, off: u64) -> Option<u64> {
        (bar == self.bar && off >= self.offset && off < self.offset + self.len)
            .then(|| off - self.offset)
    }
}

/// A capability in config space, as a driver's capability walk finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityDecl {
    /// Offset in config space.
    pub offset: u64,
    /// Capability id.
    pub id: u8,
    /// Length of the structure.
    pub len: u8,
    /// For virtio vendor capabilities: cfg_type and the window it points to.
    pub virtio: Option<(u8, Window)>,
}

/// The computed layout.
#[derive(Clone, Debug)]
pub struct DeviceLayout {
    pub params: LayoutParams,
    /// 2 * queue_pairs + 1.
    pub num_queues: u16,
    /// num_queues + 1 (DPDK: vector 0 config, vector i + 1 queue i).
    pub msix_vectors: u16,
    pub bars: Vec<Bar>,
    pub common: Window,
    pub isr: Window,
    pub device_cfg: Window,
    pub notify: Window,
    pub notify_multiplier: u32,
    pub msix_table: Window,
    pub msix_pba: Window,
    pub lm: Window,
    pub capabilities: Vec<CapabilityDecl>,
    /// Every register block: config header and capabilities first, then BAR windows.
    pub blocks: Vec<RegisterBlock>,
}

const BAR0_COMMON: u64 = 0x0000;
const BAR0_ISR: u64 = 0x1000;
const BAR0_DEVICE: u64 = 0x2000;
const BAR0_NOTIFY: u64 = 0x3000;

impl DeviceLayout {
    /// Compute the layout for `params`.
    pub fn new(params: LayoutParams) -> Result<Self, LayoutError> {
        if params.queue_pairs == 0 || params.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(LayoutError::QueuePairs(params.queue_pairs));
        }
        if params.queue_size_max < 2 || !params.queue_size_max.is_power_of_two() {
            return Err(LayoutError::QueueSize(params.queue_size_max));
        }
        if params.mtu < 68 {
            return Err(LayoutError::Mtu(params.mtu));
        }
        let num_queues = 2 * params.queue_pairs + 1;
        let msix_vectors = num_queues + 1;
        let mult = params.notify.multiplier();
        let notify_len = u64::from(num_queues) * u64::from(mult);
        let bar0_size = (BAR0_NOTIFY + notify_len).next_power_of_two();
        let bars = vec![
            Bar {
                index: 0,
                size: bar0_size,
                contents: "virtio common cfg, ISR, device cfg, notify doorbells",
            },
            Bar {
                index: 2,
                size: 0x2000,
                contents: "MSI-X table and PBA",
            },
            Bar {
                index: 4,
                size: lm::LM_SIZE,
                contents: "live-migration (LM) block at offset 0",
            },
        ];
        let common = Window {
            bar: 0,
            offset: BAR0_COMMON,
            len: virtio::common::SIZE,
        };
        let isr = Window {
            bar: 0,
            offset: BAR0_ISR,
            len: virtio::isr::SIZE,
        };
        let device_cfg = Window {
            bar: 0,
            offset: BAR0_DEVICE,
            len: virtio::net_cfg::SIZE,
        };
        let notify = Window {
            bar: 0,
            offset: BAR0_NOTIFY,
            len: notify_len,
        };
        let msix_table = Window {
            bar: 2,
            offset: msix::TABLE_OFFSET,
            len: u64::from(msix_vectors) * msix::ENTRY_SIZE,
        };
        let msix_pba = Window {
            bar: 2,
            offset: msix::PBA_OFFSET,
            len: u64::from(msix_vectors).div_ceil(64) * 8,
        };
        let lm_win = Window {
            bar: 4,
            offset: 0,
            len: lm::LM_SIZE,
        };

        let capabilities = vec![
            CapabilityDecl {
                offset: cap_offset::MSIX,
                id: cap_id::MSIX,
                len: msix_cap::LEN as u8,
                virtio: None,
            },
            CapabilityDecl {
                offset: cap_offset::COMMON,
                id: cap_id::VENDOR,
                len: virtio_cap::LEN,
                virtio: Some((virtio_cfg_type::COMMON, common)),
            },
            CapabilityDecl {
                offset: cap_offset::NOTIFY,
                id: cap_id::VENDOR,
                len: virtio_cap::LEN_EXT,
                virtio: Some((virtio_cfg_type::NOTIFY, notify)),
            },
            CapabilityDecl {
                offset: cap_offset::ISR,
                id: cap_id::VENDOR,
                len: virtio_cap::LEN,
                virtio: Some((virtio_cfg_type::ISR, isr)),
            },
            CapabilityDecl {
                offset: cap_offset::DEVICE,
                id: cap_id::VENDOR,
                len: virtio_cap::LEN,
                virtio: Some((virtio_cfg_type::DEVICE, device_cfg)),
            },
            CapabilityDecl {
                offset: cap_offset::PCI_CFG,
                id: cap_id::VENDOR,
                len: virtio_cap::LEN_EXT,
                virtio: Some((
                    virtio_cfg_type::PCI_CFG,
                    Window {
                        bar: 0,
                        offset: 0,
                        len: 0,
                    },
                )),
            },
            CapabilityDecl {
                offset: cap_offset::PCIE,
                id: cap_id::PCIE,
                len: pcie_cap::LEN as u8,
                virtio: None,
            },
        ];

        let mut layout = DeviceLayout {
            params,
            num_queues,
            msix_vectors,
            bars,
            common,
            isr,
            device_cfg,
            notify,
            notify_multiplier: mult,
            msix_table,
            msix_pba,
            lm: lm_win,
            capabilities,
            blocks: Vec::new(),
        };
        layout.blocks = layout.build_blocks();
        Ok(layout)
    }

    /// The upper end of a 64-bit memory BAR's low dword: type bits (64-bit, non-prefetchable).
    pub const BAR_TYPE_64: u32 = crate::pci::bar::TYPE_64;

    /// Size of BAR `index`, 0 if absent.
    pub fn bar_size(&self, index: u8) -> u64 {
        self.bars
            .iter()
            .find(|b| b.index == index)
            .map_or(0, |b| b.size)
    }

    /// Doorbell offset inside BAR0 for queue `q` (queue_notify_off = q).
    pub fn doorbell_offset(&self, q: u16) -> u64 {
        self.notify.offset + u64::from(q) * u64::from(self.notify_multiplier)
    }

    /// The queue a BAR0 offset rings, if it is a doorbell.
    pub fn doorbell_queue(&self, bar_off: u64) -> Option<u16> {
        let rel = self.notify.contains(0, bar_off)?;
        let m = u64::from(self.notify_multiplier);
        (rel % m == 0).then(|| (rel / m) as u16)
    }

    /// Index of the control queue.
    pub fn ctrl_queue(&self) -> u16 {
        self.num_queues - 1
    }

    /// Block by id.
    pub fn block(&self, id: &str) -> Option<&RegisterBlock> {
        self.blocks.iter().find(|b| b.id == id)
    }

    /// The block a BAR access falls in, with the offset relative to the block.
    pub fn bar_block(&self, bar: u8, off: u64) -> Option<(&RegisterBlock, u64)> {
        self.blocks.iter().find_map(|b| match b.location {
            Location::Bar(i, o) if i == bar && off >= o && off < o + b.size => Some((b, off - o)),
            _ => None,
        })
    }

    fn build_blocks(&self) -> Vec<RegisterBlock> {
        let p = &self.params;
        let bar_lo: Vec<(u8, u64)> = self
            .bars
            .iter()
            .map(|b| (b.index, u64::from(Self::BAR_TYPE_64)))
            .collect();
        let mut blocks = vec![RegisterBlock {
            id: "pci_header",
            title: "PCI type-0 configuration header",
            location: Location::Config(0),
            size: 0x40,
            registers: pci::header_registers(&bar_lo),
            summary: "Identity the DPDK and Linux IFC VF drivers match, BAR0/BAR2/BAR4 (64-bit memory BARs; Linux ifcvf fails its probe without all three), command register bus-master gating of DMA.",
        }];
        blocks.push(self.msix_cap_block());
        for cap in &self.capabilities {
            if let Some((ty, win)) = cap.virtio {
                blocks.push(virtio_cap_block(cap, ty, win, self.notify_multiplier));
            }
        }
        blocks.push(pcie_cap_block());
        blocks.push(RegisterBlock {
            id: "common_cfg",
            title: "virtio common configuration (BAR0)",
            location: Location::Bar(0, self.common.offset),
            size: self.common.len,
            registers: virtio::common_registers(self.num_queues, p.queue_size_max),
            summary: "Feature negotiation, device status state machine, per-queue setup. 64-bit fields accept two 32-bit halves (io_write64_twopart in DPDK ifcvf.c, vp_iowrite64_twopart in Linux).",
        });
        blocks.push(RegisterBlock {
            id: "isr",
            title: "virtio ISR status (BAR0)",
            location: Location::Bar(0, self.isr.offset),
            size: self.isr.len,
            registers: virtio::isr_registers(),
            summary: "Read-to-clear interrupt cause; used with INTx (MSI-X off) and by Linux's single-vector mode.",
        });
        blocks.push(RegisterBlock {
            id: "device_cfg",
            title: "virtio-net device configuration (BAR0)",
            location: Location::Bar(0, self.device_cfg.offset),
            size: self.device_cfg.len,
            registers: virtio::net_cfg_registers(p.mac, p.queue_pairs, p.mtu),
            summary: "struct virtio_net_config. Any aligned width; config_generation changes when it does (Linux reads byte by byte with a generation retry).",
        });
        blocks.push(RegisterBlock {
            id: "notify",
            title: "virtio notify doorbells (BAR0)",
            location: Location::Bar(0, self.notify.offset),
            size: self.notify.len,
            registers: (0..self.num_queues)
                .map(|q| {
                    Register::new(
                        format!("doorbell[{q}]"),
                        u64::from(q) * u64::from(self.notify_multiplier),
                        2,
                        Access::Wo,
                        0,
                        "write the queue index to notify the device (also accepts 32-bit writes)",
                        "virtio 1.2 4.1.4.4; ifcvf.c ifcvf_notify_queue",
                    )
                    .narrow(Narrow::No)
                })
                .collect(),
            summary: "queue q's doorbell is at notify + q * notify_off_multiplier (queue_notify_off = q). The window starts on a 4 KiB page and shares its pages with no other register, so `serve --doorbell mmap` (the default) hands these pages to QEMU as shared memory: a doorbell is then a store the device's doorbell engine polls for, not a vfio-user message (docs/doorbells.md).",
        });
        blocks.push(RegisterBlock {
            id: "msix_table",
            title: "MSI-X table (BAR2)",
            location: Location::Bar(2, self.msix_table.offset),
            size: self.msix_table.len,
            registers: msix::table_registers(self.msix_vectors),
            summary: "One entry per vector: DPDK programs vector 0 = config, i + 1 = queue i; Linux queue i = vector i, config = vector num_queues.",
        });
        blocks.push(RegisterBlock {
            id: "msix_pba",
            title: "MSI-X pending bit array (BAR2)",
            location: Location::Bar(2, self.msix_pba.offset),
            size: self.msix_pba.len,
            registers: msix::pba_registers(self.msix_vectors),
            summary: "A masked vector's interrupt sets its bit; unmasking delivers it and clears the bit.",
        });
        blocks.push(RegisterBlock {
            id: "lm",
            title: match p.lm_layout {
                LmLayout::Dpdk => "live-migration block, DPDK layout (BAR4)",
                LmLayout::Linux => "live-migration block, Linux layout (BAR4)",
            },
            location: Location::Bar(4, 0),
            size: lm::LM_SIZE,
            registers: lm::lm_registers(p.lm_layout, self.num_queues),
            summary: "The vDPA HW prerequisites: dirty-page logging (base, end, enable) and a readable, writable ring state per vring.",
        });
        blocks
    }

    fn msix_cap_block(&self) -> RegisterBlock {
        const SRC: &str = "PCI 3.0 6.8.2";
        RegisterBlock {
            id: "cap_msix",
            title: "MSI-X capability",
            location: Location::Config(cap_offset::MSIX),
            size: msix_cap::LEN,
            registers: vec![
                Register::new(
                    "cap_id",
                    0,
                    1,
                    Access::Ro,
                    cap_id::MSIX.into(),
                    "MSI-X",
                    SRC,
                ),
                Register::new(
                    "cap_next",
                    1,
                    1,
                    Access::Ro,
                    cap_offset::COMMON,
                    "next capability",
                    SRC,
                ),
                Register::new(
                    "message_control",
                    msix_cap::MESSAGE_CONTROL,
                    2,
                    Access::Rw,
                    u64::from(self.msix_vectors - 1),
                    "bits 10:0 table size - 1 (RO); bit 14 function mask; bit 15 enable",
                    SRC,
                ),
                Register::new(
                    "table",
                    msix_cap::TABLE,
                    4,
                    Access::Ro,
                    self.msix_table.offset | 2,
                    "table offset | BIR 2",
                    SRC,
                ),
                Register::new(
                    "pba",
                    msix_cap::PBA,
                    4,
                    Access::Ro,
                    self.msix_pba.offset | 2,
                    "PBA offset | BIR 2",
                    SRC,
                ),
            ],
            summary: "num_queues + 1 vectors, so both drivers' vector plans fit.",
        }
    }
}

fn virtio_cap_block(cap: &CapabilityDecl, ty: u8, win: Window, mult: u32) -> RegisterBlock {
    const SRC: &str = "virtio 1.2 4.1.4";
    let (id, title, summary) = match ty {
        virtio_cfg_type::COMMON => ("cap_common", "virtio capability: common cfg", "Locates the common configuration window in BAR0."),
        virtio_cfg_type::NOTIFY => {
            ("cap_notify", "virtio capability: notify", "Locates the doorbells; notify_off_multiplier at cap + 16 (DPDK reads that dword).")
        }
        virtio_cfg_type::ISR => ("cap_isr", "virtio capability: ISR", "Locates the ISR byte."),
        virtio_cfg_type::DEVICE => ("cap_device", "virtio capability: device cfg", "Locates struct virtio_net_config."),
        _ => (
            "cap_pci_cfg",
            "virtio capability: PCI configuration access",
            "Alternative access to any BAR through config space (virtio 1.2 4.1.4.9): write bar/offset/length, then read or write pci_cfg_data.",
        ),
    };
    let next = match cap.offset {
        cap_offset::COMMON => cap_offset::NOTIFY,
        cap_offset::NOTIFY => cap_offset::ISR,
        cap_offset::ISR => cap_offset::DEVICE,
        cap_offset::DEVICE => cap_offset::PCI_CFG,
        _ => cap_offset::PCIE,
    };
    let pci_cfg = ty == virtio_cfg_type::PCI_CFG;
    let acc = if pci_cfg { Access::Rw } else { Access::Ro };
    let mut regs = vec![
        Register::new(
            "cap_vndr",
            virtio_cap::CAP_VNDR,
            1,
            Access::Ro,
            cap_id::VENDOR.into(),
            "vendor-specific",
            SRC,
        ),
        Register::new(
            "cap_next",
            virtio_cap::CAP_NEXT,
            1,
            Access::Ro,
            next,
            "next capability",
            SRC,
        ),
        Register::new(
            "cap_len",
            virtio_cap::CAP_LEN,
            1,
            Access::Ro,
            cap.len.into(),
            "length of this structure",
            SRC,
        ),
        Register::new(
            "cfg_type",
            virtio_cap::CFG_TYPE,
            1,
            Access::Ro,
            ty.into(),
            "structure type",
            SRC,
        ),
        Register::new(
            "bar",
            virtio_cap::BAR,
            1,
            acc,
            win.bar.into(),
            "BAR holding the window",
            SRC,
        ),
        Register::new(
            "id",
            virtio_cap::ID,
            1,
            Access::Ro,
            0,
            "capability instance id",
            SRC,
        ),
        Register::new(
            "offset",
            virtio_cap::OFFSET,
            4,
            acc,
            win.offset,
            "window offset in the BAR",
            SRC,
        ),
        Register::new(
            "length",
            virtio_cap::LENGTH,
            4,
            acc,
            win.len,
            "window length",
            SRC,
        ),
    ];
    if ty == virtio_cfg_type::NOTIFY {
        regs.push(Register::new(
            "notify_off_multiplier",
            virtio_cap::NOTIFY_OFF_MULTIPLIER,
            4,
            Access::Ro,
            mult.into(),
            "doorbell spacing",
            "virtio 1.2 4.1.4.4; ifcvf.c reads cap + 16",
        ));
    }
    if pci_cfg {
        regs.push(
            Register::new(
                "pci_cfg_data",
                virtio_cap::PCI_CFG_DATA,
                4,
                Access::Rw,
                0,
                "data window into the selected BAR bytes",
                "virtio 1.2 4.1.4.9",
            )
            .narrow(Narrow::Any)
            .live(),
        );
    }
    RegisterBlock {
        id,
        title,
        location: Location::Config(cap.offset),
        size: cap.len.into(),
        registers: regs,
        summary,
    }
}

fn pcie_cap_block() -> RegisterBlock {
    const SRC: &str = "PCIe 4.0 7.5.3";
    RegisterBlock {
        id: "cap_pcie",
        title: "PCI Express capability",
        location: Location::Config(cap_offset::PCIE),
        size: pcie_cap::LEN,
        registers: vec![
            Register::new(
                "cap_id",
                0,
                1,
                Access::Ro,
                cap_id::PCIE.into(),
                "PCI Express",
                SRC,
            ),
            Register::new("cap_next", 1, 1, Access::Ro, 0, "end of list", SRC),
            Register::new(
                "pcie_caps",
                pcie_cap::CAPS,
                2,
                Access::Ro,
                0x0002,
                "version 2, endpoint",
                SRC,
            ),
            Register::new(
                "device_caps",
                pcie_cap::DEVICE_CAPS,
                4,
                Access::Ro,
                u64::from(pcie_cap::DEVCAP_FLR) | 0x1,
                "max payload 256 B supported, FLR capable",
                SRC,
            ),
            Register::new(
                "device_control",
                pcie_cap::DEVICE_CONTROL,
                2,
                Access::Rw,
                0x2810,
                "MPS (7:5, 128 B), MRRS (14:12, 512 B), relaxed ordering; bit 15 initiates FLR",
                SRC,
            ),
            Register::new(
                "device_status",
                pcie_cap::DEVICE_STATUS,
                2,
                Access::W1c,
                0,
                "error bits RW1C; bit 5 transactions pending",
                SRC,
            ),
            Register::new(
                "link_caps",
                pcie_cap::LINK_CAPS,
                4,
                Access::Ro,
                0x0000_0044,
                "x4 (bits 9:4), 16 GT/s code 4 (3:0)",
                SRC,
            ),
            Register::new(
                "link_control",
                pcie_cap::LINK_CONTROL,
                2,
                Access::Rw,
                0,
                "link control (no effect)",
                SRC,
            ),
            Register::new(
                "link_status",
                pcie_cap::LINK_STATUS,
                2,
                Access::Ro,
                0x0044,
                "negotiated x4 at 16 GT/s",
                SRC,
            ),
            Register::new(
                "device_caps2",
                pcie_cap::DEVICE_CAPS2,
                4,
                Access::Ro,
                0,
                "no optional features",
                SRC,
            ),
            Register::new(
                "device_control2",
                pcie_cap::DEVICE_CONTROL2,
                2,
                Access::Rw,
                0,
                "no effect",
                SRC,
            ),
        ],
        summary: "Max payload and max read request size here feed the bus-overhead model.",
    }
}
