//! PCI discovery as a driver does it: read config space, check identity, walk the capability
//! list (with the pci-driver crate's typed parser) and locate the virtio windows.

use crate::DriverError;
use bar_registers::pci::{cap_id, hdr, msix_cap, virtio_cap, virtio_cfg_type};
use bar_registers::REGION_CONFIG;
use device::RegionAccess;
use pci_driver::config::caps::{Capability, MsiXCapability, VendorSpecificCapability};
use pci_driver::config::PciConfig;
use pci_driver::regions::{AsPciSubregion, BackedByPciSubregion, PciMemoryRegion};

/// A window (bar, offset, length) a virtio capability points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub bar: u8,
    pub offset: u64,
    pub len: u64,
}

/// Everything the driver learns from config space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciInfo {
    pub vendor: u16,
    pub device: u16,
    pub subsys_vendor: u16,
    pub subsys_device: u16,
    pub revision: u8,
    pub class: u32,
    pub common: Window,
    pub notify: Window,
    pub notify_multiplier: u32,
    pub isr: Window,
    pub device_cfg: Window,
    /// Offset of the PCI_CFG access capability.
    pub pci_cfg_cap: Option<u64>,
    /// MSI-X: capability offset, table size, table (bar, offset), PBA (bar, offset).
    pub msix_cap: u64,
    pub msix_vectors: u16,
    pub msix_table: (u8, u64),
    pub msix_pba: (u8, u64),
    /// Capabilities in list order: (offset, id, cfg_type for virtio).
    pub caps: Vec<(u64, u8, Option<u8>)>,
    /// Raw first 256 bytes of config space.
    pub raw: Vec<u8>,
}

/// Reads the standard config space with dword reads.
pub fn read_config(dev: &dyn RegionAccess) -> Result<Vec<u8>, DriverError> {
    let mut raw = vec![0u8; 256];
    for (i, chunk) in raw.chunks_exact_mut(4).enumerate() {
        dev.region_read(REGION_CONFIG, 4 * i as u64, chunk)?;
    }
    Ok(raw)
}

fn u32_at(raw: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(raw[off..off + 4].try_into().expect("4 bytes"))
}

/// Probes the function.
pub fn probe(dev: &dyn RegionAccess) -> Result<PciInfo, DriverError> {
    let raw = read_config(dev)?;
    let region = PciMemoryRegion::new(&raw);
    let config = PciConfig::backed_by(&region);
    let io = |e: std::io::Error| DriverError::Probe(e.to_string());
    let vendor = config.vendor_id().read().map_err(io)?;
    let device = config.device_id().read().map_err(io)?;
    let subsys_vendor = config.subsystem_vendor_id().read().map_err(io)?;
    let subsys_device = config.subsystem_id().read().map_err(io)?;
    let revision = config.revision_id().read().map_err(io)?;
    // Class code from the raw bytes: pci-driver 0.1.4's PciClassCode puts base_class_code at
    // 0x09, but PCI 3.0 6.2.1 has the programming interface at 0x09, sub-class at 0x0A and the
    // base class at 0x0B (the crate's field order is reversed).
    let cc = hdr::CLASS_CODE as usize;
    let class = (u32::from(raw[cc + 2]) << 16) | (u32::from(raw[cc + 1]) << 8) | u32::from(raw[cc]);
    let caps = config.capabilities().map_err(io)?;

    let mut found: Vec<(u64, u8, Option<u8>)> = Vec::new();
    let mut windows: [Option<(Window, u64)>; 6] = [None; 6];
    for cap in caps.iter() {
        let off = cap.as_subregion().offset_in_underlying_region();
        let id = cap.header().capability_id().read().map_err(io)?;
        found.push((off, id, None));
    }
    for cap in caps.of_type::<VendorSpecificCapability>().map_err(io)? {
        let off = cap.as_subregion().offset_in_underlying_region();
        let o = off as usize;
        let len = cap.capability_length().read().map_err(io)?;
        if usize::from(len) < usize::from(virtio_cap::LEN) {
            continue;
        }
        let ty = raw[o + virtio_cap::CFG_TYPE as usize];
        let w = Window {
            bar: raw[o + virtio_cap::BAR as usize],
            offset: u32_at(&raw, o + virtio_cap::OFFSET as usize).into(),
            len: u32_at(&raw, o + virtio_cap::LENGTH as usize).into(),
        };
        if let Some(e) = found.iter_mut().find(|e| e.0 == off) {
            e.2 = Some(ty);
        }
        // virtio 1.2 4.1.4: use the first capability of each type the driver understands.
        if usize::from(ty) < windows.len() && windows[usize::from(ty)].is_none() {
            windows[usize::from(ty)] = Some((w, off));
        }
    }
    let need = |t: u8, name: &str| {
        windows[usize::from(t)]
            .ok_or_else(|| DriverError::Probe(format!("no virtio {name} capability")))
    };
    let (common, _) = need(virtio_cfg_type::COMMON, "common cfg")?;
    let (notify, notify_off) = need(virtio_cfg_type::NOTIFY, "notify")?;
    let (isr, _) = need(virtio_cfg_type::ISR, "ISR")?;
    let (device_cfg, _) = need(virtio_cfg_type::DEVICE, "device cfg")?;
    let notify_multiplier = u32_at(
        &raw,
        (notify_off + virtio_cap::NOTIFY_OFF_MULTIPLIER) as usize,
    );
    let pci_cfg_cap = windows[usize::from(virtio_cfg_type::PCI_CFG)].map(|(_, off)| off);

    let msix = caps
        .of_type::<MsiXCapability>()
        .map_err(io)?
        .next()
        .ok_or_else(|| DriverError::Probe("no MSI-X capability".into()))?;
    let msix_cap = msix.as_subregion().offset_in_underlying_region();
    let m = msix_cap as usize;
    let ctrl_at = m + msix_cap::MESSAGE_CONTROL as usize;
    let ctrl = u16::from_le_bytes([raw[ctrl_at], raw[ctrl_at + 1]]);
    let table = u32_at(&raw, m + msix_cap::TABLE as usize);
    let pba = u32_at(&raw, m + msix_cap::PBA as usize);
    let bir = |v: u32| {
        (
            (v & msix_cap::BIR_MASK) as u8,
            u64::from(v & !msix_cap::BIR_MASK),
        )
    };
    debug_assert_eq!(raw[m], cap_id::MSIX);
    Ok(PciInfo {
        vendor,
        device,
        subsys_vendor,
        subsys_device,
        revision,
        class,
        common,
        notify,
        notify_multiplier,
        isr,
        device_cfg,
        pci_cfg_cap,
        msix_cap,
        msix_vectors: (ctrl & msix_cap::CTRL_TABLE_SIZE) + 1,
        msix_table: bir(table),
        msix_pba: bir(pba),
        caps: found,
        raw,
    })
}
