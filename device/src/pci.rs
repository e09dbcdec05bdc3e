//! PCI configuration space of the function: the bytes the declarations in bar-registers
//! describe, with write masks (RW bits), RW1C bits, BAR sizing, the MSI-X message control and
//! the virtio PCI_CFG access window (virtio 1.2 4.1.4.9).

use bar_registers::model::{Access, Location};
use bar_registers::pci::{
    bar, cap_offset, command, hdr, msix_cap, pcie_cap, status, virtio_cap, CONFIG_SPACE_SIZE,
};
use bar_registers::DeviceLayout;
use std::ops::Range;

const SIZE: usize = CONFIG_SPACE_SIZE as usize;
/// The six BAR registers (sized and decoded by [`ConfigSpace::read`], not by write masks).
const BARS: Range<usize> = hdr::BAR0 as usize..hdr::BAR_END as usize;
/// PCIe Device Control, Device Status.
const DEVCTL: usize = (cap_offset::PCIE + pcie_cap::DEVICE_CONTROL) as usize;
const DEVSTA: u64 = cap_offset::PCIE + pcie_cap::DEVICE_STATUS;
/// MSI-X Message Control.
const MSIX_CTRL: usize = (cap_offset::MSIX + msix_cap::MESSAGE_CONTROL) as usize;
/// The virtio PCI_CFG capability and its pci_cfg_data field.
const PCI_CFG: usize = cap_offset::PCI_CFG as usize;
const PCI_CFG_DATA: u64 = cap_offset::PCI_CFG + virtio_cap::PCI_CFG_DATA;

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
        put(&mut w1c, hdr::STATUS, 2, status::W1C.into());
        put(
            &mut wmask,
            cap_offset::MSIX + msix_cap::MESSAGE_CONTROL,
            2,
            u64::from(msix_cap::CTRL_ENABLE | msix_cap::CTRL_FUNCTION_MASK),
        );
        // Bit 15 (Initiate FLR) is stored so the write can be seen, then cleared by the FLR itself.
        put(&mut wmask, DEVCTL as u64, 2, u16::MAX.into());
        put(&mut w1c, DEVSTA, 2, pcie_cap::DEVSTA_W1C.into());
        // BARs are handled by bar_read/bar_write (sizing), not by masks.
        wmask[BARS].fill(0);
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
        self.u16_at(hdr::COMMAND as usize)
    }

    fn u16_at(&self, o: usize) -> u16 {
        u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]])
    }

    fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.bytes[o..o + 4].try_into().expect("4 bytes"))
    }

    /// Whether the function may master the bus (DMA).
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Whether INTx is disabled by the command register.
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// The INTx pending status bit.
    pub fn interrupt_status(&self) -> bool {
        self.u16_at(hdr::STATUS as usize) & status::INTERRUPT != 0
    }

    /// Sets or clears the INTx pending status bit.
    pub fn set_interrupt_status(&mut self, on: bool) {
        let o = hdr::STATUS as usize;
        let v = self.u16_at(o);
        let v = if on {
            v | status::INTERRUPT
        } else {
            v & !status::INTERRUPT
        };
        self.bytes[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// MSI-X message control (enable, function mask).
    pub fn msix_control(&self) -> (bool, bool) {
        let v = self.u16_at(MSIX_CTRL);
        (
            v & msix_cap::CTRL_ENABLE != 0,
            v & msix_cap::CTRL_FUNCTION_MASK != 0,
        )
    }

    /// PCIe Max_Payload_Size and Max_Read_Request_Size in bytes.
    pub fn pcie_mps_mrrs(&self) -> (u32, u32) {
        let v = self.u16_at(DEVCTL);
        let bytes = |shift: u16| 128 << ((v >> shift) & pcie_cap::DEVCTL_SIZE_MASK);
        (
            bytes(pcie_cap::DEVCTL_MPS_SHIFT),
            bytes(pcie_cap::DEVCTL_MRRS_SHIFT),
        )
    }

    fn bar_value(&self, i: usize) -> u32 {
        let raw = self.u32_at(BARS.start + 4 * i);
        let size = self.bar_sizes[i];
        if size != 0 {
            // Low dword of a 64-bit memory BAR: address bits above the size, type bits 0b100.
            (raw & !((size - 1) as u32) & bar::MEM_ADDR_MASK) | bar::TYPE_64
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
        (u64::from(self.bar_value(i + 1)) << 32) | u64::from(self.bar_value(i) & bar::MEM_ADDR_MASK)
    }

    /// Reads `data.len()` bytes at `off` (caller checked the range).
    pub fn read(&self, off: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = off as usize + i;
            *b = if BARS.contains(&o) {
                let bar = (o - BARS.start) / 4;
                self.bar_value(bar).to_le_bytes()[(o - BARS.start) % 4]
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
            if BARS.contains(&o) {
                self.bytes[o] = v;
                continue;
            }
            let m = self.wmask[o];
            let c = self.w1c[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
            self.bytes[o] &= !(v & c);
        }
        // PCI_CFG window: pci_cfg_data access forwards to the BAR the capability selects.
        if (PCI_CFG_DATA..PCI_CFG_DATA + 4).contains(&off) {
            let (bar, boff, blen) = self.pci_cfg_window();
            let mut v = [0u8; 4];
            v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            return ConfigEffect::PciCfgWrite(bar, boff, blen, u32::from_le_bytes(v));
        }
        let flr_byte = DEVCTL + 1;
        let flr_bit = (pcie_cap::DEVCTL_FLR >> 8) as u8;
        if (off as usize..off as usize + data.len()).contains(&flr_byte)
            && self.bytes[flr_byte] & flr_bit != 0
        {
            self.bytes[flr_byte] &= !flr_bit;
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
        let bar = self.bytes[PCI_CFG + virtio_cap::BAR as usize];
        let off = self.u32_at(PCI_CFG + virtio_cap::OFFSET as usize);
        let len = self.u32_at(PCI_CFG + virtio_cap::LENGTH as usize);
        (bar, off.into(), len as usize)
    }

    /// Stores the bytes a PCI_CFG read fetched from the BAR into pci_cfg_data.
    pub fn set_pci_cfg_data(&mut self, v: u32) {
        let o = PCI_CFG_DATA as usize;
        self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Whether a config read at `off` of `len` touches pci_cfg_data (the device must fetch it).
    pub fn reads_pci_cfg_data(off: u64, len: usize) -> bool {
        off < PCI_CFG_DATA + 4 && off + len as u64 > PCI_CFG_DATA
    }
}
