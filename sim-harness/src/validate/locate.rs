//! Where a finding points and which identity it expects, spelled from the bar-registers
//! declarations (register names from the blocks of the declared layout, offsets and IDs from
//! `bar_registers::pci`), so the validator's report never names a register the declarations
//! do not have.

use bar_registers::model::Location;
use bar_registers::pci::id;
use bar_registers::{DeviceLayout, LayoutParams};
use std::sync::OnceLock;

/// The declared layout (default parameters: register names and block places do not depend on
/// the queue count or LM layout the device was built with).
fn layout() -> &'static DeviceLayout {
    static L: OnceLock<DeviceLayout> = OnceLock::new();
    L.get_or_init(|| DeviceLayout::new(LayoutParams::default()).expect("default layout is valid"))
}

/// `config 0x34`: a PCI configuration space offset.
pub fn config(off: u64) -> String {
    format!("config {off:#04x}")
}

/// `config 0x00, 0x2c`: several configuration space offsets.
pub fn config_at(offs: &[u64]) -> String {
    let v: Vec<String> = offs.iter().map(|o| format!("{o:#04x}")).collect();
    format!("config {}", v.join(", "))
}

/// `common cfg num_queues`: the register declared at `offset` of block `block` (`common_cfg`,
/// `device_cfg`, ...), the block id with spaces. Panics if nothing is declared there: a
/// location the declarations do not have is a validator bug, caught by its tests.
pub fn reg(block: &str, offset: u64) -> String {
    let b = layout()
        .block(block)
        .unwrap_or_else(|| panic!("no register block `{block}` is declared"));
    let r = b
        .registers
        .iter()
        .find(|r| r.offset == offset)
        .unwrap_or_else(|| panic!("no register declared at {offset:#x} of `{block}`"));
    format!("{} {}", block.replace('_', " "), r.name)
}

/// `BAR4`: the BAR the LM block is declared in.
pub fn lm_bar() -> String {
    match layout().block("lm").map(|b| b.location) {
        Some(Location::Bar(bar, _)) => format!("BAR{bar}"),
        _ => panic!("the LM block is declared outside a BAR"),
    }
}

/// `BAR4 0x...`: an offset in the LM block's BAR.
pub fn lm(off: u64) -> String {
    format!("{} {off:#x}", lm_bar())
}

/// The identity both IFC VF drivers match: `1af4:1041 subsystem 8086:001a`.
pub fn expected_ids() -> String {
    format!(
        "{:04x}:{:04x} subsystem {:04x}:{:04x}",
        id::VENDOR,
        id::DEVICE_NET,
        id::SUBSYS_VENDOR,
        id::SUBSYS_DEVICE_NET
    )
}

/// The class code a network/ethernet controller has: `0x020000`.
pub fn expected_class() -> String {
    format!("{:#08x}", id::CLASS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bar_registers::pci::hdr;
    use bar_registers::virtio::{common, net_cfg};

    #[test]
    fn names_come_from_the_declarations() {
        assert_eq!(
            reg("common_cfg", common::NUM_QUEUES),
            "common cfg num_queues"
        );
        assert_eq!(reg("device_cfg", net_cfg::STATUS), "device cfg status");
        assert_eq!(lm_bar(), "BAR4");
        assert_eq!(
            config_at(&[hdr::VENDOR_ID, hdr::SUBSYSTEM_VENDOR_ID]),
            "config 0x00, 0x2c"
        );
        assert_eq!(expected_ids(), "1af4:1041 subsystem 8086:001a");
        assert_eq!(expected_class(), "0x020000");
    }

    #[test]
    #[should_panic(expected = "no register declared")]
    fn an_undeclared_location_is_a_bug() {
        reg("common_cfg", 0xFFF);
    }
}
