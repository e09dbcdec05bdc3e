//! PCI type-0 configuration header and the capability structures of the function.
//!
//! Offsets from the PCI Local Bus Specification 3.0 (6.1) and PCI Express Base 4.0 (7.5.3); the
//! virtio vendor capability from virtio 1.2 section 4.1.4; identity from Intel's IFC VF as the
//! DPDK (drivers/vdpa/ifc/ifcvf_vdpa.c, pci_id_ifcvf_map) and Linux (drivers/vdpa/ifcvf/ifcvf_main.c,
//! ifcvf_pci_ids) drivers match it.

use crate::model::{Access, Register};

/// Size of the configuration space we expose (PCIe extended space).
pub const CONFIG_SPACE_SIZE: u64 = 4096;

/// Header register offsets.
pub mod hdr {
    pub const VENDOR_ID: u64 = 0x00;
    pub const DEVICE_ID: u64 = 0x02;
    pub const COMMAND: u64 = 0x04;
    pub const STATUS: u64 = 0x06;
    pub const REVISION_ID: u64 = 0x08;
    pub const CLASS_CODE: u64 = 0x09;
    pub const CACHE_LINE_SIZE: u64 = 0x0C;
    pub const LATENCY_TIMER: u64 = 0x0D;
    pub const HEADER_TYPE: u64 = 0x0E;
    pub const BIST: u64 = 0x0F;
    pub const BAR0: u64 = 0x10;
    pub const CARDBUS_CIS: u64 = 0x28;
    pub const SUBSYSTEM_VENDOR_ID: u64 = 0x2C;
    pub const SUBSYSTEM_ID: u64 = 0x2E;
    pub const EXPANSION_ROM: u64 = 0x30;
    pub const CAPABILITIES_PTR: u64 = 0x34;
    pub const INTERRUPT_LINE: u64 = 0x3C;
    pub const INTERRUPT_PIN: u64 = 0x3D;
    pub const MIN_GNT: u64 = 0x3E;
    pub const MAX_LAT: u64 = 0x3F;
    /// The six BAR registers: [BAR0, BAR_END).
    pub const BAR_END: u64 = CARDBUS_CIS;
}

/// Base address register fields (PCI 3.0 6.2.5.1).
pub mod bar {
    /// Memory BAR low dword: bits 3:0 are type/prefetch bits, the rest the address.
    pub const MEM_ADDR_MASK: u32 = !0xF;
    /// Memory BAR type field value for a 64-bit BAR (bits 2:1 = 0b10).
    pub const TYPE_64: u32 = 0x4;
}

/// Command register bits.
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const SERR: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// Bits software may change; the rest read as 0.
    pub const WRITABLE: u16 = MEMORY_SPACE | BUS_MASTER | SERR | INTX_DISABLE;
}

/// Status register bits.
pub mod status {
    pub const INTERRUPT: u16 = 1 << 3;
    pub const CAP_LIST: u16 = 1 << 4;
    /// Error bits (RW1C): master/target abort, SERR, parity.
    pub const W1C: u16 = 0xF900;
}

/// Identity the drivers match (DPDK drivers/vdpa/ifc/ifcvf_vdpa.c pci_id_ifcvf_map, Linux
/// drivers/vdpa/ifcvf/ifcvf_main.c ifcvf_pci_ids).
pub mod id {
    /// Red Hat / virtio vendor id.
    pub const VENDOR: u16 = 0x1AF4;
    /// Modern virtio-net (0x1040 + device type 1).
    pub const DEVICE_NET: u16 = 0x1041;
    /// Intel, as subsystem vendor.
    pub const SUBSYS_VENDOR: u16 = 0x8086;
    /// IFC VF / N3000 net (IFCVF_SUBSYS_DEVICE_ID in ifcvf_vdpa.c).
    pub const SUBSYS_DEVICE_NET: u16 = 0x001A;
    /// Non-transitional virtio devices SHOULD have revision >= 1 (virtio 1.2 4.1.2.1).
    pub const REVISION: u8 = 0x01;
    /// Network controller / Ethernet.
    pub const CLASS: u32 = 0x02_00_00;
}

/// Capability ids.
pub mod cap_id {
    pub const MSIX: u8 = 0x11;
    pub const VENDOR: u8 = 0x09;
    pub const PCIE: u8 = 0x10;
}

/// virtio_pci_cap cfg_type values (virtio 1.2 4.1.4).
pub mod virtio_cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI_CFG: u8 = 5;
}

/// Field offsets inside a struct virtio_pci_cap (virtio 1.2 4.1.4).
pub mod virtio_cap {
    pub const CAP_VNDR: u64 = 0;
    pub const CAP_NEXT: u64 = 1;
    pub const CAP_LEN: u64 = 2;
    pub const CFG_TYPE: u64 = 3;
    pub const BAR: u64 = 4;
    pub const ID: u64 = 5;
    pub const OFFSET: u64 = 8;
    pub const LENGTH: u64 = 12;
    /// struct virtio_pci_notify_cap: notify_off_multiplier (DPDK reads the dword at cap + 16).
    pub const NOTIFY_OFF_MULTIPLIER: u64 = 16;
    /// struct virtio_pci_cfg_cap: pci_cfg_data.
    pub const PCI_CFG_DATA: u64 = 16;
    /// Length of the plain capability.
    pub const LEN: u8 = 16;
    /// Length of the notify and pci_cfg capabilities.
    pub const LEN_EXT: u8 = 20;
}

/// MSI-X capability fields (PCI 3.0 6.8.2).
pub mod msix_cap {
    pub const MESSAGE_CONTROL: u64 = 2;
    pub const TABLE: u64 = 4;
    pub const PBA: u64 = 8;
    pub const LEN: u64 = 12;
    pub const CTRL_ENABLE: u16 = 1 << 15;
    pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
    /// Message Control bits 10:0: table size minus one.
    pub const CTRL_TABLE_SIZE: u16 = 0x07FF;
    /// Table / PBA offset registers, bits 2:0: the BAR indicator (BIR); the rest is the offset.
    pub const BIR_MASK: u32 = 0x7;
}

/// PCI Express capability fields (PCIe 4.0 7.5.3), version 2.
pub mod pcie_cap {
    pub const CAPS: u64 = 2;
    pub const DEVICE_CAPS: u64 = 4;
    pub const DEVICE_CONTROL: u64 = 8;
    pub const DEVICE_STATUS: u64 = 10;
    pub const LINK_CAPS: u64 = 12;
    pub const LINK_CONTROL: u64 = 16;
    pub const LINK_STATUS: u64 = 18;
    pub const DEVICE_CAPS2: u64 = 0x24;
    pub const DEVICE_CONTROL2: u64 = 0x28;
    pub const LEN: u64 = 0x3C;
    /// Device Control: Max_Payload_Size field, bits 7:5 (128 << n bytes).
    pub const DEVCTL_MPS_SHIFT: u16 = 5;
    /// Device Control: Max_Read_Request_Size field, bits 14:12 (128 << n bytes).
    pub const DEVCTL_MRRS_SHIFT: u16 = 12;
    /// Device Control: width mask of the MPS and MRRS fields (after the shift).
    pub const DEVCTL_SIZE_MASK: u16 = 0x7;
    /// Device Control: Initiate Function Level Reset.
    pub const DEVCTL_FLR: u16 = 1 << 15;
    /// Device Status: the RW1C error-detected bits (correctable, non-fatal, fatal, unsupported
    /// request).
    pub const DEVSTA_W1C: u16 = 0x000F;
    /// Device Capabilities: Function Level Reset capable.
    pub const DEVCAP_FLR: u32 = 1 << 28;
}

/// Where each capability sits in our configuration space. Fixed: drivers walk the list, so the
/// positions matter only for docs, but fixed positions keep snapshots and docs stable.
pub mod cap_offset {
    pub const MSIX: u64 = 0x40;
    pub const COMMON: u64 = 0x50;
    pub const NOTIFY: u64 = 0x60;
    pub const ISR: u64 = 0x74;
    pub const DEVICE: u64 = 0x84;
    pub const PCI_CFG: u64 = 0x94;
    pub const PCIE: u64 = 0xA8;
}

/// The BAR registers of the type-0 header as declarations (sizing handled by the device).
pub(crate) fn header_registers(bar_lo: &[(u8, u64)]) -> Vec<Register> {
    const SRC: &str = "PCI 3.0 6.2";
    let mut v = vec![
        Register::new(
            "vendor_id",
            hdr::VENDOR_ID,
            2,
            Access::Ro,
            id::VENDOR.into(),
            "virtio vendor",
            "ifcvf_vdpa.c pci_id_ifcvf_map; ifcvf_main.c ifcvf_pci_ids",
        ),
        Register::new(
            "device_id",
            hdr::DEVICE_ID,
            2,
            Access::Ro,
            id::DEVICE_NET.into(),
            "modern virtio-net (0x1040 + 1)",
            "virtio 1.2 4.1.2; ifcvf_base.h IFCVF_NET_MODERN_DEVICE_ID",
        ),
        Register::new(
            "command",
            hdr::COMMAND,
            2,
            Access::Rw,
            0,
            "memory space, bus master (DMA allowed only when set), SERR, INTx disable",
            SRC,
        ),
        Register::new(
            "status",
            hdr::STATUS,
            2,
            Access::W1c,
            status::CAP_LIST.into(),
            "bit 4 capability list; bit 3 INTx pending; error bits RW1C",
            SRC,
        ),
        Register::new(
            "revision_id",
            hdr::REVISION_ID,
            1,
            Access::Ro,
            id::REVISION.into(),
            "revision 1 (non-transitional)",
            "virtio 1.2 4.1.2.1",
        ),
        Register::new(
            "class_code",
            hdr::CLASS_CODE,
            3,
            Access::Ro,
            id::CLASS.into(),
            "network controller, ethernet",
            SRC,
        ),
        Register::new(
            "cache_line_size",
            hdr::CACHE_LINE_SIZE,
            1,
            Access::Rw,
            0,
            "cache line size (no effect)",
            SRC,
        ),
        Register::new(
            "latency_timer",
            hdr::LATENCY_TIMER,
            1,
            Access::Ro,
            0,
            "unused on PCIe",
            SRC,
        ),
        Register::new(
            "header_type",
            hdr::HEADER_TYPE,
            1,
            Access::Ro,
            0,
            "type 0, single function",
            SRC,
        ),
        Register::new("bist", hdr::BIST, 1, Access::Ro, 0, "no BIST", SRC),
    ];
    for i in 0..6u8 {
        let (kind, reset) = bar_lo
            .iter()
            .find(|(b, _)| *b == i)
            .map_or(("unused BAR (reads 0)", 0), |&(_, r)| {
                ("64-bit memory BAR, low dword; write all-ones to size", r)
            });
        let meaning = if bar_lo.iter().any(|(b, _)| b + 1 == i) {
            "upper dword of the 64-bit BAR below"
        } else {
            kind
        };
        v.push(Register::new(
            format!("bar{i}"),
            hdr::BAR0 + 4 * u64::from(i),
            4,
            if meaning.starts_with("unused") {
                Access::Ro
            } else {
                Access::Rw
            },
            if meaning.starts_with("upper") {
                0
            } else {
                reset
            },
            meaning,
            "PCI 3.0 6.2.5.1; ifcvf_main.c maps BAR0, BAR2, BAR4",
        ));
    }
    v.extend([
        Register::new(
            "cardbus_cis",
            hdr::CARDBUS_CIS,
            4,
            Access::Ro,
            0,
            "unused",
            SRC,
        ),
        Register::new(
            "subsystem_vendor_id",
            hdr::SUBSYSTEM_VENDOR_ID,
            2,
            Access::Ro,
            id::SUBSYS_VENDOR.into(),
            "Intel",
            "ifcvf_vdpa.c IFCVF_SUBSYS_VENDOR_ID",
        ),
        Register::new(
            "subsystem_id",
            hdr::SUBSYSTEM_ID,
            2,
            Access::Ro,
            id::SUBSYS_DEVICE_NET.into(),
            "IFC VF net (0x001A)",
            "ifcvf_vdpa.c IFCVF_SUBSYS_DEVICE_ID; ifcvf_main.c N3000_SUBSYS_DEVICE_ID",
        ),
        Register::new(
            "expansion_rom",
            hdr::EXPANSION_ROM,
            4,
            Access::Ro,
            0,
            "no option ROM",
            SRC,
        ),
        Register::new(
            "capabilities_ptr",
            hdr::CAPABILITIES_PTR,
            1,
            Access::Ro,
            cap_offset::MSIX,
            "first capability (MSI-X)",
            SRC,
        ),
        Register::new(
            "interrupt_line",
            hdr::INTERRUPT_LINE,
            1,
            Access::Rw,
            0,
            "scratch for the OS",
            SRC,
        ),
        Register::new(
            "interrupt_pin",
            hdr::INTERRUPT_PIN,
            1,
            Access::Ro,
            1,
            "INTA# (used with the ISR when MSI-X is off)",
            "virtio 1.2 4.1.4.5",
        ),
        Register::new("min_gnt", hdr::MIN_GNT, 1, Access::Ro, 0, "unused", SRC),
        Register::new("max_lat", hdr::MAX_LAT, 1, Access::Ro, 0, "unused", SRC),
    ]);
    v
}
