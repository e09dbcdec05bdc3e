//! PCI configuration space of the function: the bytes the declarations in bar-registers
//! describe, with write masks (RW bits), RW1C bits, BAR sizing, the MSI-X message control and
//! the virtio PCI_CFG access window (virtio 1.2 4.1.4.9).

use bar_registers::model::{Access, Location};
use bar_registers::pci::{
    cap_offset, command, hdr, msix_cap, pcie_cap, virtio_cap, CONFIG_SPACE_SIZE,
};
use bar_registers::DeviceLayout;

const SIZE: usize = CONFIG_SPACE_SIZE as usize;

/// What a config write asks the device to do besides storing bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigEffect {
    None,
    /// MSI-X enable or function-mask bit changed.
    MsixControl,
    /// The command register changed (bus mastering may have been turned on or off).
    Command,
    /// PCIe Device Control "Initiate Function Level Reset" written.
    FunctionLevelReset,
    /// A write through the PCI_CFG window into a BAR: (bar, offset, len, value).
    PciCfgWrite(u8, u64, usize, u32),
}

/// Configuration space state.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; SIZE]>,
    wmask: Box<[u8; SIZE]>,
    w1c: Box<[u8; SIZE]>,
    reset_image: Box<[u8; SIZE]>,
    bar_sizes: [u64; 6],
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("command", &self.command())
            .finish_non_exhaustive()
    }
}

fn put(buf: &mut [u8; SIZE], off: u64, width: u8, val: u64) {
    for i in 0..u64::from(width) {
        buf[(off + i) as usize] = (val >> (8 * i)) as u8;
    }
}

impl ConfigSpace {
    /// Builds the reset image from every register block located in config space.
    pub fn new(layout: &DeviceLayout) -> Self {
        let mut bytes = Box::new([0u8; SIZE]);
        let mut wmask = Box::new([0u8; SIZE]);
        let mut w1c = Box::new([0u8; SIZE]);
        for b in &layout.blocks {
            let Location::Config(base) = b.location else {
                continue;
            };
            for r in &b.registers {
                put(&mut bytes, base + r.offset, r.width, r.reset);
                match r.access {
                    Access::Rw => put(&mut wmask, base + r.offset, r.width, u64::MAX),
                    Access::W1c => put(&mut w1c, base + r.offset, r.width, u64::MAX),
                    _ => {}
                }
            }
        }
        // Narrower masks where a register is only partly writable.
        put(&mut wmask, hdr::COMMAND, 2, command::WRITABLE.into());
        put(
            &mut w1c,
            hdr::STATUS,
            2,
            bar_registers::pci::status::W1C.into(),
        );
        put(
            &mut wmask,
            cap_offset::MSIX + msix_cap::MESSAGE_CONTROL,
            2,
            u64::from(msix_cap::CTRL_ENABLE | msix_cap::CTRL_FUNCTION_MASK),
        );
        // Bit 15 (Initiate FLR) is stored so the write can be seen, then cleared by the FLR itself.
        put(
            &mut wmask,
            cap_offset::PCIE + pcie_cap::DEVICE_CONTROL,
            2,
            0xFFFF,
        );
        put(
            &mut w1c,
            cap_offset::PCIE + pcie_cap::DEVICE_STATUS,
            2,
            0x000F,
        );
        // BARs are handled by bar_read/bar_write (sizing), not by masks.
        wmask[0x10..0x28].fill(0);
        let mut bar_sizes = [0u64; 6];
        for bar in &layout.bars {
            bar_sizes[usize::from(bar.index)] = bar.size;
        }
        let reset_image = bytes.clone();
        ConfigSpace {
            bytes,
            wmask,
            w1c,
            reset_image,
            bar_sizes,
        }
    }

    /// Function level reset: back to the reset image.
    pub fn reset(&mut self) {
        self.bytes.copy_from_slice(&self.reset_image[..]);
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[4], self.bytes[5]])
    }

    /// Whether the function may master the bus (DMA).
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Whether INTx is disabled by the command register.
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// Sets or clears the INTx pending status bit.
    pub fn set_interrupt_status(&mut self, on: bool) {
        let s = bar_registers::pci::status::INTERRUPT as u8;
        if on {
            self.bytes[6] |= s;
        } else {
            self.bytes[6] &= !s;
        }
    }

    /// MSI-X message control (enable, function mask).
    pub fn msix_control(&self) -> (bool, bool) {
        let o = (cap_offset::MSIX + msix_cap::MESSAGE_CONTROL) as usize;
        let v = u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]]);
        (
            v & msix_cap::CTRL_ENABLE != 0,
            v & msix_cap::CTRL_FUNCTION_MASK != 0,
        )
    }

    /// PCIe Max_Payload_Size and Max_Read_Request_Size in bytes.
    pub fn pcie_mps_mrrs(&self) -> (u32, u32) {
        let o = (cap_offset::PCIE + pcie_cap::DEVICE_CONTROL) as usize;
        let v = u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]]);
        (
            128 << ((v >> pcie_cap::DEVCTL_MPS_SHIFT) & 7),
            128 << ((v >> pcie_cap::DEVCTL_MRRS_SHIFT) & 7),
        )
    }

    fn bar_value(&self, i: usize) -> u32 {
        let raw = u32::from_le_bytes(
            self.bytes[0x10 + 4 * i..0x14 + 4 * i]
                .try_into()
                .expect("4 bytes"),
        );
        let size = self.bar_sizes[i];
        if size != 0 {
            // Low dword of a 64-bit memory BAR: address bits above the size, type bits 0b100.
            (raw & !((size - 1) as u32) & !0xF) | DeviceLayout::BAR_TYPE_64
        } else if i > 0 && self.bar_sizes[i - 1] != 0 {
            // Upper dword: all address bits writable (sizes are below 4 GiB).
            raw & !(((self.bar_sizes[i - 1] - 1) >> 32) as u32)
        } else {
            0
        }
    }

    /// The address software programmed into BAR `i` (for diagnostics).
    pub fn bar_address(&self, i: usize) -> u64 {
        if i + 1 >= 6 || self.bar_sizes[i] == 0 {
            return 0;
        }
        (u64::from(self.bar_value(i + 1)) << 32) | u64::from(self.bar_value(i) & !0xF)
    }

    /// Reads `data.len()` bytes at `off` (caller checked the range).
    pub fn read(&self, off: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = off as usize + i;
            *b = if (0x10..0x28).contains(&o) {
                let bar = (o - 0x10) / 4;
                self.bar_value(bar).to_le_bytes()[(o - 0x10) % 4]
            } else {
                self.bytes[o]
            };
        }
    }

    /// Writes `data` at `off` honouring RW and RW1C masks; reports side effects.
    pub fn write(&mut self, off: u64, data: &[u8]) -> ConfigEffect {
        let before_cmd = self.command();
        let before_msix = self.msix_control();
        let mut effect = ConfigEffect::None;
        for (i, &v) in data.iter().enumerate() {
            let o = off as usize + i;
            if (0x10..0x28).contains(&o) {
                self.bytes[o] = v;
                continue;
            }
            let m = self.wmask[o];
            let c = self.w1c[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
            self.bytes[o] &= !(v & c);
        }
        // PCI_CFG window: pci_cfg_data access forwards to the BAR the capability selects.
        let data_off = cap_offset::PCI_CFG + virtio_cap::PCI_CFG_DATA;
        if off >= data_off && off < data_off + 4 {
            let (bar, boff, blen) = self.pci_cfg_window();
            let mut v = [0u8; 4];
            v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            return ConfigEffect::PciCfgWrite(bar, boff, blen, u32::from_le_bytes(v));
        }
        let devctl = (cap_offset::PCIE + pcie_cap::DEVICE_CONTROL) as usize;
        if (off as usize..off as usize + data.len()).contains(&(devctl + 1))
            && self.bytes[devctl + 1] & 0x80 != 0
        {
            self.bytes[devctl + 1] &= 0x7F;
            effect = ConfigEffect::FunctionLevelReset;
        } else if self.msix_control() != before_msix {
            effect = ConfigEffect::MsixControl;
        } else if self.command() != before_cmd {
            effect = ConfigEffect::Command;
        }
        effect
    }

    /// The (bar, offset, length) the PCI_CFG capability currently selects.
    pub fn pci_cfg_window(&self) -> (u8, u64, usize) {
        let c = cap_offset::PCI_CFG as usize;
        let bar = self.bytes[c + virtio_cap::BAR as usize];
        let off = u32::from_le_bytes(self.bytes[c + 8..c + 12].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(self.bytes[c + 12..c + 16].try_into().expect("4 bytes"));
        (bar, off.into(), len as usize)
    }

    /// Stores the bytes a PCI_CFG read fetched from the BAR into pci_cfg_data.
    pub fn set_pci_cfg_data(&mut self, v: u32) {
        let o = (cap_offset::PCI_CFG + virtio_cap::PCI_CFG_DATA) as usize;
        self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Whether a config read at `off` of `len` touches pci_cfg_data (the device must fetch it).
    pub fn reads_pci_cfg_data(off: u64, len: usize) -> bool {
        let d = cap_offset::PCI_CFG + virtio_cap::PCI_CFG_DATA;
        off < d + 4 && off + len as u64 > d
    }
}
