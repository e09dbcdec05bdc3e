//! The vocabulary every register declaration is written in.

/// How software may access a register (the device, the validator and the docs all read this).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-only: writes are ignored.
    Ro,
    /// Read-write.
    Rw,
    /// Read; writing 1 to a bit clears it (PCI status error bits).
    W1c,
    /// Write-only: reads return 0.
    Wo,
    /// Read-to-clear: a read returns the value and resets it to 0 (virtio ISR status).
    Rc,
}

impl Access {
    /// Short name used in docs and validator output.
    pub fn name(self) -> &'static str {
        match self {
            Access::Ro => "RO",
            Access::Rw => "RW",
            Access::W1c => "W1C",
            Access::Wo => "WO",
            Access::Rc => "RC",
        }
    }
}

/// Which accesses narrower than the register's width are legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Narrow {
    /// Only the natural width (virtio 1.x 4.1.3.1: "natural width" for common configuration fields).
    No,
    /// A 64-bit register may also be accessed as two 32-bit halves (virtio 4.1.3.1; both real
    /// drivers use `io_write64_twopart` / `vp_iowrite64_twopart`).
    Halves,
    /// Any naturally aligned narrower access (device config space: Linux reads it byte by byte).
    Any,
    /// Any naturally aligned narrower read; writes at the natural width only (the DPDK-layout
    /// LM ring state: DPDK's compiled ifcvf_hw_disable loads just its high u16, while
    /// ifcvf_hw_enable writes whole dwords).
    Reads,
}

/// The direction of an access (a register may take narrower reads than writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// A read.
    Read,
    /// A write.
    Write,
}

/// One register, declared once: the device model, the validator and docs/registers.md use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// Name, as in the spec or the driver header (array registers get `[n]`).
    pub name: String,
    /// Byte offset inside its block.
    pub offset: u64,
    /// Width in bytes (1, 2, 3 (PCI class code), 4, 6 (a MAC address) or 8).
    pub width: u8,
    /// Access type.
    pub access: Access,
    /// Narrower accesses allowed.
    pub narrow: Narrow,
    /// Value after reset (for registers whose reset value depends on the device
    /// configuration, the value for this layout).
    pub reset: u64,
    /// Whether `reset` is checkable by a reader after a device reset (false for registers
    /// that read live device state, e.g. a ring state that the driver programs).
    pub reset_checkable: bool,
    /// What it means.
    pub meaning: &'static str,
    /// Where its definition comes from (spec section or driver file).
    pub source: &'static str,
}

impl Register {
    /// A register with the common defaults (natural width only, reset value checkable).
    pub fn new(
        name: impl Into<String>,
        offset: u64,
        width: u8,
        access: Access,
        reset: u64,
        meaning: &'static str,
        source: &'static str,
    ) -> Self {
        Register {
            name: name.into(),
            offset,
            width,
            access,
            narrow: if width == 8 {
                Narrow::Halves
            } else {
                Narrow::No
            },
            reset,
            reset_checkable: true,
            meaning,
            source,
        }
    }

    /// Allow narrower accesses.
    pub fn narrow(mut self, n: Narrow) -> Self {
        self.narrow = n;
        self
    }

    /// Mark the reset value as not observable by a plain read after reset.
    pub fn live(mut self) -> Self {
        self.reset_checkable = false;
        self
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.width)
    }

    /// Whether an access of `len` bytes at block offset `offset` is legal for this register.
    pub fn accepts(&self, offset: u64, len: u64, dir: Dir) -> bool {
        if offset < self.offset || offset + len > self.end() || len == 0 {
            return false;
        }
        let rel = offset - self.offset;
        if len == u64::from(self.width) {
            return rel == 0;
        }
        match self.narrow {
            Narrow::No => false,
            Narrow::Halves => len == 4 && rel.is_multiple_of(4),
            Narrow::Any => len.is_power_of_two() && rel.is_multiple_of(len),
            Narrow::Reads => dir == Dir::Read && len.is_power_of_two() && rel.is_multiple_of(len),
        }
    }
}

/// Where a block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// PCI configuration space at this offset.
    Config(u64),
    /// A memory BAR (0..=5) at this offset.
    Bar(u8, u64),
}

/// A group of registers that a driver locates as one unit (a capability structure, a BAR window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterBlock {
    /// Short identifier (`common_cfg`, `lm`, ...).
    pub id: &'static str,
    /// Title for docs.
    pub title: &'static str,
    /// Where it lives.
    pub location: Location,
    /// Size of the window in bytes (registers all lie inside).
    pub size: u64,
    /// Registers sorted by offset, non-overlapping.
    pub registers: Vec<Register>,
    /// One paragraph on what drives it.
    pub summary: &'static str,
}

/// Result of decoding an access against a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A legal access to this register; `rel` is the byte offset inside the register.
    Reg { reg: &'a Register, rel: u64 },
    /// The offset is inside the block but hits no register (reserved space).
    Reserved,
    /// The access hits a register with an illegal width or alignment, or spans registers.
    BadWidth { reg: &'a Register },
    /// The access runs past the end of the block.
    OutOfRange,
}

impl RegisterBlock {
    /// Find the register an access hits and check its width for the direction.
    pub fn decode(&self, offset: u64, len: u64, dir: Dir) -> Decoded<'_> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => return Decoded::OutOfRange,
        }
        let idx = self.registers.partition_point(|r| r.end() <= offset);
        match self.registers.get(idx) {
            Some(reg) if reg.offset < offset + len => {
                if reg.accepts(offset, len, dir) {
                    Decoded::Reg {
                        reg,
                        rel: offset - reg.offset,
                    }
                } else {
                    Decoded::BadWidth { reg }
                }
            }
            _ => Decoded::Reserved,
        }
    }

    /// Look a register up by name.
    pub fn get(&self, name: &str) -> Option<&Register> {
        self.registers.iter().find(|r| r.name == name)
    }

    /// Check the declaration itself: registers sorted, non-overlapping, inside the block.
    pub fn check(&self) -> Result<(), String> {
        let mut prev_end = 0;
        for r in &self.registers {
            if r.offset < prev_end {
                return Err(format!(
                    "{}: {} overlaps the previous register",
                    self.id, r.name
                ));
            }
            if r.end() > self.size {
                return Err(format!("{}: {} runs past the block end", self.id, r.name));
            }
            if !matches!(r.width, 1 | 2 | 3 | 4 | 6 | 8) {
                return Err(format!("{}: {} has width {}", self.id, r.name, r.width));
            }
            prev_end = r.end();
        }
        Ok(())
    }
}
