//! Register access through `device::RegionAccess` (vfio region indexes: BAR n = n, config = 7),
//! checked against the declarations in `bar-registers`: reset values, illegal widths and
//! reserved space, region errors, 64-bit halves, RO/state-dependent writes, the LM ring state,
//! queue_enable stop latency, BAR sizing, the capability list, MSI-X masking and the PBA, the
//! PCI_CFG window, feature negotiation rules and config_generation.

use bar_registers::lm::{self, LmLayout};
use bar_registers::msix::{ENTRY_SIZE, VECTOR_CONTROL, VECTOR_MASKED};
use bar_registers::pci::{
    cap_id, command, hdr, msix_cap, pcie_cap, status, virtio_cap, virtio_cfg_type,
    CONFIG_SPACE_SIZE,
};
use bar_registers::virtio::{bits, common, device_status as st, isr, net_cfg, offered_mask};
use bar_registers::{Access, DeviceLayout, Location, RegisterBlock, REGION_CONFIG};
use device::{AccessError, Device, DeviceConfig, DeviceCounters, InterruptRecorder, RegionAccess};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;
use std::sync::Arc;

const CFG: u32 = REGION_CONFIG;
const RUNNING: u8 = st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK;
const V1: u64 = 1 << bits::VERSION_1;

// ------------------------------------------------------------------------------- helpers

fn rd(dev: &Device, region: u32, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.region_read(region, off, &mut b[..len])
        .unwrap_or_else(|e| panic!("read {region}:{off:#x}/{len}: {e}"));
    u64::from_le_bytes(b)
}

fn wr(dev: &Device, region: u32, off: u64, len: usize, v: u64) {
    dev.region_write(region, off, &v.to_le_bytes()[..len])
        .unwrap_or_else(|e| panic!("write {region}:{off:#x}/{len}: {e}"));
}

/// A register at its natural width; 3- and 6-byte registers byte by byte (config space and
/// the MAC accept that).
fn read_reg(dev: &Device, region: u32, off: u64, width: u8) -> u64 {
    match width {
        1 | 2 | 4 | 8 => rd(dev, region, off, width.into()),
        w => (0..u64::from(w)).fold(0, |v, i| v | (rd(dev, region, off + i, 1) << (8 * i))),
    }
}

fn width_mask(w: u8) -> u64 {
    if w >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(w))) - 1
    }
}

fn region_of(b: &RegisterBlock) -> (u32, u64) {
    match b.location {
        Location::Bar(i, o) => (i.into(), o),
        Location::Config(o) => (CFG, o),
    }
}

fn common_rd(dev: &Device, reg: u64, len: usize) -> u64 {
    rd(dev, 0, dev.layout().common.offset + reg, len)
}

fn common_wr(dev: &Device, reg: u64, len: usize, v: u64) {
    wr(dev, 0, dev.layout().common.offset + reg, len, v);
}

fn status(dev: &Device) -> u8 {
    common_rd(dev, common::DEVICE_STATUS, 1) as u8
}

fn set_status(dev: &Device, s: u8) {
    common_wr(dev, common::DEVICE_STATUS, 1, s.into());
}

fn net_rd(dev: &Device, field: u64, len: usize) -> u64 {
    rd(dev, 0, dev.layout().device_cfg.offset + field, len)
}

fn lm_rd(dev: &Device, off: u64, len: usize) -> u64 {
    rd(
        dev,
        dev.layout().lm.bar.into(),
        dev.layout().lm.offset + off,
        len,
    )
}

fn lm_wr(dev: &Device, off: u64, len: usize, v: u64) {
    wr(
        dev,
        dev.layout().lm.bar.into(),
        dev.layout().lm.offset + off,
        len,
        v,
    );
}

fn msix_table_off(dev: &Device, vector: u16, field: u64) -> u64 {
    dev.layout().msix_table.offset + u64::from(vector) * ENTRY_SIZE + field
}

/// Reset, ACK, DRIVER, the features, FEATURES_OK; returns the status read back.
fn negotiate(dev: &Device, features: u64) -> u8 {
    set_status(dev, 0);
    set_status(dev, st::ACKNOWLEDGE);
    set_status(dev, st::ACKNOWLEDGE | st::DRIVER);
    common_wr(dev, common::DRIVER_FEATURE_SELECT, 4, 0);
    common_wr(dev, common::DRIVER_FEATURE, 4, features & 0xFFFF_FFFF);
    common_wr(dev, common::DRIVER_FEATURE_SELECT, 4, 1);
    common_wr(dev, common::DRIVER_FEATURE, 4, features >> 32);
    set_status(dev, st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK);
    status(dev)
}

/// Programs queue `q` (addresses that are never touched: no DRIVER_OK) and enables it.
fn enable_queue(dev: &Device, q: u16) {
    common_wr(dev, common::QUEUE_SELECT, 2, q.into());
    common_wr(
        dev,
        common::QUEUE_DESC,
        8,
        0x10_0000 + 0x1000 * u64::from(q),
    );
    common_wr(
        dev,
        common::QUEUE_DRIVER,
        8,
        0x20_0000 + 0x1000 * u64::from(q),
    );
    common_wr(
        dev,
        common::QUEUE_DEVICE,
        8,
        0x30_0000 + 0x1000 * u64::from(q),
    );
    common_wr(dev, common::QUEUE_ENABLE, 2, 1);
    assert_eq!(
        common_rd(dev, common::QUEUE_ENABLE, 2),
        1,
        "queue {q} did not enable"
    );
}

fn small_opts(pairs: u16, lm_layout: LmLayout) -> DriverOptions {
    DriverOptions {
        queue_pairs: pairs,
        queue_size: 64,
        memory: 4 << 20,
        lm_layout,
        ..Default::default()
    }
}

// ------------------------------------------------------------------------------- reset values

/// Every checkable register of `b` that does not read its declared reset value.
fn reset_mismatches(dev: &Device, b: &RegisterBlock, skip: &[&str]) -> Vec<String> {
    let (region, base) = region_of(b);
    let mut bad = Vec::new();
    for r in &b.registers {
        if !r.reset_checkable || r.access == Access::Wo || skip.contains(&r.name.as_str()) {
            continue;
        }
        if b.id == "pci_header" && r.name.starts_with("bar") {
            continue; // BAR sizing has its own test.
        }
        let got = read_reg(dev, region, base + r.offset, r.width);
        let want = r.reset & width_mask(r.width);
        if got != want {
            bad.push(format!(
                "{}.{}: reads {got:#x}, declared reset {want:#x}",
                b.id, r.name
            ));
        }
    }
    bad
}

fn blocks_mismatches(dev: &Device, ids: &[&str], skip: &[&str]) -> Vec<String> {
    let layout = dev.layout().clone();
    let mut v = Vec::new();
    for id in ids {
        let b = layout.block(id).unwrap_or_else(|| panic!("no block {id}"));
        v.extend(reset_mismatches(dev, b, skip));
    }
    v
}

/// Blocks a virtio reset (device_status = 0) resets.
const VIRTIO_BLOCKS: &[&str] = &["common_cfg", "isr", "device_cfg", "lm"];
/// Blocks only a function reset resets (they belong to the PCI function).
const FUNCTION_BLOCKS: &[&str] = &[
    "msix_table",
    "pci_header",
    "cap_msix",
    "cap_common",
    "cap_notify",
    "cap_isr",
    "cap_device",
    "cap_pci_cfg",
    "cap_pcie",
];
/// Declared reset 0 and checkable, but the device keeps counting across resets: see
/// `config_generation_reads_its_declared_reset_value`.
const KNOWN_RESET_BUGS: &[&str] = &["config_generation"];

/// Drives the device through a full life (traffic, control commands, announce, logging, selects,
/// config space writes) so that as many registers as possible differ from their reset values.
fn dirty(dev: &Arc<Device>, lm_layout: LmLayout) -> NetDriver {
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(dev, small_opts(2, lm_layout)).unwrap();
    drv.start().unwrap();
    let mac = drv.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(3);
    let f = frames::build(mac, mac, 0, 0, 300, &mut rng);
    assert_eq!(drv.send(0, &[&f]).unwrap(), 1);
    assert_eq!(drv.recv(0).unwrap(), vec![f]);
    drv.ctrl(1, 1, &[0x02, 1, 2, 3, 4, 5]).unwrap();
    assert!(dev.announce());
    dev.set_link(false);
    let log = drv.mem.alloc(0x10000, 4096).unwrap();
    drv.enable_logging(log, 0x10000).unwrap();
    common_wr(dev, common::QUEUE_SELECT, 2, 3);
    common_wr(dev, common::DEVICE_FEATURE_SELECT, 4, 1);
    common_wr(dev, common::DRIVER_FEATURE_SELECT, 4, 1);
    wr(dev, CFG, hdr::CACHE_LINE_SIZE, 1, 0x10);
    wr(dev, CFG, hdr::INTERRUPT_LINE, 1, 0x0B);
    let pci_cfg = bar_registers::pci::cap_offset::PCI_CFG;
    wr(dev, CFG, pci_cfg + virtio_cap::BAR, 1, 2);
    wr(dev, CFG, pci_cfg + virtio_cap::OFFSET, 4, 0x10);
    wr(dev, CFG, pci_cfg + virtio_cap::LENGTH, 4, 4);
    let devctl = bar_registers::pci::cap_offset::PCIE + pcie_cap::DEVICE_CONTROL;
    wr(dev, CFG, devctl, 2, 0x2830);
    drv
}

/// Names the dirtying must have changed (else the reset checks prove nothing).
fn assert_dirty(dev: &Device, lm_layout: LmLayout) {
    let before = blocks_mismatches(dev, &[VIRTIO_BLOCKS, FUNCTION_BLOCKS].concat(), &[]);
    let mut expect = vec![
        "common_cfg.device_feature_select",
        "common_cfg.config_msix_vector",
        "common_cfg.device_status",
        "common_cfg.queue_select",
        "common_cfg.queue_enable",
        "device_cfg.mac",
        "msix_table.vector_control[0]",
        "msix_table.msg_data[1]",
        "pci_header.command",
        "pci_header.interrupt_line",
        "cap_msix.message_control",
        "cap_pci_cfg.bar",
        "cap_pcie.device_control",
    ];
    expect.push(match lm_layout {
        LmLayout::Dpdk => "lm.mq_pairs",
        LmLayout::Linux => "lm.status",
    });
    for name in expect {
        assert!(
            before.iter().any(|m| m.starts_with(&format!("{name}:"))),
            "dirtying did not change {name}: {before:#?}"
        );
    }
}

/// Dirties a device, resets the function with `reset`, checks every block (virtio and PCI
/// function state) reads its declared reset values.
fn check_function_reset(how: &str, reset: impl Fn(&Device)) {
    for lm_layout in [LmLayout::Dpdk, LmLayout::Linux] {
        let dev = Device::new(DeviceConfig::with_queue_pairs(2).lm_layout(lm_layout)).unwrap();
        let _drv = dirty(&dev, lm_layout);
        assert_dirty(&dev, lm_layout);
        let c0 = dev.counters();
        reset(&dev);
        assert_eq!(
            dev.counters().resets,
            c0.resets + 1,
            "{lm_layout:?}: {how} did not reset"
        );
        let bad = blocks_mismatches(
            &dev,
            &[VIRTIO_BLOCKS, FUNCTION_BLOCKS].concat(),
            KNOWN_RESET_BUGS,
        );
        assert!(bad.is_empty(), "{lm_layout:?}, after {how}: {bad:#?}");
        // BARs keep only their type bits (no address programmed by the test).
        for bar in &dev.layout().bars {
            assert_eq!(
                rd(&dev, CFG, hdr::BAR0 + 4 * u64::from(bar.index), 4),
                u64::from(DeviceLayout::BAR_TYPE_64),
                "{how}"
            );
        }
        assert_eq!(
            dev.counters().bad_register_accesses,
            c0.bad_register_accesses,
            "{how}: the checks made illegal accesses"
        );
    }
}

#[test]
fn reset_values_after_function_reset() {
    check_function_reset("Device::reset", |dev| dev.reset());
}

/// The PCIe capability declares FLR (Device Capabilities bit 28) and Device Control bit 15
/// "initiates FLR": writing it must reset the function like vfio's DEVICE_RESET.
#[test]
fn reset_values_after_pcie_flr() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    assert_ne!(
        rd(
            &dev,
            CFG,
            bar_registers::pci::cap_offset::PCIE + pcie_cap::DEVICE_CAPS,
            4
        ) as u32
            & pcie_cap::DEVCAP_FLR,
        0,
        "FLR capable"
    );
    check_function_reset("PCIe FLR", |dev| {
        let devctl = bar_registers::pci::cap_offset::PCIE + pcie_cap::DEVICE_CONTROL;
        let v = rd(dev, CFG, devctl, 2);
        wr(dev, CFG, devctl, 2, v | u64::from(pcie_cap::DEVCTL_FLR));
    });
}

#[test]
fn reset_values_after_virtio_reset() {
    for lm_layout in [LmLayout::Dpdk, LmLayout::Linux] {
        let dev = Device::new(DeviceConfig::with_queue_pairs(2).lm_layout(lm_layout)).unwrap();
        let _drv = dirty(&dev, lm_layout);
        assert_dirty(&dev, lm_layout);
        let function_state_before = blocks_mismatches(&dev, FUNCTION_BLOCKS, &[]);
        set_status(&dev, 0);
        let bad = blocks_mismatches(&dev, VIRTIO_BLOCKS, KNOWN_RESET_BUGS);
        assert!(
            bad.is_empty(),
            "{lm_layout:?}, after device_status = 0: {bad:#?}"
        );
        // The PCI function's state (config space, MSI-X table) is not the virtio device's:
        // a virtio reset leaves it exactly as the driver programmed it.
        assert_eq!(
            blocks_mismatches(&dev, FUNCTION_BLOCKS, &[]),
            function_state_before,
            "{lm_layout:?}"
        );
        let cmd = rd(&dev, CFG, hdr::COMMAND, 2) as u16;
        assert_eq!(
            cmd & (command::BUS_MASTER | command::MEMORY_SPACE),
            command::BUS_MASTER | command::MEMORY_SPACE
        );
    }
}

#[test]
fn config_generation_reads_its_declared_reset_value() {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let declared = dev
        .layout()
        .block("common_cfg")
        .unwrap()
        .get("config_generation")
        .unwrap()
        .clone();
    assert!(declared.reset_checkable);
    let mut drv = sim_harness::driver::in_process(&dev, small_opts(1, LmLayout::Dpdk)).unwrap();
    drv.start().unwrap();
    assert!(dev.announce());
    assert_ne!(
        common_rd(&dev, common::CONFIG_GENERATION, 1),
        declared.reset
    );
    set_status(&dev, 0);
    assert_eq!(
        common_rd(&dev, common::CONFIG_GENERATION, 1),
        declared.reset,
        "after device_status = 0"
    );
    drv.start().unwrap();
    assert!(dev.announce());
    dev.reset();
    assert_eq!(
        common_rd(&dev, common::CONFIG_GENERATION, 1),
        declared.reset,
        "after a function reset"
    );
}

// ------------------------------------------------------------------------------- illegal accesses

/// Registers whose values must survive every illegal write.
fn watched(dev: &Device) -> Vec<(&'static str, u64)> {
    let lm = dev.layout().lm;
    vec![
        ("queue_select", common_rd(dev, common::QUEUE_SELECT, 2)),
        ("device_status", common_rd(dev, common::DEVICE_STATUS, 1)),
        (
            "config_msix_vector",
            common_rd(dev, common::CONFIG_MSIX_VECTOR, 2),
        ),
        ("queue_size", common_rd(dev, common::QUEUE_SIZE, 2)),
        (
            "queue_msix_vector",
            common_rd(dev, common::QUEUE_MSIX_VECTOR, 2),
        ),
        ("queue_desc", common_rd(dev, common::QUEUE_DESC, 8)),
        ("queue_driver", common_rd(dev, common::QUEUE_DRIVER, 8)),
        (
            "logging_ctrl",
            rd(dev, lm.bar.into(), lm.offset + lm::LOGGING_CTRL, 4),
        ),
        (
            "log_base_lo",
            rd(dev, lm.bar.into(), lm.offset + lm::BASE_ADDR_LOW, 4),
        ),
        (
            "log_base_hi",
            rd(dev, lm.bar.into(), lm.offset + lm::BASE_ADDR_HIGH, 4),
        ),
        (
            "ring_state[2]",
            rd(
                dev,
                lm.bar.into(),
                lm.offset + lm::ring_state_offset(LmLayout::Dpdk, 2),
                4,
            ),
        ),
        (
            "mq_pairs",
            rd(dev, lm.bar.into(), lm.offset + lm::MQ_PAIRS, 4),
        ),
        (
            "vector_control[1]",
            rd(dev, 2, msix_table_off(dev, 1, VECTOR_CONTROL), 4),
        ),
        ("msg_data[1]", rd(dev, 2, msix_table_off(dev, 1, 8), 4)),
        (
            "mac",
            (0..6).fold(0, |v, i| v | (net_rd(dev, i, 1) << (8 * i))),
        ),
        ("mtu", net_rd(dev, net_cfg::MTU, 2)),
    ]
}

#[test]
fn bad_width_unaligned_reserved_and_past_window_accesses() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let mut drv = sim_harness::driver::in_process(&dev, small_opts(1, LmLayout::Dpdk)).unwrap();
    drv.start().unwrap();
    // State that makes "reads 0" meaningful: queue 2 selected and programmed, ISR set, logging
    // registers and ring state non-zero.
    common_wr(&dev, common::QUEUE_SELECT, 2, 2);
    common_wr(&dev, common::QUEUE_DESC, 8, 0x1122_3344_5566_7780);
    common_wr(&dev, common::QUEUE_DRIVER, 8, 0x0102_0304_0506_0708);
    lm_wr(&dev, lm::BASE_ADDR_LOW, 4, 0xDEAD_B000);
    lm_wr(&dev, lm::BASE_ADDR_HIGH, 4, 0x77);
    lm_wr(
        &dev,
        lm::ring_state_offset(LmLayout::Dpdk, 2),
        4,
        0x0005_0007,
    );
    dev.set_link(false);

    let l = dev.layout().clone();
    let (c, dc, isr_w, lmw, n) = (
        l.common.offset,
        l.device_cfg.offset,
        l.isr.offset,
        l.lm.offset,
        l.notify.offset,
    );
    let t = l.msix_table.offset;
    let pba = l.msix_pba.offset;
    let table_end = t + l.msix_table.len;
    // (what, region, offset, len)
    let reads: Vec<(&str, u32, u64, usize)> = vec![
        (
            "4-byte read of queue_select",
            0,
            c + common::QUEUE_SELECT,
            4,
        ),
        ("1-byte read of queue_desc", 0, c + common::QUEUE_DESC, 1),
        (
            "2-byte read inside queue_desc",
            0,
            c + common::QUEUE_DESC + 2,
            2,
        ),
        (
            "4-byte read of queue_desc at +2",
            0,
            c + common::QUEUE_DESC + 2,
            4,
        ),
        (
            "8-byte read of queue_driver at +4",
            0,
            c + common::QUEUE_DRIVER + 4,
            8,
        ),
        ("2-byte read at odd 0x13", 0, c + 0x13, 2),
        (
            "2-byte read at odd 0x17",
            0,
            c + common::QUEUE_SELECT + 1,
            2,
        ),
        (
            "1-byte read inside config_msix_vector",
            0,
            c + common::CONFIG_MSIX_VECTOR + 1,
            1,
        ),
        (
            "4-byte read spanning num_queues and status",
            0,
            c + common::NUM_QUEUES,
            4,
        ),
        (
            "read straddling the common window end",
            0,
            c + common::SIZE - 2,
            4,
        ),
        ("read past the common window", 0, c + common::SIZE, 2),
        ("read in the BAR0 gap", 0, c + 0x800, 4),
        ("2-byte read of the ISR", 0, isr_w, 2),
        ("4-byte read of the ISR", 0, isr_w, 4),
        ("read past the ISR", 0, isr_w + 1, 1),
        (
            "2-byte read at odd device cfg offset",
            0,
            dc + net_cfg::MTU + 1,
            2,
        ),
        ("2-byte read at odd mac offset", 0, dc + 1, 2),
        (
            "4-byte read spanning status and max pairs",
            0,
            dc + net_cfg::STATUS,
            4,
        ),
        ("8-byte read of the mac", 0, dc, 8),
        (
            "read straddling the device cfg end",
            0,
            dc + net_cfg::DUPLEX,
            2,
        ),
        ("read past the device cfg", 0, dc + net_cfg::SIZE, 1),
        ("4-byte read of a doorbell", 0, n, 4),
        ("1-byte read of a doorbell", 0, n, 1),
        ("read past the doorbells", 0, n + l.notify.len, 2),
        ("LM reserved 0x04", 4, lmw + 0x04, 4),
        ("LM reserved 0x08 (DPDK layout)", 4, lmw + 0x08, 8),
        ("LM reserved 0x30", 4, lmw + 0x30, 4),
        (
            "2-byte read of ring_state at +1 (unaligned)",
            4,
            lmw + lm::ring_state_offset(LmLayout::Dpdk, 2) + 1,
            2,
        ),
        ("LM high reserved", 4, lmw + 0xF00, 4),
        ("2-byte read in the MSI-X table", 2, t + VECTOR_CONTROL, 2),
        ("4-byte read at +2 in the MSI-X table", 2, t + 2, 4),
        ("8-byte read at +4 in the MSI-X table", 2, t + 4, 8),
        ("read past the MSI-X table", 2, table_end, 4),
        ("2-byte read of the PBA", 2, pba, 2),
        ("4-byte read at +2 in the PBA", 2, pba + 2, 4),
        ("read past the PBA", 2, pba + l.msix_pba.len, 4),
    ];
    for (what, region, off, len) in reads {
        let c0 = dev.counters();
        let mut data = vec![0xA5u8; len];
        assert_eq!(dev.region_read(region, off, &mut data), Ok(()), "{what}");
        assert!(
            data.iter().all(|&b| b == 0),
            "{what}: read {data:x?}, expected zeros"
        );
        let c1 = dev.counters();
        assert_eq!(
            c1.bad_register_accesses,
            c0.bad_register_accesses + 1,
            "{what}: bad_register_accesses"
        );
        assert_eq!(
            c1.ignored_register_writes, c0.ignored_register_writes,
            "{what}"
        );
    }
    // None of those reads cleared the ISR.
    assert_eq!(
        rd(&dev, 0, isr_w, 1) as u8 & isr::CONFIG,
        isr::CONFIG,
        "an illegal ISR read cleared it"
    );

    let writes: Vec<(&str, u32, u64, usize, u64)> = vec![
        (
            "4-byte write of queue_select",
            0,
            c + common::QUEUE_SELECT,
            4,
            0x0040_0005,
        ),
        (
            "1-byte write of queue_desc",
            0,
            c + common::QUEUE_DESC,
            1,
            0xFF,
        ),
        (
            "2-byte write inside queue_desc",
            0,
            c + common::QUEUE_DESC + 4,
            2,
            0xFFFF,
        ),
        (
            "4-byte write of queue_driver at +2",
            0,
            c + common::QUEUE_DRIVER + 2,
            4,
            0xFFFF_FFFF,
        ),
        (
            "2-byte write of device_status",
            0,
            c + common::DEVICE_STATUS,
            2,
            0,
        ),
        (
            "4-byte write of device_status",
            0,
            c + common::DEVICE_STATUS,
            4,
            0x0101,
        ),
        (
            "2-byte write at odd 0x17",
            0,
            c + common::QUEUE_SELECT + 1,
            2,
            0x0101,
        ),
        (
            "1-byte write of config_msix_vector",
            0,
            c + common::CONFIG_MSIX_VECTOR,
            1,
            5,
        ),
        (
            "1-byte write of queue_size",
            0,
            c + common::QUEUE_SIZE,
            1,
            16,
        ),
        (
            "write straddling the common window end",
            0,
            c + common::SIZE - 2,
            4,
            0xFFFF_FFFF,
        ),
        ("write past the common window", 0, c + 0x40, 4, 0xFFFF_FFFF),
        ("2-byte write of the ISR", 0, isr_w, 2, 0xFFFF),
        ("write at odd mac offset", 0, dc + 1, 2, 0xFFFF),
        ("write past the device cfg", 0, dc + 0x20, 4, 1),
        ("1-byte doorbell write", 0, n + 4, 1, 1),
        ("doorbell write between doorbells", 0, n + 2, 2, 0),
        ("8-byte doorbell write", 0, n, 8, 0),
        ("LM reserved 0x04 write", 4, lmw + 0x04, 4, 1),
        (
            "LM 2-byte write of logging_ctrl",
            4,
            lmw + lm::LOGGING_CTRL,
            2,
            1,
        ),
        (
            "LM 2-byte write of ring_state (DPDK: dword writes)",
            4,
            lmw + lm::ring_state_offset(LmLayout::Dpdk, 2),
            2,
            9,
        ),
        (
            "2-byte write of vector_control",
            2,
            msix_table_off(&dev, 1, VECTOR_CONTROL),
            2,
            1,
        ),
        (
            "1-byte write of vector_control",
            2,
            msix_table_off(&dev, 1, VECTOR_CONTROL),
            1,
            1,
        ),
        (
            "4-byte write at +2 in the MSI-X table",
            2,
            msix_table_off(&dev, 1, 8) + 2,
            4,
            0xFFFF_FFFF,
        ),
        ("write past the MSI-X table", 2, table_end, 4, 0xFFFF_FFFF),
        ("2-byte write of the PBA", 2, pba, 2, 0xFFFF),
    ];
    for (what, region, off, len, v) in writes {
        let before = watched(&dev);
        let c0 = dev.counters();
        assert_eq!(
            dev.region_write(region, off, &v.to_le_bytes()[..len]),
            Ok(()),
            "{what}"
        );
        let c1 = dev.counters();
        assert_eq!(
            c1.bad_register_accesses,
            c0.bad_register_accesses + 1,
            "{what}: bad_register_accesses"
        );
        assert_eq!(
            c1.ignored_register_writes, c0.ignored_register_writes,
            "{what}"
        );
        assert_eq!(
            c1.queues.iter().map(|q| q.doorbells).sum::<u64>(),
            c0.queues.iter().map(|q| q.doorbells).sum::<u64>(),
            "{what}: rang a doorbell"
        );
        assert_eq!(c1.resets, c0.resets, "{what}: reset the device");
        assert_eq!(watched(&dev), before, "{what}: changed a register");
    }
    assert_eq!(status(&dev), RUNNING);
}

#[test]
fn region_errors() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let c0 = dev.counters();
    let mut b4 = [0u8; 4];
    for region in [1u32, 3, 5, 6, 8, 9, 0x100, u32::MAX] {
        assert_eq!(
            dev.region_read(region, 0, &mut b4),
            Err(AccessError::NoSuchRegion(region)),
            "read region {region}"
        );
        assert_eq!(
            dev.region_write(region, 0, &b4),
            Err(AccessError::NoSuchRegion(region)),
            "write region {region}"
        );
    }
    let mut regions: Vec<(u32, u64)> = dev
        .layout()
        .bars
        .iter()
        .map(|b| (u32::from(b.index), b.size))
        .collect();
    regions.push((CFG, CONFIG_SPACE_SIZE));
    for (region, size) in regions {
        for (off, len) in [
            (size - 2, 4usize),
            (size, 1),
            (size - 4, 8),
            (size + 0x1000, 2),
            (u64::MAX - 1, 4),
            (u64::MAX, 1),
            (u64::MAX - 7, 8),
        ] {
            let want = Err(AccessError::OutOfRange {
                region,
                offset: off,
                len,
                size,
            });
            let mut b = vec![0u8; len];
            assert_eq!(
                dev.region_read(region, off, &mut b),
                want,
                "read {region}:{off:#x}/{len}"
            );
            assert_eq!(
                dev.region_write(region, off, &b),
                want,
                "write {region}:{off:#x}/{len}"
            );
        }
        // The last bytes are reachable.
        let mut b = [0u8; 4];
        assert_eq!(dev.region_read(region, size - 4, &mut b), Ok(()));
        for len in [0usize, 3, 5, 6, 7, 9, 16, 64] {
            let mut b = vec![0u8; len];
            assert_eq!(
                dev.region_read(region, 0, &mut b),
                Err(AccessError::BadWidth(len)),
                "read {region} width {len}"
            );
            assert_eq!(
                dev.region_write(region, 0, &b),
                Err(AccessError::BadWidth(len)),
                "write {region} width {len}"
            );
        }
    }
    // Refused accesses never reach a register: nothing counted, nothing changed.
    let c1 = dev.counters();
    // Only the legal reads of each BAR's last dword (undecoded space there) are counted.
    assert_eq!(
        c1.bad_register_accesses,
        c0.bad_register_accesses + dev.layout().bars.len() as u64
    );
    assert_eq!(c1.ignored_register_writes, c0.ignored_register_writes);
    assert_eq!(c1.resets, c0.resets);
}

// ------------------------------------------------------------------------------- 64-bit, RO, state

#[test]
fn sixty_four_bit_registers_accept_halves_and_qwords() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    common_wr(&dev, common::QUEUE_SELECT, 2, 1);
    for reg in [
        common::QUEUE_DESC,
        common::QUEUE_DRIVER,
        common::QUEUE_DEVICE,
    ] {
        common_wr(&dev, reg, 4, 0x89AB_CDE0);
        common_wr(&dev, reg + 4, 4, 0x12);
        assert_eq!(
            common_rd(&dev, reg, 8),
            0x12_89AB_CDE0,
            "{reg:#x} after two halves"
        );
        assert_eq!(common_rd(&dev, reg, 4), 0x89AB_CDE0);
        assert_eq!(common_rd(&dev, reg + 4, 4), 0x12);
        common_wr(&dev, reg, 8, 0xFEDC_BA98_7654_3210);
        assert_eq!(
            common_rd(&dev, reg, 8),
            0xFEDC_BA98_7654_3210,
            "{reg:#x} after one qword"
        );
        assert_eq!(common_rd(&dev, reg + 4, 4), 0xFEDC_BA98);
        // Writing one half leaves the other.
        common_wr(&dev, reg + 4, 4, 0);
        assert_eq!(common_rd(&dev, reg, 8), 0x7654_3210);
    }
    // Another queue's registers are separate.
    common_wr(&dev, common::QUEUE_SELECT, 2, 0);
    assert_eq!(common_rd(&dev, common::QUEUE_DESC, 8), 0);

    // Linux LM layout: 64-bit control and log addresses, both ways.
    let dev = Device::new(DeviceConfig::default().lm_layout(LmLayout::Linux)).unwrap();
    for off in [lm::BASE_ADDR_LOW, lm::END_ADDR_LOW] {
        lm_wr(&dev, off, 4, 0x4000_0000);
        lm_wr(&dev, off + 4, 4, 0x1000);
        assert_eq!(lm_rd(&dev, off, 8), 0x1000_4000_0000);
        lm_wr(&dev, off, 8, 0x2000_0000_1000);
        assert_eq!(lm_rd(&dev, off, 8), 0x2000_0000_1000);
        assert_eq!(lm_rd(&dev, off + 4, 4), 0x2000);
    }
    lm_wr(&dev, lm::LOGGING_CTRL, 8, 1);
    assert_eq!(
        lm_rd(&dev, lm::STATUS, 8),
        1,
        "Linux LM status: logging active"
    );
    lm_wr(&dev, lm::LOGGING_CTRL + 4, 4, 0);
    assert_eq!(lm_rd(&dev, lm::LOGGING_CTRL, 8), 1);
    lm_wr(&dev, lm::LOGGING_CTRL, 4, 0);
    assert_eq!(lm_rd(&dev, lm::STATUS, 8), 0);
    assert_eq!(dev.counters().bad_register_accesses, 0);
}

#[test]
fn read_only_registers_ignore_writes() {
    for lm_layout in [LmLayout::Dpdk, LmLayout::Linux] {
        let dev = Device::new(DeviceConfig::with_queue_pairs(2).lm_layout(lm_layout)).unwrap();
        let mut drv = sim_harness::driver::in_process(&dev, small_opts(2, lm_layout)).unwrap();
        drv.start().unwrap();
        dev.set_link(false); // ISR, config_generation non-zero
        let layout = dev.layout().clone();
        let mut n = 0;
        for b in &layout.blocks {
            let Location::Bar(bar, base) = b.location else {
                continue;
            };
            for r in b
                .registers
                .iter()
                .filter(|r| matches!(r.access, Access::Ro | Access::Rc))
            {
                let (off, len) = if matches!(r.width, 1 | 2 | 4 | 8) {
                    (base + r.offset, usize::from(r.width))
                } else {
                    (base + r.offset, 1)
                };
                let before = read_reg(&dev, bar.into(), off, len as u8);
                let c0 = dev.counters();
                wr(&dev, bar.into(), off, len, !before);
                let c1 = dev.counters();
                assert_eq!(
                    c1.ignored_register_writes,
                    c0.ignored_register_writes + 1,
                    "{}.{}",
                    b.id,
                    r.name
                );
                assert_eq!(
                    c1.bad_register_accesses, c0.bad_register_accesses,
                    "{}.{}",
                    b.id, r.name
                );
                let after = read_reg(&dev, bar.into(), off, len as u8);
                // The ISR is read-to-clear: the first read above cleared it.
                let want = if r.access == Access::Rc { 0 } else { before };
                assert_eq!(after, want, "{}.{} changed by a write", b.id, r.name);
                n += 1;
            }
        }
        assert!(n >= 12, "{n} RO registers");
        assert_eq!(status(&dev), RUNNING);
        assert_eq!(
            common_rd(&dev, common::NUM_QUEUES, 2),
            u64::from(layout.num_queues)
        );
    }
}

#[test]
fn queue_registers_are_ignored_while_the_queue_is_enabled() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    assert_eq!(
        negotiate(&dev, V1 | (1 << bits::CTRL_VQ)),
        st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK
    );
    common_wr(&dev, common::QUEUE_SELECT, 2, 1);
    common_wr(&dev, common::QUEUE_SIZE, 2, 64);
    enable_queue(&dev, 1);
    let regs: [(&str, u64, usize, u64); 5] = [
        ("queue_desc", common::QUEUE_DESC, 8, 0x9990_0000),
        ("queue_desc high half", common::QUEUE_DESC + 4, 4, 7),
        ("queue_driver", common::QUEUE_DRIVER, 8, 0x9990_0000),
        ("queue_device", common::QUEUE_DEVICE, 4, 0x9990_0000),
        ("queue_size", common::QUEUE_SIZE, 2, 32),
    ];
    for (name, reg, len, v) in regs {
        let before = (
            common_rd(&dev, common::QUEUE_DESC, 8),
            common_rd(&dev, common::QUEUE_DRIVER, 8),
            common_rd(&dev, common::QUEUE_DEVICE, 8),
            common_rd(&dev, common::QUEUE_SIZE, 2),
        );
        let c0 = dev.counters();
        common_wr(&dev, reg, len, v);
        assert_eq!(
            dev.counters().ignored_register_writes,
            c0.ignored_register_writes + 1,
            "{name}"
        );
        let after = (
            common_rd(&dev, common::QUEUE_DESC, 8),
            common_rd(&dev, common::QUEUE_DRIVER, 8),
            common_rd(&dev, common::QUEUE_DEVICE, 8),
            common_rd(&dev, common::QUEUE_SIZE, 2),
        );
        assert_eq!(after, before, "{name} changed while the queue is enabled");
    }
    // queue_msix_vector may change at any time; enabling an enabled queue is ignored.
    let c0 = dev.counters();
    common_wr(&dev, common::QUEUE_MSIX_VECTOR, 2, 3);
    assert_eq!(common_rd(&dev, common::QUEUE_MSIX_VECTOR, 2), 3);
    common_wr(&dev, common::QUEUE_ENABLE, 2, 1);
    assert_eq!(
        dev.counters().ignored_register_writes,
        c0.ignored_register_writes + 1
    );
    // Another, disabled queue is still programmable.
    common_wr(&dev, common::QUEUE_SELECT, 2, 0);
    common_wr(&dev, common::QUEUE_DESC, 8, 0x5550_0000);
    assert_eq!(common_rd(&dev, common::QUEUE_DESC, 8), 0x5550_0000);
    // A queue cannot be enabled before FEATURES_OK.
    set_status(&dev, 0);
    let c0 = dev.counters();
    common_wr(&dev, common::QUEUE_SELECT, 2, 1);
    common_wr(&dev, common::QUEUE_ENABLE, 2, 1);
    assert_eq!(common_rd(&dev, common::QUEUE_ENABLE, 2), 0);
    assert_eq!(
        dev.counters().ignored_register_writes,
        c0.ignored_register_writes + 1
    );
}

#[test]
fn queue_enable_reads_one_for_the_disable_latency() {
    for latency in [0u32, 1, 2, 5] {
        let dev = Device::new(DeviceConfig {
            disable_latency_reads: latency,
            ..DeviceConfig::default()
        })
        .unwrap();
        negotiate(&dev, V1);
        enable_queue(&dev, 0);
        common_wr(&dev, common::QUEUE_ENABLE, 2, 0);
        let reads: Vec<u64> = (0..latency + 3)
            .map(|_| common_rd(&dev, common::QUEUE_ENABLE, 2))
            .collect();
        let mut want = vec![1; latency as usize];
        want.extend([0, 0, 0]);
        assert_eq!(reads, want, "disable_latency_reads = {latency}");
        assert!(!dev.queue(0).unwrap().enabled);
    }
}

#[test]
fn lm_ring_state_is_writable_only_while_disabled_and_the_queue_resumes_there() {
    for lm_layout in [LmLayout::Dpdk, LmLayout::Linux] {
        let dev = Device::new(DeviceConfig {
            disable_latency_reads: 2,
            ..DeviceConfig::with_queue_pairs(2).lm_layout(lm_layout)
        })
        .unwrap();
        let q = 3u16;
        let rs = lm::ring_state_offset(lm_layout, q);
        negotiate(&dev, V1);
        lm_wr(&dev, rs, 4, u64::from(lm::pack_ring_state(0x1234, 0x1200)));
        assert_eq!(lm_rd(&dev, rs, 4), 0x1200_1234);
        enable_queue(&dev, q);
        let snap = dev.queue(q).unwrap();
        assert!(snap.enabled);
        assert_eq!(
            (snap.last_avail, snap.last_used),
            (0x1234, 0x1200),
            "{lm_layout:?}: the queue resumes at the ring state"
        );
        // Enabled: writes ignored (counted), the live state reads back.
        let c0 = dev.counters();
        lm_wr(&dev, rs, 4, 0);
        assert_eq!(
            dev.counters().ignored_register_writes,
            c0.ignored_register_writes + 1
        );
        assert_eq!(lm_rd(&dev, rs, 4), 0x1200_1234);
        // Stopping (queue_enable still reads 1): still ignored.
        common_wr(&dev, common::QUEUE_ENABLE, 2, 0);
        lm_wr(&dev, rs, 4, 0x0001_0001);
        assert_eq!(
            dev.counters().ignored_register_writes,
            c0.ignored_register_writes + 2,
            "{lm_layout:?}: write while stopping"
        );
        while common_rd(&dev, common::QUEUE_ENABLE, 2) != 0 {}
        assert_eq!(
            lm_rd(&dev, rs, 4),
            0x1200_1234,
            "final ring state after the stop"
        );
        // Disabled: writable, and the next enable resumes there.
        lm_wr(&dev, rs, 4, u64::from(lm::pack_ring_state(0xFFF0, 0xFFEE)));
        assert_eq!(lm_rd(&dev, rs, 4), 0xFFEE_FFF0);
        if lm_layout == LmLayout::Linux {
            // ifcvf_set_vq_state: a 16-bit write of the avail index sets used too.
            lm_wr(&dev, rs, 2, 0x0420);
            assert_eq!(lm_rd(&dev, rs, 4), 0x0420_0420);
            assert_eq!(lm_rd(&dev, rs, 2), 0x0420);
            lm_wr(&dev, rs + 2, 2, 0x0400);
            assert_eq!(lm_rd(&dev, rs, 4), 0x0400_0420);
        } else {
            lm_wr(&dev, rs, 4, u64::from(lm::pack_ring_state(0x0420, 0x0400)));
        }
        enable_queue(&dev, q);
        let snap = dev.queue(q).unwrap();
        assert_eq!(
            (snap.last_avail, snap.last_used),
            (0x0420, 0x0400),
            "{lm_layout:?}"
        );
        // Other queues' state is separate.
        let other = dev.queue(q - 1).unwrap();
        assert_eq!((other.last_avail, other.last_used), (0, 0));
        assert_eq!(dev.counters().bad_register_accesses, 0);
    }
}

// ------------------------------------------------------------------------------- config space

#[test]
fn bar_sizing() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let layout = dev.layout().clone();
    for i in 0..6u8 {
        let off = hdr::BAR0 + 4 * u64::from(i);
        wr(&dev, CFG, off, 4, 0xFFFF_FFFF);
        let got = rd(&dev, CFG, off, 4) as u32;
        let want = if let Some(b) = layout.bars.iter().find(|b| b.index == i) {
            (!((b.size - 1) as u32) & !0xF) | DeviceLayout::BAR_TYPE_64
        } else if layout.bars.iter().any(|b| b.index + 1 == i) {
            0xFFFF_FFFF // upper dword of a 64-bit BAR below 4 GiB
        } else {
            0
        };
        assert_eq!(got, want, "BAR{i} size mask");
    }
    assert_eq!(
        rd(&dev, CFG, hdr::BAR0, 4),
        0xFFFF_C004,
        "BAR0 is 16 KiB for 4 pairs"
    );
    // Programming addresses: bits below the size read 0, type bits stay.
    for b in &layout.bars {
        let off = hdr::BAR0 + 4 * u64::from(b.index);
        wr(&dev, CFG, off, 4, 0xFEB1_2345);
        assert_eq!(
            rd(&dev, CFG, off, 4),
            (0xFEB1_2345 & !(b.size - 1) & !0xF) | 4,
            "BAR{}",
            b.index
        );
        wr(&dev, CFG, off + 4, 4, 0x0000_0080);
        assert_eq!(rd(&dev, CFG, off + 4, 4), 0x80);
    }
    dev.reset();
    assert_eq!(rd(&dev, CFG, hdr::BAR0, 4), 4);
    assert_eq!(rd(&dev, CFG, hdr::BAR0 + 4, 4), 0);
}

#[test]
fn capability_list_matches_the_layout() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let layout = dev.layout().clone();
    assert_ne!(rd(&dev, CFG, hdr::STATUS, 2) as u16 & status::CAP_LIST, 0);
    let mut walked = Vec::new();
    let mut ptr = rd(&dev, CFG, hdr::CAPABILITIES_PTR, 1);
    while ptr != 0 {
        assert!(walked.len() < 48, "capability list loops: {walked:x?}");
        assert_eq!(ptr % 4, 0, "capability at unaligned {ptr:#x}");
        walked.push(ptr);
        ptr = rd(&dev, CFG, ptr + 1, 1);
    }
    let declared: Vec<u64> = layout.capabilities.iter().map(|c| c.offset).collect();
    assert_eq!(walked, declared);
    for c in &layout.capabilities {
        assert_eq!(
            rd(&dev, CFG, c.offset, 1) as u8,
            c.id,
            "cap at {:#x}",
            c.offset
        );
        match c.virtio {
            Some((ty, w)) => {
                assert_eq!(c.id, cap_id::VENDOR);
                assert_eq!(
                    rd(&dev, CFG, c.offset + virtio_cap::CAP_LEN, 1) as u8,
                    c.len
                );
                assert_eq!(rd(&dev, CFG, c.offset + virtio_cap::CFG_TYPE, 1) as u8, ty);
                assert_eq!(rd(&dev, CFG, c.offset + virtio_cap::BAR, 1) as u8, w.bar);
                assert_eq!(rd(&dev, CFG, c.offset + virtio_cap::OFFSET, 4), w.offset);
                assert_eq!(rd(&dev, CFG, c.offset + virtio_cap::LENGTH, 4), w.len);
                if ty == virtio_cfg_type::NOTIFY {
                    assert_eq!(
                        rd(&dev, CFG, c.offset + virtio_cap::NOTIFY_OFF_MULTIPLIER, 4),
                        u64::from(layout.notify_multiplier)
                    );
                }
            }
            None if c.id == cap_id::MSIX => {
                assert_eq!(
                    rd(&dev, CFG, c.offset + msix_cap::MESSAGE_CONTROL, 2) & 0x7FF,
                    u64::from(layout.msix_vectors - 1)
                );
                assert_eq!(
                    rd(&dev, CFG, c.offset + msix_cap::TABLE, 4),
                    layout.msix_table.offset | u64::from(layout.msix_table.bar)
                );
                assert_eq!(
                    rd(&dev, CFG, c.offset + msix_cap::PBA, 4),
                    layout.msix_pba.offset | u64::from(layout.msix_pba.bar)
                );
            }
            None => assert_eq!(c.id, cap_id::PCIE),
        }
    }
    // The windows the capabilities point at are the ones the device decodes.
    let kinds: Vec<u8> = layout
        .capabilities
        .iter()
        .filter_map(|c| c.virtio.map(|v| v.0))
        .collect();
    assert_eq!(
        kinds,
        [
            virtio_cfg_type::COMMON,
            virtio_cfg_type::NOTIFY,
            virtio_cfg_type::ISR,
            virtio_cfg_type::DEVICE,
            virtio_cfg_type::PCI_CFG
        ]
    );
}

#[test]
fn pci_cfg_window_reads_and_writes_bar_registers() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let layout = dev.layout().clone();
    let cap = layout
        .capabilities
        .iter()
        .find(|c| matches!(c.virtio, Some((virtio_cfg_type::PCI_CFG, _))))
        .expect("PCI_CFG capability")
        .offset;
    let data = cap + virtio_cap::PCI_CFG_DATA;
    let select = |bar: u8, off: u64, len: u32| {
        wr(&dev, CFG, cap + virtio_cap::BAR, 1, bar.into());
        wr(&dev, CFG, cap + virtio_cap::OFFSET, 4, off);
        wr(&dev, CFG, cap + virtio_cap::LENGTH, 4, len.into());
    };
    let c0 = dev.counters();
    select(
        layout.common.bar,
        layout.common.offset + common::NUM_QUEUES,
        2,
    );
    assert_eq!(
        rd(&dev, CFG, data, 4),
        u64::from(layout.num_queues),
        "num_queues through pci_cfg_data"
    );
    assert_eq!(rd(&dev, CFG, data, 2), u64::from(layout.num_queues));
    // A 4-byte window on the MAC's first dword.
    select(
        layout.device_cfg.bar,
        layout.device_cfg.offset + net_cfg::MAC,
        4,
    );
    let mac = layout.params.mac;
    assert_eq!(
        rd(&dev, CFG, data, 4),
        u64::from(u32::from_le_bytes(mac[..4].try_into().unwrap()))
    );
    // Writes go through too: queue_select.
    select(
        layout.common.bar,
        layout.common.offset + common::QUEUE_SELECT,
        2,
    );
    wr(&dev, CFG, data, 4, 3);
    assert_eq!(common_rd(&dev, common::QUEUE_SELECT, 2), 3);
    assert_eq!(rd(&dev, CFG, data, 4), 3);
    assert_eq!(
        dev.counters().bad_register_accesses,
        c0.bad_register_accesses
    );
}

// ------------------------------------------------------------------------------- MSI-X

fn pba(dev: &Device) -> u64 {
    rd(
        dev,
        dev.layout().msix_pba.bar.into(),
        dev.layout().msix_pba.offset,
        8,
    )
}

fn mask_vector(dev: &Device, v: u16, masked: bool) {
    wr(
        dev,
        dev.layout().msix_table.bar.into(),
        msix_table_off(dev, v, VECTOR_CONTROL),
        4,
        if masked { VECTOR_MASKED.into() } else { 0 },
    );
}

#[test]
fn msix_masked_vectors_pend_and_unmasking_delivers() {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut drv = sim_harness::driver::in_process(&dev, small_opts(1, LmLayout::Dpdk)).unwrap();
    drv.start().unwrap();
    // Our own recorder, replacing the driver's.
    let irq = Arc::new(InterruptRecorder::new(dev.layout().msix_vectors));
    dev.set_interrupt_sink(irq.clone());
    assert_eq!(pba(&dev), 0);

    // Vector masked: the config interrupt pends.
    mask_vector(&dev, 0, true);
    let c0 = dev.counters();
    dev.set_link(false);
    assert_eq!(irq.count(0), 0, "a masked vector fired");
    assert_eq!(pba(&dev), 1, "PBA bit 0");
    assert_eq!(rd(&dev, 2, dev.layout().msix_pba.offset, 4), 1);
    assert_eq!(
        dev.counters().interrupts_pending_masked,
        c0.interrupts_pending_masked + 1
    );
    // A second one while masked stays one pending bit and delivers once.
    dev.set_link(true);
    assert_eq!(pba(&dev), 1);
    mask_vector(&dev, 0, false);
    assert_eq!(
        irq.count(0),
        1,
        "unmasking delivers the pending interrupt once"
    );
    assert_eq!(pba(&dev), 0);
    mask_vector(&dev, 0, false);
    mask_vector(&dev, 0, true);
    mask_vector(&dev, 0, false);
    assert_eq!(irq.count(0), 1, "nothing pending, nothing delivered");

    // Function mask: every vector pends, clearing it delivers.
    let ctl = drv.pci.msix_cap + msix_cap::MESSAGE_CONTROL;
    let v = rd(&dev, CFG, ctl, 2);
    wr(
        &dev,
        CFG,
        ctl,
        2,
        v | u64::from(msix_cap::CTRL_FUNCTION_MASK),
    );
    dev.set_link(false);
    assert_eq!(irq.count(0), 1);
    assert_eq!(pba(&dev), 1);
    wr(
        &dev,
        CFG,
        ctl,
        2,
        v & !u64::from(msix_cap::CTRL_FUNCTION_MASK),
    );
    assert_eq!(irq.count(0), 2, "clearing the function mask delivers");
    assert_eq!(pba(&dev), 0);

    // A queue vector: TX of queue 1 interrupts on vector 2 (DPDK plan q + 1).
    let txv = NetDriver::vector_of(1);
    mask_vector(&dev, txv, true);
    let mac = drv.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
    let f = frames::build(mac, mac, 0, 0, 100, &mut rng);
    assert_eq!(drv.send(0, &[&f]).unwrap(), 1);
    assert_eq!(irq.count(txv), 0);
    assert_eq!(pba(&dev), 1 << txv);
    mask_vector(&dev, txv, false);
    assert_eq!(irq.count(txv), 1);
    assert_eq!(pba(&dev), 0);
    assert_eq!(dev.counters().bad_register_accesses, 0);
}

#[test]
fn msix_unmask_while_msix_disabled_sends_nothing() {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut drv = sim_harness::driver::in_process(&dev, small_opts(1, LmLayout::Dpdk)).unwrap();
    drv.start().unwrap();
    let irq = Arc::new(InterruptRecorder::new(dev.layout().msix_vectors));
    dev.set_interrupt_sink(irq.clone());
    mask_vector(&dev, 0, true);
    dev.set_link(false);
    assert_eq!(pba(&dev), 1);
    let ctl = drv.pci.msix_cap + msix_cap::MESSAGE_CONTROL;
    let v = rd(&dev, CFG, ctl, 2);
    wr(&dev, CFG, ctl, 2, v & !u64::from(msix_cap::CTRL_ENABLE));
    mask_vector(&dev, 0, false);
    assert_eq!(
        irq.count(0),
        0,
        "PCI 3.0 6.8.2.3: with MSI-X Enable clear the function must not send MSI-X messages"
    );
    wr(&dev, CFG, ctl, 2, v);
    assert_eq!(irq.count(0), 1, "re-enabling delivers the pending message");
}

// ------------------------------------------------------------------------------- status rules

#[test]
fn features_ok_refusals_and_status_rules() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let ad = st::ACKNOWLEDGE | st::DRIVER;
    let refused: [(&str, u64); 9] = [
        ("without VERSION_1", offered_mask() & !V1),
        ("nothing", 0),
        ("MQ without CTRL_VQ", V1 | (1 << bits::MQ)),
        ("CTRL_RX without CTRL_VQ", V1 | (1 << bits::CTRL_RX)),
        (
            "GUEST_ANNOUNCE without CTRL_VQ",
            V1 | (1 << bits::GUEST_ANNOUNCE) | (1 << bits::STATUS),
        ),
        (
            "CTRL_MAC_ADDR without CTRL_VQ",
            V1 | (1 << bits::CTRL_MAC_ADDR),
        ),
        ("a bit not offered (HOST_UFO)", V1 | (1 << bits::HOST_UFO)),
        ("HOST_TSO4 without CSUM", V1 | (1 << bits::HOST_TSO4)),
        (
            "HOST_ECN without HOST_TSO4/6",
            V1 | (1 << bits::CSUM) | (1 << bits::HOST_ECN),
        ),
    ];
    for (what, f) in refused {
        let c0 = dev.counters();
        assert_eq!(negotiate(&dev, f), ad, "{what}: FEATURES_OK must not stick");
        let c = dev.counters();
        assert_eq!(c.features_refused, c0.features_refused + 1, "{what}");
        assert_eq!(c.bad_status_writes, c0.bad_status_writes, "{what}");
        assert_eq!(dev.negotiated_features(), 0, "{what}");
        // The driver may not go on to DRIVER_OK without FEATURES_OK.
        set_status(&dev, ad | st::DRIVER_OK);
        assert_eq!(
            status(&dev),
            ad,
            "{what}: DRIVER_OK after a refused FEATURES_OK"
        );
        assert_eq!(
            dev.counters().bad_status_writes,
            c0.bad_status_writes + 1,
            "{what}"
        );
    }
    for (what, f) in [
        ("VERSION_1", V1),
        (
            "MQ with CTRL_VQ",
            V1 | (1 << bits::MQ) | (1 << bits::CTRL_VQ),
        ),
        ("everything offered", offered_mask()),
    ] {
        let c0 = dev.counters();
        assert_eq!(negotiate(&dev, f), ad | st::FEATURES_OK, "{what}");
        assert_eq!(
            dev.counters().features_refused,
            c0.features_refused,
            "{what}"
        );
        assert_eq!(dev.negotiated_features(), f, "{what}");
    }
    // Writes that clear bits or skip steps are ignored and counted.
    assert_eq!(negotiate(&dev, V1), ad | st::FEATURES_OK);
    for (what, v) in [
        ("clear FEATURES_OK", ad),
        ("clear DRIVER", st::ACKNOWLEDGE | st::FEATURES_OK),
        (
            "clear ACKNOWLEDGE",
            st::DRIVER | st::FEATURES_OK | st::DRIVER_OK,
        ),
        (
            "set NEEDS_RESET from the driver",
            ad | st::FEATURES_OK | st::DEVICE_NEEDS_RESET,
        ),
    ] {
        let c0 = dev.counters();
        set_status(&dev, v);
        let s = status(&dev);
        if v & st::DEVICE_NEEDS_RESET != 0 {
            // The device's bit: a driver write neither sets nor clears it; the rest is legal.
            assert_eq!(s, ad | st::FEATURES_OK, "{what}");
            continue;
        }
        assert_eq!(s, ad | st::FEATURES_OK, "{what}: status changed");
        assert_eq!(
            dev.counters().bad_status_writes,
            c0.bad_status_writes + 1,
            "{what}"
        );
    }
    set_status(&dev, 0);
    for (what, v) in [
        ("DRIVER before ACKNOWLEDGE", st::DRIVER),
        (
            "DRIVER_OK without FEATURES_OK",
            st::ACKNOWLEDGE | st::DRIVER | st::DRIVER_OK,
        ),
    ] {
        let c0 = dev.counters();
        set_status(&dev, v);
        assert_eq!(status(&dev), 0, "{what}");
        assert_eq!(
            dev.counters().bad_status_writes,
            c0.bad_status_writes + 1,
            "{what}"
        );
        set_status(&dev, 0);
    }
}

#[test]
fn features_ok_and_driver_ok_in_one_write() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let ad = st::ACKNOWLEDGE | st::DRIVER;
    let all = ad | st::FEATURES_OK | st::DRIVER_OK;
    let prepare = |f: u64| {
        set_status(&dev, 0);
        set_status(&dev, st::ACKNOWLEDGE);
        set_status(&dev, ad);
        common_wr(&dev, common::DRIVER_FEATURE_SELECT, 4, 0);
        common_wr(&dev, common::DRIVER_FEATURE, 4, f & 0xFFFF_FFFF);
        common_wr(&dev, common::DRIVER_FEATURE_SELECT, 4, 1);
        common_wr(&dev, common::DRIVER_FEATURE, 4, f >> 32);
    };
    // Features the device refuses: DRIVER_OK must not be set without FEATURES_OK.
    prepare(offered_mask() & !V1);
    set_status(&dev, all);
    let s = status(&dev);
    assert_eq!(
        s & (st::FEATURES_OK | st::DRIVER_OK),
        0,
        "refused features, status reads {s:#x}"
    );
    // Acceptable features: either the write is refused as a skipped step, or FEATURES_OK means
    // the features were latched.
    let f = V1 | (1 << bits::CTRL_VQ);
    prepare(f);
    let c0 = dev.counters();
    set_status(&dev, all);
    let s = status(&dev);
    let rejected = s == ad && dev.counters().bad_status_writes == c0.bad_status_writes + 1;
    let accepted = s == all && dev.negotiated_features() == f;
    assert!(
        rejected || accepted,
        "status {s:#x}, negotiated {:#x}",
        dev.negotiated_features()
    );
}

// ------------------------------------------------------------------------------- generation

#[test]
fn config_generation_follows_announce_and_announce_ack() {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut drv = sim_harness::driver::in_process(&dev, small_opts(1, LmLayout::Dpdk)).unwrap();
    drv.start().unwrap();
    let need = (1 << bits::GUEST_ANNOUNCE) | (1 << bits::STATUS) | (1 << bits::CTRL_VQ);
    assert_eq!(dev.negotiated_features() & need, need);
    assert_eq!(status(&dev), RUNNING);
    let gen = || common_rd(&dev, common::CONFIG_GENERATION, 1) as u8;
    let link = || net_rd(&dev, net_cfg::STATUS, 2);
    let g0 = gen();
    assert_eq!(link(), 1, "LINK_UP");
    let irq0 = drv.irq.count(0);
    let _ = drv.read_isr().unwrap();

    assert!(dev.announce());
    let g1 = gen();
    assert_eq!(g1, g0.wrapping_add(1), "announce changes config_generation");
    assert_eq!(link(), 3, "VIRTIO_NET_S_ANNOUNCE set");
    assert_eq!(drv.irq.count(0), irq0 + 1, "config interrupt on vector 0");
    assert_eq!(drv.read_isr().unwrap() & isr::CONFIG, isr::CONFIG);
    assert_eq!(gen(), g1, "reads do not change it");

    drv.ctrl(3, 0, &[]).unwrap();
    let g2 = gen();
    assert_eq!(link(), 1, "ANNOUNCE_ACK clears VIRTIO_NET_S_ANNOUNCE");
    assert_eq!(
        g2,
        g1.wrapping_add(1),
        "ANNOUNCE_ACK changes config_generation"
    );
    // A second ACK with nothing to acknowledge changes nothing.
    drv.ctrl(3, 0, &[]).unwrap();
    assert_eq!(gen(), g2);
    assert_eq!(link(), 1);

    // Without GUEST_ANNOUNCE the device cannot announce.
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            features: offered_mask() & !(1 << bits::GUEST_ANNOUNCE),
            ..small_opts(1, LmLayout::Dpdk)
        },
    )
    .unwrap();
    drv.start().unwrap();
    let g = common_rd(&dev, common::CONFIG_GENERATION, 1);
    assert!(!dev.announce());
    assert_eq!(common_rd(&dev, common::CONFIG_GENERATION, 1), g);
    assert_eq!(net_rd(&dev, net_cfg::STATUS, 2), 1);
    assert!(matches!(
        drv.ctrl(3, 0, &[]),
        Err(sim_harness::driver::DriverError::CtrlRejected { class: 3, cmd: 0 })
    ));
}

#[test]
fn accessors_keep_counters_consistent() {
    // A sanity net for the helpers above: legal accesses at natural width are never counted.
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let layout = dev.layout().clone();
    let c0: DeviceCounters = dev.counters();
    for b in &layout.blocks {
        let (region, base) = region_of(b);
        for r in &b.registers {
            let _ = read_reg(&dev, region, base + r.offset, r.width);
        }
    }
    assert_eq!(
        dev.counters().bad_register_accesses,
        c0.bad_register_accesses
    );
}

#[test]
fn packed_ring_offer_can_be_withdrawn() {
    for offer in [true, false] {
        let profile = if offer {
            bar_registers::Profile::full()
        } else {
            bar_registers::Profile::full().without_packed()
        };
        let dev = Device::new(DeviceConfig::default().with_profile(profile)).unwrap();
        common_wr(&dev, common::DEVICE_FEATURE_SELECT, 4, 1);
        let hi = common_rd(&dev, common::DEVICE_FEATURE, 4);
        assert_eq!(
            hi & (1 << (bits::RING_PACKED - 32)) != 0,
            offer,
            "device_feature[63:32] = {hi:#x}"
        );
    }
}

/// The accesses Debian's DPDK 24.11 ifc driver really makes (seen in the e2e guest, where GCC has
/// merged or narrowed the plain `*(u32 *)` accesses of drivers/vdpa/ifc/base/ifcvf.c):
/// ifcvf_enable_logging's LOW/HIGH stores arrive as one 8-byte write each at 0x10 and 0x18, and
/// ifcvf_hw_disable, which keeps only `ring_state >> 16`, reads just the high u16 at +2.
#[test]
fn dpdk_lm_accesses_as_compiled() {
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let mut drv = sim_harness::driver::in_process(&dev, small_opts(1, LmLayout::Dpdk)).unwrap();
    drv.start().unwrap();
    lm_wr(&dev, lm::BASE_ADDR_LOW, 8, 0x1000_0000_0000);
    lm_wr(&dev, lm::END_ADDR_LOW, 8, 0x1000_0000_9000);
    let lm = dev.layout().lm;
    let r = |off: u64, len: usize| rd(&dev, lm.bar.into(), lm.offset + off, len);
    assert_eq!(r(lm::BASE_ADDR_LOW, 8), 0x1000_0000_0000);
    assert_eq!(
        (r(lm::BASE_ADDR_LOW, 4), r(lm::BASE_ADDR_HIGH, 4)),
        (0, 0x1000)
    );
    assert_eq!(
        (r(lm::END_ADDR_LOW, 4), r(lm::END_ADDR_HIGH, 4)),
        (0x9000, 0x1000)
    );
    // the dword halves still work (the Rust driver model writes them so)
    lm_wr(&dev, lm::BASE_ADDR_HIGH, 4, 0x2000);
    assert_eq!(r(lm::BASE_ADDR_LOW, 8), 0x2000_0000_0000);
    // ring state (written while the queue is disabled): all of it, or either half
    drop(drv);
    let dev = Device::new(DeviceConfig::default()).unwrap();
    let r = |off: u64, len: usize| rd(&dev, lm.bar.into(), lm.offset + off, len);
    let rs = lm::ring_state_offset(LmLayout::Dpdk, 0);
    lm_wr(&dev, rs, 4, 0x0009_0007);
    assert_eq!(r(rs, 4), 0x0009_0007);
    assert_eq!((r(rs, 2), r(rs + 2, 2)), (7, 9));
    // writes stay whole dwords: a 16-bit write (Linux ifcvf_set_vq_state's width) is ignored
    lm_wr(&dev, rs + 2, 2, 0x55);
    lm_wr(&dev, rs, 2, 0x55);
    assert_eq!(r(rs, 4), 0x0009_0007);
}
