//! The PCI function: configuration space (with the virtio PCI_CFG window and FLR), the MSI-X
//! table and PBA, and interrupt delivery (MSI-X, or INTx while MSI-X is off).
//!
//! PCI Local Bus 3.0 6.8.2 (MSI-X), PCIe Base 4.0 7.5.3 (Device Control FLR, MPS/MRRS), virtio
//! 1.2 4.1.4.9 (PCI_CFG access), 4.1.4.5 (ISR and INTx). A virtio reset leaves all of this alone;
//! only a function level reset (FLR, vfio DEVICE_RESET) resets it.

use super::access::put;
use crate::config::MsixOwner;
use crate::interrupt::{Delivery, InterruptSink, IsrStatus, MsixState, NullSink};
use crate::pci::{ConfigEffect, ConfigSpace};
use crate::snapshot::{invalid, Reader, SectionSpec, SnapshotError, Writer};
use bar_registers::msix::{ENTRY_SIZE, VECTOR_CONTROL, VECTOR_MASKED};
use bar_registers::pci::{cap_offset, hdr, status, virtio_cap, CONFIG_SPACE_SIZE};
use bar_registers::virtio::NO_VECTOR;
use bar_registers::DeviceLayout;
use bitvec::order::Lsb0;
use bitvec::view::BitView;
use std::sync::Arc;

const CONFIG_LEN: usize = CONFIG_SPACE_SIZE as usize;

/// What raising an interrupt turned into (the device counts the ones that went nowhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Raised {
    /// An MSI-X message, or INTx asserted, or nothing because INTx is disabled too.
    Delivered,
    /// MSI-X on, but no (valid) vector assigned (virtio 1.2 4.1.5.1.2).
    NoVector,
    /// The vector is masked: its pending bit is set (PCI 3.0 6.8.2.9).
    PendingMasked,
}

/// An access to the MSI-X table or PBA with a width or alignment the arrays do not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadMsixAccess;

/// The MSI-X section's image (`MSIX`).
#[derive(Debug)]
pub(crate) struct MsixImage {
    enabled: bool,
    function_mask: bool,
    table: Vec<u32>,
    pending: Vec<u64>,
}

/// Configuration space, MSI-X and the interrupt sink.
pub struct PciFunction {
    config: ConfigSpace,
    msix: MsixState,
    owner: MsixOwner,
    sink: Arc<dyn InterruptSink>,
    /// The device's ISR, told whether a read of it touches INTx ([`PciFunction::publish_isr_read`]).
    isr: IsrStatus,
}

impl std::fmt::Debug for PciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciFunction")
            .field("config", &self.config)
            .field("msix", &self.msix)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl PciFunction {
    /// The `PCIC` section of the device-state stream.
    pub const CONFIG_SECTION: SectionSpec = SectionSpec {
        name: "PCIC",
        body: "the 4096 config space bytes as the function reads them",
    };
    /// The `MSIX` section of the device-state stream.
    pub const MSIX_SECTION: SectionSpec = SectionSpec {
        name: "MSIX",
        body: "vectors u16, enabled u8, function_mask u8, table (vectors x 4 dwords u32), PBA (ceil(vectors/64) x u64)",
    };

    /// The function at reset, interrupts going to `sink`, the device's ISR in `isr`.
    pub fn new(
        layout: &DeviceLayout,
        owner: MsixOwner,
        sink: Arc<dyn InterruptSink>,
        isr: IsrStatus,
    ) -> Self {
        let f = PciFunction {
            config: ConfigSpace::new(layout),
            msix: MsixState::new(layout.msix_vectors),
            owner,
            sink,
            isr,
        };
        f.publish_isr_read();
        f
    }

    /// Tells the ISR whether its read must go through the device lock: it must while the read
    /// also deasserts INTx (4.1.4.5.1), that is while MSI-X is disabled or the INTx status bit
    /// is set. Called after everything that changes either bit (config writes, INTx raise and
    /// deassert, reset, restore).
    fn publish_isr_read(&self) {
        let (msix_enabled, _) = self.config.msix_control();
        self.isr
            .set_read_needs_lock(!msix_enabled || self.config.interrupt_status());
    }

    /// Where interrupts go from now on.
    pub fn set_sink(&mut self, sink: Arc<dyn InterruptSink>) {
        self.sink = sink;
    }

    /// Function level reset: config space and MSI-X back to their reset state.
    pub fn reset(&mut self) {
        self.msix.reset();
        self.config.reset();
        self.publish_isr_read();
    }

    /// Whether the function may master the bus (DMA).
    pub fn bus_master(&self) -> bool {
        self.config.bus_master()
    }

    /// PCIe Max_Payload_Size and Max_Read_Request_Size in bytes (the bus model's TLP sizes).
    pub fn pcie_mps_mrrs(&self) -> (u32, u32) {
        self.config.pcie_mps_mrrs()
    }

    /// The BAR access a config read at `off` must do first: pci_cfg_data is being read, so the
    /// window the PCI_CFG capability selects (bar, offset, length) is fetched into it.
    pub fn pci_cfg_read_window(&self, off: u64, len: usize) -> Option<(u8, u64, usize)> {
        ConfigSpace::reads_pci_cfg_data(off, len).then(|| self.config.pci_cfg_window())
    }

    /// Stores what the PCI_CFG window read into pci_cfg_data.
    pub fn set_pci_cfg_data(&mut self, v: u32) {
        self.config.set_pci_cfg_data(v);
    }

    /// A config space read.
    pub fn config_read(&self, off: u64, data: &mut [u8]) {
        self.config.read(off, data);
    }

    /// A config space write; MSI-X control changes are handled here (pending vectors that
    /// became deliverable fire), the rest is for the device.
    pub fn config_write(&mut self, off: u64, data: &[u8]) -> ConfigEffect {
        let effect = self.config.write(off, data);
        self.publish_isr_read();
        if effect == ConfigEffect::MsixControl {
            self.sync_msix_control();
            for v in self.msix.unmasked_pending() {
                self.sink.msix(v);
            }
        }
        effect
    }

    fn sync_msix_control(&mut self) {
        let (enabled, fmask) = self.config.msix_control();
        self.msix.set_control(enabled, fmask);
    }

    /// Raises `vector` (MSI-X) or INTx (MSI-X off, INTx not disabled: the interrupt status bit
    /// and the line, until the ISR read).
    pub(crate) fn raise(&mut self, vector: u16) -> Raised {
        self.sync_msix_control();
        if self.msix.enabled() {
            if vector == NO_VECTOR {
                return Raised::NoVector;
            }
            if self.owner == MsixOwner::Vmm {
                if vector < self.msix.vectors() {
                    self.sink.msix(vector);
                    return Raised::Delivered;
                }
                return Raised::NoVector;
            }
            match self.msix.request(vector, self.sink.as_ref()) {
                Delivery::Sent => Raised::Delivered,
                Delivery::Pending => Raised::PendingMasked,
                Delivery::NoVector => Raised::NoVector,
            }
        } else {
            if !self.config.intx_disabled() {
                self.config.set_interrupt_status(true);
                self.publish_isr_read();
                self.sink.intx(true);
            }
            Raised::Delivered
        }
    }

    /// Deasserts INTx (the ISR was read, 4.1.4.5.1).
    pub fn intx_deassert(&mut self) {
        self.config.set_interrupt_status(false);
        self.publish_isr_read();
        self.sink.intx(false);
    }

    /// Drops the INTx line without touching config space (virtio reset).
    pub fn intx_line_low(&self) {
        self.sink.intx(false);
    }

    /// A read in the MSI-X table or PBA (plain dword/qword arrays: any aligned dword or qword,
    /// PCI 3.0 6.8.2). None when (bar, off) is in neither.
    pub(crate) fn msix_read(
        &self,
        layout: &DeviceLayout,
        bar: u8,
        off: u64,
        data: &mut [u8],
    ) -> Option<Result<(), BadMsixAccess>> {
        let value = if let Some(rel) = layout.msix_table.contains(bar, off) {
            let t = |o| u64::from(self.msix.table_read(o));
            match data.len() {
                4 if rel % 4 == 0 => t(rel),
                8 if rel % 8 == 0 => t(rel) | (t(rel + 4) << 32),
                _ => return Some(Err(BadMsixAccess)),
            }
        } else {
            let rel = layout.msix_pba.contains(bar, off)?;
            let q = self.msix.pba_read((rel / 8) as usize);
            match data.len() {
                8 if rel % 8 == 0 => q,
                4 if rel % 4 == 0 => q >> (8 * (rel % 8)),
                _ => return Some(Err(BadMsixAccess)),
            }
        };
        put(data, value);
        Some(Ok(()))
    }

    /// A write in the MSI-X table (unmasking a vector with its pending bit set fires it). None
    /// when (bar, off) is not in the table.
    pub(crate) fn msix_write(
        &mut self,
        layout: &DeviceLayout,
        bar: u8,
        off: u64,
        len: usize,
        val: u64,
    ) -> Option<Result<(), BadMsixAccess>> {
        let rel = layout.msix_table.contains(bar, off)?;
        let dwords: &[(u64, u32)] = match len {
            4 if rel % 4 == 0 => &[(rel, val as u32)],
            8 if rel % 8 == 0 => &[(rel, val as u32), (rel + 4, (val >> 32) as u32)],
            _ => return Some(Err(BadMsixAccess)),
        };
        for &(o, d) in dwords {
            if let Some(v) = self.msix.table_write(o, d) {
                self.sink.msix(v);
            }
        }
        Some(Ok(()))
    }

    // ------------------------------------------------------------ device-state stream sections

    /// Writes the `PCIC` body.
    pub(crate) fn save_config(&self, w: &mut Writer) {
        let mut img = vec![0u8; CONFIG_LEN];
        self.config.read(0, &mut img);
        w.bytes(&img);
    }

    /// Reads a `PCIC` body.
    pub(crate) fn parse_config(r: &mut Reader<'_>) -> Result<Vec<u8>, SnapshotError> {
        let b = r.take(CONFIG_LEN)?.to_vec();
        r.finish()?;
        Ok(b)
    }

    /// Rebuilds config space (just reset) from a `PCIC` image, through the write masks, then
    /// reads it back: what cannot be written is what the device itself defines, and must
    /// already be equal.
    pub(crate) fn restore_config(&mut self, img: &[u8]) -> Result<(), SnapshotError> {
        for off in (0..CONFIG_LEN).step_by(4) {
            let _ = self.config.write(off as u64, &img[off..off + 4]);
        }
        let status_at = hdr::STATUS as usize;
        let intx = u16::from_le_bytes([img[status_at], img[status_at + 1]]) & status::INTERRUPT;
        self.config.set_interrupt_status(intx != 0);
        self.publish_isr_read();
        let data_at = (cap_offset::PCI_CFG + virtio_cap::PCI_CFG_DATA) as usize;
        self.config.set_pci_cfg_data(u32::from_le_bytes(
            img[data_at..data_at + 4].try_into().expect("4 bytes"),
        ));
        let mut back = vec![0u8; CONFIG_LEN];
        self.config.read(0, &mut back);
        match (0..CONFIG_LEN).find(|&i| back[i] != img[i]) {
            Some(offset) => Err(SnapshotError::ConfigMismatch {
                offset,
                saved: img[offset],
                here: back[offset],
            }),
            None => Ok(()),
        }
    }

    /// Writes the `MSIX` body.
    pub(crate) fn save_msix(&self, w: &mut Writer) {
        let n = self.msix.vectors();
        w.u16(n);
        w.u8(self.msix.enabled().into());
        w.u8(self.msix.function_mask().into());
        for off in (0..u64::from(n) * ENTRY_SIZE).step_by(4) {
            w.u32(self.msix.table_read(off));
        }
        for i in 0..usize::from(n).div_ceil(64) {
            w.u64(self.msix.pba_read(i));
        }
    }

    /// Reads an `MSIX` body of a device with `vectors` vectors.
    pub(crate) fn parse_msix(r: &mut Reader<'_>, vectors: u16) -> Result<MsixImage, SnapshotError> {
        let n = r.u16()?;
        if n != vectors {
            return Err(invalid(
                "msix vectors",
                format!("{n} in MSIX, {vectors} in IDNT"),
            ));
        }
        let enabled = r.bool("msix enable")?;
        let function_mask = r.bool("msix function mask")?;
        let dwords = usize::from(n) * (ENTRY_SIZE as usize / 4);
        let table = (0..dwords)
            .map(|_| r.u32())
            .collect::<Result<Vec<_>, _>>()?;
        for (v, e) in table.chunks_exact(4).enumerate() {
            if e[3] & !VECTOR_MASKED != 0 {
                return Err(invalid(
                    "msix vector control",
                    format!("vector {v}: {:#x}", e[3]),
                ));
            }
        }
        let pending = (0..usize::from(n).div_ceil(64))
            .map(|_| r.u64())
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(last) = pending.last() {
            let used = usize::from(n) % 64;
            if used != 0 && last >> used != 0 {
                return Err(invalid(
                    "msix pending bits",
                    "bits set beyond the last vector",
                ));
            }
        }
        r.finish()?;
        Ok(MsixImage {
            enabled,
            function_mask,
            table,
            pending,
        })
    }

    /// Rebuilds MSI-X (just reset) from an image: table first (with MSI-X off nothing pending
    /// is taken), then the pending bits (requested under a function mask, so they stick), then
    /// enable and mask as saved; the table is read back.
    pub(crate) fn restore_msix(&mut self, img: &MsixImage) -> Result<(), SnapshotError> {
        self.msix.set_control(false, true);
        for (i, &d) in img.table.iter().enumerate() {
            let _ = self.msix.table_write(4 * i as u64, d);
        }
        for v in img.pending.view_bits::<Lsb0>().iter_ones() {
            let _ = self.msix.request(v as u16, &NullSink);
        }
        self.msix.set_control(img.enabled, img.function_mask);
        for (i, &d) in img.table.iter().enumerate() {
            let off = 4 * i as u64;
            let want = if off % ENTRY_SIZE == VECTOR_CONTROL {
                d & VECTOR_MASKED
            } else {
                d
            };
            if self.msix.table_read(off) != want {
                return Err(invalid("msix table", format!("dword {i} did not restore")));
            }
        }
        Ok(())
    }
}
