//! MSI-X table and pending-bit array (PCI 3.0 6.8.2), placed in BAR2.

use crate::model::{Access, Register};

/// Size of one table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Entry fields.
pub const MSG_ADDR_LO: u64 = 0;
pub const MSG_ADDR_HI: u64 = 4;
pub const MSG_DATA: u64 = 8;
pub const VECTOR_CONTROL: u64 = 12;
/// Vector control: masked.
pub const VECTOR_MASKED: u32 = 1;
/// Offset of the table inside BAR2.
pub const TABLE_OFFSET: u64 = 0;
/// Offset of the PBA inside BAR2.
pub const PBA_OFFSET: u64 = 0x1000;

pub(crate) fn table_registers(vectors: u16) -> Vec<Register> {
    const SRC: &str = "PCI 3.0 6.8.2.6-9";
    let mut v = Vec::new();
    for i in 0..u64::from(vectors) {
        let b = TABLE_OFFSET + i * ENTRY_SIZE;
        v.push(Register::new(
            format!("msg_addr_lo[{i}]"),
            b + MSG_ADDR_LO,
            4,
            Access::Rw,
            0,
            "message address, low",
            SRC,
        ));
        v.push(Register::new(
            format!("msg_addr_hi[{i}]"),
            b + MSG_ADDR_HI,
            4,
            Access::Rw,
            0,
            "message address, high",
            SRC,
        ));
        v.push(Register::new(
            format!("msg_data[{i}]"),
            b + MSG_DATA,
            4,
            Access::Rw,
            0,
            "message data",
            SRC,
        ));
        v.push(Register::new(
            format!("vector_control[{i}]"),
            b + VECTOR_CONTROL,
            4,
            Access::Rw,
            u64::from(VECTOR_MASKED),
            "bit 0 mask (set at reset)",
            SRC,
        ));
    }
    v
}

pub(crate) fn pba_registers(vectors: u16) -> Vec<Register> {
    (0..u64::from(vectors).div_ceil(64))
        .map(|i| {
            Register::new(
                format!("pba[{i}]"),
                8 * i,
                8,
                Access::Ro,
                0,
                "pending bits of masked vectors 64i..64i+63",
                "PCI 3.0 6.8.2.10",
            )
            .live()
        })
        .collect()
}
